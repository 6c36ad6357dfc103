//! One-click action links: `{public_url}/act/{token}` in emails and SMS, to
//! acknowledge or resolve an incident without logging in.
//!
//! The token is the base64url (no padding) of a binary payload and a MAC:
//!
//! ```text
//! version (1) | action (1) | incident id (10) | expiry, unix seconds, u32 BE (4)
//!   | recipient length (1) | recipient (0..=64, UTF-8) | HMAC-SHA256, first 16 bytes
//! ```
//!
//! Binary, because an SMS has 160 characters for everything: an incident id
//! is `inc_` and 20 hex digits, 10 bytes packed, and a token without a
//! recipient is 33 bytes, 44 characters. The MAC is truncated to 128 bits,
//! ample against forgery online (every guess is a request). Emails name
//! their recipient in the token, so the timeline says who acted; SMS tokens
//! leave it out for length. The MAC covers a domain tag and the whole
//! payload, and is compared in constant time; a token is checked for its
//! signature before its expiry, so only an authentic token reads "expired".

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, TimeZone, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;
use crate::event::Action;
use crate::incident::IncidentId;

/// How long a link works unless the config says otherwise.
pub const DEFAULT_TTL_HOURS: u32 = 24;
/// The longest lifetime the config may ask for: 30 days.
pub const MAX_TTL_HOURS: u32 = 720;
/// A signing secret shorter than this is refused.
pub const MIN_SECRET_CHARS: usize = 32;
/// Recipients longer than this are left out of the token.
pub const MAX_RECIPIENT_BYTES: usize = 64;

const VERSION: u8 = 1;
const MAC_BYTES: usize = 16;
const ID_BYTES: usize = 10;
/// version, action, id, expiry, recipient length.
const HEADER_BYTES: usize = 1 + 1 + ID_BYTES + 4 + 1;
/// Keeps a token signed for links from meaning anything to another use of
/// the same secret.
const DOMAIN: &[u8] = b"tocsin action link\0";
/// Longer input is refused before it is decoded.
const MAX_TOKEN_CHARS: usize = 4 * (HEADER_BYTES + MAX_RECIPIENT_BYTES + MAC_BYTES).div_ceil(3);

/// What a link does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkAction {
    Acknowledge,
    Resolve,
}

impl LinkAction {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkAction::Acknowledge => "acknowledge",
            LinkAction::Resolve => "resolve",
        }
    }

    /// `Acknowledge`, `Resolve`: a button's label.
    pub fn title(self) -> &'static str {
        match self {
            LinkAction::Acknowledge => "Acknowledge",
            LinkAction::Resolve => "Resolve",
        }
    }

    /// `Acknowledged`, `Resolved`.
    pub fn done(self) -> &'static str {
        match self {
            LinkAction::Acknowledge => "Acknowledged",
            LinkAction::Resolve => "Resolved",
        }
    }

    pub fn action(self) -> Action {
        match self {
            LinkAction::Acknowledge => Action::Acknowledge,
            LinkAction::Resolve => Action::Resolve,
        }
    }

    fn code(self) -> u8 {
        match self {
            LinkAction::Acknowledge => 1,
            LinkAction::Resolve => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(LinkAction::Acknowledge),
            2 => Some(LinkAction::Resolve),
            _ => None,
        }
    }
}

impl fmt::Display for LinkAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionClaim {
    pub incident: IncidentId,
    pub action: LinkAction,
    pub expires_at: DateTime<Utc>,
    /// Whom the link was sent to (emails only).
    pub recipient: Option<String>,
}

impl ActionClaim {
    /// The actor the incident's timeline records: `link:<recipient>`, or
    /// `link`.
    pub fn actor(&self) -> String {
        match &self.recipient {
            Some(recipient) => format!("link:{recipient}"),
            None => "link".to_owned(),
        }
    }
}

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link is not a Tocsin action link (it may have been cut short)")]
    Malformed,
    #[error("the link's signature does not match")]
    BadSignature,
    #[error("the link has expired")]
    Expired,
}

