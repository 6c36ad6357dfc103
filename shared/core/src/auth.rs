//! Integration keys, API keys and the places a request may carry them.
//!
//! Keys are stored only as SHA-256 hashes: the store can be read without
//! revealing a key, and a lookup by hash needs no comparison loop.

use std::fmt;

use http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::FieldError;

/// The hex SHA-256 of a key: what stores keep and look up by.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyHash(String);

impl KeyHash {
    pub fn of(key: &str) -> Self {
        KeyHash(hex::encode(Sha256::digest(key.as_bytes())))
    }

    /// Parses a `key_sha256` written in config: 64 hex characters.
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        let value = value.trim().to_ascii_lowercase();
        if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(KeyHash(value))
        } else {
            Err(FieldError::new(
                "key_sha256",
                "must be 64 hex characters (the SHA-256 of the key)",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for KeyHash {
    type Error = FieldError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        KeyHash::parse(&value)
    }
}

impl From<KeyHash> for String {
    fn from(value: KeyHash) -> Self {
        value.0
    }
}

// A hash is not a secret, but a short form keeps logs readable.
impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &self.0[..self.0.len().min(12)])
    }
}

/// An integration key: 32 lowercase hex characters (128 bits from the
/// operating system's CSPRNG). Never logged, never stored in plain text.
#[derive(Clone, PartialEq, Eq)]
pub struct IntegrationKey(String);

impl IntegrationKey {
    pub const LEN: usize = 32;

    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; Self::LEN / 2];
        getrandom::fill(&mut bytes)?;
        Ok(IntegrationKey(hex::encode(bytes)))
    }

    pub fn parse(value: &str) -> Result<Self, FieldError> {
        let value = value.trim();
        if value.len() == Self::LEN && value.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(IntegrationKey(value.to_ascii_lowercase()))
        } else {
            Err(FieldError::new("key", "must be 32 hex characters"))
        }
    }

    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.0)
    }

    /// The key itself, for the one moment it is shown to its owner.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IntegrationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IntegrationKey(<redacted>)")
    }
}

/// Finds the integration key a request carries, in the order a client is
/// most likely to mean it: an explicit header beats the query string.
///
/// Accepted: `Authorization: Token token=KEY`, `Authorization: Bearer KEY`,
/// `X-Integration-Key: KEY`, `?token=KEY`. (Events API v2 carries it in the
/// body as `routing_key`, which its provider reads.)
pub fn key_from_request(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let value = value.trim();
        if let Some(rest) = strip_prefix_ignore_case(value, "token ") {
            let rest = rest.trim();
            let key = strip_prefix_ignore_case(rest, "token=").unwrap_or(rest);
            return Some(key.trim_matches('"').to_owned());
        }
        if let Some(rest) = strip_prefix_ignore_case(value, "bearer ") {
            return Some(rest.trim().to_owned());
        }
    }
    if let Some(value) = headers.get("x-integration-key").and_then(|v| v.to_str().ok()) {
        return Some(value.trim().to_owned());
    }
    query_param(query, "token")
}

/// The first value of `name` in a URL query string, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `value` without `prefix`, matched ignoring ASCII case; `None` when it
/// does not start with it (or the prefix's length falls inside a character).
pub(crate) fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &value[prefix.len()..])
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    #[serde(rename = "events:write")]
    EventsWrite,
    #[serde(rename = "incidents:read")]
    IncidentsRead,
    #[serde(rename = "incidents:write")]
    IncidentsWrite,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::EventsWrite => "events:write",
            Scope::IncidentsRead => "incidents:read",
            Scope::IncidentsWrite => "incidents:write",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub name: String,
    pub key_hash: KeyHash,
    pub scopes: Vec<Scope>,
}

impl ApiKey {
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// The bearer token of an API request, if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    strip_prefix_ignore_case(value, "bearer ").map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn generated_keys_are_32_hex_and_distinct() {
        let a = IntegrationKey::generate().unwrap();
        let b = IntegrationKey::generate().unwrap();
        assert_eq!(a.reveal().len(), 32);
        assert!(IntegrationKey::parse(a.reveal()).is_ok());
        assert_ne!(a, b);
    }

    #[test]
    fn keys_are_hashed_with_sha256() {
        // printf '%s' KEY | sha256sum
        let expected = "3eb1bd439947eb762998e566ccc2e099c791118b2f40579cc4f7da2b5061b7f9";
        assert_eq!(IntegrationKey::parse(KEY).unwrap().hash().as_str(), expected);
        assert_eq!(KeyHash::of(KEY).as_str(), expected);
    }

    #[test]
    fn debug_never_shows_a_key() {
        let key = IntegrationKey::parse(KEY).unwrap();
        assert!(!format!("{key:?}").contains(KEY));
    }

    #[test]
    fn every_documented_place_for_the_key_is_read() {
        for (name, value) in [
            ("authorization", format!("Token token={KEY}")),
            ("authorization", format!("Token token=\"{KEY}\"")),
            ("authorization", format!("Bearer {KEY}")),
            ("authorization", format!("bearer {KEY}")),
            ("x-integration-key", KEY.to_owned()),
        ] {
            assert_eq!(
                key_from_request(&headers(name, &value), None).as_deref(),
                Some(KEY),
                "{name}: {value}"
            );
        }
        assert_eq!(
            key_from_request(&HeaderMap::new(), Some(&format!("a=1&token={KEY}"))).as_deref(),
            Some(KEY)
        );
        assert_eq!(key_from_request(&HeaderMap::new(), Some("a=1")), None);
    }

    #[test]
    fn headers_win_over_the_query_string() {
        let h = headers("x-integration-key", KEY);
        assert_eq!(key_from_request(&h, Some("token=other")).as_deref(), Some(KEY));
    }

    #[test]
    fn key_hashes_in_config_are_validated() {
        assert!(KeyHash::parse(&"A".repeat(64)).is_ok());
        assert_eq!(KeyHash::parse("abc").unwrap_err().field, "key_sha256");
    }
}
