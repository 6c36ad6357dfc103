//! Inbound email: `POST /integrations/email` with the raw message, and
//! [`read_email`] for the function behind an Amazon SES receipt rule (which
//! stores the message in S3 and invokes it).
//!
//! A tool that can only send mail sends it to `<key>@<receiving domain>`,
//! where `<key>` is the integration key (32 hex characters, any case), or to
//! `<key>+<dedup key>@…` to choose the incident's key. The domain is not
//! read: the receipt rule decides which domains arrive here.
//!
//! The subject is the summary. Leading markers in it set the action and the
//! severity (`RESOLVED`, `[RESOLVED]`, `OK:`, `Recovery:` resolve;
//! `ACKNOWLEDGEMENT` and Zabbix's `Updated problem` acknowledge; `[critical]`,
//! `severity:warning` … set the severity), and the rest of the subject, with
//! every marker and `Re:`/`Fwd:` taken off, is what the default dedup key
//! digests, with the sender's address: so a repeated alert mail, its
//! recovery and a forward of it all land on one incident. The body is not
//! digested: alert bodies carry times and current values that change from
//! one mail to the next, and a recovery's body never matches its problem's.
//!
//! The body (text/plain preferred, else HTML reduced to text) goes into
//! custom_details, cut at [`MAX_BODY_BYTES`], with From, To, Cc, Date,
//! Message-ID and attachment names. The integration key is masked wherever
//! it appears there.
//!
//! MIME (multipart, quoted-printable, base64, RFC 2047 encoded words,
//! charsets) is parsed by the `mail-parser` crate.
//!
//! <https://docs.aws.amazon.com/ses/latest/dg/receiving-email.html>,
//! RFC 5322, RFC 2045–2047.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use mail_parser::{Address, Message, MessageParser, MimeHeaders};
use serde_json::{json, Map, Value};

use crate::auth::{query_param, strip_prefix_ignore_case, IntegrationKey, KeyHash};
use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, Payload, Severity};
use crate::providers::{Inbound, InvalidPayload, Provider, ProviderKind};

pub struct Email;

/// The most body text kept in custom_details, in bytes (cut on a character
/// boundary): enough for any alert, small next to the queue's 256 KiB.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The largest raw message accepted over HTTP. Mail carries logos and
/// graphs; 4 MiB, base64-encoded by API Gateway, stays under Lambda's 6 MB
/// request limit.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Attachment names listed in custom_details, at most.
const MAX_ATTACHMENT_NAMES: usize = 20;

/// What replaces an integration key in anything shown to people.
const REDACTED_KEY: &str = "[integration-key]";

/// The request header an MTA sets to the envelope recipient.
const ORIGINAL_TO: &str = "x-original-to";

/// Every way a message or its recipient cannot be read. None of the
/// messages repeats the recipient: it carries the integration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error(
        "no recipient address: pass ?to=ADDRESS or an X-Original-To header, or keep the message's Delivered-To or To header"
    )]
    NoRecipient,
    #[error("the recipient is not an email address (it has no '@')")]
    NotAnAddress,
    #[error(
        "the recipient's local part must be the integration key (32 hex characters), optionally followed by +DEDUP_KEY"
    )]
    NotAKey,
    #[error("the recipient carries another integration's key than the one the request was authenticated with")]
    OtherIntegration,
    #[error("the message is empty")]
    Empty,
    #[error("the message has no From or Subject header: it is not an RFC 5322 email")]
    NotAMessage,
}

impl EmailError {
    fn field(self) -> &'static str {
        match self {
            EmailError::NoRecipient | EmailError::NotAnAddress | EmailError::NotAKey | EmailError::OtherIntegration => {
                "to"
            }
            EmailError::Empty | EmailError::NotAMessage => "body",
        }
    }
}

impl From<EmailError> for InvalidPayload {
    fn from(error: EmailError) -> Self {
        InvalidPayload::field(error.field(), error.to_string())
    }
}

/// A recipient address read as `<key>[+<dedup key>]@<domain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    key: IntegrationKey,
    dedup: Option<String>,
}

impl Recipient {
    /// Accepts `local@domain`, `<local@domain>` and `Name <local@domain>`.
    /// The key is case-insensitive; the dedup key is lowercased, since mail
    /// systems do not all keep the case of an address.
    pub fn parse(address: &str) -> Result<Self, EmailError> {
        let (local, _domain) = split_address(address).ok_or(EmailError::NotAnAddress)?;
        let (key, dedup) = match local.split_once('+') {
            Some((key, dedup)) => (key, Some(dedup)),
            None => (local, None),
        };
        let key = IntegrationKey::parse(key).map_err(|_| EmailError::NotAKey)?;
        let dedup = dedup.map(|d| d.trim().to_lowercase()).filter(|d| !d.is_empty());
        Ok(Recipient { key, dedup })
    }

    pub fn key(&self) -> &IntegrationKey {
        &self.key
    }

    /// The `+something` of the address, which becomes the dedup key.
    pub fn dedup_override(&self) -> Option<&str> {
        self.dedup.as_deref()
    }
}

/// One message read for one of its recipients.
#[derive(Debug)]
pub struct InboundEmail {
    /// The integration the recipient address names: the caller looks it up
    /// (by [`KeyHash`]) and checks it is an enabled `email` integration.
    pub key: IntegrationKey,
    /// Empty for automatic replies and delivery reports: accepted, no event.
    pub alerts: Vec<Alert>,
}

/// Reads a raw RFC 5322 message (as SES stores it in S3) delivered to
/// `recipient` (one of the receipt's recipients): the integration key the
/// address carries and the alerts the message makes. Pure: no I/O.
pub fn read_email(raw: &[u8], recipient: &str) -> Result<InboundEmail, EmailError> {
    let recipient = Recipient::parse(recipient)?;
    let raw = with_line_end(raw);
    let message = parse_message(&raw)?;
    let alerts = alerts_from(&message, Some(&recipient));
    Ok(InboundEmail {
        key: recipient.key,
        alerts,
    })
}

