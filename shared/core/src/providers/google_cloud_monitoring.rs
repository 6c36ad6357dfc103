//! Google Cloud Monitoring's webhook notification channel (payload version
//! 1.2). Each notification is one incident; its `incident_id` is the same on
//! the open and the closed notification, so it is the dedup key.
//!
//! The channel sends no signature. The integration key goes in the endpoint
//! URL (`?token=KEY`); an integration with a secret expects it as the
//! password of the channel's HTTP Basic authentication.
//!
//! <https://cloud.google.com/monitoring/support/notification-options#webhooks>

use chrono::{DateTime, TimeZone, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, FieldError, Link, Payload, Severity};
use crate::providers::header_secret::verify_basic_password;
use crate::providers::{Inbound, InvalidPayload, Provider, ProviderKind};
use crate::signature::SignatureError;

pub struct GoogleCloudMonitoring;

/// The `version` of the notification the console's "Test connection" sends:
/// real notifications carry a schema version ("1.2").
const TEST_VERSION: &str = "test";

const INVALID: &str = "the Cloud Monitoring notification is invalid";

const SOURCE: &str = "google-cloud-monitoring";

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Notification {
    version: Option<String>,
    // Kept raw for custom_details, and parsed on its own so that a type error
    // is reported as `incident.<field>`.
    incident: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Incident {
    // Both are documented as strings; numbers are accepted all the same.
    incident_id: Option<Value>,
    state: Option<String>,
    severity: Option<String>,
    policy_name: Option<String>,
    condition_name: Option<String>,
    summary: Option<String>,
    url: Option<String>,
    // Seconds since the epoch; `null` while open, 0 in test notifications.
    started_at: Option<i64>,
    ended_at: Option<i64>,
    resource_name: Option<String>,
    resource_display_name: Option<String>,
    resource_type_display_name: Option<String>,
    resource: Option<Resource>,
    scoping_project_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Resource {
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl Provider for GoogleCloudMonitoring {
    fn kind(&self) -> ProviderKind {
        ProviderKind::GoogleCloudMonitoring
    }

    /// The channel's own protection is HTTP Basic authentication: its
    /// password is the secret, compared in constant time.
    fn verify(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<(), SignatureError> {
        verify_basic_password(inbound.headers, integration.secret.as_ref())
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let body = object_body(inbound.body)?;
        let notification: Notification = deserialize(&body, "")?;
        let version = non_blank(notification.version.as_deref());
        if version.is_some_and(|v| v.eq_ignore_ascii_case(TEST_VERSION)) {
            tracing::info!("cloud monitoring test notification: accepted, nothing to do");
            return Ok(Vec::new());
        }
        let raw = match notification.incident {
            Some(value @ Value::Object(_)) => value,
            _ => {
                return Err(InvalidPayload::field(
                    "incident",
                    "is missing: Cloud Monitoring webhooks carry one incident object",
                ))
            }
        };
        let incident: Incident = deserialize(&raw, "incident.")?;
        tracing::debug!(version = version.unwrap_or(""), "cloud monitoring notification");

        let mut errors = Vec::new();
        let dedup_key = match incident.incident_id.as_ref().and_then(text_of) {
            Some(id) => DedupKey::parse(&id)
                .map_err(|e| errors.push(e.at("incident.incident_id")))
                .ok(),
            None => {
                errors.push(FieldError::new("incident.incident_id", "is missing"));
                None
            }
        };
        let action = action_of(incident.state.as_deref()).map_err(|e| errors.push(e)).ok();
        let (Some(dedup_key), Some(event_action), true) = (dedup_key, action, errors.is_empty()) else {
            return Err(InvalidPayload::new(INVALID, errors));
        };

        let timestamp = match event_action {
            Action::Resolve => incident.ended_at,
            _ => incident.started_at,
        }
        .and_then(epoch_seconds);
        let url = non_blank(incident.url.as_deref());
        Ok(vec![Alert {
            event_action,
            dedup_key,
            payload: Some(Payload {
                summary: Payload::truncate_summary(&summary_of(&incident)),
                source: source_of(&incident),
                severity: severity_of(incident.severity.as_deref()),
                timestamp,
                component: non_blank(incident.resource_type_display_name.as_deref())
                    .or_else(|| incident.resource.as_ref().and_then(|r| non_blank(r.kind.as_deref())))
                    .map(str::to_owned),
                group: non_blank(incident.scoping_project_id.as_deref()).map(str::to_owned),
                class: non_blank(incident.condition_name.as_deref()).map(str::to_owned),
                custom_details: Some(serde_json::json!({
                    "version": version,
                    "incident": raw,
                })),
            }),
            links: url
                .map(|href| Link {
                    href: href.to_owned(),
                    text: Some("Cloud Monitoring incident".to_owned()),
                })
                .into_iter()
                .collect(),
            images: Vec::new(),
            client: Some("Google Cloud Monitoring".to_owned()),
            client_url: url.map(str::to_owned),
        }])
    }
}

/// `open` and `closed`, in any case (the test sends "OPEN"); acknowledged
/// incidents, where notified, acknowledge.
fn action_of(state: Option<&str>) -> Result<Action, FieldError> {
    const FIELD: &str = "incident.state";
    match state.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("open") => Ok(Action::Trigger),
        Some("closed") => Ok(Action::Resolve),
        Some("acknowledged") => Ok(Action::Acknowledge),
        Some(other) => Err(FieldError::new(
            FIELD,
            format!("'{other}' is not one of open, closed, acknowledged"),
        )),
        None => Err(FieldError::new(FIELD, "is missing (open or closed)")),
    }
}

/// The policy's severity where it has one. Policies without one ("No
/// severity") are warnings: seen, without paging anyone at critical.
fn severity_of(severity: Option<&str>) -> Severity {
    match severity.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("critical") => Severity::Critical,
        Some("error") => Severity::Error,
        Some("warning") => Severity::Warning,
        _ => Severity::Warning,
    }
}

fn summary_of(incident: &Incident) -> String {
    if let Some(summary) = non_blank(incident.summary.as_deref()) {
        return summary.to_owned();
    }
    let policy = non_blank(incident.policy_name.as_deref());
    let condition = non_blank(incident.condition_name.as_deref());
    match (policy, condition) {
        (Some(policy), Some(condition)) => format!("{policy}: {condition}"),
        (Some(name), None) | (None, Some(name)) => name.to_owned(),
        (None, None) => "Cloud Monitoring incident".to_owned(),
    }
}

fn source_of(incident: &Incident) -> String {
    non_blank(incident.resource_display_name.as_deref())
        .or_else(|| non_blank(incident.resource_name.as_deref()))
        .or_else(|| incident.resource.as_ref().and_then(|r| non_blank(r.kind.as_deref())))
        .or_else(|| non_blank(incident.scoping_project_id.as_deref()))
        .unwrap_or(SOURCE)
        .to_owned()
}

/// 0 is how the test notification says "no time"; it never is a real one.
fn epoch_seconds(seconds: i64) -> Option<DateTime<Utc>> {
    if seconds <= 0 {
        return None;
    }
    Utc.timestamp_opt(seconds, 0).single()
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
            "must be one JSON object (a Cloud Monitoring webhook notification)",
        ))
    }
}

