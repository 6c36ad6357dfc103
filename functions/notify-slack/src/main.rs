//! notify-slack: jobs from the Slack queue to chat.postMessage (bot token) or
//! an incoming webhook, the credential read once from Secrets Manager, with
//! partial batch failures reported.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tocsin_aws::function::run_notify_slack().await
}
