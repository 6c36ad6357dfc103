//! Process: fold queued events into incidents, exactly once per event.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::event::{Action, Event, EventId, Origin};
use crate::incident::{decide, Decision, IgnoreReason, Incident, IncidentId, IncidentStatus, TransitionKind};
use crate::ports::{BackendError, Commit, CommitOutcome, IncidentStore};

/// What applying one event did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    Opened(Incident),
    Repeated(Incident),
    Transitioned(TransitionKind, Incident),
    Ignored {
        reason: IgnoreReason,
        incident: Option<IncidentId>,
    },
    /// Applied before (a redelivery): nothing written.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Other writers kept changing the incident; the event stays on the
    /// queue and is retried.
    #[error("incident {dedup_key} kept changing under {attempts} attempts")]
    Contention { dedup_key: String, attempts: u32 },
}

#[derive(Clone)]
pub struct ProcessService {
    incidents: Arc<dyn IncidentStore>,
}

impl ProcessService {
    /// Conflicts only happen when two writers race on one key (the FIFO queue
    /// makes that rare); a few re-reads settle it.
    const MAX_ATTEMPTS: u32 = 8;

    pub fn new(incidents: Arc<dyn IncidentStore>) -> Self {
        Self { incidents }
    }

    #[tracing::instrument(skip_all, fields(event = %event.id, service = %event.service, dedup_key = %event.dedup_key(), action = %event.action()))]
    pub async fn apply(&self, event: &Event, now: DateTime<Utc>) -> Result<Applied, ProcessError> {
        // No is_applied read first: the commit refuses an applied event
        // atomically, which keeps a processed event to one read and one write.
        for _ in 0..Self::MAX_ATTEMPTS {
            let latest = self.incidents.latest(&event.service, event.dedup_key()).await?;
            let decision = decide(latest.as_ref(), event, now);
            let commit = Commit::of(&decision, event, now);
            match self.incidents.commit(&commit).await? {
                CommitOutcome::Written => {
                    let applied = applied(decision);
                    tracing::info!(outcome = applied.outcome(), "event applied");
                    return Ok(applied);
                }
                CommitOutcome::AlreadyApplied => return Ok(Applied::Duplicate),
                CommitOutcome::Conflict => continue,
            }
        }
        Err(ProcessError::Contention {
            dedup_key: event.dedup_key().to_string(),
            attempts: Self::MAX_ATTEMPTS,
        })
    }
}

fn applied(decision: Decision) -> Applied {
    match decision {
        Decision::Open { incident } => Applied::Opened(incident),
        Decision::Repeat { incident } => Applied::Repeated(incident),
        Decision::Transition { incident, kind } => Applied::Transitioned(kind, incident),
        Decision::Ignore { reason, incident } => Applied::Ignored { reason, incident },
    }
}

impl Applied {
    /// What applying did, as logs and metrics name it.
    pub fn outcome(&self) -> &'static str {
        match self {
            Applied::Opened(_) => "opened",
            Applied::Repeated(_) => "repeated",
            Applied::Transitioned(TransitionKind::Acknowledged, _) => "acknowledged",
            Applied::Transitioned(TransitionKind::Resolved, _) => "resolved",
            Applied::Transitioned(TransitionKind::Triggered, _) => "triggered",
            Applied::Transitioned(TransitionKind::Escalated, _) => "escalated",
            Applied::Ignored { .. } => "ignored",
            Applied::Duplicate => "duplicate",
        }
    }
}

/// Why a person's acknowledge or resolve through the API was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("no incident has this id")]
    NotFound,
    #[error("the incident is already {0}")]
    AlreadyDone(IncidentStatus),
    #[error(transparent)]
    Process(#[from] ProcessError),
}

