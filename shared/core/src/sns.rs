//! Amazon SNS deliveries over HTTPS: the message envelope, its signature
//! (SignatureVersion 1, SHA1withRSA; 2, SHA256withRSA), the rule for which
//! URLs may serve a signing certificate or confirm a subscription, a cache of
//! signing certificates, and the port for the two steps that need the network.
//!
//! The clock is always a parameter: a verifier that read the time itself
//! could not be tested against real signed messages, whose certificates have
//! since expired.
//!
//! <https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html>
//! <https://docs.aws.amazon.com/sns/latest/dg/http-notification-json.html>

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Duration, TimeZone, Utc};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::event::FieldError;
use crate::ports::BackendError;
use crate::providers::InvalidPayload;

/// How old a message may be. SNS retries an HTTPS delivery for at most an
/// hour (a hard limit of its delivery policies) and keeps the first
/// attempt's Timestamp; twice that leaves room for slow first attempts.
pub const MAX_MESSAGE_AGE: Duration = Duration::hours(2);

/// How far ahead of our clock a Timestamp may be (clock skew).
pub const MAX_CLOCK_SKEW: Duration = Duration::minutes(5);

/// At most this many certificates are cached: SNS signs with a handful, so a
/// full cache means someone is cycling URLs, and it is simply emptied.
const CACHE_LIMIT: usize = 64;

// ---------------------------------------------------------------------------
// Topic ARNs and the SNS host rule.

/// An SNS topic ARN (`arn:aws:sns:eu-west-1:123456789012:alarms`), checked
/// for shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicArn(String);

impl TopicArn {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        let parts: Vec<&str> = value.trim().splitn(6, ':').collect();
        let valid = matches!(
            parts.as_slice(),
            ["arn", partition, "sns", region, account, name]
                if is_partition(partition)
                    && is_region(region)
                    && account.len() == 12
                    && account.bytes().all(|b| b.is_ascii_digit())
                    && is_topic_name(name)
        );
        if valid {
            Ok(TopicArn(value.trim().to_owned()))
        } else {
            Err(FieldError::new(
                "topic",
                format!("'{value}' is not an SNS topic ARN such as arn:aws:sns:eu-west-1:123456789012:alarms"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TopicArn {
    type Error = FieldError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        TopicArn::parse(&value)
    }
}

impl From<TopicArn> for String {
    fn from(value: TopicArn) -> Self {
        value.0
    }
}

impl fmt::Display for TopicArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_partition(value: &str) -> bool {
    value == "aws"
        || value
            .strip_prefix("aws-")
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
}

/// `us-east-2`, `cn-north-1`, `us-gov-west-1`: lowercase letters, digits and
/// dashes, never a dot (so a region can never smuggle in another domain).
fn is_region(value: &str) -> bool {
    (2..=32).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && value.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && !value.ends_with('-')
}

fn is_topic_name(value: &str) -> bool {
    let name = value.strip_suffix(".fifo").unwrap_or(value);
    (1..=256).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The region of an SNS host, `sns.<region>.amazonaws.com` or
/// `sns.<region>.amazonaws.com.cn`; None for any other host.
fn sns_host_region(host: &str) -> Option<&str> {
    let rest = host.strip_prefix("sns.")?;
    let region = rest
        .strip_suffix(".amazonaws.com")
        .or_else(|| rest.strip_suffix(".amazonaws.com.cn"))?;
    is_region(region).then_some(region)
}

/// A URL from an SNS message that breaks the rule for its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {reason}")]
pub struct UrlRejected {
    pub field: &'static str,
    pub reason: &'static str,
}

/// Splits `https://host/path?query` into host, path and query, refusing
/// anything that is not plain https to a plain host name.
fn split_https<'a>(url: &'a str, field: &'static str) -> Result<(&'a str, &'a str, Option<&'a str>), UrlRejected> {
    let reject = |reason| UrlRejected { field, reason };
    let rest = url.strip_prefix("https://").ok_or(reject("must be an https:// URL"))?;
    if rest.contains('#') {
        return Err(reject("must not carry a fragment"));
    }
    let (authority, path_and_query) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    // A userinfo (`@`), a port (`:`) or anything but a bare SNS host name
    // fails here: the region may hold only letters, digits and dashes.
    if sns_host_region(authority).is_none() {
        return Err(reject(
            "must be served by sns.<region>.amazonaws.com (or .amazonaws.com.cn)",
        ));
    }
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    Ok((authority, path, query))
}

/// A SigningCertURL that passed the rule: https, an SNS host, and a
/// `/SimpleNotificationService-<id>.pem` path with nothing after it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SigningCertUrl {
    url: String,
    file_start: usize,
}

impl SigningCertUrl {
    pub fn parse(url: &str) -> Result<Self, UrlRejected> {
        const FIELD: &str = "SigningCertURL";
        let (host, path, query) = split_https(url, FIELD)?;
        let id = path
            .strip_prefix("/SimpleNotificationService-")
            .and_then(|rest| rest.strip_suffix(".pem"))
            .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric()));
        if id.is_none() || query.is_some() {
            return Err(UrlRejected {
                field: FIELD,
                reason: "must name a /SimpleNotificationService-<id>.pem file and nothing else",
            });
        }
        Ok(SigningCertUrl {
            url: url.to_owned(),
            file_start: "https://".len() + host.len() + 1,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// `SimpleNotificationService-<id>.pem`: how a folder of trusted
    /// certificates names the file. Letters and digits only around the
    /// fixed parts, so it can never name a path outside the folder.
    pub fn file_name(&self) -> &str {
        &self.url[self.file_start..]
    }
}

impl fmt::Display for SigningCertUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// A SubscribeURL that passed the rule: https, an SNS host, path `/`, a
/// `ConfirmSubscription` action for the message's own topic. It carries the
/// confirmation token, so Display shows only the host.
#[derive(Clone, PartialEq, Eq)]
pub struct SubscribeUrl {
    url: String,
    host_end: usize,
}

impl SubscribeUrl {
    pub fn parse(url: &str, topic_arn: &str) -> Result<Self, UrlRejected> {
        const FIELD: &str = "SubscribeURL";
        let reject = |reason| UrlRejected { field: FIELD, reason };
        let (host, path, query) = split_https(url, FIELD)?;
        if path != "/" {
            return Err(reject("must have the path /"));
        }
        let params: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        if param("Action") != Some("ConfirmSubscription") {
            return Err(reject("must be an Action=ConfirmSubscription request"));
        }
        if param("TopicArn") != Some(topic_arn) {
            return Err(reject("must confirm the message's own TopicArn"));
        }
        if param("Token").is_none_or(str::is_empty) {
            return Err(reject("must carry the confirmation Token"));
        }
        Ok(SubscribeUrl {
            url: url.to_owned(),
            host_end: "https://".len() + host.len(),
        })
    }

    /// The whole URL, token included: for the GET that confirms, and for an
    /// operator confirming by hand. Never put it in an HTTP answer.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    pub fn host(&self) -> &str {
        &self.url["https://".len()..self.host_end]
    }
}

impl fmt::Debug for SubscribeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubscribeUrl(https://{}/?<redacted>)", self.host())
    }
}

impl fmt::Display for SubscribeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}/?Action=ConfirmSubscription&…", self.host())
    }
}

