//! Dispatch: a committed transition and its service's policy become
//! notification jobs on the per-channel queues; notify renders and delivers
//! one job.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::incident::Transition;
use crate::notify::{plan, Channel, NotificationJob, Notifier, NotifyError, Receipt};
use crate::ports::{BackendError, ConfigStore, NotificationQueue, Timeline};
use crate::render::{render, RenderContext};
use crate::timeline::{DeliveryResult, TimelineEntry};

#[derive(Clone)]
pub struct DispatchService {
    config: Arc<dyn ConfigStore>,
    queue: Arc<dyn NotificationQueue>,
    maintenance: Option<Arc<dyn crate::ports::MaintenanceStore>>,
    timeline: Option<Arc<dyn Timeline>>,
    escalations: Option<Arc<dyn crate::escalation::Escalations>>,
}

impl DispatchService {
    pub fn new(config: Arc<dyn ConfigStore>, queue: Arc<dyn NotificationQueue>) -> Self {
        Self {
            config,
            queue,
            maintenance: None,
            timeline: None,
            escalations: None,
        }
    }

    /// Records the first escalation level of each triggered transition whose
    /// service has escalation levels (crate::escalation).
    pub fn with_escalations(mut self, escalations: Arc<dyn crate::escalation::Escalations>) -> Self {
        self.escalations = Some(escalations);
        self
    }

    /// Holds the notifications of services in a maintenance window
    /// (crate::maintenance).
    pub fn with_maintenance(mut self, maintenance: Arc<dyn crate::ports::MaintenanceStore>) -> Self {
        self.maintenance = Some(maintenance);
        self
    }

    /// Records held and released notifications in the incident's timeline.
    pub fn with_timeline(mut self, timeline: Arc<dyn Timeline>) -> Self {
        self.timeline = Some(timeline);
        self
    }

    /// Plans and enqueues the jobs of one transition; returns how many. Jobs
    /// have stable ids, so dispatching a transition twice enqueues them once.
    #[tracing::instrument(skip_all, fields(incident = %transition.incident.id, transition = %transition.kind))]
    pub async fn dispatch(&self, transition: &Transition, now: DateTime<Utc>) -> Result<usize, BackendError> {
        let held = self.held(transition, now).await?;
        let Some(service) = self.config.service(&transition.incident.service).await? else {
            // The service was removed from config after the incident opened:
            // nobody is left to tell, which is worth a warning, not a retry.
            tracing::warn!(service = %transition.incident.service, "no such service; nothing to notify");
            return Ok(0);
        };
        // Held or not: an escalation due during maintenance waits for its end.
        if let Some(escalations) = &self.escalations {
            if let Some(first) = crate::escalation::first_level(transition, &service) {
                escalations.schedule(&first).await?;
            }
        }
        if held {
            return Ok(0);
        }
        let jobs = plan(transition, &service, now);
        if !jobs.is_empty() {
            self.queue.enqueue(&jobs).await?;
        }
        tracing::info!(jobs = jobs.len(), "transition dispatched");
        Ok(jobs.len())
    }

    /// Whether a maintenance window holds the transition: one of its
    /// service's is active at `now` and the transition happened during that
    /// maintenance period, whose release will send it
    /// (crate::maintenance::holding_window). A late dispatch may notify
    /// twice, never not at all.
    async fn held(&self, transition: &Transition, now: DateTime<Utc>) -> Result<bool, BackendError> {
        let Some(store) = &self.maintenance else {
            return Ok(false);
        };
        let Some(window) = crate::maintenance::holding_window(store.as_ref(), transition, now).await? else {
            return Ok(false);
        };
        tracing::info!(window = %window.id, until = %window.end, "notifications held: maintenance window");
        let entry = crate::maintenance::held_entry(transition, &window, now);
        self.note(entry).await;
        Ok(true)
    }

    /// A timeline that cannot be written loses an entry, not the dispatch.
    async fn note(&self, entry: TimelineEntry) {
        let Some(timeline) = &self.timeline else { return };
        if let Err(error) = timeline.record(&entry).await {
            tracing::warn!(error = %error, "the maintenance entry was not recorded in the timeline");
        }
    }