/// Deserializes with the path of a type error in the field name.
fn deserialize<T: DeserializeOwned>(value: &Value, prefix: &str) -> Result<T, InvalidPayload> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        InvalidPayload::field(
            format!("{prefix}{path}"),
            format!("has the wrong type: {}", error.into_inner()),
        )
    })
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};
    use serde_json::json;

    use super::*;
    use crate::auth::key_from_request;

    use crate::signature::SignatureError;

    const OPEN: &str = include_str!("../../../../events/google-cloud-monitoring/open.json");
    const CLOSED: &str = include_str!("../../../../events/google-cloud-monitoring/closed.json");
    const UPTIME_OPEN: &str = include_str!("../../../../events/google-cloud-monitoring/uptime-open.json");
    const UPTIME_CLOSED: &str = include_str!("../../../../events/google-cloud-monitoring/uptime-closed.json");
    const TEST: &str = include_str!("../../../../events/google-cloud-monitoring/test-connection.json");

    fn integration(secret: Option<&str>) -> Integration {
        crate::providers::test_support::integration(
            "checkout-gcm",
            "checkout",
            ProviderKind::GoogleCloudMonitoring,
            "55555555555555555555555555555555",
            secret,
        )
    }

    fn inbound<'a>(headers: &'a HeaderMap, body: &'a str) -> Inbound<'a> {
        Inbound {
            headers,
            query: Some("token=55555555555555555555555555555555"),
            body: body.as_bytes(),
            received_at: Utc::now(),
        }
    }

    fn normalize(body: &str) -> Result<Vec<Alert>, InvalidPayload> {
        let headers = HeaderMap::new();
        GoogleCloudMonitoring.normalize(&inbound(&headers, body), &integration(None))
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
    fn an_open_incident_triggers_on_its_incident_id() {
        let alert = one(OPEN);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "0.mtdi83m6w8ao");
        let p = payload(&alert);
        assert!(p.summary.starts_with("CPU utilization for "), "{}", p.summary);
        assert!(p.summary.ends_with("with a value of 0.790."), "{}", p.summary);
        assert_eq!(
            p.source,
            "xxxxxxxxxxxxxxxxxxxxxxxx VM Instance labels {project_id=xxxxxxxxxxxxxxxxxxxxxxxx}"
        );
        assert_eq!(p.severity, Severity::Warning);
        assert_eq!(p.timestamp, Some(Utc.timestamp_opt(1_675_315_787, 0).unwrap()));
        assert_eq!(p.component.as_deref(), Some("VM Instance"));
        assert_eq!(p.class.as_deref(), Some("VM Instance - CPU utilization"));
        assert_eq!(p.group.as_deref(), Some("xxxxxxxxxxxxxxxxxxxxxxxx"));
        let details = p.custom_details.as_ref().unwrap();
        assert_eq!(details["version"], json!("1.2"));
        assert_eq!(details["incident"]["observed_value"], json!("0.790"));
        assert_eq!(alert.links.len(), 1);
        assert!(alert.links[0]
            .href
            .ends_with("/incidents/0.mtdi83m6w8ao?project=xxxxxxxxxxxxxxxxxxxxxxxx"));
        assert_eq!(alert.client.as_deref(), Some("Google Cloud Monitoring"));
    }

    #[test]
    fn the_closed_incident_resolves_the_same_key_at_its_end() {
        let open = one(OPEN);
        let closed = one(CLOSED);
        assert_eq!(closed.event_action, Action::Resolve);
        assert_eq!(closed.dedup_key, open.dedup_key);
        assert_eq!(
            payload(&closed).timestamp,
            Some(Utc.timestamp_opt(1_675_316_087, 0).unwrap())
        );
    }

    #[test]
    fn an_uptime_check_opens_and_closes_one_incident() {
        let open = one(UPTIME_OPEN);
        let closed = one(UPTIME_CLOSED);
        assert_eq!(open.event_action, Action::Trigger);
        assert_eq!(closed.event_action, Action::Resolve);
        assert_eq!(open.dedup_key.as_str(), "0.ligwyr056k2l");
        assert_eq!(closed.dedup_key, open.dedup_key);
        assert_eq!(
            payload(&open).summary,
            "An uptime check on Uptime Check URL labels {host=MYHOST} is failing."
        );
        assert_eq!(payload(&open).source, "Uptime Check URL labels {host=MYHOST}");
        assert_eq!(payload(&open).component.as_deref(), Some("uptime_url"));
        assert_eq!(
            payload(&open).timestamp,
            Some(Utc.timestamp_opt(1_579_559_444, 0).unwrap())
        );
        assert_eq!(
            payload(&closed).timestamp,
            Some(Utc.timestamp_opt(1_579_559_552, 0).unwrap())
        );
    }

    #[test]
    fn the_console_test_notification_is_accepted_with_nothing_to_do() {
        assert_eq!(normalize(TEST).unwrap(), Vec::new());
        // The same body as a real version would be a real incident.
        let real = with(TEST, |v| v["version"] = json!("1.2"));
        let alert = one(&real);
        assert_eq!(alert.dedup_key.as_str(), "12345");
        assert_eq!(alert.event_action, Action::Trigger);
        // started_at 0 is no time at all.
        assert_eq!(payload(&alert).timestamp, None);
    }

    #[test]
    fn severities_come_from_the_policy() {
        for (value, expected) in [
            (json!("CRITICAL"), Severity::Critical),
            (json!("Critical"), Severity::Critical),
            (json!("Error"), Severity::Error),
            (json!("WARNING"), Severity::Warning),
            (json!("No severity"), Severity::Warning),
            (Value::Null, Severity::Warning),
        ] {
            let body = with(OPEN, |v| v["incident"]["severity"] = value.clone());
            assert_eq!(payload(&one(&body)).severity, expected, "{value}");
        }
    }

    #[test]
    fn states_are_matched_case_insensitively_and_unknown_ones_refused() {
        let upper = with(CLOSED, |v| v["incident"]["state"] = json!("CLOSED"));
        assert_eq!(one(&upper).event_action, Action::Resolve);
        let acked = with(OPEN, |v| v["incident"]["state"] = json!("acknowledged"));
        assert_eq!(one(&acked).event_action, Action::Acknowledge);
        let odd = with(OPEN, |v| v["incident"]["state"] = json!("snoozed"));
        assert_eq!(fields(&odd), vec!["incident.state"]);
        let missing = with(OPEN, |v| {
            v["incident"].as_object_mut().unwrap().remove("state");
            v["incident"].as_object_mut().unwrap().remove("incident_id");
        });
        assert_eq!(fields(&missing), vec!["incident.incident_id", "incident.state"]);
    }

    #[test]
    fn malformed_bodies_are_refused_by_name() {
        assert_eq!(fields("{not json"), vec!["body"]);
        assert_eq!(fields("[1]"), vec!["body"]);
        assert_eq!(fields(r#"{"version": "1.2"}"#), vec!["incident"]);
        let typed = with(OPEN, |v| v["incident"]["started_at"] = json!("yesterday"));
        assert_eq!(fields(&typed), vec!["incident.started_at"]);
        let numeric_id = with(OPEN, |v| v["incident"]["incident_id"] = json!(42));
        assert_eq!(one(&numeric_id).dedup_key.as_str(), "42");
    }

    #[test]
    fn the_summary_falls_back_to_policy_and_condition() {
        let body = with(OPEN, |v| {
            v["incident"]["summary"] = json!("");
        });
        assert_eq!(
            payload(&one(&body)).summary,
            "choonho-server-cpu-alert-policy-test: VM Instance - CPU utilization"
        );
    }

    #[test]
    fn the_key_travels_in_the_token_query_parameter() {
        let headers = HeaderMap::new();
        let request = inbound(&headers, OPEN);
        assert_eq!(
            key_from_request(request.headers, request.query).as_deref(),
            Some("55555555555555555555555555555555")
        );
    }

    #[test]
    fn a_secret_is_the_basic_authentication_password() {
        let verify = |authorization: Option<&'static str>, secret: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(value) = authorization {
                headers.insert(http::header::AUTHORIZATION, HeaderValue::from_static(value));
            }
            GoogleCloudMonitoring.verify(&inbound(&headers, OPEN), &integration(secret))
        };
        // printf 'tocsin:s3cret' | base64
        assert_eq!(verify(Some("Basic dG9jc2luOnMzY3JldA=="), Some("s3cret")), Ok(()));
        assert_eq!(
            verify(Some("Basic dG9jc2luOnMzY3JldA=="), Some("another")),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify(None, Some("s3cret")),
            Err(SignatureError::Missing { .. })
        ));
        assert_eq!(
            verify(Some("Basic %%%"), Some("s3cret")),
            Err(SignatureError::Malformed)
        );
        // Without a secret, Basic credentials are neither needed nor checked.
        assert_eq!(verify(None, None), Ok(()));
        assert_eq!(verify(Some("Basic dG9jc2luOnMzY3JldA=="), None), Ok(()));
    }
}
