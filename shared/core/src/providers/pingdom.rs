//! Pingdom's state change webhooks (`POST /integrations/pingdom`): one JSON
//! object per state change of an uptime check (UP ↔ DOWN) or a transaction
//! check (SUCCESS ↔ FAILING). Both states of a check meet on its `check_id`.
//!
//! The test button in My Pingdom posts the check's current payload with the
//! description "test"; it is accepted and opens nothing.
//!
//! <https://www.pingdom.com/resources/webhooks/>

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, FieldError, Link, Payload, Severity};
use crate::providers::{Inbound, InvalidPayload, Provider, ProviderKind};

pub struct Pingdom;

const INVALID: &str = "the Pingdom webhook is invalid";

/// The key prefix: check ids are integers another tool's ids on the same
/// service could repeat.
const KEY_PREFIX: &str = "pingdom";

/// What My Pingdom's "test" button puts in `long_description`.
const TEST_MESSAGE: &str = "this is a test message triggered by a user in my pingdom";

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StateChange {
    /// A number in Pingdom's payloads; text is accepted for proxies that
    /// stringify it.
    check_id: Value,
    check_name: Option<String>,
    check_type: Option<String>,
    check_params: CheckParams,
    current_state: Option<String>,
    previous_state: Option<String>,
    importance_level: Option<String>,
    state_changed_timestamp: Option<i64>,
    state_changed_utc_time: Option<String>,
    description: Option<String>,
    long_description: Option<String>,
    custom_message: Option<String>,
}

/// Uptime checks only; transaction checks carry none.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CheckParams {
    hostname: Option<String>,
    full_url: Option<String>,
}

impl Provider for Pingdom {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Pingdom
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let raw: Value = serde_json::from_slice(inbound.body).map_err(InvalidPayload::unreadable)?;
        if !raw.is_object() {
            return Err(InvalidPayload::field("body", "must be a JSON object"));
        }
        require_objects(&raw, &[("/check_params", "check_params")])?;
        let change: StateChange = serde_path_to_error::deserialize(&raw).map_err(|error| {
            let path = error.path().to_string();
            InvalidPayload::field(path, format!("has the wrong type: {}", error.into_inner()))
        })?;
        if is_test(&change) {
            tracing::info!(check_id = %change.check_id, "pingdom test webhook accepted");
            return Ok(Vec::new());
        }
        alert_from(&change, raw).map(|alert| vec![alert])
    }
}

fn is_test(change: &StateChange) -> bool {
    let description = non_blank(change.description.as_deref()).map(str::to_ascii_lowercase);
    let long = non_blank(change.long_description.as_deref()).map(str::to_ascii_lowercase);
    description.as_deref() == Some("test") && long.as_deref() == Some(TEST_MESSAGE)
}

fn alert_from(change: &StateChange, raw: Value) -> Result<Alert, InvalidPayload> {
    let mut errors = Vec::new();
    let action = action_of(change.current_state.as_deref())
        .map_err(|e| errors.push(e))
        .ok();
    let check_id = match &change.check_id {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => non_blank(Some(s)).map(str::to_owned),
        _ => None,
    };
    if check_id.is_none() {
        errors.push(FieldError::new("check_id", "is missing: Pingdom sends the check's id"));
    }
    let (Some(event_action), Some(check_id), true) = (action, check_id, errors.is_empty()) else {
        return Err(InvalidPayload::new(INVALID, errors));
    };
    let dedup_key = DedupKey::parse(&format!("{KEY_PREFIX}:{check_id}"))
        .map_err(|e| InvalidPayload::new(INVALID, vec![e.at("check_id")]))?;

    let name = non_blank(change.check_name.as_deref());
    let full_url = non_blank(change.check_params.full_url.as_deref());
    let hostname = non_blank(change.check_params.hostname.as_deref());
    let state = non_blank(change.current_state.as_deref()).unwrap_or_default();
    let head = format!("{} is {state}", name.unwrap_or("Pingdom check"));
    let summary = match non_blank(change.description.as_deref()) {
        Some(description) => format!("{head}: {description}"),
        None => head,
    };

    Ok(Alert {
        event_action,
        dedup_key,
        payload: Some(Payload {
            summary: Payload::truncate_summary(&summary),
            source: full_url.or(hostname).or(name).unwrap_or(KEY_PREFIX).to_owned(),
            severity: match event_action {
                Action::Resolve => Severity::Info,
                _ => severity_of(change.importance_level.as_deref()),
            },
            timestamp: timestamp_of(change),
            component: hostname.map(str::to_owned),
            group: None,
            class: non_blank(change.check_type.as_deref()).map(str::to_owned),
            // The whole state change: probes, tags, custom message, check
            // parameters; it is small and every field helps the responder.
            custom_details: Some(raw),
        }),
        links: full_url
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            .map(|href| Link {
                href: href.to_owned(),
                text: Some("Checked URL".to_owned()),
            })
            .into_iter()
            .collect(),
        images: Vec::new(),
        client: Some("Pingdom".to_owned()),
        client_url: None,
    })
}

