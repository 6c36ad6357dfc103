//! The whole pipeline in one process: the HTTP router, and the processor,
//! dispatcher and notifiers as tasks draining the store's queues, each the
//! local twin of a Lambda function behind an SQS queue.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tocsin_core::config::{Catalog, SlackDelivery};
use tocsin_core::dispatch::{DeliveryError, DispatchService, NotifyService};
use tocsin_core::event::Event;
use tocsin_core::heartbeat::HeartbeatService;
use tocsin_core::incident::Transition;
use tocsin_core::ingest::IngestService;
use tocsin_core::notify::{Channel, NotificationJob, Notifier, NotifyError};
use tocsin_core::ports::{BackendError, ConfigStore, IncidentStore};
use tocsin_core::process::ProcessService;
use tocsin_core::render::RenderContext;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::notifiers::{Outbox, OutboxNotifier, RecordedNotifier};
use crate::store::{Delivery, Failed, QueueName, Store};
use tocsin_api::{router, ApiState};
use tocsin_outbound::slack::SlackNotifier;

/// How often a queue is polled when no enqueue woke its worker (for
/// messages whose visibility timeout or retry delay ran out).
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// As SQS's maxReceiveCount: after this many failed attempts a message goes
/// to the dead-letter store.
const MAX_RECEIVES: u32 = 5;
const VISIBILITY: Duration = Duration::from_secs(30);
/// Messages received at once (SQS stops at 10; here more messages handled
/// together share more group commits: 50 drains a backlog of events about
/// a third faster than 10).
const BATCH: usize = 50;

