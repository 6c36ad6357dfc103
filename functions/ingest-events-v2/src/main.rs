//! ingest-events-v2: API Gateway → events-v2 provider → events queue.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tocsin_aws::function::run_ingest(&tocsin_core::providers::events_v2::EventsV2).await
}
