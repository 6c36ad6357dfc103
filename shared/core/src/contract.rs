//! The contract every adapter of the ports must pass: tocsin-local's SQLite
//! store, tocsin-aws's DynamoDB and SQS adapters, and [`MemoryStore`], the
//! reference. Each check panics with what broke, like a test.
//!
//! Every case works on services of its own (a random suffix), so one backing
//! store, even a long-lived table, can run the suite again and again.
//!
//! [`MemoryStore`]: crate::memory::MemoryStore

use chrono::{DateTime, TimeDelta, TimeZone, Utc};

use crate::event::{Action, Alert, DedupKey, Event, EventId, Link, Origin, Payload, ServiceId, Severity};
use crate::incident::{decide, Decision, IgnoreReason, Incident, IncidentId, IncidentStatus, TransitionKind};
use crate::notify::{Channel, NotificationJob};
use crate::ports::{Commit, CommitOutcome, EventQueue, IgnoredEvent, IncidentFilter, IncidentStore, NotificationQueue};

/// Runs every incident store case.
pub async fn incident_store(store: &dyn IncidentStore) {
    latest_is_none_for_an_unknown_key(store).await;
    a_new_incident_reads_back_as_written(store).await;
    a_second_open_incident_on_one_key_conflicts(store).await;
    a_stale_expected_version_conflicts(store).await;
    an_event_is_applied_at_most_once(store).await;
    an_ignored_event_is_marked_applied(store).await;
    a_trigger_after_resolve_opens_a_new_incident(store).await;
    list_filters_by_status_and_service_newest_first(store).await;
}

pub async fn latest_is_none_for_an_unknown_key(store: &dyn IncidentStore) {
    let case = Case::new("unknown");
    assert_eq!(
        store.latest(&case.service, &key("never-seen")).await.expect("latest"),
        None
    );
    assert!(!store.is_applied(&EventId::generate()).await.expect("is_applied"));
}

pub async fn a_new_incident_reads_back_as_written(store: &dyn IncidentStore) {
    let case = Case::new("readback");
    let trigger = case.event("disk", Action::Trigger, 0);
    let (decision, outcome) = case.apply(store, &trigger, 0).await;
    assert_eq!(outcome, CommitOutcome::Written);
    let Decision::Open { incident } = decision else {
        panic!("a first trigger must open an incident, got {decision:?}");
    };
    let latest = store.latest(&case.service, &key("disk")).await.expect("latest");
    assert_eq!(
        latest.as_ref(),
        Some(&incident),
        "latest returns the incident exactly as written"
    );
    let got = store.get(&incident.id).await.expect("get");
    assert_eq!(
        got.as_ref(),
        Some(&incident),
        "get returns the incident exactly as written"
    );
    assert!(store.is_applied(&trigger.id).await.expect("is_applied"));
    // Another key of the same service is untouched.
    assert_eq!(store.latest(&case.service, &key("cpu")).await.expect("latest"), None);
}

pub async fn a_second_open_incident_on_one_key_conflicts(store: &dyn IncidentStore) {
    let case = Case::new("open-slot");
    let first = case.event("disk", Action::Trigger, 0);
    let (decision, outcome) = case.apply(store, &first, 0).await;
    assert_eq!(outcome, CommitOutcome::Written);
    let Decision::Open { incident: opened } = decision else {
        panic!("expected an open, got {decision:?}");
    };

    // A racer that read the key before the first commit also decides to open.
    let second = case.event("disk", Action::Trigger, 1);
    let racing = decide(None, &second, case.at(1));
    assert!(matches!(racing, Decision::Open { .. }));
    let outcome = store
        .commit(&commit_of(&racing, &second, case.at(1)))
        .await
        .expect("commit");
    assert_eq!(outcome, CommitOutcome::Conflict, "one open incident per key");
    assert!(
        !store.is_applied(&second.id).await.expect("is_applied"),
        "a conflicting commit writes nothing, not even the applied mark"
    );
    let latest = store.latest(&case.service, &key("disk")).await.expect("latest");
    assert_eq!(latest, Some(opened));
}

