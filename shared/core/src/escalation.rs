//! Escalation: while an incident stays open (neither acknowledged nor
//! resolved), the levels of its service's `notify.escalation` are notified
//! one after the other, each `after_seconds` after the previous one (level 1:
//! after the triggered transition).
//!
//! The dispatcher records the first level as a [`PendingEscalation`] when it
//! dispatches a triggered transition; the scheduler takes the due ones every
//! tick ([`EscalationService::run_due`]) and re-reads the incident. Still
//! open: the level is notified (an `escalated` transition) and the next one
//! recorded. Acknowledged or resolved: the escalation is dropped, with a
//! timeline entry saying why. Cancelling when due rather than on the
//! acknowledgement keeps the processor out of it and is exact: the status is
//! read at the moment the escalation would notify. A level fires at the
//! first scheduler tick after its due time (a minute on AWS, at most a
//! second locally).
//!
//! Every step is idempotent, so a tick that fails half way is simply run
//! again: job ids name the incident and level, timeline entries the level,
//! the next level's due time is derived from this one's, and the pending
//! record is removed last.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{EscalationLevel, Service};
use crate::event::{EventId, ServiceId};
use crate::incident::{Incident, IncidentId, IncidentStatus, Transition, TransitionKind};
use crate::notify::{plan, Channel, NotificationJob};
use crate::ports::{BackendError, ConfigStore, IncidentStore, MaintenanceStore, NotificationQueue, Timeline};
use crate::timeline::{Happened, TimelineEntry};

/// How many due escalations one tick handles; the rest wait for the next.
pub const TICK_LIMIT: usize = 100;

/// One level of one incident's escalation, waiting for its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEscalation {
    pub incident: IncidentId,
    pub service: ServiceId,
    /// 1 for the first level of `notify.escalation`.
    pub level: u32,
    pub due: DateTime<Utc>,
}

impl PendingEscalation {
    /// Orders pending escalations by due time as text (fixed-width RFC 3339
    /// in UTC with microseconds), and names one: the same level of the same
    /// incident due at the same time is one record.
    pub fn sort_key(&self) -> String {
        format!(
            "{}#{}#{:04}",
            self.due.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            self.incident,
            self.level
        )
    }

