//! GoAlert's generic incoming API (`POST /api/v2/generic/incoming`), so that
//! scripts and tools written for GoAlert can point at Tocsin unchanged.
//!
//! Fields: `token`, `summary`, `details`, `action` (`close` resolves), and
//! `dedup`. As in GoAlert they may come in the query string, a form body or a
//! JSON body; a value in the body wins over the same one in the query.

use http::{header, HeaderMap, StatusCode};
use serde_json::Value;

use crate::answer::{empty_answer, json_answer, Answer};
use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, FieldError, Payload, Severity};
use crate::providers::{Accepted, Inbound, InvalidPayload, Provider, ProviderKind};

pub struct Generic;

/// The source of every event from this API: GoAlert's own name for it.
const SOURCE: &str = "goalert-generic";

/// GoAlert alerts carry no severity, and every one of them pages its
/// escalation policy. Error keeps them above warning and info filters while
/// leaving critical to senders that say so.
const SEVERITY: Severity = Severity::Error;

const INVALID: &str = "the alert is invalid";

/// The fields of one request: from the query string, a form or a JSON body.
#[derive(Debug, Default)]
struct Request {
    token: Option<String>,
    summary: Option<String>,
    details: Option<Value>,
    action: Option<String>,
    dedup: Option<String>,
}

impl Request {
    /// Sets a field by its parameter name unless it is already set: of a
    /// repeated name the first value counts, as with Go's FormValue.
    /// Unknown names are ignored.
    fn set_first(&mut self, name: &str, value: String) {
        let slot = match name {
            "token" => &mut self.token,
            "summary" => &mut self.summary,
            "action" => &mut self.action,
            "dedup" => &mut self.dedup,
            "details" => {
                self.details.get_or_insert(Value::String(value));
                return;
            }
            _ => return,
        };
        slot.get_or_insert(value);
    }

    /// This request's values, falling back to `older`'s where it has none.
    fn or(self, older: Request) -> Request {
        Request {
            token: self.token.or(older.token),
            summary: self.summary.or(older.summary),
            details: self.details.or(older.details),
            action: self.action.or(older.action),
            dedup: self.dedup.or(older.dedup),
        }
    }
}

impl Provider for Generic {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Generic
    }

    /// The token of a form or JSON body. The query's `?token=` is read with
    /// the other standard places, before this is asked.
    fn key_in_body(&self, inbound: &Inbound<'_>) -> Option<String> {
        let token = read_body(inbound.body).ok()?.token?;
        Some(token.trim().to_owned()).filter(|t| !t.is_empty())
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let from_query = inbound.query.map(|q| read_form(q.as_bytes())).unwrap_or_default();
        let from_body = read_body(inbound.body).map_err(|errors| InvalidPayload::new(INVALID, errors))?;
        // As in GoAlert, a value in the body wins over one in the query.
        alert_from(from_body.or(from_query)).map(|alert| vec![alert])
    }

    fn wants_incident_hint(&self, inbound: &Inbound<'_>) -> bool {
        accepts_json(inbound.headers)
    }

    /// GoAlert answers 204 unless asked for JSON, then names the alert.
    fn accepted(&self, inbound: &Inbound<'_>, accepted: &Accepted<'_>) -> Answer {
        if !accepts_json(inbound.headers) {
            return empty_answer(StatusCode::NO_CONTENT);
        }
        let is_trigger = accepted.events.first().is_some_and(|e| e.action() == Action::Trigger);
        json_answer(
            StatusCode::OK,
            &serde_json::json!({
                // Ingest always reads the hint when JSON is accepted; null
                // only if it could not, rather than answering 204 to a
                // client that asked for JSON.
                "AlertID": accepted.hint.as_ref().map(|h| h.incident.as_str()),
                "ServiceID": accepted.integration.service.as_str(),
                // A close never creates anything.
                "IsNew": is_trigger && accepted.hint.as_ref().is_some_and(|h| h.is_new),
            }),
        )
    }
}

fn accepts_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("application/json"))
}

/// A query string or an `application/x-www-form-urlencoded` body.
fn read_form(bytes: &[u8]) -> Request {
    let mut request = Request::default();
    for (name, value) in form_urlencoded::parse(bytes) {
        request.set_first(&name, value.into_owned());
    }
    request
}

/// A JSON or form body. JSON is recognised by its first character whatever
/// the Content-Type says; anything else is read as a form.
fn read_body(body: &[u8]) -> Result<Request, Vec<FieldError>> {
    match body.iter().copied().find(|b| !b.is_ascii_whitespace()) {
        None => Ok(Request::default()),
        Some(b'{' | b'[') => read_json(body),
        Some(_) => Ok(read_form(body)),
    }
}

