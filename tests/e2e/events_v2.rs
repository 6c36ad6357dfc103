//! Events API v2 at POST /v2/enqueue: PagerDuty's contract, the incident
//! life cycle and one notification per transition and recipient.

use serde_json::{json, Value};

use crate::app::{count_transition, fixture, keys, outbox_for, settle, TestApp};

const CHECKOUT_RECIPIENTS: [(&str, &str); 3] = [
    ("email", "oncall@example.com"),
    ("sms", "+15555550123"),
    ("slack", "#checkout"),
];

fn trigger(dedup_key: &str, summary: &str) -> Value {
    json!({
        "routing_key": keys::CHECKOUT_EVENTS,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {"summary": summary, "source": "db-1.example.com", "severity": "critical"},
    })
}

fn action(event_action: &str, dedup_key: &str) -> Value {
    json!({"routing_key": keys::CHECKOUT_EVENTS, "event_action": event_action, "dedup_key": dedup_key})
}

#[track_caller]
fn assert_accepted(body: &Value, dedup_key: &str) {
    assert_eq!(body["status"], "success", "{body}");
    assert_eq!(body["message"], "Event processed", "{body}");
    assert_eq!(body["dedup_key"], dedup_key, "{body}");
}

fn id_of(incident: &Value) -> String {
    incident["id"].as_str().expect("incident without an id").to_owned()
}

#[tokio::test]
async fn an_incident_opens_counts_repeats_is_acknowledged_resolved_and_reopens() {
    let app = TestApp::start().await;
    let key = "disk-full/db-1";

    let reply = app.enqueue(&trigger(key, "Disk full on db-1")).await;
    assert_accepted(&reply.expect(202).json(), key);

    let incident = app
        .wait_for_incident("the trigger to open an incident", |i| i["dedup_key"] == key)
        .await;
    let id = id_of(&incident);
    assert!(id.starts_with("inc_"), "{incident}");
    assert_eq!(incident["service"], "checkout");
    assert_eq!(incident["status"], "open");
    assert_eq!(incident["severity"], "critical");
    assert_eq!(incident["summary"], "Disk full on db-1");
    assert_eq!(incident["occurrences"], 1);
    for field in ["created_at", "updated_at"] {
        assert!(incident[field].is_string(), "{field} missing: {incident}");
    }

    // The same dedup key again: a repeat on the open incident, not a new one.
    assert_accepted(
        &app.enqueue(&trigger(key, "Disk full on db-1")).await.expect(202).json(),
        key,
    );
    let repeated = app
        .wait_for_incident("the repeat to be counted", |i| {
            i["id"] == id.as_str() && i["occurrences"] == 2
        })
        .await;
    assert_eq!(repeated["status"], "open");
    assert_eq!(
        app.incidents("").await.len(),
        1,
        "a repeat must not open a second incident"
    );

    assert_accepted(&app.enqueue(&action("acknowledge", key)).await.expect(202).json(), key);
    app.wait_for_incident("the incident to be acknowledged", |i| {
        i["id"] == id.as_str() && i["status"] == "acknowledged"
    })
    .await;

    assert_accepted(&app.enqueue(&action("resolve", key)).await.expect(202).json(), key);
    app.wait_for_incident("the incident to be resolved", |i| {
        i["id"] == id.as_str() && i["status"] == "resolved"
    })
    .await;

    // One delivery per transition per recipient, and none for the repeat.
    app.wait_for_outbox("the resolved notifications", |lines| {
        count_transition(lines, &id, "resolved") == CHECKOUT_RECIPIENTS.len()
    })
    .await;
    settle().await;
    let lines = app.outbox();
    let about_it = outbox_for(&lines, &id);
    for transition in ["triggered", "acknowledged", "resolved"] {
        for (channel, to) in CHECKOUT_RECIPIENTS {
            let deliveries = about_it
                .iter()
                .filter(|l| l["transition"] == transition && l["channel"] == channel && l["to"] == to)
                .count();
            assert_eq!(deliveries, 1, "{transition} by {channel} to {to}: {about_it:#?}");
        }
    }
    assert_eq!(about_it.len(), 9, "exactly 3 transitions × 3 recipients: {about_it:#?}");
    for line in &about_it {
        let message = &line["message"];
        assert!(
            message.is_object() || message.as_str().is_some_and(|m| !m.is_empty()),
            "the rendered message is missing: {line}"
        );
    }

    // A trigger after resolve opens a new incident; the old one stays resolved.
    assert_accepted(
        &app.enqueue(&trigger(key, "Disk full on db-1 again"))
            .await
            .expect(202)
            .json(),
        key,
    );
    let reopened = app
        .wait_for_incident("a trigger after resolve to open a new incident", |i| {
            i["dedup_key"] == key && i["status"] == "open"
        })
        .await;
    assert_ne!(id_of(&reopened), id);
    assert_eq!(reopened["occurrences"], 1);
    assert_eq!(app.incidents("").await.len(), 2);
    let old = app.api_get(&format!("/incidents/{id}")).await;
    assert_eq!(old.expect(200).json()["status"], "resolved");
    app.wait_for_outbox("the new incident's triggered notifications", |lines| {
        count_transition(lines, &id_of(&reopened), "triggered") == CHECKOUT_RECIPIENTS.len()
    })
    .await;
}

