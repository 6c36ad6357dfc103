//! An outgoing webhook's signing secret named in the config (`secret:
//! {env: VAR}`) on the local stack: the body is signed with the variable's
//! value, and a webhook whose secret can no longer be read (its file was
//! removed after the stack started) is not posted (the delivery fails, to
//! be retried) rather than posted unsigned. A secret that cannot be read
//! at start is refused then (tests/e2e/config.rs).

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::app::{signature, wait_for, TestApp};

const SECRET: &str = "whsec-e2e-from-env-0123456789";
const VARIABLE: &str = "TOCSIN_E2E_HOOK_SECRET";
const EVENTS_KEY: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const API_KEY: &str = "sk_e2e_ops_0123456789abcdef";

type Received = Arc<Mutex<Vec<(String, HeaderMap, Bytes)>>>;

async fn receive(
    State(received): State<Received>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    received.lock().expect("lock").push((path, headers, body));
    StatusCode::NO_CONTENT
}

async fn start_receiver() -> (String, Received) {
    let received = Received::default();
    let app = Router::new()
        .route("/hooks/{path}", post(receive))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/hooks"), received)
}

#[tokio::test]
async fn a_webhook_secret_from_the_environment_signs_and_an_unreadable_one_sends_nothing() {
    let (base, received) = start_receiver().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let removed = dir.path().join("hook-secret");
    std::fs::write(&removed, "whsec-e2e-removed-after-start-0123").expect("write the secret file");
    let removed_path = removed.display();
    let config = format!(
        r##"
api_keys:
  - {{name: ops, key: {API_KEY}, scopes: [events:write, incidents:read, incidents:write]}}
services:
  - id: checkout
    name: Checkout
    integrations:
      - {{id: checkout-pd, type: events-v2, key: {EVENTS_KEY}}}
    notify:
      webhooks:
        - {{url: "{base}/named", secret: {{env: {VARIABLE}}}}}
        - {{url: "{base}/unreadable", secret: {{file: "{removed_path}"}}}}
"##
    );
    let app = TestApp::start_with_env(Some(&config), API_KEY, &[(VARIABLE, SECRET)]).await;
    std::fs::remove_file(&removed).expect("remove the secret file");
    app.enqueue(&json!({
        "routing_key": EVENTS_KEY,
        "event_action": "trigger",
        "dedup_key": "disk/db-1",
        "payload": {"summary": "Disk full on db-1", "source": "db-1", "severity": "critical"},
    }))
    .await
    .expect(202);
    let incident = app
        .wait_for_incident("the incident", |i| i["dedup_key"] == "disk/db-1")
        .await;
    let id = incident["id"].as_str().expect("an id").to_owned();

    // Both deliveries were attempted once the timeline has an entry for each.
    let path = format!("/incidents/{id}/timeline");
    let entries = wait_for("both webhook deliveries in the timeline", || async {
        let body = app.api_get(&path).await.expect(200).json();
        let entries: Vec<Value> = body["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["kind"] == "notification" && e["channel"] == "webhook")
            .collect();
        let named = entries.iter().any(|e| e["recipient"] == "generic:127.0.0.1#0");
        let unreadable = entries.iter().any(|e| e["recipient"] == "generic:127.0.0.1#1");
        (named && unreadable).then_some(entries)
    })
    .await;
    let unreadable = entries
        .iter()
        .find(|e| e["recipient"] == "generic:127.0.0.1#1")
        .expect("the unreadable webhook's attempt");
    assert_eq!(unreadable["result"], "failed", "{unreadable}");
    assert_eq!(unreadable["will_retry"], true, "{unreadable}");

    let received = received.lock().expect("lock").clone();
    assert!(
        received.iter().all(|(path, _, _)| path == "named"),
        "nothing posted without its secret: {received:?}"
    );
    let (_, headers, body) = received.first().expect("the named webhook was posted");
    assert_eq!(
        headers.get("x-webhook-signature").and_then(|v| v.to_str().ok()),
        Some(signature(SECRET, body).as_str())
    );
    let text = format!("{}{}", app.stdout(), app.stderr());
    assert!(!text.contains(SECRET), "the secret reached the logs");
}