/// Uptime checks go DOWN and UP, transaction checks FAILING and SUCCESS.
fn action_of(state: Option<&str>) -> Result<Action, FieldError> {
    match non_blank(state).map(str::to_ascii_uppercase).as_deref() {
        Some("DOWN" | "FAILING") => Ok(Action::Trigger),
        Some("UP" | "SUCCESS") => Ok(Action::Resolve),
        Some(_) => Err(FieldError::new(
            "current_state",
            format!(
                "'{}' is not one of DOWN, UP (uptime checks), FAILING, SUCCESS (transaction checks)",
                state.unwrap_or_default().trim()
            ),
        )),
        None => Err(FieldError::new("current_state", "is missing")),
    }
}

/// HIGH is Pingdom's default importance and pages; LOW is kept visible
/// without paging. A missing level (older payloads) counts as HIGH.
fn severity_of(level: Option<&str>) -> Severity {
    match non_blank(level).map(str::to_ascii_uppercase).as_deref() {
        Some("LOW") => Severity::Warning,
        _ => Severity::Critical,
    }
}

/// The Unix time of the change; the UTC text of it when the number is
/// missing. An unreadable time orders the event by its arrival instead.
fn timestamp_of(change: &StateChange) -> Option<DateTime<Utc>> {
    change
        .state_changed_timestamp
        .and_then(|secs| Utc.timestamp_opt(secs, 0).single())
        .or_else(|| {
            let text = non_blank(change.state_changed_utc_time.as_deref())?;
            NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
                .ok()
                .map(|t| t.and_utc())
        })
}

/// serde reads a JSON array as a struct, field by field: a nested value
/// that must be an object is checked before deserializing.
fn require_objects(raw: &Value, pointers: &[(&str, &str)]) -> Result<(), InvalidPayload> {
    for (pointer, field) in pointers {
        match raw.pointer(pointer) {
            None | Some(Value::Null | Value::Object(_)) => {}
            Some(_) => return Err(InvalidPayload::field(*field, "must be a JSON object")),
        }
    }
    Ok(())
}

