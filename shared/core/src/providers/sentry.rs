//! Sentry's integration platform webhooks (an internal integration's Webhook
//! URL). The `Sentry-Hook-Resource` header names what the body is about:
//!
//! - `issue`: `created` and `unresolved` open the issue's incident,
//!   `resolved` resolves it; `assigned`, `archived` (formerly `ignored`) and
//!   any other action change nothing.
//! - `event_alert` (an issue alert rule with the integration as action):
//!   `triggered` opens the incident of the event's issue, so that the
//!   issue's `resolved` closes it.
//! - `metric_alert`: `critical` and `warning` open (or repeat on) the metric
//!   alert's incident, `resolved` resolves it.
//! - `installation`, `error`, `comment` and anything else: accepted, nothing
//!   to do.
//!
//! `Sentry-Hook-Signature` is the hex HMAC-SHA256 of the raw body under the
//! integration's Client Secret. `Sentry-Hook-Timestamp` is not covered by the
//! signature, so it cannot tell a replay from a delivery and is not checked.
//!
//! <https://docs.sentry.io/organization/integrations/integration-platform/webhooks/>

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, Link, Payload, Severity};
use crate::providers::{Inbound, InvalidPayload, Provider, ProviderKind};
use crate::signature::{verify_hmac_sha256, SignatureError};

pub struct Sentry;

pub const RESOURCE_HEADER: &str = "sentry-hook-resource";
pub const SIGNATURE_HEADER: &str = "sentry-hook-signature";

const CLIENT: &str = "Sentry";
const DEFAULT_SOURCE: &str = "sentry";

/// Every Sentry webhook: an action on a resource, and its data.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Webhook {
    action: Option<String>,
    data: Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Issue {
    id: Option<Value>,
    short_id: Option<String>,
    title: Option<String>,
    culprit: Option<String>,
    level: Option<String>,
    status: Option<String>,
    substatus: Option<String>,
    first_seen: Option<String>,
    permalink: Option<String>,
    #[serde(rename = "web_url")]
    web_url: Option<String>,
    project: Project,
    metadata: Metadata,
    count: Option<Value>,
    user_count: Option<Value>,
    platform: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Project {
    id: Option<Value>,
    name: Option<String>,
    slug: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Metadata {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<String>,
}

/// The event behind an issue alert.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AlertEvent {
    issue_id: Option<Value>,
    event_id: Option<String>,
    title: Option<String>,
    culprit: Option<String>,
    level: Option<String>,
    datetime: Option<String>,
    timestamp: Option<f64>,
    url: Option<String>,
    web_url: Option<String>,
    platform: Option<String>,
    metadata: Metadata,
    /// `[["browser", "Chrome 75"], ["level", "error"], …]`, kept raw: a
    /// pair of another shape is skipped rather than refused.
    tags: Option<Vec<Value>>,
}

/// A metric alert is Sentry's "incident" of an alert rule: its id names one
/// run of the rule from critical to resolved.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MetricAlert {
    id: Option<Value>,
    identifier: Option<Value>,
    title: Option<String>,
    status: Option<Value>,
    date_detected: Option<String>,
    date_started: Option<String>,
    date_closed: Option<String>,
    projects: Vec<String>,
    alert_rule: AlertRule,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AlertRule {
    id: Option<Value>,
    name: Option<String>,
    aggregate: Option<String>,
    query: Option<String>,
    dataset: Option<String>,
    environment: Option<String>,
    time_window: Option<Value>,
}

impl Provider for Sentry {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Sentry
    }

    fn verify(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<(), SignatureError> {
        let Some(secret) = &integration.secret else {
            return Ok(());
        };
        let header = inbound.headers.get(SIGNATURE_HEADER).ok_or(SignatureError::Missing {
            expected: "Sentry-Hook-Signature: <hex HMAC-SHA256>",
        })?;
        let value = header.to_str().map_err(|_| SignatureError::Malformed)?.trim();
        if value.len() != 64 {
            return Err(SignatureError::Malformed);
        }
        let signature = hex::decode(value).map_err(|_| SignatureError::Malformed)?;
        verify_hmac_sha256(secret.expose().as_bytes(), inbound.body, &signature)
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let resource = inbound
            .headers
            .get(RESOURCE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                InvalidPayload::field(
                    "Sentry-Hook-Resource",
                    "header is missing: Sentry names the resource (issue, event_alert, metric_alert …) in it",
                )
            })?;
        let body: Value = serde_json::from_slice(inbound.body).map_err(InvalidPayload::unreadable)?;
        if !body.is_object() {
            return Err(InvalidPayload::field("body", "must be one JSON object"));
        }
        let webhook: Webhook = from_value(body, "")?;
        let action = webhook.action.as_deref().map(str::trim).unwrap_or("");
        tracing::debug!(resource = %resource, action, "sentry webhook");

        match (resource.as_str(), action) {
            ("issue", "created" | "unresolved" | "resolved") => issue_alert(&webhook.data, action).map(|a| vec![a]),
            ("event_alert", "triggered") => event_alert(&webhook.data).map(|a| vec![a]),
            ("metric_alert", "critical" | "warning" | "resolved") => {
                metric_alert(&webhook.data, action).map(|a| vec![a])
            }
            // Assignments, archiving, installations, comments, errors and
            // resources Sentry adds later: accepted, nothing to change.
            _ => {
                tracing::info!(resource = %resource, action, "sentry webhook accepted without an event");
                Ok(Vec::new())
            }
        }
    }
}

