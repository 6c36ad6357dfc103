//! Elastic (Kibana alerting) through Kibana's Webhook connector. The connector
//! posts whatever body the rule action renders, so Tocsin publishes one
//! Mustache template (docs/providers/elastic.md, events/elastic/template.json)
//! and reads exactly that: one alert per action run, keyed by rule id and
//! alert id, resolved when the action runs in Kibana's "Recovered" group.
//!
//! <https://www.elastic.co/guide/en/kibana/current/webhook-action-type.html>
//! <https://www.elastic.co/guide/en/kibana/current/rule-action-variables.html>

use chrono::{DateTime, Utc};
use http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, FieldError, Link, Payload, Severity};
use crate::providers::{base64, Inbound, InvalidPayload, Provider, ProviderKind};
use crate::signature::SignatureError;

pub struct Elastic;

/// Kibana's built-in recovery action group (`RecoveredActionGroup.id`).
const RECOVERED_GROUP: &str = "recovered";

const INVALID: &str = "the Kibana webhook body is invalid";

/// The fields of the published template that Tocsin reads. The others
/// (`rule_tags`, `space_id`, `alert_uuid`, `flapping` …) travel in
/// `custom_details` as they came.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Notification {
    rule_id: Option<String>,
    rule_name: Option<String>,
    rule_url: Option<String>,
    alert_id: Option<String>,
    action_group: Option<String>,
    /// Absent from the published template; set it by hand in a recovery
    /// action of a rule type whose recovery group is not `recovered`.
    status: Option<String>,
    reason: Option<String>,
    alert_details_url: Option<String>,
    date: Option<String>,
    kibana_base_url: Option<String>,
    severity: Option<String>,
}

impl Provider for Elastic {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Elastic
    }

    /// Kibana's Webhook connector authenticates with HTTP Basic auth, its
    /// password kept encrypted by Kibana: with a secret set, the password
    /// must be that secret (the user name is not checked).
    fn verify(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<(), SignatureError> {
        let Some(secret) = &integration.secret else {
            return Ok(());
        };
        let password = basic_password(inbound.headers)?;
        // Digests of equal length, so the comparison leaks neither the
        // secret nor its length.
        let sent = Sha256::digest(password.as_bytes());
        let expected = Sha256::digest(secret.expose().as_bytes());
        if bool::from(sent.ct_eq(&expected)) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let raw = parse_object(inbound.body)?;
        let notification: Notification = serde_path_to_error::deserialize(&raw).map_err(|error| {
            let path = error.path().to_string();
            InvalidPayload::field(path, format!("has the wrong type: {}", error.into_inner()))
        })?;

        // The connector's Test tab posts the body as typed: the template with
        // its placeholders unrendered. Nothing happened; answer 2xx.
        if is_unrendered(&notification) {
            tracing::info!("kibana connector test: template placeholders were not rendered");
            return Ok(Vec::new());
        }

        let mut errors = Vec::new();
        let rule_id = required(&notification.rule_id, "rule_id", "{{rule.id}}", &mut errors);
        let alert_id = required(
            &notification.alert_id,
            "alert_id",
            "{{alert.id}} (use the action frequency \"For each alert\")",
            &mut errors,
        );
        let action = action_of(&notification).map_err(|e| errors.push(e)).ok();
        let (Some(rule_id), Some(alert_id), Some(event_action)) = (rule_id, alert_id, action) else {
            return Err(InvalidPayload::new(INVALID, errors));
        };

        let key = format!("{rule_id}:{alert_id}");
        let dedup_key = DedupKey::parse(&key).map_err(|e| InvalidPayload::new(INVALID, vec![e.at("alert_id")]))?;
        let rule_name = non_blank(notification.rule_name.as_deref());
        let summary = match (non_blank(notification.reason.as_deref()), rule_name) {
            (Some(reason), _) => reason.to_owned(),
            (None, Some(name)) => format!("{name}: {alert_id}"),
            (None, None) => format!("Kibana rule {rule_id}: {alert_id}"),
        };
        let client_url = non_blank(notification.kibana_base_url.as_deref()).map(str::to_owned);

        Ok(vec![Alert {
            event_action,
            dedup_key,
            payload: Some(Payload {
                summary: Payload::truncate_summary(&summary),
                // The alert id names what the rule alerts on: a group value
                // (a host, a service) or the rule's own instance name.
                source: alert_id.to_owned(),
                severity: severity_of(notification.severity.as_deref()),
                timestamp: timestamp_of(notification.date.as_deref()),
                component: None,
                group: None,
                class: rule_name.map(str::to_owned),
                custom_details: Some(raw),
            }),
            links: links_of(&notification),
            images: Vec::new(),
            client: Some("Kibana".to_owned()),
            client_url,
        }])
    }
}

