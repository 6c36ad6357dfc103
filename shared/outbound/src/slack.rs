//! Slack delivery, for the notify-slack function and the local stack alike:
//! an incoming webhook (the channel is the webhook's) or a bot token and
//! `chat.postMessage`. Slack's answers are sorted into retryable and not, and
//! neither the token nor the webhook URL ever reaches a log or an error.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Deserialize;

use tocsin_core::config::{Secret, SlackDelivery};
use tocsin_core::notify::{Channel, Message, NotificationJob, Notifier, NotifyError, Receipt};

/// How Slack is reached. The webhook URL and the token are secrets: they are
/// never logged, and never appear in an error.
enum SlackMode {
    /// An incoming webhook: the channel is fixed by the webhook.
    Webhook { url: Secret },
    /// A bot token and `chat.postMessage`, to any channel the bot is in.
    Bot { token: Secret, post_message_url: String },
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
                post_message_url: format!("{}/chat.postMessage", api_base.trim_end_matches('/')),
            },
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
                post_message_url,
            } => {
                self.post_message(token, post_message_url, channel, text, attachments)
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
}
