//! Better Stack Uptime's (formerly Better Uptime) outgoing incident webhook
//! (`POST /integrations/better-uptime`): one JSON:API incident resource per
//! change, `{"event": "started" | "acknowledged" | "resolved", "data":
//! {"id", "type": "incident", "attributes": {...}}}`.
//!
//! The incident's own id is the key: its started, acknowledged and resolved
//! deliveries all carry it, and a monitor that fails again after recovering
//! opens a new Better Stack incident, so a new Tocsin incident too. The
//! attributes decide the action (resolved_at, then acknowledged_at, else a
//! trigger), so that a reordered or repeated delivery says what it knows.
//! Monitor and on-call webhooks posted to the same URL, and comments, are
//! accepted and change nothing.
//!
//! <https://betterstack.com/docs/uptime/webhooks/>

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, FieldError, Image, Link, Payload, Severity};
use crate::providers::header_secret::verify_secret_header;
use crate::providers::{Inbound, InvalidPayload, Provider, ProviderKind};
use crate::signature::SignatureError;

pub struct BetterUptime;

const INVALID: &str = "the Better Stack incident webhook is invalid";

/// Incident ids are integers another tool's ids on the same service could
/// repeat.
const KEY_PREFIX: &str = "better-uptime";

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Delivery {
    event: Option<String>,
    data: Option<Resource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Resource {
    /// A string in JSON:API; a number is accepted from proxies that convert it.
    id: Value,
    #[serde(rename = "type")]
    kind: Option<String>,
    attributes: IncidentAttributes,
    relationships: Map<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IncidentAttributes {
    name: Option<String>,
    url: Option<String>,
    http_method: Option<String>,
    cause: Option<String>,
    started_at: Option<String>,
    acknowledged_at: Option<String>,
    acknowledged_by: Option<String>,
    resolved_at: Option<String>,
    resolved_by: Option<String>,
    team_name: Option<String>,
    response_content: Option<String>,
    response_url: Option<String>,
    screenshot_url: Option<String>,
}

impl Provider for BetterUptime {
    fn kind(&self) -> ProviderKind {
        ProviderKind::BetterUptime
    }

    /// Better Stack documents no signature, but an outgoing webhook can send
    /// custom headers: a secret travels as is in `X-Tocsin-Secret`, compared
    /// in constant time.
    fn verify(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<(), SignatureError> {
        verify_secret_header(inbound.headers, integration.secret.as_ref())
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let raw: Value = serde_json::from_slice(inbound.body).map_err(InvalidPayload::unreadable)?;
        if !raw.is_object() {
            return Err(InvalidPayload::field("body", "must be a JSON object"));
        }
        require_objects(&raw, &[("/data", "data"), ("/data/attributes", "data.attributes")])?;
        let delivery: Delivery = serde_path_to_error::deserialize(&raw).map_err(|error| {
            let path = error.path().to_string();
            InvalidPayload::field(path, format!("has the wrong type: {}", error.into_inner()))
        })?;
        let event = non_blank(delivery.event.as_deref());
        let Some(resource) = delivery.data else {
            return Err(InvalidPayload::field(
                "data",
                "is missing: Better Stack sends the incident under \"data\"",
            ));
        };
        match non_blank(resource.kind.as_deref()) {
            Some(kind) if kind.eq_ignore_ascii_case("incident") => {}
            // Monitor and on-call webhooks are configured separately in
            // Better Stack but may share the URL: nothing to page about.
            Some(kind) => {
                tracing::info!(
                    kind,
                    event = event.unwrap_or(""),
                    "better stack webhook not about an incident: ignored"
                );
                return Ok(Vec::new());
            }
            None => return Err(InvalidPayload::field("data.type", "is missing (\"incident\")")),
        }
        // A comment changes nothing the incident's state says.
        if event.is_some_and(|e| e.eq_ignore_ascii_case("comment")) {
            return Ok(Vec::new());
        }
        alert_from(&resource, event).map(|alert| vec![alert])
    }
}

fn alert_from(incident: &Resource, event: Option<&str>) -> Result<Alert, InvalidPayload> {
    let attributes = &incident.attributes;
    let mut errors = Vec::new();
    let id = match &incident.id {
        Value::String(s) => non_blank(Some(s)).map(str::to_owned),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    if id.is_none() {
        errors.push(FieldError::new("data.id", "is missing: the incident's id is its key"));
    }
    let mut time = |field: &str, value: Option<&str>| match non_blank(value) {
        None => None,
        Some(text) => match DateTime::parse_from_rfc3339(text) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(e) => {
                errors.push(FieldError::new(
                    format!("data.attributes.{field}"),
                    format!("'{text}' is not an ISO 8601 time: {e}"),
                ));
                None
            }
        },
    };
    let started_at = time("started_at", attributes.started_at.as_deref());
    let acknowledged_at = time("acknowledged_at", attributes.acknowledged_at.as_deref());
    let resolved_at = time("resolved_at", attributes.resolved_at.as_deref());
    let Some(id) = id.filter(|_| errors.is_empty()) else {
        return Err(InvalidPayload::new(INVALID, errors));
    };
    let dedup_key = DedupKey::parse(&format!("{KEY_PREFIX}:{id}"))
        .map_err(|e| InvalidPayload::new(INVALID, vec![e.at("data.id")]))?;

    // The latest state the attributes show decides, and its time orders it.
    let (event_action, timestamp) = if non_blank(attributes.resolved_at.as_deref()).is_some() {
        (Action::Resolve, resolved_at)
    } else if non_blank(attributes.acknowledged_at.as_deref()).is_some() {
        (Action::Acknowledge, acknowledged_at)
    } else {
        (Action::Trigger, started_at)
    };

    let name = non_blank(attributes.name.as_deref());
    let url = non_blank(attributes.url.as_deref());
    let cause = non_blank(attributes.cause.as_deref());
    let head = name.or(url).unwrap_or("Better Stack incident");
    let summary = match cause {
        Some(cause) => format!("{head}: {cause}"),
        None => head.to_owned(),
    };
    let monitor_id = incident
        .relationships
        .get("monitor")
        .and_then(|m| m.pointer("/data/id"))
        .cloned();

    Ok(Alert {
        event_action,
        dedup_key,
        payload: Some(Payload {
            summary: Payload::truncate_summary(&summary),
            source: url.or(name).unwrap_or(KEY_PREFIX).to_owned(),
            // Better Stack incidents are what it calls and texts people for.
            severity: Severity::Critical,
            timestamp,
            component: name.map(str::to_owned),
            group: non_blank(attributes.team_name.as_deref()).map(str::to_owned),
            class: cause.map(str::to_owned),
            custom_details: Some(json!({
                "event": event,
                "incident_id": id,
                "monitor_id": monitor_id,
                "cause": cause,
                "url": url,
                "http_method": non_blank(attributes.http_method.as_deref()),
                "started_at": non_blank(attributes.started_at.as_deref()),
                "acknowledged_at": non_blank(attributes.acknowledged_at.as_deref()),
                "acknowledged_by": non_blank(attributes.acknowledged_by.as_deref()),
                "resolved_at": non_blank(attributes.resolved_at.as_deref()),
                "resolved_by": non_blank(attributes.resolved_by.as_deref()),
                "response_content": non_blank(attributes.response_content.as_deref()),
            })),
        }),
        links: links_of(attributes),
        images: non_blank(attributes.screenshot_url.as_deref())
            .map(|src| Image {
                src: src.to_owned(),
                href: Some(src.to_owned()),
                alt: Some("Screenshot at the failure".to_owned()),
            })
            .into_iter()
            .collect(),
        client: Some("Better Stack Uptime".to_owned()),
        client_url: None,
    })
}

fn links_of(attributes: &IncidentAttributes) -> Vec<Link> {
    let link = |href: Option<&str>, text: &str| {
        non_blank(href)
            .filter(|h| h.starts_with("https://") || h.starts_with("http://"))
            .map(|h| Link {
                href: h.to_owned(),
                text: Some(text.to_owned()),
            })
    };
    [
        link(attributes.url.as_deref(), "Monitored URL"),
        link(attributes.response_url.as_deref(), "Failed response"),
    ]
    .into_iter()
    .flatten()
    .collect()
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

    use super::*;
    use crate::auth::KeyHash;
    use crate::config::Catalog;
    use crate::ingest::{IngestRequest, IngestService};
    use crate::memory::MemoryStore;
    use crate::signature::hmac_sha256_hex;

    const STARTED: &str = include_str!("../../../../events/better-uptime/started.json");
    const ACKNOWLEDGED: &str = include_str!("../../../../events/better-uptime/acknowledged.json");
    const RESOLVED: &str = include_str!("../../../../events/better-uptime/resolved.json");
    const MONITOR_CREATED: &str = include_str!("../../../../events/better-uptime/monitor-created.json");

    const KEY: &str = "66666666666666666666666666666666";
    const SECRET: &str = "better-stack-shared-secret";

    /// Built from config text as in production, so that settings other
    /// providers add to Integration need no change here.
    fn catalog(with_secret: bool) -> Catalog {
        let secret = if with_secret {
            format!(", secret: {SECRET}")
        } else {
            String::new()
        };
        let config = format!(
            "services:\n  - id: checkout\n    integrations:\n      - {{id: checkout-better-uptime, type: better-uptime, key: {KEY}{secret}}}\n"
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
                provider: ProviderKind::BetterUptime,
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
        BetterUptime.normalize(&inbound, &integration())
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

    fn with(sample: &str, change: impl FnOnce(&mut Value)) -> String {
        let mut value: Value = serde_json::from_str(sample).unwrap();
        change(&mut value);
        value.to_string()
    }

    fn at(text: &str) -> Option<DateTime<Utc>> {
        Some(DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc))
    }

    #[test]
    fn a_started_incident_triggers_on_the_incident_id() {
        let alert = one(STARTED);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "better-uptime:1");
        let payload = payload(&alert);
        assert_eq!(payload.summary, "Tesla.com homepage: Error 500");
        assert_eq!(payload.severity, Severity::Critical);
        assert_eq!(payload.source, "https://tesla.com");
        assert_eq!(payload.class.as_deref(), Some("Error 500"));
        assert_eq!(payload.timestamp, at("2020-10-21T10:51:28.151Z"));
        let details = payload.custom_details.as_ref().unwrap();
        assert_eq!(details["event"], "started");
        assert_eq!(details["monitor_id"], "4");
        assert_eq!(details["http_method"], "get");
        assert_eq!(alert.links.len(), 1);
        assert_eq!(alert.links[0].href, "https://tesla.com");
        assert!(alert.images.is_empty());
    }

    #[test]
    fn acknowledged_and_resolved_meet_the_started_key_at_their_own_times() {
        let started = one(STARTED);
        let acknowledged = one(ACKNOWLEDGED);
        let resolved = one(RESOLVED);
        assert_eq!(acknowledged.event_action, Action::Acknowledge);
        assert_eq!(resolved.event_action, Action::Resolve);
        assert_eq!(acknowledged.dedup_key, started.dedup_key);
        assert_eq!(resolved.dedup_key, started.dedup_key);
        assert_eq!(payload(&acknowledged).timestamp, at("2020-10-21T10:55:02.768Z"));
        assert_eq!(payload(&resolved).timestamp, at("2020-10-21T11:03:41.002Z"));
    }

    #[test]
    fn the_attributes_decide_whatever_the_event_says() {
        // A late "acknowledged" delivery of an incident already resolved says
        // what it knows: it is resolved.
        let body = with(RESOLVED, |v| v["event"] = json!("acknowledged"));
        assert_eq!(one(&body).event_action, Action::Resolve);
        let reopened = with(STARTED, |v| v["event"] = json!("reopened"));
        assert_eq!(one(&reopened).event_action, Action::Trigger);
        let no_event = with(ACKNOWLEDGED, |v| {
            v.as_object_mut().unwrap().remove("event");
        });
        assert_eq!(one(&no_event).event_action, Action::Acknowledge);
    }

    #[test]
    fn monitor_webhooks_and_comments_are_accepted_without_an_incident() {
        assert_eq!(normalize(MONITOR_CREATED).unwrap(), Vec::new());
        let comment = with(STARTED, |v| v["event"] = json!("comment"));
        assert_eq!(normalize(&comment).unwrap(), Vec::new());
    }

    #[test]
    fn screenshots_and_failed_responses_are_attached() {
        let body = with(STARTED, |v| {
            v["data"]["attributes"]["screenshot_url"] = json!("https://uptime.betterstack.com/screenshots/1.png");
            v["data"]["attributes"]["response_url"] = json!("https://uptime.betterstack.com/responses/1");
            v["data"]["attributes"]["team_name"] = json!("Payments");
        });
        let alert = one(&body);
        assert_eq!(alert.images.len(), 1);
        assert_eq!(alert.images[0].src, "https://uptime.betterstack.com/screenshots/1.png");
        assert_eq!(alert.links.len(), 2);
        assert_eq!(alert.links[1].text.as_deref(), Some("Failed response"));
        assert_eq!(payload(&alert).group.as_deref(), Some("Payments"));
    }

    #[test]
    fn a_numeric_incident_id_meets_the_textual_one() {
        let body = with(RESOLVED, |v| v["data"]["id"] = json!(1));
        assert_eq!(one(&body).dedup_key, one(STARTED).dedup_key);
    }

    #[test]
    fn missing_ids_bad_times_and_bad_bodies_are_refused_by_name() {
        let no_id = with(STARTED, |v| {
            v["data"].as_object_mut().unwrap().remove("id");
        });
        assert_eq!(refused(&no_id), vec!["data.id"]);
        let bad_time = with(STARTED, |v| v["data"]["attributes"]["started_at"] = json!("yesterday"));
        assert_eq!(refused(&bad_time), vec!["data.attributes.started_at"]);
        let no_type = with(STARTED, |v| {
            v["data"].as_object_mut().unwrap().remove("type");
        });
        assert_eq!(refused(&no_type), vec!["data.type"]);
        assert_eq!(refused(r#"{"event": "started"}"#), vec!["data"]);
        let typed = with(STARTED, |v| v["data"]["attributes"] = json!([]));
        assert_eq!(refused(&typed), vec!["data.attributes"]);
        assert_eq!(refused("{"), vec!["body"]);
        assert_eq!(refused("[]"), vec!["body"]);
    }

    #[test]
    fn through_ingest_signatures_and_bodies_get_the_right_answers() {
        let (status, store) = post(STARTED.as_bytes(), &[], false);
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(store.queued_events().len(), 1);
        // With a secret set, it must come verbatim in X-Tocsin-Secret.
        assert_eq!(post(STARTED.as_bytes(), &[], true).0, StatusCode::UNAUTHORIZED);
        let wrong = [("x-tocsin-secret", "not-the-secret-at-all")];
        assert_eq!(post(STARTED.as_bytes(), &wrong, true).0, StatusCode::UNAUTHORIZED);
        let right = [("x-tocsin-secret", SECRET)];
        let (status, store) = post(STARTED.as_bytes(), &right, true);
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(store.queued_events().len(), 1);
        // A body signature is no substitute: the header is what is checked.
        let signed = format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), STARTED.as_bytes()));
        assert_eq!(
            post(STARTED.as_bytes(), &[("x-signature", &signed)], true).0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(post(b"{", &[], false).0, StatusCode::BAD_REQUEST);
        // A monitor webhook on the same URL: accepted, nothing queued.
        let (status, store) = post(MONITOR_CREATED.as_bytes(), &[], false);
        assert_eq!(status, StatusCode::ACCEPTED);
        assert!(store.queued_events().is_empty());
    }
}