fn issue_alert(data: &Value, action: &str) -> Result<Alert, InvalidPayload> {
    let issue: Issue = from_value(required(data, "issue")?.clone(), "data.issue")?;
    let id = issue
        .id
        .as_ref()
        .and_then(id_text)
        .ok_or_else(|| InvalidPayload::field("data.issue.id", "is missing"))?;
    let event_action = if action == "resolved" {
        Action::Resolve
    } else {
        Action::Trigger
    };

    let mut details = serde_json::Map::new();
    put(&mut details, "issue_id", Some(Value::from(id.as_str())));
    put(&mut details, "short_id", issue.short_id.clone().map(Value::from));
    put(&mut details, "culprit", issue.culprit.clone().map(Value::from));
    put(&mut details, "level", issue.level.clone().map(Value::from));
    put(&mut details, "status", issue.status.clone().map(Value::from));
    put(&mut details, "substatus", issue.substatus.clone().map(Value::from));
    put(&mut details, "project", issue.project.slug.clone().map(Value::from));
    put(&mut details, "project_id", issue.project.id.clone());
    put(&mut details, "platform", issue.platform.clone().map(Value::from));
    put(&mut details, "count", issue.count.clone());
    put(&mut details, "user_count", issue.user_count.clone());
    put(&mut details, "first_seen", issue.first_seen.clone().map(Value::from));
    put(&mut details, "error_type", issue.metadata.kind.clone().map(Value::from));
    put(
        &mut details,
        "error_value",
        issue.metadata.value.clone().map(Value::from),
    );

    Ok(Alert {
        event_action,
        dedup_key: issue_key(&id)?,
        payload: Some(Payload {
            summary: Payload::truncate_summary(
                non_blank(issue.title.as_deref())
                    .or_else(|| non_blank(issue.short_id.as_deref()))
                    .unwrap_or("Sentry issue"),
            ),
            source: non_blank(issue.project.slug.as_deref())
                .or_else(|| non_blank(issue.project.name.as_deref()))
                .unwrap_or(DEFAULT_SOURCE)
                .to_owned(),
            severity: severity_of_level(issue.level.as_deref()),
            // A new issue happened when it was first seen. A reopened one
            // (regressed, or unresolved by hand) is news now: its old times
            // would make it look older than the resolve it undoes.
            timestamp: match action {
                "created" => rfc3339(issue.first_seen.as_deref()),
                _ => None,
            },
            component: non_blank(issue.culprit.as_deref()).map(str::to_owned),
            group: None,
            class: non_blank(issue.metadata.kind.as_deref()).map(str::to_owned),
            custom_details: Some(Value::Object(details)),
        }),
        links: link(
            absolute_url(issue.web_url.as_deref()).or_else(|| absolute_url(issue.permalink.as_deref())),
            "Sentry issue",
        ),
        images: Vec::new(),
        client: Some(CLIENT.to_owned()),
        client_url: None,
    })
}

