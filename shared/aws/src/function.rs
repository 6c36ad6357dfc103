//! What every Lambda function's main.rs runs: tracing, typed config from
//! the environment (refused at init, naming the variable), SDK clients built
//! once per container, then the runtime loop with the handler.

use std::sync::Arc;

use chrono::Utc;
use lambda_http::{Body, Request, RequestExt, Response};
use lambda_runtime::LambdaEvent;
use tocsin_core::heartbeat::HeartbeatService;
use tocsin_core::ingest::{IngestRequest, IngestService};
use tocsin_core::process::ProcessService;
use tocsin_core::providers::{cloudwatch, email, Provider, ProviderKind, Providers};

use crate::dynamodb::DynamoStore;
use crate::sqs::SqsEventQueue;

/// A required environment variable that is missing or empty.
#[derive(Debug, thiserror::Error)]
#[error("the environment variable {0} must be set (template.yaml sets it)")]
pub struct MissingVariable(pub &'static str);

/// The notification throttle's settings, refused at init when malformed.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct BadThrottle {
    pub variable: String,
    pub reason: String,
}

/// TOCSIN_THROTTLE_SMS and TOCSIN_THROTTLE_SMS_CRITICAL_BYPASS
/// (tocsin_core::throttle::settings_from_env).
pub fn throttle_settings_from_env() -> Result<tocsin_core::throttle::ThrottleSettings, BadThrottle> {
    let sms = std::env::var("TOCSIN_THROTTLE_SMS").ok();
    let bypass = std::env::var("TOCSIN_THROTTLE_SMS_CRITICAL_BYPASS").ok();
    tocsin_core::throttle::settings_from_env(sms.as_deref(), bypass.as_deref())
        .map_err(|(variable, reason)| BadThrottle { variable, reason })
}

fn required(name: &'static str) -> Result<String, MissingVariable> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or(MissingVariable(name))
}

/// The table and queue every function that touches events needs.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// TOCSIN_TABLE: the DynamoDB table.
    pub table: String,
    /// TOCSIN_EVENTS_QUEUE_URL: the SQS FIFO events queue.
    pub events_queue_url: String,
}

impl EventsConfig {
    pub fn from_env() -> Result<Self, MissingVariable> {
        Ok(Self {
            table: required("TOCSIN_TABLE")?,
            events_queue_url: required("TOCSIN_EVENTS_QUEUE_URL")?,
        })
    }
}

/// Structured logs: JSON when the function's LoggingConfig asks for it
/// (AWS_LAMBDA_LOG_FORMAT), level from AWS_LAMBDA_LOG_LEVEL or RUST_LOG.
///
/// lambda_runtime's `init_default_subscriber` does the same through an
/// EnvFilter, whose regular expressions (for field-value directives no
/// function uses) were 0.16 MB of every zip. A `Targets` filter takes the
/// same `RUST_LOG` directives (`info`, `tocsin_aws=debug,warn`), and
/// AWS_LAMBDA_LOG_LEVEL is the level of every target they do not name.
pub fn init_tracing() {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let level = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<LevelFilter>().ok());
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref(), level("AWS_LAMBDA_LOG_LEVEL"));
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // Lambda stamps every line itself; CloudWatch shows no colours.
    let layer = tracing_subscriber::fmt::layer()
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .with_writer(std::io::stdout);
    let layer = if json { layer.json().boxed() } else { layer.boxed() };
    // A second call (a test that runs two functions) keeps the first.
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
}

/// The filter of `RUST_LOG`'s directives, with `level` (else INFO) for
/// every target they do not name; AWS_LAMBDA_LOG_LEVEL (`level`) wins over
/// a bare level in RUST_LOG, as in lambda_runtime. Directives that do not
/// parse are ignored, as EnvFilter's `from_env_lossy` does.
fn log_filter(
    rust_log: Option<&str>,
    level: Option<tracing_subscriber::filter::LevelFilter>,
) -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};

    let mut targets = Targets::new();
    let mut bare = None;
    for directive in rust_log
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        match directive.split_once('=') {
            Some((target, target_level)) => {
                if let Ok(target_level) = target_level.parse::<LevelFilter>() {
                    targets = targets.with_target(target.to_owned(), target_level);
                }
            }
            None => bare = directive.parse::<LevelFilter>().ok().or(bare),
        }
    }
    targets.with_default(level.or(bare).unwrap_or(LevelFilter::INFO))
}

/// An ingest-<provider> function: API Gateway HTTP API requests to one
/// provider endpoint.
pub async fn run_ingest(provider: &'static dyn Provider) -> Result<(), lambda_http::Error> {
    init_tracing();
    let sdk = crate::trust::function_sdk_config().await;
    serve_ingest(ingest_service(&sdk, provider)?.limited(&sdk), provider.kind()).await
}

