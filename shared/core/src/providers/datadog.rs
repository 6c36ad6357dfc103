//! Datadog monitors, through Datadog's Webhooks integration with the payload
//! template Tocsin publishes (docs/providers/datadog.md). The body is that
//! template with Datadog's `$VARIABLES` filled in, as JSON or, when the
//! webhook has "Encode as form" checked, as a form.
//!
//! One notification is one event, keyed by `$ALERT_CYCLE_KEY`: Datadog gives
//! every notification from a monitor's trigger to its recovery the same cycle
//! key, so `Triggered`, `Re-Triggered`, `Warn`, `Renotify` and the final
//! `Recovered` meet on one incident, and the next cycle opens a new one.
//!
//! Datadog does not sign webhooks. An integration with a secret expects it
//! verbatim in the `X-Tocsin-Secret` custom header.
//!
//! <https://docs.datadoghq.com/integrations/webhooks/>

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, FieldError, Image, Link, Payload, Severity};
use crate::providers::{Inbound, InvalidPayload, Provider, ProviderKind};
use crate::signature::SignatureError;

pub struct Datadog;

/// The custom header that carries an integration's secret, as Datadog cannot
/// compute a signature.
pub const SECRET_HEADER: &str = "x-tocsin-secret";

const INVALID: &str = "the Datadog notification is invalid";
const CLIENT: &str = "Datadog";
const DEFAULT_SOURCE: &str = "datadog";

/// Unix times above this are milliseconds (`$DATE` is in milliseconds; read
/// as seconds it would lie after the year 5000).
const MILLIS_THRESHOLD: i64 = 100_000_000_000;

/// The fields of Tocsin's template, each the value of one Datadog variable.
#[derive(Debug, Default)]
struct Notification {
    /// Every field received, for custom_details.
    fields: BTreeMap<String, String>,
}

impl Notification {
    /// A field's value; blank values and variables Datadog left unreplaced
    /// (`$ALERT_CYCLE_KEY` outside a monitor alert) count as absent.
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty() && !is_placeholder(v))
    }
}

/// `$SOME_VARIABLE`, as Datadog leaves a variable it has no value for.
fn is_placeholder(value: &str) -> bool {
    value.strip_prefix('$').is_some_and(|name| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    })
}

