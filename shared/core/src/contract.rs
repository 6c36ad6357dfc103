//! The contract every adapter of the ports must pass: tocsin-local's SQLite
//! store, tocsin-aws's DynamoDB and SQS adapters, and [`MemoryStore`], the
//! reference. Each check panics with what broke, like a test.
//!
//! Every case works on services of its own (a random suffix), so one backing
//! store, even a long-lived table, can run the suite again and again.
//!
//! [`MemoryStore`]: crate::memory::MemoryStore

use chrono::{DateTime, TimeDelta, TimeZone, Utc};

use crate::event::{Action, Alert, DedupKey, Event, EventId, HeartbeatId, Link, Origin, Payload, ServiceId, Severity};
use crate::heartbeat::HeartbeatState;
use crate::incident::{decide, Decision, IgnoreReason, Incident, IncidentId, IncidentStatus, TransitionKind};
use crate::notify::{Channel, NotificationJob};
use crate::ports::{
    Commit, CommitOutcome, EventQueue, Heartbeats, IncidentFilter, IncidentStore, NotificationQueue, Timeline,
};
use crate::timeline::{DeliveryResult, EventOutcome, Happened, TimelineEntry};

/// Runs every timeline case: `store` and `timeline` are the same adapter
/// seen through its two ports.
pub async fn timeline(store: &dyn IncidentStore, timeline: &dyn Timeline) {
    the_timeline_explains_every_event_of_an_incident(store, timeline).await;
    a_delivery_attempt_is_recorded_once(store, timeline).await;
}

/// Trigger, repeat, acknowledge, a second acknowledge (ignored), resolve,
/// and a redelivered trigger (a duplicate, which leaves no entry).
pub async fn the_timeline_explains_every_event_of_an_incident(store: &dyn IncidentStore, timeline: &dyn Timeline) {
    let case = Case::new("timeline");
    let trigger = case.event("disk", Action::Trigger, 0);
    let (opened, _) = case.apply(store, &trigger, 0).await;
    let Decision::Open { incident } = opened else {
        panic!("expected an open, got {opened:?}");
    };
    case.apply(store, &case.event("disk", Action::Trigger, 5), 5).await;
    case.apply(store, &case.event("disk", Action::Acknowledge, 10), 10)
        .await;
    case.apply(store, &case.event("disk", Action::Acknowledge, 15), 15)
        .await;
    case.apply(store, &case.event("disk", Action::Resolve, 20), 20).await;
    let (_, again) = case.apply(store, &trigger, 25).await;
    assert_eq!(
        again,
        CommitOutcome::AlreadyApplied,
        "a redelivered trigger is a duplicate"
    );

    let entries = timeline.timeline(&incident.id).await.expect("timeline");
    let described: Vec<String> = entries.iter().map(TimelineEntry::describe).collect();
    assert_eq!(
        described,
        [
            "opened: trigger from contract-suite (api) (1 occurrence)",
            "repeated: trigger from contract-suite (api) (2 occurrences)",
            "acknowledged: acknowledge from contract-suite (api) (2 occurrences)",
            "ignored: acknowledge from contract-suite (api) (already_acknowledged)",
            "resolved: resolve from contract-suite (api) (2 occurrences)",
        ],
        "{entries:#?}"
    );
    assert_eq!(
        entries[0],
        TimelineEntry::of_event(&trigger, &incident, EventOutcome::Opened, case.at(0))
    );
    assert!(entries.iter().all(|e| e.incident == incident.id));
    let Happened::Event { summary, severity, .. } = &entries[0].what else {
        panic!("the first entry is the opening event: {:?}", entries[0]);
    };
    assert_eq!(summary.as_deref(), Some("disk is failing"));
    assert_eq!(*severity, Some(Severity::Error));
    assert!(timeline
        .timeline(&IncidentId::parse("inc_00000000000000000000").expect("an id"))
        .await
        .expect("timeline of an unknown incident")
        .is_empty());
}

