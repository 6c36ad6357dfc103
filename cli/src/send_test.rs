//! `tocsin send-test`: posts a provider's sample from events/<type>/ to its
//! endpoint, with the headers the tool itself sends and its signature when
//! a secret is given, and prints the answer.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use tocsin_core::providers::ProviderKind;
use tocsin_core::signature::{hmac_sha256, hmac_sha256_hex};

use crate::remote::{error_message, http_client, send, ApiError};

/// How one provider's requests are signed when its integration has a secret.
#[derive(Debug, Clone, Copy)]
enum Signing {
    /// `<header>: sha256=<hex HMAC-SHA256 of the body>`.
    Sha256Header(&'static str),
    /// `<header>: <hex HMAC-SHA256 of the body>`.
    HexHeader(&'static str),
    /// `<header>: <base64 HMAC-SHA256 of the body>`.
    Base64Header(&'static str),
    /// The secret itself in a header.
    SecretHeader(&'static str),
    /// HTTP Basic, the secret as password.
    BasicPassword,
    /// The tool sends no headers: nothing to sign with.
    Unsupported(&'static str),
}

/// The sample a provider sends by default and how it signs.
fn profile(kind: ProviderKind) -> (&'static str, Signing) {
    use ProviderKind as K;
    use Signing::*;
    match kind {
        K::EventsV2 => ("trigger.json", Sha256Header("x-signature")),
        K::Prometheus => ("firing.json", Sha256Header("x-signature")),
        K::Webhook => ("trigger.json", Sha256Header("x-signature")),
        K::Generic => ("trigger.json", Sha256Header("x-signature")),
        K::SplunkOnCall => ("critical.json", Sha256Header("x-signature")),
        K::Email => ("alertmanager-firing.eml", Sha256Header("x-signature")),
        K::Github => ("workflow_run-failure.json", Sha256Header("x-hub-signature-256")),
        K::Bitbucket => ("commit_status_updated-failed.json", Sha256Header("x-hub-signature")),
        K::Grafana => ("firing.json", HexHeader("x-grafana-alerting-signature")),
        K::Sentry => ("issue-created.json", HexHeader("sentry-hook-signature")),
        K::SplunkObservability => ("anomalous.json", Base64Header("x-sfx-signature")),
        K::Gitlab => ("pipeline-failed.json", SecretHeader("x-gitlab-token")),
        K::Honeycomb => ("triggered.json", SecretHeader("x-honeycomb-webhook-token")),
        K::AppDynamics => ("open-critical.json", SecretHeader("x-tocsin-secret")),
        K::BetterUptime => ("started.json", SecretHeader("x-tocsin-secret")),
        K::Datadog => ("triggered.json", SecretHeader("x-tocsin-secret")),
        K::Dynatrace => ("open.json", SecretHeader("x-tocsin-secret")),
        K::NewRelic => ("activated.json", SecretHeader("x-tocsin-secret")),
        K::Site24x7 => ("trigger.json", SecretHeader("x-tocsin-secret")),
        K::UptimeKuma => ("trigger.json", SecretHeader("x-tocsin-secret")),
        K::UptimeRobot => ("trigger.json", SecretHeader("x-tocsin-secret")),
        K::Elastic => ("active.json", BasicPassword),
        K::GoogleCloudMonitoring => ("open.json", BasicPassword),
        K::Azure => (
            "fired.json",
            Unsupported("Azure sends no headers; the key in the URL is its only check"),
        ),
        K::Pingdom => (
            "trigger.json",
            Unsupported("Pingdom sends no headers; the key in the URL is its only check"),
        ),
        K::CloudWatch => (
            "alarm.json",
            Unsupported("CloudWatch alarms arrive signed by Amazon SNS, which send-test cannot forge"),
        ),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendTestError {
    #[error("unknown provider '{0}' (tocsin providers lists them)")]
    UnknownProvider(String),
    #[error("{provider}: {reason}")]
    CannotSign {
        provider: ProviderKind,
        reason: &'static str,
    },
    #[error("{provider} deliveries are Amazon SNS messages signed by AWS: send-test cannot make one")]
    SnsOnly { provider: ProviderKind },
    #[error("cannot read the sample {path} (run from the repository root, or give --events)")]
    Sample {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: only .json, .form and .eml samples can be sent")]
    SampleKind { path: PathBuf },
    #[error("events-v2 sample {path} is not a JSON object")]
    NotAnEvent { path: PathBuf },
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("the sample was refused ({status})")]
    Refused { status: u16 },
}

pub struct SendTest<'a> {
    pub provider: &'a str,
    pub key: &'a str,
    pub url: &'a str,
    pub sample: Option<&'a str>,
    pub secret: Option<&'a str>,
    pub events: &'a Path,
}

pub async fn run(options: SendTest<'_>) -> Result<(), SendTestError> {
    let kind =
        ProviderKind::parse(options.provider).ok_or_else(|| SendTestError::UnknownProvider(options.provider.into()))?;
    let (default_sample, signing) = profile(kind);
    if kind == ProviderKind::CloudWatch {
        return Err(SendTestError::SnsOnly { provider: kind });
    }
    let name = options.sample.unwrap_or(default_sample);
    let path = sample_path(options.events, kind, name);
    let mut body = std::fs::read(&path).map_err(|source| SendTestError::Sample {
        path: path.clone(),
        source,
    })?;
    let content_type = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => Some("application/json"),
        Some("form") => Some("application/x-www-form-urlencoded"),
        Some("eml") => None,
        _ => return Err(SendTestError::SampleKind { path }),
    };
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or(name).to_owned();

    let base = options.url.trim_end_matches('/');
    // The key goes where each tool puts it: the body for Events API v2, the
    // recipient for email, the query string for the rest.
    let query = match kind {
        ProviderKind::EventsV2 => {
            body =
                with_routing_key(&body, options.key).ok_or_else(|| SendTestError::NotAnEvent { path: path.clone() })?;
            String::new()
        }
        ProviderKind::Email => format!("?to={}%40localhost", crate::incidents::encode(options.key)),
        _ => format!("?token={}", crate::incidents::encode(options.key)),
    };
    let endpoint = format!("{base}{}", kind.path());
    let client = http_client()?;
    let mut request = client.post(format!("{endpoint}{query}"));
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    for (name, value) in tool_headers(kind, &stem) {
        request = request.header(name, value);
    }
    if let Some(secret) = options.secret {
        let secret = secret.as_bytes();
        request = match signing {
            Signing::Sha256Header(header) => {
                request.header(header, format!("sha256={}", hmac_sha256_hex(secret, &body)))
            }
            Signing::HexHeader(header) => request.header(header, hmac_sha256_hex(secret, &body)),
            Signing::Base64Header(header) => request.header(
                header,
                base64::engine::general_purpose::STANDARD.encode(hmac_sha256(secret, &body)),
            ),
            Signing::SecretHeader(header) => request.header(header, options.secret.unwrap_or_default()),
            Signing::BasicPassword => request.basic_auth("tocsin", options.secret),
            Signing::Unsupported(reason) => return Err(SendTestError::CannotSign { provider: kind, reason }),
        };
    }

    let (status, text) = send(&endpoint, request.body(body)).await?;
    println!("POST {endpoint} ({kind} sample {})", path.display());
    println!("HTTP {status}");
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(json) => crate::remote::print_json(&json),
        Err(_) if text.is_empty() => {}
        Err(_) => println!("{text}"),
    }
    if (200..300).contains(&status) {
        Ok(())
    } else {
        eprintln!("{}", error_message(&text));
        Err(SendTestError::Refused { status })
    }
}

/// `events/<type>/<name>`, `.json` added when the name has no extension.
fn sample_path(events: &Path, kind: ProviderKind, name: &str) -> PathBuf {
    let folder = events.join(kind.as_str());
    if Path::new(name).extension().is_some() {
        folder.join(name)
    } else {
        folder.join(format!("{name}.json"))
    }
}

/// The headers the tool sends that say what the payload is, read from the
/// sample's name (`workflow_run-failure` is a `workflow_run` event).
fn tool_headers(kind: ProviderKind, stem: &str) -> Vec<(&'static str, String)> {
    let event = stem.split('-').next().unwrap_or(stem);
    match kind {
        ProviderKind::Github => vec![("x-github-event", event.to_owned())],
        ProviderKind::Bitbucket => vec![("x-event-key", format!("repo:{event}"))],
        ProviderKind::Gitlab => vec![("x-gitlab-event", "Pipeline Hook".to_owned())],
        ProviderKind::Sentry => {
            let resource = ["metric-alert", "event-alert", "installation", "issue"]
                .into_iter()
                .find(|prefix| stem.starts_with(prefix))
                .unwrap_or("issue")
                .replace('-', "_");
            vec![("sentry-hook-resource", resource)]
        }
        _ => Vec::new(),
    }
}

/// An Events API v2 sample with its routing_key replaced by the key.
fn with_routing_key(body: &[u8], key: &str) -> Option<Vec<u8>> {
    let mut event: serde_json::Value = serde_json::from_slice(body).ok()?;
    event.as_object_mut()?.insert("routing_key".into(), key.into());
    serde_json::to_vec(&event).ok()
}
