//! The notifiers on AWS: email through SES v2, SMS through SNS, and the
//! notifier functions' handler for a batch from a channel queue.

use std::collections::HashSet;

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use aws_sdk_sesv2::config::http::HttpResponse;
use aws_sdk_sesv2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sesv2::types::{Body, Content, Destination, EmailContent};
use aws_sdk_sns::types::MessageAttributeValue;
use tocsin_core::dispatch::{DeliveryError, NotifyService};
use tocsin_core::metrics::{function, DeliveryOutcome, Metrics};
use tocsin_core::notify::{Channel, Message, NotificationJob, Notifier, NotifyError, Receipt};
use tracing::Instrument;

/// Service error codes that pass with time, whatever the HTTP status says.
const PASSING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "LimitExceededException",
    "RequestLimitExceeded",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "KMSThrottlingException",
    // SNS's names for ThrottledException and KMSThrottlingException.
    "Throttled",
    "KMSThrottling",
];

/// The codes among those that mean the provider throttled us (SNS's SMS
/// rate and spend limits above all), counted apart in the metrics.
const THROTTLING_CODES: &[&str] = &[
    "Throttled",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "LimitExceededException",
    "RequestLimitExceeded",
    "KMSThrottling",
    "KMSThrottlingException",
];

/// Whether a failed delivery was throttled: a 429 or a throttling code
/// from SNS or SES, or a Retry-After (Slack's 429).
fn throttled(error: &NotifyError) -> bool {
    let NotifyError::Transient {
        retry_after_secs,
        source,
        ..
    } = error
    else {
        return false;
    };
    if retry_after_secs.is_some() {
        return true;
    }
    let Some(source) = source.as_deref() else {
        return false;
    };
    if let Some(error) = source.downcast_ref::<SdkError<aws_sdk_sns::operation::publish::PublishError, HttpResponse>>()
    {
        return sdk_throttled(error);
    }
    if let Some(error) =
        source.downcast_ref::<SdkError<aws_sdk_sesv2::operation::send_email::SendEmailError, HttpResponse>>()
    {
        return sdk_throttled(error);
    }
    false
}

fn sdk_throttled<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> bool {
    match error {
        SdkError::ServiceError(context) => {
            THROTTLING_CODES.contains(&context.err().code().unwrap_or_default())
                || context.raw().status().as_u16() == 429
        }
        _ => false,
    }
}

/// Sorts an SDK error: what may pass on a retry (no answer, throttling,
/// 5xx) is transient; what the service refused as sent (validation, a bad
/// recipient, an unverified sender) is permanent.
fn classify<E>(operation: &str, error: SdkError<E, HttpResponse>) -> NotifyError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let transient = match &error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(context) => {
            let code = context.err().code().unwrap_or_default();
            let status = context.raw().status().as_u16();
            PASSING_CODES.contains(&code) || status == 429 || status >= 500
        }
        _ => false,
    };
    let reason = format!(
        "{operation}: {}",
        error
            .code()
            .map(str::to_owned)
            .or_else(|| error.message().map(str::to_owned))
            .unwrap_or_else(|| error.to_string())
    );
    let source = Some(Box::new(error) as Box<dyn std::error::Error + Send + Sync>);
    if transient {
        NotifyError::Transient {
            reason,
            retry_after_secs: None,
            source,
        }
    } else {
        NotifyError::Permanent { reason, source }
    }
}

/// A message that is not the notifier's channel's: a bug upstream, never
/// better on a retry.
fn build_error(error: aws_sdk_sesv2::error::BuildError) -> NotifyError {
    NotifyError::Permanent {
        reason: "the request could not be built".to_owned(),
        source: Some(Box::new(error)),
    }
}

/// Email through SES v2 SendEmail, simple content with a text and an HTML
/// part, from the configured (verified) sender.
#[derive(Clone, Debug)]
pub struct SesEmailNotifier {
    client: aws_sdk_sesv2::Client,
    from: String,
    /// The configuration set whose event destination publishes bounces and
    /// complaints to the ses-feedback function (TOCSIN_SES_CONFIGURATION_SET).
    configuration_set: Option<String>,
}

