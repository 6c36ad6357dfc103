//! Prometheus Alertmanager webhooks at POST /integrations/prometheus, with
//! the sample payloads of events/prometheus and the shipped sample config.

use crate::app::{fixture, keys, settle, TestApp};

const LATENCY: &str = "5c4fc6c0a8e0f1a2";
const ERRORS: &str = "b1a9e39f7d2c0e44";
const WORKER_0: &str = "0b7e3d6f9a1c2e58";
const WORKER_3: &str = "8d21f0c4b6e7a913";

#[tokio::test]
async fn one_incident_per_alert_then_resolved_by_the_resolved_webhook() {
    let app = TestApp::start_with_sample_config().await;
    let bearer = format!("Bearer {}", keys::SAMPLE_PROMETHEUS);
    let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];

    let reply = app
        .post_bytes(
            "/integrations/prometheus",
            &headers,
            fixture("events/prometheus/firing.json"),
        )
        .await;
    let body = reply.expect(202).json();
    assert_eq!(body["status"], "success", "{body}");

    let latency = app
        .wait_for_incident("the HighRequestLatency incident", |i| i["dedup_key"] == LATENCY)
        .await;
    assert_eq!(latency["status"], "open");
    assert_eq!(latency["service"], "checkout");
    assert_eq!(latency["severity"], "critical", "labels.severity=critical");
    assert_eq!(latency["summary"], "High request latency on checkout-api-0:8080");
    assert_eq!(latency["source"], "checkout-api-0:8080", "source is the instance label");
    let details = latency["custom_details"].to_string();
    for expected in [
        "HighRequestLatency",
        "https://runbooks.example.com/checkout/high-latency",
    ] {
        assert!(
            details.contains(expected),
            "labels and annotations belong in custom_details: {details}"
        );
    }
    assert_eq!(latency["origin"]["integration"], "checkout-prometheus", "{latency}");

    let errors = app
        .wait_for_incident("the HighErrorRate incident", |i| i["dedup_key"] == ERRORS)
        .await;
    assert_eq!(errors["severity"], "warning", "labels.severity=warning");
    assert_eq!(errors["summary"], "Checkout 5xx error rate above 1%");
    assert_eq!(
        errors["source"], "checkout-api",
        "without an instance, the source is the job"
    );
    assert_eq!(app.incidents("").await.len(), 2);

    // Alertmanager repeats a firing group: repeats, not new incidents.
    app.post_bytes(
        "/integrations/prometheus",
        &headers,
        fixture("events/prometheus/firing.json"),
    )
    .await
    .expect(202);
    for fingerprint in [LATENCY, ERRORS] {
        app.wait_for_incident("the repeat to be counted", |i| {
            i["dedup_key"] == fingerprint && i["occurrences"] == 2
        })
        .await;
    }
    assert_eq!(app.incidents("").await.len(), 2);

    app.post_bytes(
        "/integrations/prometheus",
        &headers,
        fixture("events/prometheus/resolved.json"),
    )
    .await
    .expect(202);
    for incident in [&latency, &errors] {
        app.wait_for_incident("the resolved webhook to resolve the incident", |i| {
            i["id"] == incident["id"] && i["status"] == "resolved"
        })
        .await;
    }
    assert!(app.incidents("status=open").await.is_empty());
}

#[tokio::test]
async fn the_key_is_accepted_in_the_query_string_and_as_a_token_header() {
    let app = TestApp::start_with_sample_config().await;
    let json = ("content-type", "application/json");

    let path = format!("/integrations/prometheus?token={}", keys::SAMPLE_PROMETHEUS);
    app.post_bytes(&path, &[json], fixture("events/prometheus/truncated.json"))
        .await
        .expect(202);
    for fingerprint in [WORKER_0, WORKER_3] {
        let incident = app
            .wait_for_incident("an InstanceDown incident", |i| i["dedup_key"] == fingerprint)
            .await;
        assert_eq!(incident["severity"], "critical");
        assert_eq!(incident["status"], "open");
    }

    let token = format!("Token token={}", keys::SAMPLE_PROMETHEUS);
    app.post_bytes(
        "/integrations/prometheus",
        &[("authorization", token.as_str()), json],
        fixture("events/prometheus/firing.json"),
    )
    .await
    .expect(202);
    for fingerprint in [LATENCY, ERRORS] {
        app.wait_for_incident("a firing.json incident", |i| i["dedup_key"] == fingerprint)
            .await;
    }

    // Alerts left out of a later (or truncated) group are never resolved
    // by their absence.
    settle().await;
    let open = app.incidents("status=open").await;
    assert_eq!(open.len(), 4, "{open:#?}");
}