// ---------------------------------------------------------------------------
// The envelope.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnsMessageType {
    Notification,
    SubscriptionConfirmation,
    UnsubscribeConfirmation,
}

impl SnsMessageType {
    pub fn as_str(self) -> &'static str {
        match self {
            SnsMessageType::Notification => "Notification",
            SnsMessageType::SubscriptionConfirmation => "SubscriptionConfirmation",
            SnsMessageType::UnsubscribeConfirmation => "UnsubscribeConfirmation",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        [
            SnsMessageType::Notification,
            SnsMessageType::SubscriptionConfirmation,
            SnsMessageType::UnsubscribeConfirmation,
        ]
        .into_iter()
        .find(|t| t.as_str() == value)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureVersion {
    /// SHA1withRSA.
    V1,
    /// SHA256withRSA.
    V2,
}

/// One SNS message as it arrived, every signed value kept byte for byte.
/// The signature fields stay optional here: a message without them is
/// refused by [`Sns::verify`] as unsigned (401), not as malformed (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnsMessage {
    pub kind: SnsMessageType,
    pub message_id: String,
    pub topic_arn: String,
    pub subject: Option<String>,
    pub message: String,
    pub timestamp: String,
    pub signature_version: Option<String>,
    pub signature: Option<String>,
    pub signing_cert_url: Option<String>,
    /// Confirmations only.
    pub subscribe_url: Option<String>,
    /// Confirmations only.
    pub token: Option<String>,
}

// The body as SNS writes it. The Lambda event's casing (SigningCertUrl) is
// accepted too, so the same parser reads both forms.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Envelope {
    #[serde(rename = "Type")]
    kind: Option<String>,
    #[serde(rename = "MessageId")]
    message_id: Option<String>,
    #[serde(rename = "TopicArn")]
    topic_arn: Option<String>,
    #[serde(rename = "Subject")]
    subject: Option<String>,
    #[serde(rename = "Message")]
    message: Option<String>,
    #[serde(rename = "Timestamp")]
    timestamp: Option<String>,
    #[serde(rename = "SignatureVersion")]
    signature_version: Option<String>,
    #[serde(rename = "Signature")]
    signature: Option<String>,
    #[serde(rename = "SigningCertURL", alias = "SigningCertUrl")]
    signing_cert_url: Option<String>,
    #[serde(rename = "SubscribeURL", alias = "SubscribeUrl")]
    subscribe_url: Option<String>,
    #[serde(rename = "Token")]
    token: Option<String>,
}

const INVALID: &str = "the SNS message is invalid";

/// What a raw-message-delivery subscription posts: the bare message, with
/// no envelope to verify.
const RAW_DELIVERY: &str = "is not an SNS message envelope: turn raw message delivery off on the \
     subscription, Tocsin needs the envelope to check the SNS signature";

/// The header SNS adds to raw-message deliveries.
pub const RAW_DELIVERY_HEADER: &str = "x-amz-sns-rawdelivery";

/// Refuses a request that SNS marked as a raw message delivery.
pub fn refuse_raw_delivery(headers: &http::HeaderMap) -> Result<(), InvalidPayload> {
    match headers.get(RAW_DELIVERY_HEADER).and_then(|v| v.to_str().ok()) {
        Some(value) if value.trim().eq_ignore_ascii_case("true") => Err(InvalidPayload::field("body", RAW_DELIVERY)),
        _ => Ok(()),
    }
}

impl SnsMessage {
    /// Parses an HTTP(S) delivery's body. A bare alarm (raw message delivery)
    /// is refused with a message that says so.
    pub fn parse(body: &[u8]) -> Result<Self, InvalidPayload> {
        let value: serde_json::Value = serde_json::from_slice(body).map_err(InvalidPayload::unreadable)?;
        let Some(object) = value.as_object() else {
            return Err(InvalidPayload::field(
                "body",
                "must be one JSON object (an SNS message)",
            ));
        };
        if !object.contains_key("Type") && !object.contains_key("Signature") {
            return Err(InvalidPayload::field("body", RAW_DELIVERY));
        }
        let envelope: Envelope = serde_path_to_error::deserialize(&value).map_err(|error| {
            let path = error.path().to_string();
            InvalidPayload::field(path, format!("has the wrong type: {}", error.into_inner()))
        })?;

        let mut errors = Vec::new();
        let mut required = |name: &str, value: Option<String>| {
            if value.is_none() {
                errors.push(FieldError::new(name, "is missing"));
            }
            value.unwrap_or_default()
        };
        let kind_text = required("Type", envelope.kind);
        let message_id = required("MessageId", envelope.message_id);
        let topic_arn = required("TopicArn", envelope.topic_arn);
        let message = required("Message", envelope.message);
        let timestamp = required("Timestamp", envelope.timestamp);
        let kind = SnsMessageType::parse(&kind_text);
        if kind.is_none() && !kind_text.is_empty() {
            errors.push(FieldError::new(
                "Type",
                format!("'{kind_text}' is not one of Notification, SubscriptionConfirmation, UnsubscribeConfirmation"),
            ));
        }
        if matches!(
            kind,
            Some(SnsMessageType::SubscriptionConfirmation | SnsMessageType::UnsubscribeConfirmation)
        ) {
            if envelope.subscribe_url.is_none() {
                errors.push(FieldError::new("SubscribeURL", "is missing"));
            }
            if envelope.token.is_none() {
                errors.push(FieldError::new("Token", "is missing"));
            }
        }
        match kind {
            Some(kind) if errors.is_empty() => Ok(SnsMessage {
                kind,
                message_id,
                topic_arn,
                subject: envelope.subject,
                message,
                timestamp,
                signature_version: envelope.signature_version,
                signature: envelope.signature,
                signing_cert_url: envelope.signing_cert_url,
                subscribe_url: envelope.subscribe_url,
                token: envelope.token,
            }),
            _ => Err(InvalidPayload::new(INVALID, errors)),
        }
    }

