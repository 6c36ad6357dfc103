//! Dynatrace problem notifications through a "Custom integration" (webhook),
//! with the custom payload Tocsin publishes (docs/providers/dynatrace.md).
//! Dynatrace fills the `{Placeholders}` of that payload for every problem it
//! opens and resolves; `{PID}` is the same on both, so it is the dedup key.
//!
//! The "Send test notification" button fills the same payload with fixed
//! test values (problem 999, "Dynatrace problem notification test run"); such
//! a test is answered 2xx and opens nothing.
//!
//! Dynatrace signs nothing. The integration key travels in an additional HTTP
//! header; an integration with a secret expects it verbatim in the
//! `X-Tocsin-Secret` header.
//!
//! <https://docs.dynatrace.com/docs/analyze-explore-automate/notifications-and-alerting/problem-notifications/webhook-integration>

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, FieldError, Link, Payload, Severity};
use crate::providers::header_secret::verify_secret_header;
use crate::providers::{Inbound, InvalidPayload, Provider, ProviderKind};
use crate::signature::SignatureError;

pub struct Dynatrace;

/// The custom payload to paste into the integration; the doc page shows the
/// same text, and the samples are its output. `{ImpactedEntities}` is a JSON
/// array and takes no quotes.
pub const PAYLOAD_TEMPLATE: &str = r#"{
  "PID": "{PID}",
  "ProblemID": "{ProblemID}",
  "State": "{State}",
  "ProblemTitle": "{ProblemTitle}",
  "ProblemSeverity": "{ProblemSeverity}",
  "ProblemImpact": "{ProblemImpact}",
  "ProblemURL": "{ProblemURL}",
  "ImpactedEntity": "{ImpactedEntity}",
  "ImpactedEntities": {ImpactedEntities},
  "Tags": "{Tags}",
  "ProblemDetailsText": "{ProblemDetailsText}"
}"#;

/// The title of Dynatrace's test notification (its documented test values:
/// problem 999, PID 99999, this title).
const TEST_TITLE: &str = "Dynatrace problem notification test run";
const TEST_PID: &str = "99999";
const TEST_PROBLEM_ID: &str = "999";

const INVALID: &str = "the Dynatrace problem notification is invalid";

const SOURCE: &str = "dynatrace";

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Notification {
    #[serde(rename = "PID")]
    pid: Option<Value>,
    #[serde(rename = "ProblemID")]
    problem_id: Option<Value>,
    #[serde(rename = "State")]
    state: Option<String>,
    #[serde(rename = "ProblemTitle")]
    problem_title: Option<String>,
    #[serde(rename = "ProblemSeverity")]
    problem_severity: Option<String>,
    #[serde(rename = "ProblemImpact")]
    problem_impact: Option<String>,
    // Dynatrace's own example template names it "Problem URL".
    #[serde(rename = "ProblemURL", alias = "Problem URL")]
    problem_url: Option<String>,
    #[serde(rename = "ImpactedEntity")]
    impacted_entity: Option<String>,
    // Raw: an older Dynatrace may leave the placeholder as a string.
    #[serde(rename = "ImpactedEntities")]
    impacted_entities: Option<Value>,
    #[serde(rename = "Tags")]
    tags: Option<String>,
}

