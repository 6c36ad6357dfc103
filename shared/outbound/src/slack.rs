//! Slack delivery, for the notify-slack function and the local stack alike:
//! an incoming webhook (the channel is the webhook's) or a bot token and
//! `chat.postMessage`. Slack's answers are sorted into retryable and not, and
//! neither the token nor the webhook URL ever reaches a log or an error.
//!
//! With a bot token and a [`SlackThreads`] store, the first message of an
//! incident in a channel is remembered; the incident's later transitions
//! update that message in place (`chat.update`, new status, no buttons once
//! resolved) and are posted as replies in its thread.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Deserialize;

use tocsin_core::config::{Secret, SlackDelivery};
use tocsin_core::incident::TransitionKind;
use tocsin_core::notify::{Channel, Message, NotificationJob, Notifier, NotifyError, Receipt};
use tocsin_core::render;
use tocsin_core::slack::threads::{SlackThread, SlackThreads};

/// How Slack is reached. The webhook URL and the token are secrets: they are
/// never logged, and never appear in an error.
enum SlackMode {
    /// An incoming webhook: the channel is fixed by the webhook.
    Webhook { url: Secret },
    /// A bot token and Slack's Web API (`chat.postMessage`, `chat.update`),
    /// to any channel the bot is in.
    Bot {
        token: Secret,
        /// `https://slack.com/api`, without a trailing slash.
        api_base: String,
        /// Where first messages are remembered; without it nothing threads.
        threads: Option<Arc<dyn SlackThreads>>,
    },
}

/// Delivers Slack messages: Block Kit attachments by incoming webhook or
/// by `chat.postMessage` with a bot token.
pub struct SlackNotifier {
    client: reqwest::Client,
    mode: SlackMode,
}

impl fmt::Debug for SlackNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &self.mode {
            SlackMode::Webhook { .. } => "incoming webhook".to_owned(),
            SlackMode::Bot { api_base, threads, .. } => {
                let threads = if threads.is_some() { ", threaded" } else { "" };
                format!("bot via {api_base}{threads}")
            }
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

/// Slack's answer to `chat.postMessage` and `chat.update`.
#[derive(Deserialize)]
struct ApiAnswer {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    /// The channel's id, whatever name the request gave.
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    ts: Option<String>,
}

impl SlackNotifier {
    pub const DEFAULT_API_BASE: &'static str = "https://slack.com/api";
    pub const TIMEOUT: Duration = Duration::from_secs(10);

    /// The notifier a delivery setting asks for; `api_base` replaces
    /// `https://slack.com/api` (a test server).
    pub fn for_delivery(delivery: &SlackDelivery, api_base: Option<&str>) -> Self {
        match delivery {
            SlackDelivery::IncomingWebhook { url } => Self::incoming_webhook(url.clone()),
            SlackDelivery::Bot { token } => {
                Self::bot_with_api_base(token.clone(), api_base.unwrap_or(Self::DEFAULT_API_BASE))
            }
        }
    }

    /// Posts to an incoming webhook, whose channel is fixed by Slack.
    pub fn incoming_webhook(url: Secret) -> Self {
        SlackNotifier {
            client: http_client(),
            mode: SlackMode::Webhook { url },
        }
    }

    /// Posts with a bot token to `chat.postMessage` of Slack's API.
    pub fn bot(token: Secret) -> Self {
        Self::bot_with_api_base(token, Self::DEFAULT_API_BASE)
    }

    /// Posts with a bot token to `{api_base}/chat.postMessage`: a test
    /// server instead of `https://slack.com/api`.
    pub fn bot_with_api_base(token: Secret, api_base: &str) -> Self {
        SlackNotifier {
            client: http_client(),
            mode: SlackMode::Bot {
                token,
                api_base: api_base.trim_end_matches('/').to_owned(),
                threads: None,
            },
        }
    }

