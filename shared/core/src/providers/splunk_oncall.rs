//! Splunk On-Call (formerly VictorOps) REST endpoint alerts, so that any tool
//! that posts to VictorOps' "REST - Generic" integration (Alertmanager's
//! `victorops_configs`, Grafana, Graylog, scripts) can post to Tocsin: one
//! alert per request, keyed by `entity_id`, its `message_type` deciding what
//! happens. INFO never opens anything, as in Splunk On-Call.
//!
//! <https://help.victorops.com/knowledge-base/rest-endpoint-integration-guide/>
//! <https://help.victorops.com/knowledge-base/incident-fields-glossary/>

use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use crate::answer::{json_answer, Answer};
use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, FieldError, Image, Link, Payload, Severity};
use crate::providers::{Accepted, Inbound, InvalidPayload, Provider, ProviderKind};

pub struct SplunkOnCall;

const SOURCE: &str = "splunk-oncall";

const INVALID: &str = "the Splunk On-Call alert is invalid";

/// Annotation fields: `vo_annotate.u.<Title>` is a link, `vo_annotate.i.<Title>`
/// an image, `vo_annotate.s.<Title>` a note (kept in the details).
const ANNOTATE_URL: &str = "vo_annotate.u.";
const ANNOTATE_IMAGE: &str = "vo_annotate.i.";

/// Timestamps above this are milliseconds (some senders, such as Graylog's
/// plugin, send milliseconds where VictorOps documents seconds): in seconds
/// it would be the year 5138.
const MILLIS_THRESHOLD: i64 = 100_000_000_000;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RestAlert {
    message_type: Option<String>,
    entity_id: Option<Value>,
    entity_display_name: Option<String>,
    state_message: Option<String>,
    monitoring_tool: Option<String>,
    hostname: Option<String>,
    timestamp: Option<Value>,
    state_start_time: Option<Value>,
}

/// What a `message_type` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageType {
    Trigger(Severity),
    Acknowledge,
    Resolve,
    /// A timeline entry in Splunk On-Call, never an incident: nothing here.
    Info,
}

impl Provider for SplunkOnCall {
    fn kind(&self) -> ProviderKind {
        ProviderKind::SplunkOnCall
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let raw = parse_object(inbound.body)?;
        let alert: RestAlert = serde_path_to_error::deserialize(&raw).map_err(|error| {
            let path = error.path().to_string();
            InvalidPayload::field(path, format!("has the wrong type: {}", error.into_inner()))
        })?;

        let message_type =
            message_type_of(alert.message_type.as_deref()).map_err(|e| InvalidPayload::new(INVALID, vec![e]))?;
        let entity_id = entity_id_of(alert.entity_id.as_ref());
        let (event_action, severity) = match message_type {
            MessageType::Info => {
                tracing::info!(
                    entity_id = entity_id.as_deref().unwrap_or(""),
                    "splunk on-call INFO alert: no incident"
                );
                return Ok(Vec::new());
            }
            MessageType::Trigger(severity) => (Action::Trigger, severity),
            // Severity is only read from a trigger; these keep the
            // incident's own.
            MessageType::Acknowledge => (Action::Acknowledge, Severity::Info),
            MessageType::Resolve => (Action::Resolve, Severity::Info),
        };

        let dedup_key = match (&entity_id, event_action) {
            (Some(id), _) => DedupKey::parse(id).map_err(|e| InvalidPayload::new(INVALID, vec![e.at("entity_id")]))?,
            // As in Splunk On-Call, an alert without an entity opens an
            // incident of its own, under a random key.
            (None, Action::Trigger) => DedupKey::generate(),
            (None, _) => {
                return Err(InvalidPayload::field(
                    "entity_id",
                    "is missing: an ACKNOWLEDGEMENT or RECOVERY must name the entity_id of the incident",
                ))
            }
        };

        let summary = non_blank(alert.entity_display_name.as_deref())
            .or_else(|| non_blank(alert.state_message.as_deref()).and_then(|m| m.lines().next()))
            .or(entity_id.as_deref())
            .unwrap_or("Splunk On-Call alert")
            .to_owned();
        let monitoring_tool = non_blank(alert.monitoring_tool.as_deref());
        let source = non_blank(alert.hostname.as_deref())
            .or(monitoring_tool)
            .unwrap_or(SOURCE)
            .to_owned();
        let timestamp = epoch_of(alert.timestamp.as_ref()).or_else(|| epoch_of(alert.state_start_time.as_ref()));
        let (links, images) = annotations_of(&raw);

        Ok(vec![Alert {
            event_action,
            dedup_key,
            payload: Some(Payload {
                summary: Payload::truncate_summary(&summary),
                source,
                severity,
                timestamp,
                component: None,
                group: None,
                class: None,
                custom_details: Some(raw),
            }),
            links,
            images,
            client: monitoring_tool.map(str::to_owned),
            client_url: None,
        }])
    }