impl Provider for Email {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Email
    }

    fn max_body_bytes(&self) -> usize {
        MAX_MESSAGE_BYTES
    }

    /// A raw message under any label: message/rfc822 is the natural one, but
    /// relays and `curl --data-binary` say anything.
    fn media_types(&self) -> &'static [super::MediaType] {
        &[super::MediaType::Any]
    }

    /// The key is the recipient's local part. An address that carries no key
    /// is still handed on (its local part), so that the answer says the key
    /// is malformed rather than missing.
    fn key_in_body(&self, inbound: &Inbound<'_>) -> Option<String> {
        let address = match requested_recipient(inbound) {
            Some(address) => address,
            None => {
                let raw = with_line_end(inbound.body);
                let headers = MessageParser::new().parse_headers(&raw)?;
                recipient_in(&headers)?
            }
        };
        match Recipient::parse(&address) {
            Ok(recipient) => Some(recipient.key.reveal().to_owned()),
            Err(_) => {
                let local = split_address(&address).map_or(address.as_str(), |(local, _)| local);
                Some(local.split('+').next().unwrap_or(local).to_owned())
            }
        }
    }

    fn normalize(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let raw = with_line_end(inbound.body);
        let message = parse_message(&raw)?;
        let address = requested_recipient(inbound).or_else(|| recipient_in(&message));
        let recipient = match address.as_deref().map(Recipient::parse) {
            Some(Ok(recipient)) => {
                if KeyHash::of(recipient.key.reveal()) != integration.key_hash {
                    return Err(EmailError::OtherIntegration.into());
                }
                Some(recipient)
            }
            // The key came in a header or ?token=: the address was only
            // where the mail was going, and sets no dedup key.
            _ => None,
        };
        Ok(alerts_from(&message, recipient.as_ref()))
    }
}

/// The recipient the request names: `?to=`, then `X-Original-To`.
fn requested_recipient(inbound: &Inbound<'_>) -> Option<String> {
    // A `+` in a query string decodes to a space, and no address has one.
    let from_query = query_param(inbound.query, "to").map(|to| to.trim().replace(' ', "+"));
    let from_header = || {
        inbound
            .headers
            .get(ORIGINAL_TO)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
    };
    from_query.or_else(from_header).filter(|a| !a.is_empty())
}

/// The recipient the message names: the first address that carries a key
/// among Delivered-To (the envelope recipient, added on delivery),
/// X-Original-To, To and Cc, in that order; failing that, the first address.
fn recipient_in(message: &Message<'_>) -> Option<String> {
    let mut candidates: Vec<String> = Vec::new();
    for wanted in ["delivered-to", ORIGINAL_TO] {
        candidates.extend(
            message
                .headers_raw()
                .filter(|(name, _)| name.eq_ignore_ascii_case(wanted))
                .map(|(_, value)| value.trim().to_owned()),
        );
    }
    for list in [message.to(), message.cc()].into_iter().flatten() {
        candidates.extend(list.iter().filter_map(|a| a.address()).map(str::to_owned));
    }
    candidates
        .iter()
        .find(|a| Recipient::parse(a).is_ok())
        .or_else(|| candidates.first())
        .cloned()
}

/// `Name <local@domain>`, `<local@domain>` or `local@domain` as (local,
/// domain), quotes around the local part removed.
fn split_address(address: &str) -> Option<(&str, &str)> {
    let address = address.trim();
    let inner = match (address.rfind('<'), address.rfind('>')) {
        (Some(open), Some(close)) if open < close => &address[open + 1..close],
        _ => address,
    };
    let (local, domain) = inner.trim().rsplit_once('@')?;
    let local = local.trim().trim_matches('"');
    let domain = domain.trim();
    (!local.is_empty() && !domain.is_empty()).then_some((local, domain))
}

/// The message, ending with a line end: mail-parser drops a last header
/// line that has none (a header-only message cut short).
fn with_line_end(raw: &[u8]) -> Cow<'_, [u8]> {
    match raw.last() {
        Some(b'\n') | None => Cow::Borrowed(raw),
        Some(_) => {
            let mut ended = Vec::with_capacity(raw.len() + 1);
            ended.extend_from_slice(raw);
            ended.push(b'\n');
            Cow::Owned(ended)
        }
    }
}

fn parse_message(raw: &[u8]) -> Result<Message<'_>, EmailError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(EmailError::Empty);
    }
    let message = MessageParser::new().parse(raw).ok_or(EmailError::NotAMessage)?;
    // mail-parser reads almost anything as a message; a mail has at least one
    // of these, a JSON body or a stray text file has neither.
    if message.from().is_none() && message.subject().is_none() {
        return Err(EmailError::NotAMessage);
    }
    Ok(message)
}

fn alerts_from(message: &Message<'_>, recipient: Option<&Recipient>) -> Vec<Alert> {
    if let Some(reason) = automatic_reply(message) {
        tracing::info!(
            reason,
            "email that is an automatic reply or a delivery report: accepted, no event"
        );
        return Vec::new();
    }
    let key = recipient.map(|r| r.key.reveal());
    let subject = message.subject().map(collapse_whitespace).unwrap_or_default();
    let body = body_text(message);
    let reading = SubjectReading::of(&subject);
    let title = if reading.title.is_empty() {
        first_line(&body).to_owned()
    } else {
        reading.title
    };
    let sender = message
        .from()
        .or_else(|| message.sender())
        .and_then(|list| list.first());
    let sender_address = sender.and_then(|a| a.address()).map(str::to_lowercase);

    let dedup_key = recipient
        .and_then(|r| r.dedup.as_deref())
        .and_then(|dedup| DedupKey::parse(dedup).ok())
        .unwrap_or_else(|| {
            DedupKey::digest_of(&[
                "email",
                sender_address.as_deref().unwrap_or(""),
                &collapse_whitespace(&title).to_lowercase(),
            ])
        });

    let summary = if !subject.is_empty() {
        redact(&subject, key).into_owned()
    } else if !title.is_empty() {
        redact(&title, key).into_owned()
    } else {
        let sender = sender_address.as_deref().unwrap_or("an unknown sender");
        redact(&format!("Email from {sender}"), key).into_owned()
    };
    let severity = reading.severity.unwrap_or(match reading.action {
        Action::Resolve => Severity::Info,
        _ => Severity::Error,
    });

    vec![Alert {
        event_action: reading.action,
        dedup_key,
        payload: Some(Payload {
            summary: Payload::truncate_summary(&summary),
            source: sender_address.clone().unwrap_or_else(|| "email".to_owned()),
            severity,
            timestamp: date_of(message),
            component: None,
            group: None,
            class: None,
            custom_details: Some(details_of(message, &subject, &body, key)),
        }),
        links: Vec::new(),
        images: Vec::new(),
        client: Some(
            sender
                .and_then(|a| a.name())
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .unwrap_or("Email")
                .to_owned(),
        ),
        client_url: None,
    }]
}

