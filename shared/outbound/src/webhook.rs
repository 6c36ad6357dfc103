//! Outgoing webhooks, for the notify-webhook function and the local stack
//! alike: the job names the webhook (`<format>:<host>#<index>`), the
//! service's config holds its URL and secret, and the body is posted as
//! rendered. Answers are sorted into retryable (timeouts, 408, 429, 5xx,
//! with Retry-After) and not (other answers); the URL, whose path is a
//! credential for chat webhooks, never reaches a log or an error.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;

use tocsin_core::config::{ConfiguredSecret, Secret, Webhook, WebhookFormat, WebhookTarget};
use tocsin_core::notify::{Channel, Message, NotificationJob, Notifier, NotifyError, Receipt};
use tocsin_core::ports::ConfigStore;
use tocsin_core::secrets::{LocalSecrets, SecretSource};

/// The event of a delivery: `incident.triggered`, … (every format).
pub const EVENT_HEADER: &str = "X-Webhook-Event";
/// `sha256=<hex HMAC-SHA256 of the raw body>`, generic webhooks with a
/// secret only.
pub const SIGNATURE_HEADER: &str = "X-Webhook-Signature";
/// The job id, the same on every attempt: receivers deduplicate on it.
pub const DELIVERY_HEADER: &str = "X-Webhook-Delivery";

/// The X-Webhook-Signature value of `body` under `secret`.
pub fn signature(secret: &Secret, body: &[u8]) -> String {
    format!(
        "sha256={}",
        tocsin_core::signature::hmac_sha256_hex(secret.expose().as_bytes(), body)
    )
}

/// Delivers webhook messages to the webhooks of each job's service.
pub struct WebhookNotifier {
    client: reqwest::Client,
    config: Arc<dyn ConfigStore>,
    /// Reads a secret the config names (`secret: {env: …}`); on AWS the
    /// cached Secrets Manager reader of the integrations.
    secrets: Arc<dyn SecretSource>,
}

impl fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookNotifier").finish_non_exhaustive()
    }
}

impl WebhookNotifier {
    pub const TIMEOUT: Duration = Duration::from_secs(10);

    pub fn new(config: Arc<dyn ConfigStore>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Self::TIMEOUT)
            // A redirect could carry the signed body somewhere the config
            // never named: a 3xx is refused instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            // Only a TLS backend that cannot start fails here (rustls with
            // bundled roots always starts): stop at start-up.
            .expect("an HTTPS client with rustls builds");
        WebhookNotifier {
            client,
            config,
            secrets: Arc::new(LocalSecrets),
        }
    }

    /// Reads the secrets the config names through `secrets` instead of
    /// the environment and files only.
    pub fn with_secrets(mut self, secrets: Arc<dyn SecretSource>) -> Self {
        self.secrets = secrets;
        self
    }

    /// The signing secret of `hook`, read if the config names it. One that
    /// cannot be read fails the delivery for a retry (then the dead-letter
    /// queue): a generic webhook with a secret is never posted unsigned.
    async fn signing_secret(&self, hook: &Webhook) -> Result<Option<Secret>, NotifyError> {
        match (hook.format, &hook.secret) {
            (WebhookFormat::Generic, Some(ConfiguredSecret::Value(secret))) => Ok(Some(secret.clone())),
            (WebhookFormat::Generic, Some(ConfiguredSecret::Reference(reference))) => self
                .secrets
                .fetch(reference)
                .await
                .map(Some)
                .map_err(|e| NotifyError::Transient {
                    reason: format!(
                        "could not read the signing secret of the webhook to {}",
                        hook.url.host()
                    ),
                    retry_after_secs: None,
                    source: Some(Box::new(e)),
                }),
            _ => Ok(None),
        }
    }

    /// The webhook a job names, if the service still has it: same index,
    /// same format, same host.
    async fn webhook(&self, job: &NotificationJob) -> Result<Webhook, NotifyError> {
        let gone = |why: &str| NotifyError::Permanent {
            reason: format!("webhook {} of service {}: {why}", job.to, job.incident.service),
            source: None,
        };
        let target = WebhookTarget::parse(&job.to).ok_or_else(|| gone("not a webhook recipient"))?;
        let service = self
            .config
            .service(&job.incident.service)
            .await
            .map_err(|e| NotifyError::Transient {
                reason: "could not read the service's webhooks".to_owned(),
                retry_after_secs: None,
                source: Some(Box::new(e)),
            })?
            .ok_or_else(|| gone("no such service"))?;
        service
            .policy
            .webhooks
            .into_iter()
            .nth(target.index)
            .filter(|hook| hook.target(target.index) == target)
            .ok_or_else(|| gone("no longer configured"))
    }

    /// Posts `body` to `hook`, signed when it is generic with a secret.
    pub async fn post(
        &self,
        hook: &Webhook,
        event: &str,
        delivery_id: &str,
        body: &serde_json::Value,
    ) -> Result<Receipt, NotifyError> {
        let bytes = serde_json::to_vec(body).map_err(|e| NotifyError::Permanent {
            reason: "the webhook body did not serialize".to_owned(),
            source: Some(Box::new(e)),
        })?;
        let secret = self.signing_secret(hook).await?;
        let mut request = self
            .client
            .post(hook.url.expose())
            .header(CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, event)
            .header(DELIVERY_HEADER, delivery_id);
        if let Some(secret) = &secret {
            request = request.header(SIGNATURE_HEADER, signature(secret, &bytes));
        }
        let host = hook.url.host();
        let response = request.body(bytes).send().await.map_err(|e| request_failed(e, host))?;
        let status = response.status();
        if status.is_success() {
            return Ok(Receipt::sent(Some(format!("{host} HTTP {}", status.as_u16()))));
        }
        Err(refusal(host, status, response.headers()))
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
    fn channel(&self) -> Channel {
        Channel::Webhook
    }

    #[tracing::instrument(skip_all, fields(webhook = %job.to))]
    async fn deliver(&self, job: &NotificationJob, message: &Message) -> Result<Receipt, NotifyError> {
        let Message::Webhook { event, body, .. } = message else {
            return Err(NotifyError::wrong_message(message, Channel::Webhook));
        };
        let hook = self.webhook(job).await?;
        self.post(&hook, event, &job.id, body).await
    }
}

