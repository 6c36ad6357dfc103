//! UptimeRobot webhook alert contacts (`POST /integrations/uptimerobot`).
//!
//! UptimeRobot posts whatever the alert contact's "POST value" template
//! says, with `*variable*` placeholders filled in. Tocsin publishes one
//! template (docs/providers/uptimerobot.md) whose keys are UptimeRobot's own
//! variable names, and reads exactly those names, from a JSON body ("Send as
//! JSON"), a form body ("Send default variables as POST parameters") or the
//! query string ("Send default variables as query string").
//!
//! `alertType` 1 (down) triggers and 2 (up) resolves, both keyed by the
//! monitor; 3 (SSL certificate expiry) triggers a warning of its own key, so
//! that the monitor coming up never closes a certificate reminder.
//!
//! <https://help.uptimerobot.com/en/articles/14498593-webhook-integration>

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;

use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, FieldError, Link, Payload, Severity};
use crate::providers::header_secret::verify_secret_header;
use crate::providers::{Inbound, InvalidPayload, Provider, ProviderKind};
use crate::signature::SignatureError;

pub struct UptimeRobot;

const INVALID: &str = "the UptimeRobot alert is invalid";

/// The key prefix: monitor ids are small integers that another tool's ids
/// on the same service could repeat.
const KEY_PREFIX: &str = "uptimerobot";

const MONITOR_ID: &str = "monitorID";
const MONITOR_URL: &str = "monitorURL";
const MONITOR_NAME: &str = "monitorFriendlyName";
const ALERT_TYPE: &str = "alertType";
const ALERT_TYPE_NAME: &str = "alertTypeFriendlyName";
const ALERT_DETAILS: &str = "alertDetails";
const ALERT_DATE_TIME: &str = "alertDateTime";
const SSL_EXPIRY_DATE: &str = "sslExpiryDate";
const SSL_EXPIRY_DAYS_LEFT: &str = "sslExpiryDaysLeft";

/// Unix times above this are milliseconds (as seconds they would lie after
/// the year 5000).
const MILLIS_THRESHOLD: i64 = 100_000_000_000;

impl Provider for UptimeRobot {
    fn kind(&self) -> ProviderKind {
        ProviderKind::UptimeRobot
    }

    /// UptimeRobot cannot sign a body, but its webhook integration sends fixed
    /// custom headers: a secret travels as is in `X-Tocsin-Secret`, compared in
    /// constant time.
    fn verify(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<(), SignatureError> {
        verify_secret_header(inbound.headers, integration.secret.as_ref())
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let fields = Fields::read(inbound)?;
        alert_from(&fields).map(|alert| vec![alert])
    }
}

/// The alert's variables by name, without blanks and without placeholders
/// UptimeRobot left unfilled.
#[derive(Debug, Default)]
struct Fields(BTreeMap<String, String>);

impl Fields {
    /// Query-string values first, then the body's, which win: with "query
    /// string" delivery the body is empty, and otherwise the query holds at
    /// most Tocsin's `token`.
    fn read(inbound: &Inbound<'_>) -> Result<Self, InvalidPayload> {
        let mut fields = Fields::default();
        if let Some(query) = inbound.query {
            fields.extend_form(query.as_bytes());
        }
        match inbound.body.iter().copied().find(|b| !b.is_ascii_whitespace()) {
            None => {}
            Some(b'{') => fields.extend_json(inbound.body)?,
            Some(b'[') => {
                return Err(InvalidPayload::field(
                    "body",
                    "must be one JSON object (the published POST value template), not an array",
                ))
            }
            Some(_) => fields.extend_form(inbound.body),
        }
        // The integration key is Tocsin's, not part of the alert.
        fields.0.remove("token");
        if fields.0.is_empty() {
            return Err(InvalidPayload::field(
                "body",
                "carries none of UptimeRobot's variables: paste the published POST value template",
            ));
        }
        Ok(fields)
    }

    fn extend_form(&mut self, bytes: &[u8]) {
        for (name, value) in form_urlencoded::parse(bytes) {
            self.insert(&name, &value);
        }
    }

