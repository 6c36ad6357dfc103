//! notify-sms: jobs from the SMS queue to SNS Publish (Transactional), with
//! partial batch failures reported.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tocsin_aws::function::run_notify_sms().await
}