pub async fn a_delivery_attempt_is_recorded_once(store: &dyn IncidentStore, timeline: &dyn Timeline) {
    let case = Case::new("delivery");
    let (opened, _) = case.apply(store, &case.event("cpu", Action::Trigger, 0), 0).await;
    let Decision::Open { incident } = opened else {
        panic!("expected an open, got {opened:?}");
    };
    let mut job = sample_job(Channel::Sms, "cpu");
    job.incident = incident.clone();
    job.id = format!("{}:1:sms:{}", incident.id, job.to);
    let failed = TimelineEntry::of_delivery(
        &job,
        1,
        DeliveryResult::Failed {
            reason: "throttled".to_owned(),
            will_retry: true,
        },
        case.at(2),
    );
    let delivered = TimelineEntry::of_delivery(
        &job,
        2,
        DeliveryResult::Delivered {
            reference: Some("msg-1".to_owned()),
        },
        case.at(30),
    );
    // Recorded out of order and twice, as retried notifiers may.
    timeline.record(&delivered).await.expect("record");
    timeline.record(&failed).await.expect("record");
    timeline.record(&delivered).await.expect("record again");

    let entries = timeline.timeline(&incident.id).await.expect("timeline");
    assert_eq!(entries.len(), 3, "{entries:#?}");
    assert!(matches!(entries[0].what, Happened::Event { .. }));
    assert_eq!(entries[1], failed);
    assert_eq!(entries[2], delivered);
}

/// The heartbeat every adapter test configures before running
/// [`heartbeats`]: `contract-<suffix>`, on service `checkout`, every 60 s.
pub fn sample_heartbeat(suffix: &str) -> crate::heartbeat::Heartbeat {
    crate::heartbeat::Heartbeat {
        id: HeartbeatId::parse(&format!("contract-{suffix}")).expect("a valid heartbeat id"),
        service: ServiceId::parse("checkout").expect("a valid service"),
        key_hash: crate::auth::KeyHash::of("00112233445566778899aabbccddeeff"),
        interval_seconds: 60,
        severity: Severity::Critical,
    }
}

/// Beats, misses and recoveries of `configured`, a heartbeat the adapter
/// was configured with (see [`sample_heartbeat`]) that never beat.
pub async fn heartbeats(store: &dyn Heartbeats, configured: &crate::heartbeat::Heartbeat) {
    let id = &configured.id;
    let t = |second: i64| {
        DateTime::from_timestamp_micros(1_800_000_000_000_000 + second * 1_000_000).expect("a valid time")
    };
    let monitor = store
        .monitor(id)
        .await
        .expect("monitor")
        .expect("the configured heartbeat");
    assert_eq!(&monitor.heartbeat, configured);
    assert_eq!(monitor.state, HeartbeatState::default(), "never beaten");
    assert!(store
        .monitors()
        .await
        .expect("monitors")
        .iter()
        .any(|m| &m.heartbeat.id == id));

    store.beat(id, t(10)).await.expect("beat");
    store.beat(id, t(5)).await.expect("a late beat");
    let state = store.monitor(id).await.expect("monitor").expect("exists").state;
    assert_eq!(
        state.last_beat_at,
        Some(t(10)),
        "a late beat never moves the clock back"
    );
    assert_eq!(state.missed_since, None);

    assert!(
        !store.mark_missed(id, t(9), t(100)).await.expect("mark"),
        "a beat came after what the check read"
    );
    assert!(store.mark_missed(id, t(10), t(100)).await.expect("mark"));
    assert!(
        !store.mark_missed(id, t(10), t(160)).await.expect("mark"),
        "already marked"
    );
    let state = store.monitor(id).await.expect("monitor").expect("exists").state;
    assert_eq!(state.missed_since, Some(t(100)));

    store.beat(id, t(200)).await.expect("beat");
    let state = store.monitor(id).await.expect("monitor").expect("exists").state;
    assert_eq!(state.last_beat_at, Some(t(200)));
    assert_eq!(state.missed_since, None, "a beat clears the miss");

    // record_beat: a compare-and-set on the state that was read.
    let seen = HeartbeatState {
        last_beat_at: Some(t(200)),
        missed_since: None,
    };
    let stale = HeartbeatState {
        last_beat_at: Some(t(10)),
        missed_since: Some(t(100)),
    };
    assert!(
        !store.record_beat(id, &stale, t(300)).await.expect("record"),
        "the state changed since this read"
    );
    assert!(store.mark_missed(id, t(200), t(300)).await.expect("mark"));
    assert!(
        !store.record_beat(id, &seen, t(310)).await.expect("record"),
        "a check recorded a miss since this read"
    );
    let missed = HeartbeatState {
        last_beat_at: Some(t(200)),
        missed_since: Some(t(300)),
    };
    assert_eq!(store.monitor(id).await.expect("monitor").expect("exists").state, missed);
    assert!(store.record_beat(id, &missed, t(310)).await.expect("record"));
    let state = store.monitor(id).await.expect("monitor").expect("exists").state;
    assert_eq!(
        state,
        HeartbeatState {
            last_beat_at: Some(t(310)),
            missed_since: None
        }
    );
    assert!(
        !store.record_beat(id, &missed, t(320)).await.expect("record"),
        "the same read twice: the second loses"
    );
    assert!(
        !store.mark_missed(id, t(200), t(400)).await.expect("mark"),
        "a beat landed after the check's read"
    );

    let unknown = HeartbeatId::parse("contract-unknown-heartbeat").expect("an id");
    assert!(!store
        .record_beat(&unknown, &HeartbeatState::default(), t(0))
        .await
        .expect("record"));
    store
        .beat(&unknown, t(0))
        .await
        .expect("a beat of an unknown heartbeat changes nothing");
    assert!(store.monitor(&unknown).await.expect("monitor").is_none());
    assert!(!store.mark_missed(&unknown, t(0), t(1)).await.expect("mark"));
}

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
    let commit = Commit::of(&decision, &trigger, case.at(0));
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
    // Applied: the same commit again changes nothing (an applied record,
    // or, in the DynamoDB adapter, the incident's own tags).
    assert_eq!(
        store.commit(&commit).await.expect("commit"),
        CommitOutcome::AlreadyApplied
    );
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
        .commit(&Commit::of(&racing, &second, case.at(1)))
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
    // So the reads below also show who acknowledged survives the store.
    assert!(v2.acknowledged_by.is_some(), "{v2:?}");

    // A writer that still holds version 1 must not overwrite version 2.
    let resolve = case.event("disk", Action::Resolve, 20);
    let stale = decide(Some(&v1), &resolve, case.at(20));
    let commit = Commit::of(&stale, &resolve, case.at(20));
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
    let commit = Commit::of(&decision, &trigger, case.at(0));
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
    let commit = Commit::of(&again, &trigger, case.at(1));
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
    let commit = Commit::of(&decision, &resolve, case.at(0));
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
        acknowledged_by: None,
        resolved_by: None,
        version: 1,
        store_notes: Default::default(),
    };
    let to = match channel {
        Channel::Email => "oncall@example.com",
        Channel::Sms => "+15555550123",
        Channel::Slack => "#checkout",
        Channel::Webhook => "generic:127.0.0.1#0",
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
            .commit(&Commit::of(&decision, event, self.at(now)))
            .await
            .expect("commit");
        (decision, outcome)
    }
}