    /// The sort key of everything due at or before `now`: keys up to it.
    pub fn due_bound(now: DateTime<Utc>) -> String {
        format!("{}#~", now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    }
}

/// Pending escalations: the dispatcher adds them, the scheduler takes the
/// due ones.
#[async_trait]
pub trait Escalations: Send + Sync {
    /// Records `pending`; recording the same one twice keeps one.
    async fn schedule(&self, pending: &PendingEscalation) -> Result<(), BackendError>;
    /// Those due at or before `now`, earliest first, at most `limit`.
    async fn due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<PendingEscalation>, BackendError>;
    /// Forgets `pending`; one already gone is not an error.
    async fn remove(&self, pending: &PendingEscalation) -> Result<(), BackendError>;
}

fn delay(level: &EscalationLevel) -> Duration {
    Duration::seconds(i64::from(level.after_seconds))
}

/// The first level of the escalation of `transition`, if it starts one: a
/// triggered transition under a policy with escalation levels, one of which
/// has a recipient on a channel whose minimum severity the incident
/// reaches. Due after the first level's delay from the transition (the
/// incident as it was written then).
///
/// The policy's `on` plays no part: it says which transitions tell the
/// service's own recipients (level 0), while levels page whoever they name
/// as long as the incident stays open, as PagerDuty's escalation does.
pub fn first_level(transition: &Transition, service: &Service) -> Option<PendingEscalation> {
    let policy = &service.policy;
    let incident = &transition.incident;
    let reaches = |level: &EscalationLevel| {
        let channels = [
            (Channel::Email, !level.email.is_empty()),
            (Channel::Sms, !level.sms.is_empty()),
            (Channel::Slack, level.slack.is_some()),
        ];
        channels
            .iter()
            .any(|&(channel, used)| used && incident.severity >= policy.min_severity_of(channel))
    };
    if transition.kind != TransitionKind::Triggered || !policy.escalation.iter().any(reaches) {
        return None;
    }
    let level = policy.escalation.first()?;
    Some(PendingEscalation {
        incident: incident.id.clone(),
        service: incident.service.clone(),
        level: 1,
        due: incident.updated_at + delay(level),
    })
}

/// The notifications of escalating `incident` to `level` (from 1): that
/// level's recipients on the channels whose minimum severity
/// (`min_severity_by_channel`, else `min_severity`) the incident reaches,
/// and the service's own (level 0) when its policy notifies `escalated` too.
/// Ids name the incident and level, so a level is notified once however
/// often it is planned. A level's own recipients do not depend on `on`
/// (see [`first_level`]).
pub fn plan_level(incident: &Incident, service: &Service, level: u32, now: DateTime<Utc>) -> Vec<NotificationJob> {
    let Some(recipients) = level
        .checked_sub(1)
        .and_then(|i| service.policy.escalation.get(i as usize))
    else {
        return Vec::new();
    };
    let job = |channel: Channel, to: String| NotificationJob {
        id: format!("escalation:{}:{level}:{channel}:{to}", incident.id),
        channel,
        to,
        transition: TransitionKind::Escalated,
        service_name: service.name.clone(),
        incident: incident.clone(),
        planned_at: now,
    };
    let transition = Transition {
        kind: TransitionKind::Escalated,
        incident: incident.clone(),
        event_id: EventId::new(format!("escalation:{}:{level}", incident.id)),
    };
    let severe_enough = |channel: Channel| incident.severity >= service.policy.min_severity_of(channel);
    let mut jobs: Vec<NotificationJob> = recipients
        .email
        .iter()
        .map(|e| (Channel::Email, e.as_str().to_owned()))
        .chain(recipients.sms.iter().map(|n| (Channel::Sms, n.as_str().to_owned())))
        .chain(recipients.slack.iter().map(|c| (Channel::Slack, c.clone())))
        .filter(|(channel, _)| severe_enough(*channel))
        .map(|(channel, to)| job(channel, to))
        .chain(
            plan(&transition, service, now)
                .into_iter()
                .map(|j| job(j.channel, j.to)),
        )
        .collect();
    let mut seen = std::collections::HashSet::new();
    jobs.retain(|j| seen.insert(j.id.clone()));
    jobs
}

/// The timeline entry of `incident` escalated to `level`.
pub fn escalated_entry(incident: &IncidentId, level: u32, notifications: usize, at: DateTime<Utc>) -> TimelineEntry {
    TimelineEntry {
        incident: incident.clone(),
        id: format!("escalated:{level}"),
        at,
        what: Happened::Escalated { level, notifications },
    }
}

/// The timeline entry of `incident`'s escalation to `level` dropped because
/// it was `status` when due.
pub fn cancelled_entry(incident: &IncidentId, level: u32, status: IncidentStatus, at: DateTime<Utc>) -> TimelineEntry {
    TimelineEntry {
        incident: incident.clone(),
        id: format!("escalation-cancelled:{level}"),
        at,
        what: Happened::EscalationCancelled { level, status },
    }
}

/// What one [`EscalationService::run_due`] run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Escalated {
    /// Levels notified.
    pub escalated: usize,
    /// Notifications planned for them.
    pub jobs: usize,
    /// Escalations dropped: acknowledged or resolved (or gone from config).
    pub cancelled: usize,
    /// Escalations put off to the end of a maintenance period.
    pub held: usize,
}

#[derive(Clone)]
pub struct EscalationService {
    escalations: Arc<dyn Escalations>,
    incidents: Arc<dyn IncidentStore>,
    config: Arc<dyn ConfigStore>,
    queue: Arc<dyn NotificationQueue>,
    timeline: Option<Arc<dyn Timeline>>,
    maintenance: Option<Arc<dyn MaintenanceStore>>,
}

impl EscalationService {
    pub fn new(
        escalations: Arc<dyn Escalations>,
        incidents: Arc<dyn IncidentStore>,
        config: Arc<dyn ConfigStore>,
        queue: Arc<dyn NotificationQueue>,
    ) -> Self {
        Self {
            escalations,
            incidents,
            config,
            queue,
            timeline: None,
            maintenance: None,
        }
    }