    /// Splunk On-Call's answer, which senders such as Graylog's plugin read:
    /// `{"result": "success", "entity_id": ...}`.
    fn accepted(&self, inbound: &Inbound<'_>, accepted: &Accepted<'_>) -> Answer {
        let entity_id = match accepted.events.first() {
            Some(event) => Some(event.dedup_key().as_str().to_owned()),
            // INFO: nothing was queued; echo the entity it named.
            None => parse_object(inbound.body)
                .ok()
                .and_then(|raw| entity_id_of(raw.get("entity_id"))),
        };
        let mut body = serde_json::json!({ "result": "success" });
        if let Some(entity_id) = entity_id {
            body["entity_id"] = Value::String(entity_id);
        }
        json_answer(StatusCode::OK, &body)
    }
}

fn parse_object(body: &[u8]) -> Result<Value, InvalidPayload> {
    let value: Value = serde_json::from_slice(body).map_err(InvalidPayload::unreadable)?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(InvalidPayload::field(
            "body",
            "must be one JSON object (one Splunk On-Call REST alert)",
        ))
    }
}

/// Splunk On-Call reads the five documented values (any case; its own curl
/// example writes `critical`) and `OK` as a recovery. It files anything
/// else as INFO; Tocsin refuses it instead, so that a typo is seen rather
/// than a page silently lost.
fn message_type_of(value: Option<&str>) -> Result<MessageType, FieldError> {
    let Some(value) = non_blank(value) else {
        return Err(FieldError::new(
            "message_type",
            "is missing (CRITICAL, WARNING, INFO, ACKNOWLEDGEMENT or RECOVERY)",
        ));
    };
    match value.to_ascii_uppercase().as_str() {
        "CRITICAL" => Ok(MessageType::Trigger(Severity::Critical)),
        "WARNING" => Ok(MessageType::Trigger(Severity::Warning)),
        "ACKNOWLEDGEMENT" => Ok(MessageType::Acknowledge),
        "RECOVERY" | "OK" => Ok(MessageType::Resolve),
        "INFO" => Ok(MessageType::Info),
        _ => Err(FieldError::new(
            "message_type",
            format!("'{value}' is not one of CRITICAL, WARNING, INFO, ACKNOWLEDGEMENT, RECOVERY"),
        )),
    }
}

/// `entity_id` as text: a string, or a number some senders write bare.
fn entity_id_of(value: Option<&Value>) -> Option<String> {
    let text = match value? {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!text.is_empty()).then_some(text)
}

/// Seconds (or milliseconds) since the epoch, as a number or a numeric
/// string. Zero, negative or unreadable values are left out: Grafana sends
/// -1 when it has no time.
fn epoch_of(value: Option<&Value>) -> Option<DateTime<Utc>> {
    let number = match value? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))?,
        Value::String(s) => s.trim().parse::<i64>().ok()?,
        _ => return None,
    };
    match number {
        n if n <= 0 => None,
        n if n >= MILLIS_THRESHOLD => DateTime::from_timestamp_millis(n),
        n => DateTime::from_timestamp(n, 0),
    }
}

/// Links and images from `vo_annotate.u.*` and `vo_annotate.i.*`, titled by
/// the field's suffix.
fn annotations_of(raw: &Value) -> (Vec<Link>, Vec<Image>) {
    let mut links = Vec::new();
    let mut images = Vec::new();
    let Some(object) = raw.as_object() else {
        return (links, images);
    };
    for (name, value) in object {
        let Some(href) = value.as_str().and_then(|v| non_blank(Some(v))) else {
            continue;
        };
        if let Some(title) = name.strip_prefix(ANNOTATE_URL) {
            links.push(Link {
                href: href.to_owned(),
                text: Some(title.to_owned()),
            });
        } else if let Some(title) = name.strip_prefix(ANNOTATE_IMAGE) {
            images.push(Image {
                src: href.to_owned(),
                href: None,
                alt: Some(title.to_owned()),
            });
        }
    }
    (links, images)
}

