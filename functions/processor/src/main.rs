//! processor: SQS batches from the events queue → incidents, with partial
//! batch failures reported.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tocsin_aws::function::run_processor().await
}