pub struct StackOptions {
    pub catalog: Catalog,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Print one line per delivery to stdout.
    pub echo_deliveries: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("cannot open the data folder")]
    Store(#[source] BackendError),
    #[error("cannot open the outbox {path}")]
    Outbox {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
    #[error("cannot build the HTTPS client for SNS certificates and confirmations")]
    SnsClient(#[source] reqwest::Error),
    #[error("cannot read settings.link_signing_secret")]
    LinkSecret(#[source] tocsin_core::secrets::SecretError),
    #[error("settings.link_signing_secret is unusable")]
    ShortLinkSecret(#[source] tocsin_core::links::ShortSecret),
    #[error("cannot read the secret of webhook {index} of service {service}")]
    WebhookSecret {
        service: String,
        index: usize,
        #[source]
        source: tocsin_core::secrets::SecretError,
    },
}

/// A started stack: its address, and a handle to stop it.
pub struct RunningStack {
    pub addr: SocketAddr,
    pub store: Store,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<Result<(), StackError>>,
}

impl RunningStack {
    /// Stops accepting requests, lets every worker finish the message in
    /// hand, and waits for all of them.
    pub async fn stop(mut self) -> Result<(), StackError> {
        let _ = self.shutdown.send(true);
        self.wait().await
    }

    /// Runs until a task fails or the stack is stopped.
    pub async fn wait(&mut self) -> Result<(), StackError> {
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error),
                Err(panic) => tracing::error!(%panic, "a stack task panicked"),
            }
        }
        Ok(())
    }

    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

pub async fn start(options: StackOptions) -> Result<RunningStack, StackError> {
    // Webhook secrets are read again at each send (a rotated file or
    // variable is picked up), but one the local stack cannot read at all
    // (a Secrets Manager name, a missing file) is refused here rather than
    // dead-lettering every delivery.
    for service in &options.catalog.services {
        for (index, hook) in service.policy.webhooks.iter().enumerate() {
            if let Some(secret) = &hook.secret {
                secret.read_locally().map_err(|source| StackError::WebhookSecret {
                    service: service.id.to_string(),
                    index,
                    source,
                })?;
            }
        }
    }
    let store = Store::open(&options.data_dir).map_err(StackError::Store)?;
    let outbox_path = options.data_dir.join("outbox.jsonl");
    let outbox =
        Arc::new(
            Outbox::open(&outbox_path, options.echo_deliveries).map_err(|source| StackError::Outbox {
                path: outbox_path.clone(),
                source,
            })?,
        );

    // One-click acknowledge and resolve links (tocsin_core::links): signed
    // in emails and SMS, verified by /act/{token}.
    let action_links = match &options.catalog.settings.link_signing_secret {
        None => None,
        Some(configured) => {
            let secret = configured.read_locally().map_err(StackError::LinkSecret)?;
            let signer = tocsin_core::links::ActionSigner::new(secret).map_err(StackError::ShortLinkSecret)?;
            Some(match options.catalog.settings.link_ttl_hours {
                Some(hours) => signer.with_ttl_hours(hours),
                None => signer,
            })
        }
    };
    let context = RenderContext {
        public_url: options.catalog.settings.public_url.clone(),
        action_links: action_links.clone(),
    };
    // CloudWatch through SNS: certificates from settings.sns_certificates,
    // or fetched from SNS (and subscriptions confirmed) over HTTPS.
    let sns = tocsin_outbound::sns::sns_support(options.catalog.settings.sns_certificates.clone())
        .map_err(StackError::SnsClient)?;
    let slack: Arc<dyn Notifier> = match &options.catalog.settings.slack {
        Some(SlackDelivery::IncomingWebhook { url }) => Arc::new(RecordedNotifier::new(
            Arc::new(SlackNotifier::incoming_webhook(url.clone())),
            outbox.clone(),
        )),
        // Threads an incident's transitions under its first message, kept
        // in the store across restarts. TOCSIN_SLACK_API_URL replaces
        // https://slack.com/api, as for the Lambda functions (tests only).
        Some(SlackDelivery::Bot { token }) => {
            let api_base = std::env::var("TOCSIN_SLACK_API_URL")
                .ok()
                .filter(|url| !url.trim().is_empty());
            let notifier = SlackNotifier::bot_with_api_base(
                token.clone(),
                api_base.as_deref().unwrap_or(SlackNotifier::DEFAULT_API_BASE),
            )
            .with_threads(Arc::new(store.clone()));
            Arc::new(RecordedNotifier::new(Arc::new(notifier), outbox.clone()))
        }
        None => Arc::new(OutboxNotifier::new(Channel::Slack, outbox.clone())),
    };
    let mut notifiers: Vec<Arc<dyn Notifier>> = vec![
        Arc::new(OutboxNotifier::new(Channel::Email, outbox.clone())),
        Arc::new(OutboxNotifier::new(Channel::Sms, outbox.clone())),
        slack,
    ];

    // The config file's heartbeats, with the state of their beats kept
    // across restarts.
    store
        .set_heartbeats(&options.catalog.heartbeats)
        .await
        .map_err(StackError::Store)?;
    let schedule = scheduler_period(options.catalog.heartbeats.iter().map(|h| h.interval_seconds).min());
    let heartbeats = HeartbeatService::new(Arc::new(store.clone()), Arc::new(store.clone()));
    // The config's maintenance windows (tocsin_core::maintenance); a
    // restart keeps what was already released.
    for window in &options.catalog.maintenance {
        tocsin_core::maintenance::apply_window(&store, window, Utc::now())
            .await
            .map_err(StackError::Store)?;
    }
    // The Slack app's buttons and slash command, once its signing secret is
    // given.
    let slack_answers = options.catalog.settings.slack_signing_secret.clone().map(|secret| {
        tocsin_core::slack::SlackInteractions::new(Arc::new(store.clone()), Arc::new(store.clone()), secret)
    });
    // The config file, then the integrations `tocsin integrations --data`
    // stores, read per request so that a change shows without a restart.
    let throttle = options.catalog.settings.throttle.clone();
    let config: Arc<dyn ConfigStore> = Arc::new(crate::layered::LayeredConfig::new(options.catalog, store.clone()));
    // Outgoing webhooks are posted for real, to the URLs of the services'
    // config, and listed in the outbox like every other message.
    notifiers.push(Arc::new(RecordedNotifier::new(
        Arc::new(tocsin_outbound::webhook::WebhookNotifier::new(config.clone())),
        outbox.clone(),
    )));
    let incidents: Arc<dyn IncidentStore> = Arc::new(store.clone());
    let process = ProcessService::new(incidents.clone());
    let dispatch = DispatchService::new(config.clone(), Arc::new(store.clone()))
        .with_maintenance(Arc::new(store.clone()))
        .with_timeline(Arc::new(store.clone()))
        .with_escalations(Arc::new(store.clone()));
    // notify.escalation (tocsin_core::escalation): pending levels live in the
    // store, so they survive a restart; the scheduler fires the due ones.
    let escalation = tocsin_core::escalation::EscalationService::new(
        Arc::new(store.clone()),
        incidents.clone(),
        config.clone(),
        Arc::new(store.clone()),
    )
    .with_timeline(Arc::new(store.clone()))
    .with_maintenance(Arc::new(store.clone()));
    // Its own dispatcher, without the hold: a release is never held.
    let maintenance = tocsin_core::maintenance::MaintenanceService::new(
        Arc::new(store.clone()),
        incidents.clone(),
        DispatchService::new(config.clone(), Arc::new(store.clone())).with_timeline(Arc::new(store.clone())),
    );
    // Email skips addresses suppressed in the data folder (`tocsin contacts
    // suppress --data`), as notify-email does with SES's bounces.
    let mut notify = NotifyService::new(notifiers, context)
        .with_timeline(Arc::new(store.clone()))
        .with_contacts(Arc::new(store.clone()));
    // settings.throttle (tocsin_core::throttle): bundles go out on the scheduler's tick.
    if !throttle.is_empty() {
        notify = notify.with_throttle(tocsin_core::throttle::Throttle::new(Arc::new(store.clone()), throttle));
    }
    let ingest = IngestService::new(config.clone(), Arc::new(store.clone()), incidents.clone())
        .with_sns(sns)
        .with_rate_limiter(Arc::new(store.clone()))
        .with_stats(Arc::new(store.clone()));
    let health: Arc<dyn tocsin_core::ports::IngestStats> = Arc::new(store.clone());
    let api = ApiState {
        process: process.clone(),
        incidents,
        timeline: Arc::new(store.clone()),
        config,
    };

    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|source| StackError::Listen {
            addr: options.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StackError::Listen {
        addr: options.listen,
        source,
    })?;

    let (shutdown, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(scheduler(
        heartbeats.clone(),
        maintenance,
        escalation,
        notify.clone(),
        schedule,
        stopped.clone(),
    ));
    let heartbeats_api = heartbeats;
    let windows: Arc<dyn tocsin_core::ports::MaintenanceStore> = Arc::new(store.clone());
    {
        let mut stopped = stopped.clone();
        tasks.spawn(async move {
            let app = tocsin_api::with_ingest_health(router(ingest, api), health);
            let app = tocsin_api::with_maintenance(app, windows);
            let app = match action_links {
                Some(signer) => tocsin_api::with_action_links(app, signer),
                None => app,
            };
            let app = match slack_answers {
                Some(slack) => tocsin_api::with_slack(app, slack),
                None => app,
            };
            axum::serve(listener, tocsin_api::with_heartbeats(app, heartbeats_api))
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await
                .map_err(StackError::Serve)
        });
    }
    tasks.spawn(drain(store.clone(), QueueName::Events, stopped.clone(), {
        let process = process.clone();
        move |delivery| {
            let process = process.clone();
            async move { apply_event(&process, &delivery).await }
        }
    }));
    tasks.spawn(drain(store.clone(), QueueName::Transitions, stopped.clone(), {
        let dispatch = dispatch.clone();
        move |delivery| {
            let dispatch = dispatch.clone();
            async move { dispatch_transition(&dispatch, &delivery).await }
        }
    }));
    tasks.spawn(drain(store.clone(), QueueName::Notifications, stopped, {
        let notify = notify.clone();
        move |delivery| {
            let notify = notify.clone();
            async move { deliver_job(&notify, &delivery).await }
        }
    }));

    Ok(RunningStack {
        addr,
        store,
        shutdown,
        tasks,
    })
}

/// How often the scheduler runs: a quarter of the shortest heartbeat
/// interval, so a miss is noticed within a quarter of it, at least every
/// second.
fn scheduler_period(shortest_heartbeat_seconds: Option<u32>) -> Duration {
    let quarter = shortest_heartbeat_seconds.map_or(Duration::from_secs(1), |s| Duration::from_secs(u64::from(s)) / 4);
    quarter.clamp(Duration::from_millis(250), Duration::from_secs(1))
}

/// The local twin of the scheduled function (functions/scheduler): what
/// runs on a timer rather than on a message.
async fn scheduler(
    heartbeats: HeartbeatService,
    maintenance: tocsin_core::maintenance::MaintenanceService,
    escalation: tocsin_core::escalation::EscalationService,
    notify: NotifyService,
    period: Duration,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), StackError> {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stopped.wait_for(|stop| *stop) => return Ok(()),
        }
        if let Err(error) = heartbeats.check(Utc::now()).await {
            tracing::error!(error = %error_chain(&error), "heartbeat check failed; retried at the next tick");
        }
        // Ended maintenance windows: their still-open incidents notified once.
        if let Err(error) = maintenance.release_ended(Utc::now()).await {
            tracing::error!(error = %error_chain(&error), "maintenance release failed; retried at the next tick");
        }
        // Unacknowledged incidents whose escalation level is due.
        if let Err(error) = escalation.run_due(Utc::now()).await {
            tracing::error!(error = %error_chain(&error), "escalation failed; retried at the next tick");
        }
        // Throttled notifications: one bundle per recipient whose limits have room.
        if let Err(error) = notify.send_bundles(Utc::now()).await {
            tracing::error!(error = %error_chain(&error), "sending throttle bundles failed; retried at the next tick");
        }
    }
}

/// How handling one message ended.
enum Handled {
    Done,
    /// Try again later (after the given delay, or the default backoff).
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// Will never succeed: straight to the dead-letter store.
    Poison {
        error: String,
    },
}

async fn apply_event(process: &ProcessService, delivery: &Delivery) -> Handled {
    let event: Event = match serde_json::from_str(&delivery.body) {
        Ok(event) => event,
        Err(error) => {
            return Handled::Poison {
                error: format!("not an event: {error}"),
            }
        }
    };
    match process.apply(&event, Utc::now()).await {
        Ok(_) => Handled::Done,
        Err(error) => Handled::Retry {
            error: error_chain(&error),
            after: None,
        },
    }
}

async fn dispatch_transition(dispatch: &DispatchService, delivery: &Delivery) -> Handled {
    let transition: Transition = match serde_json::from_str(&delivery.body) {
        Ok(transition) => transition,
        Err(error) => {
            return Handled::Poison {
                error: format!("not a transition: {error}"),
            }
        }
    };
    match dispatch.dispatch(&transition, Utc::now()).await {
        Ok(_) => Handled::Done,
        Err(error) => Handled::Retry {
            error: error_chain(&error),
            after: None,
        },
    }
}

async fn deliver_job(notify: &NotifyService, delivery: &Delivery) -> Handled {
    let job: NotificationJob = match serde_json::from_str(&delivery.body) {
        Ok(job) => job,
        Err(error) => {
            return Handled::Poison {
                error: format!("not a notification job: {error}"),
            }
        }
    };
    match notify.deliver(&job, delivery.receive_count).await {
        Ok(_) => Handled::Done,
        Err(DeliveryError::Notify(NotifyError::Transient { retry_after_secs, .. })) if retry_after_secs.is_some() => {
            Handled::Retry {
                error: "throttled by the channel".into(),
                after: retry_after_secs.map(Duration::from_secs),
            }
        }
        Err(error @ DeliveryError::Notify(NotifyError::Transient { .. })) => Handled::Retry {
            error: error_chain(&error),
            after: None,
        },
        Err(error) => Handled::Poison {
            error: error_chain(&error),
        },
    }
}

/// An error and its causes on one line, for logs and the terminal.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Exponential backoff between attempts, like an SQS redrive with growing
/// visibility timeouts: 1 s, 2 s, 4 s, 8 s …
fn backoff(receive_count: u32) -> Duration {
    Duration::from_secs(1u64 << receive_count.saturating_sub(1).min(6))
}

/// Drains one queue until shutdown: receive a batch, handle its messages,
/// delete what succeeded, and retry or dead-letter what failed. A batch
/// holds at most one message per FIFO group (only a group's oldest message
/// is receivable), so its messages are independent and are handled
/// together: their writes then share the store's group commits, where one
/// at a time paid a transaction each.
async fn drain<H, F>(
    store: Store,
    queue: QueueName,
    mut stopped: watch::Receiver<bool>,
    handle: H,
) -> Result<(), StackError>
where
    H: Fn(Delivery) -> F + Send + 'static,
    F: Future<Output = Handled> + Send + 'static,
{
    let wakeup = store.wakeup(queue);
    loop {
        if *stopped.borrow() {
            return Ok(());
        }
        let batch = match store.receive(queue, BATCH, VISIBILITY).await {
            Ok(batch) => batch,
            Err(error) => {
                tracing::error!(queue = queue.as_str(), error = %error_chain(&error), "cannot receive");
                Vec::new()
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = wakeup.notified() => {}
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = stopped.wait_for(|stop| *stop) => return Ok(()),
            }
            continue;
        }
        let mut handling = JoinSet::new();
        for delivery in batch {
            let span = tracing::info_span!(
                "message",
                queue = queue.as_str(),
                id = delivery.id,
                attempt = delivery.receive_count
            );
            let handled = handle(delivery.clone()).instrument(span);
            let store = store.clone();
            handling.spawn(async move { settle(&store, queue, &delivery, handled.await).await });
        }
        while let Some(joined) = handling.join_next().await {
            if let Err(panic) = joined {
                // The message stays invisible until its timeout, then comes back.
                tracing::error!(queue = queue.as_str(), %panic, "a message handler panicked");
            }
        }
    }
}

/// Deletes a handled message, or fails it for a retry or the dead letters.
async fn settle(store: &Store, queue: QueueName, delivery: &Delivery, outcome: Handled) {
    let result = match outcome {
        Handled::Done => store.delete(delivery).await.map(|_| ()),
        Handled::Retry { error, after } => {
            let after = after.unwrap_or_else(|| backoff(delivery.receive_count));
            store
                .fail(delivery, &error, MAX_RECEIVES, after)
                .await
                .map(|failed| report(queue, delivery, &error, failed))
        }
        Handled::Poison { error } => store
            .fail(delivery, &error, delivery.receive_count, Duration::ZERO)
            .await
            .map(|failed| report(queue, delivery, &error, failed)),
    };
    if let Err(error) = result {
        // The message stays invisible until its timeout, then comes back.
        tracing::error!(error = %error_chain(&error), "cannot settle message");
    }
}

fn report(queue: QueueName, delivery: &Delivery, error: &str, failed: Failed) {
    match failed {
        Failed::Retrying => tracing::warn!(queue = queue.as_str(), id = delivery.id, error, "will retry"),
        Failed::DeadLettered => {
            tracing::error!(
                queue = queue.as_str(),
                id = delivery.id,
                error,
                "moved to the dead-letter store"
            )
        }
    }
}
