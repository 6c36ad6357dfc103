//! One provider's endpoint, fuzzed: its own hooks called directly on the
//! request (verify, normalize, key_in_body, delivery_id, accepted), then the
//! whole ingest path in preview mode, which adds authentication, the SNS
//! step, dedup templates, the event size limit and the error answers.
//!
//! Invariants checked, besides "no panic":
//! - normalize is deterministic (same request, same alerts, same error);
//! - an accepted payload yields alerts whose dedup keys are 1 to 255
//!   characters, already trimmed; triggers carry a payload; summaries stay
//!   within PagerDuty's 1024 characters; every event survives the queue's
//!   JSON round trip unchanged; a dedup template keeps keys within 255;
//! - with a secret set, no request passes verify (the fuzzer does not know
//!   the secret), and no error or answer shows the secret;
//! - the integration key shows nowhere: the same request authenticated by
//!   another key (in the same header or query parameter) makes the same
//!   alerts and the same refusals;
//! - preview never answers 5xx, and always answers JSON.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use tocsin_core::auth::{key_from_request, ApiKey, IntegrationKey, KeyHash};
use tocsin_core::config::{Catalog, Integration, Secret, Service};
use tocsin_core::dedup::DedupTemplate;
use tocsin_core::event::{Action, Alert, Event, EventId, Origin, Payload, ServiceId};
use tocsin_core::ingest::{IngestRequest, IngestService};
use tocsin_core::memory::MemoryStore;
use tocsin_core::ports::{BackendError, ConfigStore};
use tocsin_core::providers::{
    provider as provider_of, Accepted, Delivery, Inbound, InvalidPayload, Provider, ProviderKind,
};
use tocsin_core::sns::{Sns, SnsMessage, TopicArn};

use crate::{assert_no_secret, occurrences, ready, received_at, Request, KEY, SECRET};
use http::{HeaderMap, HeaderValue};
use tocsin_core::answer::Answer;

/// The certificate that signed the real SNS samples in events/cloudwatch.
const SNS_CERTIFICATES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/sns");

/// A template over fields every provider fills, as operators write them.
const TEMPLATE: &str = "{payload.source}/{dedup_key}";

/// Fuzzes `kind`'s endpoint with one input.
pub fn provider(kind: ProviderKind, data: &[u8]) {
    let harness = Harness::get(kind);
    let request = Request::decode(data);
    let p = provider_of(kind);
    let inbound = Inbound {
        headers: &request.headers,
        query: request.query.as_deref(),
        body: request.body,
        received_at: received_at_for(p, request.body),
    };
    let plain = harness.integration(request.body, None);
    let signed = harness.integration(request.body, Some(SECRET));

    // The hooks that read the raw request before anything is checked.
    let _ = p.key_in_body(&inbound);
    let _ = p.delivery_id(&inbound);
    let _ = p.wants_incident_hint(&inbound);

    match p.verify(&inbound, &signed) {
        // SNS-delivered providers are verified by the SNS step instead.
        Ok(()) => assert!(
            p.delivery() == Delivery::Sns,
            "{kind}: verify accepted a request signed without the secret"
        ),
        Err(error) => assert_no_secret("a signature error", error.to_string().as_bytes()),
    }
    let _ = p.verify(&inbound, &plain);

    let alerts = normalize_checked(p, &inbound, &plain);
    if p.delivery() == Delivery::Sns {
        if let Ok(message) = SnsMessage::parse(request.body) {
            let unwrapped = Inbound {
                body: message.message.as_bytes(),
                ..inbound
            };
            let _ = normalize_checked(p, &unwrapped, &plain);
        }
    }
    let kind = harness.kind;
    let answers = preview_checked(harness, &request, &inbound, plain.clone(), signed);

    // The same request authenticated by another key must make the same
    // alerts and the same refusals: anything else shows the key.
    if let Some((headers, query)) = with_other_key(&request) {
        let swapped = Inbound {
            headers: &headers,
            query: query.as_deref(),
            ..inbound
        };
        let other = p.normalize(&swapped, &plain);
        match (&alerts, &other) {
            (Ok(alerts), Ok(other)) => assert_same_alerts(kind, alerts, other),
            (alerts, other) => assert_eq!(
                alerts.as_ref().err(),
                other.as_ref().err(),
                "{kind}: normalize depends on the integration key"
            ),
        }
        let other_answers = preview_checked(
            harness,
            &request,
            &swapped,
            plain,
            harness.integration(request.body, Some(SECRET)),
        );
        for (answer, other) in answers.iter().zip(&other_answers) {
            assert_eq!(
                answer.status(),
                other.status(),
                "{kind}: the answer depends on the integration key"
            );
            if !answer.status().is_success() {
                assert_eq!(
                    answer.body(),
                    other.body(),
                    "{kind}: the refusal shows the integration key: {}",
                    String::from_utf8_lossy(answer.body())
                );
            }
        }
    }
}

