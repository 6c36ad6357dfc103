//! HMAC-SHA256 request signatures, checked over the raw body before it is
//! parsed, in constant time.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Every way a signature check fails, each named so that the answer can say
/// which (without echoing the secret or the expected value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the request carries no signature header ({expected})")]
    Missing { expected: &'static str },
    #[error("the signature header is not of the form sha256=<hex>")]
    Malformed,
    #[error("the signature does not match the body")]
    Mismatch,
    #[error("the signature timestamp is outside the {tolerance_secs}-second window")]
    Expired { tolerance_secs: i64 },
}

/// HMAC-SHA256 of `message` under `secret`, hex-encoded.
pub fn hmac_sha256_hex(secret: &[u8], message: &[u8]) -> String {
    hex::encode(hmac_sha256(secret, message))
}

pub fn hmac_sha256(secret: &[u8], message: &[u8]) -> Vec<u8> {
    // new_from_slice accepts keys of any length for HMAC.
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// Checks `signature` (raw MAC bytes, already decoded) against the HMAC of
/// `message`, in constant time.
pub fn verify_hmac_sha256(secret: &[u8], message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(message);
    mac.verify_slice(signature).map_err(|_| SignatureError::Mismatch)
}

/// Decodes `sha256=<hex>` (the prefix optional) into MAC bytes.
pub fn decode_sha256_header(value: &str) -> Result<Vec<u8>, SignatureError> {
    let value = value.trim();
    let hex_part = value.strip_prefix("sha256=").unwrap_or(value);
    if hex_part.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    hex::decode(hex_part).map_err(|_| SignatureError::Malformed)
}

/// Tocsin's own scheme for integrations with a secret: `X-Signature:
/// sha256=<hex>` or `X-Webhook-Signature: sha256=<hex>`, the HMAC-SHA256 of the
/// raw body. Several secrets may be given during a rotation; any one matching
/// is enough.
pub fn verify_body_signature(headers: &HeaderMap, body: &[u8], secrets: &[&Secret]) -> Result<(), SignatureError> {
    let header = if headers.contains_key("x-signature") {
        "x-signature"
    } else {
        "x-webhook-signature"
    };
    verify_sha256_header(headers, header, "X-Signature: sha256=<hex>", body, secrets)
}

/// Checks the `sha256=<hex>` HMAC-SHA256 of the raw body carried in `header`
/// (Tocsin's own `X-Signature`, GitHub's `X-Hub-Signature-256`, Bitbucket
/// Cloud's `X-Hub-Signature`). `expected` is how the error names the header
/// when it is missing. Any one of `secrets` matching is enough.
pub fn verify_sha256_header(
    headers: &HeaderMap,
    header: &str,
    expected: &'static str,
    body: &[u8],
    secrets: &[&Secret],
) -> Result<(), SignatureError> {
    let value = headers
        .get(header)
        .ok_or(SignatureError::Missing { expected })?
        .to_str()
        .map_err(|_| SignatureError::Malformed)?;
    let signature = decode_sha256_header(value)?;
    if secrets
        .iter()
        .any(|secret| verify_hmac_sha256(secret.expose().as_bytes(), body, &signature).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[derive(serde::Deserialize)]
    struct GithubVector {
        secret: String,
        body: String,
        expected: String,
    }

    fn github_vector() -> GithubVector {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/signature-vectors.json"
        ))
        .expect("tests/fixtures/signature-vectors.json");
        let all: serde_json::Value = serde_json::from_str(&text).unwrap();
        serde_json::from_value(all["github_x_hub_signature_256"].clone()).unwrap()
    }

    #[test]
    fn the_published_sha256_vector_verifies() {
        let v = github_vector();
        assert_eq!(
            format!("sha256={}", hmac_sha256_hex(v.secret.as_bytes(), v.body.as_bytes())),
            v.expected
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-signature", HeaderValue::from_str(&v.expected).unwrap());
        let secret = Secret::new(v.secret.clone());
        assert_eq!(verify_body_signature(&headers, v.body.as_bytes(), &[&secret]), Ok(()));
        assert_eq!(
            verify_body_signature(&headers, b"Hello, World?", &[&secret]),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn either_header_is_read_and_rotation_secrets_are_tried() {
        let v = github_vector();
        let mut headers = HeaderMap::new();
        headers.insert("x-webhook-signature", HeaderValue::from_str(&v.expected).unwrap());
        let old = Secret::new("an-older-secret-in-rotation");
        let new = Secret::new(v.secret.clone());
        assert_eq!(
            verify_body_signature(&headers, v.body.as_bytes(), &[&old, &new]),
            Ok(())
        );
        assert_eq!(
            verify_body_signature(&headers, v.body.as_bytes(), &[&old]),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_and_malformed_signatures_are_named() {
        let secret = Secret::new("whatever-secret-value");
        assert!(matches!(
            verify_body_signature(&HeaderMap::new(), b"{}", &[&secret]),
            Err(SignatureError::Missing { .. })
        ));
        let mut headers = HeaderMap::new();
        headers.insert("x-signature", HeaderValue::from_static("sha256=zz"));
        assert_eq!(
            verify_body_signature(&headers, b"{}", &[&secret]),
            Err(SignatureError::Malformed)
        );
    }
}
