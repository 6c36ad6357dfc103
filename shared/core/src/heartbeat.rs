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
//! function on AWS). Its trigger event has an id derived from the beat it
//! found stale, and it is sent again on every check while the heartbeat stays
//! missed: a check that died between marking and enqueueing is repaired by
//! the next one, and the processor drops the copies as already applied.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
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
        let monitor = self.heartbeats.monitor(id).await?.ok_or(HeartbeatError::NotFound)?;
        if KeyHash::of(key) != monitor.heartbeat.key_hash {
            return Err(HeartbeatError::WrongKey);
        }
        // The resolve goes out before the beat is stored: if storing fails,
        // the sender retries and the resolve is sent again, which changes
        // nothing the second time; the other order could lose it.
        let recovered = if let Some(missed_since) = monitor.state.missed_since {
            let event = event(&monitor.heartbeat, Action::Resolve, "recovered", missed_since, now);
            self.queue.enqueue(&[event]).await?;
            tracing::info!("heartbeat recovered");
            true
        } else {
            false
        };
        self.heartbeats.beat(id, now).await?;
        Ok(BeatAccepted {
            heartbeat: id.clone(),
            next_beat_before: now + monitor.heartbeat.interval(),
            recovered,
        })
    }

    /// Opens an incident for every heartbeat overdue at `now`; returns how
    /// many are missed.
    #[tracing::instrument(skip_all)]
    pub async fn check(&self, now: DateTime<Utc>) -> Result<usize, BackendError> {
        let mut missed = 0;
        for monitor in self.heartbeats.monitors().await? {
            let Some(last_beat) = monitor.overdue_beat(now) else {
                continue;
            };
            if monitor.state.missed_since.is_none()
                && !self
                    .heartbeats
                    .mark_missed(&monitor.heartbeat.id, last_beat, now)
                    .await?
            {
                // A beat arrived since the read: not missed after all.
                continue;
            }
            let event = event(&monitor.heartbeat, Action::Trigger, "missed", last_beat, now);
            self.queue.enqueue(&[event]).await?;
            if monitor.state.missed_since.is_none() {
                tracing::warn!(heartbeat = %monitor.heartbeat.id, %last_beat, "heartbeat missed");
            }
            missed += 1;
        }
        Ok(missed)
    }
}

/// The event of a heartbeat's miss or recovery. Its id is derived from the
/// heartbeat, what happened and the beat (or miss) it is about, so sending it
/// again is a duplicate the processor drops.
fn event(heartbeat: &Heartbeat, action: Action, what: &str, about: DateTime<Utc>, now: DateTime<Utc>) -> Event {
    let mut hasher = Sha256::new();
    for part in [heartbeat.id.as_str(), what, &about.timestamp_micros().to_string()] {
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
            about.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
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
            "last_beat_at": about,
        })),
    });
    Event {
        id,
        service: heartbeat.service.clone(),
        origin: Origin::Heartbeat {
            heartbeat: heartbeat.id.clone(),
        },
        received_at: now,
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
    fn a_beat_between_the_read_and_the_mark_wins() {
        let (store, service) = setup();
        let id = watchdog().id;
        block_on(async {
            service.beat(&id, Some(KEY), at(0)).await.expect("beat");
            // The check read last_beat_at = 0; a beat lands before it marks.
            store.beat(&id, at(70)).await.expect("beat");
            assert!(!store.mark_missed(&id, at(0), at(71)).await.expect("mark"));
        });
        assert!(store.queued_events().is_empty());
    }
}