    /// One triggered notification of `incident`, opened during the
    /// maintenance period that ended with `window` and still open
    /// (crate::maintenance), never held. The job ids name the window and the
    /// incident, so a release run twice enqueues them once.
    #[tracing::instrument(skip_all, fields(incident = %incident.id, window = %window.id))]
    pub async fn dispatch_release(
        &self,
        incident: &crate::incident::Incident,
        window: &crate::maintenance::MaintenanceWindow,
        now: DateTime<Utc>,
    ) -> Result<usize, BackendError> {
        let Some(service) = self.config.service(&incident.service).await? else {
            tracing::warn!(service = %incident.service, "no such service; nothing to notify");
            return Ok(0);
        };
        let transition = Transition {
            kind: crate::incident::TransitionKind::Triggered,
            incident: incident.clone(),
            event_id: crate::event::EventId::new(format!("maintenance:{}", window.id)),
        };
        let mut jobs = plan(&transition, &service, now);
        for job in &mut jobs {
            job.id = format!("maintenance:{}:{}:{}:{}", window.id, incident.id, job.channel, job.to);
        }
        if !jobs.is_empty() {
            self.queue.enqueue(&jobs).await?;
        }
        let entry = crate::maintenance::released_entry(incident, window, now);
        self.note(entry).await;
        tracing::info!(jobs = jobs.len(), "held notifications released");
        Ok(jobs.len())
    }
}

#[derive(Clone)]
pub struct NotifyService {
    notifiers: HashMap<Channel, Arc<dyn Notifier>>,
    context: RenderContext,
    timeline: Option<Arc<dyn Timeline>>,
    throttle: Option<crate::throttle::Throttle>,
    metrics: Option<crate::metrics::Metrics>,
    contacts: Option<Arc<dyn crate::contacts::ContactHealth>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("no notifier is configured for {0}")]
    NoNotifier(Channel),
    #[error(transparent)]
    Notify(#[from] NotifyError),
}

impl NotifyService {
    pub fn new(notifiers: Vec<Arc<dyn Notifier>>, context: RenderContext) -> Self {
        Self {
            notifiers: notifiers.into_iter().map(|n| (n.channel(), n)).collect(),
            context,
            timeline: None,
            throttle: None,
            metrics: None,
            contacts: None,
        }
    }

    /// Email to an address SES reported as bouncing permanently or
    /// complaining is not sent; the timeline says so (crate::contacts).
    pub fn with_contacts(mut self, contacts: Arc<dyn crate::contacts::ContactHealth>) -> Self {
        self.contacts = Some(contacts);
        self
    }

    /// Why `job`'s recipient must not be mailed, if it must not. A record
    /// that cannot be read does not stop a page: it is sent.
    async fn suppressed(&self, job: &NotificationJob) -> Option<String> {
        let contacts = self.contacts.as_ref().filter(|_| job.channel == Channel::Email)?;
        let address = crate::config::EmailAddress::parse(&job.to.to_lowercase()).ok()?;
        match contacts.contact(&address).await {
            Ok(state) => state?.suppression_reason(),
            Err(error) => {
                tracing::warn!(error = %error, "the contact's bounce record could not be read: sending anyway");
                None
            }
        }
    }

    /// Holds what goes over a recipient's limits for one bundle message
    /// (crate::throttle); [`NotifyService::send_bundles`] sends them.
    pub fn with_throttle(mut self, throttle: crate::throttle::Throttle) -> Self {
        self.throttle = Some(throttle);
        self
    }

    /// Counts throttled jobs (NotificationsThrottled).
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Records every delivery attempt in its incident's timeline.
    pub fn with_timeline(mut self, timeline: Arc<dyn Timeline>) -> Self {
        self.timeline = Some(timeline);
        self
    }

    /// Delivers `job`; `attempt` counts from 1 (the queue's receive count).
    #[tracing::instrument(skip_all, fields(incident = %job.incident.id, channel = %job.channel, attempt = attempt))]
    pub async fn deliver(&self, job: &NotificationJob, attempt: u32) -> Result<Receipt, DeliveryError> {
        self.deliver_at(job, attempt, Utc::now()).await
    }

