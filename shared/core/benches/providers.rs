//! Every provider's verify + normalize on its trigger sample from events/,
//! with a secret and a correct signature wherever the provider has a scheme.
//! No key lookup, no queue: what a provider adds to a request (the `ingest`
//! bench has the whole path for two of them).
//!
//! CloudWatch is the whole SNS step: the envelope parsed, the topic checked,
//! the real SNS signature of events/cloudwatch/alarm.json verified (RSA,
//! version 1) with the certificate in tests/fixtures/sns, cached as in a warm
//! function, then the alarm in its Message normalized.
//!
//! Run: cargo bench -p tocsin-core --bench providers
//! or tests/bench, which compares the medians with docs/bench-baseline.json.

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderName, HeaderValue};
use tocsin_core::auth::KeyHash;
use tocsin_core::config::{Catalog, Integration};
use tocsin_core::event::Alert;
use tocsin_core::providers::{provider, Inbound, InvalidPayload, ProviderKind};
use tocsin_core::signature::{hmac_sha256, hmac_sha256_hex, SignatureError};
use tocsin_core::sns::{check_topic, Sns, SnsError, SnsMessage};

/// The key the email samples are addressed to; the other providers take it
/// from a header or the query, outside what is measured here.
const KEY: &str = "0123456789abcdef0123456789abcdef";
const SECRET: &str = "bench-signing-secret-5f2c9e1a7b";