impl Provider for Dynatrace {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Dynatrace
    }

    /// Dynatrace can send fixed headers but cannot sign a body: the secret
    /// itself, compared in constant time.
    fn verify(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<(), SignatureError> {
        verify_secret_header(inbound.headers, integration.secret.as_ref())
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let body = object_body(inbound.body)?;
        let notification: Notification = deserialize(&body)?;
        let pid = notification.pid.as_ref().and_then(text_of);
        let problem_id = notification.problem_id.as_ref().and_then(text_of);
        let title = filled(notification.problem_title.as_deref());
        if is_test(title, pid.as_deref(), problem_id.as_deref()) {
            tracing::info!("dynatrace test notification: accepted, nothing to do");
            return Ok(Vec::new());
        }

        let mut errors = Vec::new();
        // PID is the problem's id in every notification; the display id
        // ({ProblemID}) names the same problem when a template lacks {PID}.
        let dedup_key = match pid.as_deref().or(problem_id.as_deref()) {
            Some(id) => DedupKey::parse(id).map_err(|e| errors.push(e.at("PID"))).ok(),
            None => {
                errors.push(FieldError::new(
                    "PID",
                    "is missing: paste the custom payload from Tocsin's Dynatrace page",
                ));
                None
            }
        };
        let action = action_of(notification.state.as_deref())
            .map_err(|e| errors.push(e))
            .ok();
        let (Some(dedup_key), Some(event_action), true) = (dedup_key, action, errors.is_empty()) else {
            return Err(InvalidPayload::new(INVALID, errors));
        };

        let entities = entities_of(notification.impacted_entities.as_ref());
        let first_entity = entities.first();
        let url = filled(notification.problem_url.as_deref());
        let summary = match (title, problem_id.as_deref()) {
            (Some(title), _) => title.to_owned(),
            (None, Some(id)) => format!("Dynatrace problem {id}"),
            (None, None) => "Dynatrace problem".to_owned(),
        };
        let source = first_entity
            .and_then(|e| e.name)
            .or_else(|| filled(notification.impacted_entity.as_deref()))
            .unwrap_or(SOURCE);
        Ok(vec![Alert {
            event_action,
            dedup_key,
            payload: Some(Payload {
                summary: Payload::truncate_summary(&summary),
                source: source.to_owned(),
                severity: severity_of(filled(notification.problem_severity.as_deref())),
                // Dynatrace gives no time for the event; the time received is.
                timestamp: None,
                component: first_entity.and_then(|e| e.kind).map(str::to_owned),
                group: filled(notification.problem_impact.as_deref()).map(str::to_owned),
                class: filled(notification.problem_severity.as_deref()).map(str::to_owned),
                custom_details: Some(details_of(body, notification.tags.as_deref())),
            }),
            links: url
                .map(|href| Link {
                    href: href.to_owned(),
                    text: Some("Dynatrace problem".to_owned()),
                })
                .into_iter()
                .collect(),
            images: Vec::new(),
            client: Some("Dynatrace".to_owned()),
            client_url: url.map(str::to_owned),
        }])
    }
}

fn is_test(title: Option<&str>, pid: Option<&str>, problem_id: Option<&str>) -> bool {
    title == Some(TEST_TITLE) || (pid == Some(TEST_PID) && problem_id == Some(TEST_PROBLEM_ID))
}

/// OPEN opens; RESOLVED closes; MERGED means the problem was merged into
/// another one, which carries on under its own PID, so this one is over.
fn action_of(state: Option<&str>) -> Result<Action, FieldError> {
    const FIELD: &str = "State";
    match filled(state).map(str::to_ascii_uppercase).as_deref() {
        Some("OPEN") => Ok(Action::Trigger),
        Some("RESOLVED" | "MERGED") => Ok(Action::Resolve),
        Some(other) => Err(FieldError::new(
            FIELD,
            format!("'{other}' is not one of OPEN, RESOLVED, MERGED"),
        )),
        None => Err(FieldError::new(FIELD, "is missing (OPEN, RESOLVED or MERGED)")),
    }
}

/// Dynatrace's severity is a category, not a level: lost availability pages,
/// errors are errors, slowness and saturation are warnings.
fn severity_of(severity: Option<&str>) -> Severity {
    match severity.map(str::to_ascii_uppercase).as_deref() {
        Some("AVAILABILITY") => Severity::Critical,
        Some("ERROR" | "MONITORING_UNAVAILABLE") => Severity::Error,
        Some("PERFORMANCE" | "RESOURCE_CONTENTION" | "CUSTOM_ALERT") => Severity::Warning,
        Some("INFO") => Severity::Info,
        _ => Severity::Warning,
    }
}

/// One entry of `{ImpactedEntities}`: `{"type", "name", "entity"}`.
struct Entity<'a> {
    kind: Option<&'a str>,
    name: Option<&'a str>,
}

