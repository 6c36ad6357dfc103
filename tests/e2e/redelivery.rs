//! At-least-once delivery on the AWS path (issue 6): a GitHub redelivery
//! (same X-GitHub-Delivery), an SNS retry (same MessageId), an events-queue
//! message SQS hands out twice (the poller's delete lost), the same event
//! queued again after SQS's deduplication window, and the stream's records
//! dispatched twice, all through the real functions against moto. Each
//! produces the incidents and notifications of a single delivery.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value;
use tocsin_core::config::{EmailAddress, Integration, NotificationPolicy, PhoneNumber, Service};
use tocsin_core::event::{Origin, ServiceId, Severity};
use tocsin_core::incident::TransitionKind;
use tocsin_core::ports::{IncidentFilter, IncidentStore};
use tocsin_core::providers::ProviderKind;
use tocsin_core::sns::TopicArn;

use crate::aws_requests::{github_failed_run_event, sns_alarm_event};
use crate::aws_stack::{QueueSettings, Stack};

const GITHUB_KEY: &str = "d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4";
const GITHUB_SECRET: &str = "redelivery-github-secret";
const ALARMS_KEY: &str = "e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5";

#[tokio::test]
async fn redeliveries_and_duplicate_messages_make_the_incidents_and_notifications_of_one_delivery() {
    let stack = Stack::new(QueueSettings::default()).await;
    let short = &stack.run[..8];
    let email = format!("oncall-{}@example.com", stack.run);
    let phone = format!(
        "+1555{:07}",
        u32::from_str_radix(&stack.run[..6], 16).unwrap() % 10_000_000
    );
    let topic = format!("arn:aws:sns:us-east-1:123456789012:redelivery-{short}");
    let service = ServiceId::parse("orders").unwrap();
    stack
        .store
        .put_service(&Service {
            id: service.clone(),
            name: "Orders".into(),
            policy: NotificationPolicy {
                email: vec![EmailAddress::parse(&email).unwrap()],
                sms: vec![PhoneNumber::parse(&phone).unwrap()],
                slack: None,
                webhooks: Vec::new(),
                on: vec![TransitionKind::Triggered],
                min_severity: Severity::Info,
                min_severity_by_channel: Default::default(),
                escalation: Vec::new(),
            },
        })
        .await
        .unwrap();
    let integration = |id: &str, provider, key: &str| crate::aws_stack::integration(id, &service, provider, key);
    stack
        .store
        .put_integration(&Integration {
            secret: Some(tocsin_core::config::Secret::new(GITHUB_SECRET.to_owned())),
            ..integration("orders-github", ProviderKind::Github, GITHUB_KEY)
        })
        .await
        .unwrap();
    let mut alarms = integration("orders-alarms", ProviderKind::CloudWatch, ALARMS_KEY);
    alarms.cloudwatch.topics = vec![TopicArn::parse(&topic).unwrap()];
    stack.store.put_integration(&alarms).await.unwrap();

    // GitHub: one delivery, its redelivery, and a second failure of the
    // same workflow (a new delivery, so a repeat of the same incident).
    let mut github = stack.function("ingest-github", "ingest-github").await;
    let branch = format!("release-{short}");
    let first = uuid::Uuid::new_v4().to_string();
    let second = uuid::Uuid::new_v4().to_string();
    for delivery in [&first, &first, &second] {
        let event = github_failed_run_event(GITHUB_KEY, GITHUB_SECRET, &branch, delivery);
        let answer = github.invoke(event).await.expect("ingest-github answers");
        assert_eq!(answer["statusCode"], 202, "{answer}");
    }
    // SNS: one notification, delivered twice.
    let mut sns = stack.function("ingest-cloudwatch-sns", "ingest-cloudwatch-sns").await;
    let message_id = uuid::Uuid::new_v4().to_string();
    for _ in 0..2 {
        let event = sns_alarm_event(&topic, &format!("errors-{short}"), &message_id);
        let answer = sns.invoke(event).await.expect("ingest-cloudwatch-sns answers");
        assert_eq!(answer["accepted"], 1, "{answer}");
    }

    // The first GitHub event queued again under a new deduplication id, as
    // an ingest retry after SQS's five-minute window would.
    let first_body = stack
        .proxy
        .calls()
        .iter()
        .filter(|c| c.caller == "ingest-github" && c.operation == "SendMessageBatch")
        .find_map(|c| {
            let request: Value = serde_json::from_slice(&c.body).ok()?;
            let entry = request["Entries"][0].clone();
            Some((
                entry["MessageBody"].as_str()?.to_owned(),
                entry["MessageGroupId"].as_str()?.to_owned(),
            ))
        })
        .expect("the first delivery's SendMessageBatch");
    stack
        .sqs
        .send_message()
        .queue_url(&stack.events.url)
        .message_body(&first_body.0)
        .message_group_id(&first_body.1)
        .message_deduplication_id(uuid::Uuid::new_v4().simple().to_string())
        .send()
        .await
        .unwrap();

    // The processor: the first batch's deletes are lost, so SQS hands the
    // same messages out again after the visibility timeout.
    let mut processor = stack.function("processor", "processor").await;
    let source = stack.sqs_source(&stack.events).await;
    let lost = source.poll(&mut processor, false).await.expect("the first batch");
    assert_eq!(lost.failed, 0, "{lost:?}");
    let (_, invocations) = source.drain(vec![processor], Duration::from_secs(30)).await;
    let redelivered: usize = invocations.iter().map(|i| i.records).sum();
    assert!(
        redelivered >= lost.records,
        "the batch came back: {lost:?} then {invocations:?}"
    );

    let items = stack.scan().await;
    let kind = |item: &tocsin_aws::dynamodb::Item, k: &str| item.get("type") == Some(&AttributeValue::S(k.into()));
    // Openings and repeats leave no applied record, only their tag in the
    // incident's item (tocsin_aws::dynamodb::attr::RECENT).
    let applied = items.iter().filter(|i| kind(i, "applied")).count();
    assert_eq!(
        applied, 0,
        "two incidents opened and repeated, none acknowledged or resolved"
    );
    let tags: usize = items
        .iter()
        .filter(|i| kind(i, "incident"))
        .map(|i| match i.get(tocsin_aws::dynamodb::attr::RECENT) {
            Some(AttributeValue::L(tags)) => tags.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(tags, 3, "two GitHub failures and one alarm, each applied once");
    let mut occurrences: HashMap<String, u64> = HashMap::new();
    for incident in stack.store.list(&IncidentFilter::default()).await.unwrap() {
        let Origin::Integration { integration, .. } = &incident.origin else {
            panic!("an incident not from an integration: {incident:?}")
        };
        occurrences.insert(integration.to_string(), incident.occurrences);
    }
    assert_eq!(
        occurrences,
        HashMap::from([("orders-github".to_owned(), 2), ("orders-alarms".to_owned(), 1)]),
        "one incident per alert; the redeliveries counted no occurrence"
    );

    // The stream dispatched twice (a retried shard batch), then the
    // notification queues delivered.
    let mut dispatch = stack.function("dispatch", "dispatch").await;
    for _ in 0..2 {
        let mut stream = stack.stream_source().await;
        let outcome = stream.drain(&mut dispatch).await;
        assert_eq!(outcome.records_dispatched, 2, "two incidents opened: {outcome:?}");
    }
    for (binary, queue) in [("notify-email", &stack.email), ("notify-sms", &stack.sms)] {
        let notifier = stack.function(binary, binary).await;
        let source = stack.sqs_source(queue).await;
        let (_, invocations) = source.drain(vec![notifier], Duration::from_secs(30)).await;
        assert!(invocations.iter().all(|i| i.failed == 0), "{binary}: {invocations:?}");
    }
    let emails = stack.emails_sent_to(&email);
    let texts = stack.texts_sent_to(&phone);
    assert_eq!((emails, texts), (2, 2), "one email and one SMS per incident");
}