fn key(value: &str) -> DedupKey {
    DedupKey::parse(value).expect("a valid dedup key")
}

/// Runs the ingest stats cases every backend passes. Run
/// [`ingest_stats_count_concurrent_requests_exactly`] too where the backend
/// is the real thing: moto applies an UpdateItem's actions without a lock
/// (concurrent ADDs on one item were seen to lose one), DynamoDB atomically.
pub async fn ingest_stats(stats: &dyn crate::ports::IngestStats) {
    ingest_stats_count_each_outcome_per_integration(stats).await;
}

pub async fn ingest_stats_count_each_outcome_per_integration(stats: &dyn crate::ports::IngestStats) {
    use crate::health::{IngestFailure, IngestOutcome, OutcomeKind};
    use crate::providers::ProviderKind;
    let case = Case::new("stats");
    let prometheus = crate::event::IntegrationId::parse(&format!("{}-p", case.service)).expect("a valid id");
    let grafana = crate::event::IntegrationId::parse(&format!("{}-g", case.service)).expect("a valid id");
    let outcome = |second, latency_ms, kind| IngestOutcome {
        at: case.at(second),
        latency_ms,
        kind,
    };
    let service = &case.service;
    let record = |integration, provider, outcome| async move {
        stats
            .record(integration, service, provider, &outcome)
            .await
            .expect("record");
    };
    record(
        &prometheus,
        ProviderKind::Prometheus,
        outcome(1, 10, OutcomeKind::Success),
    )
    .await;
    let refused = IngestFailure::new(401, "signature check failed");
    record(
        &prometheus,
        ProviderKind::Prometheus,
        outcome(2, 3, OutcomeKind::Error(refused.clone())),
    )
    .await;
    record(
        &prometheus,
        ProviderKind::Prometheus,
        outcome(3, 7, OutcomeKind::Success),
    )
    .await;
    record(&grafana, ProviderKind::Grafana, outcome(4, 5, OutcomeKind::Success)).await;
    let unqueued = IngestFailure::new(503, "the events could not be queued; retry");
    record(
        &grafana,
        ProviderKind::Grafana,
        outcome(4, 5, OutcomeKind::FailedAfterSuccess(unqueued.clone())),
    )
    .await;

    let mut mine: Vec<_> = stats
        .snapshot()
        .await
        .expect("snapshot")
        .into_iter()
        .filter(|s| s.service == case.service)
        .collect();
    mine.sort_by(|a, b| a.integration.cmp(&b.integration));
    assert_eq!(mine.len(), 2, "one entry per integration: {mine:?}");
    let (g, p) = (&mine[0], &mine[1]);
    assert_eq!((&g.integration, g.provider), (&grafana, ProviderKind::Grafana));
    assert_eq!(
        (g.received, g.success, g.errors, g.latency_ms_total),
        (1, 0, 1, 5),
        "{g:?}"
    );
    assert_eq!(g.last_event_at, Some(case.at(4)));
    let error = g.last_error.as_ref().expect("grafana's last error");
    assert_eq!(
        (error.at, error.status, error.message.as_str()),
        (case.at(4), 503, unqueued.message.as_str())
    );

    assert_eq!((&p.integration, p.provider), (&prometheus, ProviderKind::Prometheus));
    assert_eq!(
        (p.received, p.success, p.errors, p.latency_ms_total),
        (3, 2, 1, 20),
        "{p:?}"
    );
    assert_eq!(
        p.last_event_at,
        Some(case.at(3)),
        "the latest request, not the latest error"
    );
    let error = p.last_error.as_ref().expect("prometheus' last error");
    assert_eq!(
        (error.at, error.status, error.message.as_str()),
        (case.at(2), 401, refused.message.as_str())
    );
}