/// The ingest-cloudwatch function: as [`run_ingest`], with SNS signature
/// checks and subscription confirmation. TOCSIN_SNS_CERTIFICATES names a
/// folder of trusted signing certificates, for accounts whose functions
/// cannot reach SNS's certificate URLs. Its own entry point, so that only
/// this function carries the outbound HTTPS client.
pub async fn run_ingest_cloudwatch() -> Result<(), lambda_http::Error> {
    init_tracing();
    let folder = optional("TOCSIN_SNS_CERTIFICATES").map(std::path::PathBuf::from);
    let sns = tocsin_outbound::sns::sns_support(folder)?;
    let sdk = crate::trust::function_sdk_config().await;
    let ingest = ingest_service(&sdk, &cloudwatch::CloudWatch)?
        .limited(&sdk)
        .with_sns(sns);
    serve_ingest(ingest, ProviderKind::CloudWatch).await
}

/// The ingest service on the table (integrations) and the events queue,
/// for the function's own provider alone.
fn ingest_service(sdk: &aws_config::SdkConfig, provider: &'static dyn Provider) -> Result<Ingest, MissingVariable> {
    let config = EventsConfig::from_env()?;
    let store = Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), config.table));
    // Counts each request's queued events for its metrics (crate::measured).
    let queue = Arc::new(crate::measured::CountingQueue::new(Arc::new(SqsEventQueue::new(
        aws_sdk_sqs::Client::new(sdk),
        config.events_queue_url,
    ))));
    let service = IngestService::serving(Providers::one(provider), store.clone(), queue, store.clone());
    Ok(Ingest { service, store })
}

/// An ingest service and the table it reads integrations from.
struct Ingest {
    service: IngestService,
    store: Arc<DynamoStore>,
}

impl Ingest {
    /// With each integration's rate limit counted in the table: for the
    /// HTTP endpoints, whose senders can back off on a 429. Deliveries AWS
    /// makes itself (SNS → Lambda, SES receipt rules) have no one to tell.
    /// Their requests are also counted for `GET /integrations/health`, and
    /// their signatures checked with integrations' secrets named in the
    /// config (secret: {secrets_manager: tocsin/…}), read when a request
    /// needs one and cached per container. SNS and SES deliveries are
    /// checked by SNS's signature or not at all, so their functions carry
    /// no Secrets Manager client.
    fn limited(self, sdk: &aws_config::SdkConfig) -> IngestService {
        let secrets = crate::secrets::AwsSecrets::new(aws_sdk_secretsmanager::Client::new(sdk));
        self.service
            .with_secrets(Arc::new(tocsin_core::secrets::CachedSecrets::new(Arc::new(secrets))))
            .with_rate_limiter(self.store.clone())
            .with_stats(self.store)
    }

    /// Without a rate limit, but counted for `GET /integrations/health`:
    /// for the deliveries AWS makes itself.
    fn counted(self) -> IngestService {
        self.service.with_stats(self.store)
    }
}

/// The ingest-email-ses function: SES receipt rules invoke it after storing
/// each message in TOCSIN_EMAIL_BUCKET under TOCSIN_EMAIL_PREFIX.
pub async fn run_ingest_email_ses() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let bucket = required("TOCSIN_EMAIL_BUCKET")?;
    let prefix = optional("TOCSIN_EMAIL_PREFIX").unwrap_or_default();
    let sdk = crate::trust::function_sdk_config().await;
    let ingest = ingest_service(&sdk, &email::Email)?.counted();
    // A custom endpoint (AWS_ENDPOINT_URL: moto, LocalStack, MinIO) serves
    // buckets by path; AWS itself by virtual host.
    let s3 = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(sdk.endpoint_url().is_some())
        .build();
    let store = crate::email::MessageStore {
        s3: aws_sdk_s3::Client::from_conf(s3),
        bucket,
        prefix,
    };
    let metrics = tocsin_core::metrics::Metrics::from_env(tocsin_core::metrics::function::INGEST);
    lambda_runtime::run(lambda_runtime::service_fn(
        |event: LambdaEvent<aws_lambda_events::event::ses::SimpleEmailEvent>| {
            let (ingest, store, metrics) = (ingest.clone(), store.clone(), metrics.clone());
            async move {
                let (received, queued) =
                    crate::measured::counting(crate::email::receive(&ingest, &store, event.payload)).await;
                // One document per invocation: accepted, or failed for Lambda to retry.
                let status = if received.is_ok() { 202 } else { 503 };
                let (provider, integration) = (ProviderKind::Email.as_str(), queued.integration.as_deref());
                metrics.ingest(Utc::now(), provider, status, queued.events, integration);
                let received = received.map_err(|error| {
                    tracing::error!(%error, "the invocation fails, for Lambda to retry");
                    lambda_runtime::Diagnostic {
                        error_type: "EmailError".to_owned(),
                        error_message: chain(&error),
                    }
                })?;
                tracing::info!(?received, "messages received");
                Ok::<_, lambda_runtime::Diagnostic>(serde_json::json!({
                    "accepted": received.accepted,
                    "refused": received.refused,
                    "dropped": received.dropped,
                }))
            }
        },
    ))
    .await
}

