//! The signature verifiers, fuzzed on request headers and body: Tocsin's own
//! `X-Signature` HMAC (signature.rs), every provider's scheme (hex and
//! base64 HMACs, Grafana's timestamped HMAC, secrets in a header or a Basic
//! password), each with a secret the fuzzer does not know.
//!
//! Invariants: a `sha256=<hex>` header decodes to the 32 bytes its hex
//! spells, or is refused; no request passes a verifier without the secret;
//! a request signed correctly passes (whatever else its headers hold), and
//! Grafana's timestamp is accepted exactly within its tolerance; no error
//! shows the secret.

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use tocsin_core::config::{Catalog, Integration, Secret};
use tocsin_core::providers::grafana::{TIMESTAMP_HEADER, TOLERANCE_SECS};
use tocsin_core::providers::{provider, Delivery, Inbound, ProviderKind};
use tocsin_core::signature::{
    decode_sha256_header, hmac_sha256, hmac_sha256_hex, verify_body_signature, SignatureError,
};

use crate::{assert_no_secret, received_at, Request, KEY, SECRET};

/// How a provider's requests prove they come from the tool once its
/// integration has a secret.
#[derive(Debug, Clone, Copy)]
enum Scheme {
    /// The SNS envelope's RSA signature, checked before the provider.
    Sns,
    /// A hex HMAC-SHA256 of the body in `header`, after `prefix`.
    HmacHex { header: &'static str, prefix: &'static str },
    /// A base64 HMAC-SHA256 of the body (Splunk Observability).
    HmacBase64(&'static str),
    /// Grafana: hex HMAC of `<timestamp>:<body>` when a timestamp is sent.
    GrafanaTimestamped,
    /// The secret itself in `header`.
    SecretHeader(&'static str),
    /// `Authorization: Basic`, the password being the secret.
    BasicPassword,
}

const TOCSIN_HMAC: Scheme = Scheme::HmacHex {
    header: "x-signature",
    prefix: "sha256=",
};
const TOCSIN_SECRET: Scheme = Scheme::SecretHeader("x-tocsin-secret");

/// Exhaustive on purpose: a new provider does not build here until its
/// scheme is named.
fn scheme(kind: ProviderKind) -> Scheme {
    match kind {
        // No scheme of their own: Tocsin's X-Signature once a secret is set.
        ProviderKind::EventsV2
        | ProviderKind::Prometheus
        | ProviderKind::Webhook
        | ProviderKind::Generic
        | ProviderKind::Azure
        | ProviderKind::Pingdom
        | ProviderKind::Email
        | ProviderKind::SplunkOnCall => TOCSIN_HMAC,
        ProviderKind::AppDynamics
        | ProviderKind::BetterUptime
        | ProviderKind::Datadog
        | ProviderKind::Dynatrace
        | ProviderKind::NewRelic
        | ProviderKind::Site24x7
        | ProviderKind::UptimeKuma
        | ProviderKind::UptimeRobot => TOCSIN_SECRET,
        ProviderKind::Bitbucket => Scheme::HmacHex {
            header: "x-hub-signature",
            prefix: "sha256=",
        },
        ProviderKind::Github => Scheme::HmacHex {
            header: "x-hub-signature-256",
            prefix: "sha256=",
        },
        ProviderKind::Sentry => Scheme::HmacHex {
            header: "sentry-hook-signature",
            prefix: "",
        },
        ProviderKind::SplunkObservability => Scheme::HmacBase64("x-sfx-signature"),
        ProviderKind::Grafana => Scheme::GrafanaTimestamped,
        ProviderKind::Gitlab => Scheme::SecretHeader("x-gitlab-token"),
        ProviderKind::Honeycomb => Scheme::SecretHeader("x-honeycomb-webhook-token"),
        ProviderKind::Elastic | ProviderKind::GoogleCloudMonitoring => Scheme::BasicPassword,
        ProviderKind::CloudWatch => Scheme::Sns,
    }
}

pub fn signature(data: &[u8]) {
    let request = Request::decode(data);
    let secret = Secret::new(SECRET);

    for value in request.headers.values() {
        if let Ok(text) = value.to_str() {
            check_decoding(text);
        }
    }

    match verify_body_signature(&request.headers, request.body, &[&secret]) {
        Ok(()) => panic!("X-Signature accepted without the secret"),
        Err(error) => assert_no_secret("a signature error", error.to_string().as_bytes()),
    }

    for &kind in ProviderKind::ALL {
        let integration = integration(kind);
        let inbound = Inbound {
            headers: &request.headers,
            query: request.query.as_deref(),
            body: request.body,
            received_at: received_at(),
        };
        let p = provider(kind);
        match p.verify(&inbound, &integration) {
            Ok(()) => assert!(
                p.delivery() == Delivery::Sns,
                "{kind}: verify accepted a request without the secret"
            ),
            Err(error) => assert_no_secret("a signature error", error.to_string().as_bytes()),
        }
        signed_correctly(kind, &request, &integration);
    }
}

/// `sha256=<hex>` (prefix optional, whitespace around allowed) decodes to
/// exactly the bytes its 64 hex digits spell.
fn check_decoding(text: &str) {
    let trimmed = text.trim();
    let digits = trimmed.strip_prefix("sha256=").unwrap_or(trimmed);
    let spelled = (digits.len() == 64).then(|| hex::decode(digits).ok()).flatten();
    match decode_sha256_header(text) {
        Ok(bytes) => assert_eq!(Some(bytes), spelled, "{text:?} decoded to other bytes"),
        Err(error) => {
            assert_eq!(spelled, None, "{text:?} was refused");
            assert_eq!(error, SignatureError::Malformed);
        }
    }
}

/// The fuzzed request with the provider's signature set right (replacing
/// any the fuzzer wrote) passes; with Grafana's timestamp, exactly when
/// the timestamp is a number within the tolerance.
fn signed_correctly(kind: ProviderKind, request: &Request<'_>, integration: &Integration) {
    let body = request.body;
    let mut headers = request.headers.clone();
    let mut expected = Ok(());
    match scheme(kind) {
        Scheme::Sns => return,
        Scheme::HmacHex { header, prefix } => {
            set(
                &mut headers,
                header,
                &format!("{prefix}{}", hmac_sha256_hex(SECRET.as_bytes(), body)),
            );
            if header == "x-signature" {
                // X-Signature wins over X-Webhook-Signature; drop the other
                // so that the header checked is the one signed.
                headers.remove("x-webhook-signature");
            }
        }
        Scheme::HmacBase64(header) => {
            let mac = hmac_sha256(SECRET.as_bytes(), body);
            set(
                &mut headers,
                header,
                &base64::engine::general_purpose::STANDARD.encode(mac),
            );
        }
        Scheme::SecretHeader(header) => set(&mut headers, header, SECRET),
        Scheme::BasicPassword => {
            let credentials = base64::engine::general_purpose::STANDARD.encode(format!("tocsin:{SECRET}"));
            set(&mut headers, "authorization", &format!("Basic {credentials}"));
        }
        Scheme::GrafanaTimestamped => {
            headers.remove("x-grafana-alert-signature");
            let sent = headers.get(TIMESTAMP_HEADER).map(|v| v.as_bytes().to_vec());
            let signed = match &sent {
                None => body.to_vec(),
                Some(sent) => [sent.as_slice(), b":", body].concat(),
            };
            set(
                &mut headers,
                "x-grafana-alerting-signature",
                &hmac_sha256_hex(SECRET.as_bytes(), &signed),
            );
            if let Some(sent) = sent {
                let number = std::str::from_utf8(&sent)
                    .ok()
                    .and_then(|text| text.trim().parse::<i64>().ok());
                expected = match number {
                    None => Err(SignatureError::Malformed),
                    Some(at) if received_at().timestamp().abs_diff(at) > TOLERANCE_SECS.unsigned_abs() => {
                        Err(SignatureError::Expired {
                            tolerance_secs: TOLERANCE_SECS,
                        })
                    }
                    Some(_) => Ok(()),
                };
            }
        }
    }
    let inbound = Inbound {
        headers: &headers,
        query: request.query.as_deref(),
        body,
        received_at: received_at(),
    };
    assert_eq!(
        provider(kind).verify(&inbound, integration),
        expected,
        "{kind}: a correctly signed request"
    );
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    let value = HeaderValue::from_str(value).unwrap_or_else(|e| panic!("harness: {name}: {e}"));
    headers.insert(HeaderName::from_static(name), value);
}

/// An integration of `kind` with the secret, built once per kind.
fn integration(kind: ProviderKind) -> Integration {
    use std::sync::OnceLock;
    static ALL: OnceLock<Vec<Integration>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        let mut yaml = String::from("services:\n  - id: fuzz\n    integrations:\n");
        for (n, &kind) in ProviderKind::ALL.iter().enumerate() {
            // Keys must differ; the secret is set below, since cloudwatch
            // integrations may not have one in config.
            let key = format!("{:032x}", u128::from_str_radix(KEY, 16).unwrap_or(0) + n as u128);
            let settings = match kind {
                ProviderKind::CloudWatch => ", cloudwatch: {topics: [arn:aws:sns:us-east-1:123456789012:fuzz]}",
                _ => "",
            };
            yaml.push_str(&format!(
                "      - {{id: fuzz-{n}, type: {kind}, key: {key}{settings}}}\n"
            ));
        }
        let catalog = Catalog::from_yaml(&yaml, "fuzz.yaml").unwrap_or_else(|e| panic!("harness: {e}"));
        catalog
            .integrations
            .into_iter()
            .map(|mut integration| {
                integration.secret = Some(Secret::new(SECRET));
                integration
            })
            .collect()
    });
    all.iter()
        .find(|integration| integration.provider == kind)
        .cloned()
        .unwrap_or_else(|| panic!("harness: no {kind} integration"))
}
