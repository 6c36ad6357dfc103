//! AppDynamics policies through an HTTP request action, with the HTTP
//! request template Tocsin publishes (docs/providers/appdynamics.md).
//! AppDynamics renders the template (Velocity, `${latestEvent.*}`) for every
//! event a policy fires on, one request per event. A health rule violation
//! keeps its incident id from the event that opens it to the one that ends
//! or cancels it, so that id is the dedup key.
//!
//! AppDynamics signs nothing. The integration key travels in a custom
//! request header; an integration with a secret expects it verbatim in the
//! `X-Tocsin-Secret` header.
//!
//! <https://help.splunk.com/en/appdynamics-saas/get-started/26.4.0/alert-and-respond/actions/predefined-templating-variables>

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, FieldError, Link, Payload, Severity};
use crate::providers::header_secret::verify_secret_header;
use crate::providers::{Inbound, InvalidPayload, Provider, ProviderKind};
use crate::signature::SignatureError;

pub struct AppDynamics;

/// The HTTP request template's payload, to paste as is; the doc page shows
/// the same text, and the samples are its output. `$!{…}` renders an empty
/// string where the event has no such entity (no node, no incident).
pub const PAYLOAD_TEMPLATE: &str = r#"{
  "eventType": "${latestEvent.eventType}",
  "eventId": "${latestEvent.id}",
  "eventGuid": "${latestEvent.guid}",
  "eventTime": "${latestEvent.eventTime}",
  "severity": "${latestEvent.severity}",
  "displayName": "${latestEvent.displayName}",
  "summaryMessage": "$!{latestEvent.summaryMessage}",
  "deepLink": "$!{latestEvent.deepLink}",
  "application": "$!{latestEvent.application.name}",
  "tier": "$!{latestEvent.tier.name}",
  "node": "$!{latestEvent.node.name}",
  "healthRuleId": "$!{latestEvent.healthRule.id}",
  "healthRule": "$!{latestEvent.healthRule.name}",
  "incidentId": "$!{latestEvent.incident.id}",
  "incidentName": "$!{latestEvent.incident.name}",
  "policy": "$!{policy.name}",
  "controllerUrl": "$!{controllerUrl}"
}"#;

const INVALID: &str = "the AppDynamics event is invalid";

const SOURCE: &str = "appdynamics";

/// Every field as a raw value: AppDynamics renders everything as text, but a
/// template edited to drop quotes around an id gives numbers.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Notification {
    event_type: Option<Value>,
    event_id: Option<Value>,
    event_time: Option<Value>,
    severity: Option<Value>,
    display_name: Option<Value>,
    summary_message: Option<Value>,
    deep_link: Option<Value>,
    application: Option<Value>,
    tier: Option<Value>,
    node: Option<Value>,
    health_rule: Option<Value>,
    incident_id: Option<Value>,
    incident_name: Option<Value>,
    controller_url: Option<Value>,
}

impl Provider for AppDynamics {
    fn kind(&self) -> ProviderKind {
        ProviderKind::AppDynamics
    }