    fn extend_json(&mut self, body: &[u8]) -> Result<(), InvalidPayload> {
        let value: Value = serde_json::from_slice(body).map_err(InvalidPayload::unreadable)?;
        let Value::Object(object) = value else {
            return Err(InvalidPayload::field("body", "must be a JSON object"));
        };
        let mut errors = Vec::new();
        for (name, value) in &object {
            match value {
                Value::String(s) => self.insert(name, s),
                Value::Number(n) => self.insert(name, &n.to_string()),
                Value::Bool(b) => self.insert(name, &b.to_string()),
                Value::Null => {}
                // The template only ever produces scalars; a nested value
                // under one of our names is a broken template.
                _ if is_read(name) => errors.push(FieldError::new(name.as_str(), "must be a string or a number")),
                _ => {}
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(InvalidPayload::new(INVALID, errors))
        }
    }

    fn insert(&mut self, name: &str, value: &str) {
        let value = value.trim();
        if value.is_empty() || is_placeholder(value) {
            return;
        }
        self.0.insert(name.to_owned(), value.to_owned());
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    }
}

/// Whether Tocsin reads this variable (for type errors worth reporting).
fn is_read(name: &str) -> bool {
    [
        MONITOR_ID,
        MONITOR_URL,
        MONITOR_NAME,
        ALERT_TYPE,
        ALERT_TYPE_NAME,
        ALERT_DETAILS,
        ALERT_DATE_TIME,
    ]
    .contains(&name)
}

/// `*alertDuration*` left as is: UptimeRobot leaves variables it does not
/// fill (an unknown name, or one that does not apply to this alert type).
fn is_placeholder(value: &str) -> bool {
    value.len() > 2
        && value.starts_with('*')
        && value.ends_with('*')
        && value[1..value.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AlertType {
    Down,
    Up,
    SslExpiry,
}

fn alert_type_of(fields: &Fields) -> Result<AlertType, FieldError> {
    if let Some(value) = fields.get(ALERT_TYPE) {
        return match value.to_ascii_lowercase().as_str() {
            "1" | "down" => Ok(AlertType::Down),
            "2" | "up" => Ok(AlertType::Up),
            "3" => Ok(AlertType::SslExpiry),
            _ => Err(FieldError::new(
                ALERT_TYPE,
                format!("'{value}' is not one of 1 (down), 2 (up), 3 (SSL expiry)"),
            )),
        };
    }
    // Templates copied from elsewhere sometimes carry only the friendly name.
    match fields.get(ALERT_TYPE_NAME).map(str::to_ascii_lowercase).as_deref() {
        Some("down") => Ok(AlertType::Down),
        Some("up") => Ok(AlertType::Up),
        _ => Err(FieldError::new(
            ALERT_TYPE,
            "is missing: the template must send \"alertType\": \"*alertType*\"",
        )),
    }
}

fn alert_from(fields: &Fields) -> Result<Alert, InvalidPayload> {
    let alert_type = alert_type_of(fields).map_err(|e| InvalidPayload::new(INVALID, vec![e]))?;
    let dedup_key = dedup_key_of(fields, alert_type)?;

    let name = fields.get(MONITOR_NAME);
    let url = fields.get(MONITOR_URL);
    let details = fields.get(ALERT_DETAILS);
    let monitor = name.or(url).unwrap_or("UptimeRobot monitor");
    let (event_action, severity, summary) = match alert_type {
        AlertType::Down => (
            Action::Trigger,
            Severity::Critical,
            with_details(&format!("{monitor} is down"), details),
        ),
        AlertType::Up => (
            Action::Resolve,
            Severity::Info,
            with_details(&format!("{monitor} is up"), details),
        ),
        AlertType::SslExpiry => (Action::Trigger, Severity::Warning, ssl_summary(monitor, fields)),
    };

    Ok(Alert {
        event_action,
        dedup_key,
        payload: Some(Payload {
            summary: Payload::truncate_summary(&summary),
            source: url.or(name).unwrap_or(KEY_PREFIX).to_owned(),
            severity,
            timestamp: fields.get(ALERT_DATE_TIME).and_then(parse_time),
            component: name.map(str::to_owned),
            group: None,
            class: Some(
                match alert_type {
                    AlertType::Down | AlertType::Up => "monitor down",
                    AlertType::SslExpiry => "ssl expiry",
                }
                .to_owned(),
            ),
            custom_details: Some(fields.to_json()),
        }),
        links: url
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            .map(|href| Link {
                href: href.to_owned(),
                text: Some("Monitored URL".to_owned()),
            })
            .into_iter()
            .collect(),
        images: Vec::new(),
        client: Some("UptimeRobot".to_owned()),
        client_url: None,
    })
}

/// The monitor's id; without one (a template copied from elsewhere), a
/// digest of its name and URL. Certificate reminders get a key of their own.
fn dedup_key_of(fields: &Fields, alert_type: AlertType) -> Result<DedupKey, InvalidPayload> {
    let suffix = if alert_type == AlertType::SslExpiry { ":ssl" } else { "" };
    if let Some(id) = fields.get(MONITOR_ID) {
        return DedupKey::parse(&format!("{KEY_PREFIX}:{id}{suffix}"))
            .map_err(|e| InvalidPayload::new(INVALID, vec![e.at(MONITOR_ID)]));
    }
    match (fields.get(MONITOR_NAME), fields.get(MONITOR_URL)) {
        (None, None) => Err(InvalidPayload::field(
            MONITOR_ID,
            "is missing (and so are monitorFriendlyName and monitorURL): the template must send \"monitorID\": \"*monitorID*\"",
        )),
        (name, url) => Ok(DedupKey::digest_of(&[
            KEY_PREFIX,
            name.unwrap_or(""),
            url.unwrap_or(""),
            suffix,
        ])),
    }
}

fn with_details(head: &str, details: Option<&str>) -> String {
    match details {
        Some(details) => format!("{head}: {details}"),
        None => head.to_owned(),
    }
}

fn ssl_summary(monitor: &str, fields: &Fields) -> String {
    let head = format!("{monitor}: SSL certificate expiring");
    match (fields.get(SSL_EXPIRY_DATE), fields.get(SSL_EXPIRY_DAYS_LEFT)) {
        (Some(date), Some(days)) => format!("{head} on {date} ({days} days left)"),
        (Some(date), None) => format!("{head} on {date}"),
        (None, Some(days)) => format!("{head} in {days} days"),
        (None, None) => with_details(&head, fields.get(ALERT_DETAILS)),
    }
}

/// `*alertDateTime*` is a Unix time; a `YYYY-MM-DD HH:MM:SS` (UTC) or RFC 3339
/// text is read too. Anything else leaves the event ordered by arrival: the
/// time is optional and a template typo should not lose the alert.
fn parse_time(value: &str) -> Option<DateTime<Utc>> {
    if let Ok(n) = value.parse::<i64>() {
        return if n.abs() >= MILLIS_THRESHOLD {
            Utc.timestamp_millis_opt(n).single()
        } else {
            Utc.timestamp_opt(n, 0).single()
        };
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S")
                .ok()
                .map(|t| t.and_utc())
        })
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

    const TRIGGER: &str = include_str!("../../../../events/uptimerobot/trigger.json");
    const RESOLVE: &str = include_str!("../../../../events/uptimerobot/resolve.json");
    const SSL_EXPIRY: &str = include_str!("../../../../events/uptimerobot/ssl-expiry.json");
    const TRIGGER_FORM: &str = include_str!("../../../../events/uptimerobot/trigger.form");
    const TEMPLATE: &str = include_str!("../../../../events/uptimerobot/template.json");

    const KEY: &str = "44444444444444444444444444444444";
    const SECRET: &str = "uptimerobot-shared-secret";

    /// Built from config text as in production, so that settings other
    /// providers add to Integration need no change here.
    fn catalog(with_secret: bool) -> Catalog {
        let secret = if with_secret {
            format!(", secret: {SECRET}")
        } else {
            String::new()
        };
        let config = format!(
            "services:\n  - id: checkout\n    integrations:\n      - {{id: checkout-uptimerobot, type: uptimerobot, key: {KEY}{secret}}}\n"
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
                provider: ProviderKind::UptimeRobot,
                headers: &map,
                query: None,
                body,
                received_at: Utc::now(),
            }));
        (answer.status(), store)
    }

