//! Dispatch: a committed transition and its service's policy become
//! notification jobs on the per-channel queues; notify renders and delivers
//! one job.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::incident::Transition;
use crate::notify::{plan, Channel, NotificationJob, Notifier, NotifyError, Receipt};
use crate::ports::{BackendError, ConfigStore, NotificationQueue};
use crate::render::{render, RenderContext};

#[derive(Clone)]
pub struct DispatchService {
    config: Arc<dyn ConfigStore>,
    queue: Arc<dyn NotificationQueue>,
}

impl DispatchService {
    pub fn new(config: Arc<dyn ConfigStore>, queue: Arc<dyn NotificationQueue>) -> Self {
        Self { config, queue }
    }

    /// Plans and enqueues the jobs of one transition; returns how many. Jobs
    /// have stable ids, so dispatching a transition twice enqueues them once.
    #[tracing::instrument(skip_all, fields(incident = %transition.incident.id, transition = %transition.kind))]
    pub async fn dispatch(&self, transition: &Transition, now: DateTime<Utc>) -> Result<usize, BackendError> {
        let Some(service) = self.config.service(&transition.incident.service).await? else {
            // The service was removed from config after the incident opened:
            // nobody is left to tell, which is worth a warning, not a retry.
            tracing::warn!(service = %transition.incident.service, "no such service; nothing to notify");
            return Ok(0);
        };
        let jobs = plan(transition, &service, now);
        if !jobs.is_empty() {
            self.queue.enqueue(&jobs).await?;
        }
        tracing::info!(jobs = jobs.len(), "transition dispatched");
        Ok(jobs.len())
    }
}

#[derive(Clone)]
pub struct NotifyService {
    notifiers: HashMap<Channel, Arc<dyn Notifier>>,
    context: RenderContext,
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
        }
    }

    #[tracing::instrument(skip_all, fields(job = %job.id, channel = %job.channel, incident = %job.incident.id))]
    pub async fn deliver(&self, job: &NotificationJob) -> Result<Receipt, DeliveryError> {
        let notifier = self
            .notifiers
            .get(&job.channel)
            .ok_or(DeliveryError::NoNotifier(job.channel))?;
        let message = render(job, &self.context);
        Ok(notifier.deliver(job, &message).await?)
    }
}
