//! Ingest: authenticate → verify → normalize → enqueue. The same service
//! answers in the provider Lambdas and in the local router.
//!
//! Providers delivered by Amazon SNS ([`Delivery::Sns`]) take one more
//! step, with I/O: the envelope's signature is verified (fetching the
//! signing certificate once per process), its topic checked against the
//! integration's, and subscription confirmations answered, before the
//! provider sees the notification's Message. That needs [`Sns`], given with
//! [`IngestService::with_sns`].

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode};

use crate::answer::{error_answer, json_answer, Answer};
use crate::auth::{key_from_request, IntegrationKey, KeyHash};
use crate::config::Integration;
use crate::event::{Action, Event, EventId, IntegrationId, Origin, ServiceId};
use crate::health::{IngestFailure, IngestOutcome, OutcomeKind};
use crate::incident::IncidentId;
use crate::limits::{check_media_type, json_too_deep, MediaTypeError, MAX_ALERTS_PER_REQUEST, MAX_JSON_DEPTH};
use crate::ports::{BackendError, ConfigStore, EventQueue, IncidentStore, IngestStats, RateCounter};
use crate::providers::{Accepted, Delivery, Inbound, IncidentHint, InvalidPayload, Provider, ProviderKind, Providers};
use crate::ratelimit::{Decision, Quota, RateLimiter};
use crate::secrets::{CachedSecrets, LocalSecrets, SecretSource};
use crate::signature::SignatureError;
use crate::sns::{check_topic, refuse_raw_delivery, Confirmation, Sns, SnsError, SnsMessage, SnsMessageType};

/// Every way a request is refused, each with one status code.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the request body is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("the request carries {count} alerts; at most {limit} are accepted in one request")]
    TooManyAlerts { count: usize, limit: usize },
    #[error(transparent)]
    MediaType(#[from] MediaTypeError),
    #[error("alert {index} makes an event of {size} bytes; one event may carry at most {limit}")]
    EventTooLarge { index: usize, size: usize, limit: usize },
    #[error(
        "no integration key: send Authorization: Token token=KEY, Authorization: Bearer KEY, X-Integration-Key: KEY or ?token=KEY"
    )]
    MissingKey,
    #[error("the integration key is malformed: it must be 32 hex characters")]
    MalformedKey,
    #[error("no integration has this key")]
    UnknownIntegration,
    #[error("no integration of type cloudwatch lists the topic {0}")]
    UnknownTopic(String),
    #[error("this key belongs to a {actual} integration; send it to {path}")]
    WrongProvider { actual: ProviderKind, path: &'static str },
    /// A request for a provider this service does not take (a Lambda
    /// function takes its own provider's only).
    #[error("no {0} endpoint here")]
    NotServed(ProviderKind),
    #[error("integration '{0}' is disabled")]
    Disabled(IntegrationId),
    #[error("signature check failed: {0}")]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    Payload(#[from] InvalidPayload),
    #[error(transparent)]
    Sns(#[from] SnsError),
    #[error(
        "integration '{integration}' may send {} requests per minute; retry after {} seconds",
        quota.limit,
        quota.retry_after
    )]
    RateLimited { integration: IntegrationId, quota: Quota },
    #[error("the events could not be queued; retry")]
    Unavailable(#[source] BackendError),
    /// Named apart from Unavailable so that logs say which dependency
    /// failed; the answer never names the secret.
    #[error("the integration's signing secret could not be read; retry")]
    SecretUnavailable(#[source] BackendError),
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::TooLarge { .. } | IngestError::EventTooLarge { .. } | IngestError::TooManyAlerts { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            IngestError::MediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::MissingKey | IngestError::MalformedKey | IngestError::Signature(_) => StatusCode::UNAUTHORIZED,
            IngestError::UnknownIntegration
            | IngestError::UnknownTopic(_)
            | IngestError::WrongProvider { .. }
            | IngestError::NotServed(_) => StatusCode::NOT_FOUND,
            IngestError::Disabled(_) => StatusCode::FORBIDDEN,
            IngestError::Payload(_) => StatusCode::BAD_REQUEST,
            IngestError::Sns(error) => error.status(),
            IngestError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            IngestError::Unavailable(_) | IngestError::SecretUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// What the health report says of this refusal: short, and, unlike
    /// the answer, never a value taken from the request (a payload may
    /// carry phone numbers; an envelope, signatures).
    pub fn health_message(&self) -> String {
        match self {
            IngestError::TooLarge { .. }
            | IngestError::TooManyAlerts { .. }
            | IngestError::EventTooLarge { .. }
            | IngestError::Disabled(_)
            | IngestError::RateLimited { .. }
            | IngestError::Unavailable(_)
            | IngestError::SecretUnavailable(_)
            | IngestError::MissingKey
            | IngestError::MalformedKey
            | IngestError::UnknownIntegration
            | IngestError::NotServed(_) => self.to_string(),
            IngestError::MediaType(_) => "unsupported media type".to_owned(),
            IngestError::UnknownTopic(_) => "the SNS topic is not listed by any cloudwatch integration".to_owned(),
            IngestError::WrongProvider { actual, .. } => format!("the key belongs to a {actual} integration"),
            IngestError::Signature(_) => "signature check failed".to_owned(),
            IngestError::Payload(invalid) => match invalid.errors.len() {
                0 | 1 => "invalid payload".to_owned(),
                n => format!("invalid payload ({n} errors)"),
            },
            IngestError::Sns(error) => format!("the SNS envelope was refused ({})", error.status().as_u16()),
        }
    }

    /// The JSON answer: PagerDuty's error shape for every provider. Never
    /// contains a key, a secret or an expected signature.
    pub fn answer(&self) -> Answer {
        let status = self.status();
        if let IngestError::RateLimited { integration, quota } = self {
            let mut answer = json_answer(
                status,
                &serde_json::json!({
                    "status": "rate limited",
                    "message": self.to_string(),
                    "integration": integration,
                    "limit": quota.limit,
                    "retry_after": quota.retry_after,
                }),
            );
            quota.apply(&mut answer);
            answer
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(quota.retry_after));
            return answer;
        }
        let (label, errors) = match self {
            IngestError::Payload(invalid) => (
                "invalid event",
                invalid.errors.iter().map(ToString::to_string).collect(),
            ),
            IngestError::TooLarge { .. } | IngestError::EventTooLarge { .. } | IngestError::TooManyAlerts { .. } => {
                ("payload too large", Vec::new())
            }
            IngestError::MediaType(_) => ("unsupported media type", Vec::new()),
            IngestError::MissingKey | IngestError::MalformedKey | IngestError::Signature(_) => {
                ("unauthorized", Vec::new())
            }
            IngestError::UnknownIntegration
            | IngestError::UnknownTopic(_)
            | IngestError::WrongProvider { .. }
            | IngestError::NotServed(_) => ("not found", Vec::new()),
            IngestError::Disabled(_) => ("forbidden", Vec::new()),
            IngestError::Sns(error) => match error.status() {
                StatusCode::FORBIDDEN => ("forbidden", Vec::new()),
                StatusCode::SERVICE_UNAVAILABLE => ("unavailable", Vec::new()),
                _ => ("unauthorized", Vec::new()),
            },
            IngestError::RateLimited { .. } => ("rate limited", Vec::new()),
            IngestError::Unavailable(_) | IngestError::SecretUnavailable(_) => ("unavailable", Vec::new()),
        };
        let mut answer = error_answer(status, label, self.to_string(), errors);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            answer
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("5"));
        }
        answer
    }
}

/// Whether accepted events are enqueued or only shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Enqueue,
    Preview,
}

/// The largest event, as queued JSON: SQS's limit for one message.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// One request to a provider endpoint.
#[derive(Debug, Clone, Copy)]
pub struct IngestRequest<'a> {
    pub provider: ProviderKind,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    pub received_at: DateTime<Utc>,
}