pub async fn ingest_stats_count_concurrent_requests_exactly(stats: &dyn crate::ports::IngestStats) {
    use crate::health::{IngestOutcome, OutcomeKind};
    let case = Case::new("stats-concurrent");
    let integration = crate::event::IntegrationId::parse(&format!("{}-w", case.service)).expect("a valid id");
    let outcome = IngestOutcome {
        at: case.at(0),
        latency_ms: 2,
        kind: OutcomeKind::Success,
    };
    // All at once: one after another would hide a read-modify-write race.
    let pending: Vec<_> = (0..20)
        .map(|_| {
            stats.record(
                &integration,
                &case.service,
                crate::providers::ProviderKind::Webhook,
                &outcome,
            )
        })
        .collect();
    for result in join_all(pending).await {
        result.expect("record");
    }
    let entry = stats
        .snapshot()
        .await
        .expect("snapshot")
        .into_iter()
        .find(|s| s.integration == integration)
        .expect("the integration is listed");
    assert_eq!(
        (entry.received, entry.success, entry.errors, entry.latency_ms_total),
        (20, 20, 0, 40)
    );
}

/// Pending escalations (crate::escalation): taken in due order, due ones
/// only (one due exactly now included), each kept once, removed for good.
/// The store may hold other suites' escalations: only this case's count.
pub async fn escalations(store: &dyn crate::escalation::Escalations) {
    use crate::escalation::PendingEscalation;
    let case = Case::new("escalation");
    let pending = |name: &str, level: u32, second: i64| {
        let key = DedupKey::parse(name).expect("a valid dedup key");
        PendingEscalation {
            incident: IncidentId::for_opening(&case.service, &key, &EventId::new(name)),
            service: case.service.clone(),
            level,
            due: case.at(second),
        }
    };
    let (early, edge, late) = (pending("a", 1, 60), pending("b", 1, 90), pending("c", 2, 120));
    for p in [&late, &early, &edge, &early] {
        store.schedule(p).await.expect("schedule");
    }
    let mine = |all: Vec<PendingEscalation>| -> Vec<PendingEscalation> {
        all.into_iter().filter(|p| p.service == case.service).collect()
    };
    let due = |second: i64| store.due(case.at(second), 1_000);
    assert_eq!(mine(due(59).await.expect("due")), [], "nothing is due yet");
    assert_eq!(
        mine(due(90).await.expect("due")),
        [early.clone(), edge.clone()],
        "due ones, earliest first, one due exactly now included, each once"
    );
    assert_eq!(
        mine(due(3_600).await.expect("due")),
        [early.clone(), edge.clone(), late.clone()]
    );
    store.remove(&early).await.expect("remove");
    store
        .remove(&early)
        .await
        .expect("removing one already gone is not an error");
    assert_eq!(mine(due(3_600).await.expect("due")), [edge.clone(), late.clone()]);
    assert!(
        store.due(case.at(3_600), 1).await.expect("due").len() <= 1,
        "at most the limit"
    );
    for p in [&edge, &late] {
        store.remove(p).await.expect("remove");
    }
    assert_eq!(mine(due(3_600).await.expect("due")), []);
}

