//! Email contacts and SES feedback, end to end: notify-email sends through
//! the configuration set that routes bounces and complaints to
//! ses-feedback (seen in the request itself, through the recording proxy:
//! moto keeps no configuration set on a sent message); `tocsin contacts`
//! lists, unsuppresses and suppresses contacts in a table (moto) and in a
//! running local stack's data folder, whose email honours it.

use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use tocsin_aws::contacts::DynamoContactHealth;
use tocsin_aws::dynamodb::create_table;
use tocsin_core::config::EmailAddress;
use tocsin_core::contacts::ContactHealth;
use tocsin_core::notify::Channel;

use crate::app::{fixture, keys, tocsin_bin, wait_for, workspace_root, TestApp};
use crate::aws_proxy::AwsProxy;
use crate::aws_stack::{moto_url, sdk_config};
use crate::runtime_api::{function_bin, Function};

/// `tocsin <args…>` with `env`, none of the caller's operator variables.
fn tocsin(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(tocsin_bin());
    command.args(args).current_dir(workspace_root()).stdin(Stdio::null());
    for variable in ["TOCSIN_URL", "TOCSIN_TABLE", "TOCSIN_DATA", "TOCSIN_LISTEN"] {
        command.env_remove(variable);
    }
    command.envs(env.iter().copied());
    command.output().expect("cannot run tocsin")
}

#[track_caller]
fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "tocsin failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[track_caller]
fn failed(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "tocsin should have failed:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

/// Notification jobs as the email queue hands them to notify-email.
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
async fn notify_email_sends_through_the_configuration_set_that_routes_feedback() {
    let moto = moto_url();
    let config = sdk_config(&moto).await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let table = format!("ses-config-set-{run}");
    create_table(&aws_sdk_dynamodb::Client::new(&config), &table)
        .await
        .expect("create the table");
    let from = format!("tocsin-{run}@example.com");
    aws_sdk_sesv2::Client::new(&config)
        .create_email_identity()
        .email_identity(&from)
        .send()
        .await
        .expect("verify the sender");
    let configuration_set = format!("tocsin-feedback-{run}");

    let proxy = AwsProxy::new(&moto);
    let endpoint = proxy.endpoint("notify-email").await;
    let scratch = tempfile::tempdir().expect("a scratch folder");
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("TOCSIN_TABLE", table.as_str()),
        ("TOCSIN_EMAIL_FROM", from.as_str()),
        ("TOCSIN_SES_CONFIGURATION_SET", configuration_set.as_str()),
    ];
    let mut notifier = Function::start(&function_bin("notify-email"), &env, scratch.path()).await;
    let mut job = tocsin_core::contract::sample_job(Channel::Email, &format!("disk full {run}"));
    let recipient = format!("oncall-{run}@example.com");
    job.to = recipient.clone();
    let answer = notifier.invoke(sqs_event(&[&job])).await.expect("notify-email answers");
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");

    let sends: Vec<_> = proxy
        .calls()
        .into_iter()
        .filter(|call| call.service == "ses" && call.operation == "SendEmail")
        .collect();
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(sends[0].status, Some(200), "{sends:?}");
    let request: Value = serde_json::from_slice(&sends[0].body).expect("SendEmail's body is JSON");
    assert_eq!(request["ConfigurationSetName"], configuration_set.as_str(), "{request}");
    assert_eq!(request["Destination"]["ToAddresses"], json!([recipient]), "{request}");
    assert_eq!(request["FromEmailAddress"], from.as_str(), "{request}");
}

