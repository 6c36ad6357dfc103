//! ingest-email-ses: SES receipt rule (S3 action, then this function) →
//! email provider → events queue.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tocsin_aws::function::run_ingest_email_ses().await
}