/// The ingest-cloudwatch-sns function: SNS topics that invoke it directly
/// (a Lambda subscription instead of the HTTPS endpoint). Each record goes to
/// the cloudwatch integration listing its topic; event ids derive from the
/// MessageId. Any failure fails the invocation: SNS and Lambda retry it, and
/// what still fails waits in the function's dead-letter queue.
pub async fn run_ingest_cloudwatch_sns() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let sdk = crate::trust::function_sdk_config().await;
    let ingest = ingest_service(&sdk, &cloudwatch::CloudWatch)?.counted();
    let metrics = tocsin_core::metrics::Metrics::from_env(tocsin_core::metrics::function::INGEST);
    lambda_runtime::run(lambda_runtime::service_fn(
        |event: LambdaEvent<aws_lambda_events::event::sns::SnsEvent>| {
            let (ingest, metrics) = (ingest.clone(), metrics.clone());
            async move {
                let mut accepted = 0;
                for record in event.payload.records {
                    let notification = tocsin_core::ingest::SnsNotification {
                        message_id: &record.sns.message_id,
                        topic_arn: &record.sns.topic_arn,
                        message: &record.sns.message,
                        received_at: Utc::now(),
                    };
                    let (result, queued) = crate::measured::counting(ingest.ingest_sns_direct(notification)).await;
                    let status = match &result {
                        Ok(answer) => answer.status(),
                        Err(error) => error.status(),
                    };
                    let provider = ProviderKind::CloudWatch.as_str();
                    let integration = queued.integration.as_deref();
                    metrics.ingest(Utc::now(), provider, status.as_u16(), queued.events, integration);
                    result.map_err(|error| {
                        tracing::error!(
                            message_id = %record.sns.message_id,
                            topic = %record.sns.topic_arn,
                            %error,
                            "the invocation fails, for SNS and Lambda to retry"
                        );
                        lambda_runtime::Diagnostic {
                            error_type: "IngestError".to_owned(),
                            error_message: format!("message {}: {}", record.sns.message_id, chain(&error)),
                        }
                    })?;
                    accepted += 1;
                }
                Ok::<_, lambda_runtime::Diagnostic>(serde_json::json!({ "accepted": accepted }))
            }
        },
    ))
    .await
}

/// An error and its sources, on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn serve_ingest(ingest: IngestService, provider: ProviderKind) -> Result<(), lambda_http::Error> {
    let metrics = tocsin_core::metrics::Metrics::from_env(tocsin_core::metrics::function::INGEST);
    lambda_http::run(lambda_http::service_fn(|request: Request| {
        let (ingest, metrics) = (ingest.clone(), metrics.clone());
        async move {
            Ok::<_, std::convert::Infallible>(
                crate::measured::answer_ingest_measured(&ingest, &metrics, provider, request).await,
            )
        }
    }))
    .await
}

/// One API Gateway request through the ingest service, answered with the
/// same status, headers and JSON as the local router.
pub async fn answer_ingest(ingest: &IngestService, provider: ProviderKind, request: Request) -> Response<Body> {
    let received_at = Utc::now();
    let query = request.uri().query().map(str::to_owned).or_else(|| {
        let params = request.query_string_parameters();
        (!params.is_empty()).then(|| {
            params
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                .collect::<Vec<_>>()
                .join("&")
        })
    });
    let (parts, body) = request.into_parts();
    let query = provider.query_with_path_key(parts.uri.path(), query.as_deref());
    let request = IngestRequest {
        provider,
        headers: &parts.headers,
        query: query.as_deref(),
        body: body.as_ref(),
        received_at,
    };
    // The function's second route, /integrations/<type>/preview.
    let answer = if parts.uri.path().ends_with("/preview") {
        ingest.preview(request).await
    } else {
        ingest.handle(request).await
    };
    let (parts, bytes) = answer.into_parts();
    let body = if bytes.is_empty() {
        Body::Empty
    } else {
        // Every answer body is JSON text.
        Body::Text(String::from_utf8_lossy(&bytes).into_owned())
    };
    Response::from_parts(parts, body)
}

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The api function: the incidents API and the health check (tocsin-api's
/// router, the same as locally) on the table. Acknowledge and resolve are
/// applied to the table directly, with the same conditional write as the
/// processor's.
pub async fn run_api() -> Result<(), lambda_http::Error> {
    init_tracing();
    let table = required("TOCSIN_TABLE")?;
    let sdk = crate::trust::function_sdk_config().await;
    let store = Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), table));
    let api = tocsin_api::ApiState {
        process: ProcessService::new(store.clone()),
        incidents: store.clone(),
        timeline: store.clone(),
        config: store.clone(),
    };
    let heartbeats = events_queue(&sdk).map(|queue| HeartbeatService::new(store.clone(), Arc::new(queue)));
    let app = tocsin_api::with_maintenance(tocsin_api::api_router(api), store.clone());
    let app = tocsin_api::with_ingest_health(app, store);
    // GET/POST /act/{token}: one-click links, when a signing secret is set.
    let app = match action_signer(&sdk).await? {
        Some(signer) => tocsin_api::with_action_links(app, signer),
        None => app,
    };
    let app = match heartbeats {
        // Beats (POST /heartbeat/{id}) enqueue the resolve of a missed
        // heartbeat; the template sets the queue for every function.
        Ok(heartbeats) => tocsin_api::with_heartbeats(app, heartbeats),
        Err(missing) => {
            tracing::warn!(%missing, "no events queue: POST /heartbeat/{{id}} answers 404");
            app
        }
    };
    let metrics = tocsin_core::metrics::Metrics::from_env(tocsin_core::metrics::function::API);
    // The incidents API's actions are counted by path (measured); a link's,
    // which answers a page whatever happened, where it is carried out.
    let app = tocsin_api::with_link_metrics(app, metrics.clone());
    lambda_http::run(lambda_http::service_fn(|request: Request| {
        let (app, metrics) = (app.clone(), metrics.clone());
        async move { crate::measured::answer_api_measured(app, &metrics, request).await }
    }))
    .await
}