/// Why a message is no alert: an out-of-office or other auto-reply (RFC
/// 3834), or a bounce or read receipt (multipart/report, RFC 6522).
fn automatic_reply(message: &Message<'_>) -> Option<&'static str> {
    let auto_replied = message
        .headers_raw()
        .filter(|(name, _)| name.eq_ignore_ascii_case("auto-submitted"))
        .any(|(_, value)| value.trim().to_ascii_lowercase().starts_with("auto-replied"));
    if auto_replied {
        return Some("Auto-Submitted: auto-replied");
    }
    if message.is_content_type("multipart", "report") {
        return Some("multipart/report");
    }
    None
}

/// Every inline text part in order (HTML ones reduced to text), line ends
/// made `\n`.
fn body_text(message: &Message<'_>) -> String {
    let parts: Vec<String> = (0..message.text_body_count())
        .filter_map(|index| message.body_text(index))
        .map(|text| text.replace("\r\n", "\n").trim().to_owned())
        .filter(|text| !text.is_empty())
        .collect();
    parts.join("\n\n")
}

fn first_line(text: &str) -> &str {
    text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("")
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The Date header as a time, when it is a real one.
fn date_of(message: &Message<'_>) -> Option<DateTime<Utc>> {
    let date = message.date().filter(|d| d.is_valid())?;
    DateTime::parse_from_rfc3339(&date.to_rfc3339())
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

fn details_of(message: &Message<'_>, subject: &str, body: &str, key: Option<&str>) -> Value {
    let mut details = Map::new();
    if let Some(from) = message.from() {
        details.insert("from".into(), json!(addresses(from, key).join(", ")));
    }
    for (name, list) in [("to", message.to()), ("cc", message.cc())] {
        if let Some(list) = list {
            details.insert(name.into(), json!(addresses(list, key)));
        }
    }
    // Every header shown is masked, not only the addresses: a sender may
    // put the recipient in any of them.
    if let Some(date) = message.header_raw("Date") {
        details.insert("date".into(), json!(redact(date.trim(), key)));
    }
    if let Some(id) = message.message_id() {
        details.insert("message_id".into(), json!(redact(id, key)));
    }
    details.insert("subject".into(), json!(redact(subject, key)));
    let body = redact(body, key);
    let kept = cut_at_char_boundary(&body, MAX_BODY_BYTES);
    details.insert("body".into(), json!(kept));
    if kept.len() < body.len() {
        details.insert("body_truncated".into(), json!(true));
        details.insert("body_bytes".into(), json!(body.len()));
    }
    let attachments: Vec<Cow<'_, str>> = message
        .attachments()
        .filter_map(|part| part.attachment_name())
        .take(MAX_ATTACHMENT_NAMES)
        .map(|name| redact(name, key))
        .collect();
    if !attachments.is_empty() {
        details.insert("attachments".into(), json!(attachments));
    }
    Value::Object(details)
}

/// `Name <address>` for each address, any integration key in them masked
/// (the message's own To lists the key address it was sent to).
fn addresses(list: &Address<'_>, key: Option<&str>) -> Vec<String> {
    list.iter()
        .map(|addr| {
            let address = addr.address().map(mask_key_address).unwrap_or_default();
            let shown = match addr.name().map(str::trim).filter(|n| !n.is_empty()) {
                Some(name) if !address.is_empty() => format!("{name} <{address}>"),
                Some(name) => name.to_owned(),
                None => address,
            };
            redact(&shown, key).into_owned()
        })
        .collect()
}

/// An address whose local part is (or starts with `+`) a key, with the key
/// masked: the known key and any other integration's alike.
fn mask_key_address(address: &str) -> String {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return address.to_owned();
    };
    let (key, rest) = match local.split_once('+') {
        Some((key, dedup)) => (key, Some(dedup)),
        None => (local, None),
    };
    if IntegrationKey::parse(key).is_err() {
        return address.to_owned();
    }
    match rest {
        Some(dedup) => format!("{REDACTED_KEY}+{dedup}@{domain}"),
        None => format!("{REDACTED_KEY}@{domain}"),
    }
}

/// `text` with every occurrence of `key` (any case) masked.
fn redact<'a>(text: &'a str, key: Option<&str>) -> Cow<'a, str> {
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return Cow::Borrowed(text);
    };
    // ASCII lowercasing keeps every byte offset, so matches index `text`.
    let lower = text.to_ascii_lowercase();
    let key = key.to_ascii_lowercase();
    if !lower.contains(&key) {
        return Cow::Borrowed(text);
    }
    let mut masked = String::with_capacity(text.len());
    let mut last = 0;
    for (at, _) in lower.match_indices(&key) {
        masked.push_str(&text[last..at]);
        masked.push_str(REDACTED_KEY);
        last = at + key.len();
    }
    masked.push_str(&text[last..]);
    Cow::Owned(masked)
}

fn cut_at_char_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

/// What a subject says besides its title.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SubjectReading {
    action: Action,
    severity: Option<Severity>,
    /// The subject without its markers, reply prefixes and decorations:
    /// the same for an alert, its repeats and its recovery.
    title: String,
}

/// One leading word or bracket of a subject that is not part of its title.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Action(Action),
    Severity(Severity),
    /// `Re:`, `Fw:`, `Fwd:`.
    Reply,
}

impl SubjectReading {
    fn of(subject: &str) -> Self {
        let mut action = None;
        let mut severity = None;
        let mut rest = subject;
        loop {
            // Decorations: `** PROBLEM …`, `✅ Resolved …`.
            rest = rest.trim_start_matches(|c: char| !c.is_alphanumeric() && c != '[');
            let Some((marker, after)) = leading_marker(rest) else {
                break;
            };
            match marker {
                Marker::Action(a) => action = action.or(Some(a)),
                Marker::Severity(s) => severity = severity.or(Some(s)),
                Marker::Reply => {}
            }
            rest = after;
        }
        let mut title = rest.trim_end_matches(|c: char| c.is_whitespace() || c == '*');
        // Nagios and Icinga end with the state: `… db1/Disk /var is CRITICAL **`.
        if let Some((head, state)) = title.rsplit_once(" is ") {
            if let Some(level) = nagios_state(state) {
                severity = severity.or(level);
                title = head.trim_end();
            }
        }
        SubjectReading {
            action: action.unwrap_or(Action::Trigger),
            severity,
            title: title.to_owned(),
        }
    }
}

/// The marker `rest` starts with, and what follows it. A word is a marker
/// when it is in [`marker_word`]'s list and is bracketed (`[RESOLVED]`,
/// `[FIRING:2]`), followed by a colon (`OK:`, `Recovery:`), followed by
/// Zabbix's ` in <duration>:`, or shouted (`RESOLVED …`, `PROBLEM …`).
fn leading_marker(rest: &str) -> Option<(Marker, &str)> {
    if let Some(inside) = rest.strip_prefix('[') {
        let close = inside.find(']')?;
        let marker = bracketed_marker(&inside[..close])?;
        return Some((marker, &inside[close + 1..]));
    }
    if let Some(found) = severity_pair(rest) {
        return Some(found);
    }
    let word_len = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
    let word = &rest[..word_len];
    // Zabbix's problem update subject: `Updated problem in 2m: …`.
    let (marker, end) = match strip_prefix_ignore_case(&rest[word_len..], " problem") {
        Some(_) if word.eq_ignore_ascii_case("updated") => {
            (Marker::Action(Action::Acknowledge), word_len + " problem".len())
        }
        _ => (marker_word(word)?, word_len),
    };
    let after = &rest[end..];
    if let Some(after) = after.strip_prefix(':') {
        return Some((marker, after));
    }
    if let Some(after) = after_duration(after) {
        return Some((marker, after));
    }
    let shouted = word.len() > 2 && word.bytes().all(|b| b.is_ascii_uppercase());
    let separated = after.chars().next().is_none_or(|c| c.is_whitespace() || c == '-');
    (shouted && separated && marker != Marker::Reply).then_some((marker, after))
}

