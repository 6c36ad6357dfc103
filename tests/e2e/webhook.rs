//! The generic webhook at POST /integrations/webhook: field aliases, HMAC
//! signatures on the raw body, and per-integration field paths.

use serde_json::json;

use crate::app::{fixture, keys, settle, signature, TestApp};

const PATH: &str = "/integrations/webhook";

#[tokio::test]
async fn aliases_for_summary_severity_status_and_id_are_understood() {
    let app = TestApp::start().await;
    let key = ("x-integration-key", keys::CHECKOUT_WEBHOOK);
    let json_type = ("content-type", "application/json");

    // title / severity / status / id / source, then the sample resolve.
    app.post_bytes(PATH, &[key, json_type], fixture("events/webhook/trigger.json"))
        .await
        .expect(202);
    let incident = app
        .wait_for_incident("the webhook trigger", |i| i["dedup_key"] == "checkout-error-rate")
        .await;
    assert_eq!(incident["summary"], "Checkout API error rate above 5%");
    assert_eq!(incident["severity"], "critical");
    assert_eq!(incident["source"], "checkout-api.prod.example.com");
    assert_eq!(incident["service"], "checkout");
    assert_eq!(incident["status"], "open");
    app.post_bytes(PATH, &[key, json_type], fixture("events/webhook/resolve.json"))
        .await
        .expect(202);
    app.wait_for_incident("the sample resolve", |i| {
        i["id"] == incident["id"] && i["status"] == "resolved"
    })
    .await;

    // name / level / state / alert_id / origin, the key as a bearer token.
    let bearer = format!("Bearer {}", keys::CHECKOUT_WEBHOOK);
    let reply = app
        .post_json(
            PATH,
            &[("authorization", bearer.as_str())],
            &json!({"name": "Queue depth high", "level": "error", "state": "fired",
                    "alert_id": "queue-depth", "origin": "worker-1"}),
        )
        .await;
    assert_eq!(reply.expect(202).json()["status"], "success");
    let queue = app
        .wait_for_incident("the aliased trigger", |i| i["dedup_key"] == "queue-depth")
        .await;
    assert_eq!(queue["summary"], "Queue depth high");
    assert_eq!(queue["severity"], "error");
    assert_eq!(queue["source"], "worker-1");
    assert_eq!(queue["status"], "open");

    // status: ack
    app.post_json(
        PATH,
        &[key],
        &json!({"title": "Queue depth high", "status": "ack", "id": "queue-depth"}),
    )
    .await
    .expect(202);
    app.wait_for_incident("'ack' to acknowledge it", |i| {
        i["id"] == queue["id"] && i["status"] == "acknowledged"
    })
    .await;

    // message / action: ok, the key in the query string.
    let query = format!("{PATH}?token={}", keys::CHECKOUT_WEBHOOK);
    app.post_json(
        &query,
        &[],
        &json!({"message": "Queue depth high", "action": "ok", "alert_id": "queue-depth"}),
    )
    .await
    .expect(202);
    app.wait_for_incident("the 'ok' action to resolve it", |i| {
        i["id"] == queue["id"] && i["status"] == "resolved"
    })
    .await;
    assert_eq!(app.incidents("").await.len(), 2);
}

/// The tour a newcomer follows: the sample trigger, an acknowledge through
/// the API, the sample resolve. The resolve carries the monitoring tool's
/// own timestamp (from 2024 in the sample), the acknowledge the server's
/// clock: a resolve after an acknowledge moves the incident forward and
/// must not be dropped as "stale".
#[tokio::test]
async fn a_provider_resolve_after_an_api_acknowledge_closes_the_incident() {
    let app = TestApp::start().await;
    let key = ("x-integration-key", keys::CHECKOUT_WEBHOOK);
    let json_type = ("content-type", "application/json");

    app.post_bytes(PATH, &[key, json_type], fixture("events/webhook/trigger.json"))
        .await
        .expect(202);
    let incident = app
        .wait_for_incident("the webhook trigger", |i| i["dedup_key"] == "checkout-error-rate")
        .await;
    let id = incident["id"].as_str().expect("id").to_owned();
    let acked = app.api_post(&format!("/incidents/{id}/acknowledge"), keys::OPS).await;
    assert_eq!(acked.expect(200).json()["status"], "acknowledged");

    app.post_bytes(PATH, &[key, json_type], fixture("events/webhook/resolve.json"))
        .await
        .expect(202);
    app.wait_for_incident("the provider's resolve after the API acknowledge", |i| {
        i["id"] == id.as_str() && i["status"] == "resolved"
    })
    .await;
}

