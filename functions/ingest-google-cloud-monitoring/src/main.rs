//! ingest-google-cloud-monitoring: API Gateway → google-cloud-monitoring provider → events queue.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tocsin_aws::function::run_ingest(&tocsin_core::providers::google_cloud_monitoring::GoogleCloudMonitoring).await
}