/// The password of `Authorization: Basic base64(user:password)`.
fn basic_password(headers: &HeaderMap) -> Result<String, SignatureError> {
    const EXPECTED: &str = "Authorization: Basic (password = the integration secret)";
    let value = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .ok_or(SignatureError::Missing { expected: EXPECTED })?;
    let encoded = value
        .get(..6)
        .filter(|scheme| scheme.eq_ignore_ascii_case("basic "))
        .map(|_| value[6..].trim())
        // A bearer key in Authorization is the integration key, not the
        // secret: the secret was not sent.
        .ok_or(SignatureError::Missing { expected: EXPECTED })?;
    let decoded = base64::decode(encoded).ok_or(SignatureError::Malformed)?;
    let credentials = String::from_utf8(decoded).map_err(|_| SignatureError::Malformed)?;
    let (_user, password) = credentials.split_once(':').ok_or(SignatureError::Malformed)?;
    Ok(password.to_owned())
}

fn parse_object(body: &[u8]) -> Result<Value, InvalidPayload> {
    let value: Value = serde_json::from_slice(body).map_err(InvalidPayload::unreadable)?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(InvalidPayload::field(
            "body",
            "must be one JSON object (the Tocsin template rendered by Kibana)",
        ))
    }
}

fn is_unrendered(notification: &Notification) -> bool {
    [&notification.rule_id, &notification.alert_id]
        .iter()
        .any(|v| v.as_deref().is_some_and(|v| v.contains("{{")))
}

fn required<'a>(
    value: &'a Option<String>,
    field: &str,
    variable: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a str> {
    let found = non_blank(value.as_deref());
    if found.is_none() {
        errors.push(FieldError::new(
            field,
            format!("is missing or empty: the template sets it to {variable}"),
        ));
    }
    found
}

/// An explicit `status` wins; otherwise Kibana's action group decides.
fn action_of(notification: &Notification) -> Result<Action, FieldError> {
    if let Some(status) = non_blank(notification.status.as_deref()) {
        return match status.to_ascii_lowercase().as_str() {
            "recovered" | "resolved" | "ok" => Ok(Action::Resolve),
            "active" | "firing" | "triggered" => Ok(Action::Trigger),
            _ => Err(FieldError::new(
                "status",
                format!("'{status}' is not one of recovered, resolved, ok, active, firing, triggered"),
            )),
        };
    }
    match non_blank(notification.action_group.as_deref()) {
        Some(RECOVERED_GROUP) => Ok(Action::Resolve),
        Some(_) => Ok(Action::Trigger),
        None => Err(FieldError::new(
            "action_group",
            "is missing or empty: the template sets it to {{alert.actionGroup}}",
        )),
    }
}

/// The template's `severity` is a literal chosen per action. A typo is not
/// worth losing the alert over: anything unknown is a warning.
fn severity_of(value: Option<&str>) -> Severity {
    match value.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("critical") => Severity::Critical,
        Some("error") => Severity::Error,
        Some("info") => Severity::Info,
        _ => Severity::Warning,
    }
}

