//! Grafana's webhook contact point, in both of its shapes:
//!
//! - Grafana Alerting (8.0 and later): an Alertmanager-style notification
//!   whose every alert becomes one event, keyed by the alert's fingerprint so
//!   that its firing and resolved notifications meet. The contact point's
//!   "Test" button sends an alert named `TestAlert`, which is accepted and
//!   dropped.
//! - Legacy dashboard alerting (before 8.0, removed in 11): one alert per
//!   request with a `state`, keyed by its `ruleId` (or a `dedup_key` tag).
//!
//! Requests may be signed (Grafana 12): `X-Grafana-Alerting-Signature` is the
//! hex HMAC-SHA256 of the raw body, or of `timestamp:body` when the contact
//! point also sets a timestamp header, which Tocsin reads as
//! `X-Grafana-Alerting-Signature-Timestamp`.
//!
//! <https://grafana.com/docs/grafana/latest/alerting/configure-notifications/manage-contact-points/integrations/webhook-notifier/>

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, FieldError, Image, Link, Payload, Severity};
use crate::providers::{Inbound, InvalidPayload, Provider, ProviderKind};
use crate::signature::{decode_sha256_header, verify_hmac_sha256, SignatureError};

pub struct Grafana;

/// The header Grafana's form suggests for the signature. Grafana itself falls
/// back to `X-Grafana-Alert-Signature` when the field is left empty, so both
/// are read.
const SIGNATURE_HEADERS: [&str; 2] = ["x-grafana-alerting-signature", "x-grafana-alert-signature"];

/// Grafana has no default name for its optional timestamp header; this is the
/// one the setup guide asks for (the name Grafana's own docs use as example).
pub const TIMESTAMP_HEADER: &str = "x-grafana-alerting-signature-timestamp";

/// How far a signed timestamp may be from the time of receipt, either way.
pub const TOLERANCE_SECS: i64 = 300;

/// How Grafana writes "not set" for `endsAt`: Go's zero time,
/// 0001-01-01T00:00:00Z, in seconds since the Unix epoch.
const GO_ZERO_TIME_SECS: i64 = -62_135_596_800;

/// The message Grafana's legacy "Send test" puts in every test notification
/// (capitalised differently across versions).
const LEGACY_TEST_MESSAGE: &str = "someone is testing the alert notification within";

const INVALID: &str = "the Grafana notification is invalid";
const CLIENT: &str = "Grafana";
const DEFAULT_SOURCE: &str = "grafana";

/// A Grafana Alerting notification (webhook payload version 1).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Notification {
    receiver: Option<String>,
    status: Option<String>,
    org_id: Option<i64>,
    group_key: Option<String>,
    #[serde(rename = "externalURL")]
    external_url: Option<String>,
    // commonLabels, groupLabels, title, state and message are not read: each
    // alert carries its own labels and annotations in full. Raw values,
    // parsed one by one, so that every bad alert is reported.
    alerts: Vec<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct GrafanaAlert {
    status: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    starts_at: Option<String>,
    ends_at: Option<String>,
    #[serde(rename = "generatorURL")]
    generator_url: Option<String>,
    fingerprint: Option<String>,
    #[serde(rename = "silenceURL")]
    silence_url: Option<String>,
    #[serde(rename = "dashboardURL")]
    dashboard_url: Option<String>,
    #[serde(rename = "panelURL")]
    panel_url: Option<String>,
    #[serde(rename = "imageURL")]
    image_url: Option<String>,
    values: Option<Value>,
    value_string: Option<String>,
}

/// A legacy dashboard alert notification.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct LegacyAlert {
    title: Option<String>,
    rule_id: Option<Value>,
    rule_name: Option<String>,
    rule_url: Option<String>,
    state: Option<String>,
    message: Option<String>,
    image_url: Option<String>,
    eval_matches: Option<Value>,
    tags: Option<BTreeMap<String, String>>,
    org_id: Option<Value>,
    dashboard_id: Option<Value>,
    panel_id: Option<Value>,
}

