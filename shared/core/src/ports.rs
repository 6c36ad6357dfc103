//! The ports: one narrow async trait per capability. tocsin-local and
//! tocsin-aws implement each, and one contract suite runs against both.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::{ApiKey, KeyHash};
use crate::config::{Integration, Service};
use crate::event::{DedupKey, Event, EventId, HeartbeatId, IntegrationId, ServiceId};
use crate::heartbeat::{HeartbeatMonitor, HeartbeatState};
use crate::incident::{Decision, IgnoreReason, Incident, IncidentId, IncidentStatus, Transition};
use crate::notify::NotificationJob;
use crate::sns::TopicArn;
use crate::timeline::{EventOutcome, TimelineEntry};

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

/// Per-integration ingest counters for `GET /integrations/health`
/// (crate::health). Cheap to update: one upsert per request, never read on
/// the request path.
#[async_trait]
pub trait IngestStats: Send + Sync {
    /// Counts one request of `integration` (see
    /// [`IntegrationStats::apply`](crate::health::IntegrationStats::apply)).
    async fn record(
        &self,
        integration: &IntegrationId,
        service: &ServiceId,
        provider: crate::providers::ProviderKind,
        outcome: &crate::health::IngestOutcome,
    ) -> Result<(), BackendError>;

    /// Every integration that was counted, in no particular order.
    async fn snapshot(&self) -> Result<Vec<crate::health::IntegrationStats>, BackendError>;
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
        /// The incident's timeline entry for this event, written with it
        /// (the processor always sets it). The DynamoDB adapter writes a
        /// repeat's entry just after the incident, not atomically with it.
        timeline: Option<TimelineEntry>,
    },
    /// Written with the event's entry in its incident's timeline, when it
    /// concerned one (`TimelineEntry::of_ignored`).
    Ignored(IgnoredEvent),
}

impl Commit {
    /// What the processor writes for `decision` about `event`, decided at
    /// `now`: the incident and its timeline entry, or the ignored event.
    pub fn of(decision: &Decision, event: &Event, now: DateTime<Utc>) -> Commit {
        match decision {
            Decision::Open { incident } | Decision::Repeat { incident } | Decision::Transition { incident, .. } => {
                let expected_version = decision.write().and_then(|(_, expected)| expected);
                let transition = decision.transition(event);
                let outcome = EventOutcome::of(expected_version, transition.as_ref().map(|t| t.kind));
                Commit::Incident {
                    event_id: event.id.clone(),
                    incident: incident.clone(),
                    expected_version,
                    transition,
                    timeline: Some(TimelineEntry::of_event(event, incident, outcome, now)),
                }
            }
            Decision::Ignore { reason, incident } => Commit::Ignored(IgnoredEvent {
                event: event.clone(),
                reason: *reason,
                incident: incident.clone(),
                at: now,
            }),
        }
    }

    /// The timeline entry this commit writes, if any.
    pub fn timeline_entry(&self) -> Option<std::borrow::Cow<'_, TimelineEntry>> {
        match self {
            Commit::Incident { timeline, .. } => timeline.as_ref().map(std::borrow::Cow::Borrowed),
            Commit::Ignored(ignored) => TimelineEntry::of_ignored(ignored).map(std::borrow::Cow::Owned),
        }
    }
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
    /// Whether the event left an applied record. Only `commit` decides
    /// idempotency: the DynamoDB adapter keeps no record for an opening or
    /// a repeat (the incident's item remembers them), so this is false for
    /// those.
    async fn is_applied(&self, event: &EventId) -> Result<bool, BackendError>;
    async fn commit(&self, commit: &Commit) -> Result<CommitOutcome, BackendError>;
}

/// Each incident's timeline (crate::timeline). Entries of events are written
/// by `IncidentStore::commit` with the change they describe; this port reads
/// them and records what happens outside a commit (delivery attempts).
#[async_trait]
pub trait Timeline: Send + Sync {
    /// Adds `entry` to its incident's timeline; an entry with the same
    /// incident and id is written once.
    async fn record(&self, entry: &TimelineEntry) -> Result<(), BackendError>;
    /// The incident's entries, oldest first (ties by id).
    async fn timeline(&self, incident: &IncidentId) -> Result<Vec<TimelineEntry>, BackendError>;
}