fn read_json(body: &[u8]) -> Result<Request, Vec<FieldError>> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| vec![FieldError::new("body", format!("is not valid JSON: {e}"))])?;
    let Value::Object(object) = value else {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    };
    // Go's encoding/json matches keys case-insensitively, preferring an
    // exact match; GoAlert clients rely on it ("Summary").
    let get = |name: &str| {
        object.get(name).or_else(|| {
            object
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
    };

    let mut errors = Vec::new();
    let mut request = Request::default();
    for name in ["token", "summary", "action", "dedup"] {
        match get(name) {
            // A null is no value, as in GoAlert: the query's value stands.
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => request.set_first(name, s.clone()),
            Some(Value::Number(n)) => request.set_first(name, n.to_string()),
            Some(_) => errors.push(FieldError::new(name, "must be a string")),
        }
    }
    // Details are free text in GoAlert; structured details are kept as they
    // are rather than refused.
    request.details = get("details").filter(|v| !v.is_null()).cloned();

    if errors.is_empty() {
        Ok(request)
    } else {
        Err(errors)
    }
}

fn alert_from(request: Request) -> Result<Alert, InvalidPayload> {
    let summary = request
        .summary
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Payload::truncate_summary)
        .ok_or_else(|| InvalidPayload::field("summary", "is missing or blank"))?;

    let details = request
        .details
        .filter(|d| d.as_str().is_none_or(|s| !s.trim().is_empty()));
    let details_text = match &details {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };

    // Only "close" resolves; GoAlert treats every other action as a trigger.
    // Case is forgiven: "Close" surely does not mean "page me".
    let event_action = match request.action.as_deref().map(str::trim) {
        Some(action) if action.eq_ignore_ascii_case("close") => Action::Resolve,
        _ => Action::Trigger,
    };

    // GoAlert derives the key from summary and details when none is given,
    // so repeating the same alert does not page twice.
    let dedup_key = match request.dedup.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
        Some(dedup) => DedupKey::parse(dedup).map_err(|e| InvalidPayload::field("dedup", e.reason))?,
        None => DedupKey::digest_of(&[&summary, &details_text]),
    };

    Ok(Alert {
        event_action,
        dedup_key,
        payload: Some(Payload {
            summary,
            source: SOURCE.to_owned(),
            severity: SEVERITY,
            timestamp: None,
            component: None,
            group: None,
            class: None,
            custom_details: details.map(|d| serde_json::json!({ "details": d })),
        }),
        links: Vec::new(),
        images: Vec::new(),
        client: None,
        client_url: None,
    })
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use http::HeaderValue;
    use serde_json::json;

    use super::*;
    use crate::auth::KeyHash;
    use crate::config::FieldMapping;
    use crate::event::{Event, EventId, IntegrationId, Origin, ServiceId};
    use crate::incident::IncidentId;
    use crate::providers::IncidentHint;

    const TRIGGER: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/generic/trigger.json"
    ));
    const CLOSE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../events/generic/close.json"));
    const FORM: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/generic/trigger.form"
    ));

    const TOKEN: &str = "44444444444444444444444444444444";

    fn integration() -> Integration {
        Integration {
            id: IntegrationId::parse("checkout-goalert").unwrap(),
            service: ServiceId::parse("checkout").unwrap(),
            provider: ProviderKind::Generic,
            key_hash: KeyHash::of(TOKEN),
            secret: None,
            enabled: true,
            fields: FieldMapping::default(),
            cloudwatch: Default::default(),
            dedup_key: None,
            rate_limit_per_minute: None,
            secret_ref: None,
        }
    }

    fn inbound<'a>(headers: &'a HeaderMap, query: Option<&'a str>, body: &'a str) -> Inbound<'a> {
        Inbound {
            headers,
            query,
            body: body.as_bytes(),
            received_at: Utc::now(),
        }
    }

    fn normalize(query: Option<&str>, body: &str) -> Result<Alert, InvalidPayload> {
        let headers = HeaderMap::new();
        let mut alerts = Generic.normalize(&inbound(&headers, query, body), &integration())?;
        assert_eq!(alerts.len(), 1, "one alert per request");
        Ok(alerts.remove(0))
    }

    fn refused(query: Option<&str>, body: &str) -> Vec<String> {
        normalize(query, body)
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    fn payload(alert: &Alert) -> &Payload {
        alert.payload.as_ref().unwrap()
    }

    #[test]
    fn the_sample_json_trigger() {
        let alert = normalize(Some(&format!("token={TOKEN}")), TRIGGER).unwrap();
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "invoice-export-nightly");
        let p = payload(&alert);
        assert_eq!(p.summary, "Nightly invoice export did not finish");
        assert_eq!(p.source, "goalert-generic");
        assert_eq!(p.severity, Severity::Error);
        assert_eq!(p.timestamp, None);
        let details = p.custom_details.as_ref().unwrap()["details"].as_str().unwrap();
        assert!(details.starts_with("The invoice-export cron job"));
    }

    #[test]
    fn close_resolves_the_same_key() {
        let alert = normalize(None, CLOSE).unwrap();
        assert_eq!(alert.event_action, Action::Resolve);
        assert_eq!(alert.dedup_key, normalize(None, TRIGGER).unwrap().dedup_key);
        assert_eq!(payload(&alert).custom_details, None);
    }

    #[test]
    fn only_close_resolves() {
        for action in ["close", " Close "] {
            let body = json!({"summary": "s", "action": action}).to_string();
            assert_eq!(
                normalize(None, &body).unwrap().event_action,
                Action::Resolve,
                "{action}"
            );
        }
        for action in ["resolve", "closed", "ack", ""] {
            let body = json!({"summary": "s", "action": action}).to_string();
            assert_eq!(
                normalize(None, &body).unwrap().event_action,
                Action::Trigger,
                "{action}"
            );
        }
        assert_eq!(
            normalize(None, r#"{"summary": "s"}"#).unwrap().event_action,
            Action::Trigger
        );
    }

    #[test]
    fn the_sample_form_body() {
        let alert = normalize(None, FORM).unwrap();
        assert_eq!(alert.event_action, Action::Trigger);
        let p = payload(&alert);
        assert_eq!(p.summary, "Disk usage above 90% on batch-7");
        assert_eq!(
            p.custom_details,
            Some(json!({"details": "/var/lib/docker is at 93% (48.1 GiB of 51.7 GiB)"}))
        );
        assert_eq!(
            alert.dedup_key,
            DedupKey::digest_of(&[
                "Disk usage above 90% on batch-7",
                "/var/lib/docker is at 93% (48.1 GiB of 51.7 GiB)"
            ])
        );
    }

    #[test]
    fn fields_may_come_in_the_query_string() {
        let alert = normalize(Some("token=x&summary=From+the+query&action=close&dedup=k1"), "").unwrap();
        assert_eq!(payload(&alert).summary, "From the query");
        assert_eq!(alert.event_action, Action::Resolve);
        assert_eq!(alert.dedup_key.as_str(), "k1");
    }

    #[test]
    fn body_values_win_over_query_values() {
        let query = Some("summary=query&dedup=from-query&action=close");
        let alert = normalize(query, r#"{"summary": "json"}"#).unwrap();
        assert_eq!(payload(&alert).summary, "json");
        // What the body does not set still comes from the query.
        assert_eq!(alert.dedup_key.as_str(), "from-query");
        assert_eq!(alert.event_action, Action::Resolve);
        let alert = normalize(query, "summary=form&dedup=from-form").unwrap();
        assert_eq!(payload(&alert).summary, "form");
        assert_eq!(alert.dedup_key.as_str(), "from-form");
        // A JSON null is no value, as in GoAlert.
        let alert = normalize(query, r#"{"summary": null}"#).unwrap();
        assert_eq!(payload(&alert).summary, "query");
    }

    #[test]
    fn the_first_of_repeated_form_values_counts() {
        let alert = normalize(None, "summary=first&summary=second").unwrap();
        assert_eq!(payload(&alert).summary, "first");
    }

    #[test]
    fn json_keys_match_case_insensitively() {
        let alert = normalize(None, r#"{"Summary": "capitalised", "Dedup": "k"}"#).unwrap();
        assert_eq!(payload(&alert).summary, "capitalised");
        assert_eq!(alert.dedup_key.as_str(), "k");
    }

    #[test]
    fn the_summary_is_required_and_long_ones_are_cut() {
        assert_eq!(refused(None, r#"{"details": "d"}"#), vec!["summary"]);
        assert_eq!(refused(None, "summary=++&details=d"), vec!["summary"]);
        assert_eq!(refused(None, ""), vec!["summary"]);
        let long = json!({"summary": "é".repeat(3000)}).to_string();
        assert_eq!(
            payload(&normalize(None, &long).unwrap()).summary.chars().count(),
            Payload::MAX_SUMMARY_CHARS
        );
    }

    #[test]
    fn the_default_key_is_a_digest_of_summary_and_details() {
        let a = normalize(None, r#"{"summary": "s", "details": "d"}"#).unwrap();
        assert_eq!(a.dedup_key, DedupKey::digest_of(&["s", "d"]));
        let b = normalize(None, r#"{"summary": "s", "details": "other"}"#).unwrap();
        assert_ne!(a.dedup_key, b.dedup_key);
        let c = normalize(None, r#"{"summary": "s"}"#).unwrap();
        assert_eq!(c.dedup_key, DedupKey::digest_of(&["s", ""]));
    }

    #[test]
    fn wrong_types_and_bad_bodies_are_named() {
        assert_eq!(
            refused(None, r#"{"summary": ["a"], "dedup": {"k": 1}}"#),
            vec!["summary", "dedup"]
        );
        assert_eq!(refused(None, r#"[{"summary": "s"}]"#), vec!["body"]);
        assert_eq!(refused(None, r#"{"summary": "#), vec!["body"]);
        // Structured details are kept, not refused.
        let alert = normalize(None, r#"{"summary": "s", "details": {"disk": "93%"}}"#).unwrap();
        assert_eq!(
            payload(&alert).custom_details,
            Some(json!({"details": {"disk": "93%"}}))
        );
    }

    #[test]
    fn the_token_is_read_from_a_form_or_json_body_only() {
        let headers = HeaderMap::new();
        assert_eq!(
            Generic.key_in_body(&inbound(&headers, None, FORM)).as_deref(),
            Some(TOKEN)
        );
        let json = format!(r#"{{"token": "{TOKEN}", "summary": "s"}}"#);
        assert_eq!(
            Generic.key_in_body(&inbound(&headers, None, &json)).as_deref(),
            Some(TOKEN)
        );
        assert_eq!(Generic.key_in_body(&inbound(&headers, Some("token=q"), TRIGGER)), None);
        assert_eq!(Generic.key_in_body(&inbound(&headers, None, "{broken")), None);
    }

    fn event(alert: Alert) -> Event {
        let integration = integration();
        Event {
            id: EventId::generate(),
            service: integration.service.clone(),
            origin: Origin::Integration {
                integration: integration.id,
                provider: ProviderKind::Generic,
            },
            received_at: Utc::now(),
            alert,
        }
    }

    fn answer(accept: Option<&str>, body: &str, hint: Option<IncidentHint>) -> Answer {
        let mut headers = HeaderMap::new();
        if let Some(accept) = accept {
            headers.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
        }
        let inbound = inbound(&headers, None, body);
        let events = [event(normalize(None, body).unwrap())];
        Generic.accepted(
            &inbound,
            &Accepted {
                events: &events,
                integration: &integration(),
                hint,
            },
        )
    }

    fn hint(is_new: bool) -> IncidentHint {
        let integration = integration();
        IncidentHint {
            incident: IncidentId::for_opening(
                &integration.service,
                &DedupKey::parse("invoice-export-nightly").unwrap(),
                &EventId::new("e1"),
            ),
            is_new,
        }
    }

    #[test]
    fn the_hint_is_wanted_only_when_json_is_accepted() {
        let mut headers = HeaderMap::new();
        assert!(!Generic.wants_incident_hint(&inbound(&headers, None, TRIGGER)));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html, Application/JSON;q=0.9"),
        );
        assert!(Generic.wants_incident_hint(&inbound(&headers, None, TRIGGER)));
    }

    #[test]
    fn the_answer_is_204_unless_json_is_accepted() {
        let plain = answer(None, TRIGGER, None);
        assert_eq!(plain.status(), StatusCode::NO_CONTENT);
        assert!(plain.body().is_empty());
        assert_eq!(answer(Some("*/*"), TRIGGER, None).status(), StatusCode::NO_CONTENT);
    }

    #[test]
    fn a_json_answer_names_the_incident_and_whether_it_is_new() {
        let hint = hint(true);
        let incident = hint.incident.as_str().to_owned();
        let answer = answer(Some("application/json"), TRIGGER, Some(hint));
        assert_eq!(answer.status(), StatusCode::OK);
        let body: Value = serde_json::from_slice(answer.body()).unwrap();
        assert_eq!(
            body,
            json!({"AlertID": incident, "ServiceID": "checkout", "IsNew": true})
        );
    }

    #[test]
    fn a_close_is_never_new() {
        let answer = answer(Some("application/json"), CLOSE, Some(hint(true)));
        let body: Value = serde_json::from_slice(answer.body()).unwrap();
        assert_eq!(body["IsNew"], json!(false));
    }
}