impl SesEmailNotifier {
    pub fn new(client: aws_sdk_sesv2::Client, from: impl Into<String>) -> Self {
        Self {
            client,
            from: from.into(),
            configuration_set: None,
        }
    }

    pub fn with_configuration_set(mut self, name: Option<String>) -> Self {
        self.configuration_set = name;
        self
    }
}

fn utf8(data: &str) -> Result<Content, NotifyError> {
    Content::builder()
        .data(data)
        .charset("UTF-8")
        .build()
        .map_err(build_error)
}

#[async_trait]
impl Notifier for SesEmailNotifier {
    fn channel(&self) -> Channel {
        Channel::Email
    }

    async fn deliver(&self, job: &NotificationJob, message: &Message) -> Result<Receipt, NotifyError> {
        let Message::Email { subject, text, html } = message else {
            return Err(NotifyError::wrong_message(message, Channel::Email));
        };
        let content = EmailContent::builder()
            .simple(
                aws_sdk_sesv2::types::Message::builder()
                    .subject(utf8(subject)?)
                    .body(Body::builder().text(utf8(text)?).html(utf8(html)?).build())
                    .build(),
            )
            .build();
        let output = self
            .client
            .send_email()
            .from_email_address(&self.from)
            .set_configuration_set_name(self.configuration_set.clone())
            .destination(Destination::builder().to_addresses(&job.to).build())
            .content(content)
            .send()
            .await
            .map_err(|e| classify("ses SendEmail", e))?;
        Ok(Receipt::sent(output.message_id().map(str::to_owned)))
    }
}

/// SMS through SNS Publish to a phone number, as a transactional message
/// (delivered first, and outside quiet hours' promotional limits).
#[derive(Clone, Debug)]
pub struct SnsSmsNotifier {
    client: aws_sdk_sns::Client,
    sender_id: Option<String>,
}

impl SnsSmsNotifier {
    pub fn new(client: aws_sdk_sns::Client, sender_id: Option<String>) -> Self {
        Self {
            client,
            sender_id: sender_id.filter(|s| !s.trim().is_empty()),
        }
    }
}

fn string_attribute(value: &str) -> Result<MessageAttributeValue, NotifyError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| NotifyError::Permanent {
            reason: "the SMS attribute could not be built".to_owned(),
            source: Some(Box::new(e)),
        })
}

#[async_trait]
impl Notifier for SnsSmsNotifier {
    fn channel(&self) -> Channel {
        Channel::Sms
    }

    async fn deliver(&self, job: &NotificationJob, message: &Message) -> Result<Receipt, NotifyError> {
        let Message::Sms { text, .. } = message else {
            return Err(NotifyError::wrong_message(message, Channel::Sms));
        };
        let mut publish = self
            .client
            .publish()
            .phone_number(&job.to)
            .message(text)
            .message_attributes("AWS.SNS.SMS.SMSType", string_attribute("Transactional")?);
        if let Some(sender_id) = &self.sender_id {
            publish = publish.message_attributes("AWS.SNS.SMS.SenderID", string_attribute(sender_id)?);
        }
        let output = publish.send().await.map_err(|e| classify("sns Publish", e))?;
        Ok(Receipt::sent(output.message_id().map(str::to_owned)))
    }
}

#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error("the message body is not a notification job")]
    NotAJob(#[source] serde_json::Error),
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
}

/// Delivers every job of a batch and reports the ids of those that failed.
/// A transient failure is retried by SQS; a permanent one is logged at
/// error and reported too, so that it reaches the channel's dead-letter
/// queue (and its alarm) after the retries instead of being dropped. As in
/// the processor, a failure holds back the rest of its FIFO group (one
/// recipient), so a person's messages keep the order of the transitions.
pub async fn deliver_batch(notify: &NotifyService, batch: SqsEvent) -> SqsBatchResponse {
    deliver_batch_measured(notify, &Metrics::disabled(function::NOTIFY), batch).await
}