    /// AppDynamics can send fixed headers but cannot sign a body: the secret
    /// itself, compared in constant time.
    fn verify(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<(), SignatureError> {
        verify_secret_header(inbound.headers, integration.secret.as_ref())
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let body = object_body(inbound.body)?;
        let n: Notification = deserialize(&body)?;
        let event_type = text(&n.event_type).map(str::to_ascii_uppercase);
        tracing::debug!(event_type = event_type.as_deref().unwrap_or(""), "appdynamics event");

        let mut errors = Vec::new();
        // A health rule violation's incident spans its events; an event of
        // another kind (a crash, a deadlock) is its own incident.
        let dedup_key = match text(&n.incident_id).or_else(|| text(&n.event_id)) {
            Some(id) => DedupKey::parse(id).map_err(|e| errors.push(e.at("incidentId"))).ok(),
            None => {
                errors.push(FieldError::new(
                    "incidentId",
                    "is missing, and so is eventId: paste the template from Tocsin's AppDynamics page",
                ));
                None
            }
        };
        let action = match event_type.as_deref() {
            Some(kind) => Some(action_of(kind)),
            None => {
                errors.push(FieldError::new(
                    "eventType",
                    "is missing (POLICY_OPEN_CRITICAL, POLICY_CLOSE_CRITICAL, …)",
                ));
                None
            }
        };
        let (Some(dedup_key), Some(event_action), true) = (dedup_key, action, errors.is_empty()) else {
            return Err(InvalidPayload::new(INVALID, errors));
        };

        let kind = event_type.as_deref().unwrap_or_default();
        let health_rule = text(&n.health_rule);
        let deep_link = text(&n.deep_link);
        Ok(vec![Alert {
            event_action,
            dedup_key,
            payload: Some(Payload {
                summary: Payload::truncate_summary(&summary_of(&n, kind)),
                source: text(&n.node)
                    .or_else(|| text(&n.tier))
                    .or_else(|| text(&n.application))
                    .unwrap_or(SOURCE)
                    .to_owned(),
                severity: severity_of(kind, text(&n.severity)),
                timestamp: text(&n.event_time).and_then(event_time),
                component: text(&n.tier).map(str::to_owned),
                group: text(&n.application).map(str::to_owned),
                class: health_rule.or(Some(kind)).map(str::to_owned),
                custom_details: Some(body),
            }),
            links: deep_link
                .map(|href| Link {
                    href: href.to_owned(),
                    text: Some("AppDynamics event".to_owned()),
                })
                .into_iter()
                .collect(),
            images: Vec::new(),
            client: Some("AppDynamics".to_owned()),
            client_url: text(&n.controller_url).map(str::to_owned),
        }])
    }
}

/// A violation that ends or is canceled resolves; every other event (a
/// violation starting, continuing, upgraded or downgraded, and events that
/// are no health rule violation) triggers. Templates render `POLICY_*`
/// names; the REST API's `HEALTH_RULE_*` names are read the same way.
fn action_of(event_type: &str) -> Action {
    let name = event_type
        .strip_prefix("POLICY_")
        .or_else(|| event_type.strip_prefix("HEALTH_RULE_"))
        .unwrap_or(event_type);
    if name.starts_with("CLOSE_") || name.starts_with("CANCELED_") {
        Action::Resolve
    } else {
        Action::Trigger
    }
}

/// The event type says the violation's level; other events carry
/// AppDynamics' INFO / WARN / ERROR.
fn severity_of(event_type: &str, severity: Option<&str>) -> Severity {
    if event_type.ends_with("_CRITICAL") || event_type.ends_with("_UPGRADED") {
        return Severity::Critical;
    }
    if event_type.ends_with("_WARNING") || event_type.ends_with("_DOWNGRADED") {
        return Severity::Warning;
    }
    match severity.map(str::to_ascii_uppercase).as_deref() {
        Some("ERROR") => Severity::Error,
        Some("WARN" | "WARNING") => Severity::Warning,
        Some("INFO") => Severity::Info,
        _ => Severity::Warning,
    }
}

/// The summary message without its HTML (AppDynamics writes `<b>` and
/// `<br>` into it), else the incident or event name.
fn summary_of(n: &Notification, event_type: &str) -> String {
    let message = text(&n.summary_message).map(plain_text).filter(|m| !m.is_empty());
    message
        .or_else(|| text(&n.incident_name).map(str::to_owned))
        .or_else(|| text(&n.display_name).map(str::to_owned))
        .or_else(|| (!event_type.is_empty()).then(|| event_type.to_owned()))
        .unwrap_or_else(|| "AppDynamics event".to_owned())
}

/// Tags dropped, `<br>` as a space, the common entities decoded and runs of
/// whitespace collapsed.
fn plain_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    let words: Vec<&str> = decoded.split_whitespace().collect();
    // Tags glued to punctuation leave "word ." behind.
    words.join(" ").replace(" .", ".").replace(" ,", ",")
}

