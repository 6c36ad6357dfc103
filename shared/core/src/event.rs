//! The normalized event: PagerDuty Events API v2 in shape, plus what Tocsin
//! adds (where it came from and a stable id for idempotency).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::providers::ProviderKind;

/// A value that failed to parse, naming the field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error, reported under another field name (a provider's own
    /// name for the value, such as `labels.severity`).
    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = field.into();
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [Severity::Info, Severity::Warning, Severity::Error, Severity::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        value.parse().map_err(|e: FieldError| e.at(field))
    }
}

impl FromStr for Severity {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "error" => Ok(Severity::Error),
            "critical" => Ok(Severity::Critical),
            _ => Err(FieldError::new(
                "severity",
                format!("'{s}' is not one of critical, error, warning, info"),
            )),
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Trigger,
    Acknowledge,
    Resolve,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Trigger => "trigger",
            Action::Acknowledge => "acknowledge",
            Action::Resolve => "resolve",
        }
    }

    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        value.parse().map_err(|e: FieldError| e.at(field))
    }
}

impl FromStr for Action {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "trigger" => Ok(Action::Trigger),
            "acknowledge" => Ok(Action::Acknowledge),
            "resolve" => Ok(Action::Resolve),
            _ => Err(FieldError::new(
                "event_action",
                format!("'{s}' is not one of trigger, acknowledge, resolve"),
            )),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The key that groups events into one incident per service.
///
/// Keys longer than [`DedupKey::MAX_CHARS`] are replaced by a SHA-256 digest of
/// the whole key: two long keys that share a prefix must never collide, as
/// they would if truncated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DedupKey(String);

impl DedupKey {
    pub const MAX_CHARS: usize = 255;
    const HASH_PREFIX: &'static str = "sha256:";

    /// Parses a key: surrounding whitespace is trimmed, an empty key is refused,
    /// a key over 255 characters is hashed.
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(FieldError::new("dedup_key", "must not be empty"));
        }
        if trimmed.chars().count() > Self::MAX_CHARS {
            let digest = Sha256::digest(trimmed.as_bytes());
            return Ok(DedupKey(format!("{}{}", Self::HASH_PREFIX, hex::encode(digest))));
        }
        Ok(DedupKey(trimmed.to_owned()))
    }

    /// A key derived from several parts (for providers that send none),
    /// stable across processes and releases.
    pub fn digest_of(parts: &[&str]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        DedupKey(format!("{}{}", Self::HASH_PREFIX, hex::encode(hasher.finalize())))
    }

    /// A fresh random key, as PagerDuty returns for a trigger without one.
    pub fn generate() -> Self {
        DedupKey(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DedupKey {
    type Error = FieldError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        DedupKey::parse(&value)
    }
}

impl From<DedupKey> for String {
    fn from(value: DedupKey) -> Self {
        value.0
    }
}

impl fmt::Display for DedupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifiers chosen by people in config: services and integrations.
macro_rules! slug_id {
    ($name:ident, $field:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// 1 to 64 characters of lowercase letters, digits, `-` and `_`,
            /// starting with a letter or digit: safe in URLs, keys and logs.
            pub fn parse(value: &str) -> Result<Self, FieldError> {
                let ok = !value.is_empty()
                    && value.len() <= 64
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
                    && value
                        .bytes()
                        .next()
                        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                if ok {
                    Ok($name(value.to_owned()))
                } else {
                    Err(FieldError::new(
                        $field,
                        format!(
                            "'{value}' must be 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
                        ),
                    ))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = FieldError;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                $name::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

slug_id!(ServiceId, "service");
slug_id!(IntegrationId, "integration");
slug_id!(HeartbeatId, "heartbeat");

/// The stable identity of one accepted event: every redelivery of it carries
/// the same id, so applying it twice is detected.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    pub fn generate() -> Self {
        EventId(uuid::Uuid::new_v4().to_string())
    }

    /// An id derived from a delivery id the provider sends (SNS MessageId,
    /// X-GitHub-Delivery …) so that a provider's retry is the same event.
    pub fn from_delivery(integration: &IntegrationId, delivery: &str, index: usize) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(integration.as_str().as_bytes());
        hasher.update([0]);
        hasher.update(delivery.as_bytes());
        hasher.update([0]);
        hasher.update((index as u64).to_be_bytes());
        let digest = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        EventId(uuid::Builder::from_sha1_bytes(bytes).into_uuid().to_string())
    }

    pub fn new(value: impl Into<String>) -> Self {
        EventId(value.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub href: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub src: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub href: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt: Option<String>,
}

/// What the alert says about itself. Required for a trigger; optional on
/// acknowledge and resolve, as in PagerDuty's API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub summary: String,
    pub source: String,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_details: Option<serde_json::Value>,
}

impl Payload {
    /// Summaries are capped at PagerDuty's 1024 characters, on a character
    /// boundary; providers whose contract forbids longer ones refuse instead.
    pub const MAX_SUMMARY_CHARS: usize = 1024;

    pub fn truncate_summary(summary: &str) -> String {
        match summary.char_indices().nth(Self::MAX_SUMMARY_CHARS) {
            Some((cut, _)) => summary[..cut].to_owned(),
            None => summary.to_owned(),
        }
    }
}

/// The part of an event a provider produces; [`Event`] adds where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub event_action: Action,
    pub dedup_key: DedupKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Payload>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<Image>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_url: Option<String>,
}

/// Who sent an event into Tocsin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// A monitoring tool, through one of a service's integrations.
    Integration {
        integration: IntegrationId,
        provider: ProviderKind,
    },
    /// A person or script through the incidents API (acknowledge, resolve).
    Api { actor: String },
    /// Tocsin's own heartbeat check: a heartbeat missed or recovered.
    Heartbeat { heartbeat: HeartbeatId },
}

/// An event on the events queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: EventId,
    pub service: ServiceId,
    pub origin: Origin,
    pub received_at: DateTime<Utc>,
    #[serde(flatten)]
    pub alert: Alert,
}