    /// Threads an incident's later transitions under its first message,
    /// remembered in `threads`. An incoming webhook cannot thread: unchanged.
    pub fn with_threads(mut self, store: Arc<dyn SlackThreads>) -> Self {
        if let SlackMode::Bot { threads, .. } = &mut self.mode {
            *threads = Some(store);
        }
        self
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

    /// Calls one Web API method with the bot token.
    async fn api_call(
        &self,
        token: &Secret,
        api_base: &str,
        method: &'static str,
        body: &serde_json::Value,
    ) -> Result<ApiAnswer, NotifyError> {
        let response = self
            .client
            .post(format!("{api_base}/{method}"))
            .bearer_auth(token.expose())
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body.to_string())
            .send()
            .await
            .map_err(request_failed)?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        if !status.is_success() {
            let reason = format!("Slack answered {status} to {method}");
            return Err(http_error(status, reason, retry_after));
        }
        let answer: ApiAnswer = response.json().await.map_err(|e| NotifyError::Transient {
            reason: format!("Slack's answer to {method} was not the JSON expected"),
            retry_after_secs: None,
            source: Some(Box::new(e.without_url())),
        })?;
        if answer.ok {
            return Ok(answer);
        }
        let code = answer.error.unwrap_or_else(|| "unknown_error".to_owned());
        let code = excerpt(&code);
        Err(
            if PERMANENT_API_ERRORS.contains(&code.as_str()) || UPDATE_REFUSALS.contains(&code.as_str()) {
                NotifyError::Permanent {
                    reason: format!("Slack refused {method}: {code}"),
                    source: None,
                }
            } else {
                NotifyError::Transient {
                    reason: format!("Slack could not take {method}: {code}"),
                    retry_after_secs: retry_after,
                    source: None,
                }
            },
        )
    }

    /// Delivers with the bot token: a new message, or, once the incident's
    /// first message in this channel is known, an update of it and a reply
    /// in its thread. Answers the `ts` of the message posted.
    async fn deliver_by_bot(
        &self,
        job: &NotificationJob,
        (token, api_base, threads): (&Secret, &str, Option<&dyn SlackThreads>),
        channel: &str,
        text: &str,
        attachments: &serde_json::Value,
    ) -> Result<Option<String>, NotifyError> {
        let incident = &job.incident.id;
        let first = match threads {
            Some(threads) if job.transition != TransitionKind::Triggered => {
                threads.thread(incident, &job.to).await.unwrap_or_else(|error| {
                    // Posting unthreaded beats not posting at all.
                    tracing::warn!(%error, "cannot read the Slack thread; posting a new message");
                    None
                })
            }
            _ => None,
        };
        if let Some(first) = first {
            return self.follow_up(job, token, api_base, &first, text, attachments).await;
        }
        let body = serde_json::json!({ "channel": channel, "text": text, "attachments": attachments });
        let answer = self.api_call(token, api_base, "chat.postMessage", &body).await?;
        if let (Some(threads), Some(channel_id), Some(ts)) = (threads, &answer.channel, &answer.ts) {
            let thread = SlackThread {
                channel_id: channel_id.clone(),
                ts: ts.clone(),
            };
            // The message is out: failing now would post it twice on retry.
            if let Err(error) = threads.remember(incident, &job.to, &thread).await {
                tracing::warn!(%error, "cannot remember the Slack message; later transitions will not thread");
            }
        }
        Ok(answer.ts)
    }

    /// Updates the first message to the new status, then replies in its
    /// thread. The update goes first: it is idempotent, so a retry after a
    /// failed reply shows nothing twice.
    async fn follow_up(
        &self,
        job: &NotificationJob,
        token: &Secret,
        api_base: &str,
        first: &SlackThread,
        text: &str,
        attachments: &serde_json::Value,
    ) -> Result<Option<String>, NotifyError> {
        let update = serde_json::json!({
            "channel": first.channel_id,
            "ts": first.ts,
            "text": text,
            "attachments": attachments,
        });
        match self.api_call(token, api_base, "chat.update", &update).await {
            Ok(_) => {}
            // A deleted or too old message: the reply still says it.
            Err(NotifyError::Permanent { reason, .. }) => {
                tracing::warn!(%reason, "cannot update the first Slack message");
            }
            Err(error) => return Err(error),
        }
        let reply = serde_json::json!({
            "channel": first.channel_id,
            "thread_ts": first.ts,
            "text": reply_text(job),
        });
        Ok(self.api_call(token, api_base, "chat.postMessage", &reply).await?.ts)
    }
}

/// `chat.update` refusals no retry fixes: the message is gone or too old.
const UPDATE_REFUSALS: &[&str] = &["message_not_found", "cant_update_message", "edit_window_closed"];

/// The short reply in the first message's thread, naming who acknowledged
/// or resolved where the incident records it.
fn reply_text(job: &NotificationJob) -> String {
    let incident = &job.incident;
    let (text, by) = match job.transition {
        TransitionKind::Triggered => (":rotating_light: Triggered again", None),
        TransitionKind::Acknowledged => (":eyes: Acknowledged", incident.acknowledged_by.as_deref()),
        TransitionKind::Resolved => (":white_check_mark: Resolved", incident.resolved_by.as_deref()),
        TransitionKind::Escalated => (":rotating_light: Escalated: still not acknowledged", None),
    };
    match by {
        Some(by) => format!("{text} by {}", render::slack::escape(&render::actor_title(by))),
        None => text.to_owned(),
    }
}

#[async_trait]
impl Notifier for SlackNotifier {
    fn channel(&self) -> Channel {
        Channel::Slack
    }