pub async fn a_stale_expected_version_conflicts(store: &dyn IncidentStore) {
    let case = Case::new("version");
    let trigger = case.event("disk", Action::Trigger, 0);
    let (decision, _) = case.apply(store, &trigger, 0).await;
    let Decision::Open { incident: v1 } = decision else {
        panic!("expected an open, got {decision:?}");
    };

    let ack = case.event("disk", Action::Acknowledge, 10);
    let (decision, outcome) = case.apply(store, &ack, 10).await;
    assert_eq!(outcome, CommitOutcome::Written);
    let Decision::Transition { incident: v2, .. } = decision else {
        panic!("expected an acknowledge, got {decision:?}");
    };
    assert_eq!(v2.version, 2);

    // A writer that still holds version 1 must not overwrite version 2.
    let resolve = case.event("disk", Action::Resolve, 20);
    let stale = decide(Some(&v1), &resolve, case.at(20));
    let commit = commit_of(&stale, &resolve, case.at(20));
    assert!(matches!(
        commit,
        Commit::Incident {
            expected_version: Some(1),
            ..
        }
    ));
    assert_eq!(store.commit(&commit).await.expect("commit"), CommitOutcome::Conflict);
    assert!(!store.is_applied(&resolve.id).await.expect("is_applied"));
    assert_eq!(store.get(&v1.id).await.expect("get"), Some(v2.clone()));

    // Re-read and retry, as the processor does: now it goes through.
    let (decision, outcome) = case.apply(store, &resolve, 20).await;
    assert_eq!(outcome, CommitOutcome::Written);
    let Decision::Transition { incident: v3, .. } = decision else {
        panic!("expected a resolve, got {decision:?}");
    };
    assert_eq!(v3.version, 3);
    assert_eq!(store.get(&v1.id).await.expect("get"), Some(v3));
}

pub async fn an_event_is_applied_at_most_once(store: &dyn IncidentStore) {
    let case = Case::new("once");
    let trigger = case.event("disk", Action::Trigger, 0);
    let latest = store.latest(&case.service, &key("disk")).await.expect("latest");
    let decision = decide(latest.as_ref(), &trigger, case.at(0));
    let commit = commit_of(&decision, &trigger, case.at(0));
    assert_eq!(store.commit(&commit).await.expect("commit"), CommitOutcome::Written);
    let written = store.latest(&case.service, &key("disk")).await.expect("latest");

    // The same commit again (a retry after a lost answer) …
    assert_eq!(
        store.commit(&commit).await.expect("commit"),
        CommitOutcome::AlreadyApplied
    );
    // … and the same event decided again on the new state (a redelivery).
    let again = decide(written.as_ref(), &trigger, case.at(1));
    assert!(matches!(again, Decision::Repeat { .. }));
    let commit = commit_of(&again, &trigger, case.at(1));
    assert_eq!(
        store.commit(&commit).await.expect("commit"),
        CommitOutcome::AlreadyApplied
    );

    let after = store.latest(&case.service, &key("disk")).await.expect("latest");
    assert_eq!(after, written, "an already applied event changes nothing");
    let incident = after.expect("the incident");
    assert_eq!((incident.occurrences, incident.version), (1, 1));
}

pub async fn an_ignored_event_is_marked_applied(store: &dyn IncidentStore) {
    let case = Case::new("ignored");
    let resolve = case.event("ghost", Action::Resolve, 0);
    let (decision, outcome) = case.apply(store, &resolve, 0).await;
    assert_eq!(
        decision,
        Decision::Ignore {
            reason: IgnoreReason::UnknownKey,
            incident: None
        }
    );
    assert_eq!(outcome, CommitOutcome::Written);
    assert!(store.is_applied(&resolve.id).await.expect("is_applied"));
    let commit = commit_of(&decision, &resolve, case.at(0));
    assert_eq!(
        store.commit(&commit).await.expect("commit"),
        CommitOutcome::AlreadyApplied
    );
    assert_eq!(store.latest(&case.service, &key("ghost")).await.expect("latest"), None);
}

pub async fn a_trigger_after_resolve_opens_a_new_incident(store: &dyn IncidentStore) {
    let case = Case::new("reopen");
    let (first, _) = case.apply(store, &case.event("disk", Action::Trigger, 0), 0).await;
    let Decision::Open { incident: first } = first else {
        panic!("expected an open, got {first:?}");
    };
    let (resolved, outcome) = case.apply(store, &case.event("disk", Action::Resolve, 10), 10).await;
    assert_eq!(outcome, CommitOutcome::Written);
    assert!(matches!(resolved, Decision::Transition { .. }));

    let (second, outcome) = case.apply(store, &case.event("disk", Action::Trigger, 20), 20).await;
    assert_eq!(outcome, CommitOutcome::Written, "a resolved incident frees its key");
    let Decision::Open { incident: second } = second else {
        panic!("a trigger after resolve must open a new incident, got {second:?}");
    };
    assert_ne!(second.id, first.id);
    let latest = store.latest(&case.service, &key("disk")).await.expect("latest");
    assert_eq!(latest, Some(second), "latest is the newest incident of the key");
    let old = store
        .get(&first.id)
        .await
        .expect("get")
        .expect("the first incident is kept");
    assert_eq!(old.status, IncidentStatus::Resolved);
}