/// The events queue (TOCSIN_EVENTS_QUEUE_URL).
fn events_queue(sdk: &aws_config::SdkConfig) -> Result<SqsEventQueue, MissingVariable> {
    Ok(SqsEventQueue::new(
        aws_sdk_sqs::Client::new(sdk),
        required("TOCSIN_EVENTS_QUEUE_URL")?,
    ))
}

/// The scheduler function, invoked every minute by an EventBridge schedule:
/// heartbeats overdue open incidents through the events queue (the
/// schedule's payload is not read).
pub async fn run_scheduler() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let config = EventsConfig::from_env()?;
    let sdk = crate::trust::function_sdk_config().await;
    let store = Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), config.table));
    let heartbeats = HeartbeatService::new(store.clone(), Arc::new(events_queue(&sdk)?));
    let bundles = throttle_bundles(&sdk, store.clone())?;
    let escalation = escalation_service(&sdk, store.clone())?;
    let maintenance = maintenance_release(&sdk, store)?;
    let metrics = tocsin_core::metrics::Metrics::from_env(tocsin_core::metrics::function::SCHEDULER);
    lambda_runtime::run(lambda_runtime::service_fn(|_: LambdaEvent<serde_json::Value>| {
        let (heartbeats, maintenance, metrics, bundles, escalation) = (
            heartbeats.clone(),
            maintenance.clone(),
            metrics.clone(),
            bundles.clone(),
            escalation.clone(),
        );
        async move {
            // A failed check is retried by the next minute's run anyway; one
            // failing does not keep the other from running.
            let now = Utc::now();
            let missed = heartbeats.check(now).await;
            let released = maintenance.release_ended(now).await;
            // Unacknowledged incidents whose escalation level is due.
            let escalated = escalation.run_due(now).await;
            // Throttled SMS (tocsin_core::throttle): one bundle per recipient
            // whose limits have room; what fails waits for the next run.
            let bundles_sent = match &bundles {
                Some(notify) => notify.send_bundles(now).await.unwrap_or_else(|error| {
                    tracing::error!(error = %error, "sending throttle bundles failed; retried next minute");
                    0
                }),
                None => 0,
            };
            // What succeeded is counted; a failure shows as the function's Errors.
            if let Ok(missed) = &missed {
                metrics.heartbeats_checked(Utc::now(), *missed);
            }
            if let Ok(released) = &released {
                metrics.maintenance_released(Utc::now(), released);
            }
            let (missed, released, escalated) = (missed?, released?, escalated?);
            Ok::<_, lambda_runtime::Error>(serde_json::json!({
                "heartbeats_missed": missed,
                "maintenance_windows_released": released.windows,
                "maintenance_incidents_notified": released.incidents,
                "escalations_notified": escalated.escalated,
                "escalations_cancelled": escalated.cancelled,
                "throttle_bundles_sent": bundles_sent,
            }))
        }
    }))
    .await
}

/// The sender of throttle bundles, when TOCSIN_THROTTLE_SMS throttles SMS:
/// SNS Publish, as notify-sms.
fn throttle_bundles(
    sdk: &aws_config::SdkConfig,
    store: Arc<DynamoStore>,
) -> Result<Option<tocsin_core::dispatch::NotifyService>, BadThrottle> {
    let settings = throttle_settings_from_env()?;
    if settings.is_empty() {
        return Ok(None);
    }
    let notifier = Arc::new(crate::notify::SnsSmsNotifier::new(
        aws_sdk_sns::Client::new(sdk),
        optional("TOCSIN_SMS_SENDER_ID"),
    ));
    let throttle = tocsin_core::throttle::Throttle::new(store.clone(), settings);
    Ok(Some(
        tocsin_core::dispatch::NotifyService::new(vec![notifier], Default::default())
            .with_timeline(store)
            .with_throttle(throttle),
    ))
}

/// The release of ended maintenance windows (tocsin_core::maintenance):
/// each still-open incident to the channel queues (TOCSIN_EMAIL_QUEUE_URL,
/// TOCSIN_SMS_QUEUE_URL, TOCSIN_SLACK_QUEUE_URL), as the dispatcher sends.
fn maintenance_release(
    sdk: &aws_config::SdkConfig,
    store: Arc<DynamoStore>,
) -> Result<tocsin_core::maintenance::MaintenanceService, MissingVariable> {
    let config = DispatchConfig::from_env()?;
    let queues = Arc::new(crate::sqs::SqsNotificationQueues::new(
        aws_sdk_sqs::Client::new(sdk),
        config.queue_urls,
    ));
    let dispatch = tocsin_core::dispatch::DispatchService::new(store.clone(), queues).with_timeline(store.clone());
    Ok(tocsin_core::maintenance::MaintenanceService::new(
        store.clone(),
        store,
        dispatch,
    ))
}

