//! PagerDuty's Events API v2 (`POST /v2/enqueue`), held to PagerDuty's own
//! contract so that any client written for PagerDuty (Alertmanager's
//! `pagerduty_configs`, Grafana, Datadog, the PagerDuty SDKs) works unchanged.
//!
//! <https://developer.pagerduty.com/docs/events-api-v2/trigger-events/>

use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::Deserialize;

use crate::answer::{json_answer, Answer};
use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, FieldError, Image, Link, Payload, Severity};
use crate::providers::{Accepted, Inbound, InvalidPayload, Provider, ProviderKind};

pub struct EventsV2;

/// The length of a PagerDuty integration (routing) key.
const ROUTING_KEY_CHARS: usize = 32;

/// PagerDuty's message for a refused event; the errors list says why.
const INVALID: &str = "Event object is invalid";

// The body as clients send it. Everything is optional here so that every
// missing field is reported together, by name, instead of failing on the
// first one.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EnqueueRequest {
    routing_key: Option<String>,
    event_action: Option<String>,
    dedup_key: Option<String>,
    payload: Option<EventPayload>,
    // Option: Go clients with a nil slice and no `omitempty` send `null`.
    links: Option<Vec<LinkIn>>,
    images: Option<Vec<ImageIn>>,
    client: Option<String>,
    client_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EventPayload {
    summary: Option<String>,
    source: Option<String>,
    severity: Option<String>,
    timestamp: Option<String>,
    component: Option<String>,
    group: Option<String>,
    class: Option<String>,
    custom_details: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LinkIn {
    href: Option<String>,
    text: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ImageIn {
    src: Option<String>,
    href: Option<String>,
    alt: Option<String>,
}

/// Only the key, for authentication before the whole body is validated.
#[derive(Deserialize)]
struct RoutingKeyOnly {
    #[serde(default)]
    routing_key: Option<String>,
}

impl Provider for EventsV2 {
    fn kind(&self) -> ProviderKind {
        ProviderKind::EventsV2
    }

    fn key_in_body(&self, inbound: &Inbound<'_>) -> Option<String> {
        let body: RoutingKeyOnly = serde_json::from_slice(inbound.body).ok()?;
        body.routing_key
            .map(|key| key.trim().to_owned())
            .filter(|key| !key.is_empty())
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let request = parse(inbound.body)?;
        alert_from(&request)
            .map(|alert| vec![alert])
            .map_err(|errors| InvalidPayload::new(INVALID, errors))
    }

    fn accepted(&self, _inbound: &Inbound<'_>, accepted: &Accepted<'_>) -> Answer {
        let mut body = serde_json::json!({
            "status": "success",
            "message": "Event processed",
        });
        if let Some(event) = accepted.events.first() {
            body["dedup_key"] = serde_json::Value::from(event.dedup_key().as_str());
        }
        json_answer(StatusCode::ACCEPTED, &body)
    }
}

fn parse(body: &[u8]) -> Result<EnqueueRequest, InvalidPayload> {
    // PagerDuty takes one event per request; a batch is a common mistake
    // worth naming plainly rather than as a type error.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(InvalidPayload::field(
            "body",
            "must be one JSON object (one event), not an array",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            InvalidPayload::unreadable(inner)
        } else {
            InvalidPayload::field(path, format!("has the wrong type: {inner}"))
        }
    })
}

