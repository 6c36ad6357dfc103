//! In-memory adapters of the ports: the reference the contract suite is
//! checked against, and the store of the core's own service tests. Not
//! durable; the local stack uses tocsin-local's store.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::event::{DedupKey, Event, EventId, HeartbeatId, IntegrationId, ServiceId};
use crate::heartbeat::{Heartbeat, HeartbeatMonitor, HeartbeatState};
use crate::incident::{Incident, IncidentId, Transition};
use crate::notify::NotificationJob;
use crate::ports::{
    BackendError, Commit, CommitOutcome, EventQueue, Heartbeats, IgnoredEvent, IncidentFilter, IncidentStore,
    NotificationQueue, RateCounter, Timeline,
};
use crate::timeline::TimelineEntry;

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    incidents: HashMap<IncidentId, Incident>,
    /// Incident ids of each key, oldest first.
    by_key: HashMap<(ServiceId, DedupKey), Vec<IncidentId>>,
    applied: HashSet<EventId>,
    ignored: Vec<IgnoredEvent>,
    transitions: Vec<Transition>,
    events: Vec<Event>,
    jobs: Vec<NotificationJob>,
    /// Requests per (integration, minute window).
    rates: HashMap<(IntegrationId, i64), u64>,
    /// Ingest counters per integration (crate::health).
    stats: HashMap<IntegrationId, crate::health::IntegrationStats>,
    timelines: HashMap<IncidentId, Vec<TimelineEntry>>,
    maintenance: HashMap<crate::maintenance::WindowId, crate::maintenance::MaintenanceWindow>,
    heartbeats: Vec<HeartbeatMonitor>,
    /// Pending escalations by sort key (crate::escalation).
    escalations: std::collections::BTreeMap<String, crate::escalation::PendingEscalation>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>, BackendError> {
        self.state
            .lock()
            .map_err(|_| BackendError::new("memory store lock", "a writer panicked"))
    }

    /// Every incident, oldest first.
    pub fn incidents(&self) -> Vec<Incident> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<Incident> = state.incidents.values().cloned().collect();
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        all
    }

    pub fn transitions(&self) -> Vec<Transition> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).transitions.clone()
    }

    pub fn ignored(&self) -> Vec<IgnoredEvent> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).ignored.clone()
    }

    pub fn queued_events(&self) -> Vec<Event> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).events.clone()
    }

    pub fn queued_jobs(&self) -> Vec<NotificationJob> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).jobs.clone()
    }
}

#[async_trait]
impl IncidentStore for MemoryStore {
    async fn latest(&self, service: &ServiceId, dedup_key: &DedupKey) -> Result<Option<Incident>, BackendError> {
        let state = self.state()?;
        Ok(state
            .by_key
            .get(&(service.clone(), dedup_key.clone()))
            .and_then(|ids| ids.last())
            .and_then(|id| state.incidents.get(id))
            .cloned())
    }

    async fn get(&self, id: &IncidentId) -> Result<Option<Incident>, BackendError> {
        Ok(self.state()?.incidents.get(id).cloned())
    }

    async fn list(&self, filter: &IncidentFilter) -> Result<Vec<Incident>, BackendError> {
        let state = self.state()?;
        let mut found: Vec<Incident> = state
            .incidents
            .values()
            .filter(|i| filter.status.is_none_or(|s| i.status == s))
            .filter(|i| filter.service.as_ref().is_none_or(|s| &i.service == s))
            .cloned()
            .collect();
        found.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        found.truncate(filter.limit.unwrap_or(100));
        Ok(found)
    }

    async fn is_applied(&self, event: &EventId) -> Result<bool, BackendError> {
        Ok(self.state()?.applied.contains(event))
    }