/// The scheduler's escalation (tocsin_core::escalation): due levels read
/// from the table, their jobs sent to the channel queues as the dispatcher's.
fn escalation_service(
    sdk: &aws_config::SdkConfig,
    store: Arc<DynamoStore>,
) -> Result<tocsin_core::escalation::EscalationService, MissingVariable> {
    let config = DispatchConfig::from_env()?;
    let queues = Arc::new(crate::sqs::SqsNotificationQueues::new(
        aws_sdk_sqs::Client::new(sdk),
        config.queue_urls,
    ));
    Ok(
        tocsin_core::escalation::EscalationService::new(store.clone(), store.clone(), store.clone(), queues)
            .with_timeline(store.clone())
            .with_maintenance(store),
    )
}

/// The processor function: batches from the events queue, failures
/// reported per message.
pub async fn run_processor() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let table = required("TOCSIN_TABLE")?;
    let sdk = crate::trust::function_sdk_config().await;
    let store = Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), table));
    let process = ProcessService::new(store);
    let metrics = tocsin_core::metrics::Metrics::from_env(tocsin_core::metrics::function::PROCESSOR);
    lambda_runtime::run(lambda_runtime::service_fn(
        |event: LambdaEvent<aws_lambda_events::event::sqs::SqsEvent>| {
            let (process, metrics) = (process.clone(), metrics.clone());
            async move {
                Ok::<_, std::convert::Infallible>(
                    crate::processor::process_batch_measured(&process, &metrics, event.payload, Utc::now()).await,
                )
            }
        },
    ))
    .await
}

fn optional(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// What the dispatcher needs: the table (service lookups) and the queue of
/// every channel.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// TOCSIN_TABLE: the DynamoDB table.
    pub table: String,
    /// TOCSIN_EMAIL_QUEUE_URL, TOCSIN_SMS_QUEUE_URL, TOCSIN_SLACK_QUEUE_URL:
    /// the per-channel SQS FIFO queues; TOCSIN_WEBHOOK_QUEUE_URL, optional
    /// for stacks deployed before webhooks (their webhook jobs then fail
    /// dispatch until it is set).
    pub queue_urls: std::collections::HashMap<tocsin_core::notify::Channel, String>,
}

impl DispatchConfig {
    pub fn from_env() -> Result<Self, MissingVariable> {
        use tocsin_core::notify::Channel;
        Ok(Self {
            table: required("TOCSIN_TABLE")?,
            queue_urls: std::collections::HashMap::from([
                (Channel::Email, required("TOCSIN_EMAIL_QUEUE_URL")?),
                (Channel::Sms, required("TOCSIN_SMS_QUEUE_URL")?),
                (Channel::Slack, required("TOCSIN_SLACK_QUEUE_URL")?),
            ])
            .into_iter()
            .chain(optional("TOCSIN_WEBHOOK_QUEUE_URL").map(|url| (Channel::Webhook, url)))
            .collect(),
        })
    }
}

/// TOCSIN_PUBLIC_URL, optional: the base of incident links in messages.
pub fn render_context_from_env() -> tocsin_core::render::RenderContext {
    tocsin_core::render::RenderContext {
        public_url: optional("TOCSIN_PUBLIC_URL"),
        action_links: None,
    }
}

/// Why the action link signer could not be had at init. Never carries the
/// secret's value.
#[derive(Debug, thiserror::Error)]
pub enum LinkSecretError {
    #[error("could not read the link signing secret {secret_id}")]
    Read {
        secret_id: String,
        #[source]
        source: tocsin_core::ports::BackendError,
    },
    #[error("the link signing secret {secret_id} is unusable")]
    Short {
        secret_id: String,
        #[source]
        source: tocsin_core::links::ShortSecret,
    },
    #[error(
        "TOCSIN_LINK_TTL_HOURS must be a number of hours from 1 to {}",
        tocsin_core::links::MAX_TTL_HOURS
    )]
    Ttl,
}

/// The signer of one-click acknowledge and resolve links
/// (tocsin_core::links), read once per container from the Secrets Manager
/// secret TOCSIN_LINK_SECRET_ARN (the value, or JSON with a `secret`
/// field), links valid TOCSIN_LINK_TTL_HOURS; none without the variable.
pub async fn action_signer(
    sdk: &aws_config::SdkConfig,
) -> Result<Option<tocsin_core::links::ActionSigner>, LinkSecretError> {
    use tocsin_core::secrets::SecretSource;
    let Some(secret_id) = optional("TOCSIN_LINK_SECRET_ARN") else {
        return Ok(None);
    };
    let ttl = match optional("TOCSIN_LINK_TTL_HOURS") {
        None => tocsin_core::links::DEFAULT_TTL_HOURS,
        Some(text) => match text.trim().parse::<u32>() {
            Ok(hours) if (1..=tocsin_core::links::MAX_TTL_HOURS).contains(&hours) => hours,
            _ => return Err(LinkSecretError::Ttl),
        },
    };
    let secrets = crate::secrets::AwsSecrets::new(aws_sdk_secretsmanager::Client::new(sdk));
    let reference = tocsin_core::secrets::SecretRef::SecretsManager(secret_id.clone());
    let secret = secrets
        .fetch(&reference)
        .await
        .map_err(|source| LinkSecretError::Read {
            secret_id: secret_id.clone(),
            source,
        })?;
    let signer =
        tocsin_core::links::ActionSigner::new(secret).map_err(|source| LinkSecretError::Short { secret_id, source })?;
    Ok(Some(signer.with_ttl_hours(ttl)))
}

