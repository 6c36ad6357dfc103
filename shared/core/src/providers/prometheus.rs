//! Prometheus Alertmanager's webhook (`webhook_configs`, payload version 4).
//! Each alert of a notification becomes one event, keyed by its fingerprint,
//! so every alert of a group opens, repeats and resolves its own incident.
//!
//! <https://prometheus.io/docs/alerting/latest/configuration/#webhook_config>

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, FieldError, Link, Payload, Severity};
use crate::providers::{Inbound, InvalidPayload, Provider, ProviderKind};

pub struct Prometheus;

/// The webhook payload version current Alertmanager releases send.
const VERSION: &str = "4";

/// How Alertmanager writes "not set" for `endsAt`: Go's zero time,
/// 0001-01-01T00:00:00Z, in seconds since the Unix epoch.
const GO_ZERO_TIME_SECS: i64 = -62_135_596_800;

const INVALID: &str = "the Alertmanager notification is invalid";

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Notification {
    version: Option<String>,
    group_key: Option<String>,
    /// How many alerts of the group were left out (`max_alerts`). Their state
    /// is unknown, never "resolved": only an explicit status resolves.
    truncated_alerts: u64,
    status: Option<String>,
    receiver: Option<String>,
    // groupLabels, commonLabels and commonAnnotations are not read: every
    // alert carries its own labels and annotations in full.
    #[serde(rename = "externalURL")]
    external_url: Option<String>,
    // Raw values, parsed one by one, so that every bad alert is reported
    // rather than only the first.
    alerts: Vec<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct AlertmanagerAlert {
    status: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    starts_at: Option<String>,
    ends_at: Option<String>,
    #[serde(rename = "generatorURL")]
    generator_url: Option<String>,
    fingerprint: Option<String>,
}

impl Provider for Prometheus {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Prometheus
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let notification: Notification = parse(inbound.body)?;
        tracing::debug!(
            group_key = notification.group_key.as_deref().unwrap_or(""),
            receiver = notification.receiver.as_deref().unwrap_or(""),
            status = notification.status.as_deref().unwrap_or(""),
            alerts = notification.alerts.len(),
            truncated_alerts = notification.truncated_alerts,
            "alertmanager notification"
        );

        let mut errors: Vec<FieldError> = version_error(notification.version.as_deref()).into_iter().collect();
        if notification.alerts.is_empty() {
            errors.push(FieldError::new(
                "alerts",
                "is empty: a notification carries at least one alert",
            ));
        }

        let mut alerts = Vec::with_capacity(notification.alerts.len());
        for (i, raw) in notification.alerts.iter().enumerate() {
            let prefix = format!("alerts[{i}]");
            let parsed = parse_alert(raw, &prefix).and_then(|alert| alert_from(&alert, &notification, &prefix));
            match parsed {
                Ok(alert) => alerts.push(alert),
                Err(mut e) => errors.append(&mut e),
            }
        }

        if errors.is_empty() {
            Ok(alerts)
        } else {
            Err(InvalidPayload::new(INVALID, errors))
        }
    }
}

fn version_error(version: Option<&str>) -> Option<FieldError> {
    match version.map(str::trim) {
        Some(VERSION) => None,
        Some(other) => Some(FieldError::new(
            "version",
            format!("'{other}' is not supported: Tocsin reads webhook payload version {VERSION}"),
        )),
        None => Some(FieldError::new(
            "version",
            format!("is missing (Alertmanager sends \"{VERSION}\")"),
        )),
    }
}

/// Parses with the path of a type error in the field name (`alerts[2].labels`).
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, InvalidPayload> {
    // serde would read an array as a struct, field by field in order.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(InvalidPayload::field(
            "body",
            "must be one JSON object (an Alertmanager notification), not an array",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            InvalidPayload::unreadable(inner)
        } else {
            InvalidPayload::field(path, format!("has the wrong type: {inner}"))
        }
    })
}

fn parse_alert(raw: &serde_json::Value, prefix: &str) -> Result<AlertmanagerAlert, Vec<FieldError>> {
    serde_path_to_error::deserialize(raw).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." {
            prefix.to_owned()
        } else {
            format!("{prefix}.{path}")
        };
        vec![FieldError::new(
            field,
            format!("has the wrong type: {}", error.into_inner()),
        )]
    })
}

