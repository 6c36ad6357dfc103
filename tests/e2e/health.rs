//! GET /integrations/health on the local stack: a known mix of accepted
//! and refused requests, counted per integration, per provider and overall
//! in the embedded store, and reported without a key, secret or signature.

use serde_json::{json, Value};

use crate::app::{fixture, signature, TestApp};

const OPS: &str = "sk_health_test_ops_0123456789";
const SENDER: &str = "sk_health_test_sender_0123456789";
const PROMETHEUS: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const GRAFANA: &str = "6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b";
const SIGNED: &str = "7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c";
const SECRET: &str = "health-signing-secret-0123456789";
const UNKNOWN: &str = "8d8d8d8d8d8d8d8d8d8d8d8d8d8d8d8d";

const CONFIG: &str = r#"
api_keys:
  - {name: ops, key: sk_health_test_ops_0123456789, scopes: [events:write, incidents:read, incidents:write]}
  - {name: sender, key: sk_health_test_sender_0123456789, scopes: [events:write]}
services:
  - id: checkout
    integrations:
      - {id: checkout-am, type: prometheus, key: 5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a}
      - {id: checkout-grafana, type: grafana, key: 6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b}
  - id: payments
    integrations:
      - id: payments-signed
        type: webhook
        key: 7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c
        secret: health-signing-secret-0123456789
"#;

const JSON: (&str, &str) = ("content-type", "application/json");

