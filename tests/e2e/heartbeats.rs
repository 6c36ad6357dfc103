//! Heartbeats on the local stack: a beat, a miss that opens an incident, the
//! next beat that resolves it; keys checked; a heartbeat that never beat
//! stays quiet.

use serde_json::json;

use crate::app::{keys, wait_for, TestApp};

const WATCHDOG_KEY: &str = "77777777777777777777777777777777";
const NIGHTLY_KEY: &str = "88888888888888888888888888888888";

const CONFIG: &str = r##"
api_keys:
  - {name: ops, key: sk_e2e_ops_0123456789abcdef, scopes: [events:write, incidents:read, incidents:write]}

services:
  - id: monitoring
    name: Monitoring
    notify:
      email: [oncall@example.com]

heartbeats:
  - {id: watchdog, service: monitoring, key: 77777777777777777777777777777777, interval_seconds: 1}
  - {id: nightly-backup, service: monitoring, key: 88888888888888888888888888888888, interval_seconds: 1,
     severity: warning}
"##;

/// What Alertmanager's Watchdog receiver posts: the body is not read.
fn watchdog_webhook() -> serde_json::Value {
    json!({
        "version": "4", "status": "firing", "receiver": "tocsin-heartbeat",
        "alerts": [{"status": "firing", "labels": {"alertname": "Watchdog"}}],
    })
}

async fn beat(app: &TestApp, id: &str, key: &str) -> serde_json::Value {
    app.post_json(
        &format!("/heartbeat/{id}"),
        &[("Authorization", &format!("Bearer {key}"))],
        &watchdog_webhook(),
    )
    .await
    .expect(200)
    .json()
}

#[tokio::test]
async fn a_missed_heartbeat_opens_an_incident_and_the_next_beat_resolves_it() {
    let app = TestApp::start_with(Some(CONFIG), keys::OPS).await;

    let first = beat(&app, "watchdog", WATCHDOG_KEY).await;
    assert_eq!(first["status"], "ok");
    assert_eq!(first["heartbeat"], "watchdog");
    assert_eq!(first["recovered"], false);

    // No beat for more than the interval: an incident opens on the service.
    let incident = app
        .wait_for_incident("the missed heartbeat's incident", |i| {
            i["dedup_key"] == "heartbeat:watchdog" && i["status"] == "open"
        })
        .await;
    assert_eq!(incident["service"], "monitoring");
    assert_eq!(incident["severity"], "critical");
    let summary = incident["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("Heartbeat watchdog missed"), "{summary}");
    let id = incident["id"].as_str().expect("an id").to_owned();

    // The miss stays one incident however many checks run meanwhile.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let watchdog_incidents = app.incidents("service=monitoring").await;
    let watchdog_incidents: Vec<_> = watchdog_incidents
        .iter()
        .filter(|i| i["dedup_key"] == "heartbeat:watchdog")
        .collect();
    assert_eq!(watchdog_incidents.len(), 1, "{watchdog_incidents:?}");
    assert_eq!(watchdog_incidents[0]["occurrences"], 1);

    let back = beat(&app, "watchdog", WATCHDOG_KEY).await;
    assert_eq!(back["recovered"], true);
    let app_ref = &app;
    let path = format!("/incidents/{id}");
    let path = path.as_str();
    wait_for("the incident resolved by the beat", || async move {
        let incident = app_ref.api_get(path).await.expect(200).json();
        (incident["status"] == "resolved").then_some(())
    })
    .await;

    // The timeline says who opened and resolved it.
    let timeline = app
        .api_get(&format!("/incidents/{id}/timeline"))
        .await
        .expect(200)
        .json();
    let origins: Vec<&serde_json::Value> = timeline["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["kind"] == "event")
        .map(|e| &e["origin"])
        .collect();
    assert!(!origins.is_empty());
    assert!(
        origins
            .iter()
            .all(|o| o["kind"] == "heartbeat" && o["heartbeat"] == "watchdog"),
        "{origins:?}"
    );

    // nightly-backup never beat: inactive, never missed.
    assert!(app
        .incidents("")
        .await
        .iter()
        .all(|i| i["dedup_key"] != "heartbeat:nightly-backup"));
}

#[tokio::test]
async fn a_beat_needs_the_heartbeats_own_key() {
    let app = TestApp::start_with(Some(CONFIG), keys::OPS).await;
    let body = watchdog_webhook();

    let reply = app.post_json("/heartbeat/watchdog", &[], &body).await;
    reply.expect_error(401);
    // Another heartbeat's key, and an unknown id, look the same.
    let bearer = format!("Bearer {NIGHTLY_KEY}");
    let wrong = app
        .post_json("/heartbeat/watchdog", &[("Authorization", &bearer)], &body)
        .await
        .expect_error(404);
    let unknown = app
        .post_json("/heartbeat/nothing-here", &[("Authorization", &bearer)], &body)
        .await
        .expect_error(404);
    assert_eq!(wrong, unknown);

    // The key as for integrations: ?token= works too; and nothing was
    // enqueued by the refused beats.
    let reply = app
        .post_json(&format!("/heartbeat/nightly-backup?token={NIGHTLY_KEY}"), &[], &body)
        .await;
    assert_eq!(reply.expect(200).json()["heartbeat"], "nightly-backup");
    let reply = app.send(app.client.get(app.url("/heartbeat/watchdog"))).await;
    reply.expect_error(405);
}
