//! Every monitoring tool's endpoint through the real binary, with the
//! shipped sample config's ready integrations (service `platform`) and the
//! samples of events/<type>/: the trigger sample opens an incident, the
//! resolve sample closes the same one.

use crate::app::{fixture, TestApp};

/// One provider's round trip: its type, its sample key, the trigger and
/// resolve samples, and the headers the tool sends with them.
struct RoundTrip {
    provider: &'static str,
    key: &'static str,
    trigger: &'static str,
    resolve: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

const ROUND_TRIPS: &[RoundTrip] = &[
    RoundTrip {
        provider: "grafana",
        key: "7e570000000000000000000000000001",
        trigger: "firing.json",
        resolve: "resolved.json",
        headers: &[],
    },
    RoundTrip {
        provider: "datadog",
        key: "7e570000000000000000000000000002",
        trigger: "triggered.json",
        resolve: "recovered.json",
        headers: &[],
    },
    RoundTrip {
        provider: "sentry",
        key: "7e570000000000000000000000000003",
        trigger: "issue-created.json",
        resolve: "issue-resolved.json",
        headers: &[("sentry-hook-resource", "issue")],
    },
    RoundTrip {
        provider: "github",
        key: "7e570000000000000000000000000004",
        trigger: "workflow_run-failure.json",
        resolve: "workflow_run-success.json",
        headers: &[("x-github-event", "workflow_run")],
    },
    RoundTrip {
        provider: "gitlab",
        key: "7e570000000000000000000000000005",
        trigger: "pipeline-failed.json",
        resolve: "pipeline-success.json",
        headers: &[("x-gitlab-event", "Pipeline Hook")],
    },
    RoundTrip {
        provider: "bitbucket",
        key: "7e570000000000000000000000000006",
        trigger: "commit_status_updated-failed.json",
        resolve: "commit_status_updated-successful.json",
        headers: &[("x-event-key", "repo:commit_status_updated")],
    },
    RoundTrip {
        provider: "newrelic",
        key: "7e570000000000000000000000000007",
        trigger: "activated.json",
        resolve: "closed.json",
        headers: &[],
    },
    RoundTrip {
        provider: "azure",
        key: "7e570000000000000000000000000008",
        trigger: "fired.json",
        resolve: "resolved.json",
        headers: &[],
    },
    RoundTrip {
        provider: "google-cloud-monitoring",
        key: "7e570000000000000000000000000009",
        trigger: "open.json",
        resolve: "closed.json",
        headers: &[],
    },
    RoundTrip {
        provider: "dynatrace",
        key: "7e57000000000000000000000000000a",
        trigger: "open.json",
        resolve: "resolved.json",
        headers: &[],
    },
    RoundTrip {
        provider: "appdynamics",
        key: "7e57000000000000000000000000000b",
        trigger: "open-critical.json",
        resolve: "close-critical.json",
        headers: &[],
    },
    RoundTrip {
        provider: "elastic",
        key: "7e57000000000000000000000000000c",
        trigger: "active.json",
        resolve: "recovered.json",
        headers: &[],
    },
    RoundTrip {
        provider: "honeycomb",
        key: "7e57000000000000000000000000000d",
        trigger: "triggered.json",
        resolve: "ok.json",
        headers: &[],
    },
    RoundTrip {
        provider: "splunk-observability",
        key: "7e57000000000000000000000000000e",
        trigger: "anomalous.json",
        resolve: "ok.json",
        headers: &[],
    },
    RoundTrip {
        provider: "splunk-oncall",
        key: "7e57000000000000000000000000000f",
        trigger: "critical.json",
        resolve: "recovery.json",
        headers: &[],
    },
    RoundTrip {
        provider: "uptimerobot",
        key: "7e570000000000000000000000000010",
        trigger: "trigger.json",
        resolve: "resolve.json",
        headers: &[],
    },
    RoundTrip {
        provider: "pingdom",
        key: "7e570000000000000000000000000011",
        trigger: "trigger.json",
        resolve: "resolve.json",
        headers: &[],
    },
    RoundTrip {
        provider: "better-uptime",
        key: "7e570000000000000000000000000012",
        trigger: "started.json",
        resolve: "resolved.json",
        headers: &[],
    },
    RoundTrip {
        provider: "uptime-kuma",
        key: "7e570000000000000000000000000013",
        trigger: "trigger.json",
        resolve: "resolve.json",
        headers: &[],
    },
    RoundTrip {
        provider: "site24x7",
        key: "7e570000000000000000000000000014",
        trigger: "trigger.json",
        resolve: "resolve.json",
        headers: &[],
    },
];

#[tokio::test]
async fn every_tools_trigger_sample_opens_an_incident_that_its_resolve_sample_closes() {
    let app = TestApp::start_with_sample_config().await;
    for trip in ROUND_TRIPS {
        let path = format!("/integrations/{}?token={}", trip.provider, trip.key);
        let mut headers = vec![("content-type", "application/json")];
        headers.extend_from_slice(trip.headers);
        let integration = format!("platform-{}", trip.provider);

        let sample = format!("events/{}/{}", trip.provider, trip.trigger);
        let reply = app.post_bytes(&path, &headers, fixture(&sample)).await;
        assert!(reply.status / 100 == 2, "{sample}: {reply}");
        let opened = app
            .wait_for_incident(&format!("an incident from {sample}"), |i| {
                i["origin"]["integration"] == integration.as_str() && i["status"] == "open"
            })
            .await;
        assert_eq!(opened["service"], "platform", "{sample}");

        let sample = format!("events/{}/{}", trip.provider, trip.resolve);
        let reply = app.post_bytes(&path, &headers, fixture(&sample)).await;
        assert!(reply.status / 100 == 2, "{sample}: {reply}");
        let closed = app
            .wait_for_incident(&format!("{} resolved by {sample}", opened["id"]), |i| {
                i["id"] == opened["id"] && i["status"] == "resolved"
            })
            .await;
        assert_eq!(closed["dedup_key"], opened["dedup_key"], "{sample}");
    }
    assert!(
        app.incidents("service=platform&status=open").await.is_empty(),
        "every trigger met its resolve"
    );
}

#[tokio::test]
async fn every_tool_refuses_a_wrong_key_and_a_broken_body_without_queueing() {
    let app = TestApp::start_with_sample_config().await;
    for trip in ROUND_TRIPS {
        let sample = fixture(&format!("events/{}/{}", trip.provider, trip.trigger));
        let mut headers = vec![("content-type", "application/json")];
        headers.extend_from_slice(trip.headers);

        let wrong = format!("/integrations/{}?token=9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c", trip.provider);
        let body = app.post_bytes(&wrong, &headers, sample.clone()).await.expect_error(404);
        assert_eq!(body["status"], "not found", "{}: {body}", trip.provider);

        let path = format!("/integrations/{}?token={}", trip.provider, trip.key);
        let broken = &sample[..sample.len() / 2];
        let body = app.post_bytes(&path, &headers, broken.to_vec()).await.expect_error(400);
        assert!(body["errors"].is_array(), "{}: {body}", trip.provider);
    }
    crate::app::settle().await;
    assert!(app.incidents("service=platform").await.is_empty(), "nothing was queued");
}

#[tokio::test]
async fn a_preview_shows_the_events_and_dedup_keys_and_enqueues_nothing() {
    let app = TestApp::start_with_sample_config().await;
    for trip in ROUND_TRIPS {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend_from_slice(trip.headers);
        let path = format!("/integrations/{}/preview?token={}", trip.provider, trip.key);
        let sample = fixture(&format!("events/{}/{}", trip.provider, trip.trigger));
        let reply = app.post_bytes(&path, &headers, sample).await;
        let body = reply.expect(200).json();
        assert_eq!(body["status"], "preview", "{}: {body}", trip.provider);
        assert_eq!(body["integration"], format!("platform-{}", trip.provider));
        let events = body["events"].as_array().expect("an events list");
        assert!(!events.is_empty(), "{}: {body}", trip.provider);
        for event in events {
            assert_eq!(event["event_action"], "trigger", "{}: {event}", trip.provider);
            assert!(event["dedup_key"].as_str().is_some_and(|k| !k.is_empty()));
        }

        // The same checks as a delivery: a wrong key is refused.
        let wrong = format!(
            "/integrations/{}/preview?token=9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c",
            trip.provider
        );
        app.post_bytes(
            &wrong,
            &headers,
            fixture(&format!("events/{}/{}", trip.provider, trip.trigger)),
        )
        .await
        .expect_error(404);
    }
    crate::app::settle().await;
    assert!(
        app.incidents("service=platform").await.is_empty(),
        "a preview queues nothing"
    );
}

#[tokio::test]
async fn an_integrations_dedup_key_template_groups_alerts_for_any_provider() {
    let config = r#"
api_keys:
  - {name: ops, key: sk_e2e_ops_0123456789abcdef, scopes: [incidents:read, incidents:write]}
services:
  - id: checkout
    name: Checkout
    integrations:
      # One incident per job, whatever the alert: both alerts of the sample
      # are job checkout-api.
      - id: checkout-am
        type: prometheus
        key: a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1
        dedup_key: "job:{payload.custom_details.labels.job}"
"#;
    let app = TestApp::start_with(Some(config), crate::app::keys::OPS).await;
    let headers = [
        ("authorization", "Bearer a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1"),
        ("content-type", "application/json"),
    ];
    app.post_bytes(
        "/integrations/prometheus",
        &headers,
        fixture("events/prometheus/firing.json"),
    )
    .await
    .expect(202);
    let incident = app
        .wait_for_incident("the job's incident", |i| i["occurrences"] == 2)
        .await;
    assert_eq!(incident["dedup_key"], "job:checkout-api");
    assert_eq!(app.incidents("").await.len(), 1, "two alerts, one job, one incident");

    app.post_bytes(
        "/integrations/prometheus",
        &headers,
        fixture("events/prometheus/resolved.json"),
    )
    .await
    .expect(202);
    app.wait_for_incident("the job's incident resolved", |i| {
        i["id"] == incident["id"] && i["status"] == "resolved"
    })
    .await;
}

#[tokio::test]
async fn tools_that_deliver_by_get_are_heard_and_others_get_a_json_405() {
    let app = TestApp::start_with_sample_config().await;
    let form = String::from_utf8(fixture("events/uptimerobot/trigger.form")).unwrap();
    let url = app.url(&format!(
        "/integrations/uptimerobot?token=7e570000000000000000000000000010&{}",
        form.trim()
    ));
    let reply = app.send(app.client.get(url)).await;
    assert!(reply.status / 100 == 2, "{reply}");
    app.wait_for_incident("the UptimeRobot incident from a GET", |i| {
        i["origin"]["integration"] == "platform-uptimerobot"
    })
    .await;

    let url = app.url("/integrations/grafana?token=7e570000000000000000000000000001");
    let body = app.send(app.client.get(url)).await.expect_error(405);
    assert_eq!(body["status"], "method not allowed", "{body}");
}