    /// What SNS signed: `Key\nValue\n` for each key, in SNS's order, which
    /// differs between notifications and confirmations.
    pub fn string_to_sign(&self) -> String {
        let mut text = String::with_capacity(self.message.len() + 512);
        let mut add = |key: &str, value: &str| {
            text.push_str(key);
            text.push('\n');
            text.push_str(value);
            text.push('\n');
        };
        add("Message", &self.message);
        add("MessageId", &self.message_id);
        match self.kind {
            SnsMessageType::Notification => {
                if let Some(subject) = &self.subject {
                    add("Subject", subject);
                }
                add("Timestamp", &self.timestamp);
            }
            SnsMessageType::SubscriptionConfirmation | SnsMessageType::UnsubscribeConfirmation => {
                add("SubscribeURL", self.subscribe_url.as_deref().unwrap_or_default());
                add("Timestamp", &self.timestamp);
                add("Token", self.token.as_deref().unwrap_or_default());
            }
        }
        add("TopicArn", &self.topic_arn);
        add("Type", self.kind.as_str());
        text
    }
}

/// A message whose signature checked out; only such a message can be
/// confirmed or turned into events.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedMessage<'a>(&'a SnsMessage);

impl std::ops::Deref for VerifiedMessage<'_> {
    type Target = SnsMessage;

    fn deref(&self) -> &SnsMessage {
        self.0
    }
}

// ---------------------------------------------------------------------------
// Signing certificates.

/// A certificate that cannot be used to verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the signing certificate cannot be read: {0}")]
pub struct CertificateError(&'static str);

/// A signing certificate reduced to what verification needs: its RSA public
/// key and its validity window. The certificate's own chain is not checked:
/// it is trusted because it came over TLS from an SNS host, or because an
/// operator put it in the trusted folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningCertificate {
    /// The DER RSAPublicKey, as ring takes it.
    public_key: Vec<u8>,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OID: u8 = 0x06;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_VERSION: u8 = 0xA0;
/// 1.2.840.113549.1.1.1, rsaEncryption.
const OID_RSA_ENCRYPTION: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];

impl SigningCertificate {
    /// Reads the first `CERTIFICATE` block of a PEM file.
    pub fn from_pem(pem: &[u8]) -> Result<Self, CertificateError> {
        const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
        const END: &str = "-----END CERTIFICATE-----";
        let text = std::str::from_utf8(pem).map_err(|_| CertificateError("it is not PEM text"))?;
        let start = text
            .find(BEGIN)
            .map(|i| i + BEGIN.len())
            .ok_or(CertificateError("it has no BEGIN CERTIFICATE line"))?;
        let length = text[start..]
            .find(END)
            .ok_or(CertificateError("it has no END CERTIFICATE line"))?;
        let base64: String = text[start..start + length]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(base64)
            .map_err(|_| CertificateError("its body is not base64"))?;
        Self::from_der(&der)
    }

    /// Walks just enough of the X.509 structure (RFC 5280 §4.1) to reach
    /// the validity and the subject public key.
    pub fn from_der(der: &[u8]) -> Result<Self, CertificateError> {
        let mut file = Der(der);
        let mut certificate = Der(file.read(TAG_SEQUENCE)?);
        if !file.0.is_empty() {
            return Err(CertificateError("it has bytes after the certificate"));
        }
        let mut tbs = Der(certificate.read(TAG_SEQUENCE)?);
        if tbs.peek() == Some(TAG_VERSION) {
            tbs.read(TAG_VERSION)?;
        }
        tbs.read(TAG_INTEGER)?; // serialNumber
        tbs.read(TAG_SEQUENCE)?; // signature algorithm
        tbs.read(TAG_SEQUENCE)?; // issuer
        let mut validity = Der(tbs.read(TAG_SEQUENCE)?);
        tbs.read(TAG_SEQUENCE)?; // subject
        let mut key_info = Der(tbs.read(TAG_SEQUENCE)?);

        let not_before = validity.read_time()?;
        let not_after = validity.read_time()?;
        let mut algorithm = Der(key_info.read(TAG_SEQUENCE)?);
        if algorithm.read(TAG_OID)? != OID_RSA_ENCRYPTION {
            return Err(CertificateError("its key is not an RSA key"));
        }
        match key_info.read(TAG_BIT_STRING)?.split_first() {
            Some((0, key)) if !key.is_empty() => Ok(SigningCertificate {
                public_key: key.to_vec(),
                not_before,
                not_after,
            }),
            _ => Err(CertificateError("its public key is malformed")),
        }
    }

    /// Checks `signature` over `message` at the time `now`.
    pub fn verify(
        &self,
        version: SignatureVersion,
        message: &[u8],
        signature: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), SnsError> {
        if now < self.not_before || now > self.not_after {
            return Err(SnsError::CertificateNotValid {
                not_before: self.not_before,
                not_after: self.not_after,
                at: now,
            });
        }
        let algorithm: &'static dyn ring::signature::VerificationAlgorithm = match version {
            // SNS's version 1 is SHA1withRSA: a legacy digest, but the one
            // it signs with; version 2 exists to avoid it.
            SignatureVersion::V1 => &ring::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            SignatureVersion::V2 => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        };
        ring::signature::UnparsedPublicKey::new(algorithm, &self.public_key)
            .verify(message, signature)
            .map_err(|_| SnsError::Mismatch)
    }
}

