//! Any JSON webhook (`POST /integrations/webhook`). Values are found under
//! common aliases (those of OpsKnight's generic webhook), or under dotted
//! paths configured per integration for payloads shaped otherwise.
//!
//! The body is one alert object or an array of up to 100 of them.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use crate::config::{FieldMapping, Integration};
use crate::event::{Action, Alert, DedupKey, FieldError, Payload, Severity};
use crate::providers::{Inbound, InvalidPayload, Provider, ProviderKind};

pub struct Webhook;

/// The most alerts one request may carry.
pub const MAX_ALERTS: usize = 100;

const INVALID: &str = "the webhook payload is invalid";

const SUMMARY_ALIASES: &[&str] = &["summary", "title", "message", "name"];
const SEVERITY_ALIASES: &[&str] = &["severity", "level", "priority"];
const ACTION_ALIASES: &[&str] = &["status", "action", "state"];
const DEDUP_ALIASES: &[&str] = &["dedup_key", "id", "alert_id"];
const SOURCE_ALIASES: &[&str] = &["source", "origin", "system"];
const TIME_ALIASES: &[&str] = &["timestamp", "time", "occurred_at"];

const TRIGGER_VALUES: &[&str] = &[
    "triggered",
    "fired",
    "alert",
    "critical",
    "error",
    "open",
    "trigger",
    "firing",
    "problem",
];
const RESOLVE_VALUES: &[&str] = &["resolved", "ok", "normal", "closed", "fixed", "resolve", "recovered"];
const ACKNOWLEDGE_VALUES: &[&str] = &["acknowledge", "ack", "acknowledged"];

/// The source of alerts that name none.
const DEFAULT_SOURCE: &str = "webhook";

/// Unix times above this are taken as milliseconds: as seconds they would
/// lie after the year 5000, and a far-future time would make every later
/// event of the incident look older than it.
const MILLIS_THRESHOLD: i64 = 100_000_000_000;

impl Provider for Webhook {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Webhook
    }

    fn normalize(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let body: Value = serde_json::from_slice(inbound.body).map_err(InvalidPayload::unreadable)?;
        let objects = alert_objects(&body)?;
        let vocabulary = Vocabulary::of(&integration.fields);

        let mut alerts = Vec::with_capacity(objects.len());
        let mut errors = Vec::new();
        for (prefix, object) in objects {
            match alert_from(object, &integration.fields, &vocabulary) {
                Ok(alert) => alerts.push(alert),
                Err(found) => errors.extend(found.into_iter().map(|e| {
                    let field = format!("{prefix}{}", e.field);
                    e.at(field)
                })),
            }
        }
        if errors.is_empty() {
            Ok(alerts)
        } else {
            Err(InvalidPayload::new(INVALID, errors))
        }
    }
}

/// The alert objects of the body, each with the prefix its errors carry
/// (`""` for a single object, `"[2]."` for the third of an array).
fn alert_objects(body: &Value) -> Result<Vec<(String, &Value)>, InvalidPayload> {
    let items = match body {
        Value::Object(_) => return Ok(vec![(String::new(), body)]),
        Value::Array(items) => items,
        _ => {
            return Err(InvalidPayload::field(
                "body",
                "must be a JSON object or an array of objects",
            ))
        }
    };
    if items.is_empty() {
        return Err(InvalidPayload::field(
            "body",
            "is an empty array: send at least one alert",
        ));
    }
    if items.len() > MAX_ALERTS {
        return Err(InvalidPayload::field(
            "body",
            format!(
                "carries {} alerts; at most {MAX_ALERTS} are accepted per request",
                items.len()
            ),
        ));
    }
    let not_objects: Vec<FieldError> = items
        .iter()
        .enumerate()
        .filter(|(_, item)| !item.is_object())
        .map(|(i, _)| FieldError::new(format!("[{i}]"), "must be a JSON object"))
        .collect();
    if !not_objects.is_empty() {
        return Err(InvalidPayload::new(INVALID, not_objects));
    }
    Ok(items
        .iter()
        .enumerate()
        .map(|(i, item)| (format!("[{i}]."), item))
        .collect())
}