    /// As [`NotifyService::deliver`], with the throttle's clock given. A job
    /// the throttle holds is not sent, and reported delivered: its bundle
    /// will tell. Retries are not counted again: their first attempt was.
    pub async fn deliver_at(
        &self,
        job: &NotificationJob,
        attempt: u32,
        now: DateTime<Utc>,
    ) -> Result<Receipt, DeliveryError> {
        if let Some(throttle) = self.throttle.as_ref().filter(|_| attempt <= 1) {
            if throttle.admit(job, now).await == crate::throttle::Verdict::Suppress {
                tracing::info!("throttled: held for the recipient's bundle");
                if let Some(metrics) = &self.metrics {
                    metrics.notification_throttled(now, job.channel);
                }
                let entry = TimelineEntry::of_delivery(job, attempt, DeliveryResult::Bundled, now);
                self.write(&entry).await;
                return Ok(Receipt::held());
            }
        }
        if let Some(reason) = self.suppressed(job).await {
            tracing::info!(%reason, "not sent: the recipient is suppressed");
            let entry = TimelineEntry::of_delivery(job, attempt, DeliveryResult::Suppressed { reason }, now);
            self.write(&entry).await;
            return Ok(Receipt::held());
        }
        let result = match self.notifiers.get(&job.channel) {
            Some(notifier) => notifier
                .deliver(job, &render(job, &self.context))
                .await
                .map_err(DeliveryError::from),
            None => Err(DeliveryError::NoNotifier(job.channel)),
        };
        self.record(job, attempt, &result).await;
        result
    }

    /// A timeline that cannot be written loses an entry, not the delivery:
    /// failing here would send the message again on the retry.
    async fn record(&self, job: &NotificationJob, attempt: u32, result: &Result<Receipt, DeliveryError>) {
        let Some(timeline) = &self.timeline else { return };
        let outcome = match result {
            Ok(receipt) => DeliveryResult::Delivered {
                reference: receipt.reference.clone(),
            },
            Err(error) => DeliveryResult::Failed {
                reason: error.to_string(),
                will_retry: matches!(error, DeliveryError::Notify(NotifyError::Transient { .. })),
            },
        };
        let entry = TimelineEntry::of_delivery(job, attempt, outcome, Utc::now());
        if let Err(error) = timeline.record(&entry).await {
            tracing::warn!(error = %error, "the delivery attempt was not recorded in the timeline");
        }
    }

    async fn write(&self, entry: &TimelineEntry) {
        let Some(timeline) = &self.timeline else { return };
        if let Err(error) = timeline.record(entry).await {
            tracing::warn!(error = %error, "the throttle entry was not recorded in the timeline");
        }
    }

    /// Sends, for every recipient whose windows have room at `now`, ONE
    /// message for everything its throttle held, then forgets those; the
    /// scheduler calls it every tick. Returns how many bundles were sent. A
    /// bundle that fails stays for the next tick.
    #[tracing::instrument(skip_all)]
    pub async fn send_bundles(&self, now: DateTime<Utc>) -> Result<usize, BackendError> {
        let Some(throttle) = &self.throttle else { return Ok(0) };
        let mut sent = 0;
        for bundle in throttle.due_bundles(now).await? {
            let (Some(job), Some(notifier)) = (bundle.job(now), self.notifiers.get(&bundle.channel)) else {
                continue;
            };
            let message = match bundle.channel {
                Channel::Sms => crate::render::sms::render_bundle(&bundle.counts()),
                other => {
                    tracing::warn!(channel = %other, "no bundle message for this channel");
                    continue;
                }
            };
            match notifier.deliver(&job, &message).await {
                Ok(receipt) => {
                    throttle.sent(&bundle).await?;
                    sent += 1;
                    let mut seen = std::collections::HashSet::new();
                    for item in bundle.items.iter().filter(|i| seen.insert(i.incident.clone())) {
                        let mut each = item.job.clone();
                        each.id = format!("{}:{}", job.id, item.incident);
                        let outcome = DeliveryResult::Delivered {
                            reference: receipt.reference.clone(),
                        };
                        self.write(&TimelineEntry::of_delivery(&each, 1, outcome, now)).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(channel = %bundle.channel, error = %error, "the bundle was not sent; retried at the next tick");
                }
            }
        }
        Ok(sent)
    }
}
