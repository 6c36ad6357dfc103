//! Slack with a bot token on the local stack, against a stand-in of Slack's
//! Web API (TOCSIN_SLACK_API_URL): an incident's first message is posted,
//! and its acknowledgement and resolution update that message and reply in
//! its thread.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use crate::app::{keys, wait_for, TestApp, TEST_CONFIG};

const BOT_TOKEN: &str = "xoxb-e2e-0123456789-threads";

/// Every Web API call received: its method, Authorization header and body.
type Calls = Arc<Mutex<Vec<(String, String, Value)>>>;

/// Answers chat.postMessage (with the channel's id, as Slack does, and a
/// new ts each time) and chat.update; returns the API base URL.
async fn fake_web_api() -> (String, Calls) {
    async fn call(
        State(calls): State<Calls>,
        Path(method): Path<String>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> Json<Value> {
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut calls = calls.lock().unwrap();
        calls.push((method.clone(), authorization, body.clone()));
        let n = calls.len();
        Json(match method.as_str() {
            "chat.postMessage" => json!({"ok": true, "channel": "C0E2E0001", "ts": format!("1718000000.{n:06}")}),
            "chat.update" => json!({"ok": true, "channel": body["channel"], "ts": body["ts"]}),
            _ => json!({"ok": false, "error": "unknown_method"}),
        })
    }

    let calls = Calls::default();
    let app = axum::Router::new()
        .route("/api/{method}", axum::routing::post(call))
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/api"), calls)
}

async fn send(app: &TestApp, action: &str) {
    app.enqueue(&json!({
        "routing_key": keys::CHECKOUT_EVENTS,
        "event_action": action,
        "dedup_key": "slack-threads-disk",
        "payload": {"summary": "Disk full on db-1", "source": "db-1", "severity": "critical"},
    }))
    .await
    .expect(202);
}

/// Whether the message has the Resolve button (a View link may stay).
fn has_buttons(body: &Value) -> bool {
    body["attachments"][0]["blocks"].as_array().is_some_and(|blocks| {
        blocks
            .iter()
            .filter_map(|b| b["elements"].as_array())
            .flatten()
            .any(|e| e["action_id"] == "tocsin_resolve")
    })
}

#[tokio::test]
async fn acknowledge_and_resolve_update_the_first_message_and_reply_in_its_thread() {
    let (api, calls) = fake_web_api().await;
    let config = TEST_CONFIG.replace("settings:\n", &format!("settings:\n  slack_bot_token: {BOT_TOKEN}\n"));
    assert_ne!(config, TEST_CONFIG, "the test config has a settings section");
    let app = TestApp::start_with_env(Some(&config), keys::OPS, &[("TOCSIN_SLACK_API_URL", &api)]).await;
    let count = |calls: &Calls| calls.lock().unwrap().len();

    send(&app, "trigger").await;
    let incident = app
        .wait_for_incident("the trigger", |i| i["dedup_key"] == "slack-threads-disk")
        .await;
    wait_for("the first Slack message", || {
        let calls = calls.clone();
        async move { (count(&calls) >= 1).then_some(()) }
    })
    .await;
    send(&app, "acknowledge").await;
    app.wait_for_incident("the acknowledgement", |i| {
        i["id"] == incident["id"] && i["status"] == "acknowledged"
    })
    .await;
    // Transitions of one incident are delivered in order: the resolve waits
    // for the acknowledgement's calls, so the order below is Slack's.
    wait_for("the acknowledgement in Slack", || {
        let calls = calls.clone();
        async move { (count(&calls) >= 3).then_some(()) }
    })
    .await;
    send(&app, "resolve").await;
    wait_for("the resolution in Slack", || {
        let calls = calls.clone();
        async move { (count(&calls) >= 5).then_some(()) }
    })
    .await;

    let calls = calls.lock().unwrap().clone();
    for (method, authorization, _) in &calls {
        assert_eq!(authorization, &format!("Bearer {BOT_TOKEN}"), "{method}");
    }
    let methods: Vec<_> = calls.iter().map(|(m, _, _)| m.as_str()).collect();
    assert_eq!(
        methods,
        [
            "chat.postMessage",
            "chat.update",
            "chat.postMessage",
            "chat.update",
            "chat.postMessage"
        ],
        "{calls:#?}"
    );

    let first = &calls[0].2;
    assert_eq!(first["channel"], "#checkout");
    assert!(first.get("thread_ts").is_none(), "{first}");
    assert!(has_buttons(first));
    let first_ts = "1718000000.000001";

    let (ack_update, ack_reply) = (&calls[1].2, &calls[2].2);
    let (resolve_update, resolve_reply) = (&calls[3].2, &calls[4].2);
    for update in [ack_update, resolve_update] {
        assert_eq!(update["channel"], "C0E2E0001", "{update}");
        assert_eq!(update["ts"], first_ts, "{update}");
        assert!(update["attachments"][0]["blocks"].is_array(), "{update}");
    }
    assert!(has_buttons(ack_update), "still open: the buttons stay");
    assert!(
        !has_buttons(resolve_update),
        "resolved: the Acknowledge and Resolve buttons are gone"
    );
    // Who: the tool the events came from, read back from the store.
    assert!(
        resolve_update
            .to_string()
            .contains("Acknowledged by events-v2  ·  Resolved by events-v2"),
        "{resolve_update}"
    );
    for (reply, says) in [
        (ack_reply, ":eyes: Acknowledged by events-v2"),
        (resolve_reply, ":white_check_mark: Resolved by events-v2"),
    ] {
        assert_eq!(reply["channel"], "C0E2E0001", "{reply}");
        assert_eq!(reply["thread_ts"], first_ts, "{reply}");
        assert!(reply["text"].as_str().is_some_and(|t| t.contains(says)), "{reply}");
    }

    // The timeline keeps the ts of each message posted.
    let timeline = app
        .api_get(&format!("/incidents/{}/timeline", incident["id"].as_str().unwrap()))
        .await
        .expect(200)
        .json();
    let references: Vec<_> = timeline["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["kind"] == "notification" && e["channel"] == "slack" && e["result"] == "delivered")
        .map(|e| e["reference"].clone())
        .collect();
    assert!(references.contains(&json!(first_ts)), "{timeline:#}");
}