/// Another key than the one the request authenticates with.
const OTHER_KEY: &str = "fedcba9876543210fedcba9876543210";

/// The request's headers and query with the key it authenticates with
/// replaced by [`OTHER_KEY`]: when that key comes from a header or the
/// query (not the body) and appears nowhere else in the request, so that
/// the swap changes nothing but the key.
fn with_other_key(request: &Request<'_>) -> Option<(HeaderMap, Option<String>)> {
    let query = request.query.as_deref();
    let key = key_from_request(&request.headers, query).and_then(|key| IntegrationKey::parse(&key).ok())?;
    let key = key.reveal();
    if request.occurrences(key) != 1 {
        return None;
    }
    let mut headers = request.headers.clone();
    for value in headers.values_mut() {
        if occurrences(value.as_bytes(), key) == 1 {
            *value = HeaderValue::from_bytes(&replace_key(value.as_bytes(), key)).ok()?;
        }
    }
    let query = query.map(|q| String::from_utf8_lossy(&replace_key(q.as_bytes(), key)).into_owned());
    let swapped = key_from_request(&headers, query.as_deref()).and_then(|k| IntegrationKey::parse(&k).ok())?;
    (swapped.reveal() == OTHER_KEY).then_some((headers, query))
}

fn replace_key(text: &[u8], key: &str) -> Vec<u8> {
    let mut out = text.to_vec();
    if let Some(at) = text
        .windows(key.len())
        .position(|w| w.eq_ignore_ascii_case(key.as_bytes()))
    {
        out.splice(at..at + key.len(), OTHER_KEY.bytes());
    }
    out
}

/// The time a request is received: for SNS envelopes, just after their
/// Timestamp, so that a real signed sample verifies (its certificate has
/// long expired) and the fuzzer reaches the alarm inside.
fn received_at_for(p: &dyn Provider, body: &[u8]) -> DateTime<Utc> {
    if p.delivery() == Delivery::Sns {
        let sent = SnsMessage::parse(body)
            .ok()
            .and_then(|message| DateTime::parse_from_rfc3339(&message.timestamp).ok());
        if let Some(sent) = sent {
            return sent.with_timezone(&Utc) + Duration::seconds(1);
        }
    }
    received_at()
}

fn normalize_checked(
    p: &dyn Provider,
    inbound: &Inbound<'_>,
    integration: &Integration,
) -> Result<Vec<Alert>, InvalidPayload> {
    let kind = p.kind();
    let first = p.normalize(inbound, integration);
    let second = p.normalize(inbound, integration);
    match (&first, second) {
        (Ok(first), Ok(second)) => {
            assert_same_alerts(kind, first, &second);
            check_alerts(p, inbound, integration, first.clone());
        }
        (Err(first), Err(second)) => {
            assert_eq!(first, &second, "{kind}: normalize refused the same request differently");
            assert_no_secret("a payload error", first.to_string().as_bytes());
        }
        (first, second) => panic!("{kind}: normalize is not deterministic: {first:?} then {second:?}"),
    }
    first
}

/// Alerts equal but for the keys that are random by design: as in
/// PagerDuty, an Events API v2 event or a Splunk On-Call trigger without a
/// key gets a fresh one.
fn assert_same_alerts(kind: ProviderKind, first: &[Alert], second: &[Alert]) {
    let generated = |alert: &Alert| {
        let key = alert.dedup_key.as_str();
        matches!(kind, ProviderKind::EventsV2 | ProviderKind::SplunkOnCall)
            && key.len() == 32
            && key.bytes().all(|b| b.is_ascii_hexdigit())
    };
    assert_eq!(first.len(), second.len(), "{kind}: normalize is not deterministic");
    for (a, b) in first.iter().zip(second) {
        if a.dedup_key != b.dedup_key && generated(a) && generated(b) {
            let mut b = b.clone();
            b.dedup_key = a.dedup_key.clone();
            assert_eq!(a, &b, "{kind}: normalize is not deterministic");
        } else {
            assert_eq!(a, b, "{kind}: normalize is not deterministic");
        }
    }
}