fn event_alert(data: &Value) -> Result<Alert, InvalidPayload> {
    let event: AlertEvent = from_value(required(data, "event")?.clone(), "data.event")?;
    let issue_id = event
        .issue_id
        .as_ref()
        .and_then(id_text)
        .ok_or_else(|| InvalidPayload::field("data.event.issue_id", "is missing"))?;
    let rule = data
        .get("triggered_rule")
        .and_then(Value::as_str)
        .and_then(|r| non_blank(Some(r)));
    let tag = |name: &str| {
        event
            .tags
            .iter()
            .flatten()
            .find_map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([Value::String(k), Value::String(v)]) if k == name => Some(v.as_str()),
                _ => None,
            })
    };

    let mut details = serde_json::Map::new();
    put(&mut details, "issue_id", Some(Value::from(issue_id.as_str())));
    put(&mut details, "event_id", event.event_id.clone().map(Value::from));
    put(&mut details, "triggered_rule", rule.map(Value::from));
    put(&mut details, "culprit", event.culprit.clone().map(Value::from));
    put(&mut details, "level", event.level.clone().map(Value::from));
    put(&mut details, "platform", event.platform.clone().map(Value::from));
    put(&mut details, "error_type", event.metadata.kind.clone().map(Value::from));
    put(
        &mut details,
        "error_value",
        event.metadata.value.clone().map(Value::from),
    );
    put(&mut details, "environment", tag("environment").map(Value::from));
    put(&mut details, "release", tag("release").map(Value::from));
    put(&mut details, "tags", event.tags.as_ref().map(|t| serde_json::json!(t)));

    Ok(Alert {
        event_action: Action::Trigger,
        dedup_key: issue_key(&issue_id)?,
        payload: Some(Payload {
            summary: Payload::truncate_summary(
                non_blank(event.title.as_deref())
                    .or(rule)
                    .unwrap_or("Sentry issue alert"),
            ),
            source: tag("server_name")
                .and_then(|s| non_blank(Some(s)))
                .or_else(|| project_of_api_url(event.url.as_deref()))
                .unwrap_or(DEFAULT_SOURCE)
                .to_owned(),
            severity: severity_of_level(event.level.as_deref()),
            timestamp: rfc3339(event.datetime.as_deref()).or_else(|| event.timestamp.and_then(unix_seconds)),
            component: non_blank(event.culprit.as_deref()).map(str::to_owned),
            group: None,
            class: non_blank(event.metadata.kind.as_deref()).map(str::to_owned),
            custom_details: Some(Value::Object(details)),
        }),
        links: link(absolute_url(event.web_url.as_deref()), "Sentry event"),
        images: Vec::new(),
        client: Some(CLIENT.to_owned()),
        client_url: None,
    })
}

