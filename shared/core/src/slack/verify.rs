//! Slack's request signing (v0): `X-Slack-Signature: v0=<hex>`, the
//! HMAC-SHA256 under the app's signing secret of `v0:{timestamp}:{raw body}`,
//! with `X-Slack-Request-Timestamp` within five minutes of now so that a
//! captured request cannot be replayed later.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

use crate::config::Secret;

pub const SIGNATURE_HEADER: &str = "x-slack-signature";
pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";
/// How far the request's timestamp may be from now, either way, as Slack
/// recommends.
pub const TOLERANCE_SECS: u64 = 300;

/// Every way a Slack signature check fails. None carries the secret, the
/// signature sent or the one expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackSignatureError {
    #[error("the request carries no {0} header")]
    Missing(&'static str),
    #[error("X-Slack-Request-Timestamp is not a Unix time in seconds")]
    MalformedTimestamp,
    #[error("X-Slack-Signature is not of the form v0=<64 hex digits>")]
    MalformedSignature,
    #[error("X-Slack-Request-Timestamp is more than {tolerance_secs} seconds from now: a replay, or a clock far off")]
    Expired { tolerance_secs: u64 },
    #[error("X-Slack-Signature does not match the request")]
    Mismatch,
}

/// Checks a request from Slack over its raw body, before anything parses it.
/// Any one of `secrets` matching is enough (a rotation); the comparison is
/// constant-time.
pub fn verify(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[&Secret],
    now: DateTime<Utc>,
) -> Result<(), SlackSignatureError> {
    let timestamp = header(headers, TIMESTAMP_HEADER, "X-Slack-Request-Timestamp")?;
    let signature = header(headers, SIGNATURE_HEADER, "X-Slack-Signature")?;
    let seconds = parse_timestamp(timestamp)?;
    let signature = decode_signature(signature)?;
    if now.timestamp().abs_diff(seconds) > TOLERANCE_SECS {
        return Err(SlackSignatureError::Expired {
            tolerance_secs: TOLERANCE_SECS,
        });
    }
    let matches = secrets.iter().any(|secret| {
        // HMAC takes a key of any length: new_from_slice cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) else {
            return false;
        };
        mac.update(b"v0:");
        mac.update(timestamp.as_bytes());
        mac.update(b":");
        mac.update(body);
        mac.verify_slice(&signature).is_ok()
    });
    if matches {
        Ok(())
    } else {
        Err(SlackSignatureError::Mismatch)
    }
}

/// The `X-Slack-Signature` value Slack would send: for tests and tools that
/// play Slack.
pub fn sign(secret: &Secret, timestamp: i64, body: &[u8]) -> String {
    let mut message = format!("v0:{timestamp}:").into_bytes();
    message.extend_from_slice(body);
    format!(
        "v0={}",
        crate::signature::hmac_sha256_hex(secret.expose().as_bytes(), &message)
    )
}

fn header<'a>(headers: &'a HeaderMap, name: &str, shown: &'static str) -> Result<&'a str, SlackSignatureError> {
    let value = headers.get(name).ok_or(SlackSignatureError::Missing(shown))?;
    let text = value.to_str().map_err(|_| match name {
        TIMESTAMP_HEADER => SlackSignatureError::MalformedTimestamp,
        _ => SlackSignatureError::MalformedSignature,
    })?;
    Ok(text.trim())
}

/// Digits only: the signed text is the header as sent, so `+5` or ` 5`
/// must not pass for `5`.
fn parse_timestamp(value: &str) -> Result<i64, SlackSignatureError> {
    if value.is_empty() || value.len() > 12 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SlackSignatureError::MalformedTimestamp);
    }
    value.parse().map_err(|_| SlackSignatureError::MalformedTimestamp)
}