#[tokio::test]
async fn contacts_are_listed_unsuppressed_with_their_history_and_suppressed_in_the_table() {
    let moto = moto_url();
    let config = sdk_config(&moto).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let table = format!("cli-contacts-{}", uuid::Uuid::new_v4().simple());
    create_table(&dynamodb, &table).await.expect("create the table");
    let contacts = DynamoContactHealth::new(dynamodb, &table);
    let bounce = String::from_utf8(fixture("events/aws/ses-feedback/bounce-permanent.json")).expect("UTF-8");
    tocsin_aws::contacts::record_ses_notification(&contacts, &bounce)
        .await
        .expect("record the bounce");

    let env = [
        ("AWS_ENDPOINT_URL", moto.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("TOCSIN_TABLE", table.as_str()),
    ];
    let aws = |args: &[&str]| tocsin(args, &env);

    let listed = succeeded(&aws(&["contacts", "list"]));
    let row = listed
        .lines()
        .find(|line| line.starts_with("jane@example.com"))
        .unwrap_or_else(|| panic!("jane is listed:\n{listed}"));
    assert!(row.split_whitespace().nth(1) == Some("yes"), "suppressed: {row}");
    let suppressed = json_lines(&succeeded(&aws(&["contacts", "list", "--suppressed", "--json"])));
    assert_eq!(suppressed.len(), 1, "{suppressed:?}");
    assert_eq!(suppressed[0]["email"], "jane@example.com");
    assert_eq!(suppressed[0]["permanent_bounces"], 1);
    assert!(
        suppressed[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("bounced permanently"),
        "{suppressed:?}"
    );

    let unsuppressed = succeeded(&aws(&[
        "contacts",
        "unsuppress",
        "Jane@Example.com",
        "--by",
        "e2e-operator",
    ]));
    assert!(
        unsuppressed.contains("jane@example.com is no longer suppressed"),
        "{unsuppressed}"
    );
    let jane = EmailAddress::parse("jane@example.com").unwrap();
    let state = contacts.contact(&jane).await.expect("read").expect("kept");
    assert!(!state.suppressed);
    assert_eq!(state.permanent_bounces, 1, "the history stays");
    assert!(state.last_bounce.is_some(), "the latest bounce stays");
    let change = state.last_change.expect("the change is recorded");
    assert_eq!((change.suppressed, change.by.as_str()), (false, "e2e-operator"));
    assert!(
        json_lines(&succeeded(&aws(&["contacts", "list", "--suppressed", "--json"]))).is_empty(),
        "no longer listed as suppressed"
    );
    let all = json_lines(&succeeded(&aws(&["contacts", "list", "--json"])));
    assert_eq!(all[0]["last_change"]["by"], "e2e-operator", "{all:?}");
    assert_eq!(all[0]["last_change"]["suppressed"], false, "{all:?}");

    let again = failed(&aws(&["contacts", "unsuppress", "jane@example.com"]));
    assert!(again.contains("already not suppressed"), "{again}");
    let unknown = failed(&aws(&["contacts", "unsuppress", "nobody@example.com"]));
    assert!(unknown.contains("no bounce, complaint or suppression"), "{unknown}");
    let bad = failed(&aws(&["contacts", "suppress", "not-an-address"]));
    assert!(bad.contains("not an email address"), "{bad}");

    succeeded(&aws(&[
        "contacts",
        "suppress",
        "jane@example.com",
        "--by",
        "e2e-operator",
    ]));
    let state = contacts.contact(&jane).await.expect("read").expect("kept");
    assert!(state.suppressed);
    assert_eq!(state.last_change.map(|c| c.suppressed), Some(true));

    let no_store = failed(&tocsin(&["contacts", "list"], &[]));
    assert!(no_store.contains("no store"), "{no_store}");
}

/// The incident's notification entries: (transition, channel, result, reason).
async fn notifications(app: &TestApp, id: &str) -> Vec<(String, String, String, String)> {
    let body = app
        .api_get(&format!("/incidents/{id}/timeline"))
        .await
        .expect(200)
        .json();
    body["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["kind"] == "notification")
        .map(|e| {
            let text = |name: &str| e[name].as_str().unwrap_or_default().to_owned();
            (text("transition"), text("channel"), text("result"), text("reason"))
        })
        .collect()
}

async fn send(app: &TestApp, action: &str) {
    app.enqueue(&json!({
        "routing_key": keys::CHECKOUT_EVENTS,
        "event_action": action,
        "dedup_key": "suppressed-contact",
        "payload": {"summary": "disk full", "source": "db-1", "severity": "critical"},
    }))
    .await
    .expect(202);
}

#[tokio::test]
async fn a_suppression_set_with_the_cli_stops_local_email_until_it_is_cleared() {
    let app = TestApp::start().await;
    let data = app.data_dir();
    let data = data.to_str().expect("a UTF-8 data folder");
    let local = |args: &[&str]| {
        let args: Vec<&str> = args.iter().copied().chain(["--data", data]).collect();
        tocsin(&args, &[])
    };
    assert_eq!(succeeded(&local(&["contacts", "list"])).trim(), "no contacts");
    succeeded(&local(&[
        "contacts",
        "suppress",
        "OnCall@example.com",
        "--by",
        "e2e-operator",
    ]));
    let listed = json_lines(&succeeded(&local(&["contacts", "list", "--json"])));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["email"], "oncall@example.com");
    assert_eq!(listed[0]["suppressed"], true);
    assert_eq!(listed[0]["last_change"]["by"], "e2e-operator");

    send(&app, "trigger").await;
    let incident = app
        .wait_for_incident("the incident", |i| i["dedup_key"] == "suppressed-contact")
        .await;
    let id = incident["id"].as_str().expect("an id").to_owned();
    let entries = wait_for("the suppressed email and the SMS", || async {
        let entries = notifications(&app, &id).await;
        let done = entries.iter().any(|(_, c, _, _)| c == "email") && entries.iter().any(|(_, c, _, _)| c == "sms");
        done.then_some(entries)
    })
    .await;
    let email = entries
        .iter()
        .find(|(_, c, _, _)| c == "email")
        .expect("an email entry");
    assert_eq!(email.2, "suppressed", "{entries:?}");
    assert!(email.3.contains("suppressed by e2e-operator"), "{entries:?}");
    assert!(
        !app.outbox()
            .iter()
            .any(|l| l["channel"] == "email" && l["incident_id"] == id.as_str()),
        "no email reached the outbox"
    );

    succeeded(&local(&[
        "contacts",
        "unsuppress",
        "oncall@example.com",
        "--by",
        "e2e-operator",
    ]));
    send(&app, "resolve").await;
    let entries = wait_for("the resolve's email", || async {
        let entries = notifications(&app, &id).await;
        entries
            .iter()
            .any(|(t, c, _, _)| t == "resolved" && c == "email")
            .then_some(entries)
    })
    .await;
    let resolved = entries
        .iter()
        .find(|(t, c, _, _)| t == "resolved" && c == "email")
        .expect("the resolve's email");
    assert_eq!(resolved.2, "delivered", "{entries:?}");
}
