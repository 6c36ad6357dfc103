//! ingest-cloudwatch-sns: SNS topic → this function (no HTTPS endpoint) →
//! cloudwatch provider → events queue.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tocsin_aws::function::run_ingest_cloudwatch_sns().await
}