/// Which values of the action field mean what. A list configured on the
/// integration replaces the built-in one (it does not add to it), so that a
/// tool whose "ok" means something else can say so.
struct Vocabulary<'a> {
    trigger: Vec<&'a str>,
    resolve: Vec<&'a str>,
    acknowledge: Vec<&'a str>,
}

impl<'a> Vocabulary<'a> {
    fn of(fields: &'a FieldMapping) -> Self {
        let pick = |configured: &'a [String], built_in: &'a [&'a str]| -> Vec<&'a str> {
            if configured.is_empty() {
                built_in.to_vec()
            } else {
                configured.iter().map(|v| v.trim()).collect()
            }
        };
        Vocabulary {
            trigger: pick(&fields.trigger_values, TRIGGER_VALUES),
            resolve: pick(&fields.resolve_values, RESOLVE_VALUES),
            acknowledge: pick(&fields.acknowledge_values, ACKNOWLEDGE_VALUES),
        }
    }

    fn action(&self, value: &str) -> Option<Action> {
        let value = value.trim();
        let matches = |list: &[&str]| list.iter().any(|v| v.eq_ignore_ascii_case(value));
        if matches(&self.trigger) {
            Some(Action::Trigger)
        } else if matches(&self.resolve) {
            Some(Action::Resolve)
        } else if matches(&self.acknowledge) {
            Some(Action::Acknowledge)
        } else {
            None
        }
    }

    fn describe(&self) -> String {
        format!(
            "trigger: {}; resolve: {}; acknowledge: {}",
            self.trigger.join(", "),
            self.resolve.join(", "),
            self.acknowledge.join(", ")
        )
    }
}

/// A value found in the alert object, with the name it was found under
/// (the alias or the configured path), for error messages.
struct Found<'a> {
    name: String,
    value: &'a Value,
}

/// Looks a value up: at the configured path when there is one (which then
/// overrides the aliases), otherwise under the first alias holding text.
fn find<'a>(object: &'a Value, configured: Option<&str>, aliases: &[&str]) -> Option<Found<'a>> {
    if let Some(path) = configured.map(str::trim).filter(|p| !p.is_empty()) {
        return at_path(object, path).filter(|v| !v.is_null()).map(|value| Found {
            name: path.to_owned(),
            value,
        });
    }
    aliases.iter().find_map(|alias| {
        let value = object.get(alias)?;
        text(value).map(|_| Found {
            name: (*alias).to_owned(),
            value,
        })
    })
}

/// Follows a dotted path (`alert.labels.severity`); numeric segments index
/// arrays (`items.0.name`).
fn at_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |current, segment| match current {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// A string (trimmed, not blank) or a number, as text.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The text of a found value; a configured path that leads to an object,
/// an array or a boolean is an error naming that path.
fn text_of(found: Option<Found<'_>>) -> Result<Option<(String, String)>, FieldError> {
    match found {
        None => Ok(None),
        Some(found) => match text(found.value) {
            Some(text) => Ok(Some((found.name, text))),
            // A blank string is as good as absent.
            None if found.value.is_string() => Ok(None),
            None => Err(FieldError::new(found.name, "must be a string or a number")),
        },
    }
}

fn alert_from(object: &Value, fields: &FieldMapping, vocabulary: &Vocabulary<'_>) -> Result<Alert, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut read = |configured: &Option<String>, aliases: &[&str]| {
        text_of(find(object, configured.as_deref(), aliases))
            .map_err(|e| errors.push(e))
            .ok()
            .flatten()
    };
    let summary = read(&fields.summary_field, SUMMARY_ALIASES).map(|(_, s)| Payload::truncate_summary(&s));
    let status = read(&fields.action_field, ACTION_ALIASES);
    let dedup_value = read(&fields.dedup_key_field, DEDUP_ALIASES).map(|(_, d)| d);
    let source = read(&fields.source_field, SOURCE_ALIASES).map_or_else(|| DEFAULT_SOURCE.to_owned(), |(_, s)| s);
    let severity = find(object, fields.severity_field.as_deref(), SEVERITY_ALIASES)
        .map_or(Severity::Warning, |found| severity_of(found.value));

    let action = action_of(status, vocabulary).map_err(|e| errors.push(e)).ok();
    if action == Some(Action::Trigger) && summary.is_none() {
        errors.push(summary_missing(fields));
    }
    let dedup_key = dedup_key_of(dedup_value.as_deref(), summary.as_deref(), &source, fields).map_err(|e| {
        // A trigger without a summary is already reported as such; the
        // missing key is news only when nothing else explains it.
        if errors.is_empty() {
            errors.push(e);
        }
    });

    match (action, dedup_key) {
        (Some(event_action), Ok(dedup_key)) if errors.is_empty() => Ok(Alert {
            event_action,
            dedup_key,
            payload: summary.map(|summary| Payload {
                summary,
                source,
                severity,
                timestamp: timestamp_of(object),
                component: None,
                group: None,
                class: None,
                custom_details: Some(object.clone()),
            }),
            links: Vec::new(),
            images: Vec::new(),
            client: None,
            client_url: None,
        }),
        _ => Err(errors),
    }
}