fn metric_alert(data: &Value, action: &str) -> Result<Alert, InvalidPayload> {
    let alert: MetricAlert = from_value(required(data, "metric_alert")?.clone(), "data.metric_alert")?;
    let id = alert
        .id
        .as_ref()
        .and_then(id_text)
        .ok_or_else(|| InvalidPayload::field("data.metric_alert.id", "is missing"))?;
    let text = |name: &str| data.get(name).and_then(Value::as_str).and_then(|v| non_blank(Some(v)));
    let (event_action, severity, timestamp) = match action {
        "resolved" => (Action::Resolve, Severity::Info, rfc3339(alert.date_closed.as_deref())),
        "warning" => (Action::Trigger, Severity::Warning, detected(&alert)),
        _ => (Action::Trigger, Severity::Critical, detected(&alert)),
    };
    let rule = &alert.alert_rule;

    let mut details = serde_json::Map::new();
    put(&mut details, "metric_alert_id", Some(Value::from(id.as_str())));
    put(&mut details, "identifier", alert.identifier.clone());
    put(&mut details, "title", alert.title.clone().map(Value::from));
    put(&mut details, "status", alert.status.clone());
    put(
        &mut details,
        "description_text",
        text("description_text").map(Value::from),
    );
    put(&mut details, "alert_rule_id", rule.id.clone());
    put(&mut details, "alert_rule", rule.name.clone().map(Value::from));
    put(&mut details, "aggregate", rule.aggregate.clone().map(Value::from));
    put(&mut details, "query", rule.query.clone().map(Value::from));
    put(&mut details, "dataset", rule.dataset.clone().map(Value::from));
    put(&mut details, "environment", rule.environment.clone().map(Value::from));
    put(&mut details, "time_window", rule.time_window.clone());
    put(&mut details, "projects", Some(serde_json::json!(alert.projects)));

    Ok(Alert {
        event_action,
        dedup_key: DedupKey::parse(&format!("sentry-metric-alert-{id}"))
            .map_err(|e| InvalidPayload::new("the metric alert id is unusable", vec![e.at("data.metric_alert.id")]))?,
        payload: Some(Payload {
            // "Critical: Too many errors", Sentry's own headline.
            summary: Payload::truncate_summary(
                text("description_title")
                    .or_else(|| non_blank(rule.name.as_deref()))
                    .or_else(|| non_blank(alert.title.as_deref()))
                    .unwrap_or("Sentry metric alert"),
            ),
            source: if alert.projects.is_empty() {
                DEFAULT_SOURCE.to_owned()
            } else {
                alert.projects.join(",")
            },
            severity,
            timestamp,
            component: None,
            group: None,
            class: non_blank(rule.aggregate.as_deref()).map(str::to_owned),
            custom_details: Some(Value::Object(details)),
        }),
        links: link(absolute_url(text("web_url")), "Sentry metric alert"),
        images: Vec::new(),
        client: Some(CLIENT.to_owned()),
        client_url: None,
    })
}

/// When a metric alert's incident was detected (the same for its every
/// critical and warning notification).
fn detected(alert: &MetricAlert) -> Option<DateTime<Utc>> {
    rfc3339(alert.date_detected.as_deref()).or_else(|| rfc3339(alert.date_started.as_deref()))
}

/// An issue's key, shared by its `issue` webhooks and its event alerts.
fn issue_key(id: &str) -> Result<DedupKey, InvalidPayload> {
    DedupKey::parse(&format!("sentry-issue-{id}"))
        .map_err(|e| InvalidPayload::new("the issue id is unusable", vec![e.at("issue_id")]))
}

/// Sentry's event levels.
fn severity_of_level(level: Option<&str>) -> Severity {
    match level.map(|l| l.trim().to_ascii_lowercase()).as_deref() {
        Some("fatal") => Severity::Critical,
        Some("warning") => Severity::Warning,
        Some("info" | "debug" | "sample") => Severity::Info,
        // "error", and the rare issue without a level.
        _ => Severity::Error,
    }
}

/// The project slug of an event's API URL:
/// `https://sentry.io/api/0/projects/<org>/<project>/events/<id>/`.
fn project_of_api_url(url: Option<&str>) -> Option<&str> {
    let (_, rest) = url?.split_once("/projects/")?;
    let mut segments = rest.split('/');
    let _organization = segments.next()?;
    segments.next().and_then(|s| non_blank(Some(s)))
}

fn required<'a>(data: &'a Value, name: &str) -> Result<&'a Value, InvalidPayload> {
    match data.get(name) {
        Some(value) if value.is_object() => Ok(value),
        Some(_) => Err(InvalidPayload::field(format!("data.{name}"), "must be an object")),
        None => Err(InvalidPayload::field(format!("data.{name}"), "is missing")),
    }
}

fn put(details: &mut serde_json::Map<String, Value>, name: &str, value: Option<Value>) {
    if let Some(value) = value.filter(|v| !v.is_null() && v.as_str().is_none_or(|s| !s.trim().is_empty())) {
        details.insert(name.to_owned(), value);
    }
}

fn link(href: Option<&str>, text: &str) -> Vec<Link> {
    href.map(|href| Link {
        href: href.to_owned(),
        text: Some(text.to_owned()),
    })
    .into_iter()
    .collect()
}

