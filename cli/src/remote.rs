//! Tocsin's HTTP API as the operator commands call it: the local stack or a
//! deployment, an API key as `Authorization: Bearer`, and one error per
//! answer an operator has to act on differently.

use std::time::Duration;

use clap::Args;
use serde_json::Value;

/// `tocsin dev`'s default --listen, as a URL.
pub const LOCAL_URL: &str = "http://127.0.0.1:3000";

/// A hung server must not hang the operator's terminal.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args, Debug, Clone)]
pub struct ApiOptions {
    /// Tocsin's base URL: the local stack, or a deployment's ApiUrl output.
    #[arg(long, env = "TOCSIN_URL", default_value = LOCAL_URL, global = true)]
    pub url: String,
    /// An API key from the config (incidents:read; incidents:write to
    /// acknowledge and resolve).
    #[arg(long, env = "TOCSIN_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach Tocsin at {url}: is `tocsin dev` running? (or give --url / TOCSIN_URL)")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("no API key: give --api-key or set TOCSIN_API_KEY")]
    NoApiKey,
    #[error("the API key was refused (401): {message}")]
    Unauthorized { message: String },
    #[error("the API key is not allowed to do this (403): {message}")]
    Forbidden { message: String },
    #[error("not found (404): {message}")]
    NotFound { message: String },
    #[error("refused (409): {message}")]
    Conflict { message: String },
    #[error("{url} answered {status}: {message}")]
    Status { url: String, status: u16, message: String },
    #[error("the request to {url} failed")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} did not answer JSON")]
    NotJson {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// One server, one key.
pub struct Remote {
    base: String,
    api_key: Option<String>,
    client: reqwest::Client,
}

impl Remote {
    pub fn new(options: &ApiOptions) -> Result<Self, ApiError> {
        Ok(Remote {
            base: options.url.trim_end_matches('/').to_owned(),
            api_key: options.api_key.clone().filter(|key| !key.is_empty()),
            client: http_client()?,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET with the API key, which must be given.
    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        let key = self.api_key.as_deref().ok_or(ApiError::NoApiKey)?;
        let url = self.url(path);
        let request = self.client.get(&url).bearer_auth(key);
        json_of(&url, request).await
    }

    /// GET with the API key when there is one.
    pub async fn get_maybe_authorized(&self, path: &str) -> Result<Value, ApiError> {
        let url = self.url(path);
        let mut request = self.client.get(&url);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        json_of(&url, request).await
    }

    /// POST without a body, with the API key, which must be given.
    pub async fn post(&self, path: &str) -> Result<Value, ApiError> {
        let key = self.api_key.as_deref().ok_or(ApiError::NoApiKey)?;
        let url = self.url(path);
        let request = self.client.post(&url).bearer_auth(key);
        json_of(&url, request).await
    }
}

pub fn http_client() -> Result<reqwest::Client, ApiError> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(ApiError::Client)
}

/// Sends `request`, and reads a JSON answer or turns an error answer into
/// its [`ApiError`].
async fn json_of(url: &str, request: reqwest::RequestBuilder) -> Result<Value, ApiError> {
    let (status, text) = send(url, request).await?;
    if !(200..300).contains(&status) {
        return Err(refusal(url, status, &text));
    }
    serde_json::from_str(&text).map_err(|source| ApiError::NotJson {
        url: url.to_owned(),
        source,
    })
}

/// Sends `request` and reads the whole answer, whatever its status.
pub async fn send(url: &str, request: reqwest::RequestBuilder) -> Result<(u16, String), ApiError> {
    let answer = request.send().await.map_err(|source| transport(url, source))?;
    let status = answer.status().as_u16();
    let text = answer.text().await.map_err(|source| transport(url, source))?;
    Ok((status, text))
}

/// `url` is the one to show; reqwest's error would name the URL it sent,
/// query string and all, and `send-test` puts the integration key there.
fn transport(url: &str, source: reqwest::Error) -> ApiError {
    let source = source.without_url();
    if source.is_connect() {
        ApiError::Unreachable {
            url: url.to_owned(),
            source,
        }
    } else {
        ApiError::Request {
            url: url.to_owned(),
            source,
        }
    }
}

/// The error of a non-2xx answer, with the message Tocsin's JSON error
/// answers carry.
fn refusal(url: &str, status: u16, text: &str) -> ApiError {
    let message = error_message(text);
    match status {
        401 => ApiError::Unauthorized { message },
        403 => ApiError::Forbidden { message },
        404 => ApiError::NotFound { message },
        409 => ApiError::Conflict { message },
        _ => ApiError::Status {
            url: url.to_owned(),
            status,
            message,
        },
    }
}

/// `message` of a JSON error answer, else the start of the body.
pub fn error_message(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|body| body.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| {
            let start: String = text.chars().take(300).collect();
            if start.trim().is_empty() {
                "(empty answer)".to_owned()
            } else {
                start
            }
        })
}

/// Prints `value` as indented JSON.
pub fn print_json(value: &Value) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        // A Value always serializes; print something rather than nothing.
        Err(_) => println!("{value}"),
    }
}

/// A JSON value as table text: strings bare, absent as `-`.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// How long ago `at` (RFC 3339) was, as `5s`, `3m`, `2h`, `4d`.
pub fn age(at: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let Ok(then) = chrono::DateTime::parse_from_rfc3339(at) else {
        return at.to_owned();
    };
    let seconds = (now - then.with_timezone(&chrono::Utc)).num_seconds().max(0);
    match seconds {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}