/// `${latestEvent.eventTime}` is Java's `Date.toString()`, in the
/// Controller's time zone: "Mon Apr 03 02:04:55 UTC 2023". Only UTC (or GMT)
/// is read: a zone abbreviation such as PDT names no single offset. RFC 3339
/// and epoch milliseconds are read too, for edited templates. Anything else
/// leaves the time out (Tocsin then uses the time it received the event).
fn event_time(value: &str) -> Option<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(value) {
        return Some(time.with_timezone(&Utc));
    }
    if let Ok(millis) = value.parse::<i64>() {
        return Utc.timestamp_millis_opt(millis).single().filter(|_| millis > 0);
    }
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [weekday, month, day, time, zone, year] = parts.as_slice() else {
        return None;
    };
    if !matches!(*zone, "UTC" | "GMT") {
        return None;
    }
    NaiveDateTime::parse_from_str(
        &format!("{weekday} {month} {day} {time} {year}"),
        "%a %b %d %H:%M:%S %Y",
    )
    .ok()
    .map(|naive| naive.and_utc())
}

/// A field's text: blank, non-text, and Velocity references left unrendered
/// (`${latestEvent.node.name}` where the event has no node) are absent.
fn text(value: &Option<Value>) -> Option<&str> {
    let text = match value.as_ref()? {
        Value::String(s) => s.trim(),
        _ => return None,
    };
    let unrendered = text.starts_with("${") || text.starts_with("$!{");
    (!text.is_empty() && !unrendered).then_some(text)
}

/// The body as one JSON object. Numbers in it (a template edited to drop the
/// quotes around an id) become text, so that every field reads alike.
fn object_body(body: &[u8]) -> Result<Value, InvalidPayload> {
    let mut value: Value = serde_json::from_slice(body).map_err(InvalidPayload::unreadable)?;
    let Some(object) = value.as_object_mut() else {
        return Err(InvalidPayload::field(
            "body",
            "must be one JSON object (Tocsin's AppDynamics HTTP request template)",
        ));
    };
    for field in object.values_mut() {
        if let Value::Number(n) = field {
            *field = Value::String(n.to_string());
        }
    }
    Ok(value)
}