/// Runs every maintenance window case.
pub async fn maintenance_store(store: &dyn crate::ports::MaintenanceStore) {
    maintenance_windows_read_back_by_service_in_start_order(store).await;
    a_rewritten_window_keeps_its_released_mark(store).await;
    a_deleted_window_is_gone(store).await;
    a_window_ends_in_place_until_it_is_released(store).await;
}

fn window(case: &Case, start: i64, end: i64, reason: &str) -> crate::maintenance::MaintenanceWindow {
    crate::maintenance::MaintenanceWindow::new(
        case.service.clone(),
        case.at(start),
        case.at(end),
        Some(reason.to_owned()),
        "contract-suite",
    )
    .expect("a valid window")
}

pub async fn maintenance_windows_read_back_by_service_in_start_order(store: &dyn crate::ports::MaintenanceStore) {
    let (case, other) = (Case::new("maint"), Case::new("maint-other"));
    let late = window(&case, 600, 900, "late");
    let early = window(&case, 0, 60, "early");
    let elsewhere = window(&other, 0, 60, "elsewhere");
    for w in [&late, &early, &elsewhere] {
        store.put_window(w).await.expect("put_window");
    }
    let mine = store.windows(Some(&case.service)).await.expect("windows of a service");
    assert_eq!(mine, [early.clone(), late.clone()], "the service's windows, by start");
    let all = store.windows(None).await.expect("every window");
    for w in [&early, &late, &elsewhere] {
        assert!(all.contains(w), "{w:?} is listed among every window");
    }
    let position = |w: &crate::maintenance::MaintenanceWindow| all.iter().position(|x| x.id == w.id);
    assert!(position(&early) < position(&late), "by start within a service");
    let unknown = ServiceId::parse(&format!("{}-none", case.service)).expect("a valid id");
    assert!(store.windows(Some(&unknown)).await.expect("windows").is_empty());
}

pub async fn a_rewritten_window_keeps_its_released_mark(store: &dyn crate::ports::MaintenanceStore) {
    let case = Case::new("maint-release");
    let w = window(&case, 0, 60, "first");
    store.put_window(&w).await.expect("put_window");
    store.mark_released(&w.id, case.at(61)).await.expect("mark_released");
    store
        .mark_released(&w.id, case.at(99))
        .await
        .expect("mark_released again");
    let mut rewritten = window(&case, 0, 60, "second");
    rewritten.released_at = None;
    store.put_window(&rewritten).await.expect("put_window again");
    let read = store.windows(Some(&case.service)).await.expect("windows");
    assert_eq!(read.len(), 1, "one window per id: {read:?}");
    assert_eq!(read[0].reason.as_deref(), Some("second"), "the rewrite is kept");
    assert_eq!(read[0].released_at, Some(case.at(61)), "the first released mark stays");
    let gone = window(&case, 100, 160, "never written");
    store
        .mark_released(&gone.id, case.at(200))
        .await
        .expect("marking an unknown window is not an error");
    assert_eq!(store.windows(Some(&case.service)).await.expect("windows").len(), 1);
}

pub async fn a_deleted_window_is_gone(store: &dyn crate::ports::MaintenanceStore) {
    let case = Case::new("maint-delete");
    let (kept, deleted) = (window(&case, 0, 60, "kept"), window(&case, 30, 90, "deleted"));
    store.put_window(&kept).await.expect("put_window");
    store.put_window(&deleted).await.expect("put_window");
    assert!(store.delete_window(&deleted.id).await.expect("delete_window"));
    assert!(
        !store.delete_window(&deleted.id).await.expect("delete_window again"),
        "nothing left to delete"
    );
    assert_eq!(store.windows(Some(&case.service)).await.expect("windows"), [kept]);
}