/// A cursor over DER: single-byte tags, definite lengths up to 4 bytes.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    fn read(&mut self, tag: u8) -> Result<&'a [u8], CertificateError> {
        const TRUNCATED: CertificateError = CertificateError("its DER is truncated");
        let (&actual, rest) = self.0.split_first().ok_or(TRUNCATED)?;
        if actual != tag {
            return Err(CertificateError("its DER has an unexpected element"));
        }
        let (&first, mut rest) = rest.split_first().ok_or(TRUNCATED)?;
        let length = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7F);
            if count == 0 || count > 4 || rest.len() < count {
                return Err(CertificateError("its DER has a bad length"));
            }
            let (bytes, tail) = rest.split_at(count);
            rest = tail;
            bytes.iter().fold(0usize, |length, &b| (length << 8) | usize::from(b))
        };
        if rest.len() < length {
            return Err(TRUNCATED);
        }
        let (value, tail) = rest.split_at(length);
        self.0 = tail;
        Ok(value)
    }

    /// UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime
    /// (`YYYYMMDDHHMMSSZ`), the two forms RFC 5280 allows.
    fn read_time(&mut self) -> Result<DateTime<Utc>, CertificateError> {
        const BAD: CertificateError = CertificateError("its validity dates are malformed");
        let (digits, year) = match self.peek() {
            Some(TAG_UTC_TIME) => {
                let value = self.read(TAG_UTC_TIME)?;
                let digits = value.strip_suffix(b"Z").filter(|d| d.len() == 12).ok_or(BAD)?;
                let yy = number(&digits[..2]).ok_or(BAD)?;
                (&digits[2..], if yy >= 50 { 1900 + yy } else { 2000 + yy })
            }
            Some(TAG_GENERALIZED_TIME) => {
                let value = self.read(TAG_GENERALIZED_TIME)?;
                let digits = value.strip_suffix(b"Z").filter(|d| d.len() == 14).ok_or(BAD)?;
                (&digits[4..], number(&digits[..4]).ok_or(BAD)?)
            }
            _ => return Err(BAD),
        };
        let field = |i: usize| number(&digits[i..i + 2]).ok_or(BAD);
        let year = i32::try_from(year).map_err(|_| BAD)?;
        Utc.with_ymd_and_hms(year, field(0)?, field(2)?, field(4)?, field(6)?, field(8)?)
            .single()
            .ok_or(BAD)
    }
}

