//! Every bad request is answered with its status and a JSON error, and
//! leaves nothing behind: no incident, no queued event, no notification, no
//! dead letter.

use serde_json::{json, Value};

use crate::app::{fixture, keys, settle, signature, TestApp};

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    /// For 400s: a text one of the "errors" must contain.
    error_mentions: Option<&'static str>,
}

fn case(
    name: &'static str,
    path: &str,
    headers: &[(&'static str, &str)],
    body: impl Into<Vec<u8>>,
    status: u16,
) -> Case {
    Case {
        name,
        method: "POST",
        path: path.to_owned(),
        headers: headers.iter().map(|(n, v)| (*n, (*v).to_owned())).collect(),
        body: body.into(),
        status,
        error_mentions: None,
    }
}

impl Case {
    fn mentioning(mut self, text: &'static str) -> Self {
        self.error_mentions = Some(text);
        self
    }

    fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }
}

fn events_v2(event: Value) -> Vec<u8> {
    event.to_string().into_bytes()
}

fn trigger_with(payload: Value) -> Vec<u8> {
    events_v2(json!({
        "routing_key": keys::CHECKOUT_EVENTS,
        "event_action": "trigger",
        "dedup_key": "bad-input",
        "payload": payload,
    }))
}

fn cases() -> Vec<Case> {
    const JSON: (&str, &str) = ("content-type", "application/json");
    let hook_key = ("x-integration-key", keys::CHECKOUT_WEBHOOK);
    let webhook_body = br#"{"title":"Bad input","severity":"critical","id":"bad-input","status":"triggered"}"#.to_vec();
    let prometheus_bearer = format!("Bearer {}", keys::CHECKOUT_PROMETHEUS);
    let prometheus_auth = ("authorization", prometheus_bearer.as_str());
    let generic_query = format!("/api/v2/generic/incoming?token={}", keys::CHECKOUT_GENERIC);

    let over_limit = 600 * 1024;
    let big_webhook = format!(
        r#"{{"title":"big","id":"bad-input","pad":"{}"}}"#,
        "a".repeat(over_limit)
    );
    let big_event = events_v2(json!({
        "routing_key": keys::CHECKOUT_EVENTS,
        "event_action": "trigger",
        "dedup_key": "bad-input",
        "payload": {"summary": "big", "source": "e2e", "severity": "info", "custom_details": {"pad": "a".repeat(over_limit)}},
    }));

    let good_alert = json!({
        "status": "firing",
        "labels": {"alertname": "HalfGood", "severity": "critical", "instance": "good:9100"},
        "annotations": {"summary": "the good alert"},
        "startsAt": "2024-05-14T09:12:03.541Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": "6f6f6f6f6f6f6f6f",
    });
    let bad_alert = json!({
        "status": "exploded",
        "labels": {"alertname": "HalfBad", "severity": "critical", "instance": "bad:9100"},
        "annotations": {"summary": "the bad alert"},
        "startsAt": "2024-05-14T09:12:03.541Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": "7e7e7e7e7e7e7e7e",
    });
    let half_bad = json!({
        "version": "4", "status": "firing", "receiver": "tocsin", "groupKey": "{}:{alertname=\"Half\"}",
        "truncatedAlerts": 0, "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager.example.com:9093",
        "alerts": [good_alert, bad_alert],
    });

    let wrong_signature = signature("not-the-signing-secret", &webhook_body);
    let deep = format!(
        r#"{{"title":"deep","id":"bad-input","pad":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let firing_alert = |n: usize| {
        json!({
            "status": "firing",
            "labels": {"alertname": "Many", "instance": format!("host-{n}:9100")},
            "annotations": {"summary": "one of many"},
            "startsAt": "2024-05-14T09:12:03.541Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": format!("{n:016x}"),
        })
    };
    let too_many = json!({
        "version": "4", "status": "firing", "receiver": "tocsin", "groupKey": "{}:{alertname=\"Many\"}",
        "truncatedAlerts": 0, "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager.example.com:9093",
        "alerts": (0..1001).map(firing_alert).collect::<Vec<_>>(),
    })
    .to_string();

    vec![
        // Credentials.
        case(
            "webhook without a key",
            "/integrations/webhook",
            &[JSON],
            webhook_body.clone(),
            401,
        ),
        case(
            "prometheus without a key",
            "/integrations/prometheus",
            &[JSON],
            fixture("events/prometheus/firing.json"),
            401,
        ),
        case(
            "generic without a key",
            "/api/v2/generic/incoming",
            &[("content-type", "application/x-www-form-urlencoded")],
            "summary=No+key",
            401,
        ),
        case(
            "malformed key",
            "/integrations/webhook",
            &[JSON, ("x-integration-key", "not-a-key")],
            webhook_body.clone(),
            401,
        ),
        case(
            "malformed bearer key",
            "/integrations/prometheus",
            &[JSON, ("authorization", "Bearer 1234")],
            fixture("events/prometheus/firing.json"),
            401,
        ),
        case(
            "unknown key",
            "/integrations/webhook",
            &[JSON, ("x-integration-key", keys::UNKNOWN)],
            webhook_body.clone(),
            404,
        ),
        case(
            "unknown routing_key",
            "/v2/enqueue",
            &[JSON],
            events_v2(
                json!({"routing_key": keys::UNKNOWN, "event_action": "trigger", "dedup_key": "bad-input",
                             "payload": {"summary": "x", "source": "e2e", "severity": "info"}}),
            ),
            404,
        ),
        case(
            "a prometheus key at the webhook endpoint",
            "/integrations/webhook",
            &[JSON, ("x-integration-key", keys::CHECKOUT_PROMETHEUS)],
            webhook_body.clone(),
            404,
        ),
        case(
            "an events-v2 key at the prometheus endpoint",
            "/integrations/prometheus",
            &[JSON, ("authorization", &format!("Bearer {}", keys::CHECKOUT_EVENTS))],
            fixture("events/prometheus/firing.json"),
            404,
        ),
        case(
            "disabled integration",
            "/integrations/webhook",
            &[JSON, ("x-integration-key", keys::CHECKOUT_DISABLED)],
            webhook_body.clone(),
            403,
        ),
        case(
            "bad signature",
            "/integrations/webhook",
            &[
                JSON,
                ("x-integration-key", keys::PAYMENTS_SIGNED),
                ("x-signature", &wrong_signature),
            ],
            webhook_body.clone(),
            401,
        ),
        case(
            "missing signature",
            "/integrations/webhook",
            &[JSON, ("x-integration-key", keys::PAYMENTS_SIGNED)],
            webhook_body.clone(),
            401,
        ),
        // Size.
        case(
            "webhook body over 512 KB",
            "/integrations/webhook",
            &[JSON, hook_key],
            big_webhook,
            413,
        ),
        case("events v2 body over 512 KB", "/v2/enqueue", &[JSON], big_event, 413),
        case(
            "an Alertmanager group of 1,001 alerts",
            "/integrations/prometheus",
            &[JSON, prometheus_auth],
            too_many,
            413,
        ),
        // Shape and labels.
        case(
            "JSON nested 10,000 levels",
            "/integrations/webhook",
            &[JSON, hook_key],
            deep,
            400,
        )
        .mentioning("nests deeper than 64 levels"),
        case(
            "an XML body",
            "/integrations/webhook",
            &[("content-type", "application/xml"), hook_key],
            "<alert><title>x</title></alert>",
            415,
        ),
        case(
            "a multipart body to a JSON endpoint",
            "/v2/enqueue",
            &[("content-type", "multipart/form-data; boundary=b")],
            "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nb\r\n--b--\r\n",
            415,
        ),
        case(
            "a Latin-1 charset",
            "/integrations/prometheus",
            &[
                ("content-type", "application/json; charset=ISO-8859-1"),
                prometheus_auth,
            ],
            fixture("events/prometheus/firing.json"),
            415,
        ),
        // Bodies that are not JSON.
        case(
            "invalid JSON",
            "/integrations/webhook",
            &[JSON, hook_key],
            r#"{"title": "#,
            400,
        )
        .mentioning("body"),
        case(
            "invalid JSON to prometheus",
            "/integrations/prometheus",
            &[JSON, prometheus_auth],
            "not json at all",
            400,
        ),
        case(
            "invalid UTF-8",
            "/integrations/webhook",
            &[JSON, hook_key],
            b"{\"title\":\"\xff\xfe\xfd\",\"id\":\"bad-input\"}".to_vec(),
            400,
        ),
        // Events v2 contract.
        case(
            "events v2 without payload.summary",
            "/v2/enqueue",
            &[JSON],
            trigger_with(json!({"source": "e2e", "severity": "critical"})),
            400,
        )
        .mentioning("payload.summary"),
        case(
            "events v2 without payload.source",
            "/v2/enqueue",
            &[JSON],
            trigger_with(json!({"summary": "x", "severity": "critical"})),
            400,
        )
        .mentioning("payload.source"),
        case(
            "events v2 with a bad severity",
            "/v2/enqueue",
            &[JSON],
            trigger_with(json!({"summary": "x", "source": "e2e", "severity": "sev1"})),
            400,
        )
        .mentioning("payload.severity"),
        case(
            "events v2 summary over 1024 characters",
            "/v2/enqueue",
            &[JSON],
            trigger_with(json!({"summary": "s".repeat(1025), "source": "e2e", "severity": "info"})),
            400,
        )
        .mentioning("payload.summary"),
        case(
            "events v2 dedup_key over 255 characters",
            "/v2/enqueue",
            &[JSON],
            events_v2(
                json!({"routing_key": keys::CHECKOUT_EVENTS, "event_action": "trigger", "dedup_key": "d".repeat(256),
                             "payload": {"summary": "x", "source": "e2e", "severity": "info"}}),
            ),
            400,
        )
        .mentioning("dedup_key"),
        case(
            "events v2 unknown event_action",
            "/v2/enqueue",
            &[JSON],
            events_v2(
                json!({"routing_key": keys::CHECKOUT_EVENTS, "event_action": "explode", "dedup_key": "bad-input",
                             "payload": {"summary": "x", "source": "e2e", "severity": "info"}}),
            ),
            400,
        )
        .mentioning("event_action"),
        case(
            "events v2 resolve without dedup_key",
            "/v2/enqueue",
            &[JSON],
            events_v2(json!({"routing_key": keys::CHECKOUT_EVENTS, "event_action": "resolve"})),
            400,
        )
        .mentioning("dedup_key"),
        // Never half processed.
        case(
            "an Alertmanager group with one good and one bad alert",
            "/integrations/prometheus",
            &[JSON, prometheus_auth],
            half_bad.to_string(),
            400,
        ),
        case("generic without summary", &generic_query, &[JSON], "{}", 400).mentioning("summary"),
        // Endpoints that do not exist.
        case(
            "unknown provider",
            "/integrations/nagios",
            &[JSON, hook_key],
            webhook_body.clone(),
            404,
        ),
        case("unknown route", "/v3/enqueue", &[JSON], webhook_body.clone(), 404),
        case("unknown route (GET)", "/nothing/here", &[], Vec::new(), 404).method("GET"),
    ]
}

#[tokio::test]
async fn every_bad_input_is_refused_in_json_and_leaves_nothing_behind() {
    let app = TestApp::start().await;
    let mut failures = Vec::new();

    for case in cases() {
        let mut request = match case.method {
            "GET" => app.client.get(app.url(&case.path)),
            _ => app.post(&case.path).body(case.body.clone()),
        };
        for (name, value) in &case.headers {
            request = request.header(*name, value.as_str());
        }
        let reply = match request.send().await {
            Ok(answer) => {
                let status = answer.status().as_u16();
                let headers = answer.headers().clone();
                let text = answer.text().await.unwrap_or_default();
                crate::app::Reply { status, headers, text }
            }
            Err(error) => {
                failures.push(format!("{}: the request failed: {error:?}", case.name));
                continue;
            }
        };

        if reply.status != case.status {
            failures.push(format!("{}: expected {}, got {reply}", case.name, case.status));
            continue;
        }
        let content_type = reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !content_type.starts_with("application/json") {
            failures.push(format!("{}: content-type is '{content_type}': {reply}", case.name));
        }
        let Ok(body) = serde_json::from_str::<Value>(&reply.text) else {
            failures.push(format!("{}: the answer is not JSON: {reply}", case.name));
            continue;
        };
        if body["message"].as_str().is_none_or(str::is_empty) {
            failures.push(format!("{}: no message: {reply}", case.name));
        }
        if case.status == 400 {
            match body["errors"].as_array() {
                Some(errors) if !errors.is_empty() => {
                    if let Some(text) = case.error_mentions {
                        if !errors.iter().any(|e| e.to_string().contains(text)) {
                            failures.push(format!("{}: no error mentions {text}: {reply}", case.name));
                        }
                    }
                }
                _ => failures.push(format!("{}: a 400 needs a non-empty errors list: {reply}", case.name)),
            }
        }
        for secret in [keys::PAYMENTS_SECRET, keys::CHECKOUT_WEBHOOK, keys::CHECKOUT_EVENTS] {
            if reply.text.contains(secret) {
                failures.push(format!("{}: the answer echoes a key or secret: {reply}", case.name));
            }
        }
        let stored = app.incidents("").await;
        if !stored.is_empty() {
            failures.push(format!("{}: an incident was stored: {stored:?}", case.name));
        }
    }

    // Nothing reached the queue: after a good event behind all of them has
    // gone through, it is the only incident, the only notification and
    // there is no dead letter.
    app.enqueue(&json!({
        "routing_key": keys::CHECKOUT_EVENTS,
        "event_action": "trigger",
        "dedup_key": "sentinel",
        "payload": {"summary": "the one good event", "source": "e2e", "severity": "info"},
    }))
    .await
    .expect(202);
    let sentinel = app
        .wait_for_incident("the sentinel event", |i| i["dedup_key"] == "sentinel")
        .await;
    settle().await;
    let incidents = app.incidents("").await;
    if incidents.len() != 1 {
        failures.push(format!("only the sentinel may be stored: {incidents:#?}"));
    }
    let outbox = app.outbox();
    if outbox.iter().any(|line| line["incident_id"] != sentinel["id"]) {
        failures.push(format!("only the sentinel may notify: {outbox:#?}"));
    }
    let dead = app.dead_letters();
    if !dead.is_empty() {
        failures.push(format!("no dead letters expected: {dead:#?}"));
    }

    assert!(
        failures.is_empty(),
        "{} bad-input failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn a_wrong_method_is_answered_in_json() {
    let app = TestApp::start().await;
    for path in ["/v2/enqueue", "/integrations/prometheus", "/api/v2/generic/incoming"] {
        let reply = app.send(app.client.get(app.url(path))).await;
        assert!(
            reply.status == 405 || reply.status == 404,
            "GET {path}: expected 405 or 404, got {reply}"
        );
        let body: Value = serde_json::from_str(&reply.text)
            .unwrap_or_else(|_| panic!("GET {path}: every error answer is JSON (STYLE 5), got {reply}"));
        assert!(body["message"].is_string(), "GET {path}: {reply}");
    }
}
