//! ses-feedback: SES configuration set → SNS topic → this function →
//! the contact's bounce and complaint record in the table.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tocsin_aws::contacts::run_ses_feedback().await
}