fn number(digits: &[u8]) -> Option<u32> {
    digits
        .iter()
        .try_fold(0u32, |n, &d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
}

// ---------------------------------------------------------------------------
// Errors.

/// Every way an SNS message is refused after it parsed, each with a status.
#[derive(Debug, thiserror::Error)]
pub enum SnsError {
    #[error("the SNS message carries no {0}")]
    Missing(&'static str),
    #[error("SignatureVersion '{0}' is not supported: SNS signs with 1 (SHA1withRSA) or 2 (SHA256withRSA)")]
    UnsupportedVersion(String),
    #[error(transparent)]
    UntrustedUrl(#[from] UrlRejected),
    #[error("the Signature is not base64")]
    MalformedSignature,
    #[error("the signature does not match the message")]
    Mismatch,
    #[error("the message Timestamp '{timestamp}' is {reason}")]
    Stale { timestamp: String, reason: &'static str },
    #[error("no trusted signing certificate {file}: put it in the SNS certificate folder, or let Tocsin fetch it")]
    UnknownCertificate { file: String },
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    #[error("the signing certificate is valid from {not_before} to {not_after}, not at {at}")]
    CertificateNotValid {
        not_before: DateTime<Utc>,
        not_after: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    #[error("SNS topic '{0}' may not deliver to this integration: list it in the integration's cloudwatch.topics")]
    TopicNotAllowed(String),
    #[error("the SNS signing certificate could not be fetched; retry")]
    CertificateUnavailable(#[source] BackendError),
    #[error("the SNS subscription could not be confirmed; retry")]
    ConfirmationFailed(#[source] BackendError),
    #[error("this endpoint cannot verify SNS messages: it was started without SNS support")]
    NotConfigured,
}

impl SnsError {
    /// 401 for anything that makes the message untrusted, 403 for a trusted
    /// message from a topic that is not allowed, 503 when the network or the
    /// deployment failed us (SNS retries those).
    pub fn status(&self) -> StatusCode {
        match self {
            SnsError::TopicNotAllowed(_) => StatusCode::FORBIDDEN,
            SnsError::CertificateUnavailable(_) | SnsError::ConfirmationFailed(_) | SnsError::NotConfigured => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// Refuses a topic that is not in `allowed`. Checked before anything is
/// fetched, so a stranger's topic costs no request and is never confirmed.
pub fn check_topic(allowed: &[TopicArn], topic_arn: &str) -> Result<(), SnsError> {
    if allowed.iter().any(|t| t.as_str() == topic_arn) {
        Ok(())
    } else {
        Err(SnsError::TopicNotAllowed(topic_arn.to_owned()))
    }
}

fn check_timestamp(timestamp: &str, now: DateTime<Utc>) -> Result<(), SnsError> {
    let stale = |reason| SnsError::Stale {
        timestamp: timestamp.to_owned(),
        reason,
    };
    let sent = DateTime::parse_from_rfc3339(timestamp)
        .map_err(|_| stale("not an ISO 8601 time"))?
        .with_timezone(&Utc);
    if now - sent > MAX_MESSAGE_AGE {
        return Err(stale("more than two hours old"));
    }
    if sent - now > MAX_CLOCK_SKEW {
        return Err(stale("more than five minutes in the future"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The port.

/// Where signing certificates come from: HTTPS (tocsin-outbound's
/// `SnsHttps`) or a folder of trusted files ([`CertificateFolder`]).
#[async_trait]
pub trait SnsCertificates: Send + Sync {
    /// The PEM bytes of the certificate at `url`, or None when there is none
    /// there (a 404, a file missing from the folder). Only URLs that passed
    /// the SNS host rule reach this.
    async fn certificate(&self, url: &SigningCertUrl) -> Result<Option<Vec<u8>>, BackendError>;
}

/// Confirms subscriptions.
#[async_trait]
pub trait SnsSubscriptions: Send + Sync {
    /// Confirms by a GET of the SubscribeURL (already checked against the
    /// SNS host rule), or hands it to an operator.
    async fn confirm(&self, url: &SubscribeUrl) -> Result<Confirmation, BackendError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// SNS answered the SubscribeURL with success.
    Confirmed,
    /// No outbound network: the URL was logged for an operator to open.
    LeftToOperator,
}

/// Trusted signing certificates as files, `SimpleNotificationService-<id>.pem`
/// as SNS names them, for installations with no outbound internet (and for
/// tests).
#[derive(Debug, Clone)]
pub struct CertificateFolder {
    dir: PathBuf,
}

impl CertificateFolder {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[async_trait]
impl SnsCertificates for CertificateFolder {
    async fn certificate(&self, url: &SigningCertUrl) -> Result<Option<Vec<u8>>, BackendError> {
        // A small local file, read once per process thanks to the cache:
        // blocking for it is cheaper than a runtime dependency in the domain.
        match std::fs::read(self.dir.join(url.file_name())) {
            Ok(pem) => Ok(Some(pem)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(BackendError::new("reading an SNS signing certificate", error)),
        }
    }
}

/// For installations with no outbound internet: the SubscribeURL is logged
/// for an operator (open it, or `aws sns confirm-subscription`), and SNS is
/// answered with success so it stops resending.
#[derive(Debug, Clone, Copy, Default)]
pub struct ManualConfirmation;

#[async_trait]
impl SnsSubscriptions for ManualConfirmation {
    async fn confirm(&self, url: &SubscribeUrl) -> Result<Confirmation, BackendError> {
        tracing::warn!(
            subscribe_url = url.as_str(),
            "SNS subscription waiting for confirmation: open the SubscribeURL or run aws sns confirm-subscription"
        );
        Ok(Confirmation::LeftToOperator)
    }
}

/// SNS support for ingest: verification with a per-process certificate
/// cache, and subscription confirmation.
pub struct Sns {
    certificates: Arc<dyn SnsCertificates>,
    subscriptions: Arc<dyn SnsSubscriptions>,
    cache: Mutex<HashMap<String, Arc<SigningCertificate>>>,
}

impl fmt::Debug for Sns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sns")
            .field("cached_certificates", &self.cache().len())
            .finish_non_exhaustive()
    }
}

impl Sns {
    pub fn new(certificates: Arc<dyn SnsCertificates>, subscriptions: Arc<dyn SnsSubscriptions>) -> Self {
        Self {
            certificates,
            subscriptions,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Without network: certificates from `folder`, confirmations left to an
    /// operator.
    pub fn offline(folder: impl Into<PathBuf>) -> Self {
        Self::new(Arc::new(CertificateFolder::new(folder)), Arc::new(ManualConfirmation))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<SigningCertificate>>> {
        // A panic elsewhere while holding the lock leaves a map that is
        // still whole: use it rather than fail every later request.
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks the message's signature at the time `now`: the version, the
    /// certificate URL, the Timestamp window, then RSA over the string to
    /// sign with the (cached) certificate.
    pub async fn verify<'m>(
        &self,
        message: &'m SnsMessage,
        now: DateTime<Utc>,
    ) -> Result<VerifiedMessage<'m>, SnsError> {
        let version = match message.signature_version.as_deref() {
            Some("1") => SignatureVersion::V1,
            Some("2") => SignatureVersion::V2,
            Some(other) => return Err(SnsError::UnsupportedVersion(other.to_owned())),
            None => return Err(SnsError::Missing("SignatureVersion")),
        };
        let signature = message.signature.as_deref().ok_or(SnsError::Missing("Signature"))?;
        let url = message
            .signing_cert_url
            .as_deref()
            .ok_or(SnsError::Missing("SigningCertURL"))?;
        let url = SigningCertUrl::parse(url)?;
        check_timestamp(&message.timestamp, now)?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature.trim())
            .map_err(|_| SnsError::MalformedSignature)?;
        let certificate = self.certificate(&url).await?;
        certificate.verify(version, message.string_to_sign().as_bytes(), &signature, now)?;
        Ok(VerifiedMessage(message))
    }

    async fn certificate(&self, url: &SigningCertUrl) -> Result<Arc<SigningCertificate>, SnsError> {
        if let Some(certificate) = self.cache().get(url.as_str()) {
            return Ok(certificate.clone());
        }
        let pem = self
            .certificates
            .certificate(url)
            .await
            .map_err(SnsError::CertificateUnavailable)?
            .ok_or_else(|| SnsError::UnknownCertificate {
                file: url.file_name().to_owned(),
            })?;
        let certificate = Arc::new(SigningCertificate::from_pem(&pem)?);
        let mut cache = self.cache();
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(url.as_str().to_owned(), certificate.clone());
        Ok(certificate)
    }

    /// Confirms a verified SubscriptionConfirmation.
    pub async fn confirm(&self, message: &VerifiedMessage<'_>) -> Result<Confirmation, SnsError> {
        let url = message
            .subscribe_url
            .as_deref()
            .ok_or(SnsError::Missing("SubscribeURL"))?;
        let url = SubscribeUrl::parse(url, &message.topic_arn)?;
        self.subscriptions
            .confirm(&url)
            .await
            .map_err(SnsError::ConfirmationFailed)
    }
}

/// Test doubles and a test-only signer, shared by the SNS, CloudWatch and
/// ingest tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// The real certificate that signed the fixtures in tests/fixtures/sns.
    pub const AWS_CERT_FOLDER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/sns");
    /// A key and self-signed certificate made for these tests only (see
    /// testdata/sns/README.md); trusted nowhere else.
    pub const TEST_FOLDER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/sns");
    pub const TEST_CERT_URL: &str =
        "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0000tocsintestsigner0000000000.pem";

    /// Signs `message` (SignatureVersion 2) with the test key, pointing its
    /// SigningCertURL at the test certificate.
    pub fn sign(message: &mut SnsMessage) {
        let pem = std::fs::read_to_string(format!("{TEST_FOLDER}/test-signer.key.pem")).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
        let key = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
        message.signature_version = Some("2".into());
        message.signing_cert_url = Some(TEST_CERT_URL.into());
        let mut signature = vec![0; key.public().modulus_len()];
        key.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            message.string_to_sign().as_bytes(),
            &mut signature,
        )
        .unwrap();
        message.signature = Some(base64::engine::general_purpose::STANDARD.encode(signature));
    }

    /// Certificates from the fixture and test folders, counting the fetches.
    #[derive(Default)]
    pub struct CountingFolders {
        pub fetches: AtomicUsize,
        pub fail: bool,
    }

    impl CountingFolders {
        pub fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl SnsCertificates for CountingFolders {
        async fn certificate(&self, url: &SigningCertUrl) -> Result<Option<Vec<u8>>, BackendError> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            if self.fail {
                return Err(BackendError::new("fetching a certificate", "the network is down"));
            }
            for dir in [AWS_CERT_FOLDER, TEST_FOLDER] {
                if let Some(pem) = CertificateFolder::new(dir).certificate(url).await? {
                    return Ok(Some(pem));
                }
            }
            Ok(None)
        }
    }

    /// Records the SubscribeURLs it is asked to confirm.
    #[derive(Default)]
    pub struct RecordingSubscriptions {
        pub confirmed: Mutex<Vec<String>>,
    }

    impl RecordingSubscriptions {
        pub fn confirmed(&self) -> Vec<String> {
            self.confirmed.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl SnsSubscriptions for RecordingSubscriptions {
        async fn confirm(&self, url: &SubscribeUrl) -> Result<Confirmation, BackendError> {
            self.confirmed.lock().unwrap().push(url.as_str().to_owned());
            Ok(Confirmation::Confirmed)
        }
    }

    pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    pub fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/sns");
    const FIXTURE_NAMES: [&str; 4] = [
        "notification-sigv1.json",
        "notification-sigv1-subject.json",
        "notification-sigv2.json",
        "notification-sigv2-subject.json",
    ];
    /// The fixtures were sent on 2022-07-28; their certificate expired on
    /// 2022-08-17.
    const FIXTURE_CLOCK: &str = "2022-07-28T23:00:00Z";

    fn fixture(name: &str) -> SnsMessage {
        let body = std::fs::read(format!("{FIXTURES}/{name}")).expect("tests/fixtures/sns");
        SnsMessage::parse(&body).unwrap()
    }

    fn offline() -> Sns {
        Sns::offline(AWS_CERT_FOLDER)
    }

    fn verify(sns: &Sns, message: &SnsMessage, now: &str) -> Result<(), SnsError> {
        block_on(sns.verify(message, at(now))).map(|_| ())
    }

    #[test]
    fn the_real_signed_fixtures_verify_with_versions_1_and_2() {
        let sns = offline();
        for name in FIXTURE_NAMES {
            let message = fixture(name);
            assert_eq!(message.kind, SnsMessageType::Notification);
            verify(&sns, &message, FIXTURE_CLOCK).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_eq!(fixture(FIXTURE_NAMES[1]).subject.as_deref(), Some("Hello world"));
        assert_eq!(fixture(FIXTURE_NAMES[0]).subject, None);
    }

    #[test]
    fn one_changed_character_of_the_message_fails() {
        let sns = offline();
        for name in FIXTURE_NAMES {
            let mut message = fixture(name);
            message.message = message.message.replacen('w', "W", 1);
            assert!(
                matches!(verify(&sns, &message, FIXTURE_CLOCK), Err(SnsError::Mismatch)),
                "{name}"
            );
            let mut message = fixture(name);
            message.topic_arn.push('x');
            assert!(
                matches!(verify(&sns, &message, FIXTURE_CLOCK), Err(SnsError::Mismatch)),
                "{name}"
            );
        }
        // Dropping the Subject changes the string to sign.
        let mut message = fixture("notification-sigv1-subject.json");
        message.subject = None;
        assert!(matches!(verify(&sns, &message, FIXTURE_CLOCK), Err(SnsError::Mismatch)));
    }

    #[test]
    fn a_swapped_signature_version_fails() {
        let sns = offline();
        for (name, swapped) in [("notification-sigv1.json", "2"), ("notification-sigv2.json", "1")] {
            let mut message = fixture(name);
            message.signature_version = Some(swapped.into());
            assert!(
                matches!(verify(&sns, &message, FIXTURE_CLOCK), Err(SnsError::Mismatch)),
                "{name}"
            );
        }
        let mut message = fixture("notification-sigv2.json");
        message.signature_version = Some("3".into());
        assert!(matches!(
            verify(&sns, &message, FIXTURE_CLOCK),
            Err(SnsError::UnsupportedVersion(v)) if v == "3"
        ));
    }

    #[test]
    fn a_certificate_url_off_sns_or_over_http_is_refused_before_any_fetch() {
        let certificates = Arc::new(CountingFolders::default());
        let sns = Sns::new(certificates.clone(), Arc::new(RecordingSubscriptions::default()));
        let good = fixture("notification-sigv1.json").signing_cert_url.unwrap();
        for url in [
            good.replace("https://", "http://"),
            good.replace(
                "sns.us-east-2.amazonaws.com",
                "sns.us-east-2.amazonaws.com.evil.example",
            ),
            good.replace("sns.us-east-2.amazonaws.com", "evil.example"),
        ] {
            let mut message = fixture("notification-sigv1.json");
            message.signing_cert_url = Some(url.clone());
            assert!(
                matches!(verify(&sns, &message, FIXTURE_CLOCK), Err(SnsError::UntrustedUrl(_))),
                "{url}"
            );
        }
        assert_eq!(certificates.fetches(), 0);
    }

    #[test]
    fn the_signing_cert_url_rule() {
        for good in [
            "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc123.pem",
            "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-abc123.pem",
        ] {
            let url = SigningCertUrl::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert!(url.file_name().starts_with("SimpleNotificationService-"), "{good}");
            assert!(good.ends_with(url.file_name()));
        }
        for bad in [
            "http://sns.us-east-2.amazonaws.com/SimpleNotificationService-abc.pem",
            "HTTPS://sns.us-east-2.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.us-east-2.amazonaws.com.evil.example/SimpleNotificationService-abc.pem",
            "https://sns.us-east-2.evil.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://xsns.us-east-2.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://s3.us-east-2.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.us-east-2.amazonaws.com:8443/SimpleNotificationService-abc.pem",
            "https://user@sns.us-east-2.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://evil.example@sns.us-east-2.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-abc.pem?x=1",
            "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-abc.pem#x",
            "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-.pem",
            "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-../../etc/passwd.pem",
            "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-abc%2f.pem",
            "https://sns.us-east-2.amazonaws.com/dir/SimpleNotificationService-abc.pem",
            "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-abc.crt",
            "https://sns.us-east-2.amazonaws.com/",
            "https://sns.us-east-2.amazonaws.com",
            "https://sns.US-EAST-2.amazonaws.com/SimpleNotificationService-abc.pem",
            "sns.us-east-2.amazonaws.com/SimpleNotificationService-abc.pem",
            "",
        ] {
            let error = SigningCertUrl::parse(bad).expect_err(bad);
            assert_eq!(error.field, "SigningCertURL", "{bad}");
        }
    }

    const TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:alarms";

    fn subscribe_url(topic: &str) -> String {
        format!("https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={topic}&Token=2336412f37")
    }

    #[test]
    fn the_subscribe_url_rule() {
        let url = SubscribeUrl::parse(&subscribe_url(TOPIC), TOPIC).unwrap();
        assert_eq!(url.host(), "sns.eu-west-1.amazonaws.com");
        // The token never shows in Debug or Display.
        assert!(!format!("{url:?} {url}").contains("2336412f37"));
        for bad in [
            subscribe_url(TOPIC).replace("https://", "http://"),
            subscribe_url(TOPIC).replace("sns.eu-west-1.amazonaws.com", "evil.example"),
            subscribe_url(TOPIC).replace("ConfirmSubscription", "Unsubscribe"),
            subscribe_url(TOPIC).replace("/?", "/x?"),
            subscribe_url("arn:aws:sns:eu-west-1:123456789012:other"),
            subscribe_url(TOPIC).replace("&Token=2336412f37", ""),
            subscribe_url(TOPIC).replace(&format!("&TopicArn={TOPIC}"), ""),
            format!("{}#frag", subscribe_url(TOPIC)),
        ] {
            let error = SubscribeUrl::parse(&bad, TOPIC).expect_err(&bad);
            assert_eq!(error.field, "SubscribeURL", "{bad}");
        }
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let sns = offline();
        let message = fixture("notification-sigv1.json"); // sent 2022-07-28T21:23:58Z
        verify(&sns, &message, "2022-07-28T23:23:00Z").unwrap();
        for now in ["2022-07-28T23:24:30Z", "2022-07-28T21:10:00Z"] {
            assert!(
                matches!(verify(&sns, &message, now), Err(SnsError::Stale { .. })),
                "{now}"
            );
        }
        let mut message = fixture("notification-sigv1.json");
        message.timestamp = "yesterday".into();
        assert!(matches!(
            verify(&sns, &message, FIXTURE_CLOCK),
            Err(SnsError::Stale { .. })
        ));
    }

    #[test]
    fn the_certificate_is_checked_against_the_given_clock() {
        let pem = std::fs::read(format!(
            "{AWS_CERT_FOLDER}/SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem"
        ))
        .unwrap();
        let certificate = SigningCertificate::from_pem(&pem).unwrap();
        assert_eq!(certificate.not_before, at("2021-09-07T00:00:00Z"));
        assert_eq!(certificate.not_after, at("2022-08-17T23:59:59Z"));
        let message = fixture("notification-sigv1.json");
        let signature = base64::engine::general_purpose::STANDARD
            .decode(message.signature.as_deref().unwrap())
            .unwrap();
        let check = |now: &str| {
            certificate.verify(
                SignatureVersion::V1,
                message.string_to_sign().as_bytes(),
                &signature,
                at(now),
            )
        };
        check(FIXTURE_CLOCK).unwrap();
        for now in ["2022-08-18T00:00:00Z", "2021-09-06T23:59:59Z"] {
            assert!(matches!(check(now), Err(SnsError::CertificateNotValid { .. })), "{now}");
        }
    }

    #[test]
    fn certificates_with_generalized_times_parse_and_garbage_does_not() {
        let pem = std::fs::read(format!(
            "{TEST_FOLDER}/SimpleNotificationService-0000tocsintestsigner0000000000.pem"
        ))
        .unwrap();
        let certificate = SigningCertificate::from_pem(&pem).unwrap();
        // Dates from 2050 on are GeneralizedTime.
        assert!(certificate.not_after > at("2100-01-01T00:00:00Z"));

        assert!(SigningCertificate::from_pem(b"not a certificate").is_err());
        assert!(SigningCertificate::from_pem(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----").is_err());
        let text = String::from_utf8(pem).unwrap();
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
        // Every truncation fails cleanly, never panics.
        for cut in 0..der.len() {
            assert!(SigningCertificate::from_der(&der[..cut]).is_err(), "{cut}");
        }
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(SigningCertificate::from_der(&trailing).is_err());
    }

    #[test]
    fn certificates_are_fetched_once_per_process() {
        let certificates = Arc::new(CountingFolders::default());
        let sns = Sns::new(certificates.clone(), Arc::new(RecordingSubscriptions::default()));
        for name in FIXTURE_NAMES {
            verify(&sns, &fixture(name), FIXTURE_CLOCK).unwrap();
        }
        assert_eq!(certificates.fetches(), 1);
    }

    #[test]
    fn missing_and_unreachable_certificates_are_named() {
        let mut message = fixture("notification-sigv1.json");
        message.signing_cert_url =
            Some("https://sns.us-east-2.amazonaws.com/SimpleNotificationService-0123.pem".into());
        match verify(&offline(), &message, FIXTURE_CLOCK) {
            Err(e @ SnsError::UnknownCertificate { .. }) => {
                assert!(e.to_string().contains("SimpleNotificationService-0123.pem"), "{e}");
                assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
            }
            other => panic!("{other:?}"),
        }
        let down = Sns::new(
            Arc::new(CountingFolders {
                fail: true,
                ..CountingFolders::default()
            }),
            Arc::new(ManualConfirmation),
        );
        let error = block_on(down.verify(&fixture("notification-sigv1.json"), at(FIXTURE_CLOCK))).unwrap_err();
        assert!(matches!(error, SnsError::CertificateUnavailable(_)));
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn unsigned_messages_are_refused_as_unsigned() {
        for strip in [
            (|m: &mut SnsMessage| m.signature = None) as fn(&mut SnsMessage),
            |m| m.signature_version = None,
            |m| m.signing_cert_url = None,
        ] {
            let mut message = fixture("notification-sigv1.json");
            strip(&mut message);
            let error = verify(&offline(), &message, FIXTURE_CLOCK).unwrap_err();
            assert!(matches!(error, SnsError::Missing(_)), "{error}");
            assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
        }
        let mut message = fixture("notification-sigv1.json");
        message.signature = Some("not base64!".into());
        assert!(matches!(
            verify(&offline(), &message, FIXTURE_CLOCK),
            Err(SnsError::MalformedSignature)
        ));
    }

    fn confirmation() -> SnsMessage {
        SnsMessage::parse(include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../events/cloudwatch/subscription-confirmation.json"
        )))
        .unwrap()
    }

    #[test]
    fn confirmations_sign_their_own_keys_and_confirm_only_once_verified() {
        let mut message = confirmation();
        assert_eq!(message.kind, SnsMessageType::SubscriptionConfirmation);
        // The Message holds a newline of its own: each value is taken whole.
        let expected = format!(
            "Message\n{}\nMessageId\n{}\nSubscribeURL\n{}\nTimestamp\n{}\nToken\n{}\nTopicArn\n{}\nType\nSubscriptionConfirmation\n",
            message.message,
            message.message_id,
            message.subscribe_url.as_deref().unwrap(),
            message.timestamp,
            message.token.as_deref().unwrap(),
            message.topic_arn,
        );
        assert_eq!(message.string_to_sign(), expected);
        assert!(message.message.contains(".\nTo confirm"));

        message.timestamp = "2027-01-01T00:00:00.000Z".into();
        sign(&mut message);
        let subscriptions = Arc::new(RecordingSubscriptions::default());
        let sns = Sns::new(Arc::new(CountingFolders::default()), subscriptions.clone());
        let verified = block_on(sns.verify(&message, at("2027-01-01T00:00:05Z"))).unwrap();
        assert_eq!(block_on(sns.confirm(&verified)).unwrap(), Confirmation::Confirmed);
        assert_eq!(subscriptions.confirmed(), [message.subscribe_url.clone().unwrap()]);

        // A signed confirmation whose SubscribeURL leaves SNS is not followed.
        message.subscribe_url = Some(
            message
                .subscribe_url
                .unwrap()
                .replace("sns.eu-west-1.amazonaws.com", "evil.example"),
        );
        sign(&mut message);
        let verified = block_on(sns.verify(&message, at("2027-01-01T00:00:05Z"))).unwrap();
        assert!(matches!(
            block_on(sns.confirm(&verified)),
            Err(SnsError::UntrustedUrl(_))
        ));
        assert_eq!(subscriptions.confirmed().len(), 1);
    }

    #[test]
    fn without_network_the_confirmation_is_left_to_an_operator() {
        let mut message = confirmation();
        message.timestamp = "2027-01-01T00:00:00.000Z".into();
        sign(&mut message);
        let sns = Sns::offline(TEST_FOLDER);
        let verified = block_on(sns.verify(&message, at("2027-01-01T00:00:05Z"))).unwrap();
        assert_eq!(block_on(sns.confirm(&verified)).unwrap(), Confirmation::LeftToOperator);
    }

    #[test]
    fn parsing_names_what_is_missing_and_spots_raw_delivery() {
        let refused = |body: &str| -> Vec<String> {
            SnsMessage::parse(body.as_bytes())
                .unwrap_err()
                .errors
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(
            refused(r#"{"Type": "Notification", "Signature": "x"}"#),
            ["MessageId", "TopicArn", "Message", "Timestamp"]
        );
        assert_eq!(
            refused(
                r#"{"Type": "SubscriptionConfirmation", "MessageId": "m", "TopicArn": "t", "Message": "m", "Timestamp": "t"}"#
            ),
            ["SubscribeURL", "Token"]
        );
        assert_eq!(
            refused(r#"{"Type": "Ping", "MessageId": "m", "TopicArn": "t", "Message": "m", "Timestamp": "t"}"#),
            ["Type"]
        );
        assert_eq!(refused(r#"{"Type": 3}"#), ["Type"]);
        assert_eq!(refused("[]"), ["body"]);
        assert_eq!(refused("{"), ["body"]);

        let raw = SnsMessage::parse(br#"{"AlarmName": "x", "NewStateValue": "ALARM"}"#).unwrap_err();
        assert!(raw.errors[0].reason.contains("raw message delivery"), "{raw:?}");
    }

    #[test]
    fn the_lambda_event_casing_is_read_too() {
        let body = std::fs::read_to_string(format!("{FIXTURES}/notification-sigv1.json"))
            .unwrap()
            .replace("SigningCertURL", "SigningCertUrl")
            .replace("UnsubscribeURL", "UnsubscribeUrl");
        let message = SnsMessage::parse(body.as_bytes()).unwrap();
        verify(&offline(), &message, FIXTURE_CLOCK).unwrap();
    }

    #[test]
    fn topic_arns_are_checked_for_shape_and_allowed_by_exact_match() {
        for good in [
            TOPIC,
            "arn:aws-cn:sns:cn-north-1:123456789012:a_b-c",
            "arn:aws-us-gov:sns:us-gov-west-1:123456789012:alarms",
            "arn:aws:sns:eu-west-1:123456789012:orders.fifo",
        ] {
            TopicArn::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "alarms",
            "arn:aws:sqs:eu-west-1:123456789012:alarms",
            "arn:aws:sns:eu-west-1:1234567890:alarms",
            "arn:aws:sns:eu-west-1:123456789012:",
            "arn:aws:sns:eu-west-1:123456789012:a:b",
            "arn:aws:sns:eu.west-1:123456789012:alarms",
            "arn:gcp:sns:eu-west-1:123456789012:alarms",
        ] {
            assert!(TopicArn::parse(bad).is_err(), "{bad}");
        }
        let allowed = [TopicArn::parse(TOPIC).unwrap()];
        assert!(check_topic(&allowed, TOPIC).is_ok());
        let error = check_topic(&allowed, "arn:aws:sns:eu-west-1:123456789012:other").unwrap_err();
        assert_eq!(error.status(), StatusCode::FORBIDDEN);
        assert!(check_topic(&[], TOPIC).is_err());
    }
}