#[tokio::test]
async fn a_trigger_without_dedup_key_gets_one_and_it_resolves_the_incident() {
    let app = TestApp::start().await;

    let reply = app
        .enqueue(&json!({
            "routing_key": keys::CHECKOUT_EVENTS,
            "event_action": "trigger",
            "payload": {"summary": "Replica lag 40s", "source": "db-2", "severity": "warning"},
        }))
        .await;
    let body = reply.expect(202).json();
    assert_eq!(body["status"], "success");
    let dedup_key = body["dedup_key"]
        .as_str()
        .unwrap_or_else(|| panic!("no dedup_key was generated: {body}"))
        .to_owned();
    // A UUID, hyphenated or in its 32-hex-digit simple form.
    let digits: String = dedup_key.chars().filter(|c| *c != '-').collect();
    assert!(
        digits.len() == 32 && digits.chars().all(|c| c.is_ascii_hexdigit()),
        "a UUID is expected: {dedup_key}"
    );

    let incident = app
        .wait_for_incident("the incident of the generated key", |i| {
            i["dedup_key"] == dedup_key.as_str()
        })
        .await;
    assert_eq!(incident["severity"], "warning");

    app.enqueue(&action("resolve", &dedup_key)).await.expect(202);
    app.wait_for_incident("the resolve by the generated key", |i| {
        i["dedup_key"] == dedup_key.as_str() && i["status"] == "resolved"
    })
    .await;

    // Acknowledge and resolve of a key never triggered change nothing.
    app.enqueue(&action("acknowledge", "never-triggered")).await.expect(202);
    app.enqueue(&action("resolve", "never-triggered")).await.expect(202);
    settle().await;
    let incidents = app.incidents("").await;
    assert_eq!(incidents.len(), 1, "{incidents:#?}");
}

#[tokio::test]
async fn the_shipped_samples_work_with_the_shipped_config() {
    let app = TestApp::start_with_sample_config().await;

    // PagerDuty clients do not always say Content-Type: the body is JSON anyway.
    let reply = app
        .post_bytes("/v2/enqueue", &[], fixture("events/events-v2/trigger.json"))
        .await;
    assert_accepted(&reply.expect(202).json(), "disk-full/prod-datapipe03");
    let incident = app
        .wait_for_incident("the sample trigger", |i| i["dedup_key"] == "disk-full/prod-datapipe03")
        .await;
    assert_eq!(
        incident["summary"],
        "DISK at 99% on machine prod-datapipe03.example.com"
    );
    assert_eq!(incident["severity"], "critical");
    assert_eq!(incident["service"], "checkout");
    let id = id_of(&incident);

    let reply = app
        .post_bytes(
            "/v2/enqueue",
            &[("content-type", "application/json")],
            fixture("events/events-v2/acknowledge.json"),
        )
        .await;
    reply.expect(202);
    app.wait_for_incident("the sample acknowledge", |i| {
        i["id"] == id.as_str() && i["status"] == "acknowledged"
    })
    .await;

    let reply = app
        .post_bytes(
            "/v2/enqueue",
            &[("content-type", "application/json")],
            fixture("events/events-v2/resolve.json"),
        )
        .await;
    reply.expect(202);
    app.wait_for_incident("the sample resolve", |i| {
        i["id"] == id.as_str() && i["status"] == "resolved"
    })
    .await;

    // Sending the sample trigger again (its payload.timestamp is from 2015)
    // opens a new incident: a trigger after resolve always does.
    app.post_bytes("/v2/enqueue", &[], fixture("events/events-v2/trigger.json"))
        .await
        .expect(202);
    app.wait_for_incident(
        "the sample trigger, sent again after resolve, to open a new incident",
        |i| i["dedup_key"] == "disk-full/prod-datapipe03" && i["status"] == "open",
    )
    .await;

    // What Alertmanager's pagerduty_configs sends.
    let reply = app
        .post_bytes(
            "/v2/enqueue",
            &[("content-type", "application/json")],
            fixture("events/events-v2/alertmanager-trigger.json"),
        )
        .await;
    reply.expect(202);
    let from_alertmanager = app
        .wait_for_incident("the Alertmanager-shaped event", |i| {
            i["dedup_key"] == "3ac7d87d7ac7d1d8609d266c7365de40a60ffedade83118360d67fa21de6f30a"
        })
        .await;
    assert_eq!(from_alertmanager["severity"], "error");
    assert_eq!(from_alertmanager["status"], "open");
}