/// As [`deliver_batch`], with one metrics document per delivery attempt
/// (crate::function sends them to CloudWatch on Lambda).
pub async fn deliver_batch_measured(notify: &NotifyService, metrics: &Metrics, batch: SqsEvent) -> SqsBatchResponse {
    deliver_batch_retrying_after(notify, metrics, None, batch).await
}

/// The longest visibility timeout SQS takes: 12 hours.
const MAX_VISIBILITY_SECS: u64 = 43_200;

/// Makes a failed job wait out the provider's Retry-After (Slack's 429s):
/// its message's visibility timeout is set to it, so SQS offers it again
/// then rather than after the queue's own timeout.
#[derive(Debug, Clone)]
pub struct RetryAfterVisibility {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl RetryAfterVisibility {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }

    async fn hold(&self, message: &SqsMessage, seconds: u64) {
        let Some(handle) = message.receipt_handle.as_deref() else {
            return;
        };
        let seconds = i32::try_from(seconds.min(MAX_VISIBILITY_SECS)).unwrap_or(i32::MAX);
        let changed = self
            .client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(handle)
            .visibility_timeout(seconds)
            .send()
            .await;
        match changed {
            Ok(_) => tracing::info!(retry_after = seconds, "the retry waits for the channel's Retry-After"),
            // The queue's own visibility timeout still brings it back.
            Err(error) => tracing::warn!(
                error = %aws_sdk_sqs::error::DisplayErrorContext(&error),
                "cannot delay the retry to the channel's Retry-After"
            ),
        }
    }
}

/// As [`deliver_batch_measured`]; with `visibility`, a job that failed with
/// a Retry-After is offered again only after it.
pub async fn deliver_batch_retrying_after(
    notify: &NotifyService,
    metrics: &Metrics,
    visibility: Option<&RetryAfterVisibility>,
    batch: SqsEvent,
) -> SqsBatchResponse {
    let mut failures = Vec::new();
    let mut blocked_groups: HashSet<String> = HashSet::new();
    for message in batch.records {
        let id = message.message_id.clone().unwrap_or_default();
        let group = message.attributes.get("MessageGroupId").cloned();
        if group.as_ref().is_some_and(|g| blocked_groups.contains(g)) {
            tracing::info!(message_id = %id, "not delivered: an earlier message of its group failed");
        } else {
            let span = tracing::info_span!("message", message_id = %id);
            let delivered = deliver(notify, &message).instrument(span).await;
            if let Some(channel) = job_channel(&message) {
                let outcome = match &delivered {
                    // Held by the throttle: NotifyService counted it as throttled.
                    Ok(receipt) if receipt.held => DeliveryOutcome::Held,
                    Ok(_) => DeliveryOutcome::Sent,
                    Err(JobError::Delivery(DeliveryError::Notify(error))) => DeliveryOutcome::Failed {
                        throttled: throttled(error),
                    },
                    Err(_) => DeliveryOutcome::Failed { throttled: false },
                };
                metrics.notification(chrono::Utc::now(), channel, outcome);
            }
            match delivered {
                Ok(receipt) => {
                    tracing::info!(message_id = %id, reference = receipt.reference.as_deref(), "delivered");
                    continue;
                }
                Err(JobError::Delivery(DeliveryError::Notify(error @ NotifyError::Transient { .. }))) => {
                    tracing::warn!(message_id = %id, %error, "delivery failed; SQS will retry it");
                    if let (
                        Some(visibility),
                        NotifyError::Transient {
                            retry_after_secs: Some(seconds),
                            ..
                        },
                    ) = (visibility, &error)
                    {
                        visibility.hold(&message, *seconds).await;
                    }
                }
                Err(error) => {
                    tracing::error!(message_id = %id, %error, "delivery refused; it goes to the dead-letter queue");
                }
            }
            if let Some(group) = group {
                blocked_groups.insert(group);
            }
        }
        let mut failure = BatchItemFailure::default();
        failure.item_identifier = id;
        failures.push(failure);
    }
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failures;
    response
}

/// The channel a message's job is for; none if the body is not a job.
fn job_channel(message: &SqsMessage) -> Option<Channel> {
    #[derive(serde::Deserialize)]
    struct ChannelOnly {
        channel: Channel,
    }
    let body = message.body.as_deref()?;
    serde_json::from_str::<ChannelOnly>(body).ok().map(|job| job.channel)
}

