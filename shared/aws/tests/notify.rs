//! The SES and SNS notifiers and the channel queue handler against a real
//! AWS API server (moto), checked in moto's own record of what was sent.

mod moto;

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use chrono::Utc;
use serde_json::Value;
use tocsin_aws::notify::{
    deliver_batch, deliver_batch_retrying_after, RetryAfterVisibility, SesEmailNotifier, SnsSmsNotifier,
};
use tocsin_core::config::Catalog;
use tocsin_core::dispatch::{DispatchService, NotifyService};
use tocsin_core::event::{
    Action, Alert, DedupKey, Event, EventId, IntegrationId, Origin, Payload, ServiceId, Severity,
};
use tocsin_core::memory::MemoryStore;
use tocsin_core::metrics::Metrics;
use tocsin_core::notify::{Channel, NotificationJob, Notifier};
use tocsin_core::process::ProcessService;
use tocsin_core::providers::ProviderKind;
use tocsin_core::render::{render, RenderContext};

fn trigger(summary: &str) -> Event {
    Event {
        id: EventId::generate(),
        service: ServiceId::parse("checkout").unwrap(),
        origin: Origin::Integration {
            integration: IntegrationId::parse("checkout-prometheus").unwrap(),
            provider: ProviderKind::Prometheus,
        },
        received_at: Utc::now(),
        alert: Alert {
            event_action: Action::Trigger,
            dedup_key: DedupKey::parse(summary).unwrap(),
            payload: Some(Payload {
                summary: summary.to_owned(),
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
    }
}

/// The jobs the sample config's checkout service plans for a new incident
/// (one email, one SMS, one Slack message).
async fn jobs(summary: &str) -> Vec<NotificationJob> {
    let catalog = Catalog::from_yaml(include_str!("../../../cli/tocsin.sample.yaml"), "sample").unwrap();
    let store = Arc::new(MemoryStore::new());
    ProcessService::new(store.clone())
        .apply(&trigger(summary), Utc::now())
        .await
        .unwrap();
    let dispatch = DispatchService::new(Arc::new(catalog), store.clone());
    for transition in store.transitions() {
        dispatch.dispatch(&transition, Utc::now()).await.unwrap();
    }
    store.queued_jobs()
}

fn job(jobs: &[NotificationJob], channel: Channel) -> NotificationJob {
    jobs.iter()
        .find(|j| j.channel == channel)
        .cloned()
        .expect("a job of the channel")
}

fn batch(bodies: &[(&str, String)]) -> SqsEvent {
    let mut batch = SqsEvent::default();
    batch.records = bodies
        .iter()
        .map(|(id, body)| {
            let mut message = SqsMessage::default();
            message.message_id = Some((*id).to_owned());
            message.body = Some(body.clone());
            message
        })
        .collect();
    batch
}

async fn moto_data() -> Value {
    let url = std::env::var("TOCSIN_MOTO_URL").expect("TOCSIN_MOTO_URL");
    reqwest::get(format!("{url}/moto-api/data.json"))
        .await
        .expect("moto answers")
        .json()
        .await
        .expect("moto's data is JSON")
}

/// Every record moto keeps of one model (`ses`/`Message`, `sns`/`SMS`),
/// whatever account and region it sits under.
fn records<'a>(data: &'a Value, service: &str, model: &str) -> Vec<&'a Value> {
    fn leaves<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
        match value {
            Value::Array(items) => out.extend(items),
            Value::Object(map) => map.values().for_each(|v| leaves(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    leaves(&data[service][model], &mut out);
    out
}

async fn notify_service(from: &str, sender_id: Option<&str>) -> NotifyService {
    let sdk = moto::sdk_config().await;
    NotifyService::new(
        vec![
            Arc::new(SesEmailNotifier::new(aws_sdk_sesv2::Client::new(&sdk), from)),
            Arc::new(SnsSmsNotifier::new(
                aws_sdk_sns::Client::new(&sdk),
                sender_id.map(str::to_owned),
            )),
        ],
        RenderContext {
            public_url: Some("https://tocsin.example.com".into()),
            ..RenderContext::default()
        },
    )
}

#[tokio::test]
async fn an_email_and_an_sms_reach_ses_and_sns() {
    let sdk = moto::sdk_config().await;
    let from = format!("{}@example.com", moto::unique("tocsin"));
    aws_sdk_sesv2::Client::new(&sdk)
        .create_email_identity()
        .email_identity(&from)
        .send()
        .await
        .expect("moto verifies the sender");
    let summary = moto::unique("disk-full");
    let jobs = jobs(&summary).await;
    let email = job(&jobs, Channel::Email);
    let sms = job(&jobs, Channel::Sms);
    let notify = notify_service(&from, Some("Tocsin")).await;

    let response = deliver_batch(
        &notify,
        batch(&[
            ("m-email", serde_json::to_string(&email).unwrap()),
            ("m-sms", serde_json::to_string(&sms).unwrap()),
        ]),
    )
    .await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");

    let data = moto_data().await;
    let sent: Vec<&Value> = records(&data, "ses", "Message")
        .into_iter()
        .filter(|m| m["subject"].as_str().is_some_and(|s| s.contains(&summary)))
        .collect();
    assert_eq!(sent.len(), 1, "one email about {summary} in {:#}", data["ses"]);
    assert_eq!(sent[0]["source"], from.as_str());
    assert_eq!(sent[0]["destinations"]["ToAddresses"][0], "oncall@example.com");
    assert!(sent[0]["body"]
        .as_str()
        .is_some_and(|b| b.contains("https://tocsin.example.com/incidents/")));

    let texts: Vec<&Value> = records(&data, "sns", "SMS")
        .into_iter()
        .filter(|m| m["message"].as_str().is_some_and(|s| s.contains(&summary)))
        .collect();
    assert_eq!(texts.len(), 1, "one SMS about {summary} in {:#}", data["sns"]);
    assert_eq!(texts[0]["phone_number"], "+15555550123");
}

/// The bodies of the requests an SNS client sent, as the server got them:
/// moto keeps an SMS's number and text but not its message attributes.
#[derive(Debug, Default, Clone)]
struct SentBodies(Arc<std::sync::Mutex<Vec<String>>>);

impl aws_sdk_sns::config::Intercept for SentBodies {
    fn name(&self) -> &'static str {
        "SentBodies"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_sns::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_sdk_sns::config::RuntimeComponents,
        _: &mut aws_sdk_sns::config::ConfigBag,
    ) -> Result<(), aws_sdk_sns::error::BoxError> {
        let body = context.request().body().bytes().unwrap_or_default();
        self.0
            .lock()
            .map_err(|_| "a poisoned lock")?
            .push(String::from_utf8_lossy(body).into_owned());
        Ok(())
    }
}

#[tokio::test]
async fn an_sms_is_published_as_transactional() {
    let sdk = moto::sdk_config().await;
    let sent = SentBodies::default();
    let sns = aws_sdk_sns::Client::from_conf(
        aws_sdk_sns::config::Builder::from(&sdk)
            .interceptor(sent.clone())
            .build(),
    );
    let summary = moto::unique("queue-depth");
    let jobs = jobs(&summary).await;
    let sms = job(&jobs, Channel::Sms);
    SnsSmsNotifier::new(sns, None)
        .deliver(&sms, &render(&sms, &RenderContext::default()))
        .await
        .expect("published");

    let data = moto_data().await;
    assert!(
        records(&data, "sns", "SMS")
            .iter()
            .any(|m| m["message"].as_str().is_some_and(|s| s.contains(&summary))),
        "the SMS about {summary} in {:#}",
        data["sns"]
    );
    let bodies = sent.0.lock().expect("the bodies").clone();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let form: std::collections::HashMap<&str, &str> =
        bodies[0].split('&').filter_map(|pair| pair.split_once('=')).collect();
    let entry = form
        .iter()
        .find(|(key, value)| key.starts_with("MessageAttributes.entry.") && **value == "AWS.SNS.SMS.SMSType")
        .and_then(|(key, _)| key.strip_suffix(".Name"))
        .unwrap_or_else(|| panic!("no SMSType attribute in {}", bodies[0]));
    assert_eq!(
        form.get(format!("{entry}.Value.StringValue").as_str()),
        Some(&"Transactional")
    );
    assert_eq!(form.get(format!("{entry}.Value.DataType").as_str()), Some(&"String"));
}

#[tokio::test]
async fn the_receipt_names_the_providers_message_id() {
    let sdk = moto::sdk_config().await;
    let from = format!("{}@example.com", moto::unique("tocsin"));
    aws_sdk_sesv2::Client::new(&sdk)
        .create_email_identity()
        .email_identity(&from)
        .send()
        .await
        .unwrap();
    let summary = moto::unique("latency");
    let jobs = jobs(&summary).await;
    let context = RenderContext::default();
    let email = job(&jobs, Channel::Email);
    let receipt = SesEmailNotifier::new(aws_sdk_sesv2::Client::new(&sdk), &from)
        .deliver(&email, &render(&email, &context))
        .await
        .expect("sent");
    let sms = job(&jobs, Channel::Sms);
    let text_receipt = SnsSmsNotifier::new(aws_sdk_sns::Client::new(&sdk), None)
        .deliver(&sms, &render(&sms, &context))
        .await
        .expect("published");

    let data = moto_data().await;
    let ids: Vec<&Value> = records(&data, "ses", "Message").iter().map(|m| &m["id"]).collect();
    let reference = receipt.reference.expect("SES's MessageId");
    assert!(ids.iter().any(|id| *id == reference.as_str()), "{reference} in {ids:?}");
    let ids: Vec<&Value> = records(&data, "sns", "SMS").iter().map(|m| &m["message_id"]).collect();
    let reference = text_receipt.reference.expect("SNS's MessageId");
    assert!(ids.iter().any(|id| *id == reference.as_str()), "{reference} in {ids:?}");
}

#[tokio::test]
async fn refusals_and_garbage_are_reported_for_the_dead_letter_queue() {
    // Never verified: SES refuses the sender, which no retry fixes.
    let from = format!("{}@example.com", moto::unique("unverified"));
    let summary = moto::unique("cpu-hot");
    let jobs = jobs(&summary).await;
    let notify = notify_service(&from, None).await;
    let response = deliver_batch(
        &notify,
        batch(&[
            ("m-email", serde_json::to_string(&job(&jobs, Channel::Email)).unwrap()),
            ("m-garbage", "{not a job".to_owned()),
            ("m-slack", serde_json::to_string(&job(&jobs, Channel::Slack)).unwrap()),
            ("m-sms", serde_json::to_string(&job(&jobs, Channel::Sms)).unwrap()),
        ]),
    )
    .await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    // The SMS goes out; the slack job has no notifier in this function.
    assert_eq!(failed, ["m-email", "m-garbage", "m-slack"]);
    let data = moto_data().await;
    assert!(!records(&data, "ses", "Message")
        .iter()
        .any(|m| m.to_string().contains(&summary)));
}

/// A Slack stand-in that always fails transiently, with or without a
/// Retry-After.
struct BusySlack {
    retry_after_secs: Option<u64>,
}

#[async_trait::async_trait]
impl Notifier for BusySlack {
    fn channel(&self) -> Channel {
        Channel::Slack
    }

    async fn deliver(
        &self,
        _: &NotificationJob,
        _: &tocsin_core::notify::Message,
    ) -> Result<tocsin_core::notify::Receipt, tocsin_core::notify::NotifyError> {
        Err(tocsin_core::notify::NotifyError::Transient {
            reason: "ratelimited".into(),
            retry_after_secs: self.retry_after_secs,
            source: None,
        })
    }
}

#[tokio::test]
async fn a_retry_after_keeps_the_failed_job_out_of_sight_that_long() {
    let sdk = moto::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    // A visibility timeout of 0: a received message is offered again at once
    // unless its own visibility was changed.
    let queue_url = sqs
        .create_queue()
        .queue_name(moto::unique("tocsin-slack-retry-after"))
        .attributes(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, "0")
        .send()
        .await
        .expect("moto creates the queue")
        .queue_url
        .expect("a queue URL");
    let slack = job(&jobs(&moto::unique("disk-full")).await, Channel::Slack);
    let visibility = RetryAfterVisibility::new(sqs.clone(), &queue_url);

    for (retry_after_secs, offered_again) in [(None, true), (Some(600), false)] {
        sqs.send_message()
            .queue_url(&queue_url)
            .message_body(serde_json::to_string(&slack).unwrap())
            .send()
            .await
            .unwrap();
        let received = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(1)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        assert_eq!(received.len(), 1);
        let mut message = SqsMessage::default();
        message.message_id = received[0].message_id.clone();
        message.body = received[0].body.clone();
        message.receipt_handle = received[0].receipt_handle.clone();
        let mut event = SqsEvent::default();
        event.records = vec![message];
        let notify = NotifyService::new(vec![Arc::new(BusySlack { retry_after_secs })], RenderContext::default());

        let response = deliver_batch_retrying_after(
            &notify,
            &Metrics::disabled(tocsin_core::metrics::function::NOTIFY),
            Some(&visibility),
            event,
        )
        .await;
        assert_eq!(response.batch_item_failures.len(), 1, "{retry_after_secs:?}");

        let again = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        assert_eq!(!again.is_empty(), offered_again, "{retry_after_secs:?}: {again:?}");
        for message in again {
            sqs.delete_message()
                .queue_url(&queue_url)
                .receipt_handle(message.receipt_handle.unwrap())
                .send()
                .await
                .unwrap();
        }
    }
}