/// Kibana's `{{date}}` is ISO 8601; anything else is left out rather than
/// refused, so a broken clock never costs an alert.
fn timestamp_of(value: Option<&str>) -> Option<DateTime<Utc>> {
    let value = non_blank(value)?;
    match DateTime::parse_from_rfc3339(value) {
        Ok(time) => Some(time.with_timezone(&Utc)),
        Err(_) => {
            tracing::debug!(date = value, "kibana date is not RFC 3339; ignored");
            None
        }
    }
}

fn links_of(notification: &Notification) -> Vec<Link> {
    [
        (&notification.alert_details_url, "Alert details"),
        (&notification.rule_url, "Kibana rule"),
    ]
    .into_iter()
    .filter_map(|(href, text)| {
        non_blank(href.as_deref()).map(|href| Link {
            href: href.to_owned(),
            text: Some(text.to_owned()),
        })
    })
    .collect()
}

fn non_blank(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use http::HeaderValue;
    use serde_json::json;

    use super::*;

    const TEMPLATE: &str = include_str!("../../../../events/elastic/template.json");
    const ACTIVE: &str = include_str!("../../../../events/elastic/active.json");
    const RECOVERED: &str = include_str!("../../../../events/elastic/recovered.json");

    const SECRET: &str = "kibana-connector-password";

    fn integration(secret: Option<&str>) -> Integration {
        crate::providers::test_support::integration(
            "checkout-kibana",
            "checkout",
            ProviderKind::Elastic,
            "44444444444444444444444444444444",
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
        Elastic.normalize(&inbound(&headers, body), &integration(None))
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

    fn verify(authorization: Option<&str>, secret: Option<&str>) -> Result<(), SignatureError> {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(http::header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        Elastic.verify(&inbound(&headers, ACTIVE), &integration(secret))
    }

    #[test]
    fn an_active_alert_triggers_on_rule_and_alert_id() {
        let alert = one(ACTIVE);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(
            alert.dedup_key.as_str(),
            "8b3f6c1e-5a2d-4c07-9a41-2f6e0d9b7c15:apm.error_rate_checkout_production"
        );
        let payload = alert.payload.as_ref().unwrap();
        assert_eq!(
            payload.summary,
            "Error count is 42 in the last 5 mins for checkout. Alert when > 25."
        );
        assert_eq!(payload.source, "apm.error_rate_checkout_production");
        assert_eq!(payload.severity, Severity::Critical);
        assert_eq!(payload.class.as_deref(), Some("Checkout error count"));
        assert_eq!(
            payload.timestamp,
            Some(Utc.with_ymd_and_hms(2024, 5, 14, 9, 12, 3).unwrap() + chrono::Duration::milliseconds(541))
        );
        let details = payload.custom_details.as_ref().unwrap();
        assert_eq!(details["rule_tags"], json!("checkout,production"));
        assert_eq!(details["action_group"], json!("threshold_met"));
        assert_eq!(alert.links.len(), 2);
        assert_eq!(alert.links[0].text.as_deref(), Some("Alert details"));
        assert!(alert.links[1]
            .href
            .ends_with("/rule/8b3f6c1e-5a2d-4c07-9a41-2f6e0d9b7c15"));
        assert_eq!(alert.client.as_deref(), Some("Kibana"));
        assert_eq!(alert.client_url.as_deref(), Some("https://kibana.example.com"));
    }

    #[test]
    fn the_recovered_group_resolves_the_same_key() {
        let recovered = one(RECOVERED);
        assert_eq!(recovered.event_action, Action::Resolve);
        assert_eq!(recovered.dedup_key, one(ACTIVE).dedup_key);
        assert_eq!(
            recovered.payload.unwrap().summary,
            "Error count is 3 in the last 5 mins for checkout. Alert when > 25."
        );
    }

    #[test]
    fn an_explicit_status_overrides_the_action_group() {
        // A rule type with its own recovery group: the user sets status.
        let custom = with(ACTIVE, |v| {
            v["action_group"] = json!("metrics.threshold.recovered");
            v["status"] = json!("Recovered");
        });
        assert_eq!(one(&custom).event_action, Action::Resolve);
        let active = with(RECOVERED, |v| v["status"] = json!("active"));
        assert_eq!(one(&active).event_action, Action::Trigger);
        let odd = with(ACTIVE, |v| v["status"] = json!("pending"));
        assert_eq!(refused(&odd), vec!["status"]);
    }

    #[test]
    fn summary_falls_back_to_rule_name_and_alert_id() {
        let no_reason = with(ACTIVE, |v| v["reason"] = json!(""));
        assert_eq!(
            one(&no_reason).payload.unwrap().summary,
            "Checkout error count: apm.error_rate_checkout_production"
        );
        let bare = json!({"rule_id": "r1", "alert_id": "host-1", "action_group": "query matched"}).to_string();
        let alert = one(&bare);
        assert_eq!(alert.payload.as_ref().unwrap().summary, "Kibana rule r1: host-1");
        assert!(alert.links.is_empty());
        // No severity literal: warning, as for an unknown one.
        assert_eq!(alert.payload.unwrap().severity, Severity::Warning);
        let typo = with(ACTIVE, |v| v["severity"] = json!("crit"));
        assert_eq!(one(&typo).payload.unwrap().severity, Severity::Warning);
        let info = with(ACTIVE, |v| v["severity"] = json!("INFO"));
        assert_eq!(one(&info).payload.unwrap().severity, Severity::Info);
    }

    #[test]
    fn the_unrendered_template_is_a_connector_test() {
        assert_eq!(normalize(TEMPLATE).unwrap(), Vec::new());
    }

    #[test]
    fn missing_ids_and_action_group_are_each_named() {
        let summary_action = json!({"rule_id": "r1", "alert_id": "", "date": "2024-05-14T09:12:03Z"}).to_string();
        assert_eq!(refused(&summary_action), vec!["alert_id", "action_group"]);
        assert_eq!(refused("{}"), vec!["rule_id", "alert_id", "action_group"]);
        let wrong_type = with(ACTIVE, |v| v["rule_id"] = json!(12));
        assert_eq!(refused(&wrong_type), vec!["rule_id"]);
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert_eq!(refused("not json"), vec!["body"]);
        assert_eq!(refused("[{}]"), vec!["body"]);
        assert_eq!(refused(""), vec!["body"]);
    }

    #[test]
    fn a_bad_date_is_left_out() {
        let odd = with(ACTIVE, |v| v["date"] = json!("yesterday"));
        assert_eq!(one(&odd).payload.unwrap().timestamp, None);
    }

    #[test]
    fn basic_auth_password_must_be_the_secret() {
        // "tocsin:kibana-connector-password"
        let good = "Basic dG9jc2luOmtpYmFuYS1jb25uZWN0b3ItcGFzc3dvcmQ=";
        assert_eq!(verify(Some(good), Some(SECRET)), Ok(()));
        // Padding is optional and the scheme case-insensitive.
        assert_eq!(
            verify(Some("basic dG9jc2luOmtpYmFuYS1jb25uZWN0b3ItcGFzc3dvcmQ"), Some(SECRET)),
            Ok(())
        );
        // "tocsin:wrong-password"
        assert_eq!(
            verify(Some("Basic dG9jc2luOndyb25nLXBhc3N3b3Jk"), Some(SECRET)),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify(None, Some(SECRET)),
            Err(SignatureError::Missing { .. })
        ));
        assert!(matches!(
            verify(Some("Bearer 44444444444444444444444444444444"), Some(SECRET)),
            Err(SignatureError::Missing { .. })
        ));
        assert_eq!(verify(Some("Basic !!!"), Some(SECRET)), Err(SignatureError::Malformed));
        // "no-colon"
        assert_eq!(
            verify(Some("Basic bm8tY29sb24="), Some(SECRET)),
            Err(SignatureError::Malformed)
        );
        // Without a secret, nothing is checked.
        assert_eq!(verify(None, None), Ok(()));
    }
}
