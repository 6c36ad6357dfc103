//! Maintenance windows on the local stack: a window created through the
//! API holds a service's notifications while incidents are still recorded;
//! when it ends (here: ended early by DELETE, then released by the stack's
//! timer), each incident opened during it and still open is notified once,
//! as triggered; one resolved during the window never is, and one opened
//! before it (already notified) is not notified again. Another service is
//! notified as usual throughout. Windows last an hour, so nothing depends
//! on how fast the test runs.

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

fn time(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{value} is not a time: {e}"))
        .with_timezone(&Utc)
}

/// A window start after everything that already happened (its millisecond
/// stamp included), and the wait until it is reached: what is sent after
/// this returns happens during the window.
async fn start_after_now() -> DateTime<Utc> {
    let start = Utc::now() + TimeDelta::milliseconds(1);
    let start = time(&json!(stamp(start)));
    while Utc::now() <= start {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    start
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

async fn delete_window(app: &TestApp, id: &str) -> Reply {
    let path = format!("/maintenance/{id}");
    app.send(app.client.delete(app.url(&path)).bearer_auth(keys::OPS)).await
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

/// Waits until the stack's timer has released the window.
async fn wait_for_release(app: &TestApp, id: &str) -> Value {
    wait_for(&format!("window {id} released"), || async move {
        let listed = app.api_get("/maintenance").await.expect(200).json();
        listed["windows"]
            .as_array()
            .and_then(|windows| windows.iter().find(|w| w["id"] == id).cloned())
            .filter(|w| w["released_at"].is_string())
    })
    .await
}

#[tokio::test]
async fn a_window_holds_what_happens_during_it_and_its_end_notifies_that_once() {
    let app = TestApp::start_with(Some(CONFIG), keys::OPS).await;
    // Opened and notified before the window.
    event(&app, keys::CHECKOUT_EVENTS, "trigger", "before").await;
    let before = incident_id(&app, "checkout", "before").await;
    app.wait_for_outbox("before notified", |lines| {
        count_transition(lines, &before, "triggered") == 1
    })
    .await;

    let start = start_after_now().await;
    let created = create_window(
        &app,
        keys::OPS,
        &json!({"service": "checkout", "start": stamp(start), "end": stamp(start + TimeDelta::hours(1)),
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
    event(&app, keys::CHECKOUT_EVENTS, "acknowledge", "before").await;
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
    let held = wait_for_entries(&app, &before, "held", 1).await;
    assert!(
        held.iter()
            .any(|e| e["kind"] == "held" && e["transition"] == "acknowledged"),
        "{held:?}"
    );
    // Another service is not in maintenance.
    app.wait_for_outbox("payments notified", |lines| {
        count_transition(lines, &ledger, "triggered") == 1
    })
    .await;
    // The window lasts an hour: nothing of checkout's went out since it began.
    let outbox = app.outbox();
    assert!(
        outbox_for(&outbox, &disk).is_empty() && outbox_for(&outbox, &cpu).is_empty(),
        "{outbox:?}"
    );
    assert_eq!(outbox_for(&outbox, &before).len(), 1, "{outbox:?}");

    // Deleting a window that has started ends it now, in place.
    let ended = delete_window(&app, &window_id).await.expect(200).json();
    assert_eq!(ended["id"], window_id.as_str());
    assert!(
        time(&ended["end"]) <= Utc::now() && time(&ended["end"]) > start,
        "{ended}"
    );
    assert!(ended.get("released_at").is_none(), "{ended}");

    // Its release: the open incident once, as triggered; the resolved one
    // never; the one opened before the window not again.
    app.wait_for_outbox("disk notified after the window", |lines| {
        count_transition(lines, &disk, "triggered") == 1
    })
    .await;
    let released = wait_for_release(&app, &window_id).await;
    assert_eq!(released["end"], ended["end"], "{released}");
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
    assert_eq!(
        outbox_for(&outbox, &before).len(),
        1,
        "opened before the window: not paged again: {outbox:?}"
    );
    assert_eq!(outbox_for(&outbox, &ledger).len(), 1, "{outbox:?}");
    let entries = wait_for_entries(&app, &disk, "released", 1).await;
    assert!(entries
        .iter()
        .any(|e| e["kind"] == "released" && e["window"] == window_id.as_str()));

    // Released, nothing is held any more: now it is deleted.
    delete_window(&app, &window_id).await.expect(204);
    delete_window(&app, &window_id).await.expect_error(404);
}

#[tokio::test]
async fn a_window_not_started_is_deleted_and_one_ended_early_is_not_posted_again() {
    let app = TestApp::start_with(Some(CONFIG), keys::OPS).await;
    let now = Utc::now();
    let later = json!({"service": "checkout", "start": stamp(now + TimeDelta::hours(1)),
                       "end": stamp(now + TimeDelta::hours(2))});
    let window = create_window(&app, keys::OPS, &later).await.expect(201).json();
    let later_id = window["id"].as_str().expect("a window id").to_owned();
    assert!(window.get("reason").is_none(), "{window}");
    delete_window(&app, &later_id).await.expect(204);
    delete_window(&app, &later_id).await.expect_error(404);
    let listed = app.api_get("/maintenance").await.expect(200).json();
    assert_eq!(listed["windows"].as_array().map(Vec::len), Some(0), "{listed}");

    let start = start_after_now().await;
    let running = json!({"service": "checkout", "start": stamp(start), "end": stamp(start + TimeDelta::hours(1))});
    let window = create_window(&app, keys::OPS, &running).await.expect(201).json();
    let id = window["id"].as_str().expect("a window id").to_owned();
    let ended = delete_window(&app, &id).await.expect(200).json();
    assert_eq!(ended["id"], id.as_str());
    assert!(time(&ended["end"]) < time(&window["end"]), "{ended}");
    // The same times again would open it again, maybe after its release.
    let error = create_window(&app, keys::OPS, &running).await.expect_error(409);
    assert!(
        error["message"].as_str().unwrap_or("").contains("ended early"),
        "{error}"
    );
    let listed = app.api_get("/maintenance").await.expect(200).json();
    assert_eq!(listed["windows"][0]["end"], ended["end"], "{listed}");
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
async fn a_config_window_ended_early_stays_ended_and_released_across_a_restart() {
    let now = Utc::now();
    let config = format!(
        "{CONFIG}    maintenance:\n      - {{start: \"{}\", end: \"{}\", reason: from the file}}\n",
        stamp(now),
        stamp(now + TimeDelta::hours(1)),
    );
    let mut app = TestApp::start_with(Some(&config), keys::OPS).await;
    let listed = app.api_get("/maintenance?service=payments").await.expect(200).json();
    let window = &listed["windows"][0];
    assert_eq!(window["created_by"], "config", "{listed}");
    assert_eq!(window["reason"], "from the file");
    let id = window["id"].as_str().expect("a window id").to_owned();

    event(&app, keys::PAYMENTS_EVENTS, "trigger", "ledger").await;
    let ledger = incident_id(&app, "payments", "ledger").await;
    wait_for_entries(&app, &ledger, "held", 1).await;
    assert!(outbox_for(&app.outbox(), &ledger).is_empty());
    let ended = delete_window(&app, &id).await.expect(200).json();
    app.wait_for_outbox("ledger notified after the window", |lines| {
        count_transition(lines, &ledger, "triggered") == 1
    })
    .await;
    wait_for_release(&app, &id).await;

    // Starting again applies the same window from the file: it keeps its
    // early end and its release, so nothing is held or sent twice.
    app.restart().await;
    let listed = app.api_get("/maintenance").await.expect(200).json();
    assert_eq!(listed["windows"].as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed["windows"][0]["end"], ended["end"], "{listed}");
    assert!(listed["windows"][0]["released_at"].is_string(), "{listed}");
    event(&app, keys::PAYMENTS_EVENTS, "trigger", "ledger-after").await;
    let after = incident_id(&app, "payments", "ledger-after").await;
    app.wait_for_outbox("a new incident notified at once", |lines| {
        count_transition(lines, &after, "triggered") == 1
    })
    .await;
    settle().await;
    assert_eq!(outbox_for(&app.outbox(), &ledger).len(), 1, "{:?}", app.outbox());
}

mod on_aws {
    //! The api and scheduler functions (the real binaries) on a moto table:
    //! a window posted through the api function and ended early by DELETE,
    //! then released by the scheduler's tick onto the channel queues, once,
    //! for the incident opened during it only.

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
        // Opened a minute before the window: its notification went out then.
        let process = ProcessService::new(store.clone());
        let earlier = sample_event("checkout", "disk-early", Action::Trigger);
        process
            .apply(&earlier, Utc::now() - TimeDelta::minutes(1))
            .await
            .expect("the earlier incident");

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
        let window = json!({"service": "checkout", "start": stamp(now),
                            "end": stamp(now + TimeDelta::hours(1)), "reason": "upgrade"});
        let created = api
            .invoke(request("POST", "/maintenance", Some(&window)))
            .await
            .expect("api");
        assert_eq!(created["statusCode"], 201, "{created}");
        let id = body(&created)["id"].as_str().expect("a window id").to_owned();
        let listed = api.invoke(request("GET", "/maintenance", None)).await.expect("api");
        assert_eq!(body(&listed)["windows"][0]["id"], id.as_str(), "{listed}");
        // Opened during the window (the dispatcher would hold its notification).
        process
            .apply(&sample_event("checkout", "disk-full", Action::Trigger), Utc::now())
            .await
            .expect("the incident");

        let tick = json!({"version": "0", "source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
        let mut scheduler = Function::start(&function_bin("scheduler"), &env, scratch.path()).await;
        let answer = scheduler.invoke(tick.clone()).await.expect("scheduler");
        assert_eq!(answer["maintenance_windows_released"], 0, "an hour to go: {answer}");
        // Ended early, in place: the next tick releases it.
        let path = format!("/maintenance/{id}");
        let ended = api.invoke(request("DELETE", &path, None)).await.expect("api");
        assert_eq!(ended["statusCode"], 200, "{ended}");
        assert_eq!(body(&ended)["id"], id.as_str(), "{ended}");
        let answer = scheduler.invoke(tick.clone()).await.expect("scheduler");
        assert_eq!(answer["maintenance_windows_released"], 1, "{answer}");
        assert_eq!(
            answer["maintenance_incidents_notified"], 1,
            "only the one opened during it: {answer}"
        );
        let emails = jobs_on(&sqs, &email).await;
        assert_eq!(emails.len(), 1, "{emails:?}");
        assert_eq!(emails[0].incident.dedup_key.as_str(), "disk-full");
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