/// A missing status is a trigger: the alert's arrival is the news.
fn action_of(status: Option<(String, String)>, vocabulary: &Vocabulary<'_>) -> Result<Action, FieldError> {
    let Some((name, value)) = status else {
        return Ok(Action::Trigger);
    };
    vocabulary.action(&value).ok_or_else(|| {
        FieldError::new(
            name,
            format!("'{value}' is not a known status ({})", vocabulary.describe()),
        )
    })
}

fn summary_missing(fields: &FieldMapping) -> FieldError {
    match fields.summary_field.as_deref() {
        Some(path) => FieldError::new(path, "is missing or blank (the configured summary field)"),
        None => FieldError::new(
            "summary",
            format!(
                "is missing or blank: a trigger needs one of {}",
                SUMMARY_ALIASES.join(", ")
            ),
        ),
    }
}

/// The sender's key, or one derived from what the alert says and where it
/// comes from, so that a repeat of the same alert lands on one incident.
fn dedup_key_of(
    given: Option<&str>,
    summary: Option<&str>,
    source: &str,
    fields: &FieldMapping,
) -> Result<DedupKey, FieldError> {
    match (given, summary) {
        (Some(key), _) => DedupKey::parse(key),
        (None, Some(summary)) => Ok(DedupKey::digest_of(&[summary, source])),
        (None, None) => {
            let (field, names) = match fields.dedup_key_field.as_deref() {
                Some(path) => (path.to_owned(), path.to_owned()),
                None => ("dedup_key".to_owned(), DEDUP_ALIASES.join(", ")),
            };
            Err(FieldError::new(
                field,
                format!("is missing: an acknowledge or resolve without a summary must send {names}"),
            ))
        }
    }
}

/// Names and numbers for severity that monitoring tools commonly use.
/// Anything unrecognised is a warning: the original value stays visible in
/// custom_details, which hold the whole alert object.
fn severity_of(value: &Value) -> Severity {
    if let Some(n) = value.as_i64() {
        return priority(n);
    }
    let Some(name) = value.as_str().map(|s| s.trim().to_ascii_lowercase()) else {
        return Severity::Warning;
    };
    if let Ok(n) = name.parse::<i64>() {
        return priority(n);
    }
    match name.as_str() {
        "critical" | "crit" | "fatal" | "emergency" | "p1" | "high" | "sev1" => Severity::Critical,
        "error" | "err" | "p2" | "major" | "sev2" => Severity::Error,
        "warning" | "warn" | "p3" | "medium" | "minor" | "sev3" => Severity::Warning,
        "info" | "informational" | "low" | "p4" | "p5" | "ok" | "debug" | "sev4" | "sev5" => Severity::Info,
        _ => Severity::Warning,
    }
}

/// Priority 1 (most urgent) to 5, as in P1..P5.
fn priority(n: i64) -> Severity {
    match n {
        1 => Severity::Critical,
        2 => Severity::Error,
        3 => Severity::Warning,
        4 | 5 => Severity::Info,
        _ => Severity::Warning,
    }
}