impl Provider for Grafana {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Grafana
    }

    fn verify(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<(), SignatureError> {
        match &integration.secret {
            Some(secret) => verify_signature(inbound, secret.expose().as_bytes()),
            None => Ok(()),
        }
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let body: Value = serde_json::from_slice(inbound.body).map_err(InvalidPayload::unreadable)?;
        let Some(object) = body.as_object() else {
            return Err(InvalidPayload::field("body", "must be one JSON object"));
        };
        if object.contains_key("alerts") {
            normalize_notification(body)
        } else if ["ruleId", "ruleName", "state", "evalMatches"]
            .iter()
            .any(|k| object.contains_key(*k))
        {
            normalize_legacy(body)
        } else {
            Err(InvalidPayload::field(
                "body",
                "is neither a Grafana Alerting notification (no `alerts`) nor a legacy alert (no `ruleId` or `state`)",
            ))
        }
    }
}

/// Checks `X-Grafana-Alerting-Signature` on the raw body, with the signed
/// timestamp in front when Grafana sent one.
fn verify_signature(inbound: &Inbound<'_>, secret: &[u8]) -> Result<(), SignatureError> {
    let header = SIGNATURE_HEADERS
        .iter()
        .find_map(|name| inbound.headers.get(*name))
        .ok_or(SignatureError::Missing {
            expected: "X-Grafana-Alerting-Signature: <hex HMAC-SHA256>",
        })?;
    let signature = decode_sha256_header(header.to_str().map_err(|_| SignatureError::Malformed)?)?;

    let message: Cow<'_, [u8]> = match inbound.headers.get(TIMESTAMP_HEADER) {
        None => Cow::Borrowed(inbound.body),
        Some(value) => {
            // Signed exactly as sent: the header's bytes, a colon, the body.
            let text = value.to_str().map_err(|_| SignatureError::Malformed)?;
            let sent: i64 = text.trim().parse().map_err(|_| SignatureError::Malformed)?;
            if inbound.received_at.timestamp().abs_diff(sent) > TOLERANCE_SECS.unsigned_abs() {
                return Err(SignatureError::Expired {
                    tolerance_secs: TOLERANCE_SECS,
                });
            }
            let mut message = Vec::with_capacity(text.len() + 1 + inbound.body.len());
            message.extend_from_slice(text.as_bytes());
            message.push(b':');
            message.extend_from_slice(inbound.body);
            Cow::Owned(message)
        }
    };
    verify_hmac_sha256(secret, &message, &signature)
}

fn normalize_notification(body: Value) -> Result<Vec<Alert>, InvalidPayload> {
    let notification: Notification = from_value(body)?;
    tracing::debug!(
        receiver = notification.receiver.as_deref().unwrap_or(""),
        group_key = notification.group_key.as_deref().unwrap_or(""),
        status = notification.status.as_deref().unwrap_or(""),
        alerts = notification.alerts.len(),
        "grafana notification"
    );
    if notification.alerts.is_empty() {
        return Err(InvalidPayload::field(
            "alerts",
            "is empty: a notification carries at least one alert",
        ));
    }

    let mut alerts = Vec::with_capacity(notification.alerts.len());
    let mut errors = Vec::new();
    for (i, raw) in notification.alerts.iter().enumerate() {
        let prefix = format!("alerts[{i}]");
        let alert = match parse_alert(raw, &prefix) {
            Ok(alert) => alert,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if is_test_alert(&alert) {
            tracing::info!("grafana test notification accepted without an incident");
            continue;
        }
        match alert_from(&alert, &notification, &prefix) {
            Ok(event) => alerts.push(event),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(alerts)
    } else {
        Err(InvalidPayload::new(INVALID, errors))
    }
}

/// The contact point's "Test" button sends one alert labelled
/// `alertname=TestAlert, instance=Grafana` with the summary "Notification
/// test" (grafana/alerting `newTestAlert`); custom test labels are merged
/// over those, so either mark is enough next to the name.
fn is_test_alert(alert: &GrafanaAlert) -> bool {
    let label = |name: &str| alert.labels.get(name).map(|v| v.trim());
    label("alertname") == Some("TestAlert")
        && (label("instance") == Some("Grafana")
            || alert.annotations.get("summary").map(|v| v.trim()) == Some("Notification test"))
}

fn parse_alert(raw: &Value, prefix: &str) -> Result<GrafanaAlert, FieldError> {
    serde_path_to_error::deserialize(raw).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." {
            prefix.to_owned()
        } else {
            format!("{prefix}.{path}")
        };
        FieldError::new(field, format!("has the wrong type: {}", error.into_inner()))
    })
}