fn totals(received: u64, success: u64, errors: u64, rate: f64, found: &Value) -> Value {
    // Latency is measured, not known: only its presence and type are checked.
    assert!(
        found["averageLatencyMs"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{found}"
    );
    json!({
        "totalReceived": received,
        "totalSuccess": success,
        "totalErrors": errors,
        "successRate": rate,
        "averageLatencyMs": found["averageLatencyMs"],
    })
}

fn five(value: &Value) -> Value {
    json!({
        "totalReceived": value["totalReceived"],
        "totalSuccess": value["totalSuccess"],
        "totalErrors": value["totalErrors"],
        "successRate": value["successRate"],
        "averageLatencyMs": value["averageLatencyMs"],
    })
}

#[tokio::test]
async fn a_known_mix_of_requests_is_counted_exactly_and_reported_without_secrets() {
    let app = TestApp::start_with(Some(CONFIG), OPS).await;

    // Nothing counted yet.
    let empty = app.api_get("/integrations/health").await.expect(200).json();
    assert_eq!(empty["status"], "healthy");
    assert_eq!(empty["integrations"], json!([]));
    assert_eq!(empty["global"]["totalReceived"], 0);

    // Refused: bad JSON (prometheus), the wrong content type (grafana), a
    // bad signature (webhook), and a key nobody has (not counted).
    app.post_bytes(
        "/integrations/prometheus",
        &[JSON, ("x-integration-key", PROMETHEUS)],
        r#"{"alerts": [{"labels": "#,
    )
    .await
    .expect_error(400);
    app.post_bytes(
        "/integrations/grafana",
        &[("content-type", "application/xml"), ("x-integration-key", GRAFANA)],
        "<alert/>",
    )
    .await
    .expect_error(415);
    let body = br#"{"title":"Card declines up","level":"error","id":"declines","status":"triggered"}"#;
    let forged = signature("not-the-secret", body);
    app.post_bytes(
        "/integrations/webhook",
        &[JSON, ("x-integration-key", SIGNED), ("x-signature", forged.as_str())],
        body.to_vec(),
    )
    .await
    .expect_error(401);
    app.post_bytes(
        "/integrations/prometheus",
        &[JSON, ("x-integration-key", UNKNOWN)],
        fixture("events/prometheus/firing.json"),
    )
    .await
    .expect_error(404);

    // Accepted: two for prometheus, one for grafana, after their errors.
    for _ in 0..2 {
        app.post_bytes(
            "/integrations/prometheus",
            &[JSON, ("x-integration-key", PROMETHEUS)],
            fixture("events/prometheus/firing.json"),
        )
        .await
        .expect(202);
    }
    app.post_bytes(
        "/integrations/grafana",
        &[JSON, ("x-integration-key", GRAFANA)],
        fixture("events/grafana/firing.json"),
    )
    .await
    .expect(202);

    let reply = app.api_get("/integrations/health").await;
    let health = reply.expect(200).json();
    // Every integration had an error within the last minutes, but two of
    // them get through again: degraded, not failing.
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(five(&health["global"]), totals(6, 3, 3, 0.5, &health["global"]));
    let by_type = &health["byType"];
    assert_eq!(
        by_type.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec![
            "grafana".to_owned(),
            "prometheus".to_owned(),
            "webhook".to_owned()
        ]),
        "{by_type}"
    );
    assert_eq!(
        five(&by_type["prometheus"]),
        totals(3, 2, 1, 2.0 / 3.0, &by_type["prometheus"])
    );
    assert_eq!(five(&by_type["grafana"]), totals(2, 1, 1, 0.5, &by_type["grafana"]));
    assert_eq!(five(&by_type["webhook"]), totals(1, 0, 1, 0.0, &by_type["webhook"]));

    let integrations = health["integrations"].as_array().expect("integrations");
    let ids: Vec<&str> = integrations.iter().filter_map(|i| i["id"].as_str()).collect();
    assert_eq!(ids, ["checkout-am", "checkout-grafana", "payments-signed"]);
    let [am, grafana, signed] = [&integrations[0], &integrations[1], &integrations[2]];

    assert_eq!(
        (&am["service"], &am["provider"]),
        (&json!("checkout"), &json!("prometheus"))
    );
    assert_eq!(five(am), totals(3, 2, 1, 2.0 / 3.0, am));
    assert_eq!(am["lastError"]["status"], 400);
    assert_eq!(am["lastError"]["message"], "invalid payload");
    assert_eq!(am["status"], "degraded");

    assert_eq!(
        (&grafana["service"], &grafana["provider"]),
        (&json!("checkout"), &json!("grafana"))
    );
    assert_eq!(five(grafana), totals(2, 1, 1, 0.5, grafana));
    assert_eq!(grafana["lastError"]["status"], 415);
    assert_eq!(grafana["lastError"]["message"], "unsupported media type");

    assert_eq!(
        (&signed["service"], &signed["provider"]),
        (&json!("payments"), &json!("webhook"))
    );
    assert_eq!(five(signed), totals(1, 0, 1, 0.0, signed));
    assert_eq!(signed["lastError"]["status"], 401);
    assert_eq!(signed["lastError"]["message"], "signature check failed");
    assert_eq!(
        signed["lastError"]["at"], signed["lastEventAt"],
        "its only request failed"
    );

    for integration in integrations {
        let last = integration["lastEventAt"].as_str().expect("lastEventAt");
        assert!(chrono::DateTime::parse_from_rfc3339(last).is_ok(), "{last}");
    }
    // Neither the keys, the signing secret nor the signature sent are shown.
    for secret in [
        PROMETHEUS,
        GRAFANA,
        SIGNED,
        UNKNOWN,
        SECRET,
        forged.as_str(),
        &forged[7..],
    ] {
        assert!(!reply.text.contains(secret), "{secret} is in {}", reply.text);
    }
}

#[tokio::test]
async fn the_health_route_is_not_a_provider_and_needs_an_api_key_that_reads() {
    let app = TestApp::start_with(Some(CONFIG), OPS).await;
    let url = app.url("/integrations/health");

    // Without a key: the API's 401, not an ingest endpoint's answer.
    let anonymous = app.send(app.client.get(&url)).await;
    let body = anonymous.expect_error(401);
    assert!(!anonymous.text.contains("integration key"), "{body}");

    let sender = app.send(app.client.get(&url).bearer_auth(SENDER)).await;
    sender.expect_error(403);

    let reader = app.send(app.client.get(&url).bearer_auth(OPS)).await;
    let health = reader.expect(200).json();
    assert!(
        health.get("byType").is_some() && health.get("global").is_some(),
        "{health}"
    );

    // The provider endpoints next to it still answer as before.
    app.post_bytes(
        "/integrations/prometheus",
        &[JSON, ("x-integration-key", PROMETHEUS)],
        fixture("events/prometheus/firing.json"),
    )
    .await
    .expect(202);
}
