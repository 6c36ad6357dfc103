//! Outgoing webhooks from the local stack: a generic one signed with its
//! secret and a Discord one, posted to a stand-in receiver on 127.0.0.1 when
//! an incident triggers and resolves; a receiver that fails is retried with
//! backoff, one that refuses is dead-lettered.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::app::{signature, wait_for, TestApp};

const SECRET: &str = "whsec-e2e-0123456789";
const EVENTS_KEY: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const API_KEY: &str = "sk_e2e_ops_0123456789abcdef";

#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    /// Answers of `/flaky`, in order; then 204.
    flaky: Arc<Mutex<Vec<StatusCode>>>,
}

impl Receiver {
    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    fn at(&self, path: &str) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.path == path).collect()
    }
}

async fn receive(
    State(receiver): State<Receiver>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    receiver.received.lock().expect("lock").push(Received {
        path: path.clone(),
        headers,
        body,
    });
    match path.as_str() {
        "gone" => StatusCode::GONE,
        "flaky" => {
            let mut answers = receiver.flaky.lock().expect("lock");
            if answers.is_empty() {
                StatusCode::NO_CONTENT
            } else {
                answers.remove(0)
            }
        }
        _ => StatusCode::NO_CONTENT,
    }
}

async fn start_receiver() -> (String, Receiver) {
    let receiver = Receiver::default();
    let app = Router::new()
        .route("/hooks/{path}", post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/hooks"), receiver)
}

fn config(hooks: &str) -> String {
    format!(
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
{hooks}
settings:
  public_url: http://127.0.0.1:3000
"##
    )
}

fn event(action: &str, key: &str) -> Value {
    json!({
        "routing_key": EVENTS_KEY,
        "event_action": action,
        "dedup_key": key,
        "payload": {"summary": "Disk full on db-1 @everyone", "source": "db-1", "severity": "critical"},
    })
}

fn header<'a>(received: &'a Received, name: &str) -> &'a str {
    received
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header: {:?}", received.headers))
}

#[tokio::test]
async fn generic_signed_and_discord_webhooks_hear_of_trigger_and_resolve() {
    let (base, receiver) = start_receiver().await;
    let hooks = format!(
        "        - {{url: \"{base}/generic\", format: generic, secret: {SECRET}}}\n        \
         - {{url: \"{base}/discord\", format: discord}}\n"
    );
    let app = TestApp::start_with(Some(&config(&hooks)), API_KEY).await;

    app.enqueue(&event("trigger", "disk/db-1")).await.expect(202);
    let incident = app
        .wait_for_incident("the trigger to open an incident", |i| i["dedup_key"] == "disk/db-1")
        .await;
    let id = incident["id"].as_str().expect("id").to_owned();
    wait_for("both webhooks to hear of the trigger", || {
        let receiver = receiver.clone();
        async move { (receiver.received().len() >= 2).then_some(()) }
    })
    .await;
    app.enqueue(&event("resolve", "disk/db-1")).await.expect(202);
    wait_for("both webhooks to hear of the resolve", || {
        let receiver = receiver.clone();
        async move { (receiver.received().len() >= 4).then_some(()) }
    })
    .await;

    let generic = receiver.at("generic");
    assert_eq!(generic.len(), 2, "{generic:?}");
    for (received, event) in generic.iter().zip(["incident.triggered", "incident.resolved"]) {
        assert_eq!(header(received, "content-type"), "application/json");
        assert_eq!(header(received, "x-webhook-event"), event);
        // Computed here with hmac/sha2 over the raw bytes received.
        assert_eq!(
            header(received, "x-webhook-signature"),
            signature(SECRET, &received.body)
        );
        let body: Value = serde_json::from_slice(&received.body).expect("generic body is JSON");
        assert_eq!(body["event"], event);
        assert_eq!(body["incident"]["id"], id.as_str());
        assert_eq!(body["incident"]["service"], "checkout");
        assert_eq!(body["incident"]["dedup_key"], "disk/db-1");
        assert_eq!(body["incident"]["severity"], "critical");
        assert_eq!(
            body["incident"]["url"],
            format!("http://127.0.0.1:3000/incidents/{id}").as_str()
        );
    }
    let resolved: Value = serde_json::from_slice(&generic[1].body).expect("json");
    assert_eq!(resolved["incident"]["status"], "resolved");

    let discord = receiver.at("discord");
    assert_eq!(discord.len(), 2, "{discord:?}");
    for (received, event) in discord.iter().zip(["incident.triggered", "incident.resolved"]) {
        assert_eq!(header(received, "x-webhook-event"), event);
        assert!(received.headers.get("x-webhook-signature").is_none());
        let body: Value = serde_json::from_slice(&received.body).expect("discord body is JSON");
        assert_eq!(
            body["embeds"][0]["title"].as_str().map(|t| t.contains("Disk full")),
            Some(true)
        );
        assert_eq!(body["allowed_mentions"], json!({"parse": []}));
    }

    // The outbox lists the webhooks like every other message, by a name
    // that carries neither the URL's path nor the secret.
    let lines = app
        .wait_for_outbox("the webhook deliveries to be recorded", |lines| {
            lines.iter().filter(|l| l["channel"] == "webhook").count() >= 4
        })
        .await;
    let text = lines.iter().map(Value::to_string).collect::<String>();
    assert!(
        text.contains("generic:127.0.0.1#0") && text.contains("discord:127.0.0.1#1"),
        "{text}"
    );
    assert!(!text.contains(SECRET), "the secret reached the outbox");
}

#[tokio::test]
async fn a_failing_receiver_is_retried_and_a_refusing_one_dead_lettered() {
    let (base, receiver) = start_receiver().await;
    receiver
        .flaky
        .lock()
        .expect("lock")
        .extend([StatusCode::SERVICE_UNAVAILABLE, StatusCode::BAD_GATEWAY]);
    let hooks = format!("        - {{url: \"{base}/flaky\"}}\n        - {{url: \"{base}/gone\"}}\n");
    let app = TestApp::start_with(Some(&config(&hooks)), API_KEY).await;

    app.enqueue(&event("trigger", "disk/db-2")).await.expect(202);
    // 503, 502, then delivered: three attempts of the same job.
    let flaky = wait_for("the flaky receiver to accept the third attempt", || {
        let receiver = receiver.clone();
        async move {
            let flaky = receiver.at("flaky");
            (flaky.len() >= 3).then_some(flaky)
        }
    })
    .await;
    let deliveries: Vec<&str> = flaky.iter().map(|r| header(r, "x-webhook-delivery")).collect();
    assert!(deliveries.iter().all(|d| *d == deliveries[0]), "{deliveries:?}");

    // 410: refused for good, straight to the dead letters, sent once.
    let dead = wait_for("the refused webhook to be dead-lettered", || {
        let dead = app.dead_letters();
        async move { (!dead.is_empty()).then_some(dead) }
    })
    .await;
    assert!(dead.iter().any(|line| line.contains("410")), "{dead:?}");
    assert_eq!(receiver.at("gone").len(), 1);
    assert!(
        !dead.iter().any(|line| line.contains("/hooks/gone")),
        "the URL reached the dead letters"
    );
}
