//! ingest-elastic: API Gateway → elastic provider → events queue.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tocsin_aws::function::run_ingest(&tocsin_core::providers::elastic::Elastic).await
}
