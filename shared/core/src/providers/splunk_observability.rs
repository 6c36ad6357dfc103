//! Splunk Observability Cloud (formerly SignalFx) detector notifications
//! through a Webhook integration with the default payload (`sf_schema` 2):
//! one alert per notification, keyed by `incidentId`, opened while the
//! incident is `anomalous` and resolved when it is `ok`, `manually resolved`
//! or `stopped`. With a shared secret, `X-SFX-Signature` is checked.
//!
//! <https://docs.splunk.com/observability/en/admin/notif-services/webhook.html>
//! <https://dev.splunk.com/observability/docs/integrations/webhook_integration_overview/>

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, FieldError, Link, Payload, Severity};
use crate::providers::{base64, Inbound, InvalidPayload, Provider, ProviderKind};
use crate::signature::{verify_hmac_sha256, SignatureError};

pub struct SplunkObservability;

/// Base64 of the HMAC-SHA256 of the raw body, keyed with the integration's
/// shared secret. Splunk signs the body alone: there is no timestamp to
/// check, and it retries for up to 24 hours, so no age could be enforced.
const SIGNATURE_HEADER: &str = "x-sfx-signature";

const SOURCE: &str = "splunk-observability";

const INVALID: &str = "the Splunk Observability notification is invalid";

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Notification {
    incident_id: Option<String>,
    /// Kept by Splunk for backwards compatibility: anomalous or ok only.
    status: Option<String>,
    status_extended: Option<String>,
    severity: Option<String>,
    detector: Option<String>,
    detector_url: Option<String>,
    rule: Option<String>,
    description: Option<String>,
    message_title: Option<String>,
    runbook_url: Option<String>,
    image_url: Option<String>,
    timestamp: Option<String>,
    inputs: Option<Value>,
}

impl Provider for SplunkObservability {
    fn kind(&self) -> ProviderKind {
        ProviderKind::SplunkObservability
    }

    fn verify(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<(), SignatureError> {
        let Some(secret) = &integration.secret else {
            return Ok(());
        };
        let header = inbound.headers.get(SIGNATURE_HEADER).ok_or(SignatureError::Missing {
            expected: "X-SFX-Signature: base64(HMAC-SHA256(body))",
        })?;
        let value = header.to_str().map_err(|_| SignatureError::Malformed)?;
        let signature = base64::decode(value.trim()).ok_or(SignatureError::Malformed)?;
        verify_hmac_sha256(secret.expose().as_bytes(), inbound.body, &signature)
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        // Splunk checks the URL when the integration is saved, with a request
        // it does not document: an empty body or `{}` opens nothing.
        let trimmed = inbound.body.trim_ascii();
        if trimmed.is_empty() || trimmed == b"{}" {
            tracing::info!("splunk observability request without a notification; nothing to do");
            return Ok(Vec::new());
        }
        let raw = parse_object(inbound.body)?;
        let notification: Notification = serde_path_to_error::deserialize(&raw).map_err(|error| {
            let path = error.path().to_string();
            InvalidPayload::field(path, format!("has the wrong type: {}", error.into_inner()))
        })?;

        let mut errors = Vec::new();
        let action = action_of(&notification).map_err(|e| errors.push(e)).ok();
        let key = match non_blank(notification.incident_id.as_deref()) {
            Some(id) => DedupKey::parse(id).map_err(|e| errors.push(e.at("incidentId"))).ok(),
            None => {
                errors.push(FieldError::new("incidentId", "is missing"));
                None
            }
        };
        let (Some(event_action), Some(dedup_key)) = (action, key) else {
            return Err(InvalidPayload::new(INVALID, errors));
        };

        let detector = non_blank(notification.detector.as_deref());
        let rule = non_blank(notification.rule.as_deref());
        let summary = summary_of(&notification, detector, rule, &dedup_key);
        let source = host_of(notification.inputs.as_ref())
            .or(detector)
            .unwrap_or(SOURCE)
            .to_owned();

        Ok(vec![Alert {
            event_action,
            dedup_key,
            payload: Some(Payload {
                summary: Payload::truncate_summary(&summary),
                source,
                severity: severity_of(notification.severity.as_deref()),
                timestamp: timestamp_of(notification.timestamp.as_deref()),
                component: detector.map(str::to_owned),
                group: None,
                class: rule.map(str::to_owned),
                custom_details: Some(raw),
            }),
            links: links_of(&notification),
            images: Vec::new(),
            client: Some("Splunk Observability Cloud".to_owned()),
            client_url: non_blank(notification.detector_url.as_deref()).map(str::to_owned),
        }])
    }
}

/// Reads the body as a JSON value first: a map keeps the last of a repeated
/// key, as Splunk's own documented example repeats `description`, where
/// deserializing straight into the struct would refuse it.
fn parse_object(body: &[u8]) -> Result<Value, InvalidPayload> {
    let value: Value = serde_json::from_slice(body).map_err(InvalidPayload::unreadable)?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(InvalidPayload::field(
            "body",
            "must be one JSON object (a Splunk Observability webhook notification)",
        ))
    }
}