fn decode_signature(value: &str) -> Result<Vec<u8>, SlackSignatureError> {
    let hex_part = value
        .strip_prefix("v0=")
        .ok_or(SlackSignatureError::MalformedSignature)?;
    if hex_part.len() != 64 {
        return Err(SlackSignatureError::MalformedSignature);
    }
    hex::decode(hex_part).map_err(|_| SlackSignatureError::MalformedSignature)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    /// `slack_request_signing_v0` of tests/fixtures/signature-vectors.json
    /// (../shared/fixtures), Slack's published example.
    #[derive(serde::Deserialize)]
    struct Vector {
        signing_secret: String,
        x_slack_request_timestamp: String,
        body: String,
        expected: String,
    }

    fn vector() -> Vector {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/signature-vectors.json"
        ))
        .expect("tests/fixtures/signature-vectors.json");
        let all: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        serde_json::from_value(all["slack_request_signing_v0"].clone()).expect("the Slack vector")
    }

    fn headers(timestamp: &str, signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(TIMESTAMP_HEADER, HeaderValue::from_str(timestamp).expect("header"));
        headers.insert(SIGNATURE_HEADER, HeaderValue::from_str(signature).expect("header"));
        headers
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(seconds, 0).single().expect("a valid time")
    }

    fn vector_time(v: &Vector) -> i64 {
        v.x_slack_request_timestamp.parse().expect("a number")
    }

    #[test]
    fn the_published_vector_verifies_near_its_timestamp() {
        let v = vector();
        let secret = Secret::new(v.signing_secret.clone());
        let ts = vector_time(&v);
        assert_eq!(sign(&secret, ts, v.body.as_bytes()), v.expected);
        let headers = headers(&v.x_slack_request_timestamp, &v.expected);
        for now in [ts, ts + 1, ts + 300, ts - 300] {
            assert_eq!(
                verify(&headers, v.body.as_bytes(), &[&secret], at(now)),
                Ok(()),
                "{now}"
            );
        }
    }

    #[test]
    fn the_published_request_replayed_later_or_dated_ahead_is_refused() {
        let v = vector();
        let secret = Secret::new(v.signing_secret.clone());
        let ts = vector_time(&v);
        let headers = headers(&v.x_slack_request_timestamp, &v.expected);
        let expired = Err(SlackSignatureError::Expired { tolerance_secs: 300 });
        // Replayed 301 seconds later, or today.
        assert_eq!(verify(&headers, v.body.as_bytes(), &[&secret], at(ts + 301)), expired);
        assert_eq!(verify(&headers, v.body.as_bytes(), &[&secret], Utc::now()), expired);
        // A timestamp more than 300 seconds in the future.
        assert_eq!(verify(&headers, v.body.as_bytes(), &[&secret], at(ts - 301)), expired);
    }

    #[test]
    fn tampering_with_the_body_timestamp_or_signature_is_refused() {
        let v = vector();
        let secret = Secret::new(v.signing_secret.clone());
        let ts = vector_time(&v);
        let now = at(ts);
        let good = headers(&v.x_slack_request_timestamp, &v.expected);
        let tampered_body = v.body.replace("roadrunner", "wile-e-coyote");
        assert_eq!(
            verify(&good, tampered_body.as_bytes(), &[&secret], now),
            Err(SlackSignatureError::Mismatch)
        );
        let later = headers(&(ts + 1).to_string(), &v.expected);
        assert_eq!(
            verify(&later, v.body.as_bytes(), &[&secret], now),
            Err(SlackSignatureError::Mismatch)
        );
        let mut flipped = v.expected.clone();
        let last = if flipped.ends_with('3') { "4" } else { "3" };
        flipped.replace_range(flipped.len() - 1.., last);
        assert_eq!(
            verify(
                &headers(&v.x_slack_request_timestamp, &flipped),
                v.body.as_bytes(),
                &[&secret],
                now
            ),
            Err(SlackSignatureError::Mismatch)
        );
        let other = Secret::new("another-signing-secret");
        assert_eq!(
            verify(&good, v.body.as_bytes(), &[&other], now),
            Err(SlackSignatureError::Mismatch)
        );
        // During a rotation either secret passes.
        assert_eq!(verify(&good, v.body.as_bytes(), &[&other, &secret], now), Ok(()));
        assert_eq!(
            verify(&good, v.body.as_bytes(), &[], now),
            Err(SlackSignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let v = vector();
        let secret = Secret::new(v.signing_secret.clone());
        let now = at(vector_time(&v));
        let body = v.body.as_bytes();
        assert_eq!(
            verify(&HeaderMap::new(), body, &[&secret], now),
            Err(SlackSignatureError::Missing("X-Slack-Request-Timestamp"))
        );
        let mut only_timestamp = HeaderMap::new();
        only_timestamp.insert(TIMESTAMP_HEADER, HeaderValue::from_static("1531420618"));
        assert_eq!(
            verify(&only_timestamp, body, &[&secret], now),
            Err(SlackSignatureError::Missing("X-Slack-Signature"))
        );
        for timestamp in ["", "+1531420618", "1531420618.0", "-1", "abc", "99999999999999999999"] {
            assert_eq!(
                verify(&headers(timestamp, &v.expected), body, &[&secret], now),
                Err(SlackSignatureError::MalformedTimestamp),
                "{timestamp:?}"
            );
        }
        let hex = &v.expected["v0=".len()..];
        for signature in [
            hex.to_owned(),
            format!("v1={hex}"),
            "v0=zz".to_owned(),
            format!("v0={hex}00"),
        ] {
            assert_eq!(
                verify(
                    &headers(&v.x_slack_request_timestamp, &signature),
                    body,
                    &[&secret],
                    now
                ),
                Err(SlackSignatureError::MalformedSignature),
                "{signature}"
            );
        }
    }

    #[test]
    fn no_error_shows_the_secret_or_a_signature() {
        let v = vector();
        let errors = [
            SlackSignatureError::Missing("X-Slack-Signature"),
            SlackSignatureError::MalformedTimestamp,
            SlackSignatureError::MalformedSignature,
            SlackSignatureError::Expired { tolerance_secs: 300 },
            SlackSignatureError::Mismatch,
        ];
        for error in errors {
            let text = error.to_string();
            assert!(
                !text.contains(&v.signing_secret) && !text.contains(&v.expected[3..]),
                "{text}"
            );
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics_and_never_verifies(
            timestamp in proptest::collection::vec(any::<u8>(), 0..24),
            signature in proptest::collection::vec(any::<u8>(), 0..80),
            body in proptest::collection::vec(any::<u8>(), 0..200),
            now in any::<i32>(),
        ) {
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_bytes(&timestamp) {
                headers.insert(TIMESTAMP_HEADER, value);
            }
            if let Ok(value) = HeaderValue::from_bytes(&signature) {
                headers.insert(SIGNATURE_HEADER, value);
            }
            let secret = Secret::new("8f742231b10e8888abcd99yyyzzz85a5");
            prop_assert!(verify(&headers, &body, &[&secret], at(i64::from(now))).is_err());
        }
    }
}
