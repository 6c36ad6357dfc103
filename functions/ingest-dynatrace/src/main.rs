//! ingest-dynatrace: API Gateway → dynatrace provider → events queue.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tocsin_aws::function::run_ingest(&tocsin_core::providers::dynatrace::Dynatrace).await
}
