//! ingest-cloudwatch: API Gateway → SNS envelope checks → cloudwatch
//! provider → events queue.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tocsin_aws::function::run_ingest_cloudwatch().await
}