    // Not the job id: ids of other channels' jobs carry addresses and numbers, so none is logged
    // (the enclosing deliver span names the incident).
    #[tracing::instrument(name = "slack_deliver", skip_all, fields(channel = %job.to))]
    async fn deliver(&self, job: &NotificationJob, message: &Message) -> Result<Receipt, NotifyError> {
        let Message::Slack {
            channel,
            text,
            attachments,
        } = message
        else {
            return Err(NotifyError::wrong_message(message, Channel::Slack));
        };
        let reference = match &self.mode {
            SlackMode::Webhook { url } => {
                self.post_to_webhook(url, text, attachments).await?;
                None
            }
            SlackMode::Bot {
                token,
                api_base,
                threads,
            } => {
                self.deliver_by_bot(job, (token, api_base, threads.as_deref()), channel, text, attachments)
                    .await?
            }
        };
        tracing::debug!(ts = reference.as_deref(), "Slack took the message");
        Ok(Receipt::sent(reference))
    }
}

/// A stored Slack credential that is neither a bot token nor a webhook URL.
/// It never shows the value.
#[derive(Debug, thiserror::Error)]
#[error(
    "the Slack secret is not a bot token (xoxb-…), an incoming webhook URL (https://hooks.slack.com/…), \
     or JSON with one of bot_token, token, webhook_url, url: {0}"
)]
pub struct InvalidSlackSecret(&'static str);

/// Reads the credential stored for Slack (a Secrets Manager secret): a bot
/// token, an incoming webhook URL, or the JSON object the console's
/// key/value editor makes, `{"bot_token": "xoxb-…"}` or
/// `{"webhook_url": "https://hooks.slack.com/…"}`.
pub fn delivery_from_secret(value: &str) -> Result<SlackDelivery, InvalidSlackSecret> {
    let value = value.trim();
    if value.starts_with('{') {
        let fields: std::collections::HashMap<String, serde_json::Value> = serde_json::from_str(value)
            .map_err(|_| InvalidSlackSecret("it starts with '{' but is not a JSON object"))?;
        let text = |name: &str| fields.get(name).and_then(serde_json::Value::as_str).map(str::trim);
        return match (text("bot_token").or(text("token")), text("webhook_url").or(text("url"))) {
            (Some(_), Some(_)) => Err(InvalidSlackSecret("it has both a token and a webhook URL")),
            (Some(token), None) => bot_token(token),
            (None, Some(url)) => webhook_url(url),
            (None, None) => Err(InvalidSlackSecret("the JSON object has none of those fields")),
        };
    }
    if value.starts_with("xox") {
        bot_token(value)
    } else {
        webhook_url(value)
    }
}

fn bot_token(token: &str) -> Result<SlackDelivery, InvalidSlackSecret> {
    if token.starts_with("xox") && token.len() > 10 && !token.contains(char::is_whitespace) {
        Ok(SlackDelivery::Bot {
            token: Secret::new(token),
        })
    } else {
        Err(InvalidSlackSecret("the token does not look like a Slack token"))
    }
}

fn webhook_url(url: &str) -> Result<SlackDelivery, InvalidSlackSecret> {
    let parsed = reqwest::Url::parse(url).map_err(|_| InvalidSlackSecret("the value is not a URL"))?;
    // http only for a test server on this machine: a real webhook is https.
    let local = parsed.host_str().is_some_and(|h| h == "127.0.0.1" || h == "localhost");
    if parsed.scheme() == "https" || (parsed.scheme() == "http" && local) {
        Ok(SlackDelivery::IncomingWebhook { url: Secret::new(url) })
    } else {
        Err(InvalidSlackSecret("a webhook URL must be https"))
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
    use std::sync::{Arc, Mutex as StdMutex};

    use axum::extract::State;
    use axum::http::header::AUTHORIZATION;
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use axum::{Json, Router};
    use serde_json::{json, Value};
    use tocsin_core::contract::sample_job as job;
    use tocsin_core::render::{render, RenderContext};
    use tocsin_core::slack::threads::SlackThreads as _;

    use super::*;

    #[test]
    fn a_secret_is_a_token_a_webhook_url_or_json_with_one_of_them() {
        let bot = |t: &str| SlackDelivery::Bot { token: Secret::new(t) };
        let hook = |u: &str| SlackDelivery::IncomingWebhook { url: Secret::new(u) };
        let url = "https://hooks.slack.com/services/T000/B000/XXXX";
        for (value, expected) in [
            ("xoxb-1234-5678-abcdef", bot("xoxb-1234-5678-abcdef")),
            ("  xoxb-1234-5678-abcdef\n", bot("xoxb-1234-5678-abcdef")),
            (url, hook(url)),
            (
                r#"{"bot_token": "xoxb-1234-5678-abcdef"}"#,
                bot("xoxb-1234-5678-abcdef"),
            ),
            (r#"{"token": "xoxb-1234-5678-abcdef"}"#, bot("xoxb-1234-5678-abcdef")),
            (&format!(r#"{{"webhook_url": "{url}"}}"#), hook(url)),
            ("http://127.0.0.1:9000/hook", hook("http://127.0.0.1:9000/hook")),
        ] {
            assert_eq!(delivery_from_secret(value).expect(value), expected, "{value}");
        }
    }

    #[test]
    fn anything_else_is_refused_without_showing_the_value() {
        for value in [
            "",
            "xoxb-",
            "http://hooks.slack.com/services/T000/B000/plain-http",
            "not a url",
            "{\"bot_token\": \"xoxb-1234-5678-abcdef\", \"webhook_url\": \"https://hooks.slack.com/x\"}",
            "{\"password\": \"hunter2-hunter2\"}",
            "{ not json hunter2-hunter2",
        ] {
            let error = delivery_from_secret(value).expect_err(value);
            let text = error.to_string();
            assert!(!text.contains("hunter2") && !text.contains("plain-http"), "{text}");
        }
    }

    const WEBHOOK_PATH: &str = "/services/T000/B000/webhook-secret-path";

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

    fn bot(base: &str, token: &str) -> SlackNotifier {
        SlackNotifier::bot_with_api_base(Secret::new(token), &format!("{base}/api/"))
    }

    fn slack_message(job: &NotificationJob) -> Message {
        render(job, &RenderContext::default())
    }

    #[tokio::test]
    async fn webhook_mode_posts_text_and_attachments_and_records_the_delivery() {
        let (base, received) = fake_slack().await;
        let url = Secret::new(format!("{base}{WEBHOOK_PATH}"));
        let notifier = SlackNotifier::incoming_webhook(url);
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
    }

    #[tokio::test]
    async fn bot_mode_posts_to_chat_post_message_and_answers_the_ts() {
        let (base, received) = fake_slack().await;
        let notifier = bot(&base, "xoxb-good");
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
    }

    #[tokio::test]
    async fn invalid_auth_is_permanent_and_keeps_the_token_secret() {
        let (base, _) = fake_slack().await;
        let notifier = bot(&base, "xoxb-revoked");
        let job = job(Channel::Slack, "Disk full");

        let error = notifier.deliver(&job, &slack_message(&job)).await.expect_err("refused");
        match &error {
            NotifyError::Permanent { reason, .. } => {
                assert!(reason.contains("invalid_auth"), "{reason}")
            }
            other => panic!("expected Permanent, got {other:?}"),
        }
        assert!(!format!("{error:?}").contains("xoxb-revoked"));
    }

    #[tokio::test]
    async fn http_429_is_transient_with_retry_after() {
        let (base, _) = fake_slack().await;
        let notifier = bot(&base, "xoxb-busy");
        let job = job(Channel::Slack, "Disk full");

        match notifier.deliver(&job, &slack_message(&job)).await {
            Err(NotifyError::Transient { retry_after_secs, .. }) => assert_eq!(retry_after_secs, Some(7)),
            other => panic!("expected Transient, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn server_errors_and_slack_internal_errors_are_transient() {
        let (base, _) = fake_slack().await;
        let job = job(Channel::Slack, "Disk full");
        for token in ["xoxb-down", "xoxb-flaky"] {
            let notifier = bot(&base, token);
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
        // The fake answers 404 for any other path, as Slack does for a
        // deleted webhook.
        let url = Secret::new(format!("{base}/services/T000/B000/deleted"));
        let notifier = SlackNotifier::incoming_webhook(url);
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
        let url = Secret::new(format!("http://{address}{WEBHOOK_PATH}"));
        let notifier = SlackNotifier::incoming_webhook(url);
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
        let notifier = bot("http://127.0.0.1:9", "xoxb-good");
        let job = job(Channel::Email, "Disk full");
        let result = notifier.deliver(&job, &render(&job, &RenderContext::default())).await;
        assert!(matches!(result, Err(NotifyError::Permanent { .. })), "{result:?}");
    }

    /// One call to the fake Web API: the method, Authorization header and body.
    type Call = (String, Option<String>, Value);

    #[derive(Clone, Default)]
    struct WebApi {
        calls: Arc<StdMutex<Vec<Call>>>,
        /// Answer 429 with Retry-After to chat.update.
        throttle_updates: Arc<std::sync::atomic::AtomicBool>,
    }

    impl WebApi {
        fn take(&self) -> Vec<Call> {
            std::mem::take(&mut *self.calls.lock().expect("lock"))
        }
    }

    async fn fake_web_api_call(
        State(api): State<WebApi>,
        axum::extract::Path(method): axum::extract::Path<String>,
        headers: axum::http::HeaderMap,
        Json(body): Json<Value>,
    ) -> Response {
        let auth = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let n = {
            let mut calls = api.calls.lock().expect("lock");
            calls.push((method.clone(), auth, body.clone()));
            calls.len()
        };
        match method.as_str() {
            "chat.update" if api.throttle_updates.load(std::sync::atomic::Ordering::SeqCst) => (
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                [(axum::http::header::RETRY_AFTER, "3")],
                Json(json!({"ok": false, "error": "ratelimited"})),
            )
                .into_response(),
            "chat.update" => Json(json!({"ok": true, "channel": body["channel"], "ts": body["ts"]})).into_response(),
            // Slack answers the channel's id whatever name was asked for.
            "chat.postMessage" => {
                Json(json!({"ok": true, "channel": "C0123ABCD", "ts": format!("1718000000.00010{n}")})).into_response()
            }
            _ => Json(json!({"ok": false, "error": "unknown_method"})).into_response(),
        }
    }

    /// A fake Slack Web API at `{base}/api/{method}`.
    async fn fake_web_api() -> (String, WebApi) {
        let api = WebApi::default();
        let app = Router::new()
            .route("/api/{method}", post(fake_web_api_call))
            .with_state(api.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{address}"), api)
    }

    fn transition(kind: TransitionKind) -> NotificationJob {
        let mut job = job(Channel::Slack, "Disk full");
        job.transition = kind;
        job.incident.status = match kind {
            TransitionKind::Acknowledged => tocsin_core::incident::IncidentStatus::Acknowledged,
            TransitionKind::Resolved => tocsin_core::incident::IncidentStatus::Resolved,
            _ => tocsin_core::incident::IncidentStatus::Open,
        };
        if matches!(kind, TransitionKind::Acknowledged | TransitionKind::Resolved) {
            job.incident.acknowledged_by = Some("slack:@alice (U024BE7LH)".to_owned());
        }
        if kind == TransitionKind::Resolved {
            job.incident.resolved_by = Some("prometheus".to_owned());
        }
        job
    }

    fn has_actions(attachments: &Value) -> bool {
        attachments[0]["blocks"]
            .as_array()
            .is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "actions"))
    }

    #[tokio::test]
    async fn later_transitions_update_the_first_message_and_reply_in_its_thread() {
        let (base, api) = fake_web_api().await;
        let threads = Arc::new(tocsin_core::slack::threads::MemorySlackThreads::default());
        let notifier = bot(&base, "xoxb-good").with_threads(threads.clone());

        let triggered = transition(TransitionKind::Triggered);
        let receipt = notifier
            .deliver(&triggered, &slack_message(&triggered))
            .await
            .expect("posted");
        let first_ts = receipt.reference.expect("a ts");
        let calls = api.take();
        assert_eq!(calls.len(), 1);
        let (method, auth, body) = &calls[0];
        assert_eq!(method, "chat.postMessage");
        assert_eq!(auth.as_deref(), Some("Bearer xoxb-good"));
        assert_eq!(body["channel"], "#checkout");
        assert!(body.get("thread_ts").is_none(), "{body}");
        assert!(has_actions(&body["attachments"]));
        assert_eq!(
            threads.thread(&triggered.incident.id, "#checkout").await.expect("read"),
            Some(SlackThread {
                channel_id: "C0123ABCD".to_owned(),
                ts: first_ts.clone()
            })
        );

        for (kind, reply, buttons) in [
            (
                TransitionKind::Acknowledged,
                ":eyes: Acknowledged by alice (Slack)",
                true,
            ),
            (
                TransitionKind::Resolved,
                ":white_check_mark: Resolved by prometheus",
                false,
            ),
        ] {
            let job = transition(kind);
            let message = slack_message(&job);
            let receipt = notifier.deliver(&job, &message).await.expect("delivered");
            let calls = api.take();
            assert_eq!(calls.len(), 2, "{kind:?}: {calls:?}");
            let Message::Slack { text, attachments, .. } = &message else {
                panic!("not a Slack message")
            };
            let (method, auth, update) = &calls[0];
            assert_eq!(method, "chat.update");
            assert_eq!(auth.as_deref(), Some("Bearer xoxb-good"));
            assert_eq!(
                update,
                &json!({"channel": "C0123ABCD", "ts": first_ts, "text": text, "attachments": attachments})
            );
            assert_eq!(has_actions(&update["attachments"]), buttons, "{kind:?}");
            let (method, auth, body) = &calls[1];
            assert_eq!(method, "chat.postMessage");
            assert_eq!(auth.as_deref(), Some("Bearer xoxb-good"));
            assert_eq!(
                body,
                &json!({"channel": "C0123ABCD", "thread_ts": first_ts, "text": reply})
            );
            assert_ne!(
                receipt.reference.as_deref(),
                Some(first_ts.as_str()),
                "the reply's own ts"
            );
        }
    }

    #[test]
    fn the_reply_names_who_made_the_transition_and_escapes_it() {
        let mut job = transition(TransitionKind::Acknowledged);
        job.incident.acknowledged_by = Some("slack:@<!channel> & co (U1)".to_owned());
        assert_eq!(
            reply_text(&job),
            ":eyes: Acknowledged by &lt;!channel&gt; &amp; co (Slack)"
        );
        // Incidents stored before it was recorded name no one.
        job.incident.acknowledged_by = None;
        assert_eq!(reply_text(&job), ":eyes: Acknowledged");
        // A resolve names who resolved, not who acknowledged.
        let job = transition(TransitionKind::Resolved);
        assert_eq!(reply_text(&job), ":white_check_mark: Resolved by prometheus");
    }

    #[tokio::test]
    async fn without_a_known_first_message_a_transition_is_posted_as_a_new_message() {
        let (base, api) = fake_web_api().await;
        let threads = Arc::new(tocsin_core::slack::threads::MemorySlackThreads::default());
        let notifier = bot(&base, "xoxb-good").with_threads(threads.clone());

        let job = transition(TransitionKind::Acknowledged);
        notifier.deliver(&job, &slack_message(&job)).await.expect("posted");
        let calls = api.take();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].0, "chat.postMessage");
        assert!(calls[0].2.get("thread_ts").is_none());
        assert_eq!(calls[0].2["channel"], "#checkout");
    }

    #[tokio::test]
    async fn a_throttled_update_is_transient_with_its_retry_after_and_posts_no_reply() {
        let (base, api) = fake_web_api().await;
        let threads = Arc::new(tocsin_core::slack::threads::MemorySlackThreads::default());
        let notifier = bot(&base, "xoxb-good").with_threads(threads);
        let triggered = transition(TransitionKind::Triggered);
        notifier
            .deliver(&triggered, &slack_message(&triggered))
            .await
            .expect("posted");
        api.take();
        api.throttle_updates.store(true, std::sync::atomic::Ordering::SeqCst);

        let job = transition(TransitionKind::Resolved);
        match notifier.deliver(&job, &slack_message(&job)).await {
            Err(NotifyError::Transient { retry_after_secs, .. }) => assert_eq!(retry_after_secs, Some(3)),
            other => panic!("expected Transient, got {other:?}"),
        }
        let calls = api.take();
        let methods: Vec<_> = calls.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(methods, ["chat.update"], "no reply before the update went through");
    }
}