fn alert_from(alert: &GrafanaAlert, group: &Notification, prefix: &str) -> Result<Alert, Vec<FieldError>> {
    let event_action = action_of(alert.status.as_deref(), prefix).map_err(|e| vec![e])?;
    let timestamp = timestamp_of(alert, event_action, prefix).map_err(|e| vec![e])?;

    let labels = &alert.labels;
    let label = |name: &str| non_blank(labels.get(name).map(String::as_str));
    let external_url = absolute_url(group.external_url.as_deref());

    let mut details = serde_json::Map::new();
    details.insert("labels".into(), serde_json::json!(alert.labels));
    details.insert("annotations".into(), serde_json::json!(alert.annotations));
    if let Some(values) = alert.values.as_ref().filter(|v| !v.is_null()) {
        details.insert("values".into(), values.clone());
    }
    if let Some(value_string) = non_blank(alert.value_string.as_deref()) {
        details.insert("valueString".into(), value_string.into());
    }
    if let Some(fingerprint) = non_blank(alert.fingerprint.as_deref()) {
        details.insert("fingerprint".into(), fingerprint.into());
    }
    if let Some(receiver) = non_blank(group.receiver.as_deref()) {
        details.insert("receiver".into(), receiver.into());
    }
    if let Some(org_id) = group.org_id {
        details.insert("orgId".into(), org_id.into());
    }

    Ok(Alert {
        event_action,
        dedup_key: dedup_key_of(alert),
        payload: Some(Payload {
            summary: Payload::truncate_summary(&summary_of(alert)),
            source: label("instance")
                .or_else(|| label("job"))
                .unwrap_or(DEFAULT_SOURCE)
                .to_owned(),
            severity: severity_of(labels.get("severity").map(String::as_str)),
            timestamp,
            // The scrape job is the part at fault, the rule the kind of
            // event, and Grafana's folder the logical group of rules.
            component: label("job").map(str::to_owned),
            group: label("grafana_folder").map(str::to_owned),
            class: label("alertname").map(str::to_owned),
            custom_details: Some(Value::Object(details)),
        }),
        links: links_of(alert),
        images: absolute_url(alert.image_url.as_deref())
            .map(|src| Image {
                src: src.to_owned(),
                href: absolute_url(alert.panel_url.as_deref()).map(str::to_owned),
                alt: Some("Panel".to_owned()),
            })
            .into_iter()
            .collect(),
        client: Some(CLIENT.to_owned()),
        client_url: external_url.map(str::to_owned),
    })
}