/// How a provider's requests prove they come from the tool.
#[derive(Debug, Clone, Copy)]
enum Scheme {
    /// The key in the URL and nothing else: the tool sends no headers.
    None,
    /// Tocsin's own `X-Signature: sha256=<hex>` HMAC of the body.
    TocsinHmac,
    /// The secret itself in a header (`X-Tocsin-Secret`, GitLab's token).
    SecretHeader(&'static str),
    /// `Authorization: Basic`, the password being the secret.
    BasicPassword,
    /// The hex HMAC-SHA256 of the body in a header, after a prefix.
    HmacHex { header: &'static str, prefix: &'static str },
    /// The base64 HMAC-SHA256 of the body (Splunk Observability).
    HmacBase64(&'static str),
    /// Grafana's HMAC of `<timestamp>:<body>` with the timestamp header.
    GrafanaTimestamped,
    /// An SNS envelope with its RSA signature.
    Sns,
}

/// One provider's request: its trigger sample, the headers the tool sends
/// with it, and its signature scheme.
struct Case {
    sample: &'static str,
    headers: &'static [(&'static str, &'static str)],
    scheme: Scheme,
}

/// Exhaustive on purpose: a new provider does not build until it has a case.
fn case(kind: ProviderKind) -> Case {
    const TOCSIN_SECRET: Scheme = Scheme::SecretHeader("x-tocsin-secret");
    let (sample, headers, scheme): (_, &'static [(&'static str, &'static str)], _) = match kind {
        ProviderKind::EventsV2 => ("events-v2/trigger.json", &[], Scheme::TocsinHmac),
        ProviderKind::Prometheus => ("prometheus/firing.json", &[], Scheme::TocsinHmac),
        ProviderKind::Webhook => ("webhook/trigger.json", &[], Scheme::TocsinHmac),
        ProviderKind::Generic => ("generic/trigger.json", &[], Scheme::TocsinHmac),
        ProviderKind::AppDynamics => ("appdynamics/open-critical.json", &[], TOCSIN_SECRET),
        ProviderKind::Azure => ("azure/fired.json", &[], Scheme::None),
        ProviderKind::BetterUptime => ("better-uptime/started.json", &[], TOCSIN_SECRET),
        ProviderKind::Bitbucket => (
            "bitbucket/commit_status_updated-failed.json",
            &[("x-event-key", "repo:commit_status_updated")],
            Scheme::HmacHex {
                header: "x-hub-signature",
                prefix: "sha256=",
            },
        ),
        ProviderKind::CloudWatch => ("cloudwatch/alarm.json", &[], Scheme::Sns),
        ProviderKind::Datadog => ("datadog/triggered.json", &[], TOCSIN_SECRET),
        ProviderKind::Dynatrace => ("dynatrace/open.json", &[], TOCSIN_SECRET),
        ProviderKind::Elastic => ("elastic/active.json", &[], Scheme::BasicPassword),
        ProviderKind::Email => ("email/nagios-problem.eml", &[], Scheme::TocsinHmac),
        ProviderKind::Github => (
            "github/workflow_run-failure.json",
            &[
                ("x-github-event", "workflow_run"),
                ("x-github-delivery", "6f0a3c2e-1d4b-11f0-8a5e-2b7c9d1e4f60"),
            ],
            Scheme::HmacHex {
                header: "x-hub-signature-256",
                prefix: "sha256=",
            },
        ),
        ProviderKind::Gitlab => (
            "gitlab/pipeline-failed.json",
            &[("x-gitlab-event", "Pipeline Hook")],
            Scheme::SecretHeader("x-gitlab-token"),
        ),
        ProviderKind::GoogleCloudMonitoring => ("google-cloud-monitoring/open.json", &[], Scheme::BasicPassword),
        ProviderKind::Grafana => ("grafana/firing.json", &[], Scheme::GrafanaTimestamped),
        ProviderKind::Honeycomb => (
            "honeycomb/triggered.json",
            &[],
            Scheme::SecretHeader("x-honeycomb-webhook-token"),
        ),
        ProviderKind::NewRelic => ("newrelic/activated.json", &[], TOCSIN_SECRET),
        ProviderKind::Pingdom => ("pingdom/trigger.json", &[], Scheme::None),
        ProviderKind::Sentry => (
            "sentry/event-alert-triggered.json",
            &[("sentry-hook-resource", "event_alert")],
            Scheme::HmacHex {
                header: "sentry-hook-signature",
                prefix: "",
            },
        ),
        ProviderKind::Site24x7 => ("site24x7/trigger.json", &[], TOCSIN_SECRET),
        ProviderKind::SplunkObservability => (
            "splunk-observability/anomalous.json",
            &[],
            Scheme::HmacBase64("x-sfx-signature"),
        ),
        ProviderKind::SplunkOnCall => ("splunk-oncall/critical.json", &[], Scheme::TocsinHmac),
        ProviderKind::UptimeKuma => ("uptime-kuma/trigger.json", &[], TOCSIN_SECRET),
        ProviderKind::UptimeRobot => ("uptimerobot/trigger.json", &[], TOCSIN_SECRET),
    };
    Case {
        sample,
        headers,
        scheme,
    }
}

/// Why a prepared request was refused: the bench stops, since a figure for
/// a refused request would measure the wrong path.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    Payload(#[from] InvalidPayload),
    #[error(transparent)]
    Sns(#[from] SnsError),
    #[error("SNS verification waited on I/O: the certificate should come from the folder, cached")]
    Pending,
    #[error("the SNS envelope is not a notification")]
    NotANotification,
}

/// A request ready to replay: everything is built once, outside the timing.
struct Request {
    kind: ProviderKind,
    headers: HeaderMap,
    body: Vec<u8>,
    received_at: DateTime<Utc>,
    integration: Integration,
}

fn repository_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

fn header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    let value = HeaderValue::from_str(value).unwrap_or_else(|e| panic!("header {name}: {e}"));
    headers.insert(HeaderName::from_static(name), value);
}

/// The integration as config declares it, so that the bench follows the
/// config's defaults (and fields added to `Integration` later).
fn integration(kind: ProviderKind, secret: Option<&str>, topic: Option<&str>) -> Integration {
    let mut entry = serde_json::json!({"id": "bench", "type": kind.as_str(), "key": KEY});
    if let Some(secret) = secret {
        entry["secret"] = secret.into();
    }
    if let Some(topic) = topic {
        entry["cloudwatch"] = serde_json::json!({"topics": [topic]});
    }
    // JSON is YAML: the catalog parses it as it would a config file.
    let config = serde_json::json!({"services": [{"id": "checkout", "integrations": [entry]}]}).to_string();
    let catalog = Catalog::from_yaml(&config, "bench").unwrap_or_else(|e| panic!("{kind}: {e}"));
    catalog
        .integration_by_key(&KeyHash::of(KEY))
        .cloned()
        .unwrap_or_else(|| panic!("{kind}: the catalog has no integration for the key"))
}

fn request(kind: ProviderKind) -> Request {
    let case = case(kind);
    let path = repository_file(&format!("events/{}", case.sample));
    let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut headers = HeaderMap::new();
    let content_type = if case.sample.ends_with(".eml") {
        "message/rfc822"
    } else {
        "application/json"
    };
    header(&mut headers, "content-type", content_type);
    for (name, value) in case.headers {
        header(&mut headers, name, value);
    }
    let mut received_at = Utc::now();
    let mut secret = Some(SECRET);
    let mut topic = None;
    match case.scheme {
        Scheme::None => secret = None,
        Scheme::TocsinHmac => header(
            &mut headers,
            "x-signature",
            &format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), &body)),
        ),
        Scheme::SecretHeader(name) => header(&mut headers, name, SECRET),
        Scheme::BasicPassword => {
            let credentials = base64::engine::general_purpose::STANDARD.encode(format!("tocsin:{SECRET}"));
            header(&mut headers, "authorization", &format!("Basic {credentials}"));
        }
        Scheme::HmacHex { header: name, prefix } => header(
            &mut headers,
            name,
            &format!("{prefix}{}", hmac_sha256_hex(SECRET.as_bytes(), &body)),
        ),
        Scheme::HmacBase64(name) => {
            let mac = hmac_sha256(SECRET.as_bytes(), &body);
            header(
                &mut headers,
                name,
                &base64::engine::general_purpose::STANDARD.encode(mac),
            );
        }
        Scheme::GrafanaTimestamped => {
            let sent = received_at.timestamp().to_string();
            let signed = [sent.as_bytes(), b":", &body].concat();
            header(
                &mut headers,
                "x-grafana-alerting-signature",
                &hmac_sha256_hex(SECRET.as_bytes(), &signed),
            );
            header(&mut headers, "x-grafana-alerting-signature-timestamp", &sent);
        }
        Scheme::Sns => {
            // SNS carries no shared secret: the envelope's own signature
            // and the topic allow-list stand for it.
            secret = None;
            let message = SnsMessage::parse(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let sent = DateTime::parse_from_rfc3339(&message.timestamp)
                .unwrap_or_else(|e| panic!("{}: Timestamp: {e}", path.display()))
                .with_timezone(&Utc);
            // Received a second after it was sent: the certificate in the
            // fixtures was valid then, and the message was fresh.
            received_at = sent + chrono::Duration::seconds(1);
            topic = Some(message.topic_arn.clone());
            header(&mut headers, "x-amz-sns-message-type", "Notification");
        }
    }
    Request {
        kind,
        headers,
        body,
        received_at,
        integration: integration(kind, secret, topic.as_deref()),
    }
}

