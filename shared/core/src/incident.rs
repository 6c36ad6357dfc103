//! Incidents and the state machine that folds events into them.
//!
//! At most one open incident per (service, dedup key). A trigger on an open
//! incident counts a repeat; a trigger after resolve opens a new incident;
//! acknowledge and resolve of an unknown or closed key change nothing and are
//! recorded. An event older than the incident's last transition never undoes
//! it (see [`TransitionClock`] for which clock decides "older").

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::{Action, DedupKey, Event, EventId, IntegrationId, Link, Origin, ServiceId, Severity};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IncidentId(String);

impl IncidentId {
    /// The id of the incident that `opening` event opens: derived, not random,
    /// so a redelivered event names the same incident and an ingest endpoint
    /// can tell a caller which incident its trigger will open.
    pub fn for_opening(service: &ServiceId, dedup_key: &DedupKey, opening: &EventId) -> Self {
        let mut hasher = Sha256::new();
        for part in [service.as_str(), dedup_key.as_str(), opening.as_str()] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        let digest = hasher.finalize();
        IncidentId(format!("inc_{}", hex::encode(&digest[..10])))
    }

    /// Accepts what [`IncidentId::for_opening`] produces, and nothing else,
    /// so a path parameter can be checked before any lookup.
    pub fn parse(value: &str) -> Option<Self> {
        let hex = value.strip_prefix("inc_")?;
        (hex.len() == 20 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            .then(|| IncidentId(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IncidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncidentStatus {
    Open,
    Acknowledged,
    Resolved,
}

impl IncidentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Open => "open",
            IncidentStatus::Acknowledged => "acknowledged",
            IncidentStatus::Resolved => "resolved",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "open" => Some(IncidentStatus::Open),
            "acknowledged" => Some(IncidentStatus::Acknowledged),
            "resolved" => Some(IncidentStatus::Resolved),
            _ => None,
        }
    }

    pub fn is_closed(self) -> bool {
        self == IncidentStatus::Resolved
    }
}

impl fmt::Display for IncidentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: IncidentId,
    pub service: ServiceId,
    pub dedup_key: DedupKey,
    pub status: IncidentStatus,
    pub severity: Severity,
    pub summary: String,
    pub source: String,
    /// Triggers merged into this incident, the opening one included.
    pub occurrences: u64,
    pub origin: Origin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_details: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The newest trigger time seen (provider time where given).
    pub last_seen_at: DateTime<Utc>,
    /// When the last transition (open, acknowledge, resolve) happened, by the
    /// event's own clock (the provider's timestamp where it sent one).
    pub last_transition_at: DateTime<Utc>,
    /// The clocks of the last transition, which later events are ordered
    /// against: an event older than it is ignored.
    pub transition_clock: TransitionClock,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    /// Who acknowledged it, as [`actor_name`] puts it; absent from incidents
    /// stored before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    /// Who resolved it, as [`actor_name`] puts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    /// Bumped on every write; stores use it for conditional writes.
    pub version: u64,
    /// Store bookkeeping, not part of the incident: see [`StoreNotes`].
    #[serde(skip)]
    pub store_notes: StoreNotes,
}

/// What a store remembers about how it keeps an incident, kept by a store
/// that needs it (the DynamoDB adapter). Core logic never reads or changes
/// it; it only carries it from the incident it read to the one it writes
/// (`decide` clones).
///
/// Never serialized with the incident (API answers, local stores) and never
/// part of its equality: two incidents are the same state however a store
/// keeps them.
#[derive(Debug, Clone, Default)]
pub struct StoreNotes {
    /// Short tags of the last events applied to the incident (DynamoDB keeps
    /// them in the incident's item, to recognise a redelivered repeat
    /// without a separate idempotency record).
    pub recent_events: Vec<String>,
    /// Whether the incident's custom details and links are kept apart from
    /// the rest of it (DynamoDB: an item of their own, written once when the
    /// incident opens, so that the incident's item stays small).
    pub details_apart: bool,
}

impl PartialEq for StoreNotes {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

/// When the last transition happened, by each clock that can be trusted to
/// compare later events with.
///
/// A provider's own timestamps are comparable with each other (Alertmanager's
/// startsAt and endsAt), but not with Tocsin's clock or another integration's:
/// a tool whose clock is an hour behind must still be able to resolve an
/// incident someone acknowledged a minute ago. So an event is compared on the
/// provider clock only when the transition came from the same integration with
/// a timestamp, and on Tocsin's receive clock otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionClock {
    /// When Tocsin received the event that made the transition.
    pub received_at: DateTime<Utc>,
    /// The timestamp the sending integration gave it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderTime {
    pub integration: IntegrationId,
    pub at: DateTime<Utc>,
}

impl TransitionClock {
    pub fn of(event: &Event) -> Self {
        TransitionClock {
            received_at: event.received_at,
            provider: provider_time(event),
        }
    }