fn alert_from(alert: &AlertmanagerAlert, group: &Notification, prefix: &str) -> Result<Alert, Vec<FieldError>> {
    let mut errors = Vec::new();
    let action = action_of(alert, prefix).map_err(|e| errors.push(e)).ok();
    let timestamp = match action {
        Some(action) => timestamp_of(alert, action, prefix)
            .map_err(|e| errors.push(e))
            .ok()
            .flatten(),
        None => None,
    };
    let Some(event_action) = action.filter(|_| errors.is_empty()) else {
        return Err(errors);
    };

    let labels = &alert.labels;
    let external_url = non_blank(group.external_url.as_deref());
    Ok(Alert {
        event_action,
        dedup_key: dedup_key_of(alert),
        payload: Some(Payload {
            summary: Payload::truncate_summary(&summary_of(alert)),
            source: first_of(&[labels.get("instance"), labels.get("job")])
                .unwrap_or("prometheus")
                .to_owned(),
            severity: severity_of(labels.get("severity").map(String::as_str)),
            timestamp,
            // PagerDuty's meanings: component is the part of the system at
            // fault (the scrape job), class the kind of event (the alert
            // rule); group is left free, as Prometheus has no such notion.
            component: non_blank(labels.get("job").map(String::as_str)).map(str::to_owned),
            group: None,
            class: non_blank(labels.get("alertname").map(String::as_str)).map(str::to_owned),
            custom_details: Some(serde_json::json!({
                "labels": alert.labels,
                "annotations": alert.annotations,
            })),
        }),
        links: links_of(alert, external_url),
        images: Vec::new(),
        client: Some("Alertmanager".to_owned()),
        client_url: external_url.map(str::to_owned),
    })
}

/// Each alert carries its own status; the group's status is not used, and
/// an alert missing from a truncated group is simply not mentioned.
fn action_of(alert: &AlertmanagerAlert, prefix: &str) -> Result<Action, FieldError> {
    match alert.status.as_deref().map(str::trim) {
        Some("firing") => Ok(Action::Trigger),
        Some("resolved") => Ok(Action::Resolve),
        Some(other) => Err(FieldError::new(
            format!("{prefix}.status"),
            format!("'{other}' is not one of firing, resolved"),
        )),
        None => Err(FieldError::new(
            format!("{prefix}.status"),
            "is missing (firing or resolved)",
        )),
    }
}

/// When a firing alert started, or when a resolved one ended.
fn timestamp_of(alert: &AlertmanagerAlert, action: Action, prefix: &str) -> Result<Option<DateTime<Utc>>, FieldError> {
    let (name, value) = match action {
        Action::Resolve => ("endsAt", &alert.ends_at),
        _ => ("startsAt", &alert.starts_at),
    };
    let Some(value) = non_blank(value.as_deref()) else {
        return Ok(None);
    };
    let time = DateTime::parse_from_rfc3339(value)
        .map_err(|_| {
            FieldError::new(
                format!("{prefix}.{name}"),
                format!("'{value}' is not an RFC 3339 date-time"),
            )
        })?
        .with_timezone(&Utc);
    Ok((time.timestamp() != GO_ZERO_TIME_SECS).then_some(time))
}

fn dedup_key_of(alert: &AlertmanagerAlert) -> DedupKey {
    if let Some(key) = non_blank(alert.fingerprint.as_deref()).and_then(|f| DedupKey::parse(f).ok()) {
        return key;
    }
    // Senders that mimic Alertmanager may omit the fingerprint. Alertmanager
    // derives it from the label set alone, so a digest of the sorted labels
    // names the same alert in its firing and its resolved notifications.
    let parts: Vec<&str> = alert
        .labels
        .iter()
        .flat_map(|(k, v)| [k.as_str(), v.as_str()])
        .collect();
    DedupKey::digest_of(&parts)
}

/// Unknown or missing severities are warnings: loud enough to be seen,
/// without paging anyone at critical for a label typo.
fn severity_of(label: Option<&str>) -> Severity {
    match label.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("critical" | "page") => Severity::Critical,
        Some("error") => Severity::Error,
        Some("warning") => Severity::Warning,
        Some("info" | "none") => Severity::Info,
        _ => Severity::Warning,
    }
}

fn summary_of(alert: &AlertmanagerAlert) -> String {
    first_of(&[
        alert.annotations.get("summary"),
        alert.annotations.get("description"),
        alert.labels.get("alertname"),
    ])
    .unwrap_or("Prometheus alert")
    .to_owned()
}