/// `critical`, `RESOLVED`, `FIRING:2`, `severity:warning`.
fn bracketed_marker(inside: &str) -> Option<Marker> {
    let inside = inside.trim();
    if let Some((marker, rest)) = severity_pair(inside) {
        return rest.trim().is_empty().then_some(marker);
    }
    let (word, count) = inside.split_once(':').unwrap_or((inside, ""));
    if !count.trim().bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    marker_word(word.trim()).filter(|m| *m != Marker::Reply)
}

/// `severity: critical` or `severity=critical` at the start of `rest`.
fn severity_pair(rest: &str) -> Option<(Marker, &str)> {
    let after = strip_prefix_ignore_case(rest, "severity")?.trim_start();
    let after = after.strip_prefix([':', '='])?.trim_start();
    let len = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
    let severity = after[..len].parse().ok()?;
    Some((Marker::Severity(severity), &after[len..]))
}

/// The short list of words that are markers, in any case.
fn marker_word(word: &str) -> Option<Marker> {
    let marker = match word.to_ascii_lowercase().as_str() {
        "resolved" | "recovery" | "recovered" | "ok" => Marker::Action(Action::Resolve),
        "acknowledgement" | "acknowledged" => Marker::Action(Action::Acknowledge),
        "problem" | "alert" | "alarm" | "firing" => Marker::Action(Action::Trigger),
        "critical" => Marker::Severity(Severity::Critical),
        "error" => Marker::Severity(Severity::Error),
        "warning" => Marker::Severity(Severity::Warning),
        "info" => Marker::Severity(Severity::Info),
        "re" | "fw" | "fwd" => Marker::Reply,
        _ => return None,
    };
    Some(marker)
}

/// What follows Zabbix's ` in 1d 2h 3m:` (a duration of number+unit words
/// and a colon), if `rest` starts with one.
fn after_duration(rest: &str) -> Option<&str> {
    let rest = strip_prefix_ignore_case(rest, " in ")?;
    let (duration, after) = rest.split_once(':')?;
    let mut words = duration.split_whitespace().peekable();
    words.peek()?;
    let all_units = words.all(|w| {
        let digits = w.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && digits < w.len() && w[digits..].bytes().all(|b| b.is_ascii_alphabetic())
    });
    all_units.then_some(after)
}