/// One SNS notification that AWS delivered itself (SNS invoking a Lambda
/// function directly, authenticated by IAM): no key and no signature to
/// check, but the topic must still be one the integration allows.
#[derive(Debug, Clone, Copy)]
pub struct SnsNotification<'a> {
    pub message_id: &'a str,
    pub topic_arn: &'a str,
    pub message: &'a str,
    pub received_at: DateTime<Utc>,
}

/// One request on its way to the health counters (crate::health).
struct Tally {
    started: Instant,
    at: DateTime<Utc>,
    provider: ProviderKind,
    /// Set once the request's key named an enabled integration.
    identified: OnceLock<(IntegrationId, ServiceId)>,
    /// Whether its success was counted beside the enqueue: one of the
    /// constants below.
    counted: AtomicU8,
}

impl Tally {
    fn new(provider: ProviderKind, at: DateTime<Utc>) -> Self {
        Self {
            started: Instant::now(),
            at,
            provider,
            identified: OnceLock::new(),
            counted: AtomicU8::new(Tally::NOT_YET),
        }
    }

    const NOT_YET: u8 = 0;
    const COUNTED: u8 = 1;
    const FAILED: u8 = 2;

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn identify(&self, integration: &Integration) {
        // Only ever set once per request: a second call is the same integration.
        let _ = self
            .identified
            .set((integration.id.clone(), integration.service.clone()));
    }
}

#[derive(Clone)]
pub struct IngestService {
    config: Arc<dyn ConfigStore>,
    queue: Arc<dyn EventQueue>,
    incidents: Arc<dyn IncidentStore>,
    sns: Option<Arc<Sns>>,
    limiter: Option<RateLimiter>,
    secrets: Arc<dyn SecretSource>,
    stats: Option<Arc<dyn IngestStats>>,
    providers: Providers,
}

impl IngestService {
    /// A service for every provider (the local stack, the tests).
    pub fn new(config: Arc<dyn ConfigStore>, queue: Arc<dyn EventQueue>, incidents: Arc<dyn IncidentStore>) -> Self {
        Self::serving(Providers::every(), config, queue, incidents)
    }

    /// A service for `providers` alone: a Lambda function's, so that its
    /// binary does not link every provider's parser.
    pub fn serving(
        providers: Providers,
        config: Arc<dyn ConfigStore>,
        queue: Arc<dyn EventQueue>,
        incidents: Arc<dyn IncidentStore>,
    ) -> Self {
        Self {
            providers,
            config,
            queue,
            incidents,
            sns: None,
            limiter: None,
            secrets: Arc::new(CachedSecrets::new(Arc::new(LocalSecrets))),
            stats: None,
        }
    }