/// RFC 3339 text or Unix time (seconds, or milliseconds when too large to
/// be seconds). Anything else is ignored: the time is optional and the
/// event is then ordered by when Tocsin received it.
fn timestamp_of(object: &Value) -> Option<DateTime<Utc>> {
    let value = TIME_ALIASES.iter().find_map(|alias| object.get(alias))?;
    let unix = |n: i64| {
        if n.abs() >= MILLIS_THRESHOLD {
            Utc.timestamp_millis_opt(n).single()
        } else {
            Utc.timestamp_opt(n, 0).single()
        }
    };
    match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)).and_then(unix),
        Value::String(s) => {
            let s = s.trim();
            DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.with_timezone(&Utc))
                .or_else(|| s.parse::<i64>().ok().and_then(unix))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;
    use serde_json::json;

    use super::*;
    use crate::auth::KeyHash;
    use crate::event::{IntegrationId, ServiceId};

    const TRIGGER: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/webhook/trigger.json"
    ));
    const RESOLVE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/webhook/resolve.json"
    ));
    const NESTED: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../events/webhook/nested.json"));
    const BATCH: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../events/webhook/batch.json"));

    fn integration(fields: FieldMapping) -> Integration {
        Integration {
            id: IntegrationId::parse("checkout-webhook").unwrap(),
            service: ServiceId::parse("checkout").unwrap(),
            provider: ProviderKind::Webhook,
            key_hash: KeyHash::of("33333333333333333333333333333333"),
            secret: None,
            enabled: true,
            fields,
            cloudwatch: Default::default(),
            dedup_key: None,
            rate_limit_per_minute: None,
            secret_ref: None,
        }
    }

    /// The mapping of the sample config's payments-webhook integration.
    fn payments_fields() -> FieldMapping {
        FieldMapping {
            summary_field: Some("alert.title".into()),
            severity_field: Some("alert.level".into()),
            dedup_key_field: Some("alert.id".into()),
            action_field: Some("alert.state".into()),
            trigger_values: vec!["raised".into()],
            resolve_values: vec!["cleared".into()],
            ..FieldMapping::default()
        }
    }

    fn normalize_with(body: &str, fields: FieldMapping) -> Result<Vec<Alert>, InvalidPayload> {
        let headers = HeaderMap::new();
        let inbound = Inbound {
            headers: &headers,
            query: None,
            body: body.as_bytes(),
            received_at: Utc::now(),
        };
        Webhook.normalize(&inbound, &integration(fields))
    }

    fn one(body: &Value) -> Alert {
        let mut alerts = normalize_with(&body.to_string(), FieldMapping::default()).unwrap();
        assert_eq!(alerts.len(), 1);
        alerts.remove(0)
    }

    fn refused_with(body: &str, fields: FieldMapping) -> Vec<String> {
        normalize_with(body, fields)
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    fn refused(body: &Value) -> Vec<String> {
        refused_with(&body.to_string(), FieldMapping::default())
    }

    fn payload(alert: &Alert) -> &Payload {
        alert.payload.as_ref().unwrap()
    }

    fn sample(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn the_sample_trigger_maps_every_field() {
        let alert = one(&sample(TRIGGER));
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "checkout-error-rate");
        let p = payload(&alert);
        assert_eq!(p.summary, "Checkout API error rate above 5%");
        assert_eq!(p.source, "checkout-api.prod.example.com");
        assert_eq!(p.severity, Severity::Critical);
        assert_eq!(p.timestamp, Some(Utc.with_ymd_and_hms(2024, 5, 14, 9, 12, 3).unwrap()));
        assert_eq!(p.custom_details.as_ref(), Some(&sample(TRIGGER)));
    }

    #[test]
    fn the_sample_resolve_resolves_the_same_key() {
        let alert = one(&sample(RESOLVE));
        assert_eq!(alert.event_action, Action::Resolve);
        assert_eq!(alert.dedup_key, one(&sample(TRIGGER)).dedup_key);
        assert_eq!(
            payload(&alert).timestamp,
            Some(Utc.timestamp_opt(1_715_678_478, 0).unwrap())
        );
    }

    #[test]
    fn a_batch_gives_one_alert_per_object_through_every_alias() {
        let alerts = normalize_with(BATCH, FieldMapping::default()).unwrap();
        assert_eq!(alerts.len(), 3);

        let disk = &alerts[0];
        assert_eq!(disk.event_action, Action::Trigger);
        assert_eq!(disk.dedup_key.as_str(), "disk-db-1");
        assert_eq!(payload(disk).summary, "Disk /var/lib/postgresql 91% full on db-1");
        assert_eq!(payload(disk).severity, Severity::Warning);
        assert_eq!(payload(disk).source, "db-1.example.com");
        assert_eq!(
            payload(disk).timestamp,
            Some(Utc.with_ymd_and_hms(2024, 5, 14, 6, 0, 0).unwrap())
        );

        let lag = &alerts[1];
        assert_eq!(lag.event_action, Action::Trigger);
        assert_eq!(lag.dedup_key.as_str(), "90210");
        assert_eq!(payload(lag).summary, "Replication lag 45s on db-2");
        assert_eq!(payload(lag).severity, Severity::Error);
        assert_eq!(payload(lag).source, "db-2.example.com");
        assert_eq!(
            payload(lag).timestamp,
            Some(Utc.timestamp_opt(1_715_666_400, 0).unwrap())
        );

        let backup = &alerts[2];
        assert_eq!(backup.event_action, Action::Resolve);
        assert_eq!(backup.dedup_key.as_str(), "backup-nightly-pg");
        assert_eq!(payload(backup).severity, Severity::Info);
        assert_eq!(payload(backup).source, "backup-runner");
    }

    #[test]
    fn configured_paths_read_nested_json_and_replace_the_values() {
        let alerts = normalize_with(NESTED, payments_fields()).unwrap();
        assert_eq!(alerts.len(), 1);
        let alert = &alerts[0];
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "pay-4821");
        assert_eq!(payload(alert).summary, "Card authorisations failing at acquirer");
        assert_eq!(payload(alert).severity, Severity::Error);
        assert_eq!(payload(alert).source, "webhook");

        let cleared = NESTED.replace("\"raised\"", "\"cleared\"");
        assert_eq!(
            normalize_with(&cleared, payments_fields()).unwrap()[0].event_action,
            Action::Resolve
        );
        // "resolved" is built in, but the configured list replaces the
        // built-in one.
        let resolved = NESTED.replace("\"raised\"", "\"resolved\"");
        assert_eq!(refused_with(&resolved, payments_fields()), vec!["alert.state"]);
        // Acknowledge values were not configured: the built-in ones apply.
        let ack = NESTED.replace("\"raised\"", "\"ack\"");
        assert_eq!(
            normalize_with(&ack, payments_fields()).unwrap()[0].event_action,
            Action::Acknowledge
        );
    }

    #[test]
    fn numeric_segments_index_arrays() {
        let fields = FieldMapping {
            summary_field: Some("checks.0.name".into()),
            source_field: Some("alert.labels.region".into()),
            severity_field: Some("alert.labels.severity".into()),
            ..FieldMapping::default()
        };
        let alert = &normalize_with(NESTED, fields).unwrap()[0];
        assert_eq!(payload(alert).summary, "acquirer-eu");
        assert_eq!(payload(alert).source, "eu-west-1");
        assert_eq!(payload(alert).severity, Severity::Error);
        // The aliases of a value with a configured path are not consulted.
        let fields = FieldMapping {
            summary_field: Some("checks.5.name".into()),
            ..FieldMapping::default()
        };
        let body = json!({"summary": "ignored", "checks": []}).to_string();
        assert_eq!(refused_with(&body, fields), vec!["checks.5.name"]);
    }

    #[test]
    fn a_configured_path_to_an_object_is_an_error() {
        let fields = FieldMapping {
            dedup_key_field: Some("alert".into()),
            ..payments_fields()
        };
        assert_eq!(refused_with(NESTED, fields), vec!["alert"]);
    }

    #[test]
    fn aliases_are_tried_in_order_skipping_blanks_and_non_text() {
        let alert = one(&json!({"summary": " ", "title": {"x": 1}, "message": "M", "name": "N"}));
        assert_eq!(payload(&alert).summary, "M");
        let alert = one(&json!({"title": "T", "source": "", "origin": "o", "system": "s"}));
        assert_eq!(payload(&alert).source, "o");
        let alert = one(&json!({"title": "T", "system": "s"}));
        assert_eq!(payload(&alert).source, "s");
        let alert = one(&json!({"title": "T"}));
        assert_eq!(payload(&alert).source, "webhook");
    }

    #[test]
    fn status_values_are_matched_case_insensitively() {
        for value in [
            "triggered",
            "fired",
            "alert",
            "critical",
            "error",
            "open",
            "trigger",
            "FIRING",
            "Problem",
        ] {
            assert_eq!(
                one(&json!({"title": "t", "status": value})).event_action,
                Action::Trigger,
                "{value}"
            );
        }
        for value in ["resolved", "OK", "normal", "closed", "fixed", "resolve", "Recovered"] {
            assert_eq!(
                one(&json!({"title": "t", "state": value})).event_action,
                Action::Resolve,
                "{value}"
            );
        }
        for value in ["acknowledge", "ACK", "acknowledged"] {
            assert_eq!(
                one(&json!({"title": "t", "action": value})).event_action,
                Action::Acknowledge,
                "{value}"
            );
        }
        assert_eq!(one(&json!({"title": "t"})).event_action, Action::Trigger);
    }

    #[test]
    fn an_unknown_status_is_refused_under_the_name_it_came_in() {
        assert_eq!(refused(&json!({"title": "t", "state": "pending"})), vec!["state"]);
        let invalid = normalize_with(
            &json!({"title": "t", "status": "meh"}).to_string(),
            FieldMapping::default(),
        )
        .unwrap_err();
        assert!(invalid.errors[0].reason.contains("'meh'"), "{:?}", invalid.errors);
        assert!(invalid.errors[0].reason.contains("recovered"), "{:?}", invalid.errors);
    }

    #[test]
    fn severity_names_and_priorities_are_mapped() {
        let cases = [
            (json!("critical"), Severity::Critical),
            (json!("CRIT"), Severity::Critical),
            (json!("fatal"), Severity::Critical),
            (json!("emergency"), Severity::Critical),
            (json!("P1"), Severity::Critical),
            (json!("high"), Severity::Critical),
            (json!("sev1"), Severity::Critical),
            (json!(1), Severity::Critical),
            (json!("1"), Severity::Critical),
            (json!("error"), Severity::Error),
            (json!("err"), Severity::Error),
            (json!("p2"), Severity::Error),
            (json!("major"), Severity::Error),
            (json!(2), Severity::Error),
            (json!("warning"), Severity::Warning),
            (json!("warn"), Severity::Warning),
            (json!("p3"), Severity::Warning),
            (json!("medium"), Severity::Warning),
            (json!("minor"), Severity::Warning),
            (json!(3), Severity::Warning),
            (json!("info"), Severity::Info),
            (json!("informational"), Severity::Info),
            (json!("low"), Severity::Info),
            (json!("p4"), Severity::Info),
            (json!("p5"), Severity::Info),
            (json!("ok"), Severity::Info),
            (json!("debug"), Severity::Info),
            (json!(4), Severity::Info),
            (json!(5), Severity::Info),
            (json!(9), Severity::Warning),
            (json!("purple"), Severity::Warning),
            (json!(true), Severity::Warning),
        ];
        for (value, expected) in cases {
            assert_eq!(
                payload(&one(&json!({"title": "t", "severity": value}))).severity,
                expected,
                "{value}"
            );
        }
        assert_eq!(
            payload(&one(&json!({"title": "t", "level": "crit"}))).severity,
            Severity::Critical
        );
        assert_eq!(
            payload(&one(&json!({"title": "t", "priority": 1}))).severity,
            Severity::Critical
        );
        assert_eq!(payload(&one(&json!({"title": "t"}))).severity, Severity::Warning);
    }

    #[test]
    fn dedup_keys_accept_numbers_and_default_to_a_digest() {
        assert_eq!(one(&json!({"title": "t", "alert_id": 42})).dedup_key.as_str(), "42");
        let a = one(&json!({"title": "Disk full", "source": "db-1"}));
        let b = one(&json!({"message": "Disk full", "origin": "db-1", "severity": "critical"}));
        let c = one(&json!({"title": "Disk full", "source": "db-2"}));
        assert_eq!(a.dedup_key, DedupKey::digest_of(&["Disk full", "db-1"]));
        assert_eq!(a.dedup_key, b.dedup_key);
        assert_ne!(a.dedup_key, c.dedup_key);
        // A resolve without a key finds the trigger by the same digest.
        let resolve = one(&json!({"title": "Disk full", "source": "db-1", "status": "resolved"}));
        assert_eq!(resolve.dedup_key, a.dedup_key);
    }

    #[test]
    fn a_trigger_needs_a_summary_and_the_error_lists_the_aliases() {
        let invalid =
            normalize_with(&json!({"severity": "critical"}).to_string(), FieldMapping::default()).unwrap_err();
        assert_eq!(invalid.errors.len(), 1);
        assert_eq!(invalid.errors[0].field, "summary");
        for alias in SUMMARY_ALIASES {
            assert!(invalid.errors[0].reason.contains(alias), "{:?}", invalid.errors);
        }
    }

    #[test]
    fn a_resolve_needs_a_key_or_a_summary() {
        let alert = one(&json!({"id": "k", "status": "resolved"}));
        assert_eq!(alert.payload, None);
        assert_eq!(refused(&json!({"status": "resolved"})), vec!["dedup_key"]);
        let fields = payments_fields();
        let body = json!({"alert": {"state": "cleared"}}).to_string();
        assert_eq!(refused_with(&body, fields), vec!["alert.id"]);
    }

    #[test]
    fn timestamps_are_rfc3339_or_unix_seconds_or_ignored() {
        let time = |value: Value| payload(&one(&json!({"title": "t", "timestamp": value}))).timestamp;
        let expected = Some(Utc.timestamp_opt(1_715_678_478, 0).unwrap());
        assert_eq!(time(json!("2024-05-14T09:21:18Z")), expected);
        assert_eq!(time(json!(1_715_678_478)), expected);
        assert_eq!(time(json!("1715678478")), expected);
        assert_eq!(time(json!(1_715_678_478_000_i64)), expected);
        assert_eq!(time(json!("last tuesday")), None);
        assert_eq!(time(json!({"nested": 1})), None);
        let alert = one(&json!({"title": "t", "occurred_at": "2024-05-14T09:21:18Z"}));
        assert_eq!(payload(&alert).timestamp, expected);
    }

    #[test]
    fn batches_are_limited_to_100_alerts() {
        let item = json!({"title": "t"});
        let full = Value::Array(vec![item.clone(); MAX_ALERTS]);
        assert_eq!(
            normalize_with(&full.to_string(), FieldMapping::default())
                .unwrap()
                .len(),
            MAX_ALERTS
        );
        let over = Value::Array(vec![item; MAX_ALERTS + 1]);
        assert_eq!(refused(&over), vec!["body"]);
        assert_eq!(refused(&json!([])), vec!["body"]);
    }

    #[test]
    fn one_bad_alert_refuses_the_batch_and_every_problem_is_listed() {
        let body = json!([
            {"title": "fine"},
            {"severity": "critical"},
            {"title": "t", "status": "weird"},
        ]);
        assert_eq!(refused(&body), vec!["[1].summary", "[2].status"]);
        assert_eq!(refused(&json!([{"title": "t"}, 3, "x"])), vec!["[1]", "[2]"]);
    }

    #[test]
    fn other_bodies_are_refused() {
        assert_eq!(refused_with("not json", FieldMapping::default()), vec!["body"]);
        assert_eq!(refused(&json!("a string")), vec!["body"]);
        assert_eq!(refused(&json!(12)), vec!["body"]);
    }
}