impl Provider for Datadog {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Datadog
    }

    /// A shared secret in a custom header, compared in constant time: Datadog
    /// can send fixed headers but cannot sign a body.
    fn verify(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<(), SignatureError> {
        let Some(secret) = &integration.secret else {
            return Ok(());
        };
        let sent = inbound.headers.get(SECRET_HEADER).ok_or(SignatureError::Missing {
            expected: "X-Tocsin-Secret: <the integration's secret>",
        })?;
        // Digests have equal lengths, so the comparison takes the same time
        // however much of the value matches.
        let sent = Sha256::digest(sent.as_bytes());
        let expected = Sha256::digest(secret.expose().as_bytes());
        if bool::from(sent.as_slice().ct_eq(expected.as_slice())) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let notification = read_body(inbound.body)?;
        let transition = notification.get("alert_transition");
        tracing::debug!(
            alert_id = notification.get("alert_id").unwrap_or(""),
            transition = transition.unwrap_or(""),
            "datadog notification"
        );
        let event_action = match transition.map(|t| t.to_ascii_lowercase()).as_deref() {
            Some("triggered" | "re-triggered" | "warn" | "re-warn" | "no data" | "re-no data" | "renotify") => {
                Action::Trigger
            }
            Some("recovered") => Action::Resolve,
            // Datadog documents "Null" for notifications that are no state
            // change of a monitor: nothing to open or close.
            Some("null") => return Ok(Vec::new()),
            Some(other) => {
                return Err(InvalidPayload::field(
                    "alert_transition",
                    format!(
                        "'{other}' is not a Datadog transition (Triggered, Re-Triggered, Warn, Re-Warn, No Data, Re-No Data, Renotify, Recovered)"
                    ),
                ))
            }
            None => {
                return Err(InvalidPayload::field(
                    "alert_transition",
                    "is missing: the webhook payload must be Tocsin's template, with \"alert_transition\": \"$ALERT_TRANSITION\"",
                ))
            }
        };
        let warn = transition.is_some_and(|t| t.eq_ignore_ascii_case("warn") || t.eq_ignore_ascii_case("re-warn"));

        let dedup_key = dedup_key_of(&notification).map_err(|e| InvalidPayload::new(INVALID, vec![e]))?;
        let tags = tags_of(notification.get("tags"));
        let tag = |name: &str| {
            tags.iter()
                .find_map(|t| t.split_once(':').filter(|(k, _)| *k == name).map(|(_, v)| v))
        };

        let summary = notification
            .get("event_title")
            .or_else(|| notification.get("alert_title"))
            .map(str::to_owned)
            .unwrap_or_else(|| match notification.get("alert_id") {
                Some(id) => format!("Datadog monitor {id}"),
                None => "Datadog monitor".to_owned(),
            });
        let mut details: serde_json::Map<String, Value> = notification
            .fields
            .iter()
            .filter(|(k, _)| notification.get(k).is_some())
            .map(|(k, v)| (k.clone(), Value::String(v.trim().to_owned())))
            .collect();
        if !tags.is_empty() {
            details.insert("tags".into(), serde_json::json!(tags));
        }

        let link = absolute_url(notification.get("link"));
        Ok(vec![Alert {
            event_action,
            dedup_key,
            payload: Some(Payload {
                summary: Payload::truncate_summary(&summary),
                source: notification
                    .get("hostname")
                    .or_else(|| notification.get("alert_scope"))
                    .unwrap_or(DEFAULT_SOURCE)
                    .to_owned(),
                severity: severity_of(&notification, warn),
                timestamp: timestamp_of(&notification),
                // The service tag names the part at fault; the metric (or,
                // for other monitors, the event type) the kind of event.
                component: tag("service").map(str::to_owned),
                group: None,
                class: notification
                    .get("alert_metric")
                    .or_else(|| notification.get("event_type"))
                    .map(str::to_owned),
                custom_details: Some(Value::Object(details)),
            }),
            links: link
                .map(|href| Link {
                    href: href.to_owned(),
                    text: Some("Datadog".to_owned()),
                })
                .into_iter()
                .collect(),
            images: absolute_url(notification.get("snapshot"))
                .map(|src| Image {
                    src: src.to_owned(),
                    href: link.map(str::to_owned),
                    alt: Some("Snapshot".to_owned()),
                })
                .into_iter()
                .collect(),
            client: Some(CLIENT.to_owned()),
            client_url: link.map(str::to_owned),
        }])
    }
}

/// A JSON object, or a form when "Encode as form" is checked. JSON is known by
/// its first character whatever the Content-Type says.
fn read_body(body: &[u8]) -> Result<Notification, InvalidPayload> {
    let mut fields = BTreeMap::new();
    match body.iter().copied().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(InvalidPayload::field("body", "is empty")),
        Some(b'{') => {
            let value: Value = serde_json::from_slice(body).map_err(InvalidPayload::unreadable)?;
            let Value::Object(object) = value else {
                return Err(InvalidPayload::field("body", "must be one JSON object"));
            };
            let mut errors = Vec::new();
            for (name, value) in object {
                match value {
                    Value::String(s) => {
                        fields.insert(name, s);
                    }
                    // A variable pasted without quotes arrives as a number.
                    Value::Number(n) => {
                        fields.insert(name, n.to_string());
                    }
                    Value::Null => {}
                    _ => errors.push(FieldError::new(name, "must be a string (a Datadog variable in quotes)")),
                }
            }
            if !errors.is_empty() {
                return Err(InvalidPayload::new(INVALID, errors));
            }
        }
        Some(b'[') => {
            return Err(InvalidPayload::field(
                "body",
                "must be one JSON object (Tocsin's template), not an array",
            ))
        }
        Some(_) => {
            for (name, value) in form_urlencoded::parse(body) {
                // Of a repeated name the first value counts.
                fields.entry(name.into_owned()).or_insert_with(|| value.into_owned());
            }
            if fields.is_empty() {
                return Err(InvalidPayload::field("body", "is neither a JSON object nor a form"));
            }
        }
    }
    Ok(Notification { fields })
}