pub async fn a_window_ends_in_place_until_it_is_released(store: &dyn crate::ports::MaintenanceStore) {
    let case = Case::new("maint-end");
    let w = window(&case, 0, 60, "cut short");
    store.put_window(&w).await.expect("put_window");
    assert!(
        store.end_window(&w.id, case.at(30)).await.expect("end_window"),
        "a running window ends early"
    );
    let read = store.windows(Some(&case.service)).await.expect("windows");
    let mut expected = w.clone();
    expected.end = case.at(30);
    assert_eq!(
        read,
        [expected.clone()],
        "the same id and key, the new end, not released"
    );
    for (end, why) in [
        (case.at(45), "it already ends by then"),
        (case.at(0), "not at or before its start"),
    ] {
        assert!(!store.end_window(&w.id, end).await.expect("end_window"), "{why}");
    }
    store.mark_released(&w.id, case.at(31)).await.expect("mark_released");
    assert!(
        !store.end_window(&w.id, case.at(20)).await.expect("end_window"),
        "a released window stays as it is"
    );
    let read = store.windows(Some(&case.service)).await.expect("windows");
    assert_eq!((read[0].end, read[0].released_at), (case.at(30), Some(case.at(31))));
    let never = window(&case, 100, 160, "never written");
    assert!(!store.end_window(&never.id, case.at(130)).await.expect("end_window"));
    assert_eq!(store.windows(Some(&case.service)).await.expect("windows").len(), 1);
}

/// Polls every future until all are done, their outputs in order.
async fn join_all<F: std::future::Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match std::pin::Pin::new(future).poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Runs every throttle case (crate::throttle).
pub async fn throttle_store(store: &dyn crate::throttle::ThrottleStore) {
    a_throttle_counts_each_window_up_to_its_limit(store).await;
    a_throttle_counts_concurrent_sends_exactly(store).await;
    a_bundle_keeps_one_entry_per_incident_until_cleared(store).await;
}

/// A recipient of its own for one case, and the slots of "now".
fn throttle_case(name: &str) -> (String, DateTime<Utc>) {
    let case = Case::new(name);
    (
        format!("+1555{}", &case.service.as_str()[case.service.as_str().len() - 12..]),
        case.start,
    )
}

fn throttle_slots(at: DateTime<Utc>, minute: u32, quarter: u32) -> Vec<crate::throttle::Slot> {
    [(60u32, minute), (900, quarter)]
        .into_iter()
        .map(|(seconds, limit)| crate::throttle::Slot {
            seconds,
            index: at.timestamp().div_euclid(i64::from(seconds)),
            limit,
        })
        .collect()
}

pub async fn a_throttle_counts_each_window_up_to_its_limit(store: &dyn crate::throttle::ThrottleStore) {
    let (to, now) = throttle_case("throttle-take");
    let slots = throttle_slots(now, 2, 3);
    let take = |force: bool, slots: Vec<crate::throttle::Slot>| {
        let to = to.clone();
        async move { store.take(Channel::Sms, &to, &slots, force).await.expect("take") }
    };
    assert!(take(false, slots.clone()).await, "the first send is counted");
    assert!(take(false, slots.clone()).await, "the second send is counted");
    assert!(!take(false, slots.clone()).await, "the minute is full at 2");
    assert!(take(true, slots.clone()).await, "a forced send is counted anyway");
    // The next minute has room, but the quarter counted 3 (2 + 1 forced).
    let mut next = slots.clone();
    next[0].index += 1;
    assert!(!take(false, next.clone()).await, "the quarter is full at 3");
    // A refused send counted nothing: a larger quarter limit lets exactly one more through.
    next[1].limit = 4;
    assert!(take(false, next.clone()).await, "one more fits the quarter of 4");
    assert!(!take(false, next).await);
    // Other recipients and channels have counts of their own.
    assert!(store
        .take(Channel::Sms, &format!("{to}9"), &slots, false)
        .await
        .expect("take"));
    assert!(store.take(Channel::Email, &to, &slots, false).await.expect("take"));
}

pub async fn a_throttle_counts_concurrent_sends_exactly(store: &dyn crate::throttle::ThrottleStore) {
    let (to, now) = throttle_case("throttle-race");
    let slots = throttle_slots(now, 5, 5);
    // All at once: one after another would hide a read-modify-write race.
    let pending: Vec<_> = (0..12).map(|_| store.take(Channel::Sms, &to, &slots, false)).collect();
    let allowed = join_all(pending)
        .await
        .into_iter()
        .map(|r| r.expect("take"))
        .filter(|counted| *counted)
        .count();
    assert_eq!(allowed, 5, "exactly the limit is let through");
}

