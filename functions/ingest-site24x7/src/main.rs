//! ingest-site24x7: API Gateway → site24x7 provider → events queue.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tocsin_aws::function::run_ingest(&tocsin_core::providers::site24x7::Site24x7).await
}