    fn normalize_with(body: &str, query: Option<&str>) -> Result<Vec<Alert>, InvalidPayload> {
        let headers = HeaderMap::new();
        let inbound = Inbound {
            headers: &headers,
            query,
            body: body.as_bytes(),
            received_at: Utc::now(),
        };
        UptimeRobot.normalize(&inbound, &integration())
    }

    fn one(body: &str) -> Alert {
        let mut alerts = normalize_with(body, None).unwrap();
        assert_eq!(alerts.len(), 1);
        alerts.remove(0)
    }

    fn refused(body: &str) -> Vec<String> {
        normalize_with(body, None)
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
    fn a_down_alert_triggers_a_critical_incident_keyed_by_the_monitor() {
        let alert = one(TRIGGER);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "uptimerobot:798541234");
        let payload = payload(&alert);
        assert_eq!(payload.summary, "Checkout API is down: Connection Timeout");
        assert_eq!(payload.severity, Severity::Critical);
        assert_eq!(payload.source, "https://checkout.example.com/health");
        assert_eq!(payload.component.as_deref(), Some("Checkout API"));
        assert_eq!(payload.timestamp, Utc.timestamp_opt(1_735_689_600, 0).single());
        let details = payload.custom_details.as_ref().unwrap();
        assert_eq!(details["alertDetails"], "Connection Timeout");
        // Blank variables are dropped rather than kept as "".
        assert!(details.get("alertDuration").is_none());
        assert_eq!(alert.links.len(), 1);
        assert_eq!(alert.links[0].href, "https://checkout.example.com/health");
        assert_eq!(alert.client.as_deref(), Some("UptimeRobot"));
    }

