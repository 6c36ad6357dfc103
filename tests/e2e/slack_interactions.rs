//! The Slack app's buttons and `/tocsin` slash command against the local
//! stack: signed as Slack signs (v0, with the current time), verified,
//! queued as acknowledge / resolve events and applied by the processor.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::app::{keys, settle, wait_for, TestApp, TEST_CONFIG};

const SIGNING_SECRET: &str = "e2e-slack-signing-secret-0123456789";

fn config() -> String {
    let with = TEST_CONFIG.replace(
        "settings:\n",
        &format!("settings:\n  slack_signing_secret: {SIGNING_SECRET}\n"),
    );
    assert_ne!(with, TEST_CONFIG, "the test config has a settings section");
    with
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// `v0=` HMAC-SHA256 of `v0:{timestamp}:{body}`, computed here rather than
/// with the code under test.
fn signature(secret: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("v0:{timestamp}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn button(action_id: &str, incident: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": "U2CERLKJA", "username": "roadrunner", "team_id": "T1DC2JH3J"},
        "api_app_id": "A0KRD7HC3",
        "response_url": "https://hooks.slack.com/actions/T1DC2JH3J/1/x",
        "actions": [{"action_id": action_id, "block_id": "tocsin_incident_actions", "value": incident, "type": "button"}],
    });
    form(&[("payload", &payload.to_string())])
}

fn command(text: &str) -> String {
    form(&[
        ("token", "deprecated-verification-token"),
        ("command", "/tocsin"),
        ("text", text),
        ("user_id", "U2CERLKJA"),
        ("user_name", "roadrunner"),
        ("response_url", "https://hooks.slack.com/commands/T1DC2JH3J/1/x"),
    ])
}

/// POSTs `body` as Slack does: a form, signed with `secret` at `timestamp`.
async fn post_signed(app: &TestApp, path: &str, body: &str, secret: &str, timestamp: i64) -> crate::app::Reply {
    let signature = signature(secret, timestamp, body);
    let timestamp = timestamp.to_string();
    app.post_bytes(
        path,
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-slack-request-timestamp", &timestamp),
            ("x-slack-signature", &signature),
        ],
        body.to_owned(),
    )
    .await
}

fn ephemeral_text(reply: &crate::app::Reply) -> String {
    reply.expect(200);
    let body: Value = reply.json();
    assert_eq!(body["response_type"], "ephemeral", "{body}");
    body["text"].as_str().expect("a text").to_owned()
}

async fn status_of(app: &TestApp, id: &str) -> String {
    let reply = app.api_get(&format!("/incidents/{id}")).await;
    reply.expect(200).json()["status"].as_str().expect("status").to_owned()
}