fn links_of(alert: &AlertmanagerAlert, external_url: Option<&str>) -> Vec<Link> {
    let generator = non_blank(alert.generator_url.as_deref()).map(|href| Link {
        href: href.to_owned(),
        text: Some("Prometheus".to_owned()),
    });
    let alertmanager = external_url.map(|href| Link {
        href: href.to_owned(),
        text: Some("Alertmanager".to_owned()),
    });
    generator.into_iter().chain(alertmanager).collect()
}

/// The first value that is present and not blank.
fn first_of<'a>(values: &[Option<&'a String>]) -> Option<&'a str> {
    values.iter().find_map(|v| non_blank(v.map(String::as_str)))
}

fn non_blank(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use http::HeaderMap;
    use serde_json::json;

    use super::*;
    use crate::auth::KeyHash;
    use crate::config::FieldMapping;
    use crate::event::{IntegrationId, ServiceId};

    const FIRING: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/prometheus/firing.json"
    ));
    const RESOLVED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/prometheus/resolved.json"
    ));
    const TRUNCATED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/prometheus/truncated.json"
    ));

    fn integration() -> Integration {
        Integration {
            id: IntegrationId::parse("checkout-prometheus").unwrap(),
            service: ServiceId::parse("checkout").unwrap(),
            provider: ProviderKind::Prometheus,
            key_hash: KeyHash::of("11111111111111111111111111111111"),
            secret: None,
            enabled: true,
            fields: FieldMapping::default(),
            cloudwatch: Default::default(),
            dedup_key: None,
            rate_limit_per_minute: None,
            secret_ref: None,
        }
    }

    fn normalize(body: &str) -> Result<Vec<Alert>, InvalidPayload> {
        let headers = HeaderMap::new();
        let inbound = Inbound {
            headers: &headers,
            query: None,
            body: body.as_bytes(),
            received_at: Utc::now(),
        };
        Prometheus.normalize(&inbound, &integration())
    }

    fn refused(body: &str) -> Vec<String> {
        normalize(body)
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    fn with(sample: &str, change: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut value: serde_json::Value = serde_json::from_str(sample).unwrap();
        change(&mut value);
        value.to_string()
    }

    /// A one-alert notification whose alert is `alert`.
    fn single(alert: serde_json::Value) -> String {
        with(FIRING, |v| v["alerts"] = json!([alert]))
    }

    fn payload(alert: &Alert) -> &Payload {
        alert.payload.as_ref().unwrap()
    }

    #[test]
    fn each_firing_alert_becomes_a_trigger_keyed_by_its_fingerprint() {
        let alerts = normalize(FIRING).unwrap();
        assert_eq!(alerts.len(), 2);
        assert!(alerts.iter().all(|a| a.event_action == Action::Trigger));
        assert_eq!(alerts[0].dedup_key.as_str(), "5c4fc6c0a8e0f1a2");
        assert_eq!(alerts[1].dedup_key.as_str(), "b1a9e39f7d2c0e44");
    }

    #[test]
    fn the_sample_alerts_map_every_field() {
        let alerts = normalize(FIRING).unwrap();
        let latency = payload(&alerts[0]);
        assert_eq!(latency.summary, "High request latency on checkout-api-0:8080");
        assert_eq!(latency.source, "checkout-api-0:8080");
        assert_eq!(latency.severity, Severity::Critical);
        assert_eq!(
            latency.timestamp,
            Some(Utc.with_ymd_and_hms(2024, 5, 14, 9, 12, 3).unwrap() + chrono::Duration::milliseconds(541))
        );
        assert_eq!(latency.component.as_deref(), Some("checkout-api"));
        assert_eq!(latency.class.as_deref(), Some("HighRequestLatency"));
        assert_eq!(latency.group, None);
        let details = latency.custom_details.as_ref().unwrap();
        assert_eq!(details["labels"]["instance"], json!("checkout-api-0:8080"));
        assert_eq!(
            details["annotations"]["runbook_url"],
            json!("https://runbooks.example.com/checkout/high-latency")
        );

        let errors = payload(&alerts[1]);
        assert_eq!(errors.severity, Severity::Warning);
        // No instance label: the job names the source.
        assert_eq!(errors.source, "checkout-api");

        let alert = &alerts[0];
        assert_eq!(alert.links.len(), 2);
        assert!(alert.links[0]
            .href
            .starts_with("http://prometheus.example.com:9090/graph?"));
        assert!(alert.links[0].href.ends_with("&g0.tab=1"));
        assert_eq!(alert.links[0].text.as_deref(), Some("Prometheus"));
        assert_eq!(alert.links[1].href, "http://alertmanager.example.com:9093");
        assert_eq!(alert.links[1].text.as_deref(), Some("Alertmanager"));
        assert_eq!(alert.client.as_deref(), Some("Alertmanager"));
        assert_eq!(
            alert.client_url.as_deref(),
            Some("http://alertmanager.example.com:9093")
        );
    }

    #[test]
    fn resolved_alerts_resolve_the_same_keys_at_their_end_time() {
        let firing = normalize(FIRING).unwrap();
        let resolved = normalize(RESOLVED).unwrap();
        assert_eq!(resolved.len(), 2);
        for (f, r) in firing.iter().zip(&resolved) {
            assert_eq!(r.event_action, Action::Resolve);
            assert_eq!(r.dedup_key, f.dedup_key);
        }
        assert_eq!(
            payload(&resolved[0]).timestamp,
            Some(Utc.with_ymd_and_hms(2024, 5, 14, 9, 31, 18).unwrap() + chrono::Duration::milliseconds(541))
        );
    }

    #[test]
    fn a_truncated_group_never_resolves_the_alerts_it_leaves_out() {
        let notification: serde_json::Value = serde_json::from_str(TRUNCATED).unwrap();
        assert_eq!(notification["truncatedAlerts"], json!(3));
        let alerts = normalize(TRUNCATED).unwrap();
        // Exactly one event per listed alert, all triggers: the three left
        // out produce nothing, in particular no resolve.
        assert_eq!(alerts.len(), 2);
        assert!(alerts.iter().all(|a| a.event_action == Action::Trigger));
        let keys: Vec<&str> = alerts.iter().map(|a| a.dedup_key.as_str()).collect();
        assert_eq!(keys, ["0b7e3d6f9a1c2e58", "8d21f0c4b6e7a913"]);
    }

    #[test]
    fn only_an_alerts_own_resolved_status_resolves_it() {
        // Even a group that says "resolved" does not resolve an alert that
        // says it is firing.
        let body = with(TRUNCATED, |v| v["status"] = json!("resolved"));
        let alerts = normalize(&body).unwrap();
        assert!(alerts.iter().all(|a| a.event_action == Action::Trigger));
        let mixed = with(FIRING, |v| v["alerts"][1]["status"] = json!("resolved"));
        let actions: Vec<Action> = normalize(&mixed).unwrap().iter().map(|a| a.event_action).collect();
        assert_eq!(actions, [Action::Trigger, Action::Resolve]);
    }

    #[test]
    fn other_statuses_are_refused_by_name() {
        let body = with(FIRING, |v| {
            v["alerts"][0]["status"] = json!("pending");
            v["alerts"][1].as_object_mut().unwrap().remove("status");
        });
        assert_eq!(refused(&body), vec!["alerts[0].status", "alerts[1].status"]);
    }

    #[test]
    fn severity_comes_from_the_severity_label() {
        for (label, expected) in [
            (Some("critical"), Severity::Critical),
            (Some("page"), Severity::Critical),
            (Some("CRITICAL"), Severity::Critical),
            (Some("error"), Severity::Error),
            (Some("warning"), Severity::Warning),
            (Some("info"), Severity::Info),
            (Some("none"), Severity::Info),
            (Some("sev-unknown"), Severity::Warning),
            (None, Severity::Warning),
        ] {
            assert_eq!(severity_of(label), expected, "{label:?}");
        }
        let body =
            single(json!({"status": "firing", "labels": {"alertname": "X", "severity": "page"}, "fingerprint": "f"}));
        assert_eq!(payload(&normalize(&body).unwrap()[0]).severity, Severity::Critical);
    }

    #[test]
    fn summary_falls_back_from_annotations_to_alertname_to_a_default() {
        let summary = |annotations: serde_json::Value, labels: serde_json::Value| {
            let body = single(json!({"status": "firing", "labels": labels, "annotations": annotations}));
            payload(&normalize(&body).unwrap()[0]).summary.clone()
        };
        let labels = json!({"alertname": "DiskFull"});
        assert_eq!(
            summary(json!({"summary": "S", "description": "D"}), labels.clone()),
            "S"
        );
        assert_eq!(
            summary(json!({"summary": " ", "description": "D"}), labels.clone()),
            "D"
        );
        assert_eq!(summary(json!({}), labels), "DiskFull");
        assert_eq!(summary(json!({}), json!({})), "Prometheus alert");
        let long = summary(json!({"summary": "x".repeat(5000)}), json!({}));
        assert_eq!(long.chars().count(), Payload::MAX_SUMMARY_CHARS);
    }

    #[test]
    fn source_falls_back_from_instance_to_job_to_prometheus() {
        let source = |labels: serde_json::Value| {
            let body = single(json!({"status": "firing", "labels": labels}));
            payload(&normalize(&body).unwrap()[0]).source.clone()
        };
        assert_eq!(source(json!({"instance": "i:9100", "job": "node"})), "i:9100");
        assert_eq!(source(json!({"job": "node"})), "node");
        assert_eq!(source(json!({})), "prometheus");
    }

    #[test]
    fn zero_and_missing_times_are_no_timestamp() {
        let body = single(json!({"status": "resolved", "labels": {"a": "b"}, "endsAt": "0001-01-01T00:00:00Z"}));
        assert_eq!(payload(&normalize(&body).unwrap()[0]).timestamp, None);
        let body = single(json!({"status": "firing", "labels": {"a": "b"}}));
        assert_eq!(payload(&normalize(&body).unwrap()[0]).timestamp, None);
        let body = single(json!({"status": "firing", "labels": {"a": "b"}, "startsAt": "soon"}));
        assert_eq!(refused(&body), vec!["alerts[0].startsAt"]);
        let body = single(json!({"status": "resolved", "labels": {"a": "b"}, "endsAt": "later"}));
        assert_eq!(refused(&body), vec!["alerts[0].endsAt"]);
    }

    #[test]
    fn without_a_fingerprint_the_key_is_a_digest_of_the_sorted_labels() {
        let a = single(json!({"status": "firing", "labels": {"alertname": "X", "job": "j"}}));
        let b = single(json!({"status": "resolved", "labels": {"job": "j", "alertname": "X"}}));
        let c = single(json!({"status": "firing", "labels": {"alertname": "X", "job": "k"}}));
        let key = |body: &str| normalize(body).unwrap()[0].dedup_key.clone();
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        assert!(key(&a).as_str().starts_with("sha256:"));
        let blank = single(json!({"status": "firing", "labels": {"alertname": "X", "job": "j"}, "fingerprint": ""}));
        assert_eq!(key(&blank), key(&a));
    }

    #[test]
    fn links_and_client_url_only_when_present() {
        let body = with(FIRING, |v| {
            v.as_object_mut().unwrap().remove("externalURL");
            v["alerts"][0]["generatorURL"] = json!("");
        });
        let alerts = normalize(&body).unwrap();
        assert!(alerts[0].links.is_empty());
        assert_eq!(alerts[1].links.len(), 1);
        assert_eq!(alerts[0].client_url, None);
        assert_eq!(alerts[0].client.as_deref(), Some("Alertmanager"));
    }

    #[test]
    fn the_version_must_be_4() {
        assert_eq!(refused(&with(FIRING, |v| v["version"] = json!("3"))), vec!["version"]);
        let missing = with(FIRING, |v| {
            v.as_object_mut().unwrap().remove("version");
        });
        assert_eq!(refused(&missing), vec!["version"]);
    }

    #[test]
    fn an_empty_alerts_list_is_refused() {
        assert_eq!(refused(&with(FIRING, |v| v["alerts"] = json!([]))), vec!["alerts"]);
    }

    #[test]
    fn every_bad_alert_is_listed_and_none_is_accepted() {
        let body = with(FIRING, |v| {
            v["alerts"] = json!([
                {"status": "firing", "labels": {"a": "b"}},
                {"status": "firing", "labels": ["not", "a", "map"]},
                {"status": "firing", "labels": {"a": "b"}, "annotations": {"n": 1}},
                "not an alert",
                {"status": "exploded"},
            ])
        });
        let invalid = normalize(&body).unwrap_err();
        let fields: Vec<&str> = invalid.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "alerts[1].labels",
                "alerts[2].annotations.n",
                "alerts[3]",
                "alerts[4].status"
            ]
        );
    }

    #[test]
    fn unreadable_bodies_and_wrong_types_are_named() {
        assert_eq!(refused("{"), vec!["body"]);
        assert_eq!(refused("[]"), vec!["body"]);
        assert_eq!(refused(&with(FIRING, |v| v["alerts"] = json!({}))), vec!["alerts"]);
        assert_eq!(
            refused(&with(FIRING, |v| v["truncatedAlerts"] = json!("x"))),
            vec!["truncatedAlerts"]
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = with(FIRING, |v| {
            v["newTopLevel"] = json!(true);
            v["alerts"][0]["silencedBy"] = json!([]);
        });
        assert_eq!(normalize(&body).unwrap().len(), 2);
    }
}