    #[test]
    fn an_up_alert_resolves_the_same_key() {
        let trigger = one(TRIGGER);
        let resolve = one(RESOLVE);
        assert_eq!(resolve.event_action, Action::Resolve);
        assert_eq!(resolve.dedup_key, trigger.dedup_key);
        assert_eq!(payload(&resolve).summary, "Checkout API is up: HTTP 200 - OK");
        assert_eq!(
            payload(&resolve).custom_details.as_ref().unwrap()["alertDuration"],
            "540"
        );
        assert_eq!(
            payload(&resolve).timestamp,
            Utc.timestamp_opt(1_735_690_140, 0).single()
        );
    }

    #[test]
    fn an_ssl_expiry_reminder_is_a_warning_on_a_key_of_its_own() {
        let alert = one(SSL_EXPIRY);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "uptimerobot:798541234:ssl");
        assert_ne!(alert.dedup_key, one(RESOLVE).dedup_key);
        assert_eq!(payload(&alert).severity, Severity::Warning);
        assert_eq!(
            payload(&alert).summary,
            "Checkout API: SSL certificate expiring on 2025-01-08 (7 days left)"
        );
    }

    #[test]
    fn post_parameters_read_like_the_json_template() {
        let from_form = one(TRIGGER_FORM);
        let from_json = one(TRIGGER);
        assert_eq!(from_form.event_action, Action::Trigger);
        assert_eq!(from_form.dedup_key, from_json.dedup_key);
        assert_eq!(payload(&from_form).summary, payload(&from_json).summary);
        assert_eq!(payload(&from_form).source, payload(&from_json).source);
        assert_eq!(payload(&from_form).timestamp, payload(&from_json).timestamp);
    }

    #[test]
    fn query_string_variables_are_read_and_the_token_is_not_one_of_them() {
        let query = "token=44444444444444444444444444444444&monitorID=798541234&monitorURL=https%3A%2F%2Fcheckout.example.com%2Fhealth&monitorFriendlyName=Checkout+API&alertType=2&alertDetails=OK";
        let alerts = normalize_with("", Some(query)).unwrap();
        assert_eq!(alerts[0].event_action, Action::Resolve);
        assert_eq!(alerts[0].dedup_key, one(TRIGGER).dedup_key);
        let details = payload(&alerts[0]).custom_details.as_ref().unwrap();
        assert!(details.get("token").is_none());
        // A body value wins over the query's.
        let alerts = normalize_with("alertType=1", Some(query)).unwrap();
        assert_eq!(alerts[0].event_action, Action::Trigger);
    }

