//! Heartbeats: a dead man's switch for monitoring systems.
//!
//! A monitoring system (Alertmanager's always-firing `Watchdog` alert, a cron
//! job, a batch pipeline) posts to `/heartbeat/{id}` at least once per
//! interval. When no beat arrives within the interval, an incident opens on
//! the heartbeat's service; the next beat resolves it. Both go through the
//! events queue and the processor like any alert, so they are deduplicated,
//! notified and recorded in the timeline the same way.
//!
//! A heartbeat that has never beaten is inactive, as in GoAlert: deploying a
//! config must not page anyone before the sender is even set up.
//!
//! The check runs periodically (a timer in the local stack, a scheduled
//! function on AWS). Beats and checks race, so each records its change only
//! if the state is still what it read (compare-and-set), and reacts when it
//! is not: a beat re-reads and resolves the miss a check recorded meanwhile;
//! a check whose miss a beat overtook resolves the trigger it already sent.
//! A resolve is always enqueued after the trigger it answers, in the same
//! FIFO group (service + dedup key), with a receive time no earlier than the
//! trigger's, so the processor applies it after the trigger and never finds
//! it stale. Events get ids derived from the beat they are about, so copies
//! are duplicates the processor drops.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::KeyHash;
use crate::event::{Action, Alert, DedupKey, Event, EventId, HeartbeatId, Origin, Payload, ServiceId, Severity};
use crate::ports::{BackendError, EventQueue, Heartbeats};

/// A heartbeat monitor, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub id: HeartbeatId,
    pub service: ServiceId,
    pub key_hash: KeyHash,
    pub interval_seconds: u32,
    /// The severity of the incident a missed heartbeat opens.
    pub severity: Severity,
}

impl Heartbeat {
    pub fn interval(&self) -> TimeDelta {
        TimeDelta::seconds(i64::from(self.interval_seconds))
    }

    /// Every event of this heartbeat shares one key: one incident at a time.
    pub fn dedup_key(&self) -> DedupKey {
        DedupKey::parse(&format!("heartbeat:{}", self.id)).unwrap_or_else(|_| DedupKey::digest_of(&[self.id.as_str()]))
    }
}

/// What is known of a heartbeat's beats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatState {
    /// The newest beat; none yet means inactive.
    pub last_beat_at: Option<DateTime<Utc>>,
    /// Set when a check found the heartbeat overdue; cleared by a beat.
    pub missed_since: Option<DateTime<Utc>>,
}

/// A heartbeat with its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatMonitor {
    #[serde(flatten)]
    pub heartbeat: Heartbeat,
    #[serde(flatten)]
    pub state: HeartbeatState,
}