/// The dispatcher function: the table's stream of incident transitions to
/// notification jobs, failures reported per record.
pub async fn run_dispatch() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let config = DispatchConfig::from_env()?;
    let sdk = crate::trust::function_sdk_config().await;
    let store = Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), config.table));
    let queues = Arc::new(crate::sqs::SqsNotificationQueues::new(
        aws_sdk_sqs::Client::new(&sdk),
        config.queue_urls,
    ));
    let metrics = tocsin_core::metrics::Metrics::from_env(tocsin_core::metrics::function::DISPATCH);
    lambda_runtime::run(lambda_runtime::service_fn(
        |event: LambdaEvent<aws_lambda_events::event::dynamodb::Event>| {
            let (store, queues, metrics) = (store.clone(), queues.clone(), metrics.clone());
            async move {
                Ok::<_, std::convert::Infallible>(
                    crate::measured::dispatch_batch_measured(
                        store.clone(),
                        Some(store.clone()),
                        queues,
                        Some(crate::dispatch::Hold {
                            maintenance: store.clone(),
                            timeline: store.clone(),
                            escalations: Some(store),
                        }),
                        &metrics,
                        event.payload,
                        Utc::now(),
                    )
                    .await,
                )
            }
        },
    ))
    .await
}

/// Runs a notifier function: batches from its channel queue, failures
/// reported per message.
async fn run_notify(
    notifier: Arc<dyn tocsin_core::notify::Notifier>,
    sdk: &aws_config::SdkConfig,
) -> Result<(), lambda_runtime::Error> {
    let mut context = render_context_from_env();
    context.action_links = action_signer(sdk).await?;
    let notify_channel = notifier.channel();
    let mut notify = tocsin_core::dispatch::NotifyService::new(vec![notifier], context);
    // Every attempt is written to its incident's timeline (TOCSIN_TABLE is
    // set for every function by the template's globals).
    let metrics = tocsin_core::metrics::Metrics::from_env(tocsin_core::metrics::function::NOTIFY);
    if let Some(table) = optional("TOCSIN_TABLE") {
        // Email skips addresses SES reported as bouncing or complaining.
        if notify_channel == tocsin_core::notify::Channel::Email {
            notify = notify.with_contacts(Arc::new(crate::contacts::DynamoContactHealth::new(
                aws_sdk_dynamodb::Client::new(sdk),
                &table,
            )));
        }
        let store = Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), table));
        // The channel's throttle (tocsin_core::throttle), when configured:
        // what goes over the limits waits for the scheduler's bundle.
        let throttle = throttle_settings_from_env()?;
        if throttle.for_channel(notify_channel).is_some() {
            notify = notify
                .with_throttle(tocsin_core::throttle::Throttle::new(store.clone(), throttle))
                .with_metrics(metrics.clone());
        }
        notify = notify.with_timeline(store);
    }
    // Slack's 429s name their Retry-After: the failed job's message waits
    // that long in its queue (TOCSIN_SLACK_QUEUE_URL) before the retry.
    let visibility = match (notify_channel, optional("TOCSIN_SLACK_QUEUE_URL")) {
        (tocsin_core::notify::Channel::Slack, Some(url)) => Some(crate::notify::RetryAfterVisibility::new(
            aws_sdk_sqs::Client::new(sdk),
            url,
        )),
        _ => None,
    };
    lambda_runtime::run(lambda_runtime::service_fn(
        |event: LambdaEvent<aws_lambda_events::event::sqs::SqsEvent>| {
            let (notify, metrics, visibility) = (notify.clone(), metrics.clone(), visibility.clone());
            async move {
                Ok::<_, std::convert::Infallible>(
                    crate::notify::deliver_batch_retrying_after(&notify, &metrics, visibility.as_ref(), event.payload)
                        .await,
                )
            }
        },
    ))
    .await
}

/// The email notifier: SES v2 from TOCSIN_EMAIL_FROM (a verified identity).
pub async fn run_notify_email() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let from = required("TOCSIN_EMAIL_FROM")?;
    let sdk = crate::trust::function_sdk_config().await;
    run_notify(
        Arc::new(
            crate::notify::SesEmailNotifier::new(aws_sdk_sesv2::Client::new(&sdk), from)
                .with_configuration_set(optional("TOCSIN_SES_CONFIGURATION_SET")),
        ),
        &sdk,
    )
    .await
}

/// The SMS notifier: SNS Publish, with TOCSIN_SMS_SENDER_ID if set.
pub async fn run_notify_sms() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let sender_id = optional("TOCSIN_SMS_SENDER_ID");
    let sdk = crate::trust::function_sdk_config().await;
    run_notify(
        Arc::new(crate::notify::SnsSmsNotifier::new(
            aws_sdk_sns::Client::new(&sdk),
            sender_id,
        )),
        &sdk,
    )
    .await
}