/// The alert cycle key links a trigger to its recovery. Without it (an old
/// template), the aggregation key groups the monitor's group across cycles,
/// and lastly the monitor id with its scope.
fn dedup_key_of(notification: &Notification) -> Result<DedupKey, FieldError> {
    if let Some(key) = notification.get("alert_cycle_key") {
        return DedupKey::parse(key).map_err(|e| e.at("alert_cycle_key"));
    }
    if let Some(key) = notification.get("aggreg_key") {
        return DedupKey::parse(key).map_err(|e| e.at("aggreg_key"));
    }
    match notification.get("alert_id") {
        Some(id) => Ok(DedupKey::digest_of(&[
            "datadog-monitor",
            id,
            notification.get("alert_scope").unwrap_or(""),
        ])),
        None => Err(FieldError::new(
            "alert_cycle_key",
            "is missing, and so are aggreg_key and alert_id: nothing names the alert",
        )),
    }
}

/// The monitor's priority when set (P1 most urgent), otherwise the alert
/// type. A warning transition is never more than a warning, whatever the
/// monitor's priority.
fn severity_of(notification: &Notification, warn: bool) -> Severity {
    let by_priority = match notification
        .get("alert_priority")
        .map(|p| p.to_ascii_uppercase())
        .as_deref()
    {
        Some("P1") => Some(Severity::Critical),
        Some("P2") => Some(Severity::Error),
        Some("P3") => Some(Severity::Warning),
        Some("P4" | "P5") => Some(Severity::Info),
        _ => None,
    };
    let by_type = || match notification
        .get("alert_type")
        .map(|t| t.to_ascii_lowercase())
        .as_deref()
    {
        Some("error") => Severity::Error,
        Some("warning") => Severity::Warning,
        Some("info" | "success") => Severity::Info,
        _ => Severity::Warning,
    };
    let severity = by_priority.unwrap_or_else(by_type);
    if warn {
        severity.min(Severity::Warning)
    } else {
        severity
    }
}

/// `$DATE` (epoch milliseconds), or `$LAST_UPDATED`; anything unreadable is
/// left out and the event is ordered by its receipt.
fn timestamp_of(notification: &Notification) -> Option<DateTime<Utc>> {
    ["date", "last_updated"].iter().find_map(|name| {
        let n: i64 = notification.get(name)?.parse().ok()?;
        if n.abs() >= MILLIS_THRESHOLD {
            Utc.timestamp_millis_opt(n).single()
        } else {
            Utc.timestamp_opt(n, 0).single()
        }
    })
}

/// `$TAGS` is a comma-separated list (`monitor, name:myService, role:db`).
fn tags_of(value: Option<&str>) -> Vec<&str> {
    value
        .map(|v| v.split(',').map(str::trim).filter(|t| !t.is_empty()).collect())
        .unwrap_or_default()
}

