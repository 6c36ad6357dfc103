//! Notifiers of the local stack: the outbox, a JSON-lines file of every
//! message sent (with a line on the console), and Slack for real.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use tocsin_core::config::Secret;
use tocsin_core::event::{ServiceId, Severity};
use tocsin_core::incident::{IncidentId, TransitionKind};
use tocsin_core::notify::{Channel, Message, NotificationJob, Notifier, NotifyError, Receipt};

/// One line of the outbox: one message delivered to one recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxRecord {
    pub channel: Channel,
    pub to: String,
    pub incident_id: IncidentId,
    pub transition: TransitionKind,
    pub job_id: String,
    pub service: ServiceId,
    pub service_name: String,
    pub severity: Severity,
    pub summary: String,
    pub delivered_at: DateTime<Utc>,
    /// The provider's id of the message (a Slack ts), where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub message: Message,
}

/// Appends one JSON object per delivery to a file (`<data>/outbox.jsonl`),
/// and prints a short line per delivery unless told not to.
pub struct Outbox {
    path: PathBuf,
    // Held while a whole line is written, so concurrent deliveries never
    // interleave their bytes.
    file: Mutex<File>,
    print: bool,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.path)
            .field("print", &self.print)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens (or creates) the file for appending, and its folder if missing.
    /// With `print`, each delivery also prints a short line on stdout.
    pub fn open(path: impl Into<PathBuf>, print: bool) -> io::Result<Outbox> {
        let path = path.into();
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Outbox {
            path,
            file: Mutex::new(file),
            print,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the record of one delivery as one line.
    pub async fn record(
        &self,
        job: &NotificationJob,
        message: &Message,
        reference: Option<&str>,
    ) -> io::Result<OutboxRecord> {
        let incident = &job.incident;
        let record = OutboxRecord {
            channel: job.channel,
            to: job.to.clone(),
            incident_id: incident.id.clone(),
            transition: job.transition,
            job_id: job.id.clone(),
            service: incident.service.clone(),
            service_name: job.service_name.clone(),
            severity: incident.severity,
            summary: incident.summary.clone(),
            delivered_at: Utc::now(),
            reference: reference.map(str::to_owned),
            message: message.clone(),
        };
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        {
            let mut file = self.file.lock().await;
            // One short append to a local file: not worth a hop to the
            // blocking pool.
            file.write_all(&line)?;
            file.flush()?;
        }
        if self.print {
            println!("{}", console_line(&record));
        }
        Ok(record)
    }

    /// Every record in an outbox file, oldest first.
    pub fn read(path: &Path) -> io::Result<Vec<OutboxRecord>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut records = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line?;
            if !line.trim().is_empty() {
                records.push(serde_json::from_str(&line)?);
            }
        }
        Ok(records)
    }
}

/// `📣 email → oncall@example.com  [triggered] inc_… Checkout: summary`.
/// Control characters are dropped: an alert must not drive the terminal.
fn console_line(record: &OutboxRecord) -> String {
    let summary: String = record
        .summary
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let summary = summary.split_whitespace().collect::<Vec<_>>().join(" ");
    let summary = match summary.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &summary[..cut]),
        None => summary,
    };
    let service: String = record.service_name.chars().filter(|c| !c.is_control()).collect();
    format!(
        "📣 {} → {}  [{}] {} {}: {}",
        record.channel, record.to, record.transition, record.incident_id, service, summary
    )
}

fn message_channel(message: &Message) -> Channel {
    match message {
        Message::Email { .. } => Channel::Email,
        Message::Sms { .. } => Channel::Sms,
        Message::Slack { .. } => Channel::Slack,
    }
}

fn wrong_channel(message: &Message, channel: Channel) -> NotifyError {
    NotifyError::Permanent {
        reason: format!(
            "a {} message cannot be delivered by the {channel} notifier",
            message_channel(message)
        ),
        source: None,
    }
}

/// Delivers a channel by writing to the outbox only: the local stand-in for
/// SES and SNS (and for Slack when no Slack is configured).
#[derive(Debug)]
pub struct OutboxNotifier {
    pub channel: Channel,
    pub outbox: Arc<Outbox>,
}

impl OutboxNotifier {
    pub fn new(channel: Channel, outbox: Arc<Outbox>) -> Self {
        OutboxNotifier { channel, outbox }
    }
}