/// The Slack notifier: the bot token or incoming webhook URL is read once
/// per container from the Secrets Manager secret TOCSIN_SLACK_SECRET_ARN.
/// TOCSIN_SLACK_API_URL replaces https://slack.com/api (tests only). With a
/// bot token, each incident's first message per channel is kept in the
/// table (TOCSIN_TABLE) so that later transitions thread under it.
pub async fn run_notify_slack() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let secret_id = optional("TOCSIN_SLACK_SECRET_ARN").ok_or(SlackSecretError::NotConfigured)?;
    let sdk = crate::trust::function_sdk_config().await;
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
    let delivery = slack_delivery(&secrets, &secret_id).await?;
    let api_base = optional("TOCSIN_SLACK_API_URL");
    let mut notifier = tocsin_outbound::slack::SlackNotifier::for_delivery(&delivery, api_base.as_deref());
    if let Some(table) = optional("TOCSIN_TABLE") {
        notifier = notifier.with_threads(Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), table)));
    }
    run_notify(Arc::new(notifier), &sdk).await
}

/// The outgoing webhook notifier: each job's URL and secret are read from
/// its service's record in the table (TOCSIN_TABLE), so a `tocsin apply`
/// takes effect without a deployment.
pub async fn run_notify_webhook() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let table = required("TOCSIN_TABLE")?;
    let sdk = crate::trust::function_sdk_config().await;
    let store = Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), table));
    run_notify(Arc::new(webhook_notifier(store, &sdk)), &sdk).await
}

/// The webhook notifier of notify-webhook: secrets the config names
/// (`secret: {secrets_manager: tocsin/…}`) are read through the cached
/// reader the integrations use, once per container every few minutes.
pub fn webhook_notifier(
    config: Arc<dyn tocsin_core::ports::ConfigStore>,
    sdk: &aws_config::SdkConfig,
) -> tocsin_outbound::webhook::WebhookNotifier {
    let secrets = crate::secrets::AwsSecrets::new(aws_sdk_secretsmanager::Client::new(sdk));
    tocsin_outbound::webhook::WebhookNotifier::new(config)
        .with_secrets(Arc::new(tocsin_core::secrets::CachedSecrets::new(Arc::new(secrets))))
}

/// Why the Slack credential could not be had at init. Neither variant
/// carries the secret's value.
#[derive(Debug, thiserror::Error)]
pub enum SlackSecretError {
    #[error(
        "no Slack credential: deploy with the SlackTokenSecretArn parameter, a Secrets Manager secret holding \
         the bot token or incoming webhook URL (TOCSIN_SLACK_SECRET_ARN)"
    )]
    NotConfigured,
    #[error("could not read the Slack secret {secret_id} from Secrets Manager")]
    Read {
        secret_id: String,
        #[source]
        source: aws_sdk_secretsmanager::Error,
    },
    #[error("the Slack secret {secret_id} has no SecretString")]
    Empty { secret_id: String },
    #[error("the Slack secret {secret_id} is unusable")]
    Invalid {
        secret_id: String,
        #[source]
        source: tocsin_outbound::slack::InvalidSlackSecret,
    },
}

/// The Slack delivery stored in a Secrets Manager secret.
pub async fn slack_delivery(
    secrets: &aws_sdk_secretsmanager::Client,
    secret_id: &str,
) -> Result<tocsin_core::config::SlackDelivery, SlackSecretError> {
    let output = secrets
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|e| SlackSecretError::Read {
            secret_id: secret_id.to_owned(),
            source: e.into(),
        })?;
    let value = output.secret_string().ok_or_else(|| SlackSecretError::Empty {
        secret_id: secret_id.to_owned(),
    })?;
    tocsin_outbound::slack::delivery_from_secret(value).map_err(|source| SlackSecretError::Invalid {
        secret_id: secret_id.to_owned(),
        source,
    })
}

/// The slack-interactions function: the Slack app's Interactivity Request
/// URL (`POST /slack/interactions`) and slash command URL
/// (`POST /slack/commands`), tocsin-api's Slack routes as locally. The
/// signing secret is the `signing_secret` field of the Slack secret
/// (TOCSIN_SLACK_SECRET_ARN), read once per container; a button pressed or
/// a command becomes an acknowledge or resolve on the events queue.
pub async fn run_slack_interactions() -> Result<(), lambda_http::Error> {
    init_tracing();
    let table = required("TOCSIN_TABLE")?;
    let secret_id = optional("TOCSIN_SLACK_SECRET_ARN").ok_or(SlackSigningSecretError::NotConfigured)?;
    let sdk = crate::trust::function_sdk_config().await;
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
    let signing_secret = slack_signing_secret(&secrets, &secret_id).await?;
    let store = Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), table));
    let queue = Arc::new(events_queue(&sdk)?);
    let slack = tocsin_core::slack::SlackInteractions::new(store, queue, signing_secret).with_metrics(
        tocsin_core::metrics::Metrics::from_env(tocsin_core::metrics::function::SLACK),
    );
    lambda_http::run(tocsin_api::slack_router(slack)).await
}

/// Why the Slack app's signing secret could not be had at init. No variant
/// carries the secret's value.
#[derive(Debug, thiserror::Error)]
pub enum SlackSigningSecretError {
    #[error(
        "no Slack app: deploy with the SlackTokenSecretArn parameter, a Secrets Manager secret whose JSON \
         holds signing_secret (TOCSIN_SLACK_SECRET_ARN)"
    )]
    NotConfigured,
    #[error("could not read the Slack secret {secret_id} from Secrets Manager")]
    Read {
        secret_id: String,
        #[source]
        source: aws_sdk_secretsmanager::Error,
    },
    #[error("the Slack secret {secret_id} holds no signing secret")]
    Invalid {
        secret_id: String,
        #[source]
        source: tocsin_core::slack::InvalidSigningSecret,
    },
}