    async fn commit(&self, commit: &Commit) -> Result<CommitOutcome, BackendError> {
        let mut state = self.state()?;
        match commit {
            Commit::Ignored(ignored) => {
                if !state.applied.insert(ignored.event.id.clone()) {
                    return Ok(CommitOutcome::AlreadyApplied);
                }
                state.ignored.push(ignored.clone());
            }
            Commit::Incident {
                event_id,
                incident,
                expected_version,
                transition,
                ..
            } => {
                if state.applied.contains(event_id) {
                    return Ok(CommitOutcome::AlreadyApplied);
                }
                let key = (incident.service.clone(), incident.dedup_key.clone());
                match expected_version {
                    None => {
                        let open_exists = state
                            .by_key
                            .get(&key)
                            .into_iter()
                            .flatten()
                            .filter_map(|id| state.incidents.get(id))
                            .any(|i| !i.status.is_closed());
                        if open_exists || state.incidents.contains_key(&incident.id) {
                            return Ok(CommitOutcome::Conflict);
                        }
                        state.by_key.entry(key).or_default().push(incident.id.clone());
                    }
                    Some(version) => match state.incidents.get(&incident.id) {
                        Some(current) if current.version == *version => {}
                        _ => return Ok(CommitOutcome::Conflict),
                    },
                }
                state.incidents.insert(incident.id.clone(), incident.clone());
                state.applied.insert(event_id.clone());
                if let Some(transition) = transition {
                    state.transitions.push(transition.clone());
                }
            }
        }
        if let Some(entry) = commit.timeline_entry() {
            state.add_to_timeline(&entry);
        }
        Ok(CommitOutcome::Written)
    }
}

impl State {
    fn add_to_timeline(&mut self, entry: &TimelineEntry) {
        let entries = self.timelines.entry(entry.incident.clone()).or_default();
        if !entries.iter().any(|e| e.id == entry.id) {
            entries.push(entry.clone());
        }
    }
}

impl MemoryStore {
    /// Replaces the heartbeat config, keeping the state of those that stay.
    pub fn set_heartbeats(&self, heartbeats: Vec<Heartbeat>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let previous = std::mem::take(&mut state.heartbeats);
        state.heartbeats = heartbeats
            .into_iter()
            .map(|heartbeat| {
                let kept = previous.iter().find(|m| m.heartbeat.id == heartbeat.id);
                HeartbeatMonitor {
                    state: kept.map(|m| m.state.clone()).unwrap_or_default(),
                    heartbeat,
                }
            })
            .collect();
    }
}

#[async_trait]
impl Heartbeats for MemoryStore {
    async fn monitors(&self) -> Result<Vec<HeartbeatMonitor>, BackendError> {
        Ok(self.state()?.heartbeats.clone())
    }

    async fn monitor(&self, id: &HeartbeatId) -> Result<Option<HeartbeatMonitor>, BackendError> {
        Ok(self.state()?.heartbeats.iter().find(|m| &m.heartbeat.id == id).cloned())
    }

    async fn record_beat(
        &self,
        id: &HeartbeatId,
        seen: &HeartbeatState,
        last_beat_at: DateTime<Utc>,
    ) -> Result<bool, BackendError> {
        let mut state = self.state()?;
        let Some(monitor) = state.heartbeats.iter_mut().find(|m| &m.heartbeat.id == id) else {
            return Ok(false);
        };
        if &monitor.state != seen {
            return Ok(false);
        }
        monitor.state = HeartbeatState {
            last_beat_at: Some(last_beat_at),
            missed_since: None,
        };
        Ok(true)
    }

    async fn mark_missed(
        &self,
        id: &HeartbeatId,
        last_beat_at: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool, BackendError> {
        let mut state = self.state()?;
        let Some(monitor) = state.heartbeats.iter_mut().find(|m| &m.heartbeat.id == id) else {
            return Ok(false);
        };
        if monitor.state.missed_since.is_some() || monitor.state.last_beat_at != Some(last_beat_at) {
            return Ok(false);
        }
        monitor.state.missed_since = Some(at);
        Ok(true)
    }
}

#[async_trait]
impl Timeline for MemoryStore {
    async fn record(&self, entry: &TimelineEntry) -> Result<(), BackendError> {
        self.state()?.add_to_timeline(entry);
        Ok(())
    }

