//! api: API Gateway → the incidents API and health check on the table.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tocsin_aws::function::run_api().await
}