impl HeartbeatMonitor {
    /// `inactive` (never beaten), `healthy`, or `missed`.
    pub fn status(&self) -> &'static str {
        match (&self.state.last_beat_at, &self.state.missed_since) {
            (None, _) => "inactive",
            (Some(_), None) => "healthy",
            (Some(_), Some(_)) => "missed",
        }
    }

    /// The beat this check finds overdue at `now`, if any.
    fn overdue_beat(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let last = self.state.last_beat_at?;
        (now - last > self.heartbeat.interval()).then_some(last)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    #[error("no heartbeat has this id")]
    NotFound,
    #[error("send the heartbeat's key as Authorization: Bearer KEY, X-Integration-Key: KEY or ?token=KEY")]
    MissingKey,
    #[error("the key is not this heartbeat's")]
    WrongKey,
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What a beat answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BeatAccepted {
    pub heartbeat: HeartbeatId,
    /// The next beat is due before this time.
    pub next_beat_before: DateTime<Utc>,
    /// Whether this beat resolves a missed heartbeat's incident.
    pub recovered: bool,
}

/// How many times a beat re-reads a heartbeat that keeps changing under it
/// (other beats, a check) before giving up with a retryable error.
pub const MAX_BEAT_ATTEMPTS: u32 = 8;

/// How long after a miss was recorded each check sends its trigger again
/// (the same event, so a copy of an applied one is dropped as a duplicate).
///
/// The first trigger is enqueued before the miss is recorded, so a check that
/// dies in between is repeated whole by the next one. The copies are for a
/// trigger the queue took that never took effect: dead-lettered after the
/// processor failed on it (a store outage). They stop because the processor
/// remembers applied events for 7 days only: a copy after that would open
/// again an incident someone resolved by hand while the sender stayed down.
pub const RESEND_MISSED_TRIGGER_FOR: TimeDelta = TimeDelta::hours(1);

/// A heartbeat kept changing under [`MAX_BEAT_ATTEMPTS`] attempts at a beat.
#[derive(Debug, thiserror::Error)]
#[error("the heartbeat kept changing under {attempts} attempts at a beat")]
pub struct BeatContention {
    pub attempts: u32,
}

#[derive(Clone)]
pub struct HeartbeatService {
    heartbeats: Arc<dyn Heartbeats>,
    queue: Arc<dyn EventQueue>,
}

impl HeartbeatService {
    pub fn new(heartbeats: Arc<dyn Heartbeats>, queue: Arc<dyn EventQueue>) -> Self {
        Self { heartbeats, queue }
    }

    /// A beat of heartbeat `id` with the key the request carried.
    #[tracing::instrument(skip_all, fields(heartbeat = %id))]
    pub async fn beat(
        &self,
        id: &HeartbeatId,
        key: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<BeatAccepted, HeartbeatError> {
        let key = key.filter(|k| !k.is_empty()).ok_or(HeartbeatError::MissingKey)?;
        let mut recovered = false;
        for _ in 0..MAX_BEAT_ATTEMPTS {
            let monitor = self.heartbeats.monitor(id).await?.ok_or(HeartbeatError::NotFound)?;
            if KeyHash::of(key) != monitor.heartbeat.key_hash {
                return Err(HeartbeatError::WrongKey);
            }
            // The resolve goes out before the beat is stored: if storing
            // fails, the sender retries and the resolve is sent again, which
            // changes nothing the second time; the other order could lose it.
            if let Some(missed_since) = monitor.state.missed_since {
                // While missed, the last beat is the one the miss is about.
                let missed_beat = monitor.state.last_beat_at.unwrap_or(missed_since);
                // Not older than the trigger (received at `missed_since`),
                // even from a server whose clock is behind the check's.
                let at = now.max(missed_since);
                let event = event(&monitor.heartbeat, Action::Resolve, missed_beat, at);
                self.queue.enqueue(&[event]).await?;
                recovered = true;
            }
            let last_beat = monitor.state.last_beat_at.map_or(now, |last| last.max(now));
            if self.heartbeats.record_beat(id, &monitor.state, last_beat).await? {
                if recovered {
                    tracing::info!("heartbeat recovered");
                }
                return Ok(BeatAccepted {
                    heartbeat: id.clone(),
                    next_beat_before: now + monitor.heartbeat.interval(),
                    recovered,
                });
            }
            // A check recorded a miss or another beat landed since the read.
        }
        Err(HeartbeatError::Backend(BackendError::new(
            "record a beat",
            BeatContention {
                attempts: MAX_BEAT_ATTEMPTS,
            },
        )))
    }

    /// Opens an incident for every heartbeat overdue at `now`; returns how
    /// many are missed.
    #[tracing::instrument(skip_all)]
    pub async fn check(&self, now: DateTime<Utc>) -> Result<usize, BackendError> {
        // In microseconds, as stores keep times: a trigger is received at
        // exactly the `missed_since` recorded with it, which a resolve's
        // receive time is then compared with.
        let now = now.trunc_subsecs(6);
        let mut missed = 0;
        for monitor in self.heartbeats.monitors().await? {
            let Some(last_beat) = monitor.overdue_beat(now) else {
                continue;
            };
            let heartbeat = &monitor.heartbeat;
            if let Some(missed_since) = monitor.state.missed_since {
                missed += 1;
                if now - missed_since <= RESEND_MISSED_TRIGGER_FOR {
                    // Exactly the first trigger, received when it was.
                    let event = event(heartbeat, Action::Trigger, last_beat, missed_since);
                    self.queue.enqueue(&[event]).await?;
                }
                continue;
            }
            self.queue
                .enqueue(&[event(heartbeat, Action::Trigger, last_beat, now)])
                .await?;
            if self.heartbeats.mark_missed(&heartbeat.id, last_beat, now).await? {
                tracing::warn!(heartbeat = %heartbeat.id, %last_beat, "heartbeat missed");
                missed += 1;
                continue;
            }
            // A beat arrived since the read, or another check recorded the
            // miss first. Only the beat needs an answer: it read no miss, so
            // it sent no resolve for the trigger that just went out.
            match self.heartbeats.monitor(&heartbeat.id).await? {
                Some(current) if current.state.missed_since.is_some() => missed += 1,
                // Beating again (or no longer configured): nothing is missed.
                _ => {
                    let event = event(heartbeat, Action::Resolve, last_beat, now);
                    self.queue.enqueue(&[event]).await?;
                    tracing::info!(heartbeat = %heartbeat.id, "a beat overtook the miss; resolved");
                }
            }
        }
        Ok(missed)
    }
}

/// The trigger or resolve of the miss of beat `missed_beat`, received at
/// `at`. Its id is derived from the heartbeat, the action and the missed
/// beat, so the check and a beat sending it both, or either sending it
/// again, make duplicates the processor drops.
fn event(heartbeat: &Heartbeat, action: Action, missed_beat: DateTime<Utc>, at: DateTime<Utc>) -> Event {
    let what = if action == Action::Resolve {
        "recovered"
    } else {
        "missed"
    };
    let mut hasher = Sha256::new();
    for part in [heartbeat.id.as_str(), what, &missed_beat.timestamp_micros().to_string()] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    let id = EventId::new(uuid::Builder::from_sha1_bytes(bytes).into_uuid().to_string());
    let payload = (action == Action::Trigger).then(|| Payload {
        summary: format!(
            "Heartbeat {} missed: no beat for more than {} s (last at {})",
            heartbeat.id,
            heartbeat.interval_seconds,
            missed_beat.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        source: "tocsin-heartbeat".to_owned(),
        severity: heartbeat.severity,
        timestamp: None,
        component: None,
        group: None,
        class: Some("heartbeat".to_owned()),
        custom_details: Some(serde_json::json!({
            "heartbeat": heartbeat.id,
            "interval_seconds": heartbeat.interval_seconds,
            "last_beat_at": missed_beat,
        })),
    });
    Event {
        id,
        service: heartbeat.service.clone(),
        origin: Origin::Heartbeat {
            heartbeat: heartbeat.id.clone(),
        },
        received_at: at,
        alert: Alert {
            event_action: action,
            dedup_key: heartbeat.dedup_key(),
            payload,
            links: Vec::new(),
            images: Vec::new(),
            client: Some("Tocsin heartbeats".to_owned()),
            client_url: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::incident::IncidentStatus;
    use crate::memory::MemoryStore;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
            .block_on(future)
    }

    fn at(second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + second, 0)
            .single()
            .expect("a valid time")
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn watchdog() -> Heartbeat {
        Heartbeat {
            id: HeartbeatId::parse("watchdog").expect("an id"),
            service: ServiceId::parse("monitoring").expect("a service"),
            key_hash: KeyHash::of(KEY),
            interval_seconds: 60,
            severity: Severity::Critical,
        }
    }

    fn setup() -> (Arc<MemoryStore>, HeartbeatService) {
        let store = Arc::new(MemoryStore::new());
        store.set_heartbeats(vec![watchdog()]);
        let service = HeartbeatService::new(store.clone(), store.clone());
        (store, service)
    }

    #[test]
    fn a_beat_needs_the_heartbeats_own_key() {
        let (store, service) = setup();
        block_on(async {
            let id = watchdog().id;
            assert!(matches!(
                service.beat(&id, None, at(0)).await,
                Err(HeartbeatError::MissingKey)
            ));
            assert!(matches!(
                service.beat(&id, Some("ffffffffffffffffffffffffffffffff"), at(0)).await,
                Err(HeartbeatError::WrongKey)
            ));
            let other = HeartbeatId::parse("other").expect("an id");
            assert!(matches!(
                service.beat(&other, Some(KEY), at(0)).await,
                Err(HeartbeatError::NotFound)
            ));
            assert!(matches!(
                service.beat(&other, None, at(0)).await,
                Err(HeartbeatError::MissingKey)
            ));
            let accepted = service.beat(&id, Some(KEY), at(0)).await.expect("accepted");
            assert_eq!(accepted.next_beat_before, at(60));
            assert!(!accepted.recovered);
        });
        assert!(store.queued_events().is_empty());
    }

    #[test]
    fn a_heartbeat_that_never_beat_is_inactive_and_never_missed() {
        let (store, service) = setup();
        block_on(async {
            assert_eq!(service.check(at(3600)).await.expect("check"), 0);
        });
        assert!(store.queued_events().is_empty());
    }

    #[test]
    fn missed_then_beat_triggers_once_per_miss_and_resolves() {
        let (store, service) = setup();
        let id = watchdog().id;
        block_on(async {
            service.beat(&id, Some(KEY), at(0)).await.expect("beat");
            assert_eq!(
                service.check(at(60)).await.expect("check"),
                0,
                "exactly the interval is in time"
            );
            assert_eq!(service.check(at(61)).await.expect("check"), 1);
            // Still missed on the next check: the same trigger again.
            assert_eq!(service.check(at(120)).await.expect("check"), 1);
            let recovered = service.beat(&id, Some(KEY), at(130)).await.expect("beat");
            assert!(recovered.recovered);
            assert_eq!(service.check(at(150)).await.expect("check"), 0);
        });
        let events = store.queued_events();
        let actions: Vec<Action> = events.iter().map(Event::action).collect();
        assert_eq!(actions, [Action::Trigger, Action::Trigger, Action::Resolve]);
        assert_eq!(events[0].id, events[1].id, "a repeated check sends the same event");
        assert!(events.iter().all(|e| e.dedup_key().as_str() == "heartbeat:watchdog"));
        let summary = &events[0]
            .alert
            .payload
            .as_ref()
            .expect("a trigger has a payload")
            .summary;
        assert!(summary.contains("watchdog") && summary.contains("60 s"), "{summary}");
        assert_eq!(events[0].service.as_str(), "monitoring");
    }

    #[test]
    fn a_missed_trigger_is_sent_again_only_for_an_hour() {
        let (store, service) = setup();
        let id = watchdog().id;
        let hour = RESEND_MISSED_TRIGGER_FOR.num_seconds();
        block_on(async {
            service.beat(&id, Some(KEY), at(0)).await.expect("beat");
            assert_eq!(service.check(at(61)).await.expect("check"), 1);
            assert_eq!(service.check(at(61 + hour)).await.expect("check"), 1);
            assert_eq!(store.queued_events().len(), 2, "sent again within the hour");
            assert_eq!(service.check(at(62 + hour)).await.expect("check"), 1, "still missed");
            assert_eq!(service.check(at(61 + 8 * 24 * 3600)).await.expect("check"), 1);
            assert_eq!(store.queued_events().len(), 2, "not sent again after the hour");
            assert!(
                service
                    .beat(&id, Some(KEY), at(70 + 8 * 24 * 3600))
                    .await
                    .expect("beat")
                    .recovered
            );
        });
        let events = store.queued_events();
        let actions: Vec<Action> = events.iter().map(Event::action).collect();
        assert_eq!(actions, [Action::Trigger, Action::Trigger, Action::Resolve]);
        assert_eq!(
            events[0], events[1],
            "the copy is the first trigger, received when it was"
        );
    }

    #[test]
    fn a_trigger_is_received_at_the_miss_it_records_as_stores_keep_it() {
        let (store, service) = setup();
        block_on(async {
            service.beat(&watchdog().id, Some(KEY), at(0)).await.expect("beat");
            let now = at(61) + TimeDelta::nanoseconds(123_456_789);
            service.check(now).await.expect("check");
        });
        let trigger = &store.queued_events()[0];
        assert_eq!(Some(trigger.received_at), status(&store).missed_since);
        assert_eq!(trigger.received_at, at(61) + TimeDelta::microseconds(123_456));
    }

    /// What another request does between the service's read and its write.
    #[derive(Clone, Copy)]
    enum Meanwhile {
        Beat(DateTime<Utc>),
        Check(DateTime<Utc>),
    }

    /// The heartbeats of `inner`, where `meanwhile` runs against `inner`
    /// (beats with the right key) right after the first read returns.
    struct Interleaved {
        inner: Arc<MemoryStore>,
        meanwhile: std::sync::Mutex<Option<Meanwhile>>,
    }

    impl Interleaved {
        async fn after_read(&self) {
            let meanwhile = self.meanwhile.lock().unwrap_or_else(|e| e.into_inner()).take();
            let other = HeartbeatService::new(self.inner.clone(), self.inner.clone());
            match meanwhile {
                Some(Meanwhile::Beat(now)) => {
                    other
                        .beat(&watchdog().id, Some(KEY), now)
                        .await
                        .expect("the other beat");
                }
                Some(Meanwhile::Check(now)) => {
                    other.check(now).await.expect("the other check");
                }
                None => {}
            }
        }
    }

    #[async_trait::async_trait]
    impl Heartbeats for Interleaved {
        async fn monitors(&self) -> Result<Vec<HeartbeatMonitor>, BackendError> {
            let read = self.inner.monitors().await;
            self.after_read().await;
            read
        }

        async fn monitor(&self, id: &HeartbeatId) -> Result<Option<HeartbeatMonitor>, BackendError> {
            let read = self.inner.monitor(id).await;
            self.after_read().await;
            read
        }

        async fn record_beat(
            &self,
            id: &HeartbeatId,
            seen: &HeartbeatState,
            last_beat_at: DateTime<Utc>,
        ) -> Result<bool, BackendError> {
            self.inner.record_beat(id, seen, last_beat_at).await
        }

        async fn mark_missed(
            &self,
            id: &HeartbeatId,
            last_beat_at: DateTime<Utc>,
            at: DateTime<Utc>,
        ) -> Result<bool, BackendError> {
            self.inner.mark_missed(id, last_beat_at, at).await
        }
    }

    /// A store whose heartbeat `watchdog` beat at 0, and a service over it
    /// where `meanwhile` lands between the first read and the write.
    fn interleaved(meanwhile: Meanwhile) -> (Arc<MemoryStore>, HeartbeatService) {
        let (store, service) = setup();
        block_on(service.beat(&watchdog().id, Some(KEY), at(0))).expect("the first beat");
        let heartbeats = Arc::new(Interleaved {
            inner: store.clone(),
            meanwhile: std::sync::Mutex::new(Some(meanwhile)),
        });
        (store.clone(), HeartbeatService::new(heartbeats, store))
    }

    /// The incidents the processor makes of `events`, applied in order.
    fn processed(events: &[Event]) -> Vec<crate::incident::Incident> {
        let incidents = Arc::new(MemoryStore::new());
        let process = crate::process::ProcessService::new(incidents.clone());
        block_on(async {
            for e in events {
                process.apply(e, e.received_at).await.expect("applied");
            }
        });
        incidents.incidents()
    }

    fn status(store: &MemoryStore) -> HeartbeatState {
        block_on(store.monitor(&watchdog().id))
            .expect("monitor")
            .expect("configured")
            .state
    }

    #[test]
    fn a_check_overtaken_by_a_beat_resolves_the_trigger_it_sent() {
        let (store, service) = interleaved(Meanwhile::Beat(at(90)));
        assert_eq!(block_on(service.check(at(100))).expect("check"), 0);
        let events = store.queued_events();
        let actions: Vec<Action> = events.iter().map(Event::action).collect();
        assert_eq!(actions, [Action::Trigger, Action::Resolve]);
        let incidents = processed(&events);
        assert_eq!(incidents.len(), 1);
        assert_eq!(incidents[0].status, IncidentStatus::Resolved);
        assert_eq!(
            status(&store),
            HeartbeatState {
                last_beat_at: Some(at(90)),
                missed_since: None
            }
        );
    }

    #[test]
    fn a_beat_overtaken_by_a_check_resolves_the_miss_it_recorded() {
        // The beat's server clock (100) is behind the check's (101).
        let (store, service) = interleaved(Meanwhile::Check(at(101)));
        let accepted = block_on(service.beat(&watchdog().id, Some(KEY), at(100))).expect("beat");
        assert!(accepted.recovered);
        let events = store.queued_events();
        let actions: Vec<Action> = events.iter().map(Event::action).collect();
        assert_eq!(actions, [Action::Trigger, Action::Resolve]);
        let incidents = processed(&events);
        assert_eq!(incidents.len(), 1);
        assert_eq!(
            incidents[0].status,
            IncidentStatus::Resolved,
            "the resolve is not older than the trigger"
        );
        assert_eq!(
            status(&store),
            HeartbeatState {
                last_beat_at: Some(at(100)),
                missed_since: None
            }
        );
    }

    #[test]
    fn two_racing_checks_send_one_trigger_and_no_resolve() {
        let (store, service) = interleaved(Meanwhile::Check(at(100)));
        assert_eq!(block_on(service.check(at(101))).expect("check"), 1);
        let events = store.queued_events();
        let actions: Vec<Action> = events.iter().map(Event::action).collect();
        assert_eq!(actions, [Action::Trigger, Action::Trigger]);
        assert_eq!(events[0].id, events[1].id);
        let incidents = processed(&events);
        assert_eq!(incidents.len(), 1);
        assert_eq!(incidents[0].status, IncidentStatus::Open);
        assert_eq!(status(&store).missed_since, Some(at(100)));
    }

    #[test]
    fn a_trigger_sent_again_after_the_beat_that_resolved_it_changes_nothing() {
        let (store, service) = interleaved(Meanwhile::Beat(at(70)));
        block_on(HeartbeatService::new(store.clone(), store.clone()).check(at(61))).expect("check");
        // This check read the miss; the beat at 70 resolves it before the copy.
        assert_eq!(block_on(service.check(at(120))).expect("check"), 1);
        let events = store.queued_events();
        let actions: Vec<Action> = events.iter().map(Event::action).collect();
        assert_eq!(actions, [Action::Trigger, Action::Resolve, Action::Trigger]);
        assert_eq!(events[0], events[2]);
        let incidents = processed(&events);
        assert_eq!(incidents.len(), 1);
        assert_eq!(incidents[0].status, IncidentStatus::Resolved);
        assert_eq!(status(&store).missed_since, None);
    }
}