#[async_trait]
impl Notifier for OutboxNotifier {
    fn channel(&self) -> Channel {
        self.channel
    }

    async fn deliver(&self, job: &NotificationJob, message: &Message) -> Result<Receipt, NotifyError> {
        if message_channel(message) != self.channel {
            return Err(wrong_channel(message, self.channel));
        }
        self.outbox
            .record(job, message, None)
            .await
            .map_err(|e| NotifyError::Transient {
                reason: "could not append to the outbox".to_owned(),
                retry_after_secs: None,
                source: Some(Box::new(e)),
            })?;
        Ok(Receipt {
            reference: Some(job.id.clone()),
        })
    }
}

/// How Slack is reached. The webhook URL and the token are secrets: they are
/// never logged, and never appear in an error.
enum SlackMode {
    /// An incoming webhook: the channel is fixed by the webhook.
    Webhook { url: Secret },
    /// A bot token and `chat.postMessage`, to any channel the bot is in.
    Bot { token: Secret, post_message_url: String },
}

/// Delivers Slack messages for real, then records them in the outbox.
pub struct SlackNotifier {
    client: reqwest::Client,
    mode: SlackMode,
    outbox: Arc<Outbox>,
}

impl fmt::Debug for SlackNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &self.mode {
            SlackMode::Webhook { .. } => "incoming webhook".to_owned(),
            SlackMode::Bot { post_message_url, .. } => format!("bot via {post_message_url}"),
        };
        f.debug_struct("SlackNotifier")
            .field("mode", &mode)
            .finish_non_exhaustive()
    }
}

/// Slack's API errors that no retry will fix: credentials, the channel, the
/// message itself. Anything else (ratelimited, internal_error, fatal_error,
/// service_unavailable, request_timeout, or an error Slack adds later) is
/// retried, and lands in the dead-letter queue if it never clears.
const PERMANENT_API_ERRORS: &[&str] = &[
    "invalid_auth",
    "not_authed",
    "account_inactive",
    "token_revoked",
    "token_expired",
    "no_permission",
    "missing_scope",
    "not_allowed_token_type",
    "access_denied",
    "ekm_access_denied",
    "org_login_required",
    "team_access_not_granted",
    "two_factor_setup_required",
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "restricted_action",
    "restricted_action_read_only_channel",
    "restricted_action_thread_only_channel",
    "restricted_action_non_threadable_channel",
    "msg_too_long",
    "no_text",
    "too_many_attachments",
    "invalid_blocks",
    "invalid_blocks_format",
    "invalid_attachments",
    "invalid_arguments",
    "invalid_arg_name",
    "invalid_array_arg",
    "invalid_charset",
    "invalid_form_data",
    "invalid_post_type",
    "missing_post_type",
    "method_deprecated",
    "deprecated_endpoint",
];

#[derive(Deserialize)]
struct PostMessageAnswer {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    ts: Option<String>,
}

impl SlackNotifier {
    pub const DEFAULT_API_BASE: &'static str = "https://slack.com/api";
    pub const TIMEOUT: Duration = Duration::from_secs(10);

    /// Posts to an incoming webhook, whose channel is fixed by Slack.
    pub fn incoming_webhook(url: Secret, outbox: Arc<Outbox>) -> Self {
        SlackNotifier {
            client: http_client(),
            mode: SlackMode::Webhook { url },
            outbox,
        }
    }

    /// Posts with a bot token to `chat.postMessage` of Slack's API.
    pub fn bot(token: Secret, outbox: Arc<Outbox>) -> Self {
        Self::bot_with_api_base(token, Self::DEFAULT_API_BASE, outbox)
    }

    /// Posts with a bot token to `{api_base}/chat.postMessage`: a test
    /// server instead of `https://slack.com/api`.
    pub fn bot_with_api_base(token: Secret, api_base: &str, outbox: Arc<Outbox>) -> Self {
        SlackNotifier {
            client: http_client(),
            mode: SlackMode::Bot {
                token,
                post_message_url: format!("{}/chat.postMessage", api_base.trim_end_matches('/')),
            },
            outbox,
        }
    }

