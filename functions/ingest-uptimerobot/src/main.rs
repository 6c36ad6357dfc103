//! ingest-uptimerobot: API Gateway → uptimerobot provider → events queue.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tocsin_aws::function::run_ingest(&tocsin_core::providers::uptimerobot::UptimeRobot).await
}