/// Sentry ids are strings of digits; numbers are read too.
fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => non_blank(Some(s)).map(str::to_owned),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// An optional time: unreadable ones are left out and the event is ordered
/// by its receipt.
fn rfc3339(value: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(non_blank(value)?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn unix_seconds(secs: f64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt((secs * 1000.0).round() as i64).single()
}

/// Parses with the path of a type error in the field name.
fn from_value<T: serde::de::DeserializeOwned>(value: Value, prefix: &str) -> Result<T, InvalidPayload> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let field = match (prefix, path.as_str()) {
            ("", path) => path.to_owned(),
            (prefix, ".") => prefix.to_owned(),
            (prefix, path) => format!("{prefix}.{path}"),
        };
        InvalidPayload::field(field, format!("has the wrong type: {}", error.into_inner()))
    })
}

fn absolute_url(value: Option<&str>) -> Option<&str> {
    non_blank(value).filter(|v| v.starts_with("https://") || v.starts_with("http://"))
}

fn non_blank(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};
    use serde_json::json;

    use super::*;

    use crate::signature::hmac_sha256_hex;

    const ISSUE_CREATED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/sentry/issue-created.json"
    ));
    const ISSUE_RESOLVED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/sentry/issue-resolved.json"
    ));
    const ISSUE_ASSIGNED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/sentry/issue-assigned.json"
    ));
    const EVENT_ALERT: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/sentry/event-alert-triggered.json"
    ));
    const METRIC_CRITICAL: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/sentry/metric-alert-critical.json"
    ));
    const METRIC_RESOLVED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/sentry/metric-alert-resolved.json"
    ));
    const INSTALLATION: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/sentry/installation-created.json"
    ));

    const SECRET: &str = "sentry-client-secret-for-tests";

    fn integration(secret: Option<&str>) -> Integration {
        crate::providers::test_support::integration(
            "checkout-sentry",
            "checkout",
            ProviderKind::Sentry,
            "11111111111111111111111111111111",
            secret,
        )
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn normalize(resource: &str, body: &str) -> Result<Vec<Alert>, InvalidPayload> {
        let headers = headers(&[("sentry-hook-resource", resource)]);
        let inbound = Inbound {
            headers: &headers,
            query: None,
            body: body.as_bytes(),
            received_at: Utc::now(),
        };
        Sentry.normalize(&inbound, &integration(None))
    }

    fn one(resource: &str, body: &str) -> Alert {
        let mut alerts = normalize(resource, body).unwrap();
        assert_eq!(alerts.len(), 1);
        alerts.remove(0)
    }

    fn refused(resource: &str, body: &str) -> Vec<String> {
        normalize(resource, body)
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

    fn verify(signature: Option<&str>, body: &str) -> Result<(), SignatureError> {
        let mut pairs = vec![("sentry-hook-resource", "issue")];
        if let Some(signature) = signature {
            pairs.push(("sentry-hook-signature", signature));
        }
        let headers = headers(&pairs);
        let inbound = Inbound {
            headers: &headers,
            query: None,
            body: body.as_bytes(),
            received_at: Utc::now(),
        };
        Sentry.verify(&inbound, &integration(Some(SECRET)))
    }

    #[test]
    fn a_created_issue_opens_the_issue_incident() {
        let alert = one("issue", ISSUE_CREATED);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "sentry-issue-1170820242");
        let p = payload(&alert);
        assert_eq!(p.summary, "ReferenceError: blooopy is not defined");
        assert_eq!(p.severity, Severity::Error);
        assert_eq!(p.source, "front-end");
        assert_eq!(p.component.as_deref(), Some("?(runner)"));
        assert_eq!(p.class.as_deref(), Some("ReferenceError"));
        assert_eq!(p.timestamp, rfc3339(Some("2019-08-19T20:58:37.391000Z")));
        assert!(p.timestamp.is_some());
        let details = p.custom_details.as_ref().unwrap();
        assert_eq!(details["short_id"], json!("FRONT-END-9"));
        assert_eq!(details["substatus"], json!("escalating"));
        assert_eq!(details["error_value"], json!("blooopy is not defined"));
        // The docs' sample carries no web_url and a null permalink.
        assert!(alert.links.is_empty());
        assert_eq!(alert.client.as_deref(), Some("Sentry"));
    }

    #[test]
    fn the_resolved_issue_closes_the_same_key() {
        let created = one("issue", ISSUE_CREATED);
        let resolved = one("issue", ISSUE_RESOLVED);
        assert_eq!(resolved.event_action, Action::Resolve);
        assert_eq!(resolved.dedup_key, created.dedup_key);
        assert_eq!(payload(&resolved).timestamp, None);
    }

    #[test]
    fn an_unresolved_issue_reopens_as_news() {
        let body = with(ISSUE_RESOLVED, |v| {
            v["action"] = json!("unresolved");
            v["data"]["issue"]["status"] = json!("unresolved");
            v["data"]["issue"]["substatus"] = json!("regressed");
        });
        let alert = one("issue", &body);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "sentry-issue-1170820242");
        // Its old firstSeen would make it older than the resolve it undoes.
        assert_eq!(payload(&alert).timestamp, None);
    }

    #[test]
    fn other_issue_actions_change_nothing() {
        assert!(normalize("issue", ISSUE_ASSIGNED).unwrap().is_empty());
        for action in ["archived", "ignored", "something_new"] {
            let body = with(ISSUE_CREATED, |v| v["action"] = json!(action));
            assert!(normalize("issue", &body).unwrap().is_empty(), "{action}");
        }
    }

    #[test]
    fn an_event_alert_opens_the_incident_its_issue_resolve_closes() {
        let alert = one("event_alert", EVENT_ALERT);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "sentry-issue-1117540176");
        let p = payload(&alert);
        assert_eq!(p.summary, "ReferenceError: heck is not defined");
        assert_eq!(p.severity, Severity::Error);
        assert_eq!(p.source, "front-end");
        assert_eq!(p.timestamp, rfc3339(Some("2019-08-19T21:06:17.677000Z")));
        let details = p.custom_details.as_ref().unwrap();
        assert_eq!(details["triggered_rule"], json!("Very Important Alert Rule!"));
        assert_eq!(details["event_id"], json!("e4874d664c3540c1a32eab185f12c5ab"));
        assert_eq!(details["tags"][3], json!(["level", "error"]));
        assert_eq!(alert.links.len(), 1);
        assert_eq!(
            alert.links[0].href,
            "https://sentry.io/organizations/test-org/issues/1117540176/events/e4874d664c3540c1a32eab185f12c5ab/"
        );

        let resolve_of_that_issue = with(ISSUE_RESOLVED, |v| v["data"]["issue"]["id"] = json!("1117540176"));
        assert_eq!(one("issue", &resolve_of_that_issue).dedup_key, alert.dedup_key);
    }

    #[test]
    fn a_metric_alert_triggers_and_resolves_on_its_id() {
        let critical = one("metric_alert", METRIC_CRITICAL);
        assert_eq!(critical.event_action, Action::Trigger);
        assert_eq!(critical.dedup_key.as_str(), "sentry-metric-alert-4");
        let p = payload(&critical);
        assert_eq!(p.summary, "Critical: Too many errors");
        assert_eq!(p.severity, Severity::Critical);
        assert_eq!(p.source, "bar");
        assert_eq!(p.class.as_deref(), Some("count()"));
        assert_eq!(p.timestamp, rfc3339(Some("2020-09-13T12:26:40.000000Z")));
        let details = p.custom_details.as_ref().unwrap();
        assert_eq!(details["alert_rule"], json!("Too many errors"));
        assert_eq!(details["query"], json!("level:error"));
        assert_eq!(critical.links[0].href, "https://sentry.io/organizations/baz/alerts/1/");

        let warning = one(
            "metric_alert",
            &with(METRIC_CRITICAL, |v| v["action"] = json!("warning")),
        );
        assert_eq!(warning.event_action, Action::Trigger);
        assert_eq!(payload(&warning).severity, Severity::Warning);
        assert_eq!(warning.dedup_key, critical.dedup_key);

        let resolved = one("metric_alert", METRIC_RESOLVED);
        assert_eq!(resolved.event_action, Action::Resolve);
        assert_eq!(resolved.dedup_key, critical.dedup_key);
        assert_eq!(payload(&resolved).summary, "Resolved: Too many errors");
    }

    #[test]
    fn installations_and_other_resources_are_accepted_without_events() {
        assert!(normalize("installation", INSTALLATION).unwrap().is_empty());
        assert!(normalize("comment", r#"{"action": "created", "data": {}}"#)
            .unwrap()
            .is_empty());
        assert!(normalize("error", r#"{"action": "created", "data": {"error": {}}}"#)
            .unwrap()
            .is_empty());
        assert!(
            normalize("metric_alert", &with(METRIC_CRITICAL, |v| v["action"] = json!("muted")))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn severity_follows_the_level() {
        for (level, expected) in [
            ("fatal", Severity::Critical),
            ("error", Severity::Error),
            ("warning", Severity::Warning),
            ("info", Severity::Info),
            ("debug", Severity::Info),
        ] {
            let body = with(ISSUE_CREATED, |v| v["data"]["issue"]["level"] = json!(level));
            assert_eq!(payload(&one("issue", &body)).severity, expected, "{level}");
        }
    }

    #[test]
    fn malformed_bodies_and_missing_pieces_are_named() {
        assert_eq!(refused("issue", "{"), ["body"]);
        assert_eq!(refused("issue", "[]"), ["body"]);
        assert_eq!(
            refused("issue", &with(ISSUE_CREATED, |v| v["data"] = json!({}))),
            ["data.issue"]
        );
        assert_eq!(
            refused(
                "issue",
                &with(ISSUE_CREATED, |v| {
                    v["data"]["issue"].as_object_mut().unwrap().remove("id");
                })
            ),
            ["data.issue.id"]
        );
        assert_eq!(
            refused(
                "issue",
                &with(ISSUE_CREATED, |v| v["data"]["issue"]["title"] = json!(7))
            ),
            ["data.issue.title"]
        );
        assert_eq!(
            refused(
                "event_alert",
                &with(EVENT_ALERT, |v| {
                    v["data"]["event"].as_object_mut().unwrap().remove("issue_id");
                })
            ),
            ["data.event.issue_id"]
        );
        assert_eq!(
            refused(
                "metric_alert",
                &with(METRIC_CRITICAL, |v| {
                    v["data"]["metric_alert"].as_object_mut().unwrap().remove("id");
                })
            ),
            ["data.metric_alert.id"]
        );
        let no_resource = HeaderMap::new();
        let inbound = Inbound {
            headers: &no_resource,
            query: None,
            body: ISSUE_CREATED.as_bytes(),
            received_at: Utc::now(),
        };
        let err = Sentry.normalize(&inbound, &integration(None)).unwrap_err();
        assert_eq!(err.errors[0].field, "Sentry-Hook-Resource");
    }

    #[test]
    fn the_signature_is_checked_on_the_raw_body() {
        let signature = hmac_sha256_hex(SECRET.as_bytes(), ISSUE_CREATED.as_bytes());
        assert_eq!(verify(Some(&signature), ISSUE_CREATED), Ok(()));
        // Same JSON, other bytes: Sentry signs what it sends.
        let reserialized = serde_json::to_string(&serde_json::from_str::<Value>(ISSUE_CREATED).unwrap()).unwrap();
        assert_eq!(verify(Some(&signature), &reserialized), Err(SignatureError::Mismatch));
        let wrong = hmac_sha256_hex(b"another-client-secret", ISSUE_CREATED.as_bytes());
        assert_eq!(verify(Some(&wrong), ISSUE_CREATED), Err(SignatureError::Mismatch));
        assert!(matches!(
            verify(None, ISSUE_CREATED),
            Err(SignatureError::Missing { .. })
        ));
        assert_eq!(verify(Some("abc"), ISSUE_CREATED), Err(SignatureError::Malformed));
        assert_eq!(
            verify(Some(&"g".repeat(64)), ISSUE_CREATED),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn without_a_secret_nothing_is_checked() {
        let headers = HeaderMap::new();
        let inbound = Inbound {
            headers: &headers,
            query: None,
            body: ISSUE_CREATED.as_bytes(),
            received_at: Utc::now(),
        };
        assert_eq!(Sentry.verify(&inbound, &integration(None)), Ok(()));
    }

    #[test]
    fn the_project_is_read_from_an_event_api_url() {
        assert_eq!(
            project_of_api_url(Some("https://sentry.io/api/0/projects/test-org/front-end/events/e48/")),
            Some("front-end")
        );
        assert_eq!(project_of_api_url(Some("https://sentry.io/api/0/issues/1/")), None);
        assert_eq!(project_of_api_url(None), None);
    }
}