fn entities_of(value: Option<&Value>) -> Vec<Entity<'_>> {
    let Some(Value::Array(items)) = value else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| Entity {
            kind: filled(item.get("type").and_then(Value::as_str)),
            name: filled(item.get("name").and_then(Value::as_str)),
        })
        .filter(|e| e.kind.is_some() || e.name.is_some())
        .collect()
}

/// The payload as received, with `Tags` also as a list.
fn details_of(mut body: Value, tags: Option<&str>) -> Value {
    let tags: Vec<&str> = filled(tags)
        .map(|t| t.split(',').filter_map(|tag| filled(Some(tag))).collect())
        .unwrap_or_default();
    if let Some(object) = body.as_object_mut() {
        object.insert("TagList".to_owned(), serde_json::json!(tags));
    }
    body
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => filled(Some(s)).map(str::to_owned),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A value Dynatrace filled in: not blank, and not a `{Placeholder}` it
/// left as typed (one this Dynatrace version does not know).
fn filled(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty() && !is_placeholder(v))
}

fn is_placeholder(value: &str) -> bool {
    value
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .is_some_and(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The body as one JSON object.
fn object_body(body: &[u8]) -> Result<Value, InvalidPayload> {
    let value: Value = serde_json::from_slice(body).map_err(InvalidPayload::unreadable)?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(InvalidPayload::field(
            "body",
            "must be one JSON object (Tocsin's Dynatrace custom payload)",
        ))
    }
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
    use chrono::Utc;
    use http::{HeaderMap, HeaderValue};
    use serde_json::json;

    use super::*;

    const OPEN: &str = include_str!("../../../../events/dynatrace/open.json");
    const RESOLVED: &str = include_str!("../../../../events/dynatrace/resolved.json");
    const TEST: &str = include_str!("../../../../events/dynatrace/test-notification.json");
    const DOC: &str = include_str!("../../../../docs/providers/dynatrace.md");
    const TEMPLATE_FILE: &str = include_str!("../../../../events/dynatrace/template.txt");

    fn integration(secret: Option<&str>) -> Integration {
        crate::providers::test_support::integration(
            "checkout-dynatrace",
            "checkout",
            ProviderKind::Dynatrace,
            "77777777777777777777777777777777",
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
        Dynatrace.normalize(&inbound(&headers, body), &integration(None))
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
    fn an_open_problem_triggers_on_its_pid() {
        let alert = one(OPEN);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "93a5-3fas-a09d-8ckf");
        let p = payload(&alert);
        assert_eq!(p.summary, "Response Time Degradation");
        assert_eq!(p.source, "carts-primary");
        assert_eq!(p.severity, Severity::Warning);
        assert_eq!(p.class.as_deref(), Some("PERFORMANCE"));
        assert_eq!(p.group.as_deref(), Some("SERVICE"));
        assert_eq!(p.component.as_deref(), Some("SERVICE"));
        assert_eq!(p.timestamp, None);
        let details = p.custom_details.as_ref().unwrap();
        assert_eq!(details["ProblemID"], json!("ab81-941c-f198"));
        assert_eq!(
            details["TagList"],
            json!(["keptn_project:sockshop", "keptn_stage:production"])
        );
        assert_eq!(alert.links.len(), 1);
        assert!(alert.links[0].href.ends_with("pid=93a5-3fas-a09d-8ckf"));
        assert_eq!(alert.client.as_deref(), Some("Dynatrace"));
    }

    #[test]
    fn the_resolved_problem_resolves_the_same_key() {
        let resolved = one(RESOLVED);
        assert_eq!(resolved.event_action, Action::Resolve);
        assert_eq!(resolved.dedup_key, one(OPEN).dedup_key);
    }

    #[test]
    fn a_merged_problem_resolves_its_own_key() {
        let merged = with(OPEN, |v| v["State"] = json!("MERGED"));
        let alert = one(&merged);
        assert_eq!(alert.event_action, Action::Resolve);
        assert_eq!(alert.dedup_key, one(OPEN).dedup_key);
    }

    #[test]
    fn the_send_test_notification_payload_is_accepted_with_nothing_to_do() {
        assert_eq!(normalize(TEST).unwrap(), Vec::new());
        // Recognised by its ids as well as by its title.
        let retitled = with(TEST, |v| v["ProblemTitle"] = json!("Something else"));
        assert_eq!(normalize(&retitled).unwrap(), Vec::new());
        // Real problems with either id alone are real.
        let real = with(OPEN, |v| v["ProblemID"] = json!("999"));
        assert_eq!(one(&real).event_action, Action::Trigger);
    }

    #[test]
    fn severity_categories_map_to_levels() {
        for (category, expected) in [
            ("AVAILABILITY", Severity::Critical),
            ("ERROR", Severity::Error),
            ("MONITORING_UNAVAILABLE", Severity::Error),
            ("PERFORMANCE", Severity::Warning),
            ("RESOURCE_CONTENTION", Severity::Warning),
            ("CUSTOM_ALERT", Severity::Warning),
            ("INFO", Severity::Info),
            ("availability", Severity::Critical),
            ("{ProblemSeverity}", Severity::Warning),
        ] {
            let body = with(OPEN, |v| v["ProblemSeverity"] = json!(category));
            assert_eq!(payload(&one(&body)).severity, expected, "{category}");
        }
    }

    #[test]
    fn placeholders_left_unfilled_count_as_absent() {
        let body = with(OPEN, |v| {
            v["PID"] = json!("{PID}");
            v["ImpactedEntities"] = json!("{ImpactedEntities}");
            v["ImpactedEntity"] = json!("{ImpactedEntity}");
        });
        let alert = one(&body);
        // Without a PID the display id keys the problem.
        assert_eq!(alert.dedup_key.as_str(), "ab81-941c-f198");
        assert_eq!(payload(&alert).source, "dynatrace");
        let body = with(OPEN, |v| {
            v["ImpactedEntities"] = json!([]);
        });
        assert_eq!(payload(&one(&body)).source, "carts-primary");
        assert_eq!(payload(&one(&body)).component, None);
    }

    #[test]
    fn missing_or_unknown_states_and_ids_are_refused() {
        let body = with(OPEN, |v| {
            v.as_object_mut().unwrap().remove("PID");
            v.as_object_mut().unwrap().remove("ProblemID");
            v["State"] = json!("CLOSED");
        });
        assert_eq!(fields(&body), vec!["PID", "State"]);
        let body = with(OPEN, |v| {
            v.as_object_mut().unwrap().remove("State");
        });
        assert_eq!(fields(&body), vec!["State"]);
        assert_eq!(fields(&with(OPEN, |v| v["State"] = json!(1))), vec!["State"]);
        assert_eq!(fields("{\"State\": \"OPEN\""), vec!["body"]);
        assert_eq!(fields("[]"), vec!["body"]);
    }

    #[test]
    fn the_published_payload_is_the_one_parsed_here() {
        assert!(
            DOC.contains(PAYLOAD_TEMPLATE),
            "docs/providers/dynatrace.md must show PAYLOAD_TEMPLATE"
        );
        assert_eq!(TEMPLATE_FILE.trim_end(), PAYLOAD_TEMPLATE);
        let sample: Value = serde_json::from_str(OPEN).unwrap();
        for key in sample.as_object().unwrap().keys() {
            assert!(
                PAYLOAD_TEMPLATE.contains(&format!("\"{key}\":")),
                "{key} is not in the payload"
            );
        }
        // The payload unfilled (as typed) is refused: no state was filled in.
        assert_eq!(
            fields(&PAYLOAD_TEMPLATE.replace("{ImpactedEntities}", "[]")),
            vec!["PID", "State"]
        );
    }

    #[test]
    fn a_secret_is_checked_in_the_x_tocsin_secret_header() {
        let verify =
            |headers: &HeaderMap, secret: Option<&str>| Dynatrace.verify(&inbound(headers, OPEN), &integration(secret));
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