fn check_alerts(p: &dyn Provider, inbound: &Inbound<'_>, integration: &Integration, mut alerts: Vec<Alert>) {
    let kind = p.kind();
    for alert in &alerts {
        check_alert(kind, alert);
    }

    let template = DedupTemplate::parse(TEMPLATE).unwrap_or_else(|reason| panic!("harness: {TEMPLATE}: {reason}"));
    let mut templated = alerts.clone();
    template.apply(&mut templated);
    for alert in &templated {
        check_dedup_key(kind, alert);
    }

    // The events ingest would queue, as it makes them.
    let events: Vec<Event> = alerts
        .drain(..)
        .enumerate()
        .map(|(index, alert)| Event {
            id: EventId::from_delivery(&integration.id, "fuzz-delivery", index),
            service: integration.service.clone(),
            origin: Origin::Integration {
                integration: integration.id.clone(),
                provider: kind,
            },
            received_at: inbound.received_at,
            alert,
        })
        .collect();
    for event in &events {
        let json = serde_json::to_vec(event).unwrap_or_else(|e| panic!("{kind}: an event does not serialize: {e}"));
        let back: Event = serde_json::from_slice(&json).unwrap_or_else(|e| {
            panic!(
                "{kind}: a queued event does not read back: {e}: {}",
                String::from_utf8_lossy(&json)
            )
        });
        assert_eq!(&back, event, "{kind}: an event changes on its way through the queue");
    }

    let answer = p.accepted(
        inbound,
        &Accepted {
            events: &events,
            integration,
            hint: None,
        },
    );
    assert!(
        answer.status().is_success(),
        "{kind}: accepted answered {}",
        answer.status()
    );
    check_answer_body(kind, answer.body());
}

pub(crate) fn check_alert(kind: ProviderKind, alert: &Alert) {
    check_dedup_key(kind, alert);
    match &alert.payload {
        Some(payload) => assert!(
            payload.summary.chars().count() <= Payload::MAX_SUMMARY_CHARS,
            "{kind}: a summary of {} characters",
            payload.summary.chars().count()
        ),
        None => assert!(
            alert.event_action != Action::Trigger,
            "{kind}: a trigger without a payload"
        ),
    }
}

fn check_dedup_key(kind: ProviderKind, alert: &Alert) {
    let key = alert.dedup_key.as_str();
    assert!(!key.is_empty(), "{kind}: an empty dedup key");
    assert!(
        key.chars().count() <= 255,
        "{kind}: a dedup key of {} characters",
        key.chars().count()
    );
    assert_eq!(key, key.trim(), "{kind}: a dedup key with surrounding whitespace");
}

/// Every answer is JSON (or empty) and never shows the secret.
fn check_answer_body(kind: ProviderKind, body: &[u8]) {
    if !body.is_empty() {
        if let Err(error) = serde_json::from_slice::<serde_json::Value>(body) {
            panic!(
                "{kind}: an answer is not JSON ({error}): {}",
                String::from_utf8_lossy(body)
            );
        }
    }
    assert_no_secret("an answer", body);
}

/// Previews the request without and with the secret; the two answers.
fn preview_checked(
    harness: &Harness,
    request: &Request<'_>,
    inbound: &Inbound<'_>,
    plain: Integration,
    signed: Integration,
) -> [Answer; 2] {
    let kind = harness.kind;
    let preview = |integration: Integration| {
        harness.config.set(integration);
        ready(harness.ingest.preview(IngestRequest {
            provider: kind,
            headers: inbound.headers,
            query: inbound.query,
            body: request.body,
            received_at: inbound.received_at,
        }))
    };

    let plain = preview(plain);
    assert!(
        !plain.status().is_server_error(),
        "{kind}: preview answered {}: {}",
        plain.status(),
        String::from_utf8_lossy(plain.body())
    );
    check_answer_body(kind, plain.body());

    let signed = preview(signed);
    check_answer_body(kind, signed.body());
    if provider_of(kind).delivery() == Delivery::Direct {
        assert!(
            !signed.status().is_success(),
            "{kind}: preview accepted a request signed without the secret"
        );
    }
    [plain, signed]
}

/// What one target process keeps: the integration it is fuzzing and an
/// ingest service whose config answers every well-formed key with it.
struct Harness {
    kind: ProviderKind,
    template: Integration,
    config: Arc<AnyKey>,
    ingest: IngestService,
}

