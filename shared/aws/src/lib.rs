//! tocsin-aws: the ports of tocsin-core on AWS. SQS FIFO for the events
//! queue and the per-channel notification queues, one DynamoDB table for
//! incidents, idempotency records and config (its design: infra/dynamodb.md).
//!
//! Endpoints are never in code: the SDK reads AWS_ENDPOINT_URL (and
//! AWS_ENDPOINT_URL_<SERVICE>), which is how tests point it at moto.

pub mod contacts;
pub mod dispatch;
pub mod dynamodb;
pub mod email;
pub mod function;
pub mod measured;
pub mod notify;
pub mod poller;
pub mod processor;
pub mod secrets;
pub mod sqs;
pub mod stream;
pub mod trust;

/// Loads the SDK's shared config (region, credentials, endpoint overrides)
/// from the environment, once per container.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}