impl Event {
    pub fn action(&self) -> Action {
        self.alert.event_action
    }

    pub fn dedup_key(&self) -> &DedupKey {
        &self.alert.dedup_key
    }

    /// When the thing the event reports happened: the provider's timestamp
    /// where it sent one, otherwise when Tocsin received it. Incidents are
    /// ordered by this time, so a late, older event never undoes a newer one.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        self.alert
            .payload
            .as_ref()
            .and_then(|p| p.timestamp)
            .unwrap_or(self.received_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_parses_case_insensitively_and_names_the_field() {
        assert_eq!(Severity::parse("payload.severity", "CRITICAL"), Ok(Severity::Critical));
        let err = Severity::parse("payload.severity", "sev1").unwrap_err();
        assert_eq!(err.field, "payload.severity");
        assert!(err.reason.contains("sev1"));
    }

    #[test]
    fn severities_are_ordered_by_urgency() {
        assert!(Severity::Critical > Severity::Error);
        assert!(Severity::Error > Severity::Warning);
        assert!(Severity::Warning > Severity::Info);
    }

    #[test]
    fn action_refuses_unknown_values() {
        assert_eq!(Action::parse("event_action", "resolve"), Ok(Action::Resolve));
        assert_eq!(
            Action::parse("event_action", "close").unwrap_err().field,
            "event_action"
        );
    }

    #[test]
    fn dedup_key_is_trimmed_and_must_not_be_empty() {
        assert_eq!(DedupKey::parse("  disk-full ").unwrap().as_str(), "disk-full");
        assert_eq!(DedupKey::parse("   ").unwrap_err().field, "dedup_key");
    }

    #[test]
    fn a_key_of_255_characters_is_kept_as_is() {
        let key = "k".repeat(255);
        assert_eq!(DedupKey::parse(&key).unwrap().as_str(), key);
    }

    #[test]
    fn long_keys_are_hashed_deterministically_without_collisions() {
        let shared = "x".repeat(300);
        let a = DedupKey::parse(&format!("{shared}a")).unwrap();
        let b = DedupKey::parse(&format!("{shared}b")).unwrap();
        assert_ne!(a, b, "keys sharing a long prefix must not collide");
        assert_eq!(a, DedupKey::parse(&format!("{shared}a")).unwrap());
        assert!(a.as_str().starts_with("sha256:"));
        assert!(a.as_str().chars().count() <= DedupKey::MAX_CHARS);
    }

    #[test]
    fn long_keys_are_measured_in_characters_not_bytes() {
        let key = "é".repeat(200); // 400 bytes, 200 characters
        assert_eq!(DedupKey::parse(&key).unwrap().as_str(), key);
    }

    #[test]
    fn digest_keys_separate_their_parts() {
        assert_ne!(DedupKey::digest_of(&["ab", "c"]), DedupKey::digest_of(&["a", "bc"]));
    }

    #[test]
    fn slugs_are_validated() {
        assert!(ServiceId::parse("checkout-api_2").is_ok());
        assert_eq!(ServiceId::parse("Checkout").unwrap_err().field, "service");
        assert!(IntegrationId::parse("").is_err());
        assert!(IntegrationId::parse("-am").is_err());
    }

    #[test]
    fn delivery_ids_give_stable_event_ids() {
        let integration = IntegrationId::parse("gh").unwrap();
        let a = EventId::from_delivery(&integration, "72d3162e", 0);
        assert_eq!(a, EventId::from_delivery(&integration, "72d3162e", 0));
        assert_ne!(a, EventId::from_delivery(&integration, "72d3162e", 1));
    }

    /// Found by fuzzing (tests/fuzz, target provider_newrelic): with
    /// serde_json's default float parsing, a number in a payload came back
    /// from the queue one unit in the last place off.
    #[test]
    fn numbers_in_a_payload_survive_the_queue_unchanged() {
        let event: Event = serde_json::from_str(
            r#"{"id": "e1", "service": "checkout", "origin": {"kind": "api", "actor": "fuzz"},
                "received_at": "2024-06-01T12:00:00Z", "event_action": "trigger", "dedup_key": "k",
                "payload": {"summary": "s", "source": "s", "severity": "error",
                            "custom_details": {"updatedAt": 17137700000000000000000000000000000000000000000657383,
                                               "ratio": 0.30000000000000004}}}"#,
        )
        .unwrap();
        let queued = serde_json::to_vec(&event).unwrap();
        assert_eq!(serde_json::from_slice::<Event>(&queued).unwrap(), event);
    }

    #[test]
    fn summaries_are_cut_on_character_boundaries() {
        let long = "é".repeat(2000);
        assert_eq!(Payload::truncate_summary(&long).chars().count(), 1024);
        assert_eq!(Payload::truncate_summary("short"), "short");
    }
}