/// A signing secret too short to sign with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the link signing secret must be at least {MIN_SECRET_CHARS} characters (try `openssl rand -hex 32`)")]
pub struct ShortSecret;

/// Signs and verifies action links with one secret. Debug never shows it.
#[derive(Clone)]
pub struct ActionSigner {
    secret: Secret,
    ttl: Duration,
}

impl fmt::Debug for ActionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActionSigner")
            .field("secret", &"<redacted>")
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl ActionSigner {
    pub fn new(secret: Secret) -> Result<Self, ShortSecret> {
        if secret.expose().chars().count() < MIN_SECRET_CHARS {
            return Err(ShortSecret);
        }
        Ok(Self {
            secret,
            ttl: Duration::hours(i64::from(DEFAULT_TTL_HOURS)),
        })
    }

    /// Links expire `hours` after they are issued (1 to [`MAX_TTL_HOURS`];
    /// out of range is clamped).
    pub fn with_ttl_hours(mut self, hours: u32) -> Self {
        self.ttl = Duration::hours(i64::from(hours.clamp(1, MAX_TTL_HOURS)));
        self
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When a link issued at `issued_at` expires, to the second.
    pub fn expiry(&self, issued_at: DateTime<Utc>) -> DateTime<Utc> {
        let seconds = (issued_at + self.ttl).timestamp().clamp(0, i64::from(u32::MAX));
        Utc.timestamp_opt(seconds, 0).single().unwrap_or(issued_at)
    }

    /// A token for `action` on `incident`, valid for the signer's lifetime
    /// from `issued_at`. A recipient over [`MAX_RECIPIENT_BYTES`] is left out.
    pub fn token(
        &self,
        incident: &IncidentId,
        action: LinkAction,
        recipient: Option<&str>,
        issued_at: DateTime<Utc>,
    ) -> String {
        let recipient = recipient
            .filter(|r| !r.is_empty() && r.len() <= MAX_RECIPIENT_BYTES)
            .unwrap_or("");
        let mut bytes = Vec::with_capacity(HEADER_BYTES + recipient.len() + MAC_BYTES);
        bytes.push(VERSION);
        bytes.push(action.code());
        bytes.extend_from_slice(&id_bytes(incident));
        // In range: expiry() clamps to u32.
        bytes.extend_from_slice(&(self.expiry(issued_at).timestamp() as u32).to_be_bytes());
        bytes.push(recipient.len() as u8);
        bytes.extend_from_slice(recipient.as_bytes());
        let tag = self.mac(&bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag[..MAC_BYTES]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The claim of an authentic, unexpired token.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<ActionClaim, LinkError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(LinkError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| LinkError::Malformed)?;
        if bytes.len() < HEADER_BYTES + MAC_BYTES {
            return Err(LinkError::Malformed);
        }
        let (payload, tag) = bytes.split_at(bytes.len() - MAC_BYTES);
        let recipient_len = usize::from(payload[HEADER_BYTES - 1]);
        if payload[0] != VERSION || payload.len() != HEADER_BYTES + recipient_len {
            return Err(LinkError::Malformed);
        }
        self.mac(payload)
            .verify_truncated_left(tag)
            .map_err(|_| LinkError::BadSignature)?;

        // Authentic from here on: what fails now was signed so (or by an
        // older version).
        let action = LinkAction::from_code(payload[1]).ok_or(LinkError::Malformed)?;
        let incident = IncidentId::parse(&format!("inc_{}", hex::encode(&payload[2..2 + ID_BYTES])))
            .ok_or(LinkError::Malformed)?;
        let mut expiry = [0u8; 4];
        expiry.copy_from_slice(&payload[2 + ID_BYTES..2 + ID_BYTES + 4]);
        let expires_at = Utc
            .timestamp_opt(i64::from(u32::from_be_bytes(expiry)), 0)
            .single()
            .ok_or(LinkError::Malformed)?;
        let recipient = match &payload[HEADER_BYTES..] {
            [] => None,
            bytes => Some(String::from_utf8(bytes.to_vec()).map_err(|_| LinkError::Malformed)?),
        };
        if now >= expires_at {
            return Err(LinkError::Expired);
        }
        Ok(ActionClaim {
            incident,
            action,
            expires_at,
            recipient,
        })
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.secret.expose().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(DOMAIN);
        mac.update(payload);
        mac
    }
}

/// The 10 bytes an incident id's 20 hex digits stand for.
fn id_bytes(incident: &IncidentId) -> [u8; ID_BYTES] {
    let mut out = [0u8; ID_BYTES];
    // IncidentId::parse admits only `inc_` and 20 lowercase hex digits.
    let hex = incident.as_str().strip_prefix("inc_").unwrap_or_default();
    if hex::decode_to_slice(hex, &mut out).is_err() {
        tracing::error!(incident = %incident, "an incident id that is not inc_ and 20 hex digits");
    }
    out
}

/// `{public_url}/act/{token}`: the page that confirms the action.
pub fn action_url(public_url: &str, token: &str) -> String {
    format!("{}/act/{token}", public_url.trim().trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-links";

    fn signer() -> ActionSigner {
        ActionSigner::new(Secret::new(SECRET)).unwrap()
    }

    fn incident() -> IncidentId {
        IncidentId::parse("inc_3f9a1c07d2e84b6a90c1").unwrap()
    }

    fn issued() -> DateTime<Utc> {
        Utc.timestamp_opt(1_718_000_000, 0).single().unwrap()
    }

    fn decode(token: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(token).unwrap()
    }

    fn encode(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn a_token_round_trips() {
        let signer = signer();
        for (action, recipient) in [
            (LinkAction::Acknowledge, None),
            (LinkAction::Resolve, Some("oncall@example.com")),
        ] {
            let token = signer.token(&incident(), action, recipient, issued());
            let claim = signer.verify(&token, issued() + Duration::hours(1)).unwrap();
            assert_eq!(claim.incident, incident());
            assert_eq!(claim.action, action);
            assert_eq!(claim.recipient.as_deref(), recipient);
            assert_eq!(claim.expires_at, issued() + Duration::hours(24));
        }
    }

    #[test]
    fn tokens_are_short_and_url_safe() {
        let token = signer().token(&incident(), LinkAction::Acknowledge, None, issued());
        assert_eq!(token.len(), 44, "{token}");
        let with_email = signer().token(&incident(), LinkAction::Resolve, Some("oncall@example.com"), issued());
        assert_eq!(with_email.len(), 68, "{with_email}");
        for token in [token, with_email] {
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{token}"
            );
        }
    }

    #[test]
    fn the_actor_names_the_recipient_when_there_is_one() {
        let signer = signer();
        let claim = |recipient| {
            let token = signer.token(&incident(), LinkAction::Acknowledge, recipient, issued());
            signer.verify(&token, issued()).unwrap()
        };
        assert_eq!(claim(Some("oncall@example.com")).actor(), "link:oncall@example.com");
        assert_eq!(claim(None).actor(), "link");
        let long = "x".repeat(MAX_RECIPIENT_BYTES + 1);
        assert_eq!(claim(Some(&long)).recipient, None);
    }

    #[test]
    fn changing_any_byte_breaks_the_signature() {
        let signer = signer();
        let token = signer.token(&incident(), LinkAction::Acknowledge, Some("a@example.com"), issued());
        let bytes = decode(&token);
        for i in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[i] ^= 0x01;
            let result = signer.verify(&encode(&tampered), issued());
            assert!(
                matches!(result, Err(LinkError::BadSignature | LinkError::Malformed)),
                "byte {i}: {result:?}"
            );
        }
    }

    #[test]
    fn each_field_is_covered_by_the_signature() {
        let signer = signer();
        let token = signer.token(&incident(), LinkAction::Acknowledge, Some("a@example.com"), issued());
        let bytes = decode(&token);
        let resign_free = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut tampered = bytes.clone();
            edit(&mut tampered);
            signer.verify(&encode(&tampered), issued())
        };
        // Acknowledge becomes resolve.
        assert_eq!(resign_free(&|b| b[1] = 2), Err(LinkError::BadSignature));
        // Another incident.
        assert_eq!(resign_free(&|b| b[2] ^= 0xff), Err(LinkError::BadSignature));
        // A later expiry.
        assert_eq!(resign_free(&|b| b[12] = 0xff), Err(LinkError::BadSignature));
        // Another recipient of the same length.
        assert_eq!(resign_free(&|b| b[17] = b'b'), Err(LinkError::BadSignature));
        // The MAC itself.
        assert_eq!(
            resign_free(&|b| {
                let last = b.len() - 1;
                b[last] ^= 0x80
            }),
            Err(LinkError::BadSignature)
        );
        // The recipient dropped, the length byte fixed up.
        let dropped = {
            let mut b = bytes[..HEADER_BYTES].to_vec();
            b[HEADER_BYTES - 1] = 0;
            b.extend_from_slice(&bytes[bytes.len() - MAC_BYTES..]);
            b
        };
        assert_eq!(signer.verify(&encode(&dropped), issued()), Err(LinkError::BadSignature));
    }

    #[test]
    fn another_secret_does_not_verify() {
        let token = signer().token(&incident(), LinkAction::Acknowledge, None, issued());
        let other = ActionSigner::new(Secret::new("another-secret-0123456789abcdef-xyz")).unwrap();
        assert_eq!(other.verify(&token, issued()), Err(LinkError::BadSignature));
    }

    #[test]
    fn a_token_expires_after_its_lifetime() {
        let signer = signer().with_ttl_hours(2);
        let token = signer.token(&incident(), LinkAction::Acknowledge, None, issued());
        let expiry = issued() + Duration::hours(2);
        assert!(signer.verify(&token, expiry - Duration::seconds(1)).is_ok());
        assert_eq!(signer.verify(&token, expiry), Err(LinkError::Expired));
        assert_eq!(
            signer.verify(&token, expiry + Duration::days(400)),
            Err(LinkError::Expired)
        );
        // A forged token does not get as far as "expired".
        let other = ActionSigner::new(Secret::new("another-secret-0123456789abcdef-xyz")).unwrap();
        assert_eq!(
            other.verify(&token, expiry + Duration::days(1)),
            Err(LinkError::BadSignature)
        );
    }

    #[test]
    fn lifetimes_are_clamped() {
        assert_eq!(signer().ttl(), Duration::hours(24));
        assert_eq!(signer().with_ttl_hours(0).ttl(), Duration::hours(1));
        assert_eq!(signer().with_ttl_hours(100_000).ttl(), Duration::hours(720));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(ActionSigner::new(Secret::new("too short")).unwrap_err(), ShortSecret);
        assert!(ActionSigner::new(Secret::new("x".repeat(MIN_SECRET_CHARS))).is_ok());
        assert!(!format!("{:?}", signer()).contains(SECRET));
    }

    #[test]
    fn malformed_tokens_are_named_so() {
        let signer = signer();
        let good = signer.token(&incident(), LinkAction::Acknowledge, None, issued());
        for bad in [
            "",
            "a",
            "not a token",
            "AAAA",
            "====",
            &good[..good.len() - 1],
            &format!("{good}="),
            &format!("{good}A"),
            &"A".repeat(10_000),
            "é",
        ] {
            assert_eq!(signer.verify(bad, issued()), Err(LinkError::Malformed), "{bad:?}");
        }
        // Another version, signed alike, is refused before its MAC is read.
        let mut other_version = decode(&good);
        other_version[0] = 2;
        assert_eq!(
            signer.verify(&encode(&other_version), issued()),
            Err(LinkError::Malformed)
        );
    }

    #[test]
    fn action_urls_ignore_a_trailing_slash() {
        assert_eq!(
            action_url("https://t.example.com/", "abc"),
            "https://t.example.com/act/abc"
        );
        assert_eq!(
            action_url("https://t.example.com", "abc"),
            "https://t.example.com/act/abc"
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(input in ".{0,200}") {
            let _ = signer().verify(&input, issued());
        }

        #[test]
        fn random_bytes_never_verify(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let result = signer().verify(&encode(&bytes), issued());
            prop_assert!(result.is_err());
        }
    }
}
