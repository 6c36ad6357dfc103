//! slack-interactions: API Gateway → the Slack app's buttons and slash
//! command, verified, as acknowledge / resolve events on the events queue.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tocsin_aws::function::run_slack_interactions().await
}