async fn deliver(notify: &NotifyService, message: &SqsMessage) -> Result<Receipt, JobError> {
    let body = message.body.as_deref().unwrap_or_default();
    let job: NotificationJob = serde_json::from_str(body).map_err(JobError::NotAJob)?;
    // SQS counts receives: the first delivery attempt is receive 1.
    let attempt = message
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|count| count.parse().ok())
        .unwrap_or(1);
    // Never the job id nor the recipient: both carry the address or number.
    let span = tracing::info_span!(
        "job",
        service = %job.incident.service,
        dedup_key = %job.incident.dedup_key
    );
    Ok(notify.deliver(&job, attempt).instrument(span).await?)
}

#[cfg(test)]
mod tests {
    use aws_sdk_sesv2::error::ErrorMetadata;
    use aws_sdk_sesv2::operation::send_email::SendEmailError;

    use super::*;

    fn service_error(status: u16, code: &str) -> SdkError<SendEmailError, HttpResponse> {
        SdkError::service_error(
            SendEmailError::generic(ErrorMetadata::builder().code(code).message("refused").build()),
            HttpResponse::new(status.try_into().unwrap(), "".into()),
        )
    }

    fn is_transient(error: &NotifyError) -> bool {
        matches!(error, NotifyError::Transient { .. })
    }

    #[test]
    fn throttling_and_server_errors_are_transient() {
        assert!(is_transient(&classify(
            "ses",
            service_error(429, "TooManyRequestsException")
        )));
        assert!(is_transient(&classify("ses", service_error(400, "Throttling"))));
        assert!(is_transient(&classify(
            "ses",
            service_error(400, "LimitExceededException")
        )));
        assert!(is_transient(&classify("ses", service_error(503, "ServiceUnavailable"))));
        assert!(is_transient(&classify("ses", service_error(500, "Whatever"))));
    }

    #[test]
    fn refusals_are_permanent_and_named() {
        for (status, code) in [
            (400, "MessageRejected"),
            (400, "BadRequestException"),
            (400, "InvalidParameter"),
        ] {
            let error = classify("ses SendEmail", service_error(status, code));
            assert!(!is_transient(&error), "{code}");
            assert_eq!(error.to_string(), format!("delivery refused: ses SendEmail: {code}"));
        }
    }

    #[test]
    fn throttling_is_told_apart_from_other_failures() {
        use aws_sdk_sns::operation::publish::PublishError;

        let sns = |status: u16, code: &str| {
            classify(
                "sns Publish",
                SdkError::service_error(
                    PublishError::generic(ErrorMetadata::builder().code(code).message("no").build()),
                    HttpResponse::new(status.try_into().unwrap(), "".into()),
                ),
            )
        };
        assert!(throttled(&sns(400, "Throttled")));
        assert!(
            is_transient(&sns(400, "Throttled")),
            "SNS's throttling passes with time"
        );
        assert!(throttled(&sns(429, "Whatever")));
        assert!(throttled(&classify(
            "ses",
            service_error(400, "TooManyRequestsException")
        )));
        assert!(!throttled(&sns(500, "InternalError")));
        assert!(!throttled(&sns(400, "InvalidParameter")));
        assert!(throttled(&NotifyError::Transient {
            reason: "slack 429".into(),
            retry_after_secs: Some(3),
            source: None,
        }));
    }

    /// Refuses jobs to one recipient, throttles another, delivers the rest.
    struct Fussy;

    #[async_trait]
    impl Notifier for Fussy {
        fn channel(&self) -> Channel {
            Channel::Email
        }

        async fn deliver(&self, job: &NotificationJob, _: &Message) -> Result<Receipt, NotifyError> {
            match job.to.as_str() {
                "refused@example.com" => Err(NotifyError::Permanent {
                    reason: "bad recipient".into(),
                    source: None,
                }),
                "throttled@example.com" => Err(NotifyError::Transient {
                    reason: "throttled".into(),
                    retry_after_secs: None,
                    source: None,
                }),
                _ => Ok(Receipt::sent(None)),
            }
        }
    }