/// Each alert's own status counts; the notification's is only the summary of
/// them.
fn action_of(status: Option<&str>, prefix: &str) -> Result<Action, FieldError> {
    match status.map(str::trim) {
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
fn timestamp_of(alert: &GrafanaAlert, action: Action, prefix: &str) -> Result<Option<DateTime<Utc>>, FieldError> {
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

/// The fingerprint is a hash of the label set, the same in the firing and the
/// resolved notification; without one, a digest of the sorted labels names
/// the same alert the same way.
fn dedup_key_of(alert: &GrafanaAlert) -> DedupKey {
    if let Some(key) = non_blank(alert.fingerprint.as_deref()).and_then(|f| DedupKey::parse(f).ok()) {
        return key;
    }
    let parts: Vec<&str> = alert
        .labels
        .iter()
        .flat_map(|(k, v)| [k.as_str(), v.as_str()])
        .collect();
    DedupKey::digest_of(&parts)
}

fn summary_of(alert: &GrafanaAlert) -> String {
    ["summary", "description"]
        .iter()
        .find_map(|name| non_blank(alert.annotations.get(*name).map(String::as_str)))
        .or_else(|| non_blank(alert.labels.get("alertname").map(String::as_str)))
        .unwrap_or("Grafana alert")
        .to_owned()
}

fn links_of(alert: &GrafanaAlert) -> Vec<Link> {
    [
        (alert.generator_url.as_deref(), "Alert rule"),
        (alert.dashboard_url.as_deref(), "Dashboard"),
        (alert.panel_url.as_deref(), "Panel"),
        (alert.annotations.get("runbook_url").map(String::as_str), "Runbook"),
        (alert.silence_url.as_deref(), "Silence"),
    ]
    .into_iter()
    .filter_map(|(href, text)| {
        absolute_url(href).map(|href| Link {
            href: href.to_owned(),
            text: Some(text.to_owned()),
        })
    })
    .collect()
}

fn normalize_legacy(body: Value) -> Result<Vec<Alert>, InvalidPayload> {
    let alert: LegacyAlert = from_value(body)?;
    if is_legacy_test(&alert) {
        tracing::info!("grafana legacy test notification accepted without an incident");
        return Ok(Vec::new());
    }
    let event_action = match alert.state.as_deref().map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("alerting" | "no_data") => Action::Trigger,
        Some("ok") => Action::Resolve,
        // Neither opens nor closes anything: a paused rule stays as it was,
        // and a pending one has not fired yet.
        Some("paused" | "pending") => return Ok(Vec::new()),
        Some(other) => {
            return Err(InvalidPayload::field(
                "state",
                format!("'{other}' is not one of alerting, no_data, ok, paused, pending"),
            ))
        }
        None => {
            return Err(InvalidPayload::field(
                "state",
                "is missing (alerting, no_data, ok, paused or pending)",
            ))
        }
    };

    let tags = alert.tags.clone().unwrap_or_default();
    let tag = |name: &str| non_blank(tags.get(name).map(String::as_str));
    let rule_id = alert.rule_id.as_ref().and_then(id_text);
    // Grafana's own PagerDuty notifier lets a `dedup_key` tag replace the
    // rule's key; the same tag does the same here.
    let dedup_key = match (tag("dedup_key"), rule_id.as_deref()) {
        (Some(key), _) => {
            DedupKey::parse(key).map_err(|e| InvalidPayload::new(INVALID, vec![e.at("tags.dedup_key")]))?
        }
        (None, Some(id)) => DedupKey::parse(&format!("grafana-rule-{id}"))
            .map_err(|e| InvalidPayload::new(INVALID, vec![e.at("ruleId")]))?,
        (None, None) => {
            return Err(InvalidPayload::field(
                "ruleId",
                "is missing: a legacy alert is keyed by its rule id (or a dedup_key tag)",
            ))
        }
    };

    let summary = non_blank(alert.rule_name.as_deref())
        .or_else(|| non_blank(alert.title.as_deref()))
        .unwrap_or("Grafana alert");
    let mut details = serde_json::Map::new();
    let mut put = |name: &str, value: Option<Value>| {
        if let Some(value) = value.filter(|v| !v.is_null()) {
            details.insert(name.to_owned(), value);
        }
    };
    put("state", alert.state.clone().map(Value::from));
    put("title", alert.title.clone().map(Value::from));
    put("message", non_blank(alert.message.as_deref()).map(Value::from));
    put("ruleId", alert.rule_id.clone());
    put("evalMatches", alert.eval_matches.clone());
    put("tags", alert.tags.as_ref().map(|t| serde_json::json!(t)));
    put("orgId", alert.org_id.clone());
    put("dashboardId", alert.dashboard_id.clone());
    put("panelId", alert.panel_id.clone());

    Ok(vec![Alert {
        event_action,
        dedup_key,
        payload: Some(Payload {
            summary: Payload::truncate_summary(summary),
            source: tag("instance")
                .or_else(|| tag("host"))
                .unwrap_or(DEFAULT_SOURCE)
                .to_owned(),
            severity: severity_of(tags.get("severity").map(String::as_str)),
            // Legacy notifications carry no time: ordered by receipt.
            timestamp: None,
            component: None,
            group: None,
            class: non_blank(alert.rule_name.as_deref()).map(str::to_owned),
            custom_details: Some(Value::Object(details)),
        }),
        links: absolute_url(alert.rule_url.as_deref())
            .map(|href| Link {
                href: href.to_owned(),
                text: Some("Alert rule".to_owned()),
            })
            .into_iter()
            .collect(),
        images: absolute_url(alert.image_url.as_deref())
            .map(|src| Image {
                src: src.to_owned(),
                href: None,
                alt: Some("Panel".to_owned()),
            })
            .into_iter()
            .collect(),
        client: Some(CLIENT.to_owned()),
        client_url: None,
    }])
}

/// Legacy "Send Test" notifications carry Grafana's fixed test message and
/// the rule name "Test notification" (with a random or zero rule id).
fn is_legacy_test(alert: &LegacyAlert) -> bool {
    let message = alert.message.as_deref().unwrap_or("").trim().to_ascii_lowercase();
    message.starts_with(LEGACY_TEST_MESSAGE)
        || alert
            .rule_name
            .as_deref()
            .is_some_and(|n| n.trim().eq_ignore_ascii_case("Test notification"))
}

/// Unknown or missing severities are warnings: loud enough to be seen,
/// without paging anyone at critical for a label typo.
fn severity_of(label: Option<&str>) -> Severity {
    match label.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("critical" | "crit" | "page" | "p1" | "sev1" | "high") => Severity::Critical,
        Some("error" | "err" | "major" | "p2" | "sev2") => Severity::Error,
        Some("warning" | "warn" | "minor" | "medium" | "p3" | "sev3") => Severity::Warning,
        Some("info" | "informational" | "none" | "low" | "p4" | "p5" | "sev4" | "sev5") => Severity::Info,
        _ => Severity::Warning,
    }
}

/// A rule id as text: Grafana sends a number (random 63-bit ids for tests),
/// which must not go through a float.
fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => non_blank(Some(s)).map(str::to_owned),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// Parses with the path of a type error in the field name.
fn from_value<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, InvalidPayload> {
    serde_path_to_error::deserialize(body).map_err(|error| {
        let path = error.path().to_string();
        InvalidPayload::field(path, format!("has the wrong type: {}", error.into_inner()))
    })
}

/// Only absolute http(s) links: the test notification's `generatorURL` is a
/// bare `?orgId=1`, which no reader could follow.
fn absolute_url(value: Option<&str>) -> Option<&str> {
    non_blank(value).filter(|v| v.starts_with("https://") || v.starts_with("http://"))
}

fn non_blank(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use http::{HeaderMap, HeaderValue};
    use serde_json::json;

    use super::*;

    use crate::signature::hmac_sha256_hex;

    const FIRING: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../events/grafana/firing.json"));
    const RESOLVED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/grafana/resolved.json"
    ));
    const TWO_ALERTS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/grafana/firing-two-alerts.json"
    ));
    const V11: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/grafana/firing-v11.json"
    ));
    const TEST: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/grafana/test-notification.json"
    ));
    const LEGACY_ALERTING: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/grafana/legacy-alerting.json"
    ));
    const LEGACY_OK: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/grafana/legacy-ok.json"
    ));
    const LEGACY_TEST: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/grafana/legacy-test.json"
    ));

    const SECRET: &str = "grafana-hmac-secret-for-tests";

    fn integration(secret: Option<&str>) -> Integration {
        crate::providers::test_support::integration(
            "checkout-grafana",
            "checkout",
            ProviderKind::Grafana,
            "11111111111111111111111111111111",
            secret,
        )
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    fn normalize(body: &str) -> Result<Vec<Alert>, InvalidPayload> {
        let headers = HeaderMap::new();
        let inbound = Inbound {
            headers: &headers,
            query: None,
            body: body.as_bytes(),
            received_at: Utc::now(),
        };
        Grafana.normalize(&inbound, &integration(None))
    }

    fn refused(body: &str) -> Vec<String> {
        normalize(body)
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    fn with(sample: &str, change: impl FnOnce(&mut Value)) -> String {
        let mut value: Value = serde_json::from_str(sample).unwrap();
        change(&mut value);
        value.to_string()
    }

    fn payload(alert: &Alert) -> &Payload {
        alert.payload.as_ref().unwrap()
    }

    fn verify(headers: &[(&str, String)], body: &[u8], received_at: DateTime<Utc>) -> Result<(), SignatureError> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let inbound = Inbound {
            headers: &map,
            query: None,
            body,
            received_at,
        };
        Grafana.verify(&inbound, &integration(Some(SECRET)))
    }

    #[test]
    fn a_firing_alert_is_a_trigger_keyed_by_its_fingerprint() {
        let alerts = normalize(FIRING).unwrap();
        assert_eq!(alerts.len(), 1);
        let alert = &alerts[0];
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "d8a21484c9c25a60");
        let p = payload(alert);
        assert_eq!(p.summary, "This is a summary field, failure on some_host");
        assert_eq!(p.severity, Severity::Warning);
        assert_eq!(p.source, "grafana");
        assert_eq!(p.class.as_deref(), Some("Test alert"));
        assert_eq!(
            p.timestamp,
            Some(Utc.with_ymd_and_hms(2022, 6, 17, 0, 41, 0).unwrap() + chrono::Duration::nanoseconds(782_137_894))
        );
        let details = p.custom_details.as_ref().unwrap();
        assert_eq!(details["labels"]["test"], json!("true"));
        assert_eq!(
            details["annotations"]["runbook_url"],
            json!("https://runbook.example.com/")
        );
        assert_eq!(details["orgId"], json!(1));
        assert_eq!(details["receiver"], json!("Webhook test"));
        assert!(details["valueString"].as_str().unwrap().contains("var='B0'"));
        assert_eq!(alert.client.as_deref(), Some("Grafana"));
        assert_eq!(alert.client_url.as_deref(), Some("https://grafana.example.com/"));
        let texts: Vec<&str> = alert.links.iter().filter_map(|l| l.text.as_deref()).collect();
        assert_eq!(texts, ["Alert rule", "Runbook", "Silence"]);
        assert_eq!(
            alert.links[0].href,
            "https://grafana.example.com/alerting/grafana/zTjxv_C7k/view"
        );
    }

    #[test]
    fn the_resolved_notification_resolves_the_same_key_at_its_end_time() {
        let firing = normalize(FIRING).unwrap();
        let resolved = normalize(RESOLVED).unwrap();
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].event_action, Action::Resolve);
        assert_eq!(resolved[0].dedup_key, firing[0].dedup_key);
        assert_eq!(
            payload(&resolved[0]).timestamp,
            Some(Utc.with_ymd_and_hms(2022, 6, 17, 0, 51, 24).unwrap() + chrono::Duration::nanoseconds(67_337_833))
        );
    }

    #[test]
    fn each_alert_of_a_notification_is_one_event() {
        let alerts = normalize(TWO_ALERTS).unwrap();
        let keys: Vec<&str> = alerts.iter().map(|a| a.dedup_key.as_str()).collect();
        assert_eq!(keys, ["c6eadffa33fcdf37", "bc97ff14869b13e3"]);
        assert_eq!(payload(&alerts[0]).summary, "This alert was triggered for zone us-1");
        assert_eq!(payload(&alerts[1]).summary, "This alert was triggered for zone eu-1");
        assert_eq!(
            payload(&alerts[0]).custom_details.as_ref().unwrap()["values"]["C"],
            json!(1)
        );
        // Empty dashboard and panel URLs make no links.
        assert_eq!(alerts[0].links.len(), 3);

        let mixed = with(TWO_ALERTS, |v| v["alerts"][1]["status"] = json!("resolved"));
        let actions: Vec<Action> = normalize(&mixed).unwrap().iter().map(|a| a.event_action).collect();
        assert_eq!(actions, [Action::Trigger, Action::Resolve]);
    }

    #[test]
    fn grafana_11_panels_folders_and_images_are_mapped() {
        let alerts = normalize(V11).unwrap();
        let alert = &alerts[0];
        assert_eq!(alert.dedup_key.as_str(), "e6349a25f5ef0e9e");
        let p = payload(alert);
        assert_eq!(p.summary, "High memory usage");
        assert_eq!(p.group.as_deref(), Some("device"));
        assert_eq!(p.custom_details.as_ref().unwrap()["values"]["A"], json!(2473545728_u64));
        let texts: Vec<&str> = alert.links.iter().filter_map(|l| l.text.as_deref()).collect();
        assert_eq!(texts, ["Alert rule", "Dashboard", "Panel", "Silence"]);
        assert_eq!(alert.images.len(), 1);
        assert_eq!(
            alert.images[0].src,
            "https://grafana.com/assets/img/blog/mixed_styles.png"
        );
    }

    #[test]
    fn severity_comes_from_the_severity_label() {
        for (label, expected) in [
            (Some("critical"), Severity::Critical),
            (Some("P1"), Severity::Critical),
            (Some("error"), Severity::Error),
            (Some("warning"), Severity::Warning),
            (Some("info"), Severity::Info),
            (Some("whatever"), Severity::Warning),
            (None, Severity::Warning),
        ] {
            assert_eq!(severity_of(label), expected, "{label:?}");
        }
        let body = with(FIRING, |v| v["alerts"][0]["labels"]["severity"] = json!("critical"));
        assert_eq!(payload(&normalize(&body).unwrap()[0]).severity, Severity::Critical);
    }

    #[test]
    fn the_test_notification_is_accepted_without_an_incident() {
        assert_eq!(normalize(TEST).unwrap(), Vec::<Alert>::new());
        // Grafana 11+ adds a folder label and fake dashboard links; the name
        // and instance still mark it.
        let newer = with(TEST, |v| {
            v["alerts"][0]["labels"]["grafana_folder"] = json!("Test Folder");
            v["alerts"][0]["generatorURL"] = json!("?orgId=1");
        });
        assert!(normalize(&newer).unwrap().is_empty());
        // A real alert next to it is still delivered.
        let two = with(TEST, |v| {
            let real: Value = serde_json::from_str(FIRING).unwrap();
            v["alerts"].as_array_mut().unwrap().push(real["alerts"][0].clone());
        });
        let alerts = normalize(&two).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].dedup_key.as_str(), "d8a21484c9c25a60");
        // A real rule merely named TestAlert is not a test.
        let named = with(FIRING, |v| v["alerts"][0]["labels"]["alertname"] = json!("TestAlert"));
        assert_eq!(normalize(&named).unwrap().len(), 1);
    }

    #[test]
    fn without_a_fingerprint_the_key_is_a_digest_of_the_labels() {
        let a = with(FIRING, |v| {
            v["alerts"][0].as_object_mut().unwrap().remove("fingerprint");
        });
        let b = with(RESOLVED, |v| {
            v["alerts"][0].as_object_mut().unwrap().remove("fingerprint");
        });
        let key = |body: &str| normalize(body).unwrap()[0].dedup_key.clone();
        assert_eq!(key(&a), key(&b));
        assert!(key(&a).as_str().starts_with("sha256:"));
    }

    #[test]
    fn bad_statuses_times_and_types_are_refused_by_name() {
        let body = with(TWO_ALERTS, |v| {
            v["alerts"][0]["status"] = json!("pending");
            v["alerts"][1]["startsAt"] = json!("yesterday");
        });
        assert_eq!(refused(&body), ["alerts[0].status", "alerts[1].startsAt"]);
        assert_eq!(
            refused(&with(FIRING, |v| v["alerts"][0]["labels"] = json!(["x"]))),
            ["alerts[0].labels"]
        );
        assert_eq!(refused(&with(FIRING, |v| v["alerts"] = json!([]))), ["alerts"]);
        assert_eq!(refused("{"), ["body"]);
        assert_eq!(refused("[]"), ["body"]);
        assert_eq!(refused(r#"{"hello": "world"}"#), ["body"]);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = with(FIRING, |v| {
            v["newField"] = json!({"a": 1});
            v["alerts"][0]["orgId"] = json!(1);
        });
        assert_eq!(normalize(&body).unwrap().len(), 1);
    }

    #[test]
    fn a_legacy_alert_triggers_and_its_ok_resolves_the_rule_key() {
        let alerting = normalize(LEGACY_ALERTING).unwrap();
        assert_eq!(alerting.len(), 1);
        let alert = &alerting[0];
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "grafana-rule-1");
        let p = payload(alert);
        assert_eq!(p.summary, "Panel Title alert");
        assert_eq!(p.severity, Severity::Warning);
        assert_eq!(p.source, "grafana");
        let details = p.custom_details.as_ref().unwrap();
        assert_eq!(details["message"], json!("Notification Message"));
        assert_eq!(details["tags"]["tag name"], json!("tag value"));
        assert_eq!(details["evalMatches"][0]["metric"], json!("Count"));
        assert!(alert.links[0]
            .href
            .starts_with("http://localhost:3000/d/hZ7BuVbWz/test-dashboard"));
        assert_eq!(alert.images.len(), 1);

        let ok = normalize(LEGACY_OK).unwrap();
        assert_eq!(ok[0].event_action, Action::Resolve);
        assert_eq!(ok[0].dedup_key, alert.dedup_key);
    }

    #[test]
    fn legacy_states_map_to_actions() {
        let state = |s: &str| normalize(&with(LEGACY_ALERTING, |v| v["state"] = json!(s)));
        assert_eq!(state("no_data").unwrap()[0].event_action, Action::Trigger);
        assert!(state("paused").unwrap().is_empty());
        assert!(state("pending").unwrap().is_empty());
        assert_eq!(state("exploded").unwrap_err().errors[0].field, "state");
    }

    #[test]
    fn a_legacy_dedup_key_tag_and_severity_tag_are_honoured() {
        let body = with(LEGACY_ALERTING, |v| {
            v["tags"] = json!({"dedup_key": "disk-full-db1", "severity": "critical"})
        });
        let alert = &normalize(&body).unwrap()[0];
        assert_eq!(alert.dedup_key.as_str(), "disk-full-db1");
        assert_eq!(payload(alert).severity, Severity::Critical);
        let no_rule = with(LEGACY_ALERTING, |v| {
            v.as_object_mut().unwrap().remove("ruleId");
        });
        assert_eq!(refused(&no_rule), ["ruleId"]);
    }

    #[test]
    fn the_legacy_test_notification_is_accepted_without_an_incident() {
        assert!(normalize(LEGACY_TEST).unwrap().is_empty());
        // Grafana 7 sends a random 63-bit rule id and a capital G.
        let newer = with(LEGACY_TEST, |v| {
            v["ruleId"] = json!(7_533_874_832_689_366_674_u64);
            v["message"] = json!("Someone is testing the alert notification within Grafana.");
        });
        assert!(normalize(&newer).unwrap().is_empty());
    }

    #[test]
    fn large_rule_ids_keep_every_digit() {
        let body = with(LEGACY_ALERTING, |v| v["ruleId"] = json!(7_533_874_832_689_366_674_u64));
        assert_eq!(
            normalize(&body).unwrap()[0].dedup_key.as_str(),
            "grafana-rule-7533874832689366674"
        );
    }

    #[test]
    fn a_body_signature_verifies() {
        let body = FIRING.as_bytes();
        let signature = hmac_sha256_hex(SECRET.as_bytes(), body);
        let now = Utc::now();
        assert_eq!(
            verify(&[("x-grafana-alerting-signature", signature.clone())], body, now),
            Ok(())
        );
        // Grafana's own default name when the header field is left empty.
        assert_eq!(verify(&[("x-grafana-alert-signature", signature)], body, now), Ok(()));
    }

    #[test]
    fn a_timestamped_signature_verifies_within_the_window() {
        let body = FIRING.as_bytes();
        let sent = 1_750_000_000_i64;
        let signed = [sent.to_string().as_bytes(), b":", body].concat();
        let headers = [
            (
                "x-grafana-alerting-signature",
                hmac_sha256_hex(SECRET.as_bytes(), &signed),
            ),
            (TIMESTAMP_HEADER, sent.to_string()),
        ];
        assert_eq!(verify(&headers, body, at(sent + 30)), Ok(()));
        assert_eq!(verify(&headers, body, at(sent - 30)), Ok(()));
        assert_eq!(
            verify(&headers, body, at(sent + TOLERANCE_SECS + 1)),
            Err(SignatureError::Expired {
                tolerance_secs: TOLERANCE_SECS
            })
        );
        // The body alone does not match a timestamped signature.
        let body_only = [
            ("x-grafana-alerting-signature", hmac_sha256_hex(SECRET.as_bytes(), body)),
            (TIMESTAMP_HEADER, sent.to_string()),
        ];
        assert_eq!(verify(&body_only, body, at(sent)), Err(SignatureError::Mismatch));
    }

    #[test]
    fn wrong_missing_and_malformed_signatures_are_refused() {
        let body = FIRING.as_bytes();
        let now = Utc::now();
        let wrong = hmac_sha256_hex(b"another-secret", body);
        assert_eq!(
            verify(&[("x-grafana-alerting-signature", wrong)], body, now),
            Err(SignatureError::Mismatch)
        );
        let tampered = hmac_sha256_hex(SECRET.as_bytes(), RESOLVED.as_bytes());
        assert_eq!(
            verify(&[("x-grafana-alerting-signature", tampered)], body, now),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(verify(&[], body, now), Err(SignatureError::Missing { .. })));
        assert_eq!(
            verify(&[("x-grafana-alerting-signature", "zz".to_owned())], body, now),
            Err(SignatureError::Malformed)
        );
        let signature = hmac_sha256_hex(SECRET.as_bytes(), body);
        assert_eq!(
            verify(
                &[
                    ("x-grafana-alerting-signature", signature),
                    (TIMESTAMP_HEADER, "soon".to_owned())
                ],
                body,
                now
            ),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn without_a_secret_nothing_is_checked() {
        let headers = HeaderMap::new();
        let inbound = Inbound {
            headers: &headers,
            query: None,
            body: FIRING.as_bytes(),
            received_at: Utc::now(),
        };
        assert_eq!(Grafana.verify(&inbound, &integration(None)), Ok(()));
    }
}
