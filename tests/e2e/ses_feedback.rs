//! ses-feedback as a process under the local Lambda Runtime API: an SNS
//! event carrying SES's permanent bounce (events/aws/ses-feedback/) is recorded
//! against the contact in the table (moto); a redelivery changes nothing;
//! a message that is not an SES notification fails the invocation, for
//! SNS and Lambda to retry and then dead-letter it.

use serde_json::{json, Value};
use tocsin_aws::contacts::DynamoContactHealth;
use tocsin_aws::dynamodb::{create_table, DynamoStore};
use tocsin_core::config::EmailAddress;
use tocsin_core::contacts::{ContactHealth, FeedbackKind};
use tocsin_core::incident::IncidentId;
use tocsin_core::notify::Channel;
use tocsin_core::ports::Timeline;
use tocsin_core::timeline::{DeliveryResult, Happened};

use crate::app::fixture;
use crate::runtime_api::{function_bin, Function};

fn moto_url() -> String {
    std::env::var("TOCSIN_MOTO_URL")
        .unwrap_or_else(|_| panic!("TOCSIN_MOTO_URL is not set: this test needs a moto server (tests/run starts one)"))
}

async fn sdk_config(url: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(url)
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .load()
        .await
}

/// The SES notification as the SesFeedbackTopic hands it to its subscriber.
fn sns_event(message: &str) -> Value {
    let topic = "arn:aws:sns:us-east-1:123456789012:tocsin-SesFeedbackTopic-1A2B3C";
    json!({"Records": [{
        "EventSource": "aws:sns",
        "EventVersion": "1.0",
        "EventSubscriptionArn": format!("{topic}:2bcfbf39-05c3-41de-beaa-fcfcc21c8f55"),
        "Sns": {
            "Type": "Notification",
            "MessageId": "95df01b4-ee98-5cb9-9903-4c221d41eb5e",
            "TopicArn": topic,
            "Subject": null,
            "Message": message,
            "Timestamp": "2016-01-27T14:59:38.300Z",
            "SignatureVersion": "1",
            "Signature": "EXAMPLE",
            "SigningCertUrl": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem",
            "UnsubscribeUrl": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
            "MessageAttributes": {}
        }
    }]})
}

#[tokio::test]
async fn a_permanent_bounce_from_sns_suppresses_the_contact() {
    let moto = moto_url();
    let config = sdk_config(&moto).await;
    let table = format!("ses-feedback-{}", uuid::Uuid::new_v4().simple());
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    create_table(&dynamodb, &table).await.unwrap();
    let contacts = DynamoContactHealth::new(dynamodb.clone(), &table);
    let jane = EmailAddress::parse("jane@example.com").unwrap();
    assert_eq!(contacts.contact(&jane).await.unwrap(), None);

    let scratch = tempfile::tempdir().unwrap();
    let env = [("AWS_ENDPOINT_URL", moto.as_str()), ("TOCSIN_TABLE", table.as_str())];
    let mut function = Function::start(&function_bin("ses-feedback"), &env, scratch.path()).await;
    let bounce = String::from_utf8(fixture("events/aws/ses-feedback/bounce-permanent.json")).unwrap();
    let answer = function.invoke(sns_event(&bounce)).await.expect("ses-feedback answers");
    assert_eq!(answer, json!({"recorded": 1}));

    let state = contacts.contact(&jane).await.unwrap().expect("jane is recorded");
    assert!(state.suppressed, "a permanent bounce suppresses");
    assert_eq!(state.permanent_bounces, 1);
    let last = state.last_bounce.expect("the bounce");
    assert_eq!(last.kind, FeedbackKind::PermanentBounce);
    assert_eq!(
        last.message_id,
        "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000"
    );

    // SNS redelivers the same notification: nothing changes.
    let answer = function.invoke(sns_event(&bounce)).await.expect("ses-feedback answers");
    assert_eq!(answer, json!({"recorded": 0}));
    assert_eq!(contacts.contact(&jane).await.unwrap().unwrap().permanent_bounces, 1);

    let error = function
        .invoke(sns_event("not an SES notification"))
        .await
        .expect_err("an error for SNS and Lambda to retry");
    assert!(error.to_string().contains("95df01b4"), "{error}");
}

