//! notify-webhook: jobs from the webhook queue POSTed to the webhooks of
//! their service (URL and secret from the table), with partial batch
//! failures reported.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tocsin_aws::function::run_notify_webhook().await
}