pub async fn list_filters_by_status_and_service_newest_first(store: &dyn IncidentStore) {
    let case = Case::new("list");
    let other = Case::new("list-other");
    let mut opened = Vec::new();
    for (n, name) in ["k1", "k2", "k3"].into_iter().enumerate() {
        let second = n as i64 * 10;
        let (decision, _) = case
            .apply(store, &case.event(name, Action::Trigger, second), second)
            .await;
        let Decision::Open { incident } = decision else {
            panic!("expected an open, got {decision:?}");
        };
        opened.push(incident.id);
    }
    case.apply(store, &case.event("k2", Action::Resolve, 30), 30).await;
    other.apply(store, &other.event("k1", Action::Trigger, 40), 40).await;

    let ids = |incidents: Vec<Incident>| incidents.into_iter().map(|i| i.id).collect::<Vec<_>>();
    let of_service = |status, limit| IncidentFilter {
        status,
        service: Some(case.service.clone()),
        limit,
    };
    let all = ids(store.list(&of_service(None, None)).await.expect("list"));
    assert_eq!(
        all,
        [opened[2].clone(), opened[1].clone(), opened[0].clone()],
        "newest first, one service"
    );
    let resolved = ids(store
        .list(&of_service(Some(IncidentStatus::Resolved), None))
        .await
        .expect("list"));
    assert_eq!(resolved, [opened[1].clone()]);
    let open = ids(store
        .list(&of_service(Some(IncidentStatus::Open), None))
        .await
        .expect("list"));
    assert_eq!(open, [opened[2].clone(), opened[0].clone()]);
    let limited = ids(store.list(&of_service(None, Some(2))).await.expect("list"));
    assert_eq!(limited, [opened[2].clone(), opened[1].clone()]);

    // Without a service filter the store may hold anything; it is still
    // filtered and ordered.
    let everywhere = store
        .list(&IncidentFilter {
            status: Some(IncidentStatus::Open),
            service: None,
            limit: Some(1000),
        })
        .await
        .expect("list");
    assert!(everywhere.iter().all(|i| i.status == IncidentStatus::Open));
    assert!(
        everywhere.windows(2).all(|w| w[0].created_at >= w[1].created_at),
        "newest first"
    );
    assert!(everywhere.iter().any(|i| i.service == other.service));
}

/// An event queue only promises to take events (receiving is the adapter's
/// own API): all of a batch, an empty batch, and the same batch again.
pub async fn event_queue(queue: &dyn EventQueue) {
    let case = Case::new("queue");
    let events = [
        case.event("disk", Action::Trigger, 0),
        case.event("cpu", Action::Trigger, 1),
        case.event("disk", Action::Resolve, 2),
    ];
    queue.enqueue(&[]).await.expect("an empty batch is accepted");
    queue.enqueue(&events).await.expect("a batch is accepted");
    queue.enqueue(&events).await.expect("a redelivered batch is accepted");
}

/// A notification queue takes jobs, and the same jobs again.
pub async fn notification_queue(queue: &dyn NotificationQueue) {
    let case = Case::new("jobs");
    let trigger = case.event("disk", Action::Trigger, 0);
    let Decision::Open { incident } = decide(None, &trigger, case.at(0)) else {
        panic!("a first trigger must open an incident");
    };
    let jobs: Vec<NotificationJob> = [(Channel::Email, "oncall@example.com"), (Channel::Sms, "+15550100")]
        .into_iter()
        .map(|(channel, to)| NotificationJob {
            id: format!("{}:{}:{channel}:{to}", incident.id, incident.version),
            channel,
            to: to.to_owned(),
            transition: crate::incident::TransitionKind::Triggered,
            service_name: "Contract".to_owned(),
            incident: incident.clone(),
            planned_at: case.at(0),
        })
        .collect();
    queue.enqueue(&[]).await.expect("an empty batch is accepted");
    queue.enqueue(&jobs).await.expect("jobs are accepted");
    queue.enqueue(&jobs).await.expect("the same jobs are accepted again");
}