pub async fn a_bundle_keeps_one_entry_per_incident_until_cleared(store: &dyn crate::throttle::ThrottleStore) {
    let (to, now) = throttle_case("throttle-bundle");
    let item = |n: i64, service: &str| {
        let mut job = sample_job(Channel::Sms, "held");
        job.to = to.clone();
        job.service_name = service.to_owned();
        job.incident.id = IncidentId::for_opening(
            &job.incident.service,
            &job.incident.dedup_key,
            &EventId::new(format!("{to}-{n}")),
        );
        crate::throttle::Suppressed {
            channel: Channel::Sms,
            to: to.clone(),
            incident: job.incident.id.clone(),
            service_name: service.to_owned(),
            at: now + TimeDelta::seconds(n),
            job,
        }
    };
    let items = [item(0, "Checkout"), item(1, "Payments"), item(2, "Checkout")];
    for held in &items {
        store.suppress(held).await.expect("suppress");
    }
    // A redelivered job is one entry, its first.
    let mut again = items[1].clone();
    again.at = now + TimeDelta::seconds(9);
    store.suppress(&again).await.expect("suppress");

    let mine = |all: Vec<crate::throttle::Suppressed>| -> Vec<crate::throttle::Suppressed> {
        all.into_iter().filter(|i| i.to == to).collect()
    };
    let bundled = mine(store.bundled(Channel::Sms).await.expect("bundled"));
    assert_eq!(bundled, items.to_vec(), "entries read back as written, oldest first");
    assert!(mine(store.bundled(Channel::Email).await.expect("bundled")).is_empty());

    // Clearing what was sent keeps what came since.
    let later = item(3, "Search");
    store.suppress(&later).await.expect("suppress");
    store.clear(&bundled).await.expect("clear");
    assert_eq!(
        mine(store.bundled(Channel::Sms).await.expect("bundled")),
        vec![later.clone()]
    );
    store.clear(&[later]).await.expect("clear");
    assert!(mine(store.bundled(Channel::Sms).await.expect("bundled")).is_empty());
}

/// Runs every Slack thread case (crate::slack::threads).
pub async fn slack_threads(store: &dyn crate::slack::threads::SlackThreads) {
    use crate::slack::threads::SlackThread;

    let case = Case::new("slack-threads");
    let incident = IncidentId::for_opening(
        &case.service,
        &DedupKey::parse("disk").expect("a key"),
        &EventId::generate(),
    );
    let other = IncidentId::for_opening(
        &case.service,
        &DedupKey::parse("disk").expect("a key"),
        &EventId::generate(),
    );
    let first = SlackThread {
        channel_id: "C0123ABCD".to_owned(),
        ts: "1718000000.000100".to_owned(),
    };
    assert_eq!(store.thread(&incident, "#checkout").await.expect("read"), None);

    store.remember(&incident, "#checkout", &first).await.expect("remember");
    assert_eq!(
        store.thread(&incident, "#checkout").await.expect("read"),
        Some(first.clone())
    );
    // Per channel and per incident.
    assert_eq!(store.thread(&incident, "#payments").await.expect("read"), None);
    assert_eq!(store.thread(&other, "#checkout").await.expect("read"), None);

    // A redelivered trigger never moves the thread.
    let later = SlackThread {
        channel_id: "C0123ABCD".to_owned(),
        ts: "1718000099.000200".to_owned(),
    };
    store
        .remember(&incident, "#checkout", &later)
        .await
        .expect("remember again");
    assert_eq!(store.thread(&incident, "#checkout").await.expect("read"), Some(first));
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
            super::timeline(&store, &store).await;
            let heartbeat = super::sample_heartbeat("memory");
            store.set_heartbeats(vec![heartbeat.clone()]);
            super::heartbeats(&store, &heartbeat).await;
            super::event_queue(&store).await;
            super::notification_queue(&store).await;
            super::ingest_stats(&store).await;
            super::ingest_stats_count_concurrent_requests_exactly(&store).await;
            super::maintenance_store(&store).await;
            super::escalations(&store).await;
        });
    }

    #[test]
    fn the_memory_throttle_passes_the_contract() {
        block_on(super::throttle_store(&crate::throttle::MemoryThrottle::new()));
    }
}