    async fn post_to_webhook(
        &self,
        url: &Secret,
        text: &str,
        attachments: &serde_json::Value,
    ) -> Result<(), NotifyError> {
        let body = serde_json::json!({ "text": text, "attachments": attachments });
        let response = self
            .client
            .post(url.expose())
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body.to_string())
            .send()
            .await
            .map_err(request_failed)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = retry_after(response.headers());
        // Webhook errors are short codes such as `invalid_token` or
        // `channel_is_archived`.
        let answer = response.text().await.unwrap_or_default();
        let reason = format!("the Slack webhook answered {status}: {}", excerpt(&answer));
        Err(http_error(status, reason, retry_after))
    }

    async fn post_message(
        &self,
        token: &Secret,
        url: &str,
        channel: &str,
        text: &str,
        attachments: &serde_json::Value,
    ) -> Result<Option<String>, NotifyError> {
        let body = serde_json::json!({ "channel": channel, "text": text, "attachments": attachments });
        let response = self
            .client
            .post(url)
            .bearer_auth(token.expose())
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body.to_string())
            .send()
            .await
            .map_err(request_failed)?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        if !status.is_success() {
            let reason = format!("Slack answered {status} to chat.postMessage");
            return Err(http_error(status, reason, retry_after));
        }
        let answer: PostMessageAnswer = response.json().await.map_err(|e| NotifyError::Transient {
            reason: "Slack's answer to chat.postMessage was not the JSON expected".to_owned(),
            retry_after_secs: None,
            source: Some(Box::new(e.without_url())),
        })?;
        if answer.ok {
            return Ok(answer.ts);
        }
        let code = answer.error.unwrap_or_else(|| "unknown_error".to_owned());
        let code = excerpt(&code);
        Err(if PERMANENT_API_ERRORS.contains(&code.as_str()) {
            NotifyError::Permanent {
                reason: format!("Slack refused the message: {code}"),
                source: None,
            }
        } else {
            NotifyError::Transient {
                reason: format!("Slack could not take the message: {code}"),
                retry_after_secs: retry_after,
                source: None,
            }
        })
    }
}

#[async_trait]
impl Notifier for SlackNotifier {
    fn channel(&self) -> Channel {
        Channel::Slack
    }

    #[tracing::instrument(name = "slack_deliver", skip_all, fields(job = %job.id, channel = %job.to))]
    async fn deliver(&self, job: &NotificationJob, message: &Message) -> Result<Receipt, NotifyError> {
        let Message::Slack {
            channel,
            text,
            attachments,
        } = message
        else {
            return Err(wrong_channel(message, Channel::Slack));
        };
        let reference = match &self.mode {
            SlackMode::Webhook { url } => {
                self.post_to_webhook(url, text, attachments).await?;
                None
            }
            SlackMode::Bot {
                token,
                post_message_url,
            } => {
                self.post_message(token, post_message_url, channel, text, attachments)
                    .await?
            }
        };
        tracing::debug!(ts = reference.as_deref(), "Slack took the message");
        // Slack has the message now: failing here would send it twice.
        if let Err(error) = self.outbox.record(job, message, reference.as_deref()).await {
            tracing::warn!(%error, "delivered to Slack, but could not append to the outbox");
        }
        Ok(Receipt { reference })
    }
}

/// One client per notifier, built at start-up.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(SlackNotifier::TIMEOUT)
        .build()
        // Only a TLS backend that cannot start fails here, and rustls with
        // bundled roots always starts: as `reqwest::Client::new` does, stop
        // at start-up rather than carry an error no caller can act on.
        .expect("an HTTPS client with rustls builds")
}

/// A failed request, without its URL: a webhook URL is a secret.
fn request_failed(error: reqwest::Error) -> NotifyError {
    let error = error.without_url();
    if error.is_builder() {
        return NotifyError::Permanent {
            reason: "the Slack URL is not a valid URL".to_owned(),
            source: Some(Box::new(error)),
        };
    }
    let reason = if error.is_timeout() {
        format!("Slack did not answer within {}s", SlackNotifier::TIMEOUT.as_secs())
    } else if error.is_connect() {
        "could not connect to Slack".to_owned()
    } else {
        "the request to Slack failed".to_owned()
    };
    NotifyError::Transient {
        reason,
        retry_after_secs: None,
        source: Some(Box::new(error)),
    }
}