/// A Nagios state word ending a subject: `Some(severity it implies)`.
fn nagios_state(word: &str) -> Option<Option<Severity>> {
    match word {
        "CRITICAL" | "DOWN" | "UNREACHABLE" => Some(Some(Severity::Critical)),
        "WARNING" => Some(Some(Severity::Warning)),
        "OK" | "UP" | "UNKNOWN" => Some(None),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;
    use http::{HeaderMap, HeaderValue, StatusCode};

    use super::*;
    use crate::config::{Catalog, FieldMapping, Secret};
    use crate::event::{IntegrationId, ServiceId};
    use crate::ingest::{IngestRequest, IngestService};
    use crate::memory::MemoryStore;
    use crate::signature::{hmac_sha256_hex, SignatureError};

    macro_rules! sample {
        ($name:literal) => {
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../events/email/", $name))
        };
    }

    const NAGIOS_PROBLEM: &str = sample!("nagios-problem.eml");
    const NAGIOS_RECOVERY: &str = sample!("nagios-recovery.eml");
    const AM_FIRING: &str = sample!("alertmanager-firing.eml");
    const AM_RESOLVED: &str = sample!("alertmanager-resolved.eml");
    const ZABBIX_PROBLEM: &str = sample!("zabbix-problem.eml");
    const ZABBIX_RESOLVED: &str = sample!("zabbix-resolved.eml");

    /// The key the samples are addressed to.
    const KEY: &str = "0123456789abcdef0123456789abcdef";
    const RCPT: &str = "0123456789abcdef0123456789abcdef@alerts.example.com";

    fn one(raw: &str, recipient: &str) -> Alert {
        let email = read_email(raw.as_bytes(), recipient).unwrap();
        assert_eq!(email.key.reveal(), KEY);
        assert_eq!(email.alerts.len(), 1, "one alert per message");
        email.alerts.into_iter().next().unwrap()
    }

    fn payload(alert: &Alert) -> &Payload {
        alert.payload.as_ref().unwrap()
    }

    fn details(alert: &Alert) -> &Value {
        payload(alert).custom_details.as_ref().unwrap()
    }

    fn body(alert: &Alert) -> &str {
        details(alert)["body"].as_str().unwrap()
    }

    /// A small message, for the cases the samples do not cover.
    fn mail(headers: &str, body: &str) -> String {
        format!("From: Cron Daemon <root@backup01.example.com>\nTo: {RCPT}\n{headers}\n\n{body}")
    }

    fn dedup(raw: &str) -> DedupKey {
        one(raw, RCPT).dedup_key
    }

    #[test]
    fn a_nagios_problem_triggers_with_the_subject_as_summary() {
        let alert = one(NAGIOS_PROBLEM, RCPT);
        assert_eq!(alert.event_action, Action::Trigger);
        assert!(alert.dedup_key.as_str().starts_with("sha256:"), "{}", alert.dedup_key);
        let p = payload(&alert);
        assert_eq!(p.summary, "** PROBLEM Service Alert: db1/Disk /var is CRITICAL **");
        assert_eq!(p.severity, Severity::Critical, "from the state that ends the subject");
        assert_eq!(p.source, "nagios@monitor.example.com");
        assert_eq!(p.timestamp, Some(Utc.with_ymd_and_hms(2025, 1, 14, 9, 12, 7).unwrap()));
        assert_eq!(alert.client.as_deref(), Some("Email"));
        let d = details(&alert);
        assert_eq!(d["from"], json!("nagios@monitor.example.com"));
        assert_eq!(d["message_id"], json!("20250114091207.4F1A2C0123@monitor.example.com"));
        assert_eq!(d["date"], json!("Tue, 14 Jan 2025 10:12:07 +0100 (CET)"));
        assert!(body(&alert).starts_with("***** Nagios *****\n\nNotification Type: PROBLEM"));
        assert!(body(&alert).ends_with("DISK CRITICAL - free space: /var 912 MB (4.6% inode=91%):"));
        assert!(d.get("body_truncated").is_none());
    }

    #[test]
    fn the_nagios_recovery_resolves_the_problems_incident() {
        let alert = one(NAGIOS_RECOVERY, RCPT);
        assert_eq!(alert.event_action, Action::Resolve);
        assert_eq!(payload(&alert).severity, Severity::Info);
        assert_eq!(alert.dedup_key, dedup(NAGIOS_PROBLEM));
    }

    #[test]
    fn alertmanager_multipart_alternative_gives_its_text_part_decoded() {
        let alert = one(AM_FIRING, RCPT);
        assert_eq!(alert.event_action, Action::Trigger);
        let p = payload(&alert);
        assert_eq!(p.summary, "[FIRING:1] DiskWillFillIn4Hours (db1:9100 node critical)");
        // "critical" is a label value in parentheses, not a leading marker.
        assert_eq!(p.severity, Severity::Error);
        assert_eq!(p.source, "alertmanager@prom.example.com");
        assert_eq!(alert.client.as_deref(), Some("Alertmanager"));
        assert_eq!(p.timestamp, Some(Utc.with_ymd_and_hms(2025, 1, 14, 9, 20, 35).unwrap()));
        let text = body(&alert);
        assert!(text.contains("  alertname = DiskWillFillIn4Hours\n"), "{text}");
        // Soft line breaks joined, =3D decoded.
        assert!(
            text.contains("g0.expr=predict_linear%28node_filesystem_avail_bytes%7Bmountpoint"),
            "{text}"
        );
        assert!(
            !text.contains("<html") && !text.contains("View in Alertmanager"),
            "the HTML alternative is not added: {text}"
        );
        assert!(
            details(&alert).get("message_id").is_none(),
            "Alertmanager sends no Message-ID"
        );
    }

    #[test]
    fn an_html_only_mail_is_reduced_to_text_and_the_resolved_mail_meets_the_firing_one() {
        let alert = one(AM_RESOLVED, RCPT);
        assert_eq!(alert.event_action, Action::Resolve);
        assert_eq!(alert.dedup_key, dedup(AM_FIRING));
        let text = body(&alert);
        assert!(text.contains("1 alert for alertname=DiskWillFillIn4Hours"), "{text}");
        assert!(
            text.contains("summary = Filesystem /var on db1:9100 will fill up within 4 hours"),
            "{text}"
        );
        assert!(
            !text.contains('<') && !text.contains("font-family"),
            "tags and style are gone: {text}"
        );
    }

    #[test]
    fn zabbix_base64_body_and_encoded_word_subject_are_decoded() {
        let alert = one(ZABBIX_PROBLEM, RCPT);
        assert_eq!(alert.event_action, Action::Trigger);
        let p = payload(&alert);
        assert_eq!(
            p.summary,
            "Problem: srv-paris-01: Température du processeur trop élevée (>85 °C)"
        );
        assert_eq!(p.severity, Severity::Error);
        assert_eq!(p.source, "zabbix@example.com");
        assert_eq!(alert.client.as_deref(), Some("Zabbix"));
        assert_eq!(p.timestamp, Some(Utc.with_ymd_and_hms(2025, 1, 14, 9, 41, 27).unwrap()));
        let text = body(&alert);
        assert!(text.starts_with("Problem started at 10:41:27 on 2025.01.14\nProblem name: srv-paris-01: Température"));
        assert!(text.contains("Operational data: 91 °C\n"), "{text}");
        assert!(!text.contains('\r'));
    }

    #[test]
    fn zabbix_resolved_in_a_duration_meets_the_problem() {
        let alert = one(ZABBIX_RESOLVED, RCPT);
        assert_eq!(alert.event_action, Action::Resolve);
        assert_eq!(alert.dedup_key, dedup(ZABBIX_PROBLEM));
        assert_ne!(alert.dedup_key, dedup(NAGIOS_PROBLEM));
    }

    #[test]
    fn plus_something_is_the_dedup_key_of_trigger_and_resolve_alike() {
        let address = format!("{KEY}+DB1-var@alerts.example.com");
        let trigger = one(NAGIOS_PROBLEM, &address);
        let resolve = one(NAGIOS_RECOVERY, &address);
        assert_eq!(trigger.dedup_key.as_str(), "db1-var", "lowercased");
        assert_eq!(resolve.dedup_key, trigger.dedup_key);
        assert_eq!(resolve.event_action, Action::Resolve);
        // An empty override is no override.
        assert_eq!(
            one(NAGIOS_PROBLEM, &format!("{KEY}+@alerts.example.com")).dedup_key,
            dedup(NAGIOS_PROBLEM)
        );
    }

    #[test]
    fn the_key_is_case_insensitive_and_the_address_may_have_a_name_or_brackets() {
        let upper = KEY.to_ascii_uppercase();
        for address in [
            format!("{upper}@alerts.example.com"),
            format!("<{KEY}@ALERTS.EXAMPLE.COM>"),
            format!("Tocsin alerts <{upper}+x@alerts.example.com>"),
            format!("  \"{KEY}\"@alerts.example.com "),
        ] {
            let recipient = Recipient::parse(&address).unwrap_or_else(|e| panic!("{address}: {e}"));
            assert_eq!(recipient.key().reveal(), KEY, "{address}");
        }
        assert_eq!(
            Recipient::parse(&format!("{KEY}+Disk+Full@x"))
                .unwrap()
                .dedup_override(),
            Some("disk+full"),
            "only the first + separates the key"
        );
    }

    #[test]
    fn a_recipient_without_a_key_is_refused_and_the_error_never_repeats_it() {
        let cases = [
            ("oncall@example.com", EmailError::NotAKey),
            ("0123456789abcdef0123456789abcde@x.com", EmailError::NotAKey),
            ("0123456789abcdef0123456789abcdeg@x.com", EmailError::NotAKey),
            ("0123456789abcdef0123456789abcdef0@x.com", EmailError::NotAKey),
            ("+db1@example.com", EmailError::NotAKey),
            ("0123456789abcdef0123456789abcdef", EmailError::NotAnAddress),
            ("0123456789abcdef0123456789abcdef@", EmailError::NotAnAddress),
            ("", EmailError::NotAnAddress),
        ];
        for (address, expected) in cases {
            let error = read_email(NAGIOS_PROBLEM.as_bytes(), address).unwrap_err();
            assert_eq!(error, expected, "{address:?}");
            assert!(!address.is_empty() && !error.to_string().contains(address) || address.is_empty());
        }
        let invalid = InvalidPayload::from(EmailError::NotAKey);
        assert_eq!(invalid.errors[0].field, "to");
        assert!(invalid.errors[0].reason.contains("32 hex characters"), "{invalid}");
    }

    #[test]
    fn the_same_alert_repeated_dedupes_even_when_its_body_changes() {
        let again = NAGIOS_PROBLEM
            .replace("912 MB (4.6%", "655 MB (3.3%")
            .replace("10:12:07", "10:42:07");
        assert_eq!(dedup(&again), dedup(NAGIOS_PROBLEM));
        let forwarded = NAGIOS_PROBLEM.replace("Subject: ** PROBLEM", "Subject: Fwd: ** PROBLEM");
        assert_eq!(dedup(&forwarded), dedup(NAGIOS_PROBLEM));
        let other_host = NAGIOS_PROBLEM.replace("db1/Disk /var", "db2/Disk /var");
        assert_ne!(dedup(&other_host), dedup(NAGIOS_PROBLEM));
        let other_sender = NAGIOS_PROBLEM.replace("From: nagios@", "From: icinga@");
        assert_ne!(
            dedup(&other_sender),
            dedup(NAGIOS_PROBLEM),
            "the sender is part of the key"
        );
    }

    #[test]
    fn a_resolve_marker_is_taken_off_so_the_resolve_meets_its_trigger() {
        let trigger = mail("Subject: Disk full on db1", "Usage 97% at 10:00");
        let key = dedup(&trigger);
        for subject in [
            "RESOLVED: Disk full on db1",
            "[RESOLVED] Disk full on db1",
            "[Resolved] [critical] disk FULL  on db1",
            "OK: Disk full on db1",
            "Recovery: Disk full on db1",
            "RECOVERY Disk full on db1",
            "Re: RESOLVED - Disk full on db1",
        ] {
            let resolve = one(&mail(&format!("Subject: {subject}"), "Usage 41% at 11:00"), RCPT);
            assert_eq!(resolve.event_action, Action::Resolve, "{subject}");
            assert_eq!(resolve.dedup_key, key, "{subject}");
            assert_eq!(
                payload(&resolve).summary,
                collapse_whitespace(subject),
                "the subject as sent"
            );
        }
        // Without a marker it is another alert, not a recovery.
        let other = one(&mail("Subject: Disk full on db1 fixed", "ok"), RCPT);
        assert_eq!(other.event_action, Action::Trigger);
        assert_ne!(other.dedup_key, key);
    }

    #[test]
    fn subject_markers_set_action_and_severity_and_leave_the_title() {
        use Action::{Acknowledge as Ack, Resolve, Trigger};
        use Severity::{Critical, Info, Warning};
        let cases: &[(&str, Action, Option<Severity>, &str)] = &[
            ("Disk full on db1", Trigger, None, "Disk full on db1"),
            (
                "[critical] Disk full on db1",
                Trigger,
                Some(Critical),
                "Disk full on db1",
            ),
            (
                "CRITICAL: Disk full on db1",
                Trigger,
                Some(Critical),
                "Disk full on db1",
            ),
            (
                "severity:warning Disk full on db1",
                Trigger,
                Some(Warning),
                "Disk full on db1",
            ),
            (
                "[severity = info] Disk full on db1",
                Trigger,
                Some(Info),
                "Disk full on db1",
            ),
            (
                "Re: Fwd: [WARNING] Disk full on db1",
                Trigger,
                Some(Warning),
                "Disk full on db1",
            ),
            (
                "[FIRING:2] HighLatency (api prod)",
                Trigger,
                None,
                "HighLatency (api prod)",
            ),
            (
                "[RESOLVED] HighLatency (api prod)",
                Resolve,
                None,
                "HighLatency (api prod)",
            ),
            (
                "ALARM: \"cpu-high\" in EU (Ireland)",
                Trigger,
                None,
                "cpu-high\" in EU (Ireland)",
            ),
            (
                "OK: \"cpu-high\" in EU (Ireland)",
                Resolve,
                None,
                "cpu-high\" in EU (Ireland)",
            ),
            ("Problem: srv: CPU high", Trigger, None, "srv: CPU high"),
            ("✅ Resolved in 1d 2h 3m: srv: CPU high", Resolve, None, "srv: CPU high"),
            ("Updated problem in 5m: srv: CPU high", Ack, None, "srv: CPU high"),
            ("Updated problem: srv: CPU high", Ack, None, "srv: CPU high"),
            (
                "** ACKNOWLEDGEMENT Service Alert: db1/Disk /var is CRITICAL **",
                Ack,
                Some(Critical),
                "Service Alert: db1/Disk /var",
            ),
            (
                "** PROBLEM Host Alert: web01 is DOWN **",
                Trigger,
                Some(Critical),
                "Host Alert: web01",
            ),
            (
                "** RECOVERY Host Alert: web01 is UP **",
                Resolve,
                None,
                "Host Alert: web01",
            ),
            (
                "*** PROBLEM *** web01 / HTTP is WARNING",
                Trigger,
                Some(Warning),
                "web01 / HTTP",
            ),
            // Not markers: an ordinary word, a lowercase word without a colon,
            // a tag the list does not know, a state word in lowercase.
            ("Okay, disk full on db1", Trigger, None, "Okay, disk full on db1"),
            ("Ok to deploy", Trigger, None, "Ok to deploy"),
            (
                "Recovery of the backup failed",
                Trigger,
                None,
                "Recovery of the backup failed",
            ),
            ("[db1] Disk full", Trigger, None, "[db1] Disk full"),
            ("Backup is ok", Trigger, None, "Backup is ok"),
            ("Resolved in time: no", Trigger, None, "Resolved in time: no"),
            ("", Trigger, None, ""),
        ];
        for (subject, action, severity, title) in cases {
            let reading = SubjectReading::of(subject);
            assert_eq!(
                (reading.action, reading.severity, reading.title.as_str()),
                (*action, *severity, *title),
                "{subject:?}"
            );
        }
    }

    #[test]
    fn the_key_never_shows_in_the_alert() {
        let raw = NAGIOS_PROBLEM
            .replace(
                &format!("To: {RCPT}"),
                &format!(
                    "To: Ops <ops@example.com>, Tocsin <{}+db1@alerts.example.com>",
                    KEY.to_ascii_uppercase()
                ),
            )
            .replace("Additional Info:", &format!("Additional Info: sent to {RCPT}"));
        let alert = one(&raw, RCPT);
        let shown = serde_json::to_string(&alert).unwrap().to_ascii_lowercase();
        assert!(!shown.contains(KEY), "{shown}");
        assert_eq!(
            details(&alert)["to"],
            json!([
                "Ops <ops@example.com>",
                "Tocsin <[integration-key]+db1@alerts.example.com>"
            ])
        );
        assert!(body(&alert).contains("sent to [integration-key]@alerts.example.com"));
        // Another integration's key in the To header is masked too.
        let other = "fedcba9876543210fedcba9876543210";
        let cc = NAGIOS_PROBLEM.replace(
            "From: nagios@",
            &format!("Cc: {other}@alerts.example.com\nFrom: nagios@"),
        );
        let alert = one(&cc, RCPT);
        assert_eq!(details(&alert)["cc"], json!(["[integration-key]@alerts.example.com"]));
    }

    /// Found by fuzzing (tests/fuzz, target email): Date, Message-ID and
    /// the summary of a message without subject were shown as sent, key
    /// and all. The first message is the fuzzer's, minimized.
    #[test]
    fn the_key_is_masked_in_every_header_shown() {
        let upper = KEY.to_ascii_uppercase();
        let dated = mail(
            &format!(
                "Subject: Disk full\nDate: Tue, 14 Jan 2025 10:5{KEY}3\nContent-Type: multipart/mixed; boundary=b"
            ),
            &format!(
                "--b\nContent-Type: text/plain\n\nThe disk is full.\n--b\nContent-Type: text/plain\n\
                 Content-Disposition: attachment; filename=\"{upper}.log\"\n\nx\n--b--\n"
            ),
        );
        for raw in [format!("Subject::\nMessage-Id:{upper}"), dated] {
            let alert = one(&raw, RCPT);
            let shown = serde_json::to_string(&alert).unwrap().to_ascii_lowercase();
            assert!(!shown.contains(KEY), "{shown}");
            assert!(shown.contains("[integration-key]"), "{shown}");
        }
        // Nor in the summary of a message with no subject and no body,
        // sent from the key's own address (the fuzzer's, minimized).
        let alert = one(&format!("From:{KEY}@"), RCPT);
        assert_eq!(payload(&alert).summary, "Email from [integration-key]@");
    }

    #[test]
    fn a_big_body_is_cut_to_16_kib_on_a_character_boundary() {
        // 2-byte characters after one ASCII byte: 16 KiB falls inside one.
        let big = format!("x{}", "é".repeat(20_000));
        let alert = one(&mail("Subject: Huge cron output", &big), RCPT);
        let kept = body(&alert);
        assert!(
            kept.len() <= MAX_BODY_BYTES && kept.len() > MAX_BODY_BYTES - 4,
            "{}",
            kept.len()
        );
        assert!(kept.starts_with("xé"));
        assert_eq!(details(&alert)["body_truncated"], json!(true));
        assert_eq!(details(&alert)["body_bytes"], json!(big.len()));
        let event_bytes = serde_json::to_vec(&alert).unwrap().len();
        assert!(event_bytes < 20 * 1024, "{event_bytes}");
    }

    #[test]
    fn malformed_mime_is_read_as_far_as_it_goes_without_panicking() {
        let nested = format!(
            "{}{}",
            (0..300)
                .map(|i| format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\n\n--b{i}\n"))
                .collect::<String>(),
            "Content-Type: text/plain\n\ndeep"
        );
        let cases: Vec<String> = vec![
            mail("Subject: no boundary\nContent-Type: multipart/alternative", "--x\n\nbody"),
            mail(
                "Subject: never closed\nContent-Type: multipart/mixed; boundary=zz",
                "--zz\nContent-Type: text/plain\n\nfirst part and no end",
            ),
            mail(
                "Subject: bad base64\nContent-Transfer-Encoding: base64",
                "@@@@ not base64 !!!! ====",
            ),
            mail(
                "Subject: bad qp\nContent-Transfer-Encoding: quoted-printable",
                "=ZZ=\n=4",
            ),
            mail(
                "Subject: =?UTF-8?B?broken?= =?X-UNKNOWN?Q?=E9t=E9?=\nContent-Type: text/plain; charset=x-no-such-charset",
                "\u{0}\u{1}binary\r\r\n",
            ),
            mail("Subject: deep\nMIME-Version: 1.0", &nested),
            mail("Subject: bad date\nDate: Mon, 45 Foo 20255 99:99:99 +9999", "x"),
            "Subject: only a subject, ended\n".to_owned(),
            "Subject: no blank line\nFrom: a@b.c".to_owned(),
            "Subject: only a subject".to_owned(),
        ];
        for raw in &cases {
            let email = read_email(raw.as_bytes(), RCPT).unwrap_or_else(|e| panic!("{e}: {raw:.60}"));
            assert_eq!(email.alerts.len(), 1, "{raw:.60}");
            assert!(!payload(&email.alerts[0]).summary.is_empty(), "{raw:.60}");
        }
        let bad_date = one(&cases[6], RCPT);
        assert_eq!(payload(&bad_date).timestamp, None, "an unreadable Date is left out");

        let refused: [(&[u8], EmailError); 5] = [
            (b"", EmailError::Empty),
            (b" \r\n\t", EmailError::Empty),
            (br#"{"summary": "not a mail"}"#, EmailError::NotAMessage),
            (b"\xff\xfe\x00garbage\x00\xc3", EmailError::NotAMessage),
            (b"X-Only: a header\n\nand a body", EmailError::NotAMessage),
        ];
        for (raw, expected) in refused {
            assert_eq!(
                read_email(raw, RCPT).unwrap_err(),
                expected,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(InvalidPayload::from(EmailError::NotAMessage).errors[0].field, "body");
    }

    #[test]
    fn no_subject_falls_back_to_the_first_body_line_then_to_the_sender() {
        let alert = one(
            &mail(
                "Date: Tue, 14 Jan 2025 10:00:00 +0000",
                "\n\n  Backup of /srv failed  \nexit 2",
            ),
            RCPT,
        );
        assert_eq!(payload(&alert).summary, "Backup of /srv failed");
        let again = one(&mail("", "Backup of /srv failed\nexit 3"), RCPT);
        assert_eq!(again.dedup_key, alert.dedup_key);
        let empty = one(&mail("Subject:", ""), RCPT);
        assert_eq!(payload(&empty).summary, "Email from root@backup01.example.com");
    }

    #[test]
    fn automatic_replies_and_delivery_reports_make_no_alert() {
        let out_of_office = mail(
            "Subject: Automatic reply: Disk full\nAuto-Submitted: auto-replied",
            "I am away.",
        );
        let bounce = mail(
            "Subject: Undelivered Mail Returned to Sender\nContent-Type: multipart/report; report-type=delivery-status; boundary=r",
            "--r\nContent-Type: text/plain\n\nThe mail system\n--r--",
        );
        for raw in [out_of_office, bounce] {
            let email = read_email(raw.as_bytes(), RCPT).unwrap();
            assert_eq!(email.key.reveal(), KEY, "the key is still read, to authenticate");
            assert!(email.alerts.is_empty(), "{raw:.80}");
        }
        // Tools mark their alerts auto-generated: those are alerts.
        let generated = mail("Subject: Disk full\nAuto-Submitted: auto-generated", "x");
        assert_eq!(read_email(generated.as_bytes(), RCPT).unwrap().alerts.len(), 1);
    }

    // --- The HTTP form.

    fn integration(key: &str, secret: Option<&str>) -> Integration {
        Integration {
            id: IntegrationId::parse("ops-email").unwrap(),
            service: ServiceId::parse("ops").unwrap(),
            provider: ProviderKind::Email,
            key_hash: KeyHash::of(key),
            secret: secret.map(Secret::new),
            enabled: true,
            fields: FieldMapping::default(),
            cloudwatch: Default::default(),
            dedup_key: None,
            rate_limit_per_minute: None,
            secret_ref: None,
        }
    }

    fn inbound<'a>(headers: &'a HeaderMap, query: Option<&'a str>, body: &'a str) -> Inbound<'a> {
        Inbound {
            headers,
            query,
            body: body.as_bytes(),
            received_at: Utc::now(),
        }
    }

    fn original_to(address: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ORIGINAL_TO, HeaderValue::from_str(address).unwrap());
        headers
    }

    #[test]
    fn the_key_is_read_from_to_then_x_original_to_then_the_message() {
        let none = HeaderMap::new();
        let other = "fedcba9876543210fedcba9876543210";
        let key_in =
            |headers: &HeaderMap, query: Option<&str>, body: &str| Email.key_in_body(&inbound(headers, query, body));

        let query = format!("to={other}%40alerts.example.com");
        assert_eq!(
            key_in(&original_to(RCPT), Some(&query), NAGIOS_PROBLEM).as_deref(),
            Some(other)
        );
        assert_eq!(
            key_in(&original_to(&format!("{other}@a.b")), None, NAGIOS_PROBLEM).as_deref(),
            Some(other)
        );
        assert_eq!(
            key_in(&none, None, NAGIOS_PROBLEM).as_deref(),
            Some(KEY),
            "the message's To"
        );
        // Delivered-To (the envelope recipient) beats a To without a key.
        let delivered = NAGIOS_PROBLEM
            .replace(&format!("To: {RCPT}"), "To: Ops list <ops@example.com>")
            .replace(
                "Return-Path:",
                &format!("Delivered-To: {other}+x@alerts.example.com\nReturn-Path:"),
            );
        assert_eq!(key_in(&none, None, &delivered).as_deref(), Some(other));
        // An address without a key is handed on, for a "malformed key" answer.
        assert_eq!(
            key_in(&none, Some("to=ops%2Bdb1%40example.com"), "").as_deref(),
            Some("ops")
        );
        let to_ops = NAGIOS_PROBLEM.replace(&format!("To: {RCPT}"), "To: ops@example.com");
        assert_eq!(key_in(&none, None, &to_ops).as_deref(), Some("ops"));
        let no_to = NAGIOS_PROBLEM.replace(&format!("To: {RCPT}\n"), "");
        assert_eq!(key_in(&none, None, &no_to), None);
    }

    #[test]
    fn over_http_plus_in_the_query_and_a_header_key_both_work() {
        let none = HeaderMap::new();
        // An unencoded + arrives as a space.
        let query = format!("to={KEY}+db1@alerts.example.com");
        let alerts = Email
            .normalize(&inbound(&none, Some(&query), NAGIOS_PROBLEM), &integration(KEY, None))
            .unwrap();
        assert_eq!(alerts[0].dedup_key.as_str(), "db1");

        // Authenticated by header, mail to a list: no override, no refusal.
        let to_ops = NAGIOS_PROBLEM.replace(&format!("To: {RCPT}"), "To: ops+alerts@example.com");
        let alerts = Email
            .normalize(&inbound(&none, None, &to_ops), &integration(KEY, None))
            .unwrap();
        assert_eq!(alerts[0].dedup_key, dedup(NAGIOS_PROBLEM));

        // The recipient names another integration than the one authenticated.
        let other = "fedcba9876543210fedcba9876543210";
        let error = Email
            .normalize(
                &inbound(&original_to(&format!("{other}@a.b")), None, NAGIOS_PROBLEM),
                &integration(KEY, None),
            )
            .unwrap_err();
        assert_eq!(error.errors[0].field, "to");
        assert!(!error.to_string().contains(other));

        let error = Email
            .normalize(&inbound(&none, None, "{}"), &integration(KEY, None))
            .unwrap_err();
        assert_eq!(error.errors[0].field, "body");
    }

    #[test]
    fn with_a_secret_the_http_form_must_be_signed() {
        let none = HeaderMap::new();
        let secret = "email-hmac-secret-for-tests";
        let with_secret = integration(KEY, Some(secret));
        let missing = Email.verify(&inbound(&none, None, NAGIOS_PROBLEM), &with_secret);
        assert!(matches!(missing, Err(SignatureError::Missing { .. })), "{missing:?}");
        let mut signed = HeaderMap::new();
        let signature = format!(
            "sha256={}",
            hmac_sha256_hex(secret.as_bytes(), NAGIOS_PROBLEM.as_bytes())
        );
        signed.insert("x-signature", HeaderValue::from_str(&signature).unwrap());
        assert_eq!(
            Email.verify(&inbound(&signed, None, NAGIOS_PROBLEM), &with_secret),
            Ok(())
        );
        let tampered = NAGIOS_PROBLEM.replace("CRITICAL", "WARNING");
        assert!(Email.verify(&inbound(&signed, None, &tampered), &with_secret).is_err());
    }

    #[test]
    fn the_provider_is_registered_at_its_path() {
        assert_eq!(ProviderKind::parse("email"), Some(ProviderKind::Email));
        assert_eq!(ProviderKind::Email.path(), "/integrations/email");
        assert_eq!(
            crate::providers::provider(ProviderKind::Email).max_body_bytes(),
            MAX_MESSAGE_BYTES
        );
    }

    fn post(headers: &HeaderMap, query: Option<&str>, body: &str) -> (StatusCode, Value, Arc<MemoryStore>) {
        let config =
            format!("services:\n  - id: ops\n    integrations:\n      - {{id: ops-email, type: email, key: {KEY}}}\n");
        let store = Arc::new(MemoryStore::new());
        let catalog = Catalog::from_yaml(&config, "test.yaml").unwrap();
        let ingest = IngestService::new(Arc::new(catalog), store.clone(), store.clone());
        let answer = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(ingest.handle(IngestRequest {
                provider: ProviderKind::Email,
                headers,
                query,
                body: body.as_bytes(),
                received_at: Utc::now(),
            }));
        let json = serde_json::from_slice(answer.body()).unwrap();
        (answer.status(), json, store)
    }

    #[test]
    fn through_ingest_the_recipient_authenticates_and_bad_ones_get_clear_answers() {
        let none = HeaderMap::new();
        let query = format!("to={KEY}%2Bdb1%40alerts.example.com");
        let (status, answer, store) = post(&none, Some(&query), NAGIOS_PROBLEM);
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        assert_eq!(answer["dedup_keys"], json!(["db1"]));
        assert_eq!(store.queued_events().len(), 1);

        let (status, answer, _) = post(&none, None, AM_FIRING);
        assert_eq!(status, StatusCode::ACCEPTED, "the message's own To: {answer}");

        let (status, answer, store) = post(&none, Some("to=oncall%40example.com"), NAGIOS_PROBLEM);
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
        assert!(answer["message"].as_str().unwrap().contains("32 hex"), "{answer}");
        assert!(store.queued_events().is_empty());

        let (status, answer, _) = post(&none, Some(&query), "not a mail at all");
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    }
}