/// A notification job as the email queue hands it to notify-email.
fn sqs_event(jobs: &[&tocsin_core::notify::NotificationJob]) -> Value {
    let records: Vec<Value> = jobs
        .iter()
        .enumerate()
        .map(|(n, job)| {
            json!({
                "messageId": format!("m-{n}"),
                "receiptHandle": format!("r-{n}"),
                "body": serde_json::to_string(job).unwrap(),
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:tocsin-EmailQueue",
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    json!({ "Records": records })
}

#[tokio::test]
async fn notify_email_sends_nothing_to_a_suppressed_address_and_says_so() {
    let moto = moto_url();
    let config = sdk_config(&moto).await;
    let table = format!("ses-suppressed-{}", uuid::Uuid::new_v4().simple());
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    create_table(&dynamodb, &table).await.unwrap();
    let bounce = String::from_utf8(fixture("events/aws/ses-feedback/bounce-permanent.json")).unwrap();
    let contacts = DynamoContactHealth::new(dynamodb.clone(), &table);
    tocsin_aws::contacts::record_ses_notification(&contacts, &bounce)
        .await
        .unwrap();

    let from = format!("tocsin-{}@example.com", uuid::Uuid::new_v4().simple());
    aws_sdk_sesv2::Client::new(&config)
        .create_email_identity()
        .email_identity(&from)
        .send()
        .await
        .unwrap();
    let summary = format!("disk full {}", uuid::Uuid::new_v4().simple());
    let mut jane = tocsin_core::contract::sample_job(Channel::Email, &summary);
    jane.to = "jane@example.com".to_owned();
    jane.id = format!("{}:jane", jane.id);
    let mary_address = format!("mary-{}@example.com", uuid::Uuid::new_v4().simple());
    let mut mary = jane.clone();
    mary.to = mary_address.clone();
    mary.id = format!("{}:mary", mary.id);

    let scratch = tempfile::tempdir().unwrap();
    let env = [
        ("AWS_ENDPOINT_URL", moto.as_str()),
        ("TOCSIN_TABLE", table.as_str()),
        ("TOCSIN_EMAIL_FROM", from.as_str()),
    ];
    let mut notifier = Function::start(&function_bin("notify-email"), &env, scratch.path()).await;
    let answer = notifier
        .invoke(sqs_event(&[&jane, &mary]))
        .await
        .expect("notify-email answers");
    assert_eq!(
        answer["batchItemFailures"],
        json!([]),
        "a suppressed job is done, not retried: {answer}"
    );

    let data: Value = reqwest::get(format!("{moto}/moto-api/data.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut sent = Vec::new();
    collect_strings(&data["ses"]["Message"], &summary, &mut sent);
    assert!(
        sent.iter().any(|m| m.contains(&mary_address)),
        "mary's email reached SES: {sent:?}"
    );
    assert!(
        !sent.iter().any(|m| m.contains("jane@example.com")),
        "jane's did not: {sent:?}"
    );

    let store = DynamoStore::new(dynamodb, &table);
    let entries = store
        .timeline(&IncidentId::parse("inc_3f9a1c07d2e84b6a90c1").unwrap())
        .await
        .unwrap();
    let results: Vec<(String, DeliveryResult)> = entries
        .iter()
        .filter_map(|e| match &e.what {
            Happened::Notification { recipient, result, .. } => Some((recipient.clone(), result.clone())),
            _ => None,
        })
        .collect();
    let jane_result = results
        .iter()
        .find(|(recipient, _)| recipient == "jane@example.com")
        .map(|(_, result)| result.clone());
    let Some(DeliveryResult::Suppressed { reason }) = jane_result else {
        panic!("no suppressed entry for jane: {results:?}")
    };
    assert!(reason.contains("bounced permanently"), "{reason}");
    assert!(
        results
            .iter()
            .any(|(r, result)| *r == mary_address && matches!(result, DeliveryResult::Delivered { .. })),
        "{results:?}"
    );
}

/// Every moto record (as JSON text) under `value` that mentions `needle`.
fn collect_strings(value: &Value, needle: &str, out: &mut Vec<String>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, needle, out)),
        Value::Object(map) if map.contains_key("destinations") || map.contains_key("id") => {
            let text = value.to_string();
            if text.contains(needle) {
                out.push(text);
            }
        }
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, needle, out)),
        _ => {}
    }
}
