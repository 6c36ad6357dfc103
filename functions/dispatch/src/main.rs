//! dispatch: DynamoDB stream records of incident transitions to notification
//! jobs on the channel queues, with partial batch failures reported.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tocsin_aws::function::run_dispatch().await
}