    /// Counts every request that names an integration in `stats`, for
    /// `GET /integrations/health` (crate::health); without it nothing is
    /// counted. A failure to count is logged, never answered.
    /// The provider of `kind`, if this service takes its requests.
    fn provider(&self, kind: ProviderKind) -> Result<&'static dyn Provider, IngestError> {
        self.providers.get(kind).ok_or(IngestError::NotServed(kind))
    }

    pub fn with_stats(mut self, stats: Arc<dyn IngestStats>) -> Self {
        self.stats = Some(stats);
        self
    }

    /// Where integrations' secret references are read (crate::secrets);
    /// by default environment variables and files, cached.
    pub fn with_secrets(mut self, secrets: Arc<dyn SecretSource>) -> Self {
        self.secrets = secrets;
        self
    }

    /// Enforces each integration's `rate_limit_per_minute` with `counter`
    /// (crate::ratelimit); without it nothing is limited.
    pub fn with_rate_limiter(mut self, counter: Arc<dyn RateCounter>) -> Self {
        self.limiter = Some(RateLimiter::new(counter));
        self
    }

    /// Accepts SNS-delivered providers (cloudwatch): without it they are
    /// answered 503. Build it once per process: it caches certificates.
    pub fn with_sns(mut self, sns: Sns) -> Self {
        self.sns = Some(Arc::new(sns));
        self
    }

    /// Handles one request and always answers: success or a JSON error.
    pub async fn handle(&self, request: IngestRequest<'_>) -> Answer {
        Self::answer(request.provider, self.run(request, Mode::Enqueue).await)
    }

    /// Checks a request exactly as [`handle`](Self::handle) does and
    /// answers 200 with the events it would produce (dedup keys, actions,
    /// payloads), enqueueing nothing: for setting up an integration.
    pub async fn preview(&self, request: IngestRequest<'_>) -> Answer {
        Self::answer(request.provider, self.run(request, Mode::Preview).await)
    }

    fn answer(provider: ProviderKind, result: Result<Answer, IngestError>) -> Answer {
        match result {
            Ok(answer) => answer,
            Err(error) => {
                tracing::info!(%provider, status = error.status().as_u16(), %error, "request refused");
                error.answer()
            }
        }
    }

    pub async fn ingest(&self, request: IngestRequest<'_>) -> Result<Answer, IngestError> {
        self.run(request, Mode::Enqueue).await
    }

    async fn run(&self, request: IngestRequest<'_>, mode: Mode) -> Result<Answer, IngestError> {
        if mode == Mode::Preview || self.stats.is_none() {
            return self.run_counted(request, mode, None).await;
        }
        let tally = Tally::new(request.provider, request.received_at);
        let result = self.run_counted(request, mode, Some(&tally)).await;
        self.count_result(Some(&request), &tally, &result).await;
        result
    }

    /// Counts what a request came to, unless its success was already
    /// counted beside its enqueue. `request` is the HTTP request, if there
    /// was one: its key may name the integration of an early refusal.
    async fn count_result(
        &self,
        request: Option<&IngestRequest<'_>>,
        tally: &Tally,
        result: &Result<Answer, IngestError>,
    ) {
        let latency_ms = tally.elapsed_ms();
        // Once tried beside the enqueue, a success is never retried here: a
        // store that failed once would only slow the answer down.
        let counted = tally.counted.load(Ordering::Relaxed);
        let kind = match result {
            Ok(answer) if answer.status().is_success() => {
                if counted != Tally::NOT_YET {
                    return;
                }
                OutcomeKind::Success
            }
            Ok(answer) => OutcomeKind::Error(IngestFailure::new(
                answer.status().as_u16(),
                answer.status().canonical_reason().unwrap_or("refused"),
            )),
            Err(error) => {
                let failure = IngestFailure::new(error.status().as_u16(), &error.health_message());
                if counted == Tally::COUNTED {
                    OutcomeKind::FailedAfterSuccess(failure)
                } else {
                    OutcomeKind::Error(failure)
                }
            }
        };
        // Refused before the key was looked at (size, media type, nesting):
        // a key in the headers or query still names whose request it was.
        if let Some(request) = request.filter(|_| {
            tally.identified.get().is_none()
                && matches!(
                    result,
                    Err(IngestError::TooLarge { .. } | IngestError::MediaType(_) | IngestError::Payload(_))
                )
        }) {
            if let Some(integration) = self.identify(request).await {
                tally.identify(&integration);
            }
        }
        self.count(tally, kind, latency_ms).await;
    }

    /// The integration a request's header or query key names, if any.
    async fn identify(&self, request: &IngestRequest<'_>) -> Option<Integration> {
        let key = key_from_request(request.headers, request.query)?;
        let key = IntegrationKey::parse(&key).ok()?;
        self.integration_for(&key, request.provider).await.ok()
    }

    /// Whether the request was counted; a failure is logged, never answered.
    async fn count(&self, tally: &Tally, kind: OutcomeKind, latency_ms: u64) -> bool {
        let (Some(stats), Some((integration, service))) = (&self.stats, tally.identified.get()) else {
            return false;
        };
        let outcome = IngestOutcome {
            at: tally.at,
            latency_ms,
            kind,
        };
        match stats.record(integration, service, tally.provider, &outcome).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%integration, %error, source = %error.source, "cannot count the request for the health report");
                false
            }
        }
    }

    async fn run_counted(
        &self,
        request: IngestRequest<'_>,
        mode: Mode,
        tally: Option<&Tally>,
    ) -> Result<Answer, IngestError> {
        let provider = self.provider(request.provider)?;
        let limit = provider.max_body_bytes();
        if request.body.len() > limit {
            return Err(IngestError::TooLarge {
                size: request.body.len(),
                limit,
            });
        }
        check_media_type(request.headers, provider.media_types())?;
        if json_too_deep(request.body, MAX_JSON_DEPTH) {
            return Err(IngestError::Payload(InvalidPayload::field(
                "body",
                format!("the JSON nests deeper than {MAX_JSON_DEPTH} levels"),
            )));
        }
        let inbound = Inbound {
            headers: request.headers,
            query: request.query,
            body: request.body,
            received_at: request.received_at,
        };

        let integration = self.authenticate(&inbound, request.provider).await?;
        if let Some(tally) = tally {
            tally.identify(&integration);
        }
        let integration = self.with_secret(integration).await?;
        if provider.delivery() == Delivery::Sns {
            return self.ingest_sns(provider, &inbound, &integration, mode, tally).await;
        }
        provider.verify(&inbound, &integration)?;
        let alerts = provider.normalize(&inbound, &integration)?;
        let delivery = provider.delivery_id(&inbound);
        self.accept(provider, &inbound, &integration, alerts, delivery, mode, tally)
            .await
    }

    /// The SNS step: raw delivery refused, topic checked (before anything
    /// is fetched), signature verified at the request's receive time, then
    /// confirmations answered here and notifications handed to the provider.
    async fn ingest_sns(
        &self,
        provider: &dyn Provider,
        inbound: &Inbound<'_>,
        integration: &Integration,
        mode: Mode,
        tally: Option<&Tally>,
    ) -> Result<Answer, IngestError> {
        let sns = self.sns.as_deref().ok_or(SnsError::NotConfigured)?;
        refuse_raw_delivery(inbound.headers)?;
        let message = SnsMessage::parse(inbound.body)?;
        // cloudwatch is the only SNS-delivered type; its settings hold the
        // allowed topics.
        check_topic(&integration.cloudwatch.topics, &message.topic_arn)?;
        let verified = sns.verify(&message, inbound.received_at).await?;
        match verified.kind {
            SnsMessageType::SubscriptionConfirmation if mode == Mode::Preview => Ok(json_answer(
                StatusCode::OK,
                &serde_json::json!({
                    "status": "preview",
                    "message": "a verified subscription confirmation: it would be confirmed",
                    "topic": verified.topic_arn,
                }),
            )),
            SnsMessageType::SubscriptionConfirmation => {
                let confirmation = sns.confirm(&verified).await?;
                tracing::info!(
                    integration = %integration.id,
                    topic = %verified.topic_arn,
                    ?confirmation,
                    "SNS subscription confirmation"
                );
                let (status, text) = match confirmation {
                    Confirmation::Confirmed => ("confirmed", "the subscription is confirmed"),
                    Confirmation::LeftToOperator => (
                        "pending",
                        "the subscription awaits confirmation by an operator (see the logs)",
                    ),
                };
                Ok(json_answer(
                    StatusCode::OK,
                    &serde_json::json!({"status": status, "message": text, "topic": verified.topic_arn}),
                ))
            }
            SnsMessageType::UnsubscribeConfirmation => {
                tracing::warn!(
                    integration = %integration.id,
                    topic = %verified.topic_arn,
                    "SNS says this endpoint was unsubscribed from the topic"
                );
                Ok(json_answer(
                    StatusCode::OK,
                    &serde_json::json!({"status": "acknowledged", "topic": verified.topic_arn}),
                ))
            }
            SnsMessageType::Notification => {
                let unwrapped = Inbound {
                    body: verified.message.as_bytes(),
                    ..*inbound
                };
                provider.verify(&unwrapped, integration)?;
                let alerts = provider.normalize(&unwrapped, integration)?;
                self.accept(
                    provider,
                    &unwrapped,
                    integration,
                    alerts,
                    Some(&verified.message_id),
                    mode,
                    tally,
                )
                .await
            }
        }
    }

    /// Ingests an SNS notification that AWS delivered itself (the direct
    /// SNS → Lambda form) to `integration`, a provider with
    /// [`Delivery::Sns`]. As over HTTPS, event ids come from the MessageId,
    /// so a redelivery is the same event.
    pub async fn ingest_sns_notification(
        &self,
        integration: &Integration,
        notification: SnsNotification<'_>,
    ) -> Result<Answer, IngestError> {
        self.sns_notification(integration, notification, None).await
    }

    async fn sns_notification(
        &self,
        integration: &Integration,
        notification: SnsNotification<'_>,
        tally: Option<&Tally>,
    ) -> Result<Answer, IngestError> {
        let provider = self.providers.get(integration.provider);
        let Some(provider) = provider.filter(|p| p.delivery() == Delivery::Sns) else {
            return Err(IngestError::WrongProvider {
                actual: integration.provider,
                path: integration.provider.path(),
            });
        };
        if !integration.enabled {
            return Err(IngestError::Disabled(integration.id.clone()));
        }
        if let Some(tally) = tally {
            tally.identify(integration);
        }
        check_topic(&integration.cloudwatch.topics, notification.topic_arn)?;
        let headers = HeaderMap::new();
        let inbound = Inbound {
            headers: &headers,
            query: None,
            body: notification.message.as_bytes(),
            received_at: notification.received_at,
        };
        provider.verify(&inbound, integration)?;
        let alerts = provider.normalize(&inbound, integration)?;
        self.accept(
            provider,
            &inbound,
            integration,
            alerts,
            Some(notification.message_id),
            Mode::Enqueue,
            tally,
        )
        .await
    }

    /// Ingests an SNS notification that AWS invoked a function with
    /// directly (topic → Lambda, no HTTPS endpoint, no key): the topic names
    /// the cloudwatch integration that lists it.
    /// Counted for the health report as the HTTP endpoints' requests are.
    pub async fn ingest_sns_direct(&self, notification: SnsNotification<'_>) -> Result<Answer, IngestError> {
        if self.stats.is_none() {
            return self.sns_direct(notification, None).await;
        }
        let tally = Tally::new(ProviderKind::CloudWatch, notification.received_at);
        let result = self.sns_direct(notification, Some(&tally)).await;
        self.count_result(None, &tally, &result).await;
        result
    }

    async fn sns_direct(
        &self,
        notification: SnsNotification<'_>,
        tally: Option<&Tally>,
    ) -> Result<Answer, IngestError> {
        let topic = crate::sns::TopicArn::parse(notification.topic_arn)
            .map_err(|e| IngestError::Payload(InvalidPayload::new(e.to_string(), vec![e])))?;
        let integration = self
            .config
            .integration_by_topic(&topic)
            .await
            .map_err(IngestError::Unavailable)?
            .ok_or_else(|| IngestError::UnknownTopic(topic.as_str().to_owned()))?;
        self.sns_notification(&integration, notification, tally).await
    }

    /// Ingests a message that SES received for `recipient` (the receipt
    /// rule → Lambda path): the address names the integration, as over
    /// HTTP, and the event ids derive from SES's message id, so a retried
    /// invocation is the same events. Counted for the health report as the
    /// HTTP endpoints' requests are.
    pub async fn ingest_email(
        &self,
        raw: &[u8],
        recipient: &str,
        message_id: &str,
        received_at: DateTime<Utc>,
    ) -> Result<Answer, IngestError> {
        if self.stats.is_none() {
            return self.email(raw, recipient, message_id, received_at, None).await;
        }
        let tally = Tally::new(ProviderKind::Email, received_at);
        let result = self.email(raw, recipient, message_id, received_at, Some(&tally)).await;
        self.count_result(None, &tally, &result).await;
        result
    }

    async fn email(
        &self,
        raw: &[u8],
        recipient: &str,
        message_id: &str,
        received_at: DateTime<Utc>,
        tally: Option<&Tally>,
    ) -> Result<Answer, IngestError> {
        let provider = self.provider(ProviderKind::Email)?;
        if raw.len() > provider.max_body_bytes() {
            return Err(IngestError::TooLarge {
                size: raw.len(),
                limit: provider.max_body_bytes(),
            });
        }
        let email = crate::providers::email::read_email(raw, recipient).map_err(|e| IngestError::Payload(e.into()))?;
        let integration = self.integration_for(&email.key, ProviderKind::Email).await?;
        if let Some(tally) = tally {
            tally.identify(&integration);
        }
        let headers = HeaderMap::new();
        let inbound = Inbound {
            headers: &headers,
            query: None,
            body: raw,
            received_at,
        };
        self.accept(
            provider,
            &inbound,
            &integration,
            email.alerts,
            Some(message_id),
            Mode::Enqueue,
            tally,
        )
        .await
    }

    /// Alerts into events, checked for size, enqueued, answered. With a
    /// delivery id (SNS MessageId, X-GitHub-Delivery, …) the event ids
    /// derive from it, so a provider's retry is the same event; otherwise
    /// they are fresh.
    // What the callers hold, one argument each; a struct would be built for this one call.
    #[allow(clippy::too_many_arguments)]
    async fn accept(
        &self,
        provider: &dyn Provider,
        inbound: &Inbound<'_>,
        integration: &Integration,
        mut alerts: Vec<crate::event::Alert>,
        delivery: Option<&str>,
        mode: Mode,
        tally: Option<&Tally>,
    ) -> Result<Answer, IngestError> {
        if alerts.len() > MAX_ALERTS_PER_REQUEST {
            return Err(IngestError::TooManyAlerts {
                count: alerts.len(),
                limit: MAX_ALERTS_PER_REQUEST,
            });
        }
        if let Some(template) = &integration.dedup_key {
            template.apply(&mut alerts);
        }
        let kind = provider.kind();
        let events: Vec<Event> = alerts
            .into_iter()
            .enumerate()
            .map(|(index, alert)| Event {
                id: match delivery {
                    Some(delivery) => EventId::from_delivery(&integration.id, delivery, index),
                    None => EventId::generate(),
                },
                service: integration.service.clone(),
                origin: Origin::Integration {
                    integration: integration.id.clone(),
                    provider: kind,
                },
                received_at: inbound.received_at,
                alert,
            })
            .collect();

        // An event must fit one queue message whole: refused here, in every
        // runtime alike, rather than truncated or failed by the queue.
        for (index, event) in events.iter().enumerate() {
            let size = serde_json::to_vec(event).map(|bytes| bytes.len()).unwrap_or(usize::MAX);
            if size > MAX_EVENT_BYTES {
                return Err(IngestError::EventTooLarge {
                    index,
                    size,
                    limit: MAX_EVENT_BYTES,
                });
            }
        }

        if mode == Mode::Preview {
            return Ok(json_answer(
                StatusCode::OK,
                &serde_json::json!({
                    "status": "preview",
                    "message": "nothing was enqueued",
                    "integration": integration.id,
                    "service": integration.service,
                    "events": events.iter().map(|e| &e.alert).collect::<Vec<_>>(),
                }),
            ));
        }

        // Counted only once the request is known good: a sender without the
        // key or the secret cannot spend an integration's quota, and a
        // request that carries nothing to enqueue (a test delivery) is free.
        let decision = match &self.limiter {
            Some(limiter) if !events.is_empty() => {
                let exempt = events.iter().any(|event| event.action() != Action::Trigger);
                limiter.check(integration, exempt, inbound.received_at).await
            }
            _ => Decision::Unchecked,
        };
        if let Decision::Refused(quota) = decision {
            return Err(IngestError::RateLimited {
                integration: integration.id.clone(),
                quota,
            });
        }

        // Read before enqueueing: afterwards the processor may already have
        // opened the incident, and the caller would be told it was not new.
        let hint = match (provider.wants_incident_hint(inbound), events.first()) {
            (true, Some(event)) => Some(self.incident_hint(event).await?),
            _ => None,
        };

        let enqueued = match tally {
            // Counted beside the enqueue rather than after it: counting never
            // adds to an accepted request's time. Should the enqueue fail,
            // count_result turns this success into the error.
            Some(tally) if self.stats.is_some() && tally.identified.get().is_some() => {
                let (enqueued, ()) = crate::health::join(self.queue.enqueue(&events), async {
                    let counted = self.count(tally, OutcomeKind::Success, tally.elapsed_ms()).await;
                    let state = if counted { Tally::COUNTED } else { Tally::FAILED };
                    tally.counted.store(state, Ordering::Relaxed);
                })
                .await;
                enqueued
            }
            _ => self.queue.enqueue(&events).await,
        };
        enqueued.map_err(IngestError::Unavailable)?;
        tracing::info!(
            provider = %kind,
            integration = %integration.id,
            service = %integration.service,
            events = events.len(),
            "events accepted"
        );
        let mut answer = provider.accepted(
            inbound,
            &Accepted {
                events: &events,
                integration,
                hint,
            },
        );
        if let Decision::Allowed(quota) = decision {
            quota.apply(&mut answer);
        }
        Ok(answer)
    }

    /// The integration with its secret's value, when the config names where
    /// the secret lives rather than holding it.
    async fn with_secret(&self, mut integration: Integration) -> Result<Integration, IngestError> {
        if let (None, Some(reference)) = (&integration.secret, &integration.secret_ref) {
            let secret = self.secrets.fetch(reference).await.map_err(|error| {
                tracing::warn!(integration = %integration.id, error = %error, source = %error.source, "cannot read the integration's secret");
                IngestError::SecretUnavailable(error)
            })?;
            integration.secret = Some(secret);
        }
        Ok(integration)
    }

    async fn authenticate(&self, inbound: &Inbound<'_>, kind: ProviderKind) -> Result<Integration, IngestError> {
        let key = key_from_request(inbound.headers, inbound.query)
            .or_else(|| self.providers.get(kind).and_then(|p| p.key_in_body(inbound)))
            .ok_or(IngestError::MissingKey)?;
        let key = IntegrationKey::parse(&key).map_err(|_| IngestError::MalformedKey)?;
        self.integration_for(&key, kind).await
    }

    /// The enabled integration of type `kind` that `key` belongs to.
    async fn integration_for(&self, key: &IntegrationKey, kind: ProviderKind) -> Result<Integration, IngestError> {
        let integration = self
            .config
            .integration_by_key(&KeyHash::of(key.reveal()))
            .await
            .map_err(IngestError::Unavailable)?
            .ok_or(IngestError::UnknownIntegration)?;
        if integration.provider != kind {
            return Err(IngestError::WrongProvider {
                actual: integration.provider,
                path: integration.provider.path(),
            });
        }
        if !integration.enabled {
            return Err(IngestError::Disabled(integration.id));
        }
        Ok(integration)
    }

    async fn incident_hint(&self, event: &Event) -> Result<IncidentHint, IngestError> {
        let latest = self
            .incidents
            .latest(&event.service, event.dedup_key())
            .await
            .map_err(IngestError::Unavailable)?;
        let predicted = || IncidentId::for_opening(&event.service, event.dedup_key(), &event.id);
        Ok(match (latest, event.action()) {
            (Some(incident), _) if !incident.status.is_closed() => IncidentHint {
                incident: incident.id,
                is_new: false,
            },
            (_, Action::Trigger) => IncidentHint {
                incident: predicted(),
                is_new: true,
            },
            (Some(resolved), _) => IncidentHint {
                incident: resolved.id,
                is_new: false,
            },
            (None, _) => IncidentHint {
                incident: predicted(),
                is_new: false,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Catalog;
    use crate::memory::MemoryStore;

    const CONFIG: &str = r#"
services:
  - id: checkout
    integrations:
      - {id: pd, type: events-v2, key: 22222222222222222222222222222222}
"#;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    fn post(body: &serde_json::Value) -> (Answer, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::new());
        let catalog = Catalog::from_yaml(CONFIG, "test.yaml").unwrap();
        let ingest = IngestService::new(Arc::new(catalog), store.clone(), store.clone());
        let body = serde_json::to_vec(body).unwrap();
        let headers = HeaderMap::new();
        let answer = block_on(ingest.handle(IngestRequest {
            provider: ProviderKind::EventsV2,
            headers: &headers,
            query: None,
            body: &body,
            received_at: Utc::now(),
        }));
        (answer, store)
    }

    #[test]
    fn a_service_for_one_provider_refuses_the_others_requests_whole() {
        let store = Arc::new(MemoryStore::new());
        let catalog = Catalog::from_yaml(CONFIG, "test.yaml").unwrap();
        let only = Providers::one(&crate::providers::prometheus::Prometheus);
        let ingest = IngestService::serving(only, Arc::new(catalog), store.clone(), store.clone());
        let body = serde_json::to_vec(&trigger(10)).unwrap();
        let answer = block_on(ingest.handle(IngestRequest {
            provider: ProviderKind::EventsV2,
            headers: &HeaderMap::new(),
            query: None,
            body: &body,
            received_at: Utc::now(),
        }));
        assert_eq!(answer.status(), StatusCode::NOT_FOUND);
        let answer: serde_json::Value = serde_json::from_slice(answer.body()).unwrap();
        assert_eq!(answer["message"], "no events-v2 endpoint here", "{answer}");
        assert!(store.queued_events().is_empty());
        // The same request to a service for every provider is queued.
        assert_eq!(post(&trigger(10)).0.status(), StatusCode::ACCEPTED);
    }

    fn trigger(details_bytes: usize) -> serde_json::Value {
        serde_json::json!({
            "routing_key": "22222222222222222222222222222222",
            "event_action": "trigger",
            "payload": {"summary": "s", "source": "x", "severity": "info",
                        "custom_details": {"blob": "x".repeat(details_bytes)}},
        })
    }

    mod stats {
        use super::*;
        use crate::health::IntegrationStats;
        use crate::ports::IngestStats;

        const KEY: &str = "22222222222222222222222222222222";

        struct DownQueue;

        #[async_trait::async_trait]
        impl EventQueue for DownQueue {
            async fn enqueue(&self, _: &[Event]) -> Result<(), BackendError> {
                Err(BackendError::new("enqueue", "the queue is down"))
            }
        }

        struct DownStats;

        #[async_trait::async_trait]
        impl IngestStats for DownStats {
            async fn record(
                &self,
                _: &IntegrationId,
                _: &ServiceId,
                _: ProviderKind,
                _: &IngestOutcome,
            ) -> Result<(), BackendError> {
                Err(BackendError::new("record", "the store is down"))
            }

            async fn snapshot(&self) -> Result<Vec<IntegrationStats>, BackendError> {
                Ok(Vec::new())
            }
        }

        fn service(queue: Arc<dyn EventQueue>, stats: Arc<dyn IngestStats>) -> IngestService {
            let catalog = Catalog::from_yaml(CONFIG, "test.yaml").unwrap();
            IngestService::new(Arc::new(catalog), queue, Arc::new(MemoryStore::new())).with_stats(stats)
        }

        fn send(ingest: &IngestService, body: &serde_json::Value, preview: bool) -> StatusCode {
            let body = serde_json::to_vec(body).unwrap();
            let headers = HeaderMap::new();
            let request = IngestRequest {
                provider: ProviderKind::EventsV2,
                headers: &headers,
                query: None,
                body: &body,
                received_at: Utc::now(),
            };
            let answer = block_on(async {
                if preview {
                    ingest.preview(request).await
                } else {
                    ingest.handle(request).await
                }
            });
            answer.status()
        }

        fn counted(store: &MemoryStore) -> Vec<IntegrationStats> {
            block_on(store.snapshot()).unwrap()
        }

        #[test]
        fn each_request_of_a_known_key_is_counted_once_and_others_not_at_all() {
            let store = Arc::new(MemoryStore::new());
            let ingest = service(store.clone(), store.clone());
            assert_eq!(send(&ingest, &trigger(10), false), StatusCode::ACCEPTED);
            let invalid = serde_json::json!({"routing_key": KEY, "event_action": "trigger", "payload": {}});
            assert_eq!(send(&ingest, &invalid, false), StatusCode::BAD_REQUEST);
            // A preview and a key nobody has are not counted.
            assert_eq!(send(&ingest, &trigger(10), true), StatusCode::OK);
            let mut unknown = trigger(10);
            unknown["routing_key"] = serde_json::json!("99999999999999999999999999999999");
            assert_eq!(send(&ingest, &unknown, false), StatusCode::NOT_FOUND);

            let all = counted(&store);
            assert_eq!(all.len(), 1, "{all:?}");
            let pd = &all[0];
            assert_eq!((pd.integration.as_str(), pd.service.as_str()), ("pd", "checkout"));
            assert_eq!((pd.received, pd.success, pd.errors), (2, 1, 1));
            let error = pd.last_error.as_ref().expect("the last error");
            assert_eq!(
                (error.status, error.message.as_str()),
                (400, "invalid payload (3 errors)")
            );
        }

        #[test]
        fn a_failed_enqueue_is_counted_as_its_error_not_as_a_success() {
            let store = Arc::new(MemoryStore::new());
            let ingest = service(Arc::new(DownQueue), store.clone());
            assert_eq!(send(&ingest, &trigger(10), false), StatusCode::SERVICE_UNAVAILABLE);
            let all = counted(&store);
            assert_eq!((all[0].received, all[0].success, all[0].errors), (1, 0, 1));
            assert_eq!(all[0].last_error.as_ref().map(|e| e.status), Some(503));
        }

        #[test]
        fn a_failure_to_count_never_fails_the_request() {
            let store = Arc::new(MemoryStore::new());
            let ingest = service(store.clone(), Arc::new(DownStats));
            assert_eq!(send(&ingest, &trigger(10), false), StatusCode::ACCEPTED);
            assert_eq!(store.queued_events().len(), 1);
        }

        /// A cloudwatch integration fed by an SNS topic (the Lambda
        /// subscription) and an email integration (the SES receipt rule).
        const AWS_DELIVERED: &str = r#"
services:
  - id: checkout
    integrations:
      - id: alarms
        type: cloudwatch
        key: 33333333333333333333333333333333
        cloudwatch:
          topics: ["arn:aws:sns:us-east-1:427809481713:if-sim-app-AWSCloudWatchDiagnostics"]
      - {id: mail, type: email, key: 0123456789abcdef0123456789abcdef}
"#;

        fn aws_delivered(store: &Arc<MemoryStore>) -> IngestService {
            let catalog = Catalog::from_yaml(AWS_DELIVERED, "test.yaml").unwrap();
            IngestService::new(Arc::new(catalog), store.clone(), store.clone()).with_stats(store.clone())
        }

        fn stats_of<'a>(all: &'a [IntegrationStats], id: &str) -> &'a IntegrationStats {
            all.iter()
                .find(|s| s.integration.as_str() == id)
                .unwrap_or_else(|| panic!("{id} counted: {all:?}"))
        }

        #[test]
        fn sns_records_delivered_to_the_function_are_counted() {
            let store = Arc::new(MemoryStore::new());
            let ingest = aws_delivered(&store);
            let envelope: serde_json::Value = serde_json::from_str(include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../events/cloudwatch/alarm.json"
            )))
            .unwrap();
            let topic = "arn:aws:sns:us-east-1:427809481713:if-sim-app-AWSCloudWatchDiagnostics";
            let send = |topic_arn: &str, message: &str| {
                block_on(ingest.ingest_sns_direct(SnsNotification {
                    message_id: "57c992bc-21f6-5a74-bda5-c8b9155571ca",
                    topic_arn,
                    message,
                    received_at: Utc::now(),
                }))
            };
            let alarm = envelope["Message"].as_str().unwrap();
            assert!(send(topic, alarm).is_ok());
            assert!(send(topic, "not an alarm").is_err());
            assert!(send("arn:aws:sns:eu-west-1:123456789012:nobody", alarm).is_err());

            let all = counted(&store);
            assert_eq!(all.len(), 1, "a topic nobody lists names no integration: {all:?}");
            let alarms = stats_of(&all, "alarms");
            assert_eq!(alarms.provider, ProviderKind::CloudWatch);
            assert_eq!((alarms.received, alarms.success, alarms.errors), (2, 1, 1));
            assert_eq!(alarms.last_error.as_ref().map(|e| e.status), Some(400));
        }

        #[test]
        fn mail_received_by_ses_is_counted() {
            let store = Arc::new(MemoryStore::new());
            let ingest = aws_delivered(&store);
            let raw = include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../events/email/nagios-problem.eml"
            ));
            let recipient = "0123456789abcdef0123456789abcdef@alerts.example.com";
            assert!(block_on(ingest.ingest_email(raw, recipient, "ses-1", Utc::now())).is_ok());
            let unknown = "99999999999999999999999999999999@alerts.example.com";
            assert!(block_on(ingest.ingest_email(raw, unknown, "ses-2", Utc::now())).is_err());

            let all = counted(&store);
            assert_eq!(all.len(), 1, "{all:?}");
            let mail = stats_of(&all, "mail");
            assert_eq!(mail.provider, ProviderKind::Email);
            assert_eq!((mail.received, mail.success, mail.errors), (1, 1, 0));
        }

        #[test]
        fn no_health_message_repeats_what_the_request_carried() {
            let invalid = InvalidPayload::field("payload.summary", "'+15555550123' is not a summary");
            let message = IngestError::Payload(invalid).health_message();
            assert!(!message.contains("5555"), "{message}");
            let message = IngestError::Signature(SignatureError::Mismatch).health_message();
            assert_eq!(message, "signature check failed");
        }
    }

    mod rate_limit {
        use super::*;

        const LIMITED: &str = r#"
settings:
  rate_limit_per_minute: 2
services:
  - id: checkout
    integrations:
      - {id: pd, type: events-v2, key: 22222222222222222222222222222222}
      - {id: unlimited, type: events-v2, key: 33333333333333333333333333333333, rate_limit_per_minute: 0}
"#;

        /// One instant for every request: the counts never straddle a minute.
        const NOW: &str = "2027-01-15T10:00:20Z";

        fn event(key: &str, action: &str) -> Vec<u8> {
            serde_json::to_vec(&serde_json::json!({
                "routing_key": key,
                "event_action": action,
                "dedup_key": "disk",
                "payload": {"summary": "disk full", "source": "db1", "severity": "critical"},
            }))
            .unwrap()
        }

        fn send(ingest: &IngestService, body: &[u8]) -> Answer {
            let headers = HeaderMap::new();
            block_on(ingest.handle(IngestRequest {
                provider: ProviderKind::EventsV2,
                headers: &headers,
                query: None,
                body,
                received_at: NOW.parse().unwrap(),
            }))
        }

        fn header(answer: &Answer, name: &str) -> Option<String> {
            answer.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
        }

        #[test]
        fn past_the_limit_triggers_get_a_429_and_nothing_is_enqueued() {
            let store = Arc::new(MemoryStore::new());
            let catalog = Catalog::from_yaml(LIMITED, "test.yaml").unwrap();
            let ingest =
                IngestService::new(Arc::new(catalog), store.clone(), store.clone()).with_rate_limiter(store.clone());
            let trigger = event("22222222222222222222222222222222", "trigger");

            let first = send(&ingest, &trigger);
            assert_eq!(first.status(), StatusCode::ACCEPTED);
            assert_eq!(header(&first, "x-ratelimit-limit").as_deref(), Some("2"));
            assert_eq!(header(&first, "x-ratelimit-remaining").as_deref(), Some("1"));
            assert!(header(&first, "x-ratelimit-reset").is_some());
            assert_eq!(send(&ingest, &trigger).status(), StatusCode::ACCEPTED);

            let refused = send(&ingest, &trigger);
            assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
            let body: serde_json::Value = serde_json::from_slice(refused.body()).unwrap();
            assert_eq!(body["status"], "rate limited");
            assert_eq!(body["integration"], "pd");
            assert_eq!(body["limit"], 2);
            let retry_after: u64 = header(&refused, "retry-after").unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry_after), "{retry_after}");
            assert_eq!(body["retry_after"], retry_after);
            assert_eq!(header(&refused, "x-ratelimit-remaining").as_deref(), Some("0"));
            assert!(body["message"].as_str().unwrap().contains("2 requests per minute"));
            assert_eq!(store.queued_events().len(), 2, "the refused trigger was enqueued");

            // A resolve always gets through, even over the limit.
            let resolve = send(&ingest, &event("22222222222222222222222222222222", "resolve"));
            assert_eq!(resolve.status(), StatusCode::ACCEPTED);
            assert_eq!(store.queued_events().len(), 3);

            // Another integration has its own count; 0 means no limit.
            for _ in 0..5 {
                let answer = send(&ingest, &event("33333333333333333333333333333333", "trigger"));
                assert_eq!(answer.status(), StatusCode::ACCEPTED);
                assert_eq!(header(&answer, "x-ratelimit-limit"), None);
            }
        }

        #[test]
        fn refused_requests_spend_no_quota_and_previews_are_free() {
            let store = Arc::new(MemoryStore::new());
            let catalog = Catalog::from_yaml(LIMITED, "test.yaml").unwrap();
            let ingest =
                IngestService::new(Arc::new(catalog), store.clone(), store.clone()).with_rate_limiter(store.clone());
            // Bad payloads are refused before they are counted.
            for _ in 0..5 {
                let answer = send(&ingest, br#"{"routing_key": "22222222222222222222222222222222"}"#);
                assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
            }
            let headers = HeaderMap::new();
            let body = event("22222222222222222222222222222222", "trigger");
            for _ in 0..5 {
                let preview = block_on(ingest.preview(IngestRequest {
                    provider: ProviderKind::EventsV2,
                    headers: &headers,
                    query: None,
                    body: &body,
                    received_at: NOW.parse().unwrap(),
                }));
                assert_eq!(preview.status(), StatusCode::OK);
            }
            assert_eq!(send(&ingest, &body).status(), StatusCode::ACCEPTED);
        }

        #[test]
        fn the_default_is_120_per_minute() {
            let catalog = Catalog::from_yaml(CONFIG, "test.yaml").unwrap();
            assert_eq!(catalog.integrations[0].rate_limit_per_minute, Some(120));
        }
    }

    mod secret_references {
        use http::HeaderValue;

        use super::*;
        use crate::signature::hmac_sha256_hex;

        const BODY: &[u8] = br#"{"title":"Card declines up","severity":"error","id":"declines","status":"triggered"}"#;

        fn service(secret_file: &std::path::Path) -> (IngestService, Arc<MemoryStore>) {
            let yaml = format!(
                "services:\n  - id: payments\n    integrations:\n      - id: hook\n        type: webhook\n        key: 55555555555555555555555555555555\n        secret: {{file: {}}}\n",
                secret_file.display()
            );
            let catalog = Catalog::from_yaml(&yaml, "test.yaml").unwrap();
            assert_eq!(catalog.integrations[0].secret, None, "the value is not in the config");
            let store = Arc::new(MemoryStore::new());
            (
                IngestService::new(Arc::new(catalog), store.clone(), store.clone()),
                store,
            )
        }

        fn post(ingest: &IngestService, signature: Option<String>) -> Answer {
            let mut headers = HeaderMap::new();
            headers.insert(
                "x-integration-key",
                HeaderValue::from_static("55555555555555555555555555555555"),
            );
            if let Some(signature) = signature {
                headers.insert("x-signature", HeaderValue::from_str(&signature).unwrap());
            }
            block_on(ingest.handle(IngestRequest {
                provider: ProviderKind::Webhook,
                headers: &headers,
                query: None,
                body: BODY,
                received_at: Utc::now(),
            }))
        }

        #[test]
        fn a_secret_read_from_a_file_signs_requests() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("hook-secret");
            std::fs::write(&path, "file-held-signing-secret\n").unwrap();
            let (ingest, store) = service(&path);

            let good = format!("sha256={}", hmac_sha256_hex(b"file-held-signing-secret", BODY));
            assert_eq!(post(&ingest, Some(good)).status(), StatusCode::ACCEPTED);
            let forged = format!("sha256={}", hmac_sha256_hex(b"another-secret-entirely", BODY));
            assert_eq!(post(&ingest, Some(forged)).status(), StatusCode::UNAUTHORIZED);
            assert_eq!(post(&ingest, None).status(), StatusCode::UNAUTHORIZED);
            assert_eq!(store.queued_events().len(), 1);
        }

        #[test]
        fn an_unreadable_secret_is_a_503_that_names_nothing() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("never-written");
            let (ingest, store) = service(&path);
            let signature = format!("sha256={}", hmac_sha256_hex(b"whatever", BODY));
            let answer = post(&ingest, Some(signature));
            assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
            let text = String::from_utf8_lossy(answer.body()).into_owned();
            assert!(text.contains("signing secret could not be read"), "{text}");
            assert!(!text.contains("never-written"), "the answer names the file: {text}");
            assert!(store.queued_events().is_empty());
        }
    }

    mod sns {
        use http::HeaderValue;
        use serde_json::{json, Value};

        use super::*;
        use crate::sns::testing::{at, block_on, sign, CountingFolders, RecordingSubscriptions};
        use crate::sns::SnsMessage;

        const KEY: &str = "33333333333333333333333333333333";
        const OTHER_TOPIC_KEY: &str = "44444444444444444444444444444444";
        const TOPIC: &str = "arn:aws:sns:us-east-1:427809481713:if-sim-app-AWSCloudWatchDiagnostics";
        const SIGNER_TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:alarms";
        const CONFIG: &str = r#"
services:
  - id: checkout
    integrations:
      - id: alarms
        type: cloudwatch
        key: 33333333333333333333333333333333
        cloudwatch:
          topics:
            - arn:aws:sns:us-east-1:427809481713:if-sim-app-AWSCloudWatchDiagnostics
            - arn:aws:sns:eu-west-1:123456789012:alarms
            - arn:aws:sns:ap-southeast-2:257706363616:phd-info-dev
      - id: other-alarms
        type: cloudwatch
        key: 44444444444444444444444444444444
        cloudwatch: {topics: ["arn:aws:sns:eu-west-1:123456789012:someone-else"]}
      - {id: pd, type: events-v2, key: 22222222222222222222222222222222}
"#;
        const ALARM: &str = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../events/cloudwatch/alarm.json"
        ));
        const INSUFFICIENT: &str = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../events/cloudwatch/insufficient-data.json"
        ));
        const NOT_AN_ALARM: &str = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../events/cloudwatch/not-an-alarm.json"
        ));
        const CONFIRMATION: &str = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../events/cloudwatch/subscription-confirmation.json"
        ));
        /// Just after the real alarm sample was sent.
        const ALARM_CLOCK: &str = "2021-11-10T02:46:00Z";
        /// Inside the test signer's validity.
        const SIGNER_CLOCK: &str = "2027-01-01T00:00:05Z";

        struct Stack {
            ingest: IngestService,
            store: Arc<MemoryStore>,
            certificates: Arc<CountingFolders>,
            subscriptions: Arc<RecordingSubscriptions>,
        }

        fn stack_with(certificates: CountingFolders, sns: bool) -> Stack {
            let store = Arc::new(MemoryStore::new());
            let catalog = Catalog::from_yaml(CONFIG, "test.yaml").unwrap();
            let certificates = Arc::new(certificates);
            let subscriptions = Arc::new(RecordingSubscriptions::default());
            let mut ingest = IngestService::new(Arc::new(catalog), store.clone(), store.clone());
            if sns {
                ingest = ingest.with_sns(Sns::new(certificates.clone(), subscriptions.clone()));
            }
            Stack {
                ingest,
                store,
                certificates,
                subscriptions,
            }
        }

        fn stack() -> Stack {
            stack_with(CountingFolders::default(), true)
        }

        impl Stack {
            fn post_with(&self, key: &str, body: &str, now: &str, headers: HeaderMap) -> (StatusCode, Value) {
                let query = format!("token={key}");
                let answer = block_on(self.ingest.handle(IngestRequest {
                    provider: ProviderKind::CloudWatch,
                    headers: &headers,
                    query: Some(&query),
                    body: body.as_bytes(),
                    received_at: at(now),
                }));
                let body = serde_json::from_slice(answer.body()).unwrap_or(Value::Null);
                (answer.status(), body)
            }

            /// As SNS posts: the key in the query, text/plain.
            fn post(&self, body: &str, now: &str) -> (StatusCode, Value) {
                let mut headers = HeaderMap::new();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=UTF-8"),
                );
                headers.insert("x-amz-sns-message-type", HeaderValue::from_static("Notification"));
                self.post_with(KEY, body, now, headers)
            }
        }

        fn envelope(sample: &str, change: impl FnOnce(&mut Value)) -> String {
            let mut value: Value = serde_json::from_str(sample).unwrap();
            change(&mut value);
            value.to_string()
        }

        /// A message signed by the test signer at SIGNER_CLOCK, on the
        /// allowed test topic.
        fn signed(sample: &str, change: impl FnOnce(&mut SnsMessage)) -> String {
            let text = sample.replace("arn:aws:sns:eu-west-1:1234567890:alerta-test", SIGNER_TOPIC);
            let mut message = SnsMessage::parse(text.as_bytes()).unwrap();
            message.timestamp = "2027-01-01T00:00:00.000Z".into();
            change(&mut message);
            sign(&mut message);
            let mut value: Value = serde_json::from_str(&text).unwrap();
            for (key, field) in [
                ("Type", Some(message.kind.as_str().to_owned())),
                ("TopicArn", Some(message.topic_arn.clone())),
                ("Timestamp", Some(message.timestamp.clone())),
                ("SubscribeURL", message.subscribe_url.clone()),
                ("SignatureVersion", message.signature_version.clone()),
                ("Signature", message.signature.clone()),
                ("SigningCertURL", message.signing_cert_url.clone()),
            ] {
                if let Some(field) = field {
                    value[key] = json!(field);
                }
            }
            value.to_string()
        }

        fn alarms_id() -> crate::event::IntegrationId {
            crate::event::IntegrationId::parse("alarms").unwrap()
        }

        #[test]
        fn a_real_signed_alarm_is_queued_under_an_id_from_its_message_id() {
            let stack = stack();
            let (status, body) = stack.post(ALARM, ALARM_CLOCK);
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            let arn = "arn:aws:cloudwatch:us-east-1:427809481713:alarm:if-sim-app_427809481713_us-east-1-metric_emitting_node_failure";
            assert_eq!(body["dedup_keys"], json!([arn]));
            let events = stack.store.queued_events();
            assert_eq!(events.len(), 1);
            let expected = EventId::from_delivery(&alarms_id(), "57c992bc-21f6-5a74-bda5-c8b9155571ca", 0);
            assert_eq!(events[0].id, expected);
            assert_eq!(events[0].action(), Action::Trigger);
            assert_eq!(
                events[0].origin,
                Origin::Integration {
                    integration: alarms_id(),
                    provider: ProviderKind::CloudWatch
                }
            );

            // SNS retries with the same MessageId: the same event, which the
            // processor applies once.
            let (status, _) = stack.post(ALARM, "2021-11-10T02:50:00Z");
            assert_eq!(status, StatusCode::ACCEPTED);
            let events = stack.store.queued_events();
            assert_eq!(events.len(), 2);
            assert_eq!(events[1].id, events[0].id);
            assert_eq!(stack.certificates.fetches(), 1, "the certificate is cached");
        }

        #[test]
        fn a_tampered_or_stale_alarm_is_refused_and_nothing_queued() {
            let stack = stack();
            let tampered = envelope(ALARM, |v| {
                let message = v["Message"].as_str().unwrap().replacen("ALARM", "OK", 1);
                v["Message"] = json!(message);
            });
            let (status, body) = stack.post(&tampered, ALARM_CLOCK);
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
            assert_eq!(body["status"], json!("unauthorized"));
            assert!(body["message"].as_str().unwrap().contains("does not match"), "{body}");

            let (status, body) = stack.post(ALARM, "2021-11-10T06:00:00Z");
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
            assert!(body["message"].as_str().unwrap().contains("two hours"), "{body}");

            let http = envelope(ALARM, |v| {
                let url = v["SigningCertURL"].as_str().unwrap().replace("https://", "http://");
                v["SigningCertURL"] = json!(url);
            });
            assert_eq!(stack.post(&http, ALARM_CLOCK).0, StatusCode::UNAUTHORIZED);
            assert!(stack.store.queued_events().is_empty());
        }

        #[test]
        fn a_topic_the_integration_does_not_list_is_refused_before_any_fetch() {
            let stack = stack();
            let (status, body) = stack.post_with(OTHER_TOPIC_KEY, ALARM, ALARM_CLOCK, HeaderMap::new());
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
            assert_eq!(body["status"], json!("forbidden"));
            assert!(body["message"].as_str().unwrap().contains(TOPIC), "{body}");
            assert_eq!(stack.certificates.fetches(), 0);
            assert!(stack.store.queued_events().is_empty());
        }

        #[test]
        fn a_subscription_confirmation_is_confirmed_and_opens_nothing() {
            let stack = stack();
            let body = signed(CONFIRMATION, |_| {});
            let (status, answer) = stack.post(&body, SIGNER_CLOCK);
            assert_eq!(status, StatusCode::OK, "{answer}");
            assert_eq!(answer["status"], json!("confirmed"));
            let confirmed = stack.subscriptions.confirmed();
            assert_eq!(confirmed.len(), 1);
            assert!(confirmed[0].starts_with(&format!(
                "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={SIGNER_TOPIC}&Token="
            )));
            // The answer never carries the token.
            assert!(!answer.to_string().contains("2336412f37"), "{answer}");
            assert!(stack.store.queued_events().is_empty());
        }

        #[test]
        fn confirmations_that_are_unsigned_off_sns_or_for_other_topics_are_never_followed() {
            let stack = stack();
            // The documented sample: its signature is for another account.
            let (status, _) = stack.post(
                &CONFIRMATION.replace("1234567890:alerta-test", "123456789012:alarms"),
                SIGNER_CLOCK,
            );
            assert_eq!(status, StatusCode::UNAUTHORIZED);

            let off_sns = signed(CONFIRMATION, |m| {
                m.subscribe_url = m
                    .subscribe_url
                    .as_ref()
                    .map(|u| u.replace("sns.eu-west-1.amazonaws.com", "attacker.example"));
            });
            let (status, answer) = stack.post(&off_sns, SIGNER_CLOCK);
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
            assert!(answer["message"].as_str().unwrap().contains("SubscribeURL"), "{answer}");

            let other_topic = signed(CONFIRMATION, |m| {
                m.topic_arn = "arn:aws:sns:eu-west-1:123456789012:someone-else".into();
            });
            assert_eq!(stack.post(&other_topic, SIGNER_CLOCK).0, StatusCode::FORBIDDEN);
            assert!(stack.subscriptions.confirmed().is_empty());
        }

        #[test]
        fn an_unsubscribe_confirmation_is_acknowledged_and_nothing_else() {
            let stack = stack();
            let body = signed(CONFIRMATION, |m| {
                m.kind = crate::sns::SnsMessageType::UnsubscribeConfirmation
            });
            let (status, answer) = stack.post(&body, SIGNER_CLOCK);
            assert_eq!(status, StatusCode::OK, "{answer}");
            assert_eq!(answer["status"], json!("acknowledged"));
            assert!(stack.subscriptions.confirmed().is_empty());
            assert!(stack.store.queued_events().is_empty());
        }

        #[test]
        fn raw_message_delivery_is_refused_with_a_clear_400() {
            let stack = stack();
            let alarm = SnsMessage::parse(ALARM.as_bytes()).unwrap().message;
            let (status, body) = stack.post(&alarm, ALARM_CLOCK);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert!(
                body["errors"][0].as_str().unwrap().contains("raw message delivery"),
                "{body}"
            );

            let mut headers = HeaderMap::new();
            headers.insert("x-amz-sns-rawdelivery", HeaderValue::from_static("true"));
            let (status, body) = stack.post_with(KEY, ALARM, ALARM_CLOCK, headers);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert!(
                body["errors"][0].as_str().unwrap().contains("raw message delivery"),
                "{body}"
            );
            assert_eq!(stack.certificates.fetches(), 0);
        }

        #[test]
        fn a_signed_message_that_is_not_an_alarm_is_refused_by_field() {
            // A real AWS Health event, signed by SNS, on an allowed topic.
            let stack = stack();
            let (status, body) = stack.post(NOT_AN_ALARM, "2022-02-18T08:36:00Z");
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(
                body["errors"],
                json!([
                    "NewStateValue: is missing",
                    "AlarmName: is missing (and there is no AlarmArn)"
                ])
            );
            assert!(stack.store.queued_events().is_empty());
        }

        #[test]
        fn insufficient_data_left_ignored_is_accepted_with_no_event() {
            let stack = stack();
            let body = signed(INSUFFICIENT, |_| {});
            let (status, answer) = stack.post(&body, SIGNER_CLOCK);
            assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
            assert_eq!(answer["events"], json!(0));
            assert!(stack.store.queued_events().is_empty());
        }

        #[test]
        fn without_sns_support_or_certificates_the_answer_is_503_so_sns_retries() {
            let (status, body) = stack_with(CountingFolders::default(), false).post(ALARM, ALARM_CLOCK);
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert_eq!(body["status"], json!("unavailable"));

            let down = stack_with(
                CountingFolders {
                    fail: true,
                    ..CountingFolders::default()
                },
                true,
            );
            let headers = HeaderMap::new();
            let query = format!("token={KEY}");
            let answer = block_on(down.ingest.handle(IngestRequest {
                provider: ProviderKind::CloudWatch,
                headers: &headers,
                query: Some(&query),
                body: ALARM.as_bytes(),
                received_at: at(ALARM_CLOCK),
            }));
            assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(answer.headers().contains_key(http::header::RETRY_AFTER));
        }

        #[test]
        fn a_notification_aws_delivered_itself_is_ingested_the_same_way() {
            let stack = stack();
            let catalog = Catalog::from_yaml(CONFIG, "test.yaml").unwrap();
            let alarms = catalog.integrations[0].clone();
            let message = SnsMessage::parse(ALARM.as_bytes()).unwrap();
            let notification = SnsNotification {
                message_id: &message.message_id,
                topic_arn: &message.topic_arn,
                message: &message.message,
                received_at: at(ALARM_CLOCK),
            };
            let answer = block_on(stack.ingest.ingest_sns_notification(&alarms, notification)).unwrap();
            assert_eq!(answer.status(), StatusCode::ACCEPTED);
            let events = stack.store.queued_events();
            assert_eq!(
                events[0].id,
                EventId::from_delivery(&alarms_id(), "57c992bc-21f6-5a74-bda5-c8b9155571ca", 0)
            );

            let other = catalog.integrations[1].clone();
            let error = block_on(stack.ingest.ingest_sns_notification(&other, notification)).unwrap_err();
            assert_eq!(error.status(), StatusCode::FORBIDDEN);
            let events_v2 = catalog.integrations[2].clone();
            let error = block_on(stack.ingest.ingest_sns_notification(&events_v2, notification)).unwrap_err();
            assert!(matches!(error, IngestError::WrongProvider { .. }), "{error}");
            assert_eq!(stack.store.queued_events().len(), 1);
        }
    }

    #[test]
    fn an_event_that_fits_a_queue_message_is_queued() {
        let (answer, store) = post(&trigger(200 * 1024));
        assert_eq!(answer.status(), StatusCode::ACCEPTED);
        assert_eq!(store.queued_events().len(), 1);
    }

    #[test]
    fn an_event_too_large_for_one_queue_message_is_refused_whole() {
        // Under the 512 KB body limit, over SQS's 256 KiB message limit.
        let (answer, store) = post(&trigger(300 * 1024));
        assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body: serde_json::Value = serde_json::from_slice(answer.body()).unwrap();
        assert_eq!(body["status"], "payload too large");
        assert!(body["message"].as_str().unwrap().contains("262144"), "{body}");
        assert!(store.queued_events().is_empty());
    }
}