/// The Slack app's signing secret: the `signing_secret` field of the JSON
/// in the Slack secret, beside `bot_token` or `webhook_url`.
pub async fn slack_signing_secret(
    secrets: &aws_sdk_secretsmanager::Client,
    secret_id: &str,
) -> Result<tocsin_core::config::Secret, SlackSigningSecretError> {
    let output = secrets
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|e| SlackSigningSecretError::Read {
            secret_id: secret_id.to_owned(),
            source: e.into(),
        })?;
    tocsin_core::slack::signing_secret_from_secret(output.secret_string().unwrap_or_default()).map_err(|source| {
        SlackSigningSecretError::Invalid {
            secret_id: secret_id.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use tocsin_core::config::Catalog;
    use tocsin_core::memory::MemoryStore;

    use super::*;

    #[test]
    fn the_log_filter_takes_rust_log_directives_and_lambdas_level() {
        use tracing::Level;
        use tracing_subscriber::filter::LevelFilter;

        let on = |rust_log: Option<&str>, level: Option<LevelFilter>, target: &str, at: Level| {
            log_filter(rust_log, level).would_enable(target, &at)
        };
        // Nothing set: INFO everywhere.
        assert!(on(None, None, "tocsin_aws", Level::INFO));
        assert!(!on(None, None, "tocsin_aws", Level::DEBUG));
        // A bare level, and per-target directives over it.
        assert!(!on(Some("warn"), None, "tocsin_aws", Level::INFO));
        let directives = Some("tocsin_aws=debug, aws_smithy_runtime=error,warn");
        assert!(on(directives, None, "tocsin_aws::dynamodb", Level::DEBUG));
        assert!(!on(directives, None, "aws_smithy_runtime::client", Level::WARN));
        assert!(!on(directives, None, "hyper", Level::INFO));
        assert!(on(directives, None, "hyper", Level::WARN));
        // Lambda's AWS_LAMBDA_LOG_LEVEL wins over RUST_LOG's bare level,
        // not over its targets.
        assert!(on(Some("error"), Some(LevelFilter::DEBUG), "hyper", Level::DEBUG));
        assert!(!on(
            directives,
            Some(LevelFilter::TRACE),
            "aws_smithy_runtime",
            Level::WARN
        ));
        // What does not parse is left out, as EnvFilter's from_env_lossy does.
        assert!(on(Some("loud,tocsin_aws=loud"), None, "tocsin_aws", Level::INFO));
        assert!(!on(Some("loud,tocsin_aws=loud"), None, "tocsin_aws", Level::DEBUG));
    }

    fn service() -> (IngestService, Arc<MemoryStore>) {
        let catalog = Catalog::from_yaml(include_str!("../../../cli/tocsin.sample.yaml"), "sample").unwrap();
        let store = Arc::new(MemoryStore::new());
        (
            IngestService::new(Arc::new(catalog), store.clone(), store.clone()),
            store,
        )
    }

    fn request(file: &str) -> Request {
        let path = format!("{}/../../events/aws/{file}", env!("CARGO_MANIFEST_DIR"));
        lambda_http::request::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn an_api_gateway_request_is_ingested_as_the_local_router_would() {
        let (ingest, store) = service();
        let answer = answer_ingest(
            &ingest,
            ProviderKind::Prometheus,
            request("apigw-prometheus-firing.json"),
        )
        .await;
        assert_eq!(answer.status(), 202);
        assert_eq!(answer.headers()["content-type"], "application/json");
        assert_eq!(
            store.queued_events().len(),
            2,
            "one event per alert of events/prometheus/firing.json"
        );
    }

    #[tokio::test]
    async fn the_query_string_carries_the_key_and_the_body_is_a_form() {
        let (ingest, store) = service();
        let answer = answer_ingest(
            &ingest,
            ProviderKind::Generic,
            request("apigw-generic-query-token.json"),
        )
        .await;
        assert_eq!(answer.status(), 200);
        let Body::Text(text) = answer.body() else {
            panic!("a JSON answer")
        };
        let body: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(body["IsNew"], true);
        assert_eq!(
            store.queued_events()[0].alert.payload.as_ref().unwrap().summary,
            "Queue backed up"
        );
    }

    #[tokio::test]
    async fn a_refusal_is_the_same_json_as_locally() {
        let (ingest, store) = service();
        let answer = answer_ingest(&ingest, ProviderKind::Webhook, request("apigw-prometheus-firing.json")).await;
        assert_eq!(answer.status(), 404, "a prometheus key sent to the webhook endpoint");
        assert!(store.queued_events().is_empty());
    }

    #[test]
    fn a_missing_variable_is_named() {
        let error = required("TOCSIN_SURELY_UNSET_VARIABLE").unwrap_err();
        assert!(error.to_string().contains("TOCSIN_SURELY_UNSET_VARIABLE"));
    }
}