impl Harness {
    fn get(kind: ProviderKind) -> &'static Harness {
        static HARNESS: OnceLock<Harness> = OnceLock::new();
        let harness = HARNESS.get_or_init(|| Harness::new(kind));
        assert_eq!(harness.kind, kind, "harness: one provider per process");
        harness
    }

    fn new(kind: ProviderKind) -> Harness {
        // Built from config text as in production, so that settings added
        // to Integration later need no change here.
        let settings = match kind {
            ProviderKind::CloudWatch => ", cloudwatch: {topics: [arn:aws:sns:us-east-1:123456789012:fuzz]}",
            _ => "",
        };
        let yaml = format!(
            "services:\n  - id: fuzz\n    integrations:\n      - {{id: fuzz, type: {kind}, key: {KEY}{settings}}}\n"
        );
        let catalog = Catalog::from_yaml(&yaml, "fuzz.yaml").unwrap_or_else(|e| panic!("harness: {e}"));
        let template = catalog
            .integrations
            .first()
            .cloned()
            .unwrap_or_else(|| panic!("harness: no integration in {yaml}"));
        let config = Arc::new(AnyKey {
            integration: Mutex::new(template.clone()),
        });
        let store = Arc::new(MemoryStore::new());
        let ingest = IngestService::new(config.clone(), store.clone(), store).with_sns(Sns::offline(SNS_CERTIFICATES));
        Harness {
            kind,
            template,
            config,
            ingest,
        }
    }

    /// The integration for one request: with or without the secret, and
    /// for SNS, allowing the envelope's own topic so that the fuzzer gets
    /// past the topic check.
    fn integration(&self, body: &[u8], secret: Option<&str>) -> Integration {
        let mut integration = self.template.clone();
        integration.secret = secret.map(Secret::new);
        if provider_of(self.kind).delivery() == Delivery::Sns {
            if let Some(topic) = SnsMessage::parse(body)
                .ok()
                .and_then(|message| TopicArn::parse(&message.topic_arn).ok())
            {
                integration.cloudwatch.topics = vec![topic];
            }
        }
        integration
    }
}

/// A config store that answers any key with the current integration, so
/// that whatever well-formed key a request carries, ingest goes on.
struct AnyKey {
    integration: Mutex<Integration>,
}

impl AnyKey {
    fn set(&self, integration: Integration) {
        *self.integration.lock().unwrap_or_else(PoisonError::into_inner) = integration;
    }

    fn current(&self) -> Integration {
        self.integration.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[async_trait]
impl ConfigStore for AnyKey {
    async fn integration_by_key(&self, key: &KeyHash) -> Result<Option<Integration>, BackendError> {
        let mut integration = self.current();
        integration.key_hash = key.clone();
        Ok(Some(integration))
    }

    async fn integration_by_topic(&self, topic: &TopicArn) -> Result<Option<Integration>, BackendError> {
        let integration = self.current();
        Ok(integration.cloudwatch.topics.contains(topic).then_some(integration))
    }

    async fn service(&self, _id: &ServiceId) -> Result<Option<Service>, BackendError> {
        Ok(None)
    }

    async fn api_key(&self, _key: &KeyHash) -> Result<Option<ApiKey>, BackendError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(path: &str) -> Vec<u8> {
        let file = format!("{}/../../events/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&file).unwrap_or_else(|e| panic!("{file}: {e}"))
    }

    /// The status preview answers `body` (sent with the key in the query).
    fn previewed(kind: ProviderKind, meta: &str, body: &[u8]) -> http::StatusCode {
        let data = [meta.as_bytes(), b"\0", body].concat();
        let request = Request::decode(&data);
        let harness = Harness::get(kind);
        let p = provider_of(kind);
        harness.config.set(harness.integration(request.body, None));
        ready(harness.ingest.preview(IngestRequest {
            provider: kind,
            headers: &request.headers,
            query: request.query.as_deref(),
            body: request.body,
            received_at: received_at_for(p, request.body),
        }))
        .status()
    }

    // One process, one provider (as in a target): CloudWatch, whose SNS
    // step is the one the harness has to set up right.
    #[test]
    fn the_signed_alarm_sample_gets_through_the_sns_step() {
        let kind = ProviderKind::CloudWatch;
        let meta = format!("?token={KEY}\nx-amz-sns-message-type: Notification");
        assert_eq!(
            previewed(kind, &meta, &sample("cloudwatch/alarm.json")),
            http::StatusCode::OK
        );
        provider(
            kind,
            &[meta.as_bytes(), b"\0", &sample("cloudwatch/alarm.json")].concat(),
        );
    }
}
