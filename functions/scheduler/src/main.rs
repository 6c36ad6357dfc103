//! scheduler: invoked every minute by an EventBridge schedule; heartbeats
//! that missed their interval open incidents through the events queue.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tocsin_aws::function::run_scheduler().await
}