/// `statusExtended` when present (it tells a manual resolution and a
/// stopped detector apart), else the legacy `status`.
fn action_of(notification: &Notification) -> Result<Action, FieldError> {
    let (field, value) = match non_blank(notification.status_extended.as_deref()) {
        Some(value) => ("statusExtended", value),
        None => match non_blank(notification.status.as_deref()) {
            Some(value) => ("status", value),
            None => {
                return Err(FieldError::new(
                    "statusExtended",
                    "is missing, and so is status (anomalous, ok, manually resolved or stopped)",
                ))
            }
        },
    };
    match value.to_ascii_lowercase().replace('_', " ").as_str() {
        "anomalous" => Ok(Action::Trigger),
        "ok" | "manually resolved" | "stopped" => Ok(Action::Resolve),
        _ => Err(FieldError::new(
            field,
            format!("'{value}' is not one of anomalous, ok, manually resolved, stopped"),
        )),
    }
}

/// Splunk's five rule severities onto Tocsin's four; a missing or unknown
/// one is a warning, loud enough to be seen without paging at critical.
fn severity_of(value: Option<&str>) -> Severity {
    match value.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("critical") => Severity::Critical,
        Some("major") => Severity::Error,
        Some("minor" | "warning") => Severity::Warning,
        Some("info") => Severity::Info,
        _ => Severity::Warning,
    }
}

fn summary_of(notification: &Notification, detector: Option<&str>, rule: Option<&str>, key: &DedupKey) -> String {
    if let Some(title) = non_blank(notification.message_title.as_deref()) {
        return title.to_owned();
    }
    match (rule, detector) {
        (Some(rule), Some(detector)) => format!("{rule} ({detector})"),
        (Some(name), None) | (None, Some(name)) => name.to_owned(),
        (None, None) => non_blank(notification.description.as_deref())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("Splunk Observability incident {key}")),
    }
}

/// The `host` dimension of the first input that has one: the machine the
/// detector fired on. Inputs name dimensions `key` (or `dimensions` in some
/// of Splunk's examples).
fn host_of(inputs: Option<&Value>) -> Option<&str> {
    inputs?.as_object()?.values().find_map(|input| {
        ["key", "dimensions"]
            .iter()
            .find_map(|name| input.get(name)?.get("host")?.as_str())
            .and_then(|host| non_blank(Some(host)))
    })
}

/// ISO 8601; an unreadable time is left out rather than refused (Splunk's
/// own example has a five-digit year).
fn timestamp_of(value: Option<&str>) -> Option<DateTime<Utc>> {
    let value = non_blank(value)?;
    match DateTime::parse_from_rfc3339(value) {
        Ok(time) => Some(time.with_timezone(&Utc)),
        Err(_) => {
            tracing::debug!(timestamp = value, "splunk timestamp is not RFC 3339; ignored");
            None
        }
    }
}

