//! New Relic alerts through a workflow's webhook destination, with the
//! payload template Tocsin publishes (docs/providers/newrelic.md). New Relic
//! renders the template with Handlebars for every issue event; the issue id
//! stays the same from CREATED to CLOSED, so it is the dedup key.
//!
//! New Relic signs nothing. The integration key travels as the destination's
//! bearer token; an integration with a secret expects it verbatim in the
//! `X-Tocsin-Secret` custom header.
//!
//! <https://docs.newrelic.com/docs/alerts/get-notified/custom-variables-alert-event-workflows/>

use chrono::{DateTime, TimeZone, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, FieldError, Link, Payload, Severity};
use crate::providers::header_secret::verify_secret_header;
use crate::providers::{Inbound, InvalidPayload, Provider, ProviderKind};
use crate::signature::SignatureError;

pub struct NewRelic;

/// The payload template to paste into the workflow's webhook "Payload"
/// field; the doc page shows the same text, and the samples are its output.
pub const PAYLOAD_TEMPLATE: &str = r#"{
  "issueId": {{json issueId}},
  "state": {{json state}},
  "isAcknowledged": {{#if isAcknowledged}}{{json isAcknowledged}}{{else}}false{{/if}},
  "priority": {{json priority}},
  "title": {{json issueTitle}},
  "issuePageUrl": {{json issuePageUrl}},
  "conditionNames": {{json accumulations.conditionName}},
  "policyNames": {{json accumulations.policyName}},
  "entityNames": {{#if entitiesData}}{{#if entitiesData.names}}{{json entitiesData.names}}{{else}}[]{{/if}}{{else}}[]{{/if}},
  "triggerEvent": {{json triggerEvent}},
  "totalIncidents": {{json totalIncidents}},
  "createdAt": {{createdAt}},
  "updatedAt": {{updatedAt}},
  "closedAt": {{#if closedAt}}{{closedAt}}{{else}}null{{/if}}
}"#;

const INVALID: &str = "the New Relic notification is invalid";

const SOURCE: &str = "newrelic";

/// The body the template renders. Values New Relic gives as lists
/// (conditions, policies, entities) stay raw so that a stray type in one of
/// them never refuses a page.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Notification {
    issue_id: Option<Value>,
    state: Option<String>,
    is_acknowledged: Option<Value>,
    priority: Option<String>,
    title: Option<String>,
    issue_page_url: Option<String>,
    condition_names: Option<Value>,
    policy_names: Option<Value>,
    entity_names: Option<Value>,
    trigger_event: Option<String>,
    // Milliseconds since the epoch.
    created_at: Option<Value>,
    updated_at: Option<Value>,
    closed_at: Option<Value>,
}

impl Provider for NewRelic {
    fn kind(&self) -> ProviderKind {
        ProviderKind::NewRelic
    }

    /// New Relic can send fixed headers but cannot sign a body: the secret
    /// itself, compared in constant time.
    fn verify(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<(), SignatureError> {
        verify_secret_header(inbound.headers, integration.secret.as_ref())
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let body = object_body(inbound.body)?;
        let notification: Notification = deserialize(&body)?;
        tracing::debug!(
            state = notification.state.as_deref().unwrap_or(""),
            trigger_event = notification.trigger_event.as_deref().unwrap_or(""),
            "new relic issue notification"
        );

        let mut errors = Vec::new();
        let dedup_key = match notification.issue_id.as_ref().and_then(text_of) {
            Some(id) => DedupKey::parse(&id).map_err(|e| errors.push(e.at("issueId"))).ok(),
            None => {
                errors.push(FieldError::new(
                    "issueId",
                    "is missing: paste the payload template from Tocsin's New Relic page",
                ));
                None
            }
        };
        let action = action_of(&notification).map_err(|e| errors.push(e)).ok();
        let (Some(dedup_key), Some(event_action), true) = (dedup_key, action, errors.is_empty()) else {
            return Err(InvalidPayload::new(INVALID, errors));
        };

        let conditions = texts(notification.condition_names.as_ref());
        let policies = texts(notification.policy_names.as_ref());
        let entities = texts(notification.entity_names.as_ref());
        let page = non_blank(notification.issue_page_url.as_deref());
        Ok(vec![Alert {
            event_action,
            dedup_key,
            payload: Some(Payload {
                summary: Payload::truncate_summary(&summary_of(&notification, &conditions)),
                source: entities.first().copied().unwrap_or(SOURCE).to_owned(),
                severity: severity_of(notification.priority.as_deref()),
                timestamp: timestamp_of(&notification, event_action),
                component: None,
                group: policies.first().map(|p| (*p).to_owned()),
                class: conditions.first().map(|c| (*c).to_owned()),
                custom_details: Some(body),
            }),
            links: page
                .map(|href| Link {
                    href: href.to_owned(),
                    text: Some("New Relic issue".to_owned()),
                })
                .into_iter()
                .collect(),
            images: Vec::new(),
            client: Some("New Relic".to_owned()),
            client_url: page.map(str::to_owned),
        }])
    }
}

/// The issue's life cycle onto Tocsin's actions. New Relic keeps an
/// acknowledged issue ACTIVATED and says so in `isAcknowledged`; newer
/// accounts also name ACKNOWLEDGED and INVESTIGATING states.
fn action_of(notification: &Notification) -> Result<Action, FieldError> {
    const FIELD: &str = "state";
    let acknowledged = notification.is_acknowledged.as_ref().is_some_and(is_true);
    match notification
        .state
        .as_deref()
        .map(|s| s.trim().to_ascii_uppercase())
        .as_deref()
    {
        Some("CLOSED") => Ok(Action::Resolve),
        Some("ACKNOWLEDGED" | "INVESTIGATING") => Ok(Action::Acknowledge),
        Some("CREATED" | "ACTIVATED") if acknowledged => Ok(Action::Acknowledge),
        Some("CREATED" | "ACTIVATED") => Ok(Action::Trigger),
        Some(other) => Err(FieldError::new(
            FIELD,
            format!("'{other}' is not one of CREATED, ACTIVATED, ACKNOWLEDGED, INVESTIGATING, CLOSED"),
        )),
        None => Err(FieldError::new(
            FIELD,
            "is missing (CREATED, ACTIVATED, ACKNOWLEDGED or CLOSED)",
        )),
    }
}

/// New Relic's four priorities; HIGH is what a condition's warning
/// threshold raises.
fn severity_of(priority: Option<&str>) -> Severity {
    match priority.map(|p| p.trim().to_ascii_uppercase()).as_deref() {
        Some("CRITICAL") => Severity::Critical,
        Some("HIGH") => Severity::Error,
        Some("MEDIUM") => Severity::Warning,
        Some("LOW") => Severity::Info,
        _ => Severity::Warning,
    }
}

/// When the issue was created, acknowledged (last updated) or closed.
fn timestamp_of(notification: &Notification, action: Action) -> Option<DateTime<Utc>> {
    let millis = |value: &Option<Value>| value.as_ref().and_then(epoch_millis);
    match action {
        Action::Trigger => millis(&notification.created_at),
        Action::Acknowledge => millis(&notification.updated_at),
        Action::Resolve => millis(&notification.closed_at).or_else(|| millis(&notification.updated_at)),
    }
}

fn summary_of(notification: &Notification, conditions: &[&str]) -> String {
    non_blank(notification.title.as_deref())
        .or_else(|| conditions.first().copied())
        .unwrap_or("New Relic issue")
        .to_owned()
}

fn epoch_millis(value: &Value) -> Option<DateTime<Utc>> {
    let millis = match value {
        Value::Number(n) => n.as_i64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    if millis <= 0 {
        return None;
    }
    Utc.timestamp_millis_opt(millis).single()
}

/// `true`, or "true" from a template that quoted it.
fn is_true(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::String(s) => s.trim().eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// The non-blank strings of a list (or of a lone string).
fn texts(value: Option<&Value>) -> Vec<&str> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(|v| non_blank(v.as_str())).collect(),
        Some(Value::String(s)) => non_blank(Some(s)).into_iter().collect(),
        _ => Vec::new(),
    }
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => non_blank(Some(s)).map(str::to_owned),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn non_blank(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// The body as one JSON object.
fn object_body(body: &[u8]) -> Result<Value, InvalidPayload> {
    let value: Value = serde_json::from_slice(body).map_err(InvalidPayload::unreadable)?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(InvalidPayload::field(
            "body",
            "must be one JSON object (Tocsin's New Relic payload template)",
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
    use http::{HeaderMap, HeaderValue};
    use serde_json::json;

    use super::*;

    use crate::signature::SignatureError;

    const ACTIVATED: &str = include_str!("../../../../events/newrelic/activated.json");
    const ACKNOWLEDGED: &str = include_str!("../../../../events/newrelic/acknowledged.json");
    const CLOSED: &str = include_str!("../../../../events/newrelic/closed.json");
    const DOC: &str = include_str!("../../../../docs/providers/newrelic.md");
    const TEMPLATE_FILE: &str = include_str!("../../../../events/newrelic/template.hbs");

    fn integration(secret: Option<&str>) -> Integration {
        crate::providers::test_support::integration(
            "checkout-newrelic",
            "checkout",
            ProviderKind::NewRelic,
            "66666666666666666666666666666666",
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
        NewRelic.normalize(&inbound(&headers, body), &integration(None))
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
    fn an_activated_issue_triggers_on_its_issue_id() {
        let alert = one(ACTIVATED);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "c5faa7e6-7b54-402d-af79-f99601e0278c");
        let p = payload(&alert);
        assert_eq!(
            p.summary,
            "zulip_app query result is > 1.0 for 1 minutes on 'Zulip Server Low Storage'"
        );
        assert_eq!(p.source, "zulip_app");
        assert_eq!(p.severity, Severity::Critical);
        assert_eq!(p.timestamp, Some(Utc.timestamp_millis_opt(1_713_755_131_352).unwrap()));
        assert_eq!(p.class.as_deref(), Some("Zulip Server Low Storage"));
        assert_eq!(p.group.as_deref(), Some("Golden Signals"));
        assert_eq!(
            p.custom_details.as_ref().unwrap()["triggerEvent"],
            json!("STATE_CHANGE")
        );
        assert_eq!(alert.links.len(), 1);
        assert!(alert.links[0]
            .href
            .contains("/issues/c5faa7e6-7b54-402d-af79-f99601e0278c"));
        assert_eq!(alert.client.as_deref(), Some("New Relic"));
    }

    #[test]
    fn the_closed_issue_resolves_the_same_key_at_its_close_time() {
        let closed = one(CLOSED);
        assert_eq!(closed.event_action, Action::Resolve);
        assert_eq!(closed.dedup_key, one(ACTIVATED).dedup_key);
        assert_eq!(
            payload(&closed).timestamp,
            Some(Utc.timestamp_millis_opt(1_713_770_657_383).unwrap())
        );
        // Without closedAt, the last update is when it closed.
        let body = with(CLOSED, |v| v["closedAt"] = Value::Null);
        assert_eq!(
            payload(&one(&body)).timestamp,
            Some(Utc.timestamp_millis_opt(1_713_770_657_383).unwrap())
        );
    }

    #[test]
    fn an_acknowledged_issue_acknowledges_at_its_update_time() {
        let alert = one(ACKNOWLEDGED);
        assert_eq!(alert.event_action, Action::Acknowledge);
        assert_eq!(alert.dedup_key.as_str(), "13bbcdca-f0b6-470d-b0be-b34583c58869");
        assert_eq!(payload(&alert).severity, Severity::Error);
        assert_eq!(
            payload(&alert).timestamp,
            Some(Utc.timestamp_millis_opt(1_713_770_077_412).unwrap())
        );
        // The same notification before anyone acknowledged it is a trigger.
        let unacked = with(ACKNOWLEDGED, |v| v["isAcknowledged"] = json!(false));
        assert_eq!(one(&unacked).event_action, Action::Trigger);
        let quoted = with(ACKNOWLEDGED, |v| v["isAcknowledged"] = json!("true"));
        assert_eq!(one(&quoted).event_action, Action::Acknowledge);
    }

    #[test]
    fn every_state_maps_to_its_action() {
        for (state, acked, expected) in [
            ("CREATED", false, Action::Trigger),
            ("ACTIVATED", false, Action::Trigger),
            ("activated", false, Action::Trigger),
            ("ACTIVATED", true, Action::Acknowledge),
            ("ACKNOWLEDGED", false, Action::Acknowledge),
            ("INVESTIGATING", true, Action::Acknowledge),
            ("CLOSED", true, Action::Resolve),
            ("CLOSED", false, Action::Resolve),
        ] {
            let body = with(ACTIVATED, |v| {
                v["state"] = json!(state);
                v["isAcknowledged"] = json!(acked);
            });
            assert_eq!(one(&body).event_action, expected, "{state} acked={acked}");
        }
        let body = with(ACTIVATED, |v| v["state"] = json!("DEACTIVATED"));
        assert_eq!(fields(&body), vec!["state"]);
    }

    #[test]
    fn priorities_map_to_severities() {
        for (priority, expected) in [
            ("CRITICAL", Severity::Critical),
            ("HIGH", Severity::Error),
            ("MEDIUM", Severity::Warning),
            ("LOW", Severity::Info),
            ("low", Severity::Info),
            ("URGENT", Severity::Warning),
        ] {
            let body = with(ACTIVATED, |v| v["priority"] = json!(priority));
            assert_eq!(payload(&one(&body)).severity, expected, "{priority}");
        }
    }

    #[test]
    fn fallbacks_for_an_issue_without_title_or_entities() {
        let body = with(ACTIVATED, |v| {
            v["title"] = Value::Null;
            v["entityNames"] = json!([]);
        });
        let p = payload(&one(&body)).clone();
        assert_eq!(p.summary, "Zulip Server Low Storage");
        assert_eq!(p.source, "newrelic");
        let body = with(ACTIVATED, |v| {
            v["title"] = json!(" ");
            v["conditionNames"] = Value::Null;
        });
        assert_eq!(payload(&one(&body)).summary, "New Relic issue");
    }

    #[test]
    fn missing_ids_and_states_and_bad_bodies_are_refused() {
        let body = with(ACTIVATED, |v| {
            v.as_object_mut().unwrap().remove("issueId");
            v.as_object_mut().unwrap().remove("state");
        });
        assert_eq!(fields(&body), vec!["issueId", "state"]);
        assert_eq!(fields(&with(ACTIVATED, |v| v["priority"] = json!(1))), vec!["priority"]);
        assert_eq!(fields("id: 1"), vec!["body"]);
        assert_eq!(fields("[]"), vec!["body"]);
        // A default (non-Tocsin) template has no issueId.
        assert_eq!(
            fields(r#"{"id": "x", "state": "ACTIVATED", "title": "t"}"#),
            vec!["issueId"]
        );
    }

    #[test]
    fn the_published_template_renders_to_the_fields_parsed_here() {
        // The doc page shows the template the code describes.
        assert!(
            DOC.contains(PAYLOAD_TEMPLATE),
            "docs/providers/newrelic.md must show PAYLOAD_TEMPLATE"
        );
        assert_eq!(TEMPLATE_FILE.trim_end(), PAYLOAD_TEMPLATE);
        let sample: Value = serde_json::from_str(ACTIVATED).unwrap();
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
            NewRelic.verify(&inbound(headers, ACTIVATED), &integration(secret))
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
        // No secret configured: nothing to check.
        assert_eq!(verify(&HeaderMap::new(), None), Ok(()));
    }
}
