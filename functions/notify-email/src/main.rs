//! notify-email: jobs from the email queue to SES v2, with partial batch
//! failures reported.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tocsin_aws::function::run_notify_email().await
}