/// Validates the whole request, collecting every problem.
fn alert_from(request: &EnqueueRequest) -> Result<Alert, Vec<FieldError>> {
    let mut errors = Vec::new();

    if let Some(key) = &request.routing_key {
        // A request authenticated by header may omit routing_key; one that
        // sends it must send a well-formed one, as PagerDuty requires.
        if key.trim().chars().count() != ROUTING_KEY_CHARS {
            errors.push(FieldError::new(
                "routing_key",
                format!("has the wrong length (must be {ROUTING_KEY_CHARS} characters, the integration key)"),
            ));
        }
    }

    let action = match non_blank(&request.event_action) {
        None => {
            errors.push(missing("event_action"));
            None
        }
        Some(value) => Action::parse("event_action", value)
            .map_err(|_| {
                errors.push(FieldError::new(
                    "event_action",
                    format!("is invalid: '{value}' is not one of trigger, acknowledge, resolve"),
                ))
            })
            .ok(),
    };

    let dedup_key = dedup_key(request.dedup_key.as_deref(), action)
        .map_err(|e| errors.push(e))
        .ok();

    let payload = match (action, &request.payload) {
        (Some(Action::Trigger), None) => {
            errors.push(FieldError::new(
                "payload",
                "is missing (a trigger needs summary, source and severity)",
            ));
            None
        }
        (Some(Action::Trigger), Some(payload)) => payload_from(payload).map_err(|e| errors.extend(e)).ok(),
        // PagerDuty ignores the payload of acknowledge and resolve, so a
        // partial one there is no error; a complete one is kept for its
        // timestamp and details.
        (_, Some(payload)) => payload_from(payload).ok(),
        (_, None) => None,
    };

    let links = links_from(request.links.as_deref().unwrap_or_default(), &mut errors);
    let images = images_from(request.images.as_deref().unwrap_or_default(), &mut errors);

    match (action, dedup_key) {
        (Some(event_action), Some(dedup_key)) if errors.is_empty() => Ok(Alert {
            event_action,
            dedup_key,
            payload,
            links,
            images,
            client: non_blank(&request.client).map(str::to_owned),
            client_url: non_blank(&request.client_url).map(str::to_owned),
        }),
        _ => Err(errors),
    }
}

/// A trigger without a key gets a fresh one, as PagerDuty does;
/// acknowledge and resolve must name the alert they act on.
fn dedup_key(value: Option<&str>, action: Option<Action>) -> Result<DedupKey, FieldError> {
    let value = value.filter(|v| !v.trim().is_empty());
    match (value, action) {
        (Some(value), _) if value.chars().count() > DedupKey::MAX_CHARS => Err(FieldError::new(
            "dedup_key",
            format!(
                "is too long ({} characters; at most {} are allowed)",
                value.chars().count(),
                DedupKey::MAX_CHARS
            ),
        )),
        (Some(value), _) => DedupKey::parse(value),
        (None, Some(Action::Acknowledge | Action::Resolve)) => Err(FieldError::new(
            "dedup_key",
            "is missing or blank (acknowledge and resolve must name the alert's dedup_key)",
        )),
        (None, _) => Ok(DedupKey::generate()),
    }
}

fn payload_from(payload: &EventPayload) -> Result<Payload, Vec<FieldError>> {
    let mut errors = Vec::new();

    let summary = match non_blank(&payload.summary) {
        None => {
            errors.push(missing("payload.summary"));
            None
        }
        // PagerDuty refuses long summaries: silently cutting one would hide
        // that the sender's summaries never fit.
        Some(summary) if summary.chars().count() > Payload::MAX_SUMMARY_CHARS => {
            errors.push(FieldError::new(
                "payload.summary",
                format!(
                    "is too long ({} characters; at most {} are allowed)",
                    summary.chars().count(),
                    Payload::MAX_SUMMARY_CHARS
                ),
            ));
            None
        }
        Some(summary) => Some(summary.to_owned()),
    };

    let source = non_blank(&payload.source).map(str::to_owned);
    if source.is_none() {
        errors.push(missing("payload.source"));
    }

    let severity = match non_blank(&payload.severity) {
        None => {
            errors.push(missing("payload.severity"));
            None
        }
        Some(value) => value
            .parse::<Severity>()
            .map_err(|_| {
                errors.push(FieldError::new(
                    "payload.severity",
                    format!("is invalid: '{value}' is not one of critical, error, warning, info"),
                ))
            })
            .ok(),
    };

    let timestamp = match non_blank(&payload.timestamp) {
        None => None,
        Some(value) => parse_timestamp(value)
            .ok_or_else(|| {
                errors.push(FieldError::new(
                    "payload.timestamp",
                    format!("is invalid: '{value}' is not an RFC 3339 date-time such as 2024-05-01T12:00:00Z"),
                ))
            })
            .ok(),
    };

    match (summary, source, severity) {
        (Some(summary), Some(source), Some(severity)) if errors.is_empty() => Ok(Payload {
            summary,
            source,
            severity,
            timestamp,
            component: non_blank(&payload.component).map(str::to_owned),
            group: non_blank(&payload.group).map(str::to_owned),
            class: non_blank(&payload.class).map(str::to_owned),
            custom_details: payload.custom_details.clone().filter(|d| !d.is_null()),
        }),
        _ => Err(errors),
    }
}