/// Acknowledges or resolves an incident on a person's behalf. Goes through
/// the same state machine as provider events, so both are ordered alike.
pub async fn act_on_incident(
    incidents: &dyn IncidentStore,
    process: &ProcessService,
    id: &IncidentId,
    action: Action,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Incident, ActionError> {
    let incident = incidents
        .get(id)
        .await
        .map_err(ProcessError::from)?
        .ok_or(ActionError::NotFound)?;
    // Only the open incident of a key is the target of a key-addressed event:
    // acting on an older, resolved one must not touch a newer incident.
    let done = match action {
        Action::Resolve => incident.status == IncidentStatus::Resolved,
        _ => incident.status != IncidentStatus::Open,
    };
    if done {
        return Err(ActionError::AlreadyDone(incident.status));
    }
    let event = Event {
        id: EventId::generate(),
        service: incident.service.clone(),
        origin: Origin::Api {
            actor: actor.to_owned(),
        },
        received_at: now,
        alert: crate::event::Alert {
            event_action: action,
            dedup_key: incident.dedup_key.clone(),
            payload: None,
            links: Vec::new(),
            images: Vec::new(),
            client: None,
            client_url: None,
        },
    };
    match process.apply(&event, now).await? {
        Applied::Transitioned(_, updated) => Ok(updated),
        // Someone else got there between our read and our write.
        _ => {
            let current = incidents
                .get(id)
                .await
                .map_err(ProcessError::from)?
                .ok_or(ActionError::NotFound)?;
            Err(ActionError::AlreadyDone(current.status))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;
    use crate::event::{Alert, DedupKey, IntegrationId, Payload, ServiceId, Severity};
    use crate::memory::MemoryStore;
    use crate::providers::ProviderKind;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
            .block_on(future)
    }

    fn at(second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + second, 0)
            .single()
            .expect("valid time")
    }

    fn event(n: usize, key: &str, action: Action, second: i64) -> Event {
        Event {
            id: EventId::new(format!("e{n}")),
            service: ServiceId::parse("checkout").unwrap(),
            origin: Origin::Integration {
                integration: IntegrationId::parse("am").unwrap(),
                provider: ProviderKind::Prometheus,
            },
            received_at: at(second),
            alert: Alert {
                event_action: action,
                dedup_key: DedupKey::parse(key).unwrap(),
                payload: (action == Action::Trigger).then(|| Payload {
                    summary: format!("{key} is down"),
                    source: "host-1".into(),
                    severity: Severity::Error,
                    timestamp: Some(at(second)),
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

    /// Applies events in order, each with `now` = its own time, so runs in
    /// different orders are comparable.
    fn run(events: &[Event]) -> (MemoryStore, Vec<Applied>) {
        let store = Arc::new(MemoryStore::new());
        let service = ProcessService::new(store.clone());
        let outcomes = block_on(async {
            let mut outcomes = Vec::new();
            for e in events {
                outcomes.push(service.apply(e, e.received_at).await.unwrap());
            }
            outcomes
        });
        drop(service);
        let store = Arc::try_unwrap(store).unwrap_or_else(|_| unreachable!("the service is dropped"));
        (store, outcomes)
    }

    #[test]
    fn a_trigger_opens_repeats_count_and_ack_then_resolve_close() {
        let (store, outcomes) = run(&[
            event(1, "disk", Action::Trigger, 0),
            event(2, "disk", Action::Trigger, 10),
            event(3, "disk", Action::Trigger, 20),
            event(4, "disk", Action::Acknowledge, 30),
            event(5, "disk", Action::Resolve, 40),
        ]);
        assert!(matches!(outcomes[0], Applied::Opened(_)));
        assert!(matches!(outcomes[1], Applied::Repeated(_)));
        assert!(matches!(
            outcomes[3],
            Applied::Transitioned(TransitionKind::Acknowledged, _)
        ));
        assert!(matches!(
            outcomes[4],
            Applied::Transitioned(TransitionKind::Resolved, _)
        ));
        let incidents = store.incidents();
        assert_eq!(incidents.len(), 1);
        let incident = &incidents[0];
        assert_eq!(incident.status, IncidentStatus::Resolved);
        assert_eq!(incident.occurrences, 3);
        assert_eq!(incident.last_seen_at, at(20));
        assert_eq!(incident.acknowledged_at, Some(at(30)));
        assert_eq!(incident.resolved_at, Some(at(40)));
        let kinds: Vec<_> = store.transitions().iter().map(|t| t.kind).collect();
        assert_eq!(
            kinds,
            [
                TransitionKind::Triggered,
                TransitionKind::Acknowledged,
                TransitionKind::Resolved
            ],
            "repeats notify no one"
        );
    }

    #[test]
    fn a_trigger_after_resolve_opens_a_new_incident() {
        let (store, _) = run(&[
            event(1, "disk", Action::Trigger, 0),
            event(2, "disk", Action::Resolve, 10),
            event(3, "disk", Action::Trigger, 20),
        ]);
        let incidents = store.incidents();
        assert_eq!(incidents.len(), 2);
        assert_eq!(incidents[0].status, IncidentStatus::Resolved);
        assert_eq!(incidents[1].status, IncidentStatus::Open);
        assert_ne!(incidents[0].id, incidents[1].id);
    }

    #[test]
    fn acknowledge_and_resolve_of_unknown_or_closed_keys_are_recorded_no_ops() {
        let (store, outcomes) = run(&[
            event(1, "ghost", Action::Resolve, 0),
            event(2, "ghost", Action::Acknowledge, 1),
            event(3, "disk", Action::Trigger, 2),
            event(4, "disk", Action::Resolve, 3),
            event(5, "disk", Action::Resolve, 4),
            event(6, "disk", Action::Acknowledge, 5),
        ]);
        assert_eq!(
            outcomes[0],
            Applied::Ignored {
                reason: IgnoreReason::UnknownKey,
                incident: None
            }
        );
        assert!(matches!(
            outcomes[4],
            Applied::Ignored {
                reason: IgnoreReason::AlreadyResolved,
                incident: Some(_)
            }
        ));
        let reasons: Vec<_> = store.ignored().iter().map(|i| i.reason).collect();
        assert_eq!(
            reasons,
            [
                IgnoreReason::UnknownKey,
                IgnoreReason::UnknownKey,
                IgnoreReason::AlreadyResolved,
                IgnoreReason::AlreadyResolved
            ]
        );
    }

    #[test]
    fn an_older_event_never_undoes_a_newer_transition() {
        // Resolved at 50; a trigger from 40 (a late retry) must not reopen,
        // and an acknowledge from before the incident opened changes nothing.
        let (store, outcomes) = run(&[
            event(1, "disk", Action::Trigger, 30),
            event(2, "disk", Action::Acknowledge, 20),
            event(3, "disk", Action::Resolve, 50),
            event(4, "disk", Action::Trigger, 40),
        ]);
        assert!(matches!(
            outcomes[1],
            Applied::Ignored {
                reason: IgnoreReason::Stale,
                ..
            }
        ));
        assert!(matches!(
            outcomes[3],
            Applied::Ignored {
                reason: IgnoreReason::Stale,
                ..
            }
        ));
        let incidents = store.incidents();
        assert_eq!(incidents.len(), 1);
        assert_eq!(incidents[0].status, IncidentStatus::Resolved);
    }

    fn from_integration(mut e: Event, integration: &str, provider_second: Option<i64>) -> Event {
        e.origin = Origin::Integration {
            integration: IntegrationId::parse(integration).unwrap(),
            provider: ProviderKind::Webhook,
        };
        match (&mut e.alert.payload, provider_second) {
            (Some(payload), time) => payload.timestamp = time.map(at),
            (None, Some(second)) => {
                e.alert.payload = event(0, "x", Action::Trigger, second).alert.payload;
            }
            (None, None) => {}
        }
        e
    }

    #[test]
    fn a_provider_clock_far_behind_still_resolves_what_a_person_acknowledged() {
        // The tool's clock says year-old times; the person acknowledges now.
        let trigger = from_integration(event(1, "disk", Action::Trigger, 100), "hook", Some(-10_000));
        let ack = event(2, "disk", Action::Acknowledge, 110);
        let ack = Event {
            origin: Origin::Api { actor: "ops".into() },
            ..ack
        };
        let resolve = from_integration(event(3, "disk", Action::Resolve, 120), "hook", Some(-9_000));
        let (store, outcomes) = run(&[trigger, ack, resolve]);
        assert!(
            matches!(outcomes[2], Applied::Transitioned(TransitionKind::Resolved, _)),
            "{outcomes:?}"
        );
        assert_eq!(store.incidents()[0].status, IncidentStatus::Resolved);
    }

    #[test]
    fn a_late_resend_is_judged_by_the_senders_own_clock() {
        // Alertmanager: fired at 30, resolved at 50 (its endsAt), then a
        // retried notification of the old firing (startsAt 30) arrives.
        let fired = from_integration(event(1, "disk", Action::Trigger, 31), "am", Some(30));
        let resolved = from_integration(event(2, "disk", Action::Resolve, 51), "am", Some(50));
        let resent = from_integration(event(3, "disk", Action::Trigger, 60), "am", Some(30));
        let refired = from_integration(event(4, "disk", Action::Trigger, 70), "am", Some(65));
        let (store, outcomes) = run(&[fired, resolved, resent, refired]);
        assert!(matches!(
            outcomes[2],
            Applied::Ignored {
                reason: IgnoreReason::Stale,
                ..
            }
        ));
        assert!(matches!(outcomes[3], Applied::Opened(_)));
        assert_eq!(store.incidents().len(), 2);
    }

    #[test]
    fn old_timestamps_do_not_stop_a_trigger_after_a_resolve_without_one() {
        // A sample payload with a 2015 timestamp, resolved with no payload,
        // then sent again: a new incident, as PagerDuty would open.
        let trigger = from_integration(event(1, "disk", Action::Trigger, 10), "pd", Some(-300_000_000));
        let resolve = from_integration(event(2, "disk", Action::Resolve, 20), "pd", None);
        let again = from_integration(event(3, "disk", Action::Trigger, 30), "pd", Some(-300_000_000));
        let (store, outcomes) = run(&[trigger, resolve, again]);
        assert!(matches!(outcomes[2], Applied::Opened(_)));
        assert_eq!(store.incidents().len(), 2);
    }

    #[test]
    fn a_redelivered_event_is_applied_once() {
        let first = event(1, "disk", Action::Trigger, 0);
        let (store, outcomes) = run(&[first.clone(), first]);
        assert_eq!(outcomes[1], Applied::Duplicate);
        assert_eq!(store.incidents()[0].occurrences, 1);
    }

    #[test]
    fn api_actions_go_through_the_state_machine() {
        let store = Arc::new(MemoryStore::new());
        let process = ProcessService::new(store.clone());
        block_on(async {
            let opened = match process
                .apply(&event(1, "disk", Action::Trigger, 0), at(0))
                .await
                .unwrap()
            {
                Applied::Opened(incident) => incident,
                other => panic!("expected an incident, got {other:?}"),
            };
            let acked = act_on_incident(store.as_ref(), &process, &opened.id, Action::Acknowledge, "ops", at(5))
                .await
                .unwrap();
            assert_eq!(acked.status, IncidentStatus::Acknowledged);
            let again = act_on_incident(store.as_ref(), &process, &opened.id, Action::Acknowledge, "ops", at(6)).await;
            assert!(matches!(
                again,
                Err(ActionError::AlreadyDone(IncidentStatus::Acknowledged))
            ));
            let resolved = act_on_incident(store.as_ref(), &process, &opened.id, Action::Resolve, "ops", at(7))
                .await
                .unwrap();
            assert_eq!(resolved.status, IncidentStatus::Resolved);
            let missing = IncidentId::parse("inc_00000000000000000000").unwrap();
            let gone = act_on_incident(store.as_ref(), &process, &missing, Action::Resolve, "ops", at(8)).await;
            assert!(matches!(gone, Err(ActionError::NotFound)));
        });
    }

    /// The incidents of a run, keyed by what identifies them across runs.
    fn summary(store: &MemoryStore) -> BTreeMap<(String, String), Incident> {
        store
            .incidents()
            .into_iter()
            .map(|i| ((i.dedup_key.to_string(), i.id.to_string()), i))
            .collect()
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            3 => Just(Action::Trigger),
            1 => Just(Action::Acknowledge),
            1 => Just(Action::Resolve),
        ]
    }

    /// Up to four keys, each with its own ordered stream of events at
    /// increasing times.
    fn streams() -> impl Strategy<Value = Vec<Vec<Event>>> {
        prop::collection::vec(prop::collection::vec(action(), 1..12), 1..5).prop_map(|keys| {
            let mut n = 0;
            keys.into_iter()
                .enumerate()
                .map(|(k, actions)| {
                    actions
                        .into_iter()
                        .enumerate()
                        .map(|(i, action)| {
                            n += 1;
                            event(n, &format!("key-{k}"), action, (i as i64) * 10 + k as i64)
                        })
                        .collect()
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn delivering_every_event_twice_changes_nothing(
            streams in streams(),
            // Where each duplicate lands: right after, or anywhere later.
            spread in prop::collection::vec(any::<prop::sample::Index>(), 64),
        ) {
            let once: Vec<Event> = streams.concat();
            let mut twice = once.clone();
            for (i, e) in once.iter().enumerate() {
                let position = twice.iter().position(|x| x.id == e.id).unwrap_or(0);
                let after = position + 1 + spread[i % spread.len()].index(twice.len() - position);
                twice.insert(after.min(twice.len()), e.clone());
            }
            let (a, _) = run(&once);
            let (b, _) = run(&twice);
            prop_assert_eq!(summary(&a), summary(&b));
            prop_assert_eq!(a.transitions(), b.transitions());
        }

        #[test]
        fn interleaving_keys_in_any_order_changes_nothing(
            streams in streams(),
            picks in prop::collection::vec(any::<prop::sample::Index>(), 0..64),
        ) {
            let in_order: Vec<Event> = streams.concat();
            // Merge the per-key streams in an arbitrary interleaving, keeping
            // each key's own order (as the FIFO queue does).
            let mut cursors = vec![0usize; streams.len()];
            let mut interleaved = Vec::with_capacity(in_order.len());
            let mut pick = picks.iter();
            while interleaved.len() < in_order.len() {
                let live: Vec<usize> = (0..streams.len()).filter(|&k| cursors[k] < streams[k].len()).collect();
                let k = match pick.next() {
                    Some(index) => live[index.index(live.len())],
                    None => live[0],
                };
                interleaved.push(streams[k][cursors[k]].clone());
                cursors[k] += 1;
            }
            let (a, _) = run(&in_order);
            let (b, _) = run(&interleaved);
            prop_assert_eq!(summary(&a), summary(&b));
        }
    }
}