#[tokio::test]
async fn slack_buttons_and_the_slash_command_acknowledge_list_and_resolve() {
    let app = TestApp::start_with(Some(&config()), keys::OPS).await;
    app.enqueue(&json!({
        "routing_key": keys::CHECKOUT_EVENTS,
        "event_action": "trigger",
        "dedup_key": "slack-disk-full",
        "payload": {"summary": "Disk full on db-1", "source": "db-1", "severity": "critical"},
    }))
    .await
    .expect(202);
    let incident = app
        .wait_for_incident("the incident", |i| i["dedup_key"] == "slack-disk-full")
        .await;
    let id = incident["id"].as_str().expect("id").to_owned();
    let press = button("tocsin_acknowledge", &id);

    // A wrong secret, a replay from 301 s ago and a timestamp 301 s ahead:
    // 401, and nothing changes.
    let now = unix_now();
    for (secret, timestamp) in [
        ("not-the-signing-secret", now),
        (SIGNING_SECRET, now - 301),
        (SIGNING_SECRET, now + 301),
    ] {
        post_signed(&app, "/slack/interactions", &press, secret, timestamp)
            .await
            .expect_error(401);
    }
    let unsigned = app.post_bytes("/slack/interactions", &[], press.clone()).await;
    unsigned.expect_error(401);
    settle().await;
    assert_eq!(status_of(&app, &id).await, "open");

    // Signed and malformed: 400. Signed, for an incident that is not: an
    // ephemeral error Slack shows.
    post_signed(
        &app,
        "/slack/interactions",
        "payload=%7Bnot-json",
        SIGNING_SECRET,
        unix_now(),
    )
    .await
    .expect_error(400);
    let unknown = button("tocsin_acknowledge", "inc_00000000000000000000");
    let said = ephemeral_text(&post_signed(&app, "/slack/interactions", &unknown, SIGNING_SECRET, unix_now()).await);
    assert!(said.starts_with("There is no incident"), "{said}");

    // Acknowledge pressed, correctly signed.
    let reply = post_signed(&app, "/slack/interactions", &press, SIGNING_SECRET, unix_now()).await;
    let said = ephemeral_text(&reply);
    assert!(said.contains(&id) && said.contains("<@U2CERLKJA>"), "{said}");
    let app_ref = &app;
    let id_ref = id.as_str();
    wait_for("the incident acknowledged from Slack", || async move {
        (status_of(app_ref, id_ref).await == "acknowledged").then_some(())
    })
    .await;

    // /tocsin incidents lists it; /tocsin with nothing else helps.
    let listed = ephemeral_text(
        &post_signed(
            &app,
            "/slack/commands",
            &command("incidents"),
            SIGNING_SECRET,
            unix_now(),
        )
        .await,
    );
    assert!(listed.contains(&id) && listed.contains("acknowledged"), "{listed}");
    let help = ephemeral_text(&post_signed(&app, "/slack/commands", &command(""), SIGNING_SECRET, unix_now()).await);
    assert!(help.contains("/tocsin resolve INCIDENT_ID"), "{help}");

    // /tocsin resolve ID, signed.
    let resolve = command(&format!("resolve {id}"));
    post_signed(&app, "/slack/commands", &resolve, "not-the-signing-secret", unix_now())
        .await
        .expect_error(401);
    let said = ephemeral_text(&post_signed(&app, "/slack/commands", &resolve, SIGNING_SECRET, unix_now()).await);
    assert!(said.starts_with(&format!("Resolving `{id}`")), "{said}");
    wait_for("the incident resolved from Slack", || async move {
        (status_of(app_ref, id_ref).await == "resolved").then_some(())
    })
    .await;
    let listed = ephemeral_text(
        &post_signed(
            &app,
            "/slack/commands",
            &command("incidents"),
            SIGNING_SECRET,
            unix_now(),
        )
        .await,
    );
    assert_eq!(listed, "No open or acknowledged incidents.");

    // The timeline names who did it.
    let timeline = app.api_get(&format!("/incidents/{id}/timeline")).await;
    let text = timeline.expect(200).text.clone();
    assert!(text.contains("slack:@roadrunner (U2CERLKJA)"), "{text}");
}

#[tokio::test]
async fn without_a_signing_secret_the_slack_routes_answer_404() {
    let app = TestApp::start().await;
    let body = command("incidents");
    post_signed(&app, "/slack/commands", &body, SIGNING_SECRET, unix_now())
        .await
        .expect_error(404);
}

/// An API Gateway HTTP API request, as the slack-interactions function
/// receives Slack's POSTs.
fn api_gateway_request(path: &str, body: &str, timestamp: i64, secret: &str) -> Value {
    json!({
        "version": "2.0",
        "routeKey": format!("POST {path}"),
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "content-type": "application/x-www-form-urlencoded",
            "x-slack-request-timestamp": timestamp.to_string(),
            "x-slack-signature": signature(secret, timestamp, body),
            "user-agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "a1b2c3d4e5",
            "domainName": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "a1b2c3d4e5",
            "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.10", "userAgent": "Slackbot 1.0"},
            "requestId": "slack-test",
            "routeKey": format!("POST {path}"),
            "stage": "$default",
            "time": "23/Nov/2026:09:00:00 +0000",
            "timeEpoch": 1795424400000_u64
        },
        "body": body,
        "isBase64Encoded": false
    })
}

