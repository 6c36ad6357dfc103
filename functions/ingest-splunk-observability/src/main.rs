//! ingest-splunk-observability: API Gateway → splunk-observability provider → events queue.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tocsin_aws::function::run_ingest(&tocsin_core::providers::splunk_observability::SplunkObservability).await
}