/// Throttling, timeouts and server errors pass; other refusals do not.
fn http_error(status: StatusCode, reason: String, retry_after: Option<u64>) -> NotifyError {
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT || status.is_server_error() {
        NotifyError::Transient {
            reason,
            retry_after_secs: retry_after,
            source: None,
        }
    } else {
        NotifyError::Permanent { reason, source: None }
    }
}

/// `Retry-After` in seconds (Slack never sends the HTTP-date form).
fn retry_after(headers: &HeaderMap) -> Option<u64> {
    headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()
}

/// At most 100 characters of an answer, on one line.
fn excerpt(text: &str) -> String {
    let line: String = text.chars().filter(|c| !c.is_control()).take(100).collect();
    line.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::sync::Mutex as StdMutex;

    use axum::extract::State;
    use axum::http::header::AUTHORIZATION;
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use axum::{Json, Router};
    use chrono::TimeZone;
    use serde_json::{json, Value};
    use tocsin_core::event::{DedupKey, Origin};
    use tocsin_core::incident::{Incident, IncidentStatus};
    use tocsin_core::render::{render, RenderContext};

    use super::*;

    const WEBHOOK_PATH: &str = "/services/T000/B000/webhook-secret-path";

    fn job(channel: Channel, summary: &str) -> NotificationJob {
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
            transition_clock: tocsin_core::incident::TransitionClock {
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

    fn outbox(dir: &tempfile::TempDir) -> Arc<Outbox> {
        Arc::new(Outbox::open(dir.path().join("data/outbox.jsonl"), false).expect("outbox"))
    }

    /// One request to the fake Slack: its Authorization header and body.
    type Request = (Option<String>, Value);

    /// What the fake Slack received.
    #[derive(Clone, Default)]
    struct Received(Arc<StdMutex<Vec<Request>>>);

    impl Received {
        fn take(&self) -> Vec<Request> {
            std::mem::take(&mut *self.0.lock().expect("lock"))
        }
    }

    async fn fake_webhook(
        State(received): State<Received>,
        headers: axum::http::HeaderMap,
        Json(body): Json<Value>,
    ) -> &'static str {
        let auth = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        received.0.lock().expect("lock").push((auth, body));
        "ok"
    }

    async fn fake_post_message(
        State(received): State<Received>,
        headers: axum::http::HeaderMap,
        Json(body): Json<Value>,
    ) -> Response {
        let auth = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        received.0.lock().expect("lock").push((auth.clone(), body));
        match auth.as_deref() {
            Some("Bearer xoxb-good") => {
                Json(json!({"ok": true, "channel": "C0123ABCD", "ts": "1718000000.000100"})).into_response()
            }
            Some("Bearer xoxb-revoked") => Json(json!({"ok": false, "error": "invalid_auth"})).into_response(),
            Some("Bearer xoxb-busy") => (
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                [(axum::http::header::RETRY_AFTER, "7")],
                Json(json!({"ok": false, "error": "ratelimited"})),
            )
                .into_response(),
            Some("Bearer xoxb-flaky") => Json(json!({"ok": false, "error": "internal_error"})).into_response(),
            Some("Bearer xoxb-down") => (axum::http::StatusCode::BAD_GATEWAY, "upstream down").into_response(),
            _ => Json(json!({"ok": false, "error": "not_authed"})).into_response(),
        }
    }

    /// A fake Slack on 127.0.0.1: its base URL and what it received.
    async fn fake_slack() -> (String, Received) {
        let received = Received::default();
        let app = Router::new()
            .route(WEBHOOK_PATH, post(fake_webhook))
            .route("/api/chat.postMessage", post(fake_post_message))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{address}"), received)
    }

    fn bot(base: &str, token: &str, outbox: Arc<Outbox>) -> SlackNotifier {
        SlackNotifier::bot_with_api_base(Secret::new(token), &format!("{base}/api/"), outbox)
    }

    fn slack_message(job: &NotificationJob) -> Message {
        render(job, &RenderContext::default())
    }

    #[tokio::test]
    async fn webhook_mode_posts_text_and_attachments_and_records_the_delivery() {
        let (base, received) = fake_slack().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = outbox(&dir);
        let url = Secret::new(format!("{base}{WEBHOOK_PATH}"));
        let notifier = SlackNotifier::incoming_webhook(url, outbox.clone());
        let job = job(Channel::Slack, "Disk full");
        let message = slack_message(&job);

        let receipt = notifier.deliver(&job, &message).await.expect("delivered");
        assert_eq!(receipt.reference, None);

        let received = received.take();
        assert_eq!(received.len(), 1);
        let (auth, body) = &received[0];
        assert_eq!(auth, &None);
        let Message::Slack { text, attachments, .. } = &message else {
            panic!("not a Slack message")
        };
        assert_eq!(body, &json!({"text": text, "attachments": attachments}));

        let records = Outbox::read(outbox.path()).expect("outbox");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].channel, Channel::Slack);
        assert_eq!(records[0].job_id, job.id);
        assert_eq!(records[0].message, message);
    }

    #[tokio::test]
    async fn bot_mode_posts_to_chat_post_message_and_answers_the_ts() {
        let (base, received) = fake_slack().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = outbox(&dir);
        let notifier = bot(&base, "xoxb-good", outbox.clone());
        let job = job(Channel::Slack, "Disk full");
        let message = slack_message(&job);

        let receipt = notifier.deliver(&job, &message).await.expect("delivered");
        assert_eq!(receipt.reference.as_deref(), Some("1718000000.000100"));

        let received = received.take();
        assert_eq!(received.len(), 1);
        let (auth, body) = &received[0];
        assert_eq!(auth.as_deref(), Some("Bearer xoxb-good"));
        assert_eq!(body["channel"], "#checkout");
        assert!(body["text"].as_str().is_some_and(|t| t.contains("Disk full")));
        assert!(body["attachments"][0]["blocks"].is_array());

        let records = Outbox::read(outbox.path()).expect("outbox");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].reference.as_deref(), Some("1718000000.000100"));
    }

    #[tokio::test]
    async fn invalid_auth_is_permanent_and_records_nothing() {
        let (base, _) = fake_slack().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = outbox(&dir);
        let notifier = bot(&base, "xoxb-revoked", outbox.clone());
        let job = job(Channel::Slack, "Disk full");

        let error = notifier.deliver(&job, &slack_message(&job)).await.expect_err("refused");
        match &error {
            NotifyError::Permanent { reason, .. } => {
                assert!(reason.contains("invalid_auth"), "{reason}")
            }
            other => panic!("expected Permanent, got {other:?}"),
        }
        assert!(!format!("{error:?}").contains("xoxb-revoked"));
        assert!(Outbox::read(outbox.path()).expect("outbox").is_empty());
    }

    #[tokio::test]
    async fn http_429_is_transient_with_retry_after() {
        let (base, _) = fake_slack().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let notifier = bot(&base, "xoxb-busy", outbox(&dir));
        let job = job(Channel::Slack, "Disk full");

        match notifier.deliver(&job, &slack_message(&job)).await {
            Err(NotifyError::Transient { retry_after_secs, .. }) => assert_eq!(retry_after_secs, Some(7)),
            other => panic!("expected Transient, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn server_errors_and_slack_internal_errors_are_transient() {
        let (base, _) = fake_slack().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let job = job(Channel::Slack, "Disk full");
        for token in ["xoxb-down", "xoxb-flaky"] {
            let notifier = bot(&base, token, outbox(&dir));
            let result = notifier.deliver(&job, &slack_message(&job)).await;
            assert!(
                matches!(result, Err(NotifyError::Transient { .. })),
                "{token}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_webhook_refusal_is_permanent() {
        let (base, _) = fake_slack().await;
        let dir = tempfile::tempdir().expect("tempdir");
        // The fake answers 404 for any other path, as Slack does for a
        // deleted webhook.
        let url = Secret::new(format!("{base}/services/T000/B000/deleted"));
        let notifier = SlackNotifier::incoming_webhook(url, outbox(&dir));
        let job = job(Channel::Slack, "Disk full");
        let result = notifier.deliver(&job, &slack_message(&job)).await;
        assert!(matches!(result, Err(NotifyError::Permanent { .. })), "{result:?}");
    }

    #[tokio::test]
    async fn an_unreachable_slack_is_transient_and_the_webhook_url_stays_secret() {
        // Bind then drop a listener: nothing answers on that port.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        drop(listener);
        let dir = tempfile::tempdir().expect("tempdir");
        let url = Secret::new(format!("http://{address}{WEBHOOK_PATH}"));
        let notifier = SlackNotifier::incoming_webhook(url, outbox(&dir));
        assert!(!format!("{notifier:?}").contains("webhook-secret-path"));
        let job = job(Channel::Slack, "Disk full");

        let error = notifier
            .deliver(&job, &slack_message(&job))
            .await
            .expect_err("unreachable");
        assert!(matches!(error, NotifyError::Transient { .. }), "{error:?}");
        let mut chain = format!("{error} {error:?}");
        let mut source = error.source();
        while let Some(e) = source {
            chain.push_str(&format!(" {e} {e:?}"));
            source = e.source();
        }
        assert!(!chain.contains("webhook-secret-path"), "{chain}");
    }

    #[tokio::test]
    async fn a_message_for_another_channel_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let notifier = bot("http://127.0.0.1:9", "xoxb-good", outbox(&dir));
        let job = job(Channel::Email, "Disk full");
        let result = notifier.deliver(&job, &render(&job, &RenderContext::default())).await;
        assert!(matches!(result, Err(NotifyError::Permanent { .. })), "{result:?}");
    }

    #[tokio::test]
    async fn the_outbox_notifier_records_and_answers_the_job_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = outbox(&dir);
        let notifier = OutboxNotifier::new(Channel::Email, outbox.clone());
        let job = job(Channel::Email, "Disk full");
        let message = render(&job, &RenderContext::default());

        let receipt = notifier.deliver(&job, &message).await.expect("delivered");
        assert_eq!(receipt.reference.as_deref(), Some(job.id.as_str()));

        let line = std::fs::read_to_string(outbox.path()).expect("outbox");
        let value: Value = serde_json::from_str(line.trim_end()).expect("one JSON line");
        for field in [
            "channel",
            "to",
            "incident_id",
            "transition",
            "job_id",
            "service",
            "severity",
            "delivered_at",
            "message",
        ] {
            assert!(value.get(field).is_some(), "{field} missing in {value}");
        }
        assert_eq!(value["channel"], "email");
        assert_eq!(value["to"], "oncall@example.com");
        assert_eq!(value["transition"], "triggered");
        assert_eq!(value["severity"], "critical");
        assert_eq!(value["message"]["kind"], "email");

        let sms = render(&self::job(Channel::Sms, "x"), &RenderContext::default());
        assert!(matches!(
            notifier.deliver(&job, &sms).await,
            Err(NotifyError::Permanent { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_are_whole_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = outbox(&dir);
        let mut tasks = Vec::new();
        for task in 0..16 {
            let outbox = outbox.clone();
            tasks.push(tokio::spawn(async move {
                // Large lines, so that a torn write would show.
                let job = job(Channel::Email, &format!("task {task} {}", "x".repeat(20_000)));
                let message = render(&job, &RenderContext::default());
                for _ in 0..25 {
                    outbox.record(&job, &message, None).await.expect("recorded");
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }

        let text = std::fs::read_to_string(outbox.path()).expect("outbox");
        assert!(text.ends_with('\n'));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 16 * 25);
        for line in lines {
            let record: OutboxRecord = serde_json::from_str(line).expect("a whole JSON line");
            assert!(record.summary.starts_with("task "));
        }
        assert_eq!(Outbox::read(outbox.path()).expect("read").len(), 16 * 25);
    }

    #[test]
    fn the_console_line_is_short_and_inert() {
        let job = job(Channel::Email, "Disk\u{1b}[2J full\non db-1");
        let record = OutboxRecord {
            channel: job.channel,
            to: job.to.clone(),
            incident_id: job.incident.id.clone(),
            transition: job.transition,
            job_id: job.id.clone(),
            service: job.incident.service.clone(),
            service_name: job.service_name.clone(),
            severity: job.incident.severity,
            summary: job.incident.summary.clone(),
            delivered_at: job.planned_at,
            reference: None,
            message: render(&job, &RenderContext::default()),
        };
        assert_eq!(
            console_line(&record),
            "📣 email → oncall@example.com  [triggered] inc_3f9a1c07d2e84b6a90c1 Checkout: Disk [2J full on db-1"
        );
    }
}