fn non_blank(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
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

    const CRITICAL: &str = include_str!("../../../../events/splunk-oncall/critical.json");
    const RECOVERY: &str = include_str!("../../../../events/splunk-oncall/recovery.json");
    const ACKNOWLEDGEMENT: &str = include_str!("../../../../events/splunk-oncall/acknowledgement.json");
    const WARNING_GRAFANA: &str = include_str!("../../../../events/splunk-oncall/warning-grafana.json");
    const INFO: &str = include_str!("../../../../events/splunk-oncall/info.json");

    fn integration() -> Integration {
        Integration {
            id: IntegrationId::parse("checkout-victorops").unwrap(),
            service: ServiceId::parse("checkout").unwrap(),
            provider: ProviderKind::SplunkOnCall,
            key_hash: KeyHash::of("77777777777777777777777777777777"),
            secret: None,
            enabled: true,
            fields: FieldMapping::default(),
            cloudwatch: Default::default(),
            dedup_key: None,
            rate_limit_per_minute: None,
            secret_ref: None,
        }
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
        SplunkOnCall.normalize(&inbound(&headers, body), &integration())
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

    /// The answer to `body`, once ingest has queued what normalize returned.
    fn answer(body: &str) -> (StatusCode, Value) {
        let integration = integration();
        let events: Vec<Event> = normalize(body)
            .unwrap()
            .into_iter()
            .map(|alert| Event {
                id: EventId::generate(),
                service: integration.service.clone(),
                origin: Origin::Integration {
                    integration: integration.id.clone(),
                    provider: ProviderKind::SplunkOnCall,
                },
                received_at: Utc::now(),
                alert,
            })
            .collect();
        let headers = HeaderMap::new();
        let answer = SplunkOnCall.accepted(
            &inbound(&headers, body),
            &Accepted {
                events: &events,
                integration: &integration,
                hint: None,
            },
        );
        (answer.status(), serde_json::from_slice(answer.body()).unwrap())
    }

    #[test]
    fn critical_triggers_on_the_entity_id() {
        let alert = one(CRITICAL);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "disk space/db01.mycompany.com");
        let payload = alert.payload.as_ref().unwrap();
        assert_eq!(payload.summary, "Critically Low Disk Space on DB01");
        assert_eq!(payload.severity, Severity::Critical);
        assert_eq!(payload.source, "splunk-oncall");
        assert_eq!(payload.timestamp, None);
        assert_eq!(
            payload.custom_details.as_ref().unwrap()["state_message"],
            json!("The disk is really really full. Here is abunch of information about the problem")
        );
        assert_eq!(alert.client, None);
    }

    #[test]
    fn recovery_and_acknowledgement_meet_the_trigger_on_one_key() {
        let trigger = one(CRITICAL);
        let recovery = one(RECOVERY);
        assert_eq!(recovery.event_action, Action::Resolve);
        assert_eq!(recovery.dedup_key, trigger.dedup_key);
        let ack = one(ACKNOWLEDGEMENT);
        assert_eq!(ack.event_action, Action::Acknowledge);
        assert_eq!(ack.dedup_key, trigger.dedup_key);
        assert_eq!(
            ack.payload.unwrap().custom_details.unwrap()["ack_author"],
            json!("dba-oncall")
        );
        // Splunk On-Call also takes OK as a recovery.
        let ok = with(RECOVERY, |v| v["message_type"] = json!("OK"));
        assert_eq!(one(&ok).event_action, Action::Resolve);
    }

    #[test]
    fn warning_triggers_at_warning_with_the_senders_time() {
        let alert = one(WARNING_GRAFANA);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "Checkout p99 latency");
        let payload = alert.payload.as_ref().unwrap();
        assert_eq!(payload.severity, Severity::Warning);
        assert_eq!(payload.summary, "[Alerting] Checkout p99 latency");
        assert_eq!(payload.source, "Grafana v10.4.1");
        assert_eq!(payload.timestamp, Some(Utc.timestamp_opt(1_715_678_478, 0).unwrap()));
        assert_eq!(alert.client.as_deref(), Some("Grafana v10.4.1"));
    }

    #[test]
    fn info_is_accepted_and_opens_nothing() {
        assert_eq!(normalize(INFO).unwrap(), Vec::new());
        let (status, body) = answer(INFO);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"result": "success", "entity_id": "disk.space/db01"}));
    }

    #[test]
    fn the_answer_is_splunk_on_calls() {
        let (status, body) = answer(CRITICAL);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"result": "success", "entity_id": "disk space/db01.mycompany.com"})
        );
    }

    #[test]
    fn message_types_are_read_in_any_case_and_unknown_ones_refused() {
        let lower = with(CRITICAL, |v| v["message_type"] = json!("critical"));
        assert_eq!(one(&lower).payload.unwrap().severity, Severity::Critical);
        assert_eq!(
            refused(&with(CRITICAL, |v| v["message_type"] = json!("PROBLEM"))),
            vec!["message_type"]
        );
        assert_eq!(
            refused(&with(CRITICAL, |v| {
                v.as_object_mut().unwrap().remove("message_type");
            })),
            vec!["message_type"]
        );
        assert_eq!(
            refused(&with(CRITICAL, |v| v["message_type"] = json!(2))),
            vec!["message_type"]
        );
    }

    #[test]
    fn a_trigger_without_entity_gets_a_key_of_its_own_and_a_recovery_is_refused() {
        let anonymous = with(CRITICAL, |v| {
            v.as_object_mut().unwrap().remove("entity_id");
        });
        let a = one(&anonymous);
        let b = one(&anonymous);
        assert_eq!(a.event_action, Action::Trigger);
        assert_ne!(a.dedup_key, b.dedup_key);
        let (_, body) = answer(&anonymous);
        assert!(body["entity_id"].as_str().is_some_and(|k| !k.is_empty()), "{body}");
        let recovery = with(RECOVERY, |v| v["entity_id"] = json!("  "));
        assert_eq!(refused(&recovery), vec!["entity_id"]);
        // A numeric entity id is its text.
        let numeric = with(CRITICAL, |v| v["entity_id"] = json!(4711));
        assert_eq!(one(&numeric).dedup_key.as_str(), "4711");
    }

    #[test]
    fn summary_and_source_fall_back_in_order() {
        let no_name = with(CRITICAL, |v| {
            v.as_object_mut().unwrap().remove("entity_display_name");
            v["state_message"] = json!("Disk full\nsecond line");
            v["hostname"] = json!("db01.mycompany.com");
        });
        let payload = one(&no_name).payload.unwrap();
        assert_eq!(payload.summary, "Disk full");
        assert_eq!(payload.source, "db01.mycompany.com");
        let only_id = json!({"message_type": "CRITICAL", "entity_id": "e1"}).to_string();
        assert_eq!(one(&only_id).payload.unwrap().summary, "e1");
    }

    #[test]
    fn times_are_seconds_or_milliseconds_and_otherwise_left_out() {
        let time = |value: Value| {
            let body = with(CRITICAL, |v| v["state_start_time"] = value);
            one(&body).payload.unwrap().timestamp
        };
        let expected = Some(Utc.timestamp_opt(1_715_678_478, 0).unwrap());
        assert_eq!(time(json!(1_715_678_478)), expected);
        assert_eq!(time(json!("1715678478")), expected);
        assert_eq!(time(json!(1_715_678_478_000_i64)), expected);
        assert_eq!(time(json!(-1)), None);
        assert_eq!(time(json!("soon")), None);
        // timestamp wins over state_start_time.
        let both = with(WARNING_GRAFANA, |v| v["state_start_time"] = json!(1_715_600_000));
        assert_eq!(one(&both).payload.unwrap().timestamp, expected);
    }

    #[test]
    fn annotations_become_links_and_images() {
        let body = with(CRITICAL, |v| {
            v["vo_annotate.u.Runbook"] = json!("https://runbooks.example.com/disk");
            v["vo_annotate.i.Graph"] = json!("https://grafana.example.com/render/disk.png");
            v["vo_annotate.s.Note"] = json!("Extend the volume first");
        });
        let alert = one(&body);
        assert_eq!(alert.links.len(), 1);
        assert_eq!(alert.links[0].text.as_deref(), Some("Runbook"));
        assert_eq!(alert.images.len(), 1);
        assert_eq!(alert.images[0].alt.as_deref(), Some("Graph"));
        assert_eq!(
            alert.payload.unwrap().custom_details.unwrap()["vo_annotate.s.Note"],
            json!("Extend the volume first")
        );
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert_eq!(refused("message_type=CRITICAL"), vec!["body"]);
        assert_eq!(refused("[{\"message_type\": \"CRITICAL\"}]"), vec!["body"]);
        assert_eq!(
            refused(&with(CRITICAL, |v| v["entity_display_name"] = json!({"a": 1}))),
            vec!["entity_display_name"]
        );
    }
}
