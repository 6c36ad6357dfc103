//! ingest-uptime-kuma: API Gateway → uptime-kuma provider → events queue.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tocsin_aws::function::run_ingest(&tocsin_core::providers::uptime_kuma::UptimeKuma).await
}