/// An event as a Prometheus integration sends it, for adapter tests: a
/// trigger carries a critical payload, acknowledge and resolve none.
pub fn sample_event(service: &str, dedup_key: &str, action: Action) -> Event {
    Event {
        id: EventId::generate(),
        service: ServiceId::parse(service).expect("a valid service id"),
        origin: Origin::Integration {
            integration: crate::event::IntegrationId::parse("checkout-prometheus").expect("a valid id"),
            provider: crate::providers::ProviderKind::Prometheus,
        },
        received_at: Utc::now(),
        alert: Alert {
            event_action: action,
            dedup_key: DedupKey::parse(dedup_key).expect("a valid dedup key"),
            payload: (action == Action::Trigger).then(|| Payload {
                summary: format!("{dedup_key} broke"),
                source: "host".into(),
                severity: crate::event::Severity::Critical,
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

/// A notification job for one triggered critical incident on `checkout`,
/// for adapter tests: the recipient is the sample one of its channel.
pub fn sample_job(channel: Channel, summary: &str) -> NotificationJob {
    let at = Utc.timestamp_opt(1_718_000_000, 0).single().expect("a valid time");
    let incident = Incident {
        id: IncidentId::parse("inc_3f9a1c07d2e84b6a90c1").expect("a valid id"),
        service: ServiceId::parse("checkout").expect("a valid service"),
        dedup_key: DedupKey::parse("disk-full").expect("a valid key"),
        status: IncidentStatus::Open,
        severity: Severity::Critical,
        summary: summary.to_owned(),
        source: "db-1".to_owned(),
        occurrences: 1,
        origin: Origin::Api {
            actor: "test".to_owned(),
        },
        custom_details: None,
        links: Vec::new(),
        created_at: at,
        updated_at: at,
        last_seen_at: at,
        last_transition_at: at,
        transition_clock: crate::incident::TransitionClock {
            received_at: at,
            provider: None,
        },
        acknowledged_at: None,
        resolved_at: None,
        version: 1,
    };
    let to = match channel {
        Channel::Email => "oncall@example.com",
        Channel::Sms => "+15555550123",
        Channel::Slack => "#checkout",
    };
    NotificationJob {
        id: format!("{}:1:{channel}:{to}", incident.id),
        channel,
        to: to.to_owned(),
        transition: TransitionKind::Triggered,
        service_name: "Checkout".to_owned(),
        incident,
        planned_at: at,
    }
}

/// One case's own service and clock.
struct Case {
    service: ServiceId,
    start: DateTime<Utc>,
}

impl Case {
    fn new(name: &str) -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let service = ServiceId::parse(&format!("contract-{name}-{}", &suffix[..12])).expect("a valid service id");
        // Whole microseconds: every store keeps at least that precision.
        let now = Utc::now();
        let start = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        Self { service, start }
    }

    fn at(&self, second: i64) -> DateTime<Utc> {
        self.start + TimeDelta::seconds(second)
    }

    fn event(&self, dedup_key: &str, action: Action, second: i64) -> Event {
        let at = self.at(second);
        Event {
            id: EventId::generate(),
            service: self.service.clone(),
            origin: Origin::Api {
                actor: "contract-suite".to_owned(),
            },
            received_at: at,
            alert: Alert {
                event_action: action,
                dedup_key: key(dedup_key),
                payload: (action == Action::Trigger).then(|| Payload {
                    summary: format!("{dedup_key} is failing"),
                    source: "contract-host".to_owned(),
                    severity: Severity::Error,
                    timestamp: Some(at),
                    component: Some("storage".to_owned()),
                    group: None,
                    class: None,
                    custom_details: Some(serde_json::json!({ "used_percent": 97, "mount": "/var", "ok": false })),
                }),
                links: vec![Link {
                    href: "https://example.com/runbook".to_owned(),
                    text: Some("Runbook".to_owned()),
                }],
                images: Vec::new(),
                client: None,
                client_url: None,
            },
        }
    }

    /// Reads the key, decides and commits, as the processor does (once,
    /// without retrying a conflict).
    async fn apply(&self, store: &dyn IncidentStore, event: &Event, now: i64) -> (Decision, CommitOutcome) {
        let latest = store.latest(&event.service, event.dedup_key()).await.expect("latest");
        let decision = decide(latest.as_ref(), event, self.at(now));
        let outcome = store
            .commit(&commit_of(&decision, event, self.at(now)))
            .await
            .expect("commit");
        (decision, outcome)
    }
}

fn key(value: &str) -> DedupKey {
    DedupKey::parse(value).expect("a valid dedup key")
}

fn commit_of(decision: &Decision, event: &Event, now: DateTime<Utc>) -> Commit {
    match (decision.write(), decision) {
        (Some((incident, expected_version)), _) => Commit::Incident {
            event_id: event.id.clone(),
            incident: incident.clone(),
            expected_version,
            transition: decision.transition(event),
        },
        (None, Decision::Ignore { reason, incident }) => Commit::Ignored(IgnoredEvent {
            event: event.clone(),
            reason: *reason,
            incident: incident.clone(),
            at: now,
        }),
        (None, other) => panic!("only an ignore writes no incident, got {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use crate::memory::MemoryStore;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
            .block_on(future)
    }

    #[test]
    fn the_memory_store_passes_the_contract() {
        let store = MemoryStore::new();
        block_on(async {
            super::incident_store(&store).await;
            super::event_queue(&store).await;
            super::notification_queue(&store).await;
        });
    }
}