/// Runs a future that never waits on I/O (SNS verification with the
/// certificate already cached, or read from a folder) without a runtime,
/// so the figure is the verification alone.
fn ready<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// What ingest does with a request between authentication and the queue.
fn verify_and_normalize(request: &Request, sns: &Sns) -> Result<Vec<Alert>, Refused> {
    let provider = provider(request.kind);
    let inbound = Inbound {
        headers: &request.headers,
        query: None,
        body: &request.body,
        received_at: request.received_at,
    };
    if request.kind != ProviderKind::CloudWatch {
        provider.verify(&inbound, &request.integration)?;
        return Ok(provider.normalize(&inbound, &request.integration)?);
    }
    let message = SnsMessage::parse(inbound.body)?;
    check_topic(&request.integration.cloudwatch.topics, &message.topic_arn)?;
    let verified = ready(sns.verify(&message, inbound.received_at)).ok_or(Refused::Pending)??;
    if verified.kind != tocsin_core::sns::SnsMessageType::Notification {
        return Err(Refused::NotANotification);
    }
    let unwrapped = Inbound {
        body: verified.message.as_bytes(),
        ..inbound
    };
    provider.verify(&unwrapped, &request.integration)?;
    Ok(provider.normalize(&unwrapped, &request.integration)?)
}

fn bench_providers(c: &mut Criterion) {
    let sns = Sns::offline(repository_file("tests/fixtures/sns"));
    let mut group = c.benchmark_group("providers");
    for &kind in ProviderKind::ALL {
        let request = request(kind);
        // Checked once before timing (this also caches the SNS
        // certificate): every figure is of an accepted request.
        let alerts = match verify_and_normalize(&request, &sns) {
            Ok(alerts) if !alerts.is_empty() => alerts.len(),
            Ok(_) => panic!("{kind}: the trigger sample made no alert"),
            Err(refused) => panic!("{kind}: the prepared request was refused: {refused}"),
        };
        group.throughput(Throughput::Elements(alerts as u64));
        group.bench_function(kind.as_str(), |b| {
            b.iter(|| verify_and_normalize(std::hint::black_box(&request), &sns))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short, so that all the providers take about two minutes; the command
    // line (--measurement-time …) still overrides these. Changes within ±5%
    // are noise on a 2-core machine (tests/bench uses the same figure).
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .noise_threshold(0.05);
    targets = bench_providers
}
criterion_main!(benches);