    async fn email_job(to: &str) -> String {
        use std::sync::Arc;

        use chrono::Utc;
        use tocsin_core::dispatch::DispatchService;
        use tocsin_core::event::{Action, Alert, DedupKey, Event, EventId, Origin, Payload, ServiceId, Severity};
        use tocsin_core::memory::MemoryStore;
        use tocsin_core::process::ProcessService;

        let store = Arc::new(MemoryStore::new());
        let event = Event {
            id: EventId::generate(),
            service: ServiceId::parse("checkout").unwrap(),
            origin: Origin::Api { actor: "test".into() },
            received_at: Utc::now(),
            alert: Alert {
                event_action: Action::Trigger,
                dedup_key: DedupKey::parse("disk").unwrap(),
                payload: Some(Payload {
                    summary: "disk full".into(),
                    source: "host".into(),
                    severity: Severity::Critical,
                    timestamp: None,
                    component: None,
                    group: None,
                    class: None,
                    custom_details: None,
                }),
                links: Vec::new(),
                images: Vec::new(),
                client: None,
                client_url: None,
            },
        };
        ProcessService::new(store.clone())
            .apply(&event, Utc::now())
            .await
            .unwrap();
        let catalog =
            tocsin_core::config::Catalog::from_yaml(include_str!("../../../cli/tocsin.sample.yaml"), "sample").unwrap();
        let dispatch = DispatchService::new(Arc::new(catalog), store.clone());
        dispatch.dispatch(&store.transitions()[0], Utc::now()).await.unwrap();
        let mut job = store
            .queued_jobs()
            .into_iter()
            .find(|j| j.channel == Channel::Email)
            .unwrap();
        job.to = to.to_owned();
        serde_json::to_string(&job).unwrap()
    }

    fn message(id: &str, group: &str, body: String) -> SqsMessage {
        let mut message = SqsMessage::default();
        message.message_id = Some(id.to_owned());
        message.body = Some(body);
        message.attributes = std::collections::HashMap::from([("MessageGroupId".to_owned(), group.to_owned())]);
        message
    }

    #[tokio::test]
    async fn failures_are_reported_and_hold_back_their_group() {
        let notify = NotifyService::new(vec![std::sync::Arc::new(Fussy)], Default::default());
        let mut batch = SqsEvent::default();
        batch.records = vec![
            message("m1", "g-refused", email_job("refused@example.com").await),
            message("m2", "g-ok", email_job("ok@example.com").await),
            message("m3", "g-refused", email_job("ok-later@example.com").await),
            message("m4", "g-throttled", email_job("throttled@example.com").await),
            message("m5", "g-ok", "not a job".to_owned()),
        ];
        let response = deliver_batch(&notify, batch).await;
        let failed: Vec<&str> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        assert_eq!(failed, ["m1", "m3", "m4", "m5"]);
    }

    #[tokio::test]
    async fn each_attempt_on_a_job_is_measured_by_channel() {
        use tocsin_core::metrics::{function, CollectingSink, Metrics};

        let notify = NotifyService::new(vec![std::sync::Arc::new(Fussy)], Default::default());
        let sink = std::sync::Arc::new(CollectingSink::default());
        let metrics = Metrics::new(function::NOTIFY, sink.clone());
        let mut batch = SqsEvent::default();
        batch.records = vec![
            message("m1", "g-ok", email_job("ok@example.com").await),
            message("m2", "g-throttled", email_job("throttled@example.com").await),
            message("m3", "g-bad", "not a job".to_owned()),
        ];
        deliver_batch_measured(&notify, &metrics, batch).await;
        let documents = sink.documents();
        assert_eq!(documents.len(), 2, "a body that is no job has no channel to count");
        assert_eq!(documents[0]["Channel"], "email");
        assert_eq!(documents[0]["NotificationsSent"], 1.0);
        assert_eq!(documents[1]["NotificationsFailed"], 1.0);
        let text = serde_json::to_string(&documents).unwrap();
        assert!(!text.contains("example.com"), "no recipient in the metrics: {text}");
    }
}