/// Heartbeat monitors (crate::heartbeat): their config and the state of
/// their beats.
#[async_trait]
pub trait Heartbeats: Send + Sync {
    /// Every heartbeat, with its state.
    async fn monitors(&self) -> Result<Vec<HeartbeatMonitor>, BackendError>;
    async fn monitor(&self, id: &HeartbeatId) -> Result<Option<HeartbeatMonitor>, BackendError>;
    /// Sets `last_beat_at` and clears a miss, if the heartbeat's state is
    /// still `seen` (what the caller read): true when this call wrote it,
    /// false when the state changed since, or for an unknown id.
    async fn record_beat(
        &self,
        id: &HeartbeatId,
        seen: &HeartbeatState,
        last_beat_at: DateTime<Utc>,
    ) -> Result<bool, BackendError>;
    /// Records a beat at `at` whatever the state (seeding and tests); a late
    /// beat never moves the clock back. It resolves nothing: senders' beats
    /// go through [`crate::heartbeat::HeartbeatService::beat`].
    async fn beat(&self, id: &HeartbeatId, at: DateTime<Utc>) -> Result<(), BackendError> {
        for _ in 0..crate::heartbeat::MAX_BEAT_ATTEMPTS {
            let Some(monitor) = self.monitor(id).await? else {
                return Ok(());
            };
            let last = monitor.state.last_beat_at.map_or(at, |last| last.max(at));
            if self.record_beat(id, &monitor.state, last).await? {
                return Ok(());
            }
        }
        Err(BackendError::new(
            "record a beat",
            crate::heartbeat::BeatContention {
                attempts: crate::heartbeat::MAX_BEAT_ATTEMPTS,
            },
        ))
    }
    /// Marks the heartbeat missed at `at`, unless a beat arrived after
    /// `last_beat_at` (what the check read) or it is already marked: true
    /// when this call marked it.
    async fn mark_missed(
        &self,
        id: &HeartbeatId,
        last_beat_at: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool, BackendError>;
}

/// The per-channel queues between the dispatcher and the notifiers.
#[async_trait]
pub trait NotificationQueue: Send + Sync {
    async fn enqueue(&self, jobs: &[NotificationJob]) -> Result<(), BackendError>;
}

/// Maintenance windows (crate::maintenance): the dispatcher reads them to
/// hold notifications, the API and config write them, the release marks
/// them released.
#[async_trait]
pub trait MaintenanceStore: Send + Sync {
    /// Creates the window of `window.id`, or rewrites it; its released mark
    /// (`released_at`, set only by `mark_released`) stays as it was.
    async fn put_window(&self, window: &crate::maintenance::MaintenanceWindow) -> Result<(), BackendError>;
    /// Whether there was such a window.
    async fn delete_window(&self, id: &crate::maintenance::WindowId) -> Result<bool, BackendError>;
    /// The windows of `service`, or of every service: by service, then
    /// start, then id.
    async fn windows(
        &self,
        service: Option<&ServiceId>,
    ) -> Result<Vec<crate::maintenance::MaintenanceWindow>, BackendError>;
    /// Marks the window released at `at`, unless it already is (the first
    /// mark stays). A window that no longer exists is not an error.
    async fn mark_released(&self, id: &crate::maintenance::WindowId, at: DateTime<Utc>) -> Result<(), BackendError>;
    /// Brings the window's end forward to `end` (to the microsecond), in
    /// place: same id, nothing else changed. Only an unreleased window whose
    /// start is before `end` and whose end is after it changes: true when
    /// this call changed it.
    async fn end_window(&self, id: &crate::maintenance::WindowId, end: DateTime<Utc>) -> Result<bool, BackendError>;
}