    /// Records every escalation step in its incident's timeline.
    pub fn with_timeline(mut self, timeline: Arc<dyn Timeline>) -> Self {
        self.timeline = Some(timeline);
        self
    }

    /// Holds escalations of services in a maintenance period: a level due
    /// during one is put off until the period's end plus its own delay, so
    /// responders get the whole delay after the release notifies them.
    pub fn with_maintenance(mut self, maintenance: Arc<dyn MaintenanceStore>) -> Self {
        self.maintenance = Some(maintenance);
        self
    }

    /// Handles the escalations due at `now`; the scheduler calls it every
    /// tick.
    #[tracing::instrument(skip_all)]
    pub async fn run_due(&self, now: DateTime<Utc>) -> Result<Escalated, BackendError> {
        let mut done = Escalated::default();
        for pending in self.escalations.due(now, TICK_LIMIT).await? {
            self.handle(&pending, now, &mut done).await?;
            self.escalations.remove(&pending).await?;
        }
        if done != Escalated::default() {
            tracing::info!(?done, "escalations handled");
        }
        Ok(done)
    }

    /// Everything `pending` leads to, except its removal.
    #[tracing::instrument(skip_all, fields(incident = %pending.incident, level = pending.level))]
    async fn handle(
        &self,
        pending: &PendingEscalation,
        now: DateTime<Utc>,
        done: &mut Escalated,
    ) -> Result<(), BackendError> {
        let Some(incident) = self.incidents.get(&pending.incident).await? else {
            tracing::warn!("no such incident; escalation dropped");
            return Ok(());
        };
        if incident.status != IncidentStatus::Open {
            tracing::info!(status = %incident.status, "escalation cancelled");
            self.note(cancelled_entry(&incident.id, pending.level, incident.status, now))
                .await;
            done.cancelled += 1;
            return Ok(());
        }
        let Some(service) = self.config.service(&incident.service).await? else {
            tracing::warn!(service = %incident.service, "no such service; escalation dropped");
            return Ok(());
        };
        let index = (pending.level as usize).checked_sub(1);
        let Some(level) = index.and_then(|i| service.policy.escalation.get(i)) else {
            // The policy lost levels since this one was recorded.
            tracing::warn!("no such escalation level any more; dropped");
            done.cancelled += 1;
            return Ok(());
        };
        if let Some(until) = self.maintenance_end(&incident.service, now).await? {
            let later = PendingEscalation {
                due: until + delay(level),
                ..pending.clone()
            };
            tracing::info!(until = %until, due = %later.due, "escalation held: maintenance window");
            self.escalations.schedule(&later).await?;
            done.held += 1;
            return Ok(());
        }
        let jobs = plan_level(&incident, &service, pending.level, now);
        if !jobs.is_empty() {
            self.queue.enqueue(&jobs).await?;
        }
        self.note(escalated_entry(&incident.id, pending.level, jobs.len(), now))
            .await;
        if let Some(next) = service.policy.escalation.get(pending.level as usize) {
            let next = PendingEscalation {
                level: pending.level + 1,
                due: pending.due + delay(next),
                ..pending.clone()
            };
            self.escalations.schedule(&next).await?;
        }
        done.escalated += 1;
        done.jobs += jobs.len();
        Ok(())
    }