    /// Whether `event` happened before this transition, by the clock both share.
    pub fn is_after(&self, event: &Event) -> bool {
        match (&self.provider, provider_time(event)) {
            (Some(ours), Some(theirs)) if ours.integration == theirs.integration => theirs.at < ours.at,
            _ => event.received_at < self.received_at,
        }
    }
}

fn provider_time(event: &Event) -> Option<ProviderTime> {
    let Origin::Integration { integration, .. } = &event.origin else {
        return None;
    };
    let at = event.alert.payload.as_ref()?.timestamp?;
    Some(ProviderTime {
        integration: integration.clone(),
        at,
    })
}

/// A change of status that people are told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransitionKind {
    Triggered,
    Acknowledged,
    Resolved,
    /// Still open when an escalation level's delay ran out: that level's
    /// recipients are notified (crate::escalation). Never made by an event.
    Escalated,
}

impl TransitionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Triggered => "triggered",
            TransitionKind::Acknowledged => "acknowledged",
            TransitionKind::Resolved => "resolved",
            TransitionKind::Escalated => "escalated",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "triggered" => Some(TransitionKind::Triggered),
            "acknowledged" => Some(TransitionKind::Acknowledged),
            "resolved" => Some(TransitionKind::Resolved),
            "escalated" => Some(TransitionKind::Escalated),
            _ => None,
        }
    }
}

impl fmt::Display for TransitionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A committed transition: what the dispatcher turns into notifications.
/// Its id is stable (incident id and version), so a transition read twice
/// yields the same notification jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub kind: TransitionKind,
    pub incident: Incident,
    pub event_id: EventId,
}

impl Transition {
    pub fn id(&self) -> String {
        format!("{}:{}", self.incident.id, self.incident.version)
    }
}

/// Why an event changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IgnoreReason {
    /// Acknowledge or resolve for a key with no incident.
    UnknownKey,
    /// Acknowledge or resolve for a key whose incident is resolved.
    AlreadyResolved,
    /// Acknowledge of an incident already acknowledged.
    AlreadyAcknowledged,
    /// Older than the incident's last transition.
    Stale,
    /// A trigger without a payload (only possible from a buggy producer).
    MissingPayload,
}

impl IgnoreReason {
    pub fn as_str(self) -> &'static str {
        match self {
            IgnoreReason::UnknownKey => "unknown_key",
            IgnoreReason::AlreadyResolved => "already_resolved",
            IgnoreReason::AlreadyAcknowledged => "already_acknowledged",
            IgnoreReason::Stale => "stale",
            IgnoreReason::MissingPayload => "missing_payload",
        }
    }
}

impl fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What applying one event to the latest incident of its key does.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A new incident: the key had none, or only a resolved one.
    Open { incident: Incident },
    /// A trigger merged into an open incident: counted, nobody notified.
    Repeat { incident: Incident },
    /// A transition of an existing incident.
    Transition { incident: Incident, kind: TransitionKind },
    Ignore {
        reason: IgnoreReason,
        incident: Option<IncidentId>,
    },
}

impl Decision {
    /// The incident as it must be stored, with the version it must replace
    /// (`None` when it is new).
    pub fn write(&self) -> Option<(&Incident, Option<u64>)> {
        match self {
            Decision::Open { incident } => Some((incident, None)),
            Decision::Repeat { incident } | Decision::Transition { incident, .. } => {
                Some((incident, Some(incident.version - 1)))
            }
            Decision::Ignore { .. } => None,
        }
    }

    /// The transition people are told about, if this decision makes one.
    pub fn transition(&self, event: &Event) -> Option<Transition> {
        match self {
            Decision::Open { incident } => Some(Transition {
                kind: TransitionKind::Triggered,
                incident: incident.clone(),
                event_id: event.id.clone(),
            }),
            Decision::Transition { incident, kind } => Some(Transition {
                kind: *kind,
                incident: incident.clone(),
                event_id: event.id.clone(),
            }),
            Decision::Repeat { .. } | Decision::Ignore { .. } => None,
        }
    }
}