fn absolute_url(value: Option<&str>) -> Option<&str> {
    value.filter(|v| v.starts_with("https://") || v.starts_with("http://"))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use http::{HeaderMap, HeaderValue};
    use serde_json::json;

    use super::*;

    const TRIGGERED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/datadog/triggered.json"
    ));
    const RECOVERED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/datadog/recovered.json"
    ));
    const TRIGGERED_FORM: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/datadog/triggered.form"
    ));
    const TEMPLATE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/datadog/template.json"
    ));

    const SECRET: &str = "datadog-shared-secret-for-tests";

    fn integration(secret: Option<&str>) -> Integration {
        crate::providers::test_support::integration(
            "checkout-datadog",
            "checkout",
            ProviderKind::Datadog,
            "11111111111111111111111111111111",
            secret,
        )
    }

    fn normalize(body: &str) -> Result<Vec<Alert>, InvalidPayload> {
        let headers = HeaderMap::new();
        let inbound = Inbound {
            headers: &headers,
            query: None,
            body: body.as_bytes(),
            received_at: Utc::now(),
        };
        Datadog.normalize(&inbound, &integration(None))
    }

    fn one(body: &str) -> Alert {
        let mut alerts = normalize(body).unwrap();
        assert_eq!(alerts.len(), 1);
        alerts.remove(0)
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

    fn verify(header: Option<&str>) -> Result<(), SignatureError> {
        let mut headers = HeaderMap::new();
        if let Some(value) = header {
            headers.insert(SECRET_HEADER, HeaderValue::from_str(value).unwrap());
        }
        let inbound = Inbound {
            headers: &headers,
            query: None,
            body: TRIGGERED.as_bytes(),
            received_at: Utc::now(),
        };
        Datadog.verify(&inbound, &integration(Some(SECRET)))
    }

    #[test]
    fn a_triggered_monitor_maps_every_field() {
        let alert = one(TRIGGERED);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "7716548234011234560");
        let p = payload(&alert);
        assert_eq!(p.summary, "[P2] [Triggered on {host:web-01}] Memory usage is high");
        assert_eq!(p.severity, Severity::Error);
        assert_eq!(p.source, "web-01");
        assert_eq!(p.component.as_deref(), Some("checkout"));
        assert_eq!(p.class.as_deref(), Some("system.mem.pct_usable"));
        assert_eq!(p.timestamp, Some(Utc.timestamp_millis_opt(1_406_662_672_000).unwrap()));
        let details = p.custom_details.as_ref().unwrap();
        assert_eq!(details["alert_id"], json!("1234"));
        assert_eq!(details["org_id"], json!("11023"));
        assert_eq!(
            details["tags"],
            json!(["env:prod", "monitor", "role:computing-node", "service:checkout"])
        );
        assert_eq!(alert.links.len(), 1);
        assert_eq!(
            alert.links[0].href,
            "https://app.datadoghq.com/event/jump_to?event_id=123456"
        );
        assert_eq!(alert.images[0].src, "https://p.datadoghq.com/path-to-snapshot");
        assert_eq!(alert.client.as_deref(), Some("Datadog"));
    }

    #[test]
    fn the_recovery_resolves_the_same_alert_cycle() {
        let triggered = one(TRIGGERED);
        let recovered = one(RECOVERED);
        assert_eq!(recovered.event_action, Action::Resolve);
        assert_eq!(recovered.dedup_key, triggered.dedup_key);
        assert!(payload(&recovered).timestamp > payload(&triggered).timestamp);
        assert_eq!(payload(&recovered).severity, Severity::Error);
    }

    #[test]
    fn the_form_encoded_body_reads_the_same() {
        let from_form = one(TRIGGERED_FORM);
        let from_json = one(TRIGGERED);
        assert_eq!(from_form.event_action, from_json.event_action);
        assert_eq!(from_form.dedup_key, from_json.dedup_key);
        assert_eq!(payload(&from_form).summary, payload(&from_json).summary);
        assert_eq!(payload(&from_form).severity, payload(&from_json).severity);
        assert_eq!(payload(&from_form).timestamp, payload(&from_json).timestamp);
    }

    #[test]
    fn every_transition_has_an_action() {
        let action = |t: &str| one(&with(TRIGGERED, |v| v["alert_transition"] = json!(t))).event_action;
        for t in [
            "Triggered",
            "Re-Triggered",
            "Warn",
            "Re-Warn",
            "No Data",
            "Re-No Data",
            "Renotify",
        ] {
            assert_eq!(action(t), Action::Trigger, "{t}");
        }
        assert_eq!(action("Recovered"), Action::Resolve);
        assert!(normalize(&with(TRIGGERED, |v| v["alert_transition"] = json!("Null")))
            .unwrap()
            .is_empty());
        assert_eq!(
            refused(&with(TRIGGERED, |v| v["alert_transition"] = json!("Exploded"))),
            ["alert_transition"]
        );
        assert_eq!(
            refused(&with(TRIGGERED, |v| v["alert_transition"] = json!("$ALERT_TRANSITION"))),
            ["alert_transition"]
        );
    }

    #[test]
    fn severity_comes_from_priority_then_alert_type_and_warnings_stay_warnings() {
        let severity = |priority: &str, kind: &str, transition: &str| {
            let body = with(TRIGGERED, |v| {
                v["alert_priority"] = json!(priority);
                v["alert_type"] = json!(kind);
                v["alert_transition"] = json!(transition);
            });
            payload(&one(&body)).severity
        };
        assert_eq!(severity("P1", "error", "Triggered"), Severity::Critical);
        assert_eq!(severity("P2", "error", "Triggered"), Severity::Error);
        assert_eq!(severity("P3", "error", "Triggered"), Severity::Warning);
        assert_eq!(severity("P4", "error", "Triggered"), Severity::Info);
        assert_eq!(severity("P5", "error", "Triggered"), Severity::Info);
        assert_eq!(severity("", "error", "Triggered"), Severity::Error);
        assert_eq!(severity("$ALERT_PRIORITY", "warning", "Triggered"), Severity::Warning);
        assert_eq!(severity("", "info", "Triggered"), Severity::Info);
        assert_eq!(severity("", "success", "Recovered"), Severity::Info);
        assert_eq!(severity("", "", "Triggered"), Severity::Warning);
        assert_eq!(severity("P1", "warning", "Warn"), Severity::Warning);
        assert_eq!(severity("P4", "warning", "Re-Warn"), Severity::Info);
    }

    #[test]
    fn without_a_cycle_key_the_aggregation_key_then_the_monitor_name_the_alert() {
        let body = with(TRIGGERED, |v| v["alert_cycle_key"] = json!("$ALERT_CYCLE_KEY"));
        assert_eq!(one(&body).dedup_key.as_str(), "9bd4ac313a4d1e8fae2482df7b77628");
        let body = with(TRIGGERED, |v| {
            v["alert_cycle_key"] = json!("");
            v.as_object_mut().unwrap().remove("aggreg_key");
        });
        let by_monitor = one(&body).dedup_key;
        assert!(by_monitor.as_str().starts_with("sha256:"));
        let recovered = with(RECOVERED, |v| {
            v["alert_cycle_key"] = json!("");
            v.as_object_mut().unwrap().remove("aggreg_key");
        });
        assert_eq!(one(&recovered).dedup_key, by_monitor);
        let nothing = with(&body, |v| {
            v.as_object_mut().unwrap().remove("alert_id");
        });
        assert_eq!(refused(&nothing), ["alert_cycle_key"]);
    }

    #[test]
    fn placeholders_and_blanks_are_absent() {
        assert!(is_placeholder("$ALERT_PRIORITY"));
        assert!(is_placeholder("$TAGS"));
        assert!(!is_placeholder("$5 off"));
        assert!(!is_placeholder("$"));
        let body = with(TRIGGERED, |v| {
            v["hostname"] = json!("$HOSTNAME");
            v["snapshot"] = json!("");
            v["event_title"] = json!(" ");
        });
        let alert = one(&body);
        assert_eq!(payload(&alert).source, "host:web-01");
        assert!(alert.images.is_empty());
        assert_eq!(
            payload(&alert).summary,
            "[Triggered on {host:web-01}] Memory usage is high"
        );
        assert!(payload(&alert)
            .custom_details
            .as_ref()
            .unwrap()
            .get("hostname")
            .is_none());
    }

    #[test]
    fn numbers_are_read_as_text_and_other_types_are_refused() {
        let body = with(TRIGGERED, |v| {
            v["alert_id"] = json!(1234);
            v["date"] = json!(1_406_662_672_000_i64);
        });
        let alert = one(&body);
        assert_eq!(
            payload(&alert).custom_details.as_ref().unwrap()["alert_id"],
            json!("1234")
        );
        assert_eq!(
            payload(&alert).timestamp,
            Some(Utc.timestamp_millis_opt(1_406_662_672_000).unwrap())
        );
        assert_eq!(refused(&with(TRIGGERED, |v| v["tags"] = json!(["a"]))), ["tags"]);
    }

    #[test]
    fn unreadable_bodies_are_refused() {
        assert_eq!(refused(""), ["body"]);
        assert_eq!(refused("{"), ["body"]);
        assert_eq!(refused("[]"), ["body"]);
        assert_eq!(refused(r#"{"title": "no template"}"#), ["alert_transition"]);
    }

    #[test]
    fn the_published_template_is_the_one_parsed() {
        // Every field of the template is one Datadog variable, and the doc
        // page shows this same file.
        let template: Value = serde_json::from_str(TEMPLATE).unwrap();
        let sample: Value = serde_json::from_str(TRIGGERED).unwrap();
        let names = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&template), names(&sample));
        for (_, value) in template.as_object().unwrap() {
            assert!(is_placeholder(value.as_str().unwrap()), "{value}");
        }
        // Unfilled, it names no alert.
        assert_eq!(refused(TEMPLATE), ["alert_transition"]);
        let docs = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/providers/datadog.md"));
        assert!(
            docs.contains(TEMPLATE.trim()),
            "docs/providers/datadog.md must show events/datadog/template.json"
        );
    }

    #[test]
    fn the_shared_secret_header_is_checked_in_constant_time() {
        assert_eq!(verify(Some(SECRET)), Ok(()));
        assert_eq!(
            verify(Some("datadog-shared-secret-for-test")),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(verify(None), Err(SignatureError::Missing { .. })));
        let headers = HeaderMap::new();
        let inbound = Inbound {
            headers: &headers,
            query: None,
            body: b"{}",
            received_at: Utc::now(),
        };
        assert_eq!(Datadog.verify(&inbound, &integration(None)), Ok(()));
    }
}
