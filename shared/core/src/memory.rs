//! In-memory adapters of the ports: the reference the contract suite is
//! checked against, and the store of the core's own service tests. Not
//! durable; the local stack uses tocsin-local's store.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::event::{DedupKey, Event, EventId, IntegrationId, ServiceId};
use crate::incident::{Incident, IncidentId, Transition};
use crate::notify::NotificationJob;
use crate::ports::{
    BackendError, Commit, CommitOutcome, EventQueue, IgnoredEvent, IncidentFilter, IncidentStore, NotificationQueue,
    RateCounter,
};

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
        Ok(CommitOutcome::Written)
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
