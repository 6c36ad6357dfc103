//! Maintenance windows on the local stack: a window created through the
//! API holds a service's notifications while incidents are still recorded;
//! when it ends (released by the stack's scheduler), each incident still
//! open is notified once, as triggered, and one resolved during the window
//! never is. Another service is notified as usual throughout.

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{json, Value};

use crate::app::{count_transition, keys, outbox_for, settle, wait_for, Reply, TestApp};

const CONFIG: &str = r##"
api_keys:
  - {name: ops, key: sk_e2e_ops_0123456789abcdef, scopes: [events:write, incidents:read, incidents:write]}
  - {name: reader, key: sk_e2e_reader_0123456789abcdef, scopes: [incidents:read]}

services:
  - id: checkout
    name: Checkout
    integrations:
      - {id: checkout-pd, type: events-v2, key: b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2}
    notify:
      email: [oncall@example.com]
  - id: payments
    name: Payments
    integrations:
      - {id: payments-pd, type: events-v2, key: 1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b}
    notify:
      email: [payments@example.com]
"##;

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

async fn create_window(app: &TestApp, api_key: &str, body: &Value) -> Reply {
    app.send(
        app.post("/maintenance")
            .bearer_auth(api_key)
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await
}

async fn event(app: &TestApp, routing_key: &str, action: &str, dedup_key: &str) {
    app.enqueue(&json!({
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": dedup_key,
        "payload": {"summary": format!("{dedup_key} is failing"), "source": "db-1", "severity": "critical"},
    }))
    .await
    .expect(202);
}

async fn incident_id(app: &TestApp, service: &str, dedup_key: &str) -> String {
    let incident = app
        .wait_for_incident(dedup_key, |i| i["service"] == service && i["dedup_key"] == dedup_key)
        .await;
    incident["id"].as_str().expect("an incident id").to_owned()
}

/// Waits until the incident's timeline has `count` entries of `kind`.
async fn wait_for_entries(app: &TestApp, incident: &str, kind: &str, count: usize) -> Vec<Value> {
    let path = format!("/incidents/{incident}/timeline");
    wait_for(&format!("{count} '{kind}' entries in {path}"), || {
        let path = path.clone();
        async move {
            let body = app.api_get(&path).await.expect(200).json();
            let entries = body["entries"].as_array().cloned().unwrap_or_default();
            (entries.iter().filter(|e| e["kind"] == kind).count() >= count).then_some(entries)
        }
    })
    .await
}

#[tokio::test]
async fn a_window_holds_notifications_and_its_end_notifies_what_is_still_open_once() {
    let app = TestApp::start_with(Some(CONFIG), keys::OPS).await;
    let now = Utc::now();
    let end = now + TimeDelta::seconds(4);
    let created = create_window(
        &app,
        keys::OPS,
        &json!({"service": "checkout", "start": stamp(now - TimeDelta::seconds(1)), "end": stamp(end),
                "reason": "database upgrade"}),
    )
    .await;
    let window = created.expect(201).json();
    let window_id = window["id"].as_str().expect("a window id").to_owned();
    assert_eq!(window["service"], "checkout");
    assert_eq!(window["reason"], "database upgrade");
    assert_eq!(window["created_by"], "api-key:ops");

    let listed = app.api_get("/maintenance?service=checkout").await.expect(200).json();
    assert_eq!(listed["windows"].as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed["windows"][0]["id"], window_id.as_str());
    assert!(listed["windows"][0].get("released_at").is_none(), "{listed}");

    event(&app, keys::CHECKOUT_EVENTS, "trigger", "disk").await;
    event(&app, keys::CHECKOUT_EVENTS, "trigger", "cpu").await;
    event(&app, keys::PAYMENTS_EVENTS, "trigger", "ledger").await;
    let disk = incident_id(&app, "checkout", "disk").await;
    let cpu = incident_id(&app, "checkout", "cpu").await;
    let ledger = incident_id(&app, "payments", "ledger").await;
    event(&app, keys::CHECKOUT_EVENTS, "resolve", "cpu").await;
    app.wait_for_incident("cpu resolved", |i| i["id"] == cpu.as_str() && i["status"] == "resolved")
        .await;

    // Recorded, and held: the timeline says why nobody was told.
    let held = wait_for_entries(&app, &disk, "held", 1).await;
    let entry = held.iter().find(|e| e["kind"] == "held").expect("a held entry");
    assert_eq!(entry["window"], window_id.as_str());
    assert_eq!(entry["transition"], "triggered");
    wait_for_entries(&app, &cpu, "held", 2).await;
    // Another service is not in maintenance.
    app.wait_for_outbox("payments notified", |lines| {
        count_transition(lines, &ledger, "triggered") == 1
    })
    .await;
    // Only meaningful while the window lasts; the counts below hold either way
    // (a message sent during the window would make disk's two).
    if Utc::now() < end - TimeDelta::milliseconds(500) {
        let outbox = app.outbox();
        assert!(
            outbox_for(&outbox, &disk).is_empty() && outbox_for(&outbox, &cpu).is_empty(),
            "{outbox:?}"
        );
    }

    // The end: the open incident once, as triggered; the resolved one never.
    app.wait_for_outbox("disk notified after the window", |lines| {
        count_transition(lines, &disk, "triggered") == 1
    })
    .await;
    settle().await;
    let outbox = app.outbox();
    assert_eq!(
        outbox_for(&outbox, &disk).len(),
        1,
        "exactly one message for disk: {outbox:?}"
    );
    assert!(
        outbox_for(&outbox, &cpu).is_empty(),
        "nothing for the resolved incident: {outbox:?}"
    );
    assert_eq!(outbox_for(&outbox, &ledger).len(), 1, "{outbox:?}");

    let released = wait_for_entries(&app, &disk, "released", 1).await;
    assert!(released
        .iter()
        .any(|e| e["kind"] == "released" && e["window"] == window_id.as_str()));
    let listed = app.api_get("/maintenance").await.expect(200).json();
    assert!(listed["windows"][0]["released_at"].is_string(), "{listed}");
}

#[tokio::test]
async fn deleting_an_active_window_ends_it_and_sends_what_it_held() {
    let app = TestApp::start_with(Some(CONFIG), keys::OPS).await;
    let now = Utc::now();
    let body = json!({"service": "checkout", "start": stamp(now - TimeDelta::seconds(1)),
                      "end": stamp(now + TimeDelta::hours(1))});
    let window = create_window(&app, keys::OPS, &body).await.expect(201).json();
    let window_id = window["id"].as_str().expect("a window id").to_owned();
    assert!(window.get("reason").is_none(), "{window}");

    event(&app, keys::CHECKOUT_EVENTS, "trigger", "queue").await;
    let queue = incident_id(&app, "checkout", "queue").await;
    wait_for_entries(&app, &queue, "held", 1).await;
    assert!(outbox_for(&app.outbox(), &queue).is_empty());

    let path = format!("/maintenance/{window_id}");
    let deleted = app.send(app.client.delete(app.url(&path)).bearer_auth(keys::OPS)).await;
    deleted.expect(204);
    app.wait_for_outbox("queue notified once the window is deleted", |lines| {
        count_transition(lines, &queue, "triggered") == 1
    })
    .await;
    settle().await;
    assert_eq!(outbox_for(&app.outbox(), &queue).len(), 1);
    app.send(app.client.delete(app.url(&path)).bearer_auth(keys::OPS))
        .await
        .expect_error(404);
}

#[tokio::test]
async fn the_maintenance_api_checks_keys_scopes_and_windows() {
    let app = TestApp::start_with(Some(CONFIG), keys::OPS).await;
    let now = Utc::now();
    let window = |service: &str, start: DateTime<Utc>, end: DateTime<Utc>| json!({"service": service, "start": stamp(start), "end": stamp(end), "reason": "upgrade"});
    let valid = window("checkout", now, now + TimeDelta::hours(1));

    app.send(app.client.get(app.url("/maintenance")))
        .await
        .expect_error(401);
    app.send(app.client.get(app.url("/maintenance")).bearer_auth(keys::READER))
        .await
        .expect(200);
    create_window(&app, keys::READER, &valid).await.expect_error(403);

    let error = create_window(&app, keys::OPS, &window("checkout", now, now))
        .await
        .expect_error(400);
    assert!(
        error["message"]
            .as_str()
            .unwrap_or("")
            .contains("end must be after start"),
        "{error}"
    );
    let too_long = window("checkout", now, now + TimeDelta::days(8));
    create_window(&app, keys::OPS, &too_long).await.expect_error(400);
    let over = window("checkout", now - TimeDelta::hours(2), now - TimeDelta::hours(1));
    create_window(&app, keys::OPS, &over).await.expect_error(400);
    let bad_time = json!({"service": "checkout", "start": "tomorrow", "end": stamp(now)});
    let error = create_window(&app, keys::OPS, &bad_time).await.expect_error(400);
    assert!(error["message"].as_str().unwrap_or("").starts_with("start:"), "{error}");
    let unknown = window("nope", now, now + TimeDelta::hours(1));
    create_window(&app, keys::OPS, &unknown).await.expect_error(404);
    app.send(app.post("/maintenance").bearer_auth(keys::OPS).body("not json"))
        .await
        .expect_error(400);
    app.send(
        app.client
            .delete(app.url("/maintenance/mw_00000000000000000000"))
            .bearer_auth(keys::OPS),
    )
    .await
    .expect_error(404);

    // The same service and times again are the same window.
    let first = create_window(&app, keys::OPS, &valid).await.expect(201).json();
    let again = create_window(&app, keys::OPS, &valid).await.expect(201).json();
    assert_eq!(first["id"], again["id"]);
    let listed = app.api_get("/maintenance").await.expect(200).json();
    assert_eq!(listed["windows"].as_array().map(Vec::len), Some(1), "{listed}");
    app.api_get("/maintenance?service=NOT%20A%20SERVICE")
        .await
        .expect_error(400);
}

#[tokio::test]
async fn a_config_window_is_applied_at_start_and_a_restart_never_releases_it_twice() {
    let now = Utc::now();
    let config = format!(
        "{CONFIG}    maintenance:\n      - {{start: \"{}\", end: \"{}\", reason: from the file}}\n",
        stamp(now - TimeDelta::seconds(1)),
        stamp(now + TimeDelta::seconds(4)),
    );
    let mut app = TestApp::start_with(Some(&config), keys::OPS).await;
    let listed = app.api_get("/maintenance?service=payments").await.expect(200).json();
    let window = &listed["windows"][0];
    assert_eq!(window["created_by"], "config", "{listed}");
    assert_eq!(window["reason"], "from the file");

    event(&app, keys::PAYMENTS_EVENTS, "trigger", "ledger").await;
    let ledger = incident_id(&app, "payments", "ledger").await;
    wait_for_entries(&app, &ledger, "held", 1).await;
    app.wait_for_outbox("ledger notified after the window", |lines| {
        count_transition(lines, &ledger, "triggered") == 1
    })
    .await;

    // Starting again applies the same window from the file: it stays released.
    app.restart().await;
    settle().await;
    assert_eq!(outbox_for(&app.outbox(), &ledger).len(), 1, "{:?}", app.outbox());
    let listed = app.api_get("/maintenance").await.expect(200).json();
    assert_eq!(listed["windows"].as_array().map(Vec::len), Some(1), "{listed}");
    assert!(listed["windows"][0]["released_at"].is_string(), "{listed}");
}

mod on_aws {
    //! The api and scheduler functions (the real binaries) on a moto table:
    //! a window posted through the api function, then released by the
    //! scheduler's tick onto the channel queues, once.

    use std::sync::Arc;

    use chrono::{TimeDelta, Utc};
    use serde_json::{json, Value};
    use tocsin_aws::dynamodb::{create_table, DynamoStore};
    use tocsin_core::auth::{ApiKey, KeyHash, Scope};
    use tocsin_core::config::Catalog;
    use tocsin_core::contract::sample_event;
    use tocsin_core::event::{Action, ServiceId};
    use tocsin_core::notify::NotificationJob;
    use tocsin_core::process::ProcessService;

    use super::stamp;
    use crate::app::keys;
    use crate::runtime_api::{function_bin, Function};

    async fn sdk(url: &str) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(url)
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .load()
            .await
    }

    fn unique(prefix: &str) -> String {
        format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
    }

    async fn fifo_queue(sqs: &aws_sdk_sqs::Client, prefix: &str) -> String {
        sqs.create_queue()
            .queue_name(format!("{}.fifo", unique(prefix)))
            .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
            .send()
            .await
            .expect("moto creates the queue")
            .queue_url()
            .expect("a queue url")
            .to_owned()
    }

    async fn jobs_on(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<NotificationJob> {
        let output = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("receive");
        output
            .messages()
            .iter()
            .map(|m| serde_json::from_str(m.body().unwrap_or_default()).expect("a notification job"))
            .collect()
    }

    /// An API Gateway HTTP API (payload 2.0) request with the ops key.
    fn request(method: &str, path: &str, body: Option<&Value>) -> Value {
        json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": "",
            "headers": {"authorization": format!("Bearer {}", keys::OPS), "content-type": "application/json"},
            "requestContext": {
                "accountId": "123456789012", "apiId": "a1b2c3d4e5", "stage": "$default", "requestId": "maintenance",
                "routeKey": "$default", "domainName": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
                "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.10",
                         "userAgent": "curl/8"},
                "time": "23/Nov/2026:09:00:00 +0000", "timeEpoch": 1795424400000_u64
            },
            "body": body.map(Value::to_string),
            "isBase64Encoded": false
        })
    }

    fn body(answer: &Value) -> Value {
        serde_json::from_str(answer["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
    }

    #[tokio::test]
    async fn the_api_function_creates_a_window_and_the_scheduler_releases_it_once() {
        let moto = std::env::var("TOCSIN_MOTO_URL").unwrap_or_else(|_| {
            panic!("TOCSIN_MOTO_URL is not set: this test needs a moto server (tests/run starts one)")
        });
        let sdk = sdk(&moto).await;
        let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let table = unique("tocsin");
        create_table(&dynamodb, &table).await.expect("the table");
        let store = Arc::new(DynamoStore::new(dynamodb, &table));
        let catalog = Catalog::from_yaml(include_str!("../../cli/tocsin.sample.yaml"), "sample").expect("the sample");
        let checkout = ServiceId::parse("checkout").expect("an id");
        store
            .put_service(catalog.service(&checkout).expect("checkout"))
            .await
            .expect("put_service");
        store
            .put_api_key(&ApiKey {
                name: "ops".into(),
                key_hash: KeyHash::of(keys::OPS),
                scopes: vec![Scope::IncidentsRead, Scope::IncidentsWrite],
            })
            .await
            .expect("put_api_key");
        // Opened during the window (the dispatcher held its notification).
        let trigger = sample_event("checkout", "disk-full", Action::Trigger);
        ProcessService::new(store.clone())
            .apply(&trigger, Utc::now())
            .await
            .expect("the incident");

        let (email, sms, slack) = (
            fifo_queue(&sqs, "email").await,
            fifo_queue(&sqs, "sms").await,
            fifo_queue(&sqs, "slack").await,
        );
        let events = fifo_queue(&sqs, "events").await;
        let env = [
            ("AWS_ENDPOINT_URL", moto.as_str()),
            ("TOCSIN_TABLE", table.as_str()),
            ("TOCSIN_EVENTS_QUEUE_URL", events.as_str()),
            ("TOCSIN_EMAIL_QUEUE_URL", email.as_str()),
            ("TOCSIN_SMS_QUEUE_URL", sms.as_str()),
            ("TOCSIN_SLACK_QUEUE_URL", slack.as_str()),
        ];
        let scratch = tempfile::tempdir().expect("a scratch folder");
        let mut api = Function::start(&function_bin("api"), &env, scratch.path()).await;
        let now = Utc::now();
        let window = json!({"service": "checkout", "start": stamp(now - TimeDelta::seconds(1)),
                            "end": stamp(now + TimeDelta::seconds(2)), "reason": "upgrade"});
        let created = api
            .invoke(request("POST", "/maintenance", Some(&window)))
            .await
            .expect("api");
        assert_eq!(created["statusCode"], 201, "{created}");
        let id = body(&created)["id"].as_str().expect("a window id").to_owned();
        let listed = api.invoke(request("GET", "/maintenance", None)).await.expect("api");
        assert_eq!(body(&listed)["windows"][0]["id"], id.as_str(), "{listed}");

        let tick = json!({"version": "0", "source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
        let mut scheduler = Function::start(&function_bin("scheduler"), &env, scratch.path()).await;
        // The window ends in two seconds: tick until the scheduler releases it
        // (a minute's schedule on AWS), for at most the e2e deadline.
        let mut answer = Value::Null;
        for _ in 0..80 {
            answer = scheduler.invoke(tick.clone()).await.expect("scheduler");
            if answer["maintenance_windows_released"] == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        assert_eq!(answer["maintenance_windows_released"], 1, "{answer}");
        assert_eq!(answer["maintenance_incidents_notified"], 1, "{answer}");
        let emails = jobs_on(&sqs, &email).await;
        assert_eq!(emails.len(), 1, "{emails:?}");
        assert!(
            emails[0].id.starts_with(&format!("maintenance:{id}:")),
            "{}",
            emails[0].id
        );
        assert_eq!(jobs_on(&sqs, &sms).await.len(), 1);
        assert_eq!(jobs_on(&sqs, &slack).await.len(), 1);

        let again = scheduler.invoke(tick.clone()).await.expect("scheduler");
        assert_eq!(again["maintenance_windows_released"], 0, "released once: {again}");
        let listed = api.invoke(request("GET", "/maintenance", None)).await.expect("api");
        assert!(body(&listed)["windows"][0]["released_at"].is_string(), "{listed}");
    }
}