fn links_of(notification: &Notification) -> Vec<Link> {
    [
        (&notification.detector_url, "Detector"),
        (&notification.runbook_url, "Runbook"),
        (&notification.image_url, "Chart"),
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
    use http::{HeaderMap, HeaderValue};
    use serde_json::json;

    use super::*;

    const ANOMALOUS: &str = include_str!("../../../../events/splunk-observability/anomalous.json");
    const OK: &str = include_str!("../../../../events/splunk-observability/ok.json");
    const MANUALLY_RESOLVED: &str = include_str!("../../../../events/splunk-observability/manually-resolved.json");
    const LATENCY: &str = include_str!("../../../../events/splunk-observability/anomalous-latency.json");

    /// Tocsin requires 16 characters or more of a secret.
    const SECRET: &str = "o11y-webhook-shared-secret";
    /// `base64(HMAC-SHA256("o11y-webhook-shared-secret", anomalous.json))`, computed outside
    /// Rust (Python's hmac and base64 modules) over the sample's bytes.
    const ANOMALOUS_SIGNATURE: &str = "Mu5eYLBu44EAdj99FU0iYKT5rU/yTNYh6tNtcmD3Vfs=";

    fn integration(secret: Option<&str>) -> Integration {
        crate::providers::test_support::integration(
            "checkout-splunk-o11y",
            "checkout",
            ProviderKind::SplunkObservability,
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
        SplunkObservability.normalize(&inbound(&headers, body), &integration(None))
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

    fn verify(signature: Option<&str>, body: &str, secret: Option<&str>) -> Result<(), SignatureError> {
        let mut headers = HeaderMap::new();
        if let Some(signature) = signature {
            headers.insert(SIGNATURE_HEADER, HeaderValue::from_str(signature).unwrap());
        }
        SplunkObservability.verify(&inbound(&headers, body), &integration(secret))
    }

    #[test]
    fn an_anomalous_incident_triggers_on_its_incident_id() {
        let alert = one(ANOMALOUS);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "BCDEFGHIJKL");
        let payload = alert.payload.as_ref().unwrap();
        assert_eq!(payload.summary, "Running out of memory (Memory usage detector)");
        assert_eq!(payload.severity, Severity::Warning);
        assert_eq!(payload.source, "i-346235qa");
        assert_eq!(payload.component.as_deref(), Some("Memory usage detector"));
        assert_eq!(payload.class.as_deref(), Some("Running out of memory"));
        assert_eq!(
            payload.timestamp,
            Some(Utc.with_ymd_and_hms(2023, 2, 8, 19, 23, 30).unwrap())
        );
        let details = payload.custom_details.as_ref().unwrap();
        // The repeated description: the last one counts.
        assert_eq!(
            details["description"],
            json!("Memory has reached 90% of maximum for 10 minutes")
        );
        assert_eq!(details["detectOnCondition"], json!("when(A > 90, '10m')"));
        let texts: Vec<_> = alert.links.iter().filter_map(|l| l.text.as_deref()).collect();
        assert_eq!(texts, vec!["Detector", "Chart"]);
        assert_eq!(
            alert.client_url.as_deref(),
            Some("https://app.<REALM>.signalfx.com/#/detector/ABCDEFGHIJK/edit")
        );
    }

    #[test]
    fn ok_and_manual_resolution_resolve_the_same_incident() {
        let trigger = one(ANOMALOUS);
        for sample in [OK, MANUALLY_RESOLVED] {
            let alert = one(sample);
            assert_eq!(alert.event_action, Action::Resolve);
            assert_eq!(alert.dedup_key, trigger.dedup_key);
        }
        let stopped = with(OK, |v| v["statusExtended"] = json!("stopped"));
        assert_eq!(one(&stopped).event_action, Action::Resolve);
        assert_eq!(
            one(OK).payload.unwrap().timestamp,
            Some(Utc.with_ymd_and_hms(2023, 2, 8, 19, 43, 30).unwrap())
        );
    }

    #[test]
    fn status_extended_wins_over_the_legacy_status() {
        // Manually resolved reads "ok" in status: only statusExtended says so.
        let odd = with(ANOMALOUS, |v| v["statusExtended"] = json!("ok"));
        assert_eq!(one(&odd).event_action, Action::Resolve);
        let legacy = with(ANOMALOUS, |v| {
            v.as_object_mut().unwrap().remove("statusExtended");
        });
        assert_eq!(one(&legacy).event_action, Action::Trigger);
        let upper = with(ANOMALOUS, |v| v["statusExtended"] = json!("MANUALLY_RESOLVED"));
        assert_eq!(one(&upper).event_action, Action::Resolve);
        assert_eq!(
            refused(&with(ANOMALOUS, |v| v["statusExtended"] = json!("muted"))),
            vec!["statusExtended"]
        );
        assert_eq!(
            refused(&with(ANOMALOUS, |v| {
                v["status"] = json!("weird");
                v.as_object_mut().unwrap().remove("statusExtended");
            })),
            vec!["status"]
        );
    }

    #[test]
    fn the_critical_latency_example_maps_every_field() {
        let alert = one(LATENCY);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "13168413514");
        let payload = alert.payload.as_ref().unwrap();
        assert_eq!(payload.severity, Severity::Critical);
        assert_eq!(payload.summary, "My detector rule (My detector)");
        // The host dimension of input "a".
        assert_eq!(payload.source, "myserver");
        // Splunk's example writes the year 20122: left out, not refused.
        assert_eq!(payload.timestamp, None);
        assert_eq!(
            payload.custom_details.as_ref().unwrap()["inputs"]["b"]["value"],
            json!(42.9)
        );
    }

    #[test]
    fn severities_follow_splunks_five_levels() {
        for (value, expected) in [
            ("Critical", Severity::Critical),
            ("Major", Severity::Error),
            ("Minor", Severity::Warning),
            ("Warning", Severity::Warning),
            ("Info", Severity::Info),
            ("Purple", Severity::Warning),
        ] {
            let body = with(ANOMALOUS, |v| v["severity"] = json!(value));
            assert_eq!(one(&body).payload.unwrap().severity, expected, "{value}");
        }
    }

    #[test]
    fn summary_and_source_fall_back_in_order() {
        let titled = with(ANOMALOUS, |v| {
            v["messageTitle"] = json!("Minor Alert: Running out of memory")
        });
        assert_eq!(
            one(&titled).payload.unwrap().summary,
            "Minor Alert: Running out of memory"
        );
        let bare = json!({"incidentId": "X1", "status": "anomalous"}).to_string();
        let payload = one(&bare).payload.unwrap();
        assert_eq!(payload.summary, "Splunk Observability incident X1");
        assert_eq!(payload.source, "splunk-observability");
        let no_host = with(ANOMALOUS, |v| v["inputs"] = json!({"A": {"value": 1}}));
        assert_eq!(one(&no_host).payload.unwrap().source, "Memory usage detector");
    }

    #[test]
    fn an_incident_id_and_a_status_are_required() {
        let missing = with(ANOMALOUS, |v| {
            let object = v.as_object_mut().unwrap();
            object.remove("incidentId");
            object.remove("status");
            object.remove("statusExtended");
        });
        assert_eq!(refused(&missing), vec!["statusExtended", "incidentId"]);
        assert_eq!(
            refused(&with(ANOMALOUS, |v| v["incidentId"] = json!(7))),
            vec!["incidentId"]
        );
    }

    #[test]
    fn empty_requests_open_nothing_and_malformed_ones_are_refused() {
        assert_eq!(normalize("").unwrap(), Vec::new());
        assert_eq!(normalize(" {} \n").unwrap(), Vec::new());
        assert_eq!(refused("{\"incidentId\": "), vec!["body"]);
        assert_eq!(refused("[1]"), vec!["body"]);
    }

    #[test]
    fn the_signature_is_base64_hmac_sha256_of_the_body() {
        assert_eq!(verify(Some(ANOMALOUS_SIGNATURE), ANOMALOUS, Some(SECRET)), Ok(()));
        assert_eq!(
            verify(Some(ANOMALOUS_SIGNATURE), OK, Some(SECRET)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(ANOMALOUS_SIGNATURE), ANOMALOUS, Some("another-secret")),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify(None, ANOMALOUS, Some(SECRET)),
            Err(SignatureError::Missing { .. })
        ));
        assert_eq!(
            verify(Some("not base64!"), ANOMALOUS, Some(SECRET)),
            Err(SignatureError::Malformed)
        );
        // Valid base64 of the wrong length is simply not the signature.
        assert_eq!(
            verify(Some("Zm9v"), ANOMALOUS, Some(SECRET)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify(None, ANOMALOUS, None), Ok(()));
    }
}