#[tokio::test]
async fn a_signed_integration_requires_the_hmac_of_the_raw_body() {
    let app = TestApp::start().await;
    let key = ("x-integration-key", keys::PAYMENTS_SIGNED);
    let body = br#"{"title":"Card declines up","level":"error","id":"declines","status":"triggered"}"#;
    let good = signature(keys::PAYMENTS_SECRET, body);

    app.post_bytes(PATH, &[key, ("x-signature", good.as_str())], body.to_vec())
        .await
        .expect(202);
    let incident = app
        .wait_for_incident("the signed trigger", |i| i["dedup_key"] == "declines")
        .await;
    assert_eq!(incident["service"], "payments");

    let tampered = br#"{"title":"Card declines up","level":"error","id":"tampered","status":"triggered"}"#;
    let wrong_secret = signature("not-the-secret-at-all", tampered);
    let refused = [
        ("missing", None),
        ("wrong secret", Some(wrong_secret.as_str())),
        ("signature of another body", Some(good.as_str())),
        ("not hex", Some("sha256=zz")),
    ];
    let expected = signature(keys::PAYMENTS_SECRET, tampered);
    for (case, header) in refused {
        let mut headers = vec![key, ("content-type", "application/json")];
        if let Some(value) = header {
            headers.push(("x-signature", value));
        }
        let reply = app.post_bytes(PATH, &headers, tampered.to_vec()).await;
        reply.expect_error(401);
        assert!(
            !reply.text.contains(keys::PAYMENTS_SECRET),
            "{case}: the secret is echoed: {reply}"
        );
        assert!(
            !reply.text.contains(&expected["sha256=".len()..]),
            "{case}: the expected signature is echoed: {reply}"
        );
    }

    // X-Webhook-Signature is the other accepted header.
    let resolve = br#"{"title":"Card declines up","id":"declines","status":"resolved"}"#;
    let signed = signature(keys::PAYMENTS_SECRET, resolve);
    app.post_bytes(PATH, &[key, ("x-webhook-signature", signed.as_str())], resolve.to_vec())
        .await
        .expect(202);
    app.wait_for_incident("the signed resolve", |i| {
        i["id"] == incident["id"] && i["status"] == "resolved"
    })
    .await;

    settle().await;
    let incidents = app.incidents("").await;
    assert_eq!(
        incidents.len(),
        1,
        "refused requests must store nothing: {incidents:#?}"
    );
}

#[tokio::test]
async fn field_paths_read_nested_bodies() {
    let app = TestApp::start().await;
    let key = ("x-integration-key", keys::PAYMENTS_MAPPED);

    let raised = json!({
        "event": "alert.updated",
        "alert": {"id": "pay-1", "title": "Acquirer timeouts", "level": "critical", "state": "raised"},
    });
    app.post_json(PATH, &[key], &raised).await.expect(202);
    let incident = app
        .wait_for_incident("the mapped trigger", |i| i["dedup_key"] == "pay-1")
        .await;
    assert_eq!(incident["summary"], "Acquirer timeouts");
    assert_eq!(incident["severity"], "critical");
    assert_eq!(incident["service"], "payments");
    assert_eq!(incident["status"], "open");

    app.post_bytes(
        PATH,
        &[key, ("content-type", "application/json")],
        fixture("events/webhook/nested.json"),
    )
    .await
    .expect(202);
    let sample = app
        .wait_for_incident("the nested sample", |i| i["dedup_key"] == "pay-4821")
        .await;
    assert_eq!(sample["summary"], "Card authorisations failing at acquirer");
    assert_eq!(sample["status"], "open");

    let cleared = json!({
        "event": "alert.updated",
        "alert": {"id": "pay-1", "title": "Acquirer timeouts", "level": "critical", "state": "cleared"},
    });
    app.post_json(PATH, &[key], &cleared).await.expect(202);
    app.wait_for_incident("a resolve value to resolve it", |i| {
        i["id"] == incident["id"] && i["status"] == "resolved"
    })
    .await;
    let open = app.incidents("status=open").await;
    assert_eq!(open.len(), 1, "{open:#?}");
    assert_eq!(open[0]["dedup_key"], "pay-4821");
}