    async fn timeline(&self, incident: &IncidentId) -> Result<Vec<TimelineEntry>, BackendError> {
        let mut entries = self.state()?.timelines.get(incident).cloned().unwrap_or_default();
        entries.sort_by_key(TimelineEntry::sort_key);
        Ok(entries)
    }
}

#[async_trait]
impl RateCounter for MemoryStore {
    async fn hit(&self, integration: &IntegrationId, window: i64) -> Result<u64, BackendError> {
        let mut state = self.state()?;
        // Only the current window matters: older ones are dropped as it moves.
        state.rates.retain(|(_, w), _| *w >= window);
        let count = state.rates.entry((integration.clone(), window)).or_insert(0);
        *count += 1;
        Ok(*count)
    }
}

#[async_trait]
impl EventQueue for MemoryStore {
    async fn enqueue(&self, events: &[Event]) -> Result<(), BackendError> {
        self.state()?.events.extend_from_slice(events);
        Ok(())
    }
}

#[async_trait]
impl NotificationQueue for MemoryStore {
    async fn enqueue(&self, jobs: &[NotificationJob]) -> Result<(), BackendError> {
        let mut state = self.state()?;
        for job in jobs {
            if !state.jobs.iter().any(|j| j.id == job.id) {
                state.jobs.push(job.clone());
            }
        }
        Ok(())
    }
}

#[async_trait]
impl crate::ports::IngestStats for MemoryStore {
    async fn record(
        &self,
        integration: &IntegrationId,
        service: &ServiceId,
        provider: crate::providers::ProviderKind,
        outcome: &crate::health::IngestOutcome,
    ) -> Result<(), BackendError> {
        let mut state = self.state()?;
        let stats = state
            .stats
            .entry(integration.clone())
            .or_insert_with(|| crate::health::IntegrationStats::new(integration.clone(), service.clone(), provider));
        // The latest request names the service and provider, as in the stores' upserts.
        stats.service = service.clone();
        stats.provider = provider;
        stats.apply(outcome);
        Ok(())
    }

    async fn snapshot(&self) -> Result<Vec<crate::health::IntegrationStats>, BackendError> {
        Ok(self.state()?.stats.values().cloned().collect())
    }
}

#[async_trait]
impl crate::escalation::Escalations for MemoryStore {
    async fn schedule(&self, pending: &crate::escalation::PendingEscalation) -> Result<(), BackendError> {
        self.state()?.escalations.insert(pending.sort_key(), pending.clone());
        Ok(())
    }

    async fn due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<crate::escalation::PendingEscalation>, BackendError> {
        let bound = crate::escalation::PendingEscalation::due_bound(now);
        Ok(self
            .state()?
            .escalations
            .range(..=bound)
            .take(limit)
            .map(|(_, p)| p.clone())
            .collect())
    }

    async fn remove(&self, pending: &crate::escalation::PendingEscalation) -> Result<(), BackendError> {
        self.state()?.escalations.remove(&pending.sort_key());
        Ok(())
    }
}

#[async_trait]
impl crate::ports::MaintenanceStore for MemoryStore {
    async fn put_window(&self, window: &crate::maintenance::MaintenanceWindow) -> Result<(), BackendError> {
        let mut state = self.state()?;
        let released_at = state.maintenance.get(&window.id).and_then(|w| w.released_at);
        let mut window = window.clone();
        window.released_at = released_at;
        state.maintenance.insert(window.id.clone(), window);
        Ok(())
    }

    async fn delete_window(&self, id: &crate::maintenance::WindowId) -> Result<bool, BackendError> {
        Ok(self.state()?.maintenance.remove(id).is_some())
    }

    async fn windows(
        &self,
        service: Option<&ServiceId>,
    ) -> Result<Vec<crate::maintenance::MaintenanceWindow>, BackendError> {
        let mut windows: Vec<_> = self
            .state()?
            .maintenance
            .values()
            .filter(|w| service.is_none_or(|s| &w.service == s))
            .cloned()
            .collect();
        windows.sort_by(|a, b| (&a.service, a.start, &a.id).cmp(&(&b.service, b.start, &b.id)));
        Ok(windows)
    }

    async fn mark_released(
        &self,
        id: &crate::maintenance::WindowId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), BackendError> {
        if let Some(window) = self.state()?.maintenance.get_mut(id) {
            window.released_at.get_or_insert(at);
        }
        Ok(())
    }

    async fn end_window(
        &self,
        id: &crate::maintenance::WindowId,
        end: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, BackendError> {
        let mut state = self.state()?;
        let Some(window) = state.maintenance.get_mut(id) else {
            return Ok(false);
        };
        match window.ended_at(end) {
            Some(ended) => {
                *window = ended;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