/// Folds `event` into `latest`, the newest incident of the event's service and
/// dedup key (open or resolved), or `None` when the key has never been seen.
/// `now` is when the change is written (`updated_at`).
pub fn decide(latest: Option<&Incident>, event: &Event, now: DateTime<Utc>) -> Decision {
    let at = event.occurred_at();
    let ignore = |reason, incident: Option<&Incident>| Decision::Ignore {
        reason,
        incident: incident.map(|i| i.id.clone()),
    };

    match (event.action(), latest) {
        (Action::Trigger, None) => open(event, now),
        (Action::Trigger, Some(incident)) if incident.status.is_closed() => {
            if incident.transition_clock.is_after(event) {
                ignore(IgnoreReason::Stale, Some(incident))
            } else {
                open(event, now)
            }
        }
        (Action::Trigger, Some(incident)) => {
            let Some(payload) = event.alert.payload.as_ref() else {
                return ignore(IgnoreReason::MissingPayload, Some(incident));
            };
            let mut next = incident.clone();
            next.occurrences += 1;
            next.severity = next.severity.max(payload.severity);
            next.last_seen_at = next.last_seen_at.max(at);
            next.updated_at = now;
            next.version += 1;
            Decision::Repeat { incident: next }
        }
        (Action::Acknowledge | Action::Resolve, None) => ignore(IgnoreReason::UnknownKey, None),
        (Action::Acknowledge | Action::Resolve, Some(incident)) if incident.status.is_closed() => {
            ignore(IgnoreReason::AlreadyResolved, Some(incident))
        }
        (Action::Acknowledge | Action::Resolve, Some(incident)) if incident.transition_clock.is_after(event) => {
            ignore(IgnoreReason::Stale, Some(incident))
        }
        (Action::Acknowledge, Some(incident)) if incident.status == IncidentStatus::Acknowledged => {
            ignore(IgnoreReason::AlreadyAcknowledged, Some(incident))
        }
        (Action::Acknowledge, Some(incident)) => {
            let mut next = incident.clone();
            next.status = IncidentStatus::Acknowledged;
            next.acknowledged_at = Some(at);
            next.acknowledged_by = Some(actor_name(&event.origin));
            next.last_transition_at = at;
            next.transition_clock = TransitionClock::of(event);
            next.updated_at = now;
            next.version += 1;
            Decision::Transition {
                incident: next,
                kind: TransitionKind::Acknowledged,
            }
        }
        (Action::Resolve, Some(incident)) => {
            let mut next = incident.clone();
            next.status = IncidentStatus::Resolved;
            next.resolved_at = Some(at);
            next.resolved_by = Some(actor_name(&event.origin));
            next.last_transition_at = at;
            next.transition_clock = TransitionClock::of(event);
            next.updated_at = now;
            next.version += 1;
            Decision::Transition {
                incident: next,
                kind: TransitionKind::Resolved,
            }
        }
    }
}

fn open(event: &Event, now: DateTime<Utc>) -> Decision {
    let Some(payload) = event.alert.payload.as_ref() else {
        return Decision::Ignore {
            reason: IgnoreReason::MissingPayload,
            incident: None,
        };
    };
    let at = event.occurred_at();
    Decision::Open {
        incident: Incident {
            id: IncidentId::for_opening(&event.service, event.dedup_key(), &event.id),
            service: event.service.clone(),
            dedup_key: event.dedup_key().clone(),
            status: IncidentStatus::Open,
            severity: payload.severity,
            summary: payload.summary.clone(),
            source: payload.source.clone(),
            occurrences: 1,
            origin: event.origin.clone(),
            custom_details: payload.custom_details.clone(),
            links: event.alert.links.clone(),
            created_at: now,
            updated_at: now,
            last_seen_at: at,
            last_transition_at: at,
            transition_clock: TransitionClock::of(event),
            acknowledged_at: None,
            resolved_at: None,
            acknowledged_by: None,
            resolved_by: None,
            version: 1,
            store_notes: Default::default(),
        },
    }
}