/// The slack-interactions Lambda against moto: the signing secret from the
/// Slack secret's JSON, the incident from the table, the acknowledge on the
/// events queue.
#[tokio::test]
async fn the_slack_interactions_function_queues_a_signed_button_press() {
    use aws_sdk_sqs::types::QueueAttributeName;
    use tocsin_aws::dynamodb::{create_table, DynamoStore};
    use tocsin_core::contract::sample_event;
    use tocsin_core::event::{Action, DedupKey, Event, ServiceId};
    use tocsin_core::ports::IncidentStore;
    use tocsin_core::process::ProcessService;

    use crate::aws_stack::{moto_url, sdk_config};
    use crate::runtime_api::{function_bin, Function};

    let moto = moto_url();
    let config = sdk_config(&moto).await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let table = format!("tocsin-slack-{run}");
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    create_table(&dynamodb, &table).await.unwrap();
    let store = std::sync::Arc::new(DynamoStore::new(dynamodb, &table));
    let trigger = sample_event("checkout", "disk-full", Action::Trigger);
    ProcessService::new(store.clone())
        .apply(&trigger, trigger.received_at)
        .await
        .unwrap();
    let incident = store
        .latest(
            &ServiceId::parse("checkout").unwrap(),
            &DedupKey::parse("disk-full").unwrap(),
        )
        .await
        .unwrap()
        .expect("the incident");

    let sqs = aws_sdk_sqs::Client::new(&config);
    let queue = sqs
        .create_queue()
        .queue_name(format!("events-{run}.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let secret = aws_sdk_secretsmanager::Client::new(&config)
        .create_secret()
        .name(format!("tocsin-slack-{run}"))
        .secret_string(json!({"bot_token": "xoxb-slack-test-token", "signing_secret": SIGNING_SECRET}).to_string())
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();

    let scratch = tempfile::tempdir().unwrap();
    let env = [
        ("AWS_ENDPOINT_URL", moto.as_str()),
        ("TOCSIN_TABLE", table.as_str()),
        ("TOCSIN_EVENTS_QUEUE_URL", queue.as_str()),
        ("TOCSIN_SLACK_SECRET_ARN", secret.as_str()),
    ];
    let mut function = Function::start(&function_bin("slack-interactions"), &env, scratch.path()).await;

    let press = button("tocsin_acknowledge", incident.id.as_str());
    let refused = function
        .invoke(api_gateway_request(
            "/slack/interactions",
            &press,
            unix_now() - 301,
            SIGNING_SECRET,
        ))
        .await
        .unwrap_or_else(|e| panic!("slack-interactions failed: {e}"));
    assert_eq!(refused["statusCode"], 401, "{refused}");

    let answer = function
        .invoke(api_gateway_request(
            "/slack/interactions",
            &press,
            unix_now(),
            SIGNING_SECRET,
        ))
        .await
        .unwrap_or_else(|e| panic!("slack-interactions failed: {e}"));
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap_or("null")).unwrap();
    assert!(
        body["text"].as_str().unwrap_or_default().starts_with("Acknowledging"),
        "{body}"
    );

    let listed = function
        .invoke(api_gateway_request(
            "/slack/commands",
            &command("incidents"),
            unix_now(),
            SIGNING_SECRET,
        ))
        .await
        .unwrap_or_else(|e| panic!("slack-interactions failed: {e}"));
    let body: Value = serde_json::from_str(listed["body"].as_str().unwrap_or("null")).unwrap();
    assert!(
        body["text"].as_str().unwrap_or_default().contains(incident.id.as_str()),
        "{body}"
    );

    let messages = sqs
        .receive_message()
        .queue_url(&queue)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    let events: Vec<Event> = messages
        .messages()
        .iter()
        .map(|m| serde_json::from_str(m.body().unwrap_or_default()).expect("an event"))
        .collect();
    assert_eq!(events.len(), 1, "one acknowledge queued: {events:?}");
    assert_eq!(events[0].action(), Action::Acknowledge);
    assert_eq!(events[0].dedup_key(), &incident.dedup_key);
    assert_eq!(events[0].service, incident.service);
}