fn non_blank(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::{HeaderMap, HeaderValue, StatusCode};
    use serde_json::json;

    use super::*;
    use crate::auth::KeyHash;
    use crate::config::Catalog;
    use crate::ingest::{IngestRequest, IngestService};
    use crate::memory::MemoryStore;
    use crate::signature::hmac_sha256_hex;

    const TRIGGER: &str = include_str!("../../../../events/pingdom/trigger.json");
    const RESOLVE: &str = include_str!("../../../../events/pingdom/resolve.json");
    const TEST: &str = include_str!("../../../../events/pingdom/test.json");
    const TRANSACTION_FAILING: &str = include_str!("../../../../events/pingdom/transaction-failing.json");
    const TRANSACTION_SUCCESS: &str = include_str!("../../../../events/pingdom/transaction-success.json");

    const KEY: &str = "55555555555555555555555555555555";
    const SECRET: &str = "a-secret-pingdom-cannot-use";

    /// Built from config text as in production, so that settings other
    /// providers add to Integration need no change here.
    fn catalog(with_secret: bool) -> Catalog {
        let secret = if with_secret {
            format!(", secret: {SECRET}")
        } else {
            String::new()
        };
        let config = format!(
            "services:\n  - id: checkout\n    integrations:\n      - {{id: checkout-pingdom, type: pingdom, key: {KEY}{secret}}}\n"
        );
        Catalog::from_yaml(&config, "test.yaml").unwrap()
    }

    fn integration() -> Integration {
        catalog(false).integration_by_key(&KeyHash::of(KEY)).cloned().unwrap()
    }

    /// One request through ingest: authenticate, verify, normalize, enqueue.
    fn post(body: &[u8], headers: &[(&str, &str)], with_secret: bool) -> (StatusCode, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::new());
        let ingest = IngestService::new(Arc::new(catalog(with_secret)), store.clone(), store.clone());
        let mut map = HeaderMap::new();
        map.insert("x-integration-key", HeaderValue::from_static(KEY));
        for (name, value) in headers {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let answer = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(ingest.handle(IngestRequest {
                provider: ProviderKind::Pingdom,
                headers: &map,
                query: None,
                body,
                received_at: Utc::now(),
            }));
        (answer.status(), store)
    }

    fn normalize(body: &str) -> Result<Vec<Alert>, InvalidPayload> {
        let headers = HeaderMap::new();
        let inbound = Inbound {
            headers: &headers,
            query: None,
            body: body.as_bytes(),
            received_at: Utc::now(),
        };
        Pingdom.normalize(&inbound, &integration())
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

    fn payload(alert: &Alert) -> &Payload {
        alert.payload.as_ref().unwrap()
    }

    fn with(sample: &str, change: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
        let mut value: Value = serde_json::from_str(sample).unwrap();
        change(value.as_object_mut().unwrap());
        value.to_string()
    }

    #[test]
    fn a_check_going_down_triggers_a_critical_incident_keyed_by_the_check() {
        let alert = one(TRIGGER);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "pingdom:803318");
        let payload = payload(&alert);
        assert_eq!(payload.summary, "Alerta API on OpenShift is DOWN: HTTP Error 503");
        assert_eq!(payload.severity, Severity::Critical);
        assert_eq!(payload.source, "http://api.alerta.io/");
        assert_eq!(payload.component.as_deref(), Some("api.alerta.io"));
        assert_eq!(payload.class.as_deref(), Some("HTTP"));
        assert_eq!(payload.timestamp, Utc.timestamp_opt(1_498_861_543, 0).single());
        let details = payload.custom_details.as_ref().unwrap();
        assert_eq!(details["long_description"], "HTTP Server Error 503 Service Unavailable");
        assert_eq!(details["first_probe"]["location"], "Strasbourg 5, France");
        assert_eq!(alert.links[0].href, "http://api.alerta.io/");
        assert_eq!(alert.client.as_deref(), Some("Pingdom"));
    }

    #[test]
    fn the_check_coming_up_resolves_the_same_key_at_its_change_time() {
        let resolve = one(RESOLVE);
        assert_eq!(resolve.event_action, Action::Resolve);
        assert_eq!(resolve.dedup_key, one(TRIGGER).dedup_key);
        assert_eq!(payload(&resolve).summary, "Alerta API on OpenShift is UP: OK");
        assert_eq!(
            payload(&resolve).timestamp,
            Utc.with_ymd_and_hms(2017, 6, 30, 22, 30, 43).single()
        );
    }

    #[test]
    fn transaction_checks_fail_and_succeed_on_one_key() {
        let failing = one(TRANSACTION_FAILING);
        let success = one(TRANSACTION_SUCCESS);
        assert_eq!(failing.event_action, Action::Trigger);
        assert_eq!(success.event_action, Action::Resolve);
        assert_eq!(failing.dedup_key.as_str(), "pingdom:12345");
        assert_eq!(success.dedup_key, failing.dedup_key);
        let payload = payload(&failing);
        assert_eq!(payload.summary, "Checkout flow is FAILING: Short error message");
        // LOW importance: visible, not paging.
        assert_eq!(payload.severity, Severity::Warning);
        assert_eq!(payload.class.as_deref(), Some("TRANSACTION"));
        // No check_params: the check's name is the source, and nothing links.
        assert_eq!(payload.source, "Checkout flow");
        assert!(failing.links.is_empty());
        assert_eq!(
            payload.custom_details.as_ref().unwrap()["custom_message"],
            "Checkout is broken: page the payments team"
        );
    }

    #[test]
    fn the_test_button_is_accepted_without_an_incident() {
        assert_eq!(normalize(TEST).unwrap(), Vec::new());
        // The same words in a real outage's description do not hide it.
        let real = with(TEST, |o| {
            o.insert("description".into(), json!("Timeout"));
        });
        assert_eq!(normalize(&real).unwrap().len(), 1);
    }

    #[test]
    fn importance_sets_severity() {
        assert_eq!(severity_of(Some("HIGH")), Severity::Critical);
        assert_eq!(severity_of(Some("low")), Severity::Warning);
        assert_eq!(severity_of(None), Severity::Critical);
    }

    #[test]
    fn the_utc_text_stands_in_for_a_missing_unix_time() {
        let body = with(TRIGGER, |o| {
            o.remove("state_changed_timestamp");
        });
        assert_eq!(
            payload(&one(&body)).timestamp,
            Utc.with_ymd_and_hms(2017, 6, 30, 22, 25, 43).single()
        );
    }

    #[test]
    fn a_textual_check_id_meets_the_numeric_one() {
        let body = with(RESOLVE, |o| {
            o.insert("check_id".into(), json!("803318"));
        });
        assert_eq!(one(&body).dedup_key, one(TRIGGER).dedup_key);
    }

    #[test]
    fn bad_states_ids_and_bodies_are_refused_by_name() {
        let paused = with(TRIGGER, |o| {
            o.insert("current_state".into(), json!("PAUSED"));
        });
        assert_eq!(refused(&paused), vec!["current_state"]);
        let both = with(TRIGGER, |o| {
            o.remove("current_state");
            o.remove("check_id");
        });
        assert_eq!(refused(&both), vec!["current_state", "check_id"]);
        let typed = with(TRIGGER, |o| {
            o.insert("check_params".into(), json!("x"));
        });
        assert_eq!(refused(&typed), vec!["check_params"]);
        let array = with(TRIGGER, |o| {
            o.insert("check_params".into(), json!([]));
        });
        assert_eq!(refused(&array), vec!["check_params"]);
        assert_eq!(refused("{"), vec!["body"]);
        assert_eq!(refused("[]"), vec!["body"]);
        assert_eq!(refused("check_id=1"), vec!["body"]);
    }

    #[test]
    fn through_ingest_signatures_and_bodies_get_the_right_answers() {
        let signed = |body: &str| format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), body.as_bytes()));
        let (status, store) = post(TRIGGER.as_bytes(), &[], false);
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(store.queued_events().len(), 1);
        // Pingdom signs nothing: with a secret set, only a signing proxy gets through,
        // with Tocsin's own X-Signature over the raw body.
        assert_eq!(post(TRIGGER.as_bytes(), &[], true).0, StatusCode::UNAUTHORIZED);
        let wrong = format!("sha256={}", hmac_sha256_hex(b"another-secret", TRIGGER.as_bytes()));
        assert_eq!(
            post(TRIGGER.as_bytes(), &[("x-signature", &wrong)], true).0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            post(TRIGGER.as_bytes(), &[("x-signature", &signed(TRIGGER))], true).0,
            StatusCode::ACCEPTED
        );
        assert_eq!(post(b"{", &[], false).0, StatusCode::BAD_REQUEST);
        // The test button: accepted, nothing queued.
        let (status, store) = post(TEST.as_bytes(), &[], false);
        assert_eq!(status, StatusCode::ACCEPTED);
        assert!(store.queued_events().is_empty());
    }
}