/// Who made a transition, short enough for a message: the API actor as
/// recorded (`slack:@alice (U123)`, `link:oncall@example.com`,
/// `api-key:deploy-bot`), the monitoring tool (`prometheus`), or the
/// heartbeat (`heartbeat nightly-backup`).
pub fn actor_name(origin: &Origin) -> String {
    match origin {
        Origin::Api { actor } => actor.clone(),
        Origin::Integration { provider, .. } => provider.as_str().to_owned(),
        Origin::Heartbeat { heartbeat } => format!("heartbeat {heartbeat}"),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};

    use super::*;
    use crate::event::{Alert, Payload, Severity};
    use crate::providers::ProviderKind;
    use crate::slack::payload::SlackUser;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_718_000_000, 0).single().expect("a valid time") + Duration::seconds(secs)
    }

    fn prometheus() -> Origin {
        Origin::Integration {
            integration: IntegrationId::parse("alertmanager").expect("a valid id"),
            provider: ProviderKind::Prometheus,
        }
    }

    fn event(action: Action, origin: Origin, secs: i64) -> Event {
        Event {
            id: EventId::generate(),
            service: ServiceId::parse("checkout").expect("a valid service"),
            origin,
            received_at: at(secs),
            alert: Alert {
                event_action: action,
                dedup_key: DedupKey::parse("disk-full").expect("a valid key"),
                payload: (action == Action::Trigger).then(|| Payload {
                    summary: "Disk full".into(),
                    source: "db-1".into(),
                    severity: Severity::Critical,
                    timestamp: None,
                    component: None,
                    group: None,
                    class: None,
                    custom_details: None,
                }),
                links: Vec::new(),
                images: Vec::new(),
                client: None,
                client_url: None,
            },
        }
    }

    fn opened() -> Incident {
        match decide(None, &event(Action::Trigger, prometheus(), 0), at(0)) {
            Decision::Open { incident } => incident,
            other => panic!("expected an open, got {other:?}"),
        }
    }

    fn transitioned(decision: Decision) -> Incident {
        match decision {
            Decision::Transition { incident, .. } => incident,
            other => panic!("expected a transition, got {other:?}"),
        }
    }

    #[test]
    fn an_acknowledge_from_slack_records_the_slack_user() {
        let incident = opened();
        assert_eq!((&incident.acknowledged_by, &incident.resolved_by), (&None, &None));
        let user = SlackUser {
            id: "U024BE7LH".into(),
            name: "alice".into(),
        };
        let ack = crate::slack::responder_event(&incident, Action::Acknowledge, &user, at(60));
        let acknowledged = transitioned(decide(Some(&incident), &ack, at(60)));
        assert_eq!(
            acknowledged.acknowledged_by.as_deref(),
            Some("slack:@alice (U024BE7LH)")
        );
        assert_eq!(acknowledged.resolved_by, None);
    }

    #[test]
    fn a_resolve_from_an_integration_records_the_tool_and_keeps_who_acknowledged() {
        let incident = opened();
        let ack = event(
            Action::Acknowledge,
            Origin::Api {
                actor: "link:oncall@example.com".into(),
            },
            60,
        );
        let acknowledged = transitioned(decide(Some(&incident), &ack, at(60)));
        let resolve = event(Action::Resolve, prometheus(), 120);
        let resolved = transitioned(decide(Some(&acknowledged), &resolve, at(120)));
        assert_eq!(resolved.resolved_by.as_deref(), Some("prometheus"));
        assert_eq!(resolved.acknowledged_by.as_deref(), Some("link:oncall@example.com"));
    }

    #[test]
    fn a_heartbeat_is_named_as_such() {
        let heartbeat = Origin::Heartbeat {
            heartbeat: crate::event::HeartbeatId::parse("nightly-backup").expect("a heartbeat id"),
        };
        assert_eq!(actor_name(&heartbeat), "heartbeat nightly-backup");
    }

    #[test]
    fn an_incident_stored_before_the_actors_were_recorded_still_reads() {
        let mut stored = serde_json::to_value(opened()).expect("serializes");
        let object = stored.as_object_mut().expect("an object");
        assert!(!object.contains_key("acknowledged_by") && !object.contains_key("resolved_by"));
        object.insert("status".into(), "acknowledged".into());
        object.insert("acknowledged_at".into(), serde_json::json!(at(60)));
        let old: Incident = serde_json::from_value(stored).expect("an old incident parses");
        assert_eq!(old.status, IncidentStatus::Acknowledged);
        assert_eq!((old.acknowledged_by, old.resolved_by), (None, None));

        // A queued transition from before parses too, and new ones round-trip.
        let mut resolved = opened();
        resolved.resolved_by = Some("prometheus".into());
        let transition = Transition {
            kind: TransitionKind::Resolved,
            incident: resolved,
            event_id: EventId::generate(),
        };
        let json = serde_json::to_string(&transition).expect("serializes");
        assert!(json.contains(r#""resolved_by":"prometheus""#), "{json}");
        assert_eq!(serde_json::from_str::<Transition>(&json).expect("parses"), transition);
    }
}
