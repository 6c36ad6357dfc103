//! The ports: one narrow async trait per capability. tocsin-local and
//! tocsin-aws implement each, and one contract suite runs against both.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::{ApiKey, KeyHash};
use crate::config::{Integration, Service};
use crate::event::{DedupKey, Event, EventId, IntegrationId, ServiceId};
use crate::incident::{IgnoreReason, Incident, IncidentId, IncidentStatus, Transition};
use crate::notify::NotificationJob;
use crate::sns::TopicArn;

/// A failure of the thing behind a port (disk, network, AWS). Always worth
/// a retry; never the caller's fault.
#[derive(Debug, thiserror::Error)]
#[error("{operation} failed")]
pub struct BackendError {
    pub operation: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl BackendError {
    pub fn new(operation: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            operation,
            source: source.into(),
        }
    }
}

/// The events queue between ingest and the processor.
#[async_trait]
pub trait EventQueue: Send + Sync {
    /// Enqueues every event or none: a request is never half accepted.
    async fn enqueue(&self, events: &[Event]) -> Result<(), BackendError>;
}

/// Counts an integration's requests per fixed one-minute window, for the
/// ingest rate limit (crate::ratelimit). The count must be atomic across
/// every process that serves the integration: a DynamoDB atomic counter on
/// AWS, a SQLite upsert locally.
#[async_trait]
pub trait RateCounter: Send + Sync {
    /// Adds one request to `integration`'s count for `window` (minutes since
    /// the Unix epoch) and returns the count including it.
    async fn hit(&self, integration: &IntegrationId, window: i64) -> Result<u64, BackendError>;
}

/// Services, integrations and API keys.
#[async_trait]
pub trait ConfigStore: Send + Sync {
    async fn integration_by_key(&self, key: &KeyHash) -> Result<Option<Integration>, BackendError>;
    /// The cloudwatch integration that lists `topic`, for SNS deliveries
    /// that AWS makes itself (topic → Lambda), where there is no key.
    async fn integration_by_topic(&self, topic: &TopicArn) -> Result<Option<Integration>, BackendError>;
    async fn service(&self, id: &ServiceId) -> Result<Option<Service>, BackendError>;
    async fn api_key(&self, key: &KeyHash) -> Result<Option<ApiKey>, BackendError>;
}

/// An event that changed nothing, kept so that "why did this not page?" has
/// an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IgnoredEvent {
    pub event: Event,
    pub reason: IgnoreReason,
    pub incident: Option<IncidentId>,
    pub at: DateTime<Utc>,
}

/// What applying one event writes, atomically: the event is marked applied
/// in the same write as the incident change, so a redelivered event is
/// detected and never counted twice.
// One short-lived value per event: boxing would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Commit {
    /// Create (`expected_version: None`) or update the incident; a
    /// transition, when there is one, is published with it.
    Incident {
        event_id: EventId,
        incident: Incident,
        expected_version: Option<u64>,
        transition: Option<Transition>,
    },
    Ignored(IgnoredEvent),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    Written,
    /// The event was already applied: nothing written.
    AlreadyApplied,
    /// The incident (or the key's open slot) changed since it was read.
    Conflict,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncidentFilter {
    pub status: Option<IncidentStatus>,
    pub service: Option<ServiceId>,
    pub limit: Option<usize>,
}

#[async_trait]
pub trait IncidentStore: Send + Sync {
    /// The newest incident of this key, open or resolved.
    async fn latest(&self, service: &ServiceId, dedup_key: &DedupKey) -> Result<Option<Incident>, BackendError>;
    async fn get(&self, id: &IncidentId) -> Result<Option<Incident>, BackendError>;
    /// Newest first.
    async fn list(&self, filter: &IncidentFilter) -> Result<Vec<Incident>, BackendError>;
    async fn is_applied(&self, event: &EventId) -> Result<bool, BackendError>;
    async fn commit(&self, commit: &Commit) -> Result<CommitOutcome, BackendError>;
}

/// The per-channel queues between the dispatcher and the notifiers.
#[async_trait]
pub trait NotificationQueue: Send + Sync {
    async fn enqueue(&self, jobs: &[NotificationJob]) -> Result<(), BackendError>;
}