/// Sorts a non-2xx answer: 408, 429 and 5xx are retried (after Retry-After
/// seconds when given), anything else will not succeed as sent.
fn refusal(host: &str, status: StatusCode, headers: &HeaderMap) -> NotifyError {
    let reason = format!("{host} answered HTTP {}", status.as_u16());
    let retryable =
        status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT || status.is_server_error();
    if retryable {
        NotifyError::Transient {
            reason,
            retry_after_secs: retry_after(headers),
            source: None,
        }
    } else {
        NotifyError::Permanent { reason, source: None }
    }
}

/// A failed request, without its URL.
fn request_failed(error: reqwest::Error, host: &str) -> NotifyError {
    let error = error.without_url();
    if error.is_builder() {
        return NotifyError::Permanent {
            reason: format!("the webhook URL of {host} is not a valid URL"),
            source: Some(Box::new(error)),
        };
    }
    let reason = if error.is_timeout() {
        format!("{host} did not answer within {}s", WebhookNotifier::TIMEOUT.as_secs())
    } else if error.is_connect() {
        format!("could not connect to {host}")
    } else {
        format!("the request to {host} failed")
    };
    NotifyError::Transient {
        reason,
        retry_after_secs: None,
        source: Some(Box::new(error)),
    }
}

/// Retry-After in seconds; an HTTP date is left to the queue's backoff.
fn retry_after(headers: &HeaderMap) -> Option<u64> {
    headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::HeaderMap as AxumHeaders;
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use axum::Router;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;
    use tocsin_core::config::{NotificationPolicy, Service, WebhookUrl};
    use tocsin_core::contract::sample_job;
    use tocsin_core::event::{ServiceId, Severity};
    use tocsin_core::incident::TransitionKind;
    use tocsin_core::ports::BackendError;
    use tocsin_core::render::{render, RenderContext};

    use super::*;

    type Received = Arc<Mutex<Vec<(AxumHeaders, Bytes)>>>;

    async fn receive(State(received): State<Received>, headers: AxumHeaders, body: Bytes) -> Response {
        received.lock().expect("lock").push((headers, body));
        axum::http::StatusCode::NO_CONTENT.into_response()
    }

    async fn answer_with(State(received): State<Received>, headers: AxumHeaders, body: Bytes) -> Response {
        let code: u16 = headers
            .get("x-webhook-delivery")
            .and_then(|v| v.to_str().ok())
            .and_then(|id| id.rsplit('/').next())
            .and_then(|c| c.parse().ok())
            .unwrap_or(200);
        received.lock().expect("lock").push((headers, body));
        match code {
            429 => (
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                [(axum::http::header::RETRY_AFTER, "7")],
                "slow down",
            )
                .into_response(),
            code => axum::http::StatusCode::from_u16(code)
                .unwrap_or(axum::http::StatusCode::OK)
                .into_response(),
        }
    }

    /// A receiver on 127.0.0.1: its base URL and what it received.
    async fn receiver() -> (String, Received) {
        let received = Received::default();
        let app = Router::new()
            .route("/hook", post(receive))
            .route("/answer", post(answer_with))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{address}"), received)
    }

    struct OneService(Service);

    #[async_trait]
    impl ConfigStore for OneService {
        async fn integration_by_key(
            &self,
            _: &tocsin_core::auth::KeyHash,
        ) -> Result<Option<tocsin_core::config::Integration>, BackendError> {
            Ok(None)
        }
        async fn integration_by_topic(
            &self,
            _: &tocsin_core::sns::TopicArn,
        ) -> Result<Option<tocsin_core::config::Integration>, BackendError> {
            Ok(None)
        }
        async fn service(&self, id: &ServiceId) -> Result<Option<Service>, BackendError> {
            Ok((id == &self.0.id).then(|| self.0.clone()))
        }
        async fn api_key(
            &self,
            _: &tocsin_core::auth::KeyHash,
        ) -> Result<Option<tocsin_core::auth::ApiKey>, BackendError> {
            Ok(None)
        }
    }

    fn notifier(hooks: Vec<Webhook>) -> WebhookNotifier {
        WebhookNotifier::new(Arc::new(OneService(Service {
            id: ServiceId::parse("checkout").expect("id"),
            name: "Checkout".into(),
            policy: NotificationPolicy {
                email: Vec::new(),
                sms: Vec::new(),
                slack: None,
                webhooks: hooks,
                on: vec![TransitionKind::Triggered],
                min_severity: Severity::Info,
                min_severity_by_channel: Default::default(),
                escalation: Vec::new(),
            },
        })))
    }

    fn hook(url: &str, format: WebhookFormat, secret: Option<&str>) -> Webhook {
        Webhook {
            url: WebhookUrl::parse(url).expect("url"),
            format,
            secret: secret.map(|s| ConfiguredSecret::Value(Secret::new(s))),
        }
    }

    fn job_for(hook: &Webhook, index: usize) -> NotificationJob {
        let mut job = sample_job(Channel::Webhook, "Disk full");
        job.to = hook.target(index).recipient();
        job
    }

    #[tokio::test]
    async fn a_generic_webhook_is_posted_signed_with_its_event() {
        let (base, received) = receiver().await;
        let hook = hook(&format!("{base}/hook"), WebhookFormat::Generic, Some("whsec-test"));
        let job = job_for(&hook, 0);
        let notifier = notifier(vec![hook]);

        let receipt = notifier
            .deliver(&job, &render(&job, &RenderContext::default()))
            .await
            .expect("delivered");
        assert_eq!(receipt.reference.as_deref(), Some("127.0.0.1 HTTP 204"));

        let received = received.lock().expect("lock");
        let (headers, body) = &received[0];
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-webhook-event"], "incident.triggered");
        assert_eq!(headers["x-webhook-delivery"], job.id.as_str());
        let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec-test").expect("key");
        mac.update(body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(headers["x-webhook-signature"], expected.as_str());
        let json: serde_json::Value = serde_json::from_slice(body).expect("json");
        assert_eq!(json["event"], "incident.triggered");
        assert_eq!(json["incident"]["summary"], "Disk full");
    }

    #[tokio::test]
    async fn a_secret_named_by_environment_variable_signs_and_one_unreadable_fails_for_a_retry() {
        use tocsin_core::secrets::SecretRef;

        let (base, received) = receiver().await;
        let variable = "TOCSIN_TEST_WEBHOOK_SECRET_FROM_ENV";
        // Only this test reads or sets the variable.
        std::env::set_var(variable, "whsec-from-env\n");
        let mut named = hook(&format!("{base}/hook"), WebhookFormat::Generic, None);
        named.secret = Some(ConfiguredSecret::Reference(SecretRef::Env(variable.into())));
        let mut unreadable = named.clone();
        unreadable.secret = Some(ConfiguredSecret::Reference(SecretRef::Env(
            "TOCSIN_TEST_SURELY_UNSET_WEBHOOK_SECRET".into(),
        )));
        let notifier = notifier(vec![named.clone(), unreadable.clone()]);

        let job = job_for(&named, 0);
        notifier
            .deliver(&job, &render(&job, &RenderContext::default()))
            .await
            .expect("delivered");
        let job = job_for(&unreadable, 1);
        let error = notifier
            .deliver(&job, &render(&job, &RenderContext::default()))
            .await
            .expect_err("no secret, no delivery");
        assert!(matches!(error, NotifyError::Transient { .. }), "{error:?}");

        let received = received.lock().expect("lock");
        assert_eq!(received.len(), 1, "nothing is posted unsigned");
        let (headers, body) = &received[0];
        let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec-from-env").expect("key");
        mac.update(body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(headers["x-webhook-signature"], expected.as_str());
    }

    #[tokio::test]
    async fn chat_formats_and_unsigned_generic_carry_no_signature() {
        let (base, received) = receiver().await;
        let discord = hook(&format!("{base}/hook"), WebhookFormat::Discord, None);
        let plain = hook(&format!("{base}/hook"), WebhookFormat::Generic, None);
        let notifier = notifier(vec![discord.clone(), plain.clone()]);
        for job in [job_for(&discord, 0), job_for(&plain, 1)] {
            notifier
                .deliver(&job, &render(&job, &RenderContext::default()))
                .await
                .expect("delivered");
        }
        let received = received.lock().expect("lock");
        assert_eq!(received.len(), 2);
        for (headers, _) in received.iter() {
            assert!(headers.get("x-webhook-signature").is_none());
            assert_eq!(headers["x-webhook-event"], "incident.triggered");
        }
        let discord_body: serde_json::Value = serde_json::from_slice(&received[0].1).expect("json");
        assert!(discord_body["embeds"].is_array(), "{discord_body}");
    }

    async fn outcome_of(code: u16) -> NotifyError {
        let (base, _) = receiver().await;
        let hook = hook(&format!("{base}/answer"), WebhookFormat::Generic, None);
        let mut job = job_for(&hook, 0);
        job.id = format!("case/{code}");
        let message = render(&job, &RenderContext::default());
        notifier(vec![hook]).deliver(&job, &message).await.expect_err("refused")
    }

    #[tokio::test]
    async fn throttling_and_server_errors_are_retried_and_other_refusals_are_not() {
        match outcome_of(429).await {
            NotifyError::Transient { retry_after_secs, .. } => assert_eq!(retry_after_secs, Some(7)),
            other => panic!("429: {other:?}"),
        }
        for code in [500, 502, 503, 408] {
            assert!(
                matches!(outcome_of(code).await, NotifyError::Transient { .. }),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 410, 301] {
            assert!(
                matches!(outcome_of(code).await, NotifyError::Permanent { .. }),
                "{code}"
            );
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried_and_never_names_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        drop(listener);
        let hook = hook(
            &format!("http://127.0.0.1:{port}/hooks/secret-token"),
            WebhookFormat::Discord,
            None,
        );
        let job = job_for(&hook, 0);
        let error = notifier(vec![hook])
            .deliver(&job, &render(&job, &RenderContext::default()))
            .await
            .expect_err("nothing listens");
        assert!(matches!(error, NotifyError::Transient { .. }), "{error:?}");
        let mut text = format!("{error} {error:?}");
        let mut source = std::error::Error::source(&error);
        while let Some(s) = source {
            text.push_str(&s.to_string());
            source = s.source();
        }
        assert!(!text.contains("secret-token"), "{text}");
    }

    #[tokio::test]
    async fn a_webhook_removed_or_changed_since_planning_is_refused_for_good() {
        let (base, received) = receiver().await;
        let planned = hook(&format!("{base}/hook"), WebhookFormat::Generic, None);
        let job = job_for(&planned, 0);
        let message = render(&job, &RenderContext::default());
        let changed = hook(&format!("{base}/hook"), WebhookFormat::Teams, None);
        for hooks in [Vec::new(), vec![changed]] {
            let error = notifier(hooks).deliver(&job, &message).await.expect_err("gone");
            assert!(matches!(error, NotifyError::Permanent { .. }), "{error:?}");
        }
        assert!(received.lock().expect("lock").is_empty());
    }
}