    #[test]
    fn unfilled_placeholders_count_as_absent() {
        let body = with(TRIGGER, |o| {
            o.insert(ALERT_DETAILS.into(), "*alertDetails*".into());
            o.insert(ALERT_DATE_TIME.into(), "*alertDateTime*".into());
        });
        let alert = one(&body);
        assert_eq!(payload(&alert).summary, "Checkout API is down");
        assert_eq!(payload(&alert).timestamp, None);
        assert!(payload(&alert)
            .custom_details
            .as_ref()
            .unwrap()
            .get(ALERT_DETAILS)
            .is_none());
        assert!(is_placeholder("*monitorID*"));
        assert!(!is_placeholder("**"));
        assert!(!is_placeholder("*bold text*"));
    }

    #[test]
    fn numbers_and_the_friendly_name_are_accepted_for_the_alert_type() {
        let numeric = with(TRIGGER, |o| {
            o.insert(ALERT_TYPE.into(), Value::from(2));
            o.insert(MONITOR_ID.into(), Value::from(798_541_234_u64));
        });
        let alert = one(&numeric);
        assert_eq!(alert.event_action, Action::Resolve);
        assert_eq!(alert.dedup_key.as_str(), "uptimerobot:798541234");
        let friendly = with(TRIGGER, |o| {
            o.remove(ALERT_TYPE);
            o.insert(ALERT_TYPE_NAME.into(), "Up".into());
        });
        assert_eq!(one(&friendly).event_action, Action::Resolve);
    }

    #[test]
    fn without_a_monitor_id_the_key_is_a_digest_of_name_and_url() {
        let down = with(TRIGGER, |o| {
            o.remove(MONITOR_ID);
        });
        let up = with(RESOLVE, |o| {
            o.remove(MONITOR_ID);
        });
        let key = one(&down).dedup_key;
        assert!(key.as_str().starts_with("sha256:"));
        assert_eq!(one(&up).dedup_key, key);
        let other = with(&down, |o| {
            o.insert(MONITOR_NAME.into(), "Billing API".into());
        });
        assert_ne!(one(&other).dedup_key, key);
    }

    #[test]
    fn alert_times_in_other_shapes_are_read() {
        assert_eq!(
            parse_time("2025-01-01 00:00:00"),
            Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).single()
        );
        assert_eq!(
            parse_time("2025-01-01T01:00:00+01:00"),
            Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).single()
        );
        assert_eq!(
            parse_time("1735689600000"),
            Utc.timestamp_opt(1_735_689_600, 0).single()
        );
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn unknown_or_missing_alert_types_are_refused_by_name() {
        assert_eq!(
            refused(&with(TRIGGER, |o| {
                o.insert(ALERT_TYPE.into(), "9".into());
            })),
            vec![ALERT_TYPE]
        );
        assert_eq!(
            refused(&with(TRIGGER, |o| {
                o.remove(ALERT_TYPE);
                o.remove(ALERT_TYPE_NAME);
            })),
            vec![ALERT_TYPE]
        );
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert_eq!(refused("{"), vec!["body"]);
        assert_eq!(refused("[]"), vec!["body"]);
        assert_eq!(refused(""), vec!["body"]);
        assert_eq!(refused(r#"{"somethingElse": "x"}"#), vec![ALERT_TYPE]);
        assert_eq!(refused(r#"{"alertType": "1"}"#), vec![MONITOR_ID]);
        assert_eq!(
            refused(&with(TRIGGER, |o| {
                o.insert(MONITOR_ID.into(), serde_json::json!({"id": 1}));
            })),
            vec![MONITOR_ID]
        );
    }

    #[test]
    fn the_published_template_unfilled_is_refused() {
        // Every value is a placeholder: nothing is left to read.
        assert_eq!(refused(TEMPLATE), vec!["body"]);
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
