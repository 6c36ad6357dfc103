//! GET /incidents/{id}/timeline on the local stack: why an alert did or did
//! not page someone. A deduplicated repeat, an ignored resolve, deliveries
//! by email and SMS (the number masked), and a Slack delivery that fails and
//! will be retried are all in it, in order.

use serde_json::{json, Value};

use crate::app::{keys, wait_for, TestApp};

const CONFIG: &str = r##"
api_keys:
  - {name: ops, key: sk_e2e_ops_0123456789abcdef, scopes: [events:write, incidents:read, incidents:write]}

services:
  - id: checkout
    name: Checkout
    integrations:
      - {id: checkout-pd, type: events-v2, key: b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2}
    notify:
      email: [oncall@example.com]
      sms: ["+15555550123"]
      slack: "#checkout"
      on: [triggered, resolved]

settings:
  email_from: tocsin@example.com
  # Trigger and resolve text the same number: no throttle (on by default).
  throttle: {sms: {enabled: false}}
  # Nothing listens on port 1: every Slack delivery fails and is retried.
  slack_webhook_url: http://127.0.0.1:1/services/T000/B000/timelinetest
"##;

async fn send(app: &TestApp, action: &str, summary: &str) {
    app.enqueue(&json!({
        "routing_key": keys::CHECKOUT_EVENTS,
        "event_action": action,
        "dedup_key": "db-disk",
        "payload": {"summary": summary, "source": "db-1", "severity": "critical"},
    }))
    .await
    .expect(202);
}

fn kinds(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| match e["kind"].as_str() {
            Some("event") => format!("event:{}", e["outcome"].as_str().unwrap_or("?")),
            Some("ignored") => format!("ignored:{}", e["reason"].as_str().unwrap_or("?")),
            Some("notification") => format!(
                "notification:{}:{}:{}",
                e["transition"].as_str().unwrap_or("?"),
                e["channel"].as_str().unwrap_or("?"),
                e["result"].as_str().unwrap_or("?")
            ),
            other => format!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn the_timeline_explains_repeats_ignored_events_and_every_delivery_attempt() {
    let app = TestApp::start_with(Some(CONFIG), keys::OPS).await;
    send(&app, "trigger", "disk 91% full").await;
    let incident = app
        .wait_for_incident("the incident", |i| i["dedup_key"] == "db-disk")
        .await;
    let id = incident["id"].as_str().expect("an id").to_owned();
    let path = format!("/incidents/{id}/timeline");

    // The repeat, the resolve and the second resolve go in one at a time,
    // each after the previous one is in the timeline, so their order is known.
    let app_ref = &app;
    let path_ref = path.as_str();
    let entries_when = |what: &'static str, done: fn(&[Value]) -> bool| async move {
        wait_for(what, || async move {
            let body = app_ref.api_get(path_ref).await.expect(200).json();
            let entries = body["entries"].as_array().cloned().unwrap_or_default();
            done(&entries).then_some(entries)
        })
        .await
    };
    send(&app, "trigger", "disk 95% full").await;
    entries_when("the repeat", |e| kinds(e).contains(&"event:repeated".to_owned())).await;
    send(&app, "resolve", "disk cleaned up").await;
    entries_when("the resolve", |e| kinds(e).contains(&"event:resolved".to_owned())).await;
    send(&app, "resolve", "disk cleaned up").await;
    let entries = entries_when("the ignored resolve and the deliveries", |e| {
        let kinds = kinds(e);
        kinds.contains(&"ignored:already_resolved".to_owned())
            && ["email", "sms"].iter().all(|channel| {
                ["triggered", "resolved"]
                    .iter()
                    .all(|transition| kinds.contains(&format!("notification:{transition}:{channel}:delivered")))
            })
            && kinds.contains(&"notification:triggered:slack:failed".to_owned())
    })
    .await;

    let body = app.api_get(&path).await.expect(200).json();
    assert_eq!(body["incident"], id);
    let events: Vec<String> = kinds(&entries)
        .into_iter()
        .filter(|k| !k.starts_with("notification"))
        .collect();
    assert_eq!(
        events,
        [
            "event:opened",
            "event:repeated",
            "event:resolved",
            "ignored:already_resolved"
        ],
        "{entries:#?}"
    );
    let repeat = entries.iter().find(|e| e["outcome"] == "repeated").expect("the repeat");
    assert_eq!(repeat["occurrences"], 2, "{repeat}");
    assert_eq!(repeat["summary"], "disk 95% full");
    assert_eq!(repeat["origin"]["integration"], "checkout-pd");
    assert_eq!(repeat["origin"]["provider"], "events-v2");

    // Oldest first, throughout.
    let times: Vec<&str> = entries.iter().map(|e| e["at"].as_str().expect("at")).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);

    let sms: Vec<&Value> = entries.iter().filter(|e| e["channel"] == "sms").collect();
    assert!(!sms.is_empty());
    for entry in &sms {
        assert_eq!(entry["recipient"], "+•••••••0123", "{entry}");
    }
    assert!(!body.to_string().contains("5555550123"), "the phone number is masked");

    let slack = entries
        .iter()
        .find(|e| e["channel"] == "slack")
        .expect("a Slack attempt");
    assert_eq!(slack["result"], "failed");
    assert_eq!(slack["will_retry"], true);
    assert_eq!(slack["attempt"], 1);
    assert!(
        !slack.to_string().contains("timelinetest"),
        "the webhook URL is a secret: {slack}"
    );

    // An unknown incident is a 404, not an empty timeline.
    app.api_get("/incidents/inc_00000000000000000000/timeline")
        .await
        .expect_error(404);
}
