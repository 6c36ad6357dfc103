//! Site24x7's webhook integration (`POST /integrations/site24x7`).
//!
//! With "Send Incident Parameters" Site24x7 posts its predefined parameters
//! (`MONITORNAME`, `STATUS`, `MONITOR_ID`, `INCIDENT_REASON`...) as one JSON
//! object; with custom parameters it posts what the user wrote, JSON or
//! `key=value&...` form, with `$PARAMETER` macros filled in. Tocsin reads the
//! same names either way (the published custom template uses them), and a
//! macro Site24x7 left unfilled counts as absent.
//!
//! DOWN triggers a critical incident, CRITICAL an error, TROUBLE a warning,
//! UP resolves; all keyed by MONITOR_ID (or, without one, by monitor name and
//! URL), so a monitor moving from trouble to down raises one incident.
//!
//! <https://www.site24x7.com/help/admin/third-party-integration/webhooks.html>

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value};

use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, FieldError, Link, Payload, Severity};
use crate::providers::header_secret::verify_secret_header;
use crate::providers::{Inbound, InvalidPayload, Provider, ProviderKind};
use crate::signature::SignatureError;

pub struct Site24x7;

const INVALID: &str = "the Site24x7 webhook is invalid";

/// Monitor ids are numbers another tool's ids on the same service could
/// repeat.
const KEY_PREFIX: &str = "site24x7";

const MONITOR_ID: &str = "MONITOR_ID";
const MONITOR_NAME: &str = "MONITORNAME";
const MONITOR_URL: &str = "MONITORURL";
const MONITOR_TYPE: &str = "MONITORTYPE";
const MONITOR_GROUP: &str = "MONITOR_GROUPNAME";
const DASHBOARD_LINK: &str = "MONITOR_DASHBOARD_LINK";
const RCA_LINK: &str = "RCA_LINK";
const STATUS: &str = "STATUS";
const INCIDENT_REASON: &str = "INCIDENT_REASON";
const INCIDENT_TIME_ISO: &str = "INCIDENT_TIME_ISO";
const OUTAGE_TIME: &str = "OUTAGE_TIME_UNIX_FORMAT";

impl Provider for Site24x7 {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Site24x7
    }

    /// Site24x7 cannot sign a body, but its webhook integration sends custom
    /// HTTP headers: a secret travels as is in `X-Tocsin-Secret`, compared in
    /// constant time.
    fn verify(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<(), SignatureError> {
        verify_secret_header(inbound.headers, integration.secret.as_ref())
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let parameters = read_parameters(inbound.body)?;
        alert_from(&parameters).map(|alert| vec![alert])
    }
}

/// A JSON object, or a form body (custom parameters as key-value).
fn read_parameters(body: &[u8]) -> Result<Map<String, Value>, InvalidPayload> {
    match body.iter().copied().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => match serde_json::from_slice(body).map_err(InvalidPayload::unreadable)? {
            Value::Object(object) => Ok(object),
            _ => Err(InvalidPayload::field("body", "must be a JSON object")),
        },
        Some(b'[') => Err(InvalidPayload::field(
            "body",
            "must be one JSON object of incident parameters, not an array",
        )),
        Some(_) => Ok(form_urlencoded::parse(body)
            .map(|(k, v)| (k.trim().to_owned(), Value::String(v.into_owned())))
            .collect()),
        None => Err(InvalidPayload::field(
            "body",
            "is empty: enable \"Send Incident Parameters\" or paste the published custom parameters",
        )),
    }
}

/// A parameter's text: strings and numbers (MONITOR_ID is a 64-bit number
/// in the JSON, which must not pass through a float), without blanks and
/// without unfilled `$MACRO` / `${MACRO}` placeholders.
fn text<'a>(parameters: &'a Map<String, Value>, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    let text = match parameters.get(name)? {
        Value::String(s) => std::borrow::Cow::Borrowed(s.trim()),
        Value::Number(n) => std::borrow::Cow::Owned(n.to_string()),
        _ => return None,
    };
    (!text.is_empty() && !is_macro(&text)).then_some(text)
}

