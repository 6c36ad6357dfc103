//! One module per monitoring tool: its payload types, its mapping to
//! [`Alert`]s, its signature scheme and its answers. Adding a provider touches
//! its module, one line in [`ProviderKind`] and [`provider`], one function in
//! template.yaml and its doc page.

use std::fmt;

use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use crate::answer::{json_answer, Answer};
use crate::config::Integration;
use crate::event::{Alert, Event, FieldError};
use crate::incident::IncidentId;
use crate::signature::{verify_body_signature, SignatureError};

pub mod events_v2;
pub mod generic;
pub mod prometheus;
pub mod webhook;

/// The provider ids: the config `type` and the `/integrations/{provider}` path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ProviderKind {
    /// PagerDuty's Events API v2 (`POST /v2/enqueue`).
    #[serde(rename = "events-v2")]
    EventsV2,
    /// Prometheus Alertmanager's webhook (version 4).
    #[serde(rename = "prometheus")]
    Prometheus,
    /// Any JSON webhook, with field aliases and per-integration field paths.
    #[serde(rename = "webhook")]
    Webhook,
    /// GoAlert's generic incoming API (`POST /api/v2/generic/incoming`).
    #[serde(rename = "generic")]
    Generic,
}

impl ProviderKind {
    pub const ALL: &'static [ProviderKind] = &[
        ProviderKind::EventsV2,
        ProviderKind::Prometheus,
        ProviderKind::Webhook,
        ProviderKind::Generic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::EventsV2 => "events-v2",
            ProviderKind::Prometheus => "prometheus",
            ProviderKind::Webhook => "webhook",
            ProviderKind::Generic => "generic",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == value)
    }

    /// The path the provider posts to, relative to the API's base URL.
    pub fn path(self) -> &'static str {
        match self {
            ProviderKind::EventsV2 => "/v2/enqueue",
            ProviderKind::Prometheus => "/integrations/prometheus",
            ProviderKind::Webhook => "/integrations/webhook",
            ProviderKind::Generic => "/api/v2/generic/incoming",
        }
    }

    /// Human name, for listings and docs.
    pub fn title(self) -> &'static str {
        match self {
            ProviderKind::EventsV2 => "PagerDuty-compatible Events API v2",
            ProviderKind::Prometheus => "Prometheus Alertmanager",
            ProviderKind::Webhook => "Generic webhook",
            ProviderKind::Generic => "GoAlert-compatible generic API",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One inbound request, as the provider sees it: raw bytes, never parsed
/// before the signature is checked.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    pub received_at: DateTime<Utc>,
}

/// A payload that cannot become events: a message and one entry per problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidPayload {
    pub message: String,
    pub errors: Vec<FieldError>,
}

impl InvalidPayload {
    pub fn new(message: impl Into<String>, errors: Vec<FieldError>) -> Self {
        Self {
            message: message.into(),
            errors,
        }
    }

    /// One problem with one field.
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let error = FieldError::new(field, reason);
        Self {
            message: error.to_string(),
            errors: vec![error],
        }
    }

    /// A body that is not the JSON (or form) the provider sends.
    pub fn unreadable(error: impl fmt::Display) -> Self {
        Self::field("body", format!("is not valid JSON: {error}"))
    }
}

/// What ingest learnt about the incident an accepted trigger lands on, for
/// providers whose answer names it (GoAlert's AlertID / IsNew).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentHint {
    pub incident: IncidentId,
    pub is_new: bool,
}

/// Everything a provider may need to answer a request that was accepted.
#[derive(Debug)]
pub struct Accepted<'a> {
    pub events: &'a [Event],
    pub integration: &'a Integration,
    pub hint: Option<IncidentHint>,
}

pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// The largest body accepted (PagerDuty's 512 KB unless the provider
    /// documents otherwise).
    fn max_body_bytes(&self) -> usize {
        512 * 1024
    }

    /// The integration key when the provider carries it in the body (Events
    /// v2 `routing_key`, GoAlert `token`), read only when no header or query
    /// parameter carries one.
    fn key_in_body(&self, _inbound: &Inbound<'_>) -> Option<String> {
        None
    }

    /// Checks the request's signature on the raw body. The default is
    /// Tocsin's own `X-Signature: sha256=<hex>` for integrations with a
    /// secret; providers with their own scheme override it.
    fn verify(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<(), SignatureError> {
        match &integration.secret {
            Some(secret) => verify_body_signature(inbound.headers, inbound.body, &[secret]),
            None => Ok(()),
        }
    }

    /// Turns the payload into alerts: all of them, or an error and none.
    fn normalize(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<Vec<Alert>, InvalidPayload>;

    /// Whether the answer needs an [`IncidentHint`] (costs a store read).
    fn wants_incident_hint(&self, _inbound: &Inbound<'_>) -> bool {
        false
    }

    /// The answer to a request whose events are all enqueued.
    fn accepted(&self, inbound: &Inbound<'_>, accepted: &Accepted<'_>) -> Answer {
        let _ = inbound;
        json_answer(
            StatusCode::ACCEPTED,
            &serde_json::json!({
                "status": "success",
                "message": "Event processed",
                "events": accepted.events.len(),
                "dedup_keys": accepted.events.iter().map(|e| e.dedup_key().as_str()).collect::<Vec<_>>(),
            }),
        )
    }
}

/// The provider behind a kind.
pub fn provider(kind: ProviderKind) -> &'static dyn Provider {
    match kind {
        ProviderKind::EventsV2 => &events_v2::EventsV2,
        ProviderKind::Prometheus => &prometheus::Prometheus,
        ProviderKind::Webhook => &webhook::Webhook,
        ProviderKind::Generic => &generic::Generic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_ids() {
        for &kind in ProviderKind::ALL {
            assert_eq!(ProviderKind::parse(kind.as_str()), Some(kind));
            assert_eq!(provider(kind).kind(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert_eq!(ProviderKind::parse("nagios"), None);
    }
}
