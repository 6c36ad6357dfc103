//! ingest-better-uptime: API Gateway → better-uptime provider → events queue.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tocsin_aws::function::run_ingest(&tocsin_core::providers::better_uptime::BetterUptime).await
}
