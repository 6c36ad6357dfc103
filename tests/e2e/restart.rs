//! Stopping and starting `tocsin dev` on the same data folder keeps every
//! incident, the dedup state and the outbox.

use serde_json::{json, Value};

use crate::app::{count_transition, keys, TestApp};

fn event(event_action: &str, dedup_key: &str) -> Value {
    json!({
        "routing_key": keys::CHECKOUT_EVENTS,
        "event_action": event_action,
        "dedup_key": dedup_key,
        "payload": {"summary": format!("{dedup_key} down"), "source": "e2e", "severity": "critical"},
    })
}

/// The fields that must survive a restart unchanged.
fn essentials(incidents: &[Value]) -> Vec<Value> {
    let mut kept: Vec<Value> = incidents
        .iter()
        .map(|i| {
            json!({
                "id": i["id"], "service": i["service"], "dedup_key": i["dedup_key"], "status": i["status"],
                "severity": i["severity"], "summary": i["summary"], "occurrences": i["occurrences"],
                "created_at": i["created_at"],
            })
        })
        .collect();
    kept.sort_by_key(|i| i["id"].to_string());
    kept
}

#[tokio::test]
async fn incidents_survive_a_restart_and_can_be_resolved_after_it() {
    let mut app = TestApp::start().await;

    app.enqueue(&event("trigger", "api-down")).await.expect(202);
    app.enqueue(&event("trigger", "db-down")).await.expect(202);
    app.enqueue(&event("trigger", "db-down")).await.expect(202);
    let api = app
        .wait_for_incident("the api-down incident", |i| i["dedup_key"] == "api-down")
        .await;
    app.wait_for_incident("db-down with its repeat", |i| {
        i["dedup_key"] == "db-down" && i["occurrences"] == 2
    })
    .await;
    app.enqueue(&event("acknowledge", "db-down")).await.expect(202);
    let db = app
        .wait_for_incident("db-down acknowledged", |i| {
            i["dedup_key"] == "db-down" && i["status"] == "acknowledged"
        })
        .await;
    let api_id = api["id"].as_str().expect("id").to_owned();
    app.wait_for_outbox("the triggered notifications", |lines| {
        count_transition(lines, &api_id, "triggered") == 3
    })
    .await;
    let before = essentials(&app.incidents("").await);
    let outbox_before = app.outbox().len();

    app.restart().await;

    let after = essentials(&app.incidents("").await);
    assert_eq!(after, before, "GET /incidents after the restart");
    assert!(app.outbox().len() >= outbox_before, "the outbox is kept");

    // The dedup state survived: a repeat lands on the pre-restart incident…
    app.enqueue(&event("trigger", "api-down")).await.expect(202);
    app.wait_for_incident("the repeat on the pre-restart incident", |i| {
        i["id"] == api["id"] && i["occurrences"] == 2
    })
    .await;
    // …and a resolve closes it.
    app.enqueue(&event("resolve", "api-down")).await.expect(202);
    app.wait_for_incident("the resolve after the restart", |i| {
        i["id"] == api["id"] && i["status"] == "resolved"
    })
    .await;
    app.enqueue(&event("resolve", "db-down")).await.expect(202);
    app.wait_for_incident("the acknowledged one resolved too", |i| {
        i["id"] == db["id"] && i["status"] == "resolved"
    })
    .await;
    assert_eq!(app.incidents("").await.len(), 2, "no incident was opened twice");
    app.wait_for_outbox("resolved notifications after the restart", |lines| {
        count_transition(lines, &api_id, "resolved") == 3
    })
    .await;
    let lines = app.outbox();
    assert_eq!(
        count_transition(&lines, &api_id, "triggered"),
        3,
        "the restart must not notify the trigger again"
    );
}

#[tokio::test]
async fn events_accepted_just_before_a_stop_are_not_lost() {
    let mut app = TestApp::start().await;
    let keys: Vec<String> = (0..20).map(|n| format!("burst-{n}")).collect();
    for key in &keys {
        app.enqueue(&event("trigger", key)).await.expect(202);
    }
    // Stop at once: whatever the processor had not handled is still queued
    // in the data folder, and the next start handles it.
    app.restart().await;
    for key in &keys {
        app.wait_for_incident("every accepted event to become an incident", |i| {
            i["dedup_key"] == key.as_str()
        })
        .await;
    }
    assert_eq!(app.incidents("").await.len(), keys.len());
}