/// RFC 3339, and also the `+0000` offset (no colon) that PagerDuty's own
/// documentation uses in its examples, so clients copied from it work.
fn parse_timestamp(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .or_else(|_| DateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn links_from(links: &[LinkIn], errors: &mut Vec<FieldError>) -> Vec<Link> {
    links
        .iter()
        .enumerate()
        .filter_map(|(i, link)| match non_blank(&link.href) {
            Some(href) => Some(Link {
                href: href.to_owned(),
                text: non_blank(&link.text).map(str::to_owned),
            }),
            None => {
                errors.push(missing(&format!("links[{i}].href")));
                None
            }
        })
        .collect()
}

fn images_from(images: &[ImageIn], errors: &mut Vec<FieldError>) -> Vec<Image> {
    images
        .iter()
        .enumerate()
        .filter_map(|(i, image)| match non_blank(&image.src) {
            Some(src) => Some(Image {
                src: src.to_owned(),
                href: non_blank(&image.href).map(str::to_owned),
                alt: non_blank(&image.alt).map(str::to_owned),
            }),
            None => {
                errors.push(missing(&format!("images[{i}].src")));
                None
            }
        })
        .collect()
}

fn non_blank(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn missing(field: &str) -> FieldError {
    FieldError::new(field, "is missing or blank")
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use http::HeaderMap;
    use serde_json::json;

    use super::*;
    use crate::auth::KeyHash;
    use crate::config::FieldMapping;
    use crate::event::{Event, EventId, IntegrationId, Origin, ServiceId};

    const TRIGGER: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/events-v2/trigger.json"
    ));
    const ACKNOWLEDGE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/events-v2/acknowledge.json"
    ));
    const RESOLVE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/events-v2/resolve.json"
    ));
    const ALERTMANAGER: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/events-v2/alertmanager-trigger.json"
    ));

    fn integration() -> Integration {
        Integration {
            id: IntegrationId::parse("checkout-events").unwrap(),
            service: ServiceId::parse("checkout").unwrap(),
            provider: ProviderKind::EventsV2,
            key_hash: KeyHash::of("22222222222222222222222222222222"),
            secret: None,
            enabled: true,
            fields: FieldMapping::default(),
            cloudwatch: Default::default(),
            dedup_key: None,
            rate_limit_per_minute: None,
            secret_ref: None,
        }
    }

    fn inbound<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Inbound<'a> {
        Inbound {
            headers,
            query: None,
            body,
            received_at: Utc::now(),
        }
    }

    fn normalize(body: &str) -> Result<Vec<Alert>, InvalidPayload> {
        let headers = HeaderMap::new();
        EventsV2.normalize(&inbound(&headers, body.as_bytes()), &integration())
    }

    fn one(body: &str) -> Alert {
        let mut alerts = normalize(body).unwrap();
        assert_eq!(alerts.len(), 1);
        alerts.remove(0)
    }

    /// The fields named by the errors, in order.
    fn refused(body: &str) -> Vec<String> {
        normalize(body)
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    fn error_for(body: &str, field: &str) -> FieldError {
        let invalid = normalize(body).unwrap_err();
        invalid
            .errors
            .into_iter()
            .find(|e| e.field == field)
            .unwrap_or_else(|| panic!("no error for {field}"))
    }

    fn trigger_with(change: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut value: serde_json::Value = serde_json::from_str(TRIGGER).unwrap();
        change(&mut value);
        value.to_string()
    }

    #[test]
    fn the_sample_trigger_maps_every_field() {
        let alert = one(TRIGGER);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "disk-full/prod-datapipe03");
        let payload = alert.payload.unwrap();
        assert_eq!(payload.summary, "DISK at 99% on machine prod-datapipe03.example.com");
        assert_eq!(payload.source, "prod-datapipe03.example.com");
        assert_eq!(payload.severity, Severity::Critical);
        assert_eq!(
            payload.timestamp,
            Some(Utc.with_ymd_and_hms(2015, 7, 17, 8, 42, 58).unwrap() + chrono::Duration::milliseconds(315))
        );
        assert_eq!(payload.component.as_deref(), Some("mysql"));
        assert_eq!(payload.group.as_deref(), Some("prod-datapipe"));
        assert_eq!(payload.class.as_deref(), Some("disk"));
        assert_eq!(payload.custom_details.unwrap()["load avg"], json!(0.75));
        assert_eq!(alert.links[0].href, "https://example.com/runbooks/disk-full");
        assert_eq!(alert.links[0].text.as_deref(), Some("Runbook: disk full"));
        assert_eq!(alert.images[0].alt.as_deref(), Some("Disk usage over the last hour"));
        assert_eq!(alert.images[0].href.as_deref(), Some("https://example.com/"));
        assert_eq!(alert.client.as_deref(), Some("Sample Monitoring Service"));
        assert_eq!(alert.client_url.as_deref(), Some("https://monitoring.example.com"));
    }

    #[test]
    fn acknowledge_and_resolve_need_no_payload() {
        let ack = one(ACKNOWLEDGE);
        assert_eq!(ack.event_action, Action::Acknowledge);
        assert_eq!(ack.dedup_key.as_str(), "disk-full/prod-datapipe03");
        assert_eq!(ack.payload, None);
        let resolve = one(RESOLVE);
        assert_eq!(resolve.event_action, Action::Resolve);
        assert_eq!(resolve.dedup_key, ack.dedup_key);
    }

    #[test]
    fn acknowledge_and_resolve_require_a_dedup_key() {
        for sample in [ACKNOWLEDGE, RESOLVE] {
            let body = sample.replace("\"disk-full/prod-datapipe03\"", "\"  \"");
            let error = error_for(&body, "dedup_key");
            assert!(error.reason.contains("missing or blank"), "{error}");
            let mut value: serde_json::Value = serde_json::from_str(sample).unwrap();
            value.as_object_mut().unwrap().remove("dedup_key");
            assert_eq!(refused(&value.to_string()), vec!["dedup_key"]);
        }
    }

    #[test]
    fn a_resolve_keeps_a_complete_payload_and_ignores_a_partial_one() {
        let complete = trigger_with(|v| v["event_action"] = json!("resolve"));
        assert!(one(&complete).payload.is_some());
        let partial = trigger_with(|v| {
            v["event_action"] = json!("resolve");
            v["payload"]["severity"] = json!("sev1");
        });
        assert_eq!(one(&partial).payload, None);
    }

    #[test]
    fn what_alertmanager_sends_is_accepted() {
        let alert = one(ALERTMANAGER);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(
            alert.dedup_key.as_str(),
            "3ac7d87d7ac7d1d8609d266c7365de40a60ffedade83118360d67fa21de6f30a"
        );
        let payload = alert.payload.unwrap();
        assert_eq!(
            payload.summary,
            "[FIRING:2] HighRequestLatency checkout (production api critical)"
        );
        assert_eq!(payload.source, "Alertmanager");
        assert_eq!(payload.severity, Severity::Error);
        let details = payload.custom_details.unwrap();
        assert_eq!(details["num_firing"], json!("2"));
        assert_eq!(details["num_resolved"], json!("0"));
        assert!(details["firing"].as_str().unwrap().contains("&g0.tab=1"));
        assert_eq!(alert.client.as_deref(), Some("Alertmanager"));
        assert_eq!(
            alert.client_url.as_deref(),
            Some("http://alertmanager:9093/#/alerts?receiver=tocsin-events-v2")
        );
        assert_eq!(alert.links.len(), 1);
    }

    #[test]
    fn an_alertmanager_resolve_is_a_resolve() {
        let body = ALERTMANAGER.replace("\"event_action\":\"trigger\"", "\"event_action\":\"resolve\"");
        let alert = one(&body);
        assert_eq!(alert.event_action, Action::Resolve);
        assert_eq!(alert.dedup_key, one(ALERTMANAGER).dedup_key);
    }

    #[test]
    fn a_trigger_without_a_dedup_key_gets_a_fresh_one() {
        let body = trigger_with(|v| {
            v.as_object_mut().unwrap().remove("dedup_key");
        });
        let a = one(&body);
        let b = one(&body);
        assert_ne!(a.dedup_key, b.dedup_key);
        assert_eq!(a.dedup_key.as_str().len(), 32);
        let blank = trigger_with(|v| v["dedup_key"] = json!(""));
        assert!(!one(&blank).dedup_key.as_str().is_empty());
    }

    #[test]
    fn dedup_keys_over_255_characters_are_refused() {
        let fits = trigger_with(|v| v["dedup_key"] = json!("é".repeat(255)));
        assert_eq!(one(&fits).dedup_key.as_str(), "é".repeat(255));
        let long = trigger_with(|v| v["dedup_key"] = json!("k".repeat(256)));
        let error = error_for(&long, "dedup_key");
        assert!(error.reason.contains("256"), "{error}");
    }

    #[test]
    fn a_trigger_needs_summary_source_and_severity_and_every_miss_is_listed() {
        let body = trigger_with(|v| v["payload"] = json!({"summary": " ", "custom_details": {"a": 1}}));
        assert_eq!(
            refused(&body),
            vec!["payload.summary", "payload.source", "payload.severity"]
        );
        let reason = error_for(&body, "payload.summary").to_string();
        assert_eq!(reason, "payload.summary: is missing or blank");
    }

    #[test]
    fn a_trigger_without_a_payload_is_refused() {
        let body = trigger_with(|v| {
            v.as_object_mut().unwrap().remove("payload");
        });
        assert_eq!(refused(&body), vec!["payload"]);
    }

    #[test]
    fn summaries_over_1024_characters_are_refused_not_cut() {
        let fits = trigger_with(|v| v["payload"]["summary"] = json!("s".repeat(1024)));
        assert_eq!(one(&fits).payload.unwrap().summary.len(), 1024);
        let long = trigger_with(|v| v["payload"]["summary"] = json!("s".repeat(1025)));
        let error = error_for(&long, "payload.summary");
        assert!(error.reason.contains("1025"), "{error}");
    }

    #[test]
    fn severity_must_be_one_of_the_four() {
        for (given, expected) in [
            ("critical", Severity::Critical),
            ("error", Severity::Error),
            ("warning", Severity::Warning),
            ("info", Severity::Info),
        ] {
            let body = trigger_with(|v| v["payload"]["severity"] = json!(given));
            assert_eq!(one(&body).payload.unwrap().severity, expected);
        }
        let body = trigger_with(|v| v["payload"]["severity"] = json!("sev1"));
        let error = error_for(&body, "payload.severity");
        assert!(error.reason.contains("'sev1'"), "{error}");
    }

    #[test]
    fn event_action_is_required_and_checked() {
        let missing = trigger_with(|v| {
            v.as_object_mut().unwrap().remove("event_action");
        });
        assert_eq!(refused(&missing), vec!["event_action"]);
        let unknown = trigger_with(|v| v["event_action"] = json!("close"));
        let error = error_for(&unknown, "event_action");
        assert!(error.reason.contains("'close'"), "{error}");
    }

    #[test]
    fn timestamps_must_be_rfc3339() {
        let good = trigger_with(|v| v["payload"]["timestamp"] = json!("2024-05-01T12:00:00+02:00"));
        assert_eq!(
            one(&good).payload.unwrap().timestamp,
            Some(Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap())
        );
        let bad = trigger_with(|v| v["payload"]["timestamp"] = json!("yesterday"));
        assert_eq!(refused(&bad), vec!["payload.timestamp"]);
    }

    #[test]
    fn routing_keys_must_be_32_characters() {
        let short = trigger_with(|v| v["routing_key"] = json!("abc"));
        assert_eq!(refused(&short), vec!["routing_key"]);
        // Authenticated by header instead: the body may omit it.
        let absent = trigger_with(|v| {
            v.as_object_mut().unwrap().remove("routing_key");
        });
        assert!(normalize(&absent).is_ok());
    }

    #[test]
    fn links_need_an_href_and_images_a_src() {
        let body = trigger_with(|v| {
            v["links"] = json!([{"href": "https://a.example"}, {"text": "no href"}]);
            v["images"] = json!([{"alt": "no src"}]);
        });
        assert_eq!(refused(&body), vec!["links[1].href", "images[0].src"]);
        let nulls = trigger_with(|v| {
            v["links"] = json!(null);
            v["images"] = json!(null);
        });
        let alert = one(&nulls);
        assert!(alert.links.is_empty() && alert.images.is_empty());
    }

    #[test]
    fn custom_details_may_be_any_json() {
        for details in [
            json!("plain text"),
            json!([1, 2]),
            json!(42),
            json!({"nested": {"a": [true]}}),
        ] {
            let body = trigger_with(|v| v["payload"]["custom_details"] = details.clone());
            assert_eq!(one(&body).payload.unwrap().custom_details, Some(details));
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = trigger_with(|v| {
            v["payload"]["brand_new_field"] = json!(1);
            v["also_new"] = json!({"x": 1});
        });
        assert!(normalize(&body).is_ok());
    }

    #[test]
    fn an_array_or_a_wrong_type_is_named() {
        assert_eq!(refused(&format!("[{TRIGGER}]")), vec!["body"]);
        assert_eq!(refused("{not json"), vec!["body"]);
        assert_eq!(refused("\"a string\""), vec!["body"]);
        let body = trigger_with(|v| v["payload"]["summary"] = json!(12));
        assert_eq!(refused(&body), vec!["payload.summary"]);
    }

    #[test]
    fn the_routing_key_is_read_from_the_body() {
        let headers = HeaderMap::new();
        assert_eq!(
            EventsV2.key_in_body(&inbound(&headers, TRIGGER.as_bytes())).as_deref(),
            Some("22222222222222222222222222222222")
        );
        assert_eq!(EventsV2.key_in_body(&inbound(&headers, b"{}")), None);
        assert_eq!(EventsV2.key_in_body(&inbound(&headers, b"garbage")), None);
    }

    #[test]
    fn the_answer_is_pagerdutys() {
        let integration = integration();
        let alert = one(TRIGGER);
        let events = [Event {
            id: EventId::generate(),
            service: integration.service.clone(),
            origin: Origin::Integration {
                integration: integration.id.clone(),
                provider: ProviderKind::EventsV2,
            },
            received_at: Utc::now(),
            alert,
        }];
        let headers = HeaderMap::new();
        let answer = EventsV2.accepted(
            &inbound(&headers, TRIGGER.as_bytes()),
            &Accepted {
                events: &events,
                integration: &integration,
                hint: None,
            },
        );
        assert_eq!(answer.status(), StatusCode::ACCEPTED);
        let body: serde_json::Value = serde_json::from_slice(answer.body()).unwrap();
        assert_eq!(
            body,
            json!({"status": "success", "message": "Event processed", "dedup_key": "disk-full/prod-datapipe03"})
        );
    }
}