    /// When the maintenance period `service` is in at `now` ends, if it is
    /// in one.
    async fn maintenance_end(
        &self,
        service: &ServiceId,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, BackendError> {
        let Some(store) = &self.maintenance else {
            return Ok(None);
        };
        let windows = store.windows(Some(service)).await?;
        Ok(crate::maintenance::active_period(&windows, service, now).map(|(_, until)| until.end))
    }

    /// A timeline that cannot be written loses an entry, not the escalation.
    async fn note(&self, entry: TimelineEntry) {
        let Some(timeline) = &self.timeline else { return };
        if let Err(error) = timeline.record(&entry).await {
            tracing::warn!(error = %error, "the escalation entry was not recorded in the timeline");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Catalog;
    use crate::dispatch::DispatchService;
    use crate::event::{DedupKey, EventId};
    use crate::memory::MemoryStore;
    use crate::ports::Commit;
    use chrono::TimeZone;

    const CONFIG: &str = r##"
services:
  - id: checkout
    notify:
      email: [oncall@example.com]
      on: [triggered, acknowledged, resolved]
      escalation:
        - after_minutes: 5
          sms: ["+15555550100"]
        - after_minutes: 10
          email: [lead@example.com]
          slack: "#incidents"
"##;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
            .block_on(future)
    }

    fn at(minute: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + minute * 60, 0)
            .single()
            .expect("a valid time")
    }

    struct Setup {
        store: Arc<MemoryStore>,
        catalog: Catalog,
    }

    impl Setup {
        fn new(config: &str) -> Self {
            Setup {
                store: Arc::new(MemoryStore::new()),
                catalog: Catalog::from_yaml(config, "tocsin.yaml").expect("a valid config"),
            }
        }

        fn dispatch(&self) -> DispatchService {
            DispatchService::new(Arc::new(self.catalog.clone()), self.store.clone())
                .with_timeline(self.store.clone())
                .with_maintenance(self.store.clone())
                .with_escalations(self.store.clone())
        }

        fn escalation(&self) -> EscalationService {
            EscalationService::new(
                self.store.clone(),
                self.store.clone(),
                Arc::new(self.catalog.clone()),
                self.store.clone(),
            )
            .with_timeline(self.store.clone())
            .with_maintenance(self.store.clone())
        }

        /// An incident of checkout opened at `opened`, its triggered
        /// transition dispatched.
        async fn open(&self, dedup: &str, opened: DateTime<Utc>) -> Incident {
            let severity = crate::render::fixtures::incident(TransitionKind::Triggered).severity;
            self.open_at(dedup, opened, severity).await
        }

        async fn open_at(&self, dedup: &str, opened: DateTime<Utc>, severity: crate::event::Severity) -> Incident {
            let mut incident = crate::render::fixtures::incident(TransitionKind::Triggered);
            incident.severity = severity;
            let key = DedupKey::parse(dedup).expect("a key");
            incident.id = IncidentId::for_opening(&incident.service, &key, &EventId::new(dedup));
            incident.dedup_key = key;
            (incident.created_at, incident.updated_at) = (opened, opened);
            let commit = Commit::Incident {
                event_id: EventId::new(dedup),
                incident: incident.clone(),
                expected_version: None,
                transition: None,
                timeline: None,
            };
            self.store.commit(&commit).await.expect("commit");
            let transition = Transition {
                kind: TransitionKind::Triggered,
                incident: incident.clone(),
                event_id: EventId::new(dedup),
            };
            self.dispatch().dispatch(&transition, opened).await.expect("dispatch");
            incident
        }

        async fn set_status(&self, incident: &Incident, status: IncidentStatus, now: DateTime<Utc>) {
            let mut changed = self.store.get(&incident.id).await.expect("get").expect("the incident");
            let expected = changed.version;
            changed.status = status;
            changed.version += 1;
            changed.updated_at = now;
            let commit = Commit::Incident {
                event_id: EventId::new(format!("{}:{status}", incident.id)),
                incident: changed,
                expected_version: Some(expected),
                transition: None,
                timeline: None,
            };
            self.store.commit(&commit).await.expect("commit");
        }

        /// The escalation jobs queued so far: (channel, to) in order.
        fn escalation_jobs(&self) -> Vec<(Channel, String)> {
            self.store
                .queued_jobs()
                .into_iter()
                .filter(|j| j.transition == TransitionKind::Escalated)
                .map(|j| (j.channel, j.to))
                .collect()
        }

        async fn described(&self, incident: &Incident) -> Vec<String> {
            self.store
                .timeline(&incident.id)
                .await
                .expect("timeline")
                .iter()
                .map(TimelineEntry::describe)
                .filter(|d| d.contains("escalat"))
                .collect()
        }
    }

    #[test]
    fn levels_parse_from_minutes_or_seconds_and_need_a_recipient() {
        let catalog = Catalog::from_yaml(CONFIG, "t.yaml").expect("a valid config");
        let levels = &catalog.services[0].policy.escalation;
        assert_eq!(levels.len(), 2);
        assert_eq!(levels[0].after_seconds, 300);
        assert_eq!(levels[1].after_seconds, 600);
        assert_eq!(levels[1].slack.as_deref(), Some("#incidents"));

        let seconds = CONFIG.replace("after_minutes: 5", "after_seconds: 2");
        let catalog = Catalog::from_yaml(&seconds, "t.yaml").expect("a valid config");
        assert_eq!(catalog.services[0].policy.escalation[0].after_seconds, 2);

        let refused = |text: String| Catalog::from_yaml(&text, "t.yaml").expect_err("refused").field;
        assert_eq!(
            refused(CONFIG.replace("after_minutes: 5", "after_minutes: 5\n          after_seconds: 3")),
            "services[0].notify.escalation[0].after_minutes"
        );
        assert_eq!(
            refused(CONFIG.replace("after_minutes: 5", "after_minutes: 0")),
            "services[0].notify.escalation[0].after_minutes"
        );
        assert_eq!(
            refused(CONFIG.replace("sms: [\"+15555550100\"]", "sms: []")),
            "services[0].notify.escalation[0].email"
        );
        assert_eq!(
            refused(CONFIG.replace("sms: [\"+15555550100\"]", "sms: [\"0100\"]")),
            "services[0].notify.escalation[0].sms[0]"
        );
        assert_eq!(
            refused(CONFIG.replace("\"#incidents\"", "incidents")),
            "services[0].notify.escalation[1].slack"
        );
    }

    #[test]
    fn a_level_fires_after_its_delay_and_not_before() {
        let setup = Setup::new(CONFIG);
        block_on(async {
            let incident = setup.open("disk", at(0)).await;
            let escalation = setup.escalation();
            assert_eq!(escalation.run_due(at(4)).await.expect("tick"), Escalated::default());
            assert!(setup.escalation_jobs().is_empty());

            let done = escalation.run_due(at(5)).await.expect("tick");
            assert_eq!((done.escalated, done.jobs), (1, 1));
            assert_eq!(setup.escalation_jobs(), [(Channel::Sms, "+15555550100".to_owned())]);
            let job = setup
                .store
                .queued_jobs()
                .into_iter()
                .find(|j| j.transition == TransitionKind::Escalated)
                .expect("the escalation job");
            assert_eq!(job.id, format!("escalation:{}:1:sms:+15555550100", incident.id));
            assert_eq!(
                setup.described(&incident).await,
                ["escalated to level 1 (1 notification)"]
            );
        });
    }

    #[test]
    fn every_level_fires_in_turn_each_after_its_own_delay() {
        let setup = Setup::new(CONFIG);
        block_on(async {
            let incident = setup.open("disk", at(0)).await;
            let escalation = setup.escalation();
            escalation.run_due(at(5)).await.expect("tick");
            // Level 2 is due 10 minutes after level 1.
            assert_eq!(escalation.run_due(at(14)).await.expect("tick").escalated, 0);
            assert_eq!(escalation.run_due(at(15)).await.expect("tick").escalated, 1);
            assert_eq!(
                setup.escalation_jobs(),
                [
                    (Channel::Sms, "+15555550100".to_owned()),
                    (Channel::Email, "lead@example.com".to_owned()),
                    (Channel::Slack, "#incidents".to_owned()),
                ]
            );
            // No level 3: nothing is left pending.
            assert_eq!(escalation.run_due(at(600)).await.expect("tick"), Escalated::default());
            assert_eq!(
                setup.described(&incident).await,
                [
                    "escalated to level 1 (1 notification)",
                    "escalated to level 2 (2 notifications)"
                ]
            );
        });
    }

    #[test]
    fn an_acknowledgement_before_the_delay_cancels_the_escalation() {
        let setup = Setup::new(CONFIG);
        block_on(async {
            let incident = setup.open("disk", at(0)).await;
            setup.set_status(&incident, IncidentStatus::Acknowledged, at(3)).await;
            let done = setup.escalation().run_due(at(5)).await.expect("tick");
            assert_eq!((done.escalated, done.cancelled), (0, 1));
            assert!(setup.escalation_jobs().is_empty());
            assert_eq!(
                setup.described(&incident).await,
                ["escalation to level 1 cancelled (acknowledged)"]
            );
            assert_eq!(
                setup.escalation().run_due(at(60)).await.expect("tick"),
                Escalated::default()
            );
        });
    }

    #[test]
    fn a_resolve_between_levels_cancels_the_next_one() {
        let setup = Setup::new(CONFIG);
        block_on(async {
            let incident = setup.open("disk", at(0)).await;
            let escalation = setup.escalation();
            escalation.run_due(at(5)).await.expect("tick");
            setup.set_status(&incident, IncidentStatus::Resolved, at(7)).await;
            let done = escalation.run_due(at(15)).await.expect("tick");
            assert_eq!((done.escalated, done.cancelled), (0, 1));
            assert_eq!(setup.escalation_jobs().len(), 1, "level 1 only");
            assert_eq!(
                setup.described(&incident).await,
                [
                    "escalated to level 1 (1 notification)",
                    "escalation to level 2 cancelled (resolved)"
                ]
            );
        });
    }

    #[test]
    fn a_tick_run_twice_or_a_transition_dispatched_twice_notifies_once() {
        let setup = Setup::new(CONFIG);
        block_on(async {
            let incident = setup.open("disk", at(0)).await;
            // The stream delivers the triggered transition again.
            let transition = Transition {
                kind: TransitionKind::Triggered,
                incident: incident.clone(),
                event_id: EventId::new("disk"),
            };
            setup.dispatch().dispatch(&transition, at(1)).await.expect("dispatch");
            let escalation = setup.escalation();
            assert_eq!(escalation.run_due(at(5)).await.expect("tick").escalated, 1);
            assert_eq!(escalation.run_due(at(5)).await.expect("tick").escalated, 0);
            // A tick that failed before forgetting the pending level redoes it:
            // the same jobs, queued once.
            let pending = PendingEscalation {
                incident: incident.id.clone(),
                service: incident.service.clone(),
                level: 1,
                due: at(5),
            };
            setup.store.schedule(&pending).await.expect("schedule");
            escalation.run_due(at(6)).await.expect("tick");
            assert_eq!(setup.escalation_jobs().len(), 1);
            assert_eq!(setup.described(&incident).await.len(), 1);
        });
    }

    #[test]
    fn no_escalation_without_levels_or_below_the_minimum_severity() {
        let setup = Setup::new(&CONFIG.replace("      on:", "      min_severity: critical\n      on:"));
        block_on(async {
            let mut incident = crate::render::fixtures::incident(TransitionKind::Triggered);
            incident.severity = crate::event::Severity::Warning;
            let transition = Transition {
                kind: TransitionKind::Triggered,
                incident,
                event_id: EventId::new("e"),
            };
            let service = &setup.catalog.services[0];
            assert_eq!(first_level(&transition, service), None);
            let acknowledged = Transition {
                kind: TransitionKind::Acknowledged,
                ..transition
            };
            assert_eq!(first_level(&acknowledged, service), None);
        });
        let plain = Setup::new(CONFIG.split("      escalation:").next().expect("the head"));
        let transition = Transition {
            kind: TransitionKind::Triggered,
            incident: crate::render::fixtures::incident(TransitionKind::Triggered),
            event_id: EventId::new("e"),
        };
        assert_eq!(first_level(&transition, &plain.catalog.services[0]), None);
    }

    #[test]
    fn on_escalated_tells_the_services_own_recipients_too() {
        let setup = Setup::new(&CONFIG.replace("on: [triggered,", "on: [escalated, triggered,"));
        block_on(async {
            setup.open("disk", at(0)).await;
            setup.escalation().run_due(at(5)).await.expect("tick");
            assert_eq!(
                setup.escalation_jobs(),
                [
                    (Channel::Sms, "+15555550100".to_owned()),
                    (Channel::Email, "oncall@example.com".to_owned()),
                ]
            );
        });
    }

    #[test]
    fn a_level_skips_channels_below_their_minimum_severity() {
        use crate::event::Severity;
        let config = CONFIG.replace("      on:", "      min_severity_by_channel: {sms: critical}\n      on:");
        let setup = Setup::new(&config);
        block_on(async {
            let warning = setup.open_at("disk", at(0), Severity::Warning).await;
            let escalation = setup.escalation();
            let done = escalation.run_due(at(5)).await.expect("tick");
            assert_eq!((done.escalated, done.jobs), (1, 0), "level 1 is SMS only");
            escalation.run_due(at(15)).await.expect("tick");
            assert_eq!(
                setup.escalation_jobs(),
                [
                    (Channel::Email, "lead@example.com".to_owned()),
                    (Channel::Slack, "#incidents".to_owned()),
                ]
            );
            assert_eq!(
                setup.described(&warning).await,
                [
                    "escalated to level 1 (0 notifications)",
                    "escalated to level 2 (2 notifications)"
                ]
            );
        });
        let setup = Setup::new(&config);
        block_on(async {
            setup.open_at("disk", at(0), Severity::Critical).await;
            setup.escalation().run_due(at(5)).await.expect("tick");
            assert_eq!(setup.escalation_jobs(), [(Channel::Sms, "+15555550100".to_owned())]);
        });
    }

    #[test]
    fn a_channel_with_a_lower_minimum_still_escalates_below_the_policys() {
        use crate::event::Severity;
        let config = CONFIG.replace(
            "      on:",
            "      min_severity: critical\n      min_severity_by_channel: {email: warning}\n      on:",
        );
        let setup = Setup::new(&config);
        block_on(async {
            setup.open_at("disk", at(0), Severity::Warning).await;
            let escalation = setup.escalation();
            escalation.run_due(at(5)).await.expect("tick");
            escalation.run_due(at(15)).await.expect("tick");
            assert_eq!(
                setup.escalation_jobs(),
                [(Channel::Email, "lead@example.com".to_owned())]
            );
        });
        // Info reaches no level's channel: nothing is scheduled.
        let setup = Setup::new(&config);
        block_on(async {
            setup.open_at("disk", at(0), Severity::Info).await;
            assert_eq!(
                setup.escalation().run_due(at(600)).await.expect("tick"),
                Escalated::default()
            );
        });
    }

    #[test]
    fn levels_page_whatever_on_says_and_on_escalated_keeps_level_0_minimums() {
        use crate::event::Severity;
        // Level 0 hears of resolutions only; the levels still page.
        let setup = Setup::new(&CONFIG.replace("on: [triggered, acknowledged, resolved]", "on: [resolved]"));
        block_on(async {
            setup.open("disk", at(0)).await;
            assert!(
                setup.store.queued_jobs().is_empty(),
                "level 0 is not told of the trigger"
            );
            assert_eq!(setup.escalation().run_due(at(5)).await.expect("tick").escalated, 1);
            assert_eq!(setup.escalation_jobs(), [(Channel::Sms, "+15555550100".to_owned())]);
        });
        // Level 0 told of escalations: under its own channel minimums.
        let config = CONFIG
            .replace("on: [triggered,", "on: [escalated, triggered,")
            .replace("      email: [oncall@example.com]\n", "      email: [oncall@example.com]\n      sms: [\"+15555550111\"]\n      min_severity_by_channel: {sms: critical}\n");
        let setup = Setup::new(&config);
        block_on(async {
            setup.open_at("disk", at(0), Severity::Error).await;
            setup.escalation().run_due(at(5)).await.expect("tick");
            assert_eq!(
                setup.escalation_jobs(),
                [(Channel::Email, "oncall@example.com".to_owned())]
            );
        });
    }

    #[test]
    fn an_escalation_due_in_maintenance_waits_for_its_end_plus_its_delay() {
        let setup = Setup::new(CONFIG);
        block_on(async {
            let incident = setup.open("disk", at(0)).await;
            let window =
                crate::maintenance::MaintenanceWindow::new(incident.service.clone(), at(2), at(30), None, "test")
                    .expect("a window");
            crate::ports::MaintenanceStore::put_window(setup.store.as_ref(), &window)
                .await
                .expect("put");
            let escalation = setup.escalation();
            assert_eq!(escalation.run_due(at(5)).await.expect("tick").held, 1);
            assert_eq!(escalation.run_due(at(34)).await.expect("tick").escalated, 0);
            assert_eq!(escalation.run_due(at(35)).await.expect("tick").escalated, 1);
            assert_eq!(setup.escalation_jobs().len(), 1);
        });
    }
}