/// Deserializes with the path of a type error in the field name.
fn deserialize<T: DeserializeOwned>(value: &Value) -> Result<T, InvalidPayload> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        InvalidPayload::field(path, format!("has the wrong type: {}", error.into_inner()))
    })
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};
    use serde_json::json;

    use super::*;

    const OPEN: &str = include_str!("../../../../events/appdynamics/open-critical.json");
    const CLOSE: &str = include_str!("../../../../events/appdynamics/close-critical.json");
    const DOC: &str = include_str!("../../../../docs/providers/appdynamics.md");
    const TEMPLATE_FILE: &str = include_str!("../../../../events/appdynamics/template.json");

    fn integration(secret: Option<&str>) -> Integration {
        crate::providers::test_support::integration(
            "checkout-appd",
            "checkout",
            ProviderKind::AppDynamics,
            "88888888888888888888888888888888",
            secret,
        )
    }

    fn inbound<'a>(headers: &'a HeaderMap, body: &'a str) -> Inbound<'a> {
        Inbound {
            headers,
            query: None,
            body: body.as_bytes(),
            received_at: Utc::now(),
        }
    }

    fn normalize(body: &str) -> Result<Vec<Alert>, InvalidPayload> {
        let headers = HeaderMap::new();
        AppDynamics.normalize(&inbound(&headers, body), &integration(None))
    }

    fn one(body: &str) -> Alert {
        let mut alerts = normalize(body).unwrap();
        assert_eq!(alerts.len(), 1);
        alerts.remove(0)
    }

    fn fields(body: &str) -> Vec<String> {
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

    #[test]
    fn a_critical_violation_triggers_on_its_incident_id() {
        let alert = one(OPEN);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "70646");
        let p = payload(&alert);
        assert_eq!(p.summary, "AppDynamics has detected a problem with Business xxxxxx.");
        // No node in this event: the tier names the source.
        assert_eq!(p.source, "MyTier");
        assert_eq!(p.severity, Severity::Critical);
        assert_eq!(p.timestamp, Some(Utc.with_ymd_and_hms(2023, 4, 3, 2, 4, 55).unwrap()));
        assert_eq!(p.component.as_deref(), Some("MyTier"));
        assert_eq!(p.group.as_deref(), Some("MyApp"));
        assert_eq!(p.class.as_deref(), Some("Business Transaction Health"));
        assert_eq!(p.custom_details.as_ref().unwrap()["policy"], json!("JAVA alert"));
        assert_eq!(alert.links.len(), 1);
        assert!(alert.links[0].href.contains("#location=APP_EVENT_"));
        assert_eq!(
            alert.client_url.as_deref(),
            Some("https://painted20230307xxxxx.saas.appdynamics.com")
        );
    }

    #[test]
    fn the_end_of_the_violation_resolves_the_same_key() {
        let close = one(CLOSE);
        assert_eq!(close.event_action, Action::Resolve);
        assert_eq!(close.dedup_key, one(OPEN).dedup_key);
    }

    #[test]
    fn event_types_map_to_actions_and_severities() {
        for (event_type, action, severity) in [
            ("POLICY_OPEN_WARNING", Action::Trigger, Severity::Warning),
            ("POLICY_OPEN_CRITICAL", Action::Trigger, Severity::Critical),
            ("POLICY_CONTINUES_WARNING", Action::Trigger, Severity::Warning),
            ("POLICY_CONTINUES_CRITICAL", Action::Trigger, Severity::Critical),
            ("POLICY_UPGRADED", Action::Trigger, Severity::Critical),
            ("POLICY_DOWNGRADED", Action::Trigger, Severity::Warning),
            ("POLICY_CLOSE_WARNING", Action::Resolve, Severity::Warning),
            ("POLICY_CLOSE_CRITICAL", Action::Resolve, Severity::Critical),
            ("POLICY_CANCELED_WARNING", Action::Resolve, Severity::Warning),
            ("POLICY_CANCELED_CRITICAL", Action::Resolve, Severity::Critical),
            ("HEALTH_RULE_CLOSE_CRITICAL", Action::Resolve, Severity::Critical),
            ("policy_open_critical", Action::Trigger, Severity::Critical),
            // Not a violation: the event's own severity (ERROR here).
            ("APPLICATION_CRASH", Action::Trigger, Severity::Error),
        ] {
            let body = with(OPEN, |v| v["eventType"] = json!(event_type));
            let alert = one(&body);
            assert_eq!(alert.event_action, action, "{event_type}");
            assert_eq!(payload(&alert).severity, severity, "{event_type}");
        }
        let info = with(OPEN, |v| {
            v["eventType"] = json!("APPLICATION_DEPLOYMENT");
            v["severity"] = json!("INFO");
        });
        assert_eq!(payload(&one(&info)).severity, Severity::Info);
    }

    #[test]
    fn events_without_an_incident_are_keyed_by_their_event_id() {
        let body = with(OPEN, |v| {
            v["eventType"] = json!("APPLICATION_CRASH");
            v["incidentId"] = json!("");
            v["incidentName"] = json!("");
            v["healthRule"] = json!("");
        });
        let alert = one(&body);
        assert_eq!(alert.dedup_key.as_str(), "33021165");
        assert_eq!(payload(&alert).class.as_deref(), Some("APPLICATION_CRASH"));
        // Unrendered references count as absent, numbers as text.
        let body = with(OPEN, |v| {
            v["incidentId"] = json!("${latestEvent.incident.id}");
            v["eventId"] = json!(33021165);
        });
        assert_eq!(one(&body).dedup_key.as_str(), "33021165");
    }

    #[test]
    fn the_summary_drops_html_and_falls_back_to_names() {
        let body = with(OPEN, |v| {
            v["summaryMessage"] = json!(
                "AppDynamics has detected a problem with Business Transaction <b>/checkout</b>.<br><b>Business Transaction Health</b> started violating &amp; is now <b>critical</b>.<br>"
            )
        });
        assert_eq!(
            payload(&one(&body)).summary,
            "AppDynamics has detected a problem with Business Transaction /checkout. Business Transaction Health started violating & is now critical."
        );
        let body = with(OPEN, |v| v["summaryMessage"] = json!("$!{latestEvent.summaryMessage}"));
        assert_eq!(payload(&one(&body)).summary, "Business Transaction Health");
        let body = with(OPEN, |v| {
            v["summaryMessage"] = json!("<br>");
            v["incidentName"] = json!("");
        });
        assert_eq!(payload(&one(&body)).summary, "New Critical Health Rule Violation");
    }

    #[test]
    fn event_times_in_utc_are_read_and_other_zones_left_out() {
        assert_eq!(
            event_time("Mon Apr 03 02:04:55 GMT 2023"),
            Some(Utc.with_ymd_and_hms(2023, 4, 3, 2, 4, 55).unwrap())
        );
        assert_eq!(event_time("Mon Apr 03 02:04:55 PDT 2023"), None);
        assert_eq!(
            event_time("2023-04-03T02:04:55Z"),
            Some(Utc.with_ymd_and_hms(2023, 4, 3, 2, 4, 55).unwrap())
        );
        assert_eq!(
            event_time("1680487495000"),
            Some(Utc.with_ymd_and_hms(2023, 4, 3, 2, 4, 55).unwrap())
        );
        assert_eq!(event_time("soon"), None);
        let body = with(OPEN, |v| v["eventTime"] = json!("Mon Apr 03 02:04:55 PDT 2023"));
        assert_eq!(payload(&one(&body)).timestamp, None);
    }

    #[test]
    fn the_source_prefers_the_node() {
        let body = with(OPEN, |v| v["node"] = json!("node-7"));
        assert_eq!(payload(&one(&body)).source, "node-7");
        let body = with(OPEN, |v| {
            v["tier"] = json!("");
            v["application"] = json!("");
        });
        assert_eq!(payload(&one(&body)).source, "appdynamics");
    }

    #[test]
    fn missing_types_and_ids_and_bad_bodies_are_refused() {
        let body = with(OPEN, |v| {
            v["eventType"] = json!("${latestEvent.eventType}");
            v["incidentId"] = json!("");
            v.as_object_mut().unwrap().remove("eventId");
        });
        assert_eq!(fields(&body), vec!["incidentId", "eventType"]);
        assert_eq!(fields("not json"), vec!["body"]);
        assert_eq!(fields("[{}]"), vec!["body"]);
        // The template as typed is JSON, but nothing in it is rendered.
        assert_eq!(fields(PAYLOAD_TEMPLATE), vec!["incidentId", "eventType"]);
    }

    #[test]
    fn the_published_template_is_the_one_parsed_here() {
        assert!(
            DOC.contains(PAYLOAD_TEMPLATE),
            "docs/providers/appdynamics.md must show PAYLOAD_TEMPLATE"
        );
        assert_eq!(TEMPLATE_FILE.trim_end(), PAYLOAD_TEMPLATE);
        let sample: Value = serde_json::from_str(OPEN).unwrap();
        for key in sample.as_object().unwrap().keys() {
            assert!(
                PAYLOAD_TEMPLATE.contains(&format!("\"{key}\":")),
                "{key} is not in the template"
            );
        }
    }

    #[test]
    fn a_secret_is_checked_in_the_x_tocsin_secret_header() {
        let verify = |headers: &HeaderMap, secret: Option<&str>| {
            AppDynamics.verify(&inbound(headers, OPEN), &integration(secret))
        };
        let mut good = HeaderMap::new();
        good.insert("x-tocsin-secret", HeaderValue::from_static("a-shared-secret"));
        let mut wrong = HeaderMap::new();
        wrong.insert("x-tocsin-secret", HeaderValue::from_static("not-the-secret"));
        assert_eq!(verify(&good, Some("a-shared-secret")), Ok(()));
        assert_eq!(verify(&wrong, Some("a-shared-secret")), Err(SignatureError::Mismatch));
        assert!(matches!(
            verify(&HeaderMap::new(), Some("a-shared-secret")),
            Err(SignatureError::Missing { .. })
        ));
        assert_eq!(verify(&HeaderMap::new(), None), Ok(()));
    }
}