fn is_macro(value: &str) -> bool {
    let Some(name) = value.strip_prefix('$') else {
        return false;
    };
    let name = name.strip_prefix('{').and_then(|n| n.strip_suffix('}')).unwrap_or(name);
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn alert_from(parameters: &Map<String, Value>) -> Result<Alert, InvalidPayload> {
    let get = |name: &str| text(parameters, name);
    let mut errors = Vec::new();
    let status = get(STATUS).map(|s| s.to_ascii_uppercase());
    let action = match status.as_deref() {
        Some("DOWN") => Some((Action::Trigger, Severity::Critical)),
        Some("CRITICAL") => Some((Action::Trigger, Severity::Error)),
        Some("TROUBLE") => Some((Action::Trigger, Severity::Warning)),
        Some("UP") => Some((Action::Resolve, Severity::Info)),
        Some(other) => {
            errors.push(FieldError::new(
                STATUS,
                format!("'{other}' is not one of DOWN, CRITICAL, TROUBLE, UP"),
            ));
            None
        }
        None => {
            errors.push(FieldError::new(STATUS, "is missing"));
            None
        }
    };
    let name = get(MONITOR_NAME);
    let url = get(MONITOR_URL);
    let dedup_key = match (get(MONITOR_ID), &name, &url) {
        (Some(id), _, _) => DedupKey::parse(&format!("{KEY_PREFIX}:{id}"))
            .map_err(|e| errors.push(e.at(MONITOR_ID)))
            .ok(),
        // Older payloads and custom parameters may lack the id; name and
        // URL together still tell monitors apart.
        (None, Some(_), _) | (None, None, Some(_)) => Some(DedupKey::digest_of(&[
            KEY_PREFIX,
            name.as_deref().unwrap_or(""),
            url.as_deref().unwrap_or(""),
        ])),
        (None, None, None) => {
            errors.push(FieldError::new(
                MONITOR_ID,
                "is missing (and so are MONITORNAME and MONITORURL): nothing identifies the monitor",
            ));
            None
        }
    };
    let (Some((event_action, severity)), Some(dedup_key), true) = (action, dedup_key, errors.is_empty()) else {
        return Err(InvalidPayload::new(INVALID, errors));
    };

    let head = format!(
        "{} is {}",
        name.as_deref().or(url.as_deref()).unwrap_or("Site24x7 monitor"),
        status.as_deref().unwrap_or_default()
    );
    let summary = match (event_action, get(INCIDENT_REASON)) {
        (Action::Trigger, Some(reason)) => format!("{head}: {reason}"),
        // On UP the reason is still the outage's.
        _ => head,
    };
    let dashboard = get(DASHBOARD_LINK).filter(|l| is_http_url(l));

    Ok(Alert {
        event_action,
        dedup_key,
        payload: Some(Payload {
            summary: Payload::truncate_summary(&summary),
            source: url.as_deref().or(name.as_deref()).unwrap_or(KEY_PREFIX).to_owned(),
            severity,
            timestamp: timestamp_of(parameters, event_action),
            component: get(MONITOR_GROUP).map(|g| g.into_owned()),
            group: None,
            class: get(MONITOR_TYPE).map(|t| t.into_owned()),
            custom_details: Some(Value::Object(parameters.clone())),
        }),
        links: [
            (dashboard.as_deref(), "Site24x7 monitor"),
            (
                get(RCA_LINK).as_deref().filter(|l| is_http_url(l)),
                "Root cause analysis",
            ),
            (url.as_deref().filter(|l| is_http_url(l)), "Monitored URL"),
        ]
        .into_iter()
        .filter_map(|(href, text)| {
            href.map(|href| Link {
                href: href.to_owned(),
                text: Some(text.to_owned()),
            })
        })
        .collect(),
        images: Vec::new(),
        client: Some("Site24x7".to_owned()),
        client_url: dashboard.map(|d| d.into_owned()),
    })
}

/// INCIDENT_TIME_ISO (`2019-07-30T10:36:59+0100`: an offset without a
/// colon, so not RFC 3339), else the outage's Unix time in milliseconds,
/// which only a trigger may use: on UP it is still the time the outage
/// began, and would order the resolve before the trigger. An unreadable time
/// orders the event by its arrival.
fn timestamp_of(parameters: &Map<String, Value>, action: Action) -> Option<DateTime<Utc>> {
    let iso = text(parameters, INCIDENT_TIME_ISO).and_then(|t| {
        DateTime::parse_from_str(&t, "%Y-%m-%dT%H:%M:%S%z")
            .or_else(|_| DateTime::parse_from_rfc3339(&t))
            .ok()
            .map(|t| t.with_timezone(&Utc))
    });
    if iso.is_some() || action != Action::Trigger {
        return iso;
    }
    text(parameters, OUTAGE_TIME)
        .and_then(|t| t.parse::<i64>().ok())
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
}

fn is_http_url(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://")
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

    const TRIGGER: &str = include_str!("../../../../events/site24x7/trigger.json");
    const RESOLVE: &str = include_str!("../../../../events/site24x7/resolve.json");
    const TROUBLE: &str = include_str!("../../../../events/site24x7/trouble.json");
    const DOWN_NO_MONITOR_ID: &str = include_str!("../../../../events/site24x7/down-no-monitor-id.json");
    const CUSTOM_PARAMS: &str = include_str!("../../../../events/site24x7/custom-params.form");
    const CUSTOM_TEMPLATE: &str = include_str!("../../../../events/site24x7/custom-params.json");

    const KEY: &str = "88888888888888888888888888888888";
    const SECRET: &str = "site24x7-shared-secret";

    /// Built from config text as in production, so that settings other
    /// providers add to Integration need no change here.
    fn catalog(with_secret: bool) -> Catalog {
        let secret = if with_secret {
            format!(", secret: {SECRET}")
        } else {
            String::new()
        };
        let config = format!(
            "services:\n  - id: checkout\n    integrations:\n      - {{id: checkout-site24x7, type: site24x7, key: {KEY}{secret}}}\n"
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
                provider: ProviderKind::Site24x7,
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
        Site24x7.normalize(&inbound, &integration())
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

    fn with(sample: &str, change: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut value: Value = serde_json::from_str(sample).unwrap();
        change(value.as_object_mut().unwrap());
        value.to_string()
    }

    #[test]
    fn a_down_monitor_triggers_a_critical_incident_keyed_by_its_exact_id() {
        let alert = one(TRIGGER);
        assert_eq!(alert.event_action, Action::Trigger);
        // The id is past 2^53: read as a float it would end in ...25000.
        assert_eq!(alert.dedup_key.as_str(), "site24x7:107164000000025001");
        let payload = payload(&alert);
        assert_eq!(payload.summary, "Zylker Monitor is DOWN: Service Unavailable");
        assert_eq!(payload.severity, Severity::Critical);
        assert_eq!(payload.source, "http://zylker.com");
        assert_eq!(payload.component.as_deref(), Some("Zylker Web Group"));
        assert_eq!(payload.class.as_deref(), Some("URL"));
        assert_eq!(payload.timestamp, Utc.with_ymd_and_hms(2024, 1, 18, 4, 21, 35).single());
        let details = payload.custom_details.as_ref().unwrap();
        assert_eq!(details["FAILED_LOCATIONS"], "California-US");
        assert_eq!(details["TAGS"], json!(["zylker", "website"]));
        let links: Vec<(&str, &str)> = alert
            .links
            .iter()
            .map(|l| (l.href.as_str(), l.text.as_deref().unwrap()))
            .collect();
        assert_eq!(
            links,
            [
                ("https://site24x7.com", "Site24x7 monitor"),
                ("http://zylker.com", "Monitored URL")
            ]
        );
        assert_eq!(alert.client_url.as_deref(), Some("https://site24x7.com"));
    }

    #[test]
    fn up_resolves_the_same_key_at_its_own_time() {
        let resolve = one(RESOLVE);
        assert_eq!(resolve.event_action, Action::Resolve);
        assert_eq!(resolve.dedup_key, one(TRIGGER).dedup_key);
        assert_eq!(payload(&resolve).summary, "Zylker Monitor is UP");
        assert_eq!(
            payload(&resolve).timestamp,
            Utc.with_ymd_and_hms(2024, 1, 18, 4, 29, 5).single()
        );
        // Without INCIDENT_TIME_ISO a resolve does not take the outage's start.
        let no_iso = with(RESOLVE, |o| {
            o.remove(INCIDENT_TIME_ISO);
        });
        assert_eq!(payload(&one(&no_iso)).timestamp, None);
    }

    #[test]
    fn status_sets_severity() {
        let trouble = one(TROUBLE);
        assert_eq!(trouble.event_action, Action::Trigger);
        assert_eq!(payload(&trouble).severity, Severity::Warning);
        assert_eq!(
            payload(&trouble).summary,
            "GoAlert Site24x7 Test is TROUBLE: Response time exceeded threshold"
        );
        assert_eq!(trouble.links[1].text.as_deref(), Some("Root cause analysis"));
        let critical = with(TRIGGER, |o| {
            o.insert(STATUS.into(), json!("critical"));
        });
        assert_eq!(payload(&one(&critical)).severity, Severity::Error);
    }

    #[test]
    fn without_a_monitor_id_name_and_url_key_the_incident() {
        let down = one(DOWN_NO_MONITOR_ID);
        let trouble = one(TROUBLE);
        assert!(down.dedup_key.as_str().starts_with("sha256:"));
        // Same monitor name and URL: trouble and down are one incident.
        assert_eq!(down.dedup_key, trouble.dedup_key);
        let other = with(DOWN_NO_MONITOR_ID, |o| {
            o.insert(MONITOR_URL.into(), json!("https://example.com/other-page"));
        });
        assert_ne!(one(&other).dedup_key, down.dedup_key);
        assert_eq!(
            payload(&down).timestamp,
            Utc.with_ymd_and_hms(2019, 7, 30, 9, 36, 59).single()
        );
    }

    #[test]
    fn custom_parameters_as_a_form_read_like_incident_parameters() {
        let alert = one(CUSTOM_PARAMS);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key, one(TRIGGER).dedup_key);
        assert_eq!(payload(&alert).severity, Severity::Error);
        assert_eq!(payload(&alert).timestamp, payload(&one(TRIGGER)).timestamp);
        // "$RCA_LINK" was left unfilled: no link, rather than a broken one.
        assert_eq!(alert.links.len(), 2);
    }

    #[test]
    fn unfilled_macros_count_as_absent() {
        let body = with(TRIGGER, |o| {
            o.insert(MONITOR_ID.into(), json!("$MONITOR_ID"));
            o.insert(INCIDENT_REASON.into(), json!("${INCIDENT_REASON}"));
        });
        let alert = one(&body);
        assert!(alert.dedup_key.as_str().starts_with("sha256:"));
        assert_eq!(payload(&alert).summary, "Zylker Monitor is DOWN");
        assert!(is_macro("$STATUS"));
        assert!(!is_macro("$5 off"));
        assert!(!is_macro("$"));
    }

    #[test]
    fn the_outage_time_orders_a_trigger_without_an_iso_time() {
        let body = with(TRIGGER, |o| {
            o.remove(INCIDENT_TIME_ISO);
        });
        assert_eq!(
            payload(&one(&body)).timestamp,
            Utc.timestamp_millis_opt(1_705_551_700_037).single()
        );
    }

    #[test]
    fn unknown_statuses_missing_identity_and_bad_bodies_are_refused_by_name() {
        let body = with(TRIGGER, |o| {
            o.insert(STATUS.into(), json!("SUSPENDED"));
        });
        assert_eq!(refused(&body), vec![STATUS]);
        let body = with(TRIGGER, |o| {
            o.remove(STATUS);
            o.remove(MONITOR_ID);
            o.remove(MONITOR_NAME);
            o.remove(MONITOR_URL);
        });
        assert_eq!(refused(&body), vec![STATUS, MONITOR_ID]);
        assert_eq!(refused("{"), vec!["body"]);
        assert_eq!(refused("[]"), vec!["body"]);
        assert_eq!(refused("   "), vec!["body"]);
        assert_eq!(refused("STATUS=DOWN"), vec![MONITOR_ID]);
    }

    #[test]
    fn the_published_custom_parameters_read_the_same_names() {
        // Unfilled, every macro is absent.
        assert_eq!(refused(CUSTOM_TEMPLATE), vec![STATUS, MONITOR_ID]);
        // Filled as Site24x7 fills macros (text), it reads like the JSON sample.
        let sample: Value = serde_json::from_str(TRIGGER).unwrap();
        let mut filled = CUSTOM_TEMPLATE.to_owned();
        for (name, value) in sample.as_object().unwrap() {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            filled = filled.replace(&format!("\"${name}\""), &Value::String(text).to_string());
        }
        let alert = one(&filled);
        let expected = one(TRIGGER);
        assert_eq!(alert.dedup_key, expected.dedup_key);
        assert_eq!(alert.event_action, expected.event_action);
        assert_eq!(payload(&alert).summary, payload(&expected).summary);
        assert_eq!(payload(&alert).timestamp, payload(&expected).timestamp);
        // $RCA_LINK had no value in the sample and stays a macro: no link.
        assert_eq!(alert.links.len(), 2);
    }

    #[test]
    fn through_ingest_signatures_and_bodies_get_the_right_answers() {
        let (status, store) = post(TRIGGER.as_bytes(), &[], false);
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(store.queued_events().len(), 1);
        // With a secret set, it must come verbatim in X-Tocsin-Secret.
        assert_eq!(post(TRIGGER.as_bytes(), &[], true).0, StatusCode::UNAUTHORIZED);
        let wrong = [("x-tocsin-secret", "not-the-secret-at-all")];
        assert_eq!(post(TRIGGER.as_bytes(), &wrong, true).0, StatusCode::UNAUTHORIZED);
        let right = [("x-tocsin-secret", SECRET)];
        let (status, store) = post(TRIGGER.as_bytes(), &right, true);
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(store.queued_events().len(), 1);
        // A body signature is no substitute: the header is what is checked.
        let signed = format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), TRIGGER.as_bytes()));
        assert_eq!(
            post(TRIGGER.as_bytes(), &[("x-signature", &signed)], true).0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(post(b"{", &[], false).0, StatusCode::BAD_REQUEST);
    }
}
