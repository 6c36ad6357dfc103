//! Uptime Kuma's webhook notification (`POST /integrations/uptime-kuma`).
//!
//! Uptime Kuma sends `{"heartbeat": {...}, "monitor": {...}, "msg": "..."}`
//! as `application/json`, as the `data` field of a `multipart/form-data`
//! body, or (custom body) as whatever Liquid template the user wrote: Tocsin
//! publishes one that renders that same document. With the GET method the
//! three values arrive JSON-encoded in the query string.
//!
//! Heartbeat status 0 (down) triggers and 1 (up) resolves, keyed by the
//! monitor's id. 2 (pending) and 3 (maintenance) are accepted and change
//! nothing: a pending monitor is still retrying, and maintenance is planned.
//! A notification without a heartbeat is the "Test" button (or a
//! certificate-expiry notice, which never resolves): accepted, no incident.
//!
//! <https://github.com/louislam/uptime-kuma/blob/master/server/notification-providers/webhook.js>

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::strip_prefix_ignore_case;
use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, FieldError, Link, Payload, Severity};
use crate::providers::header_secret::verify_secret_header;
use crate::providers::{Inbound, InvalidPayload, MediaType, Provider, ProviderKind};
use crate::signature::SignatureError;

pub struct UptimeKuma;

const INVALID: &str = "the Uptime Kuma notification is invalid";

/// Monitor ids are small integers: unprefixed they would meet other tools'
/// keys on the same service.
const KEY_PREFIX: &str = "uptime-kuma";

/// The form field Uptime Kuma's "multipart/form-data" content type fills.
const FORM_FIELD: &str = "data";

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Notification {
    heartbeat: Option<Heartbeat>,
    monitor: Option<Monitor>,
    msg: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Heartbeat {
    #[serde(rename = "monitorID")]
    monitor_id: Value,
    /// A number; text is accepted from custom templates that quote it.
    status: Value,
    /// UTC, `YYYY-MM-DD HH:MM:SS.mmm`.
    time: Option<String>,
    msg: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Monitor {
    id: Value,
    name: Option<String>,
    url: Option<String>,
    hostname: Option<String>,
    port: Value,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Uptime Kuma's heartbeat statuses.
const DOWN: i64 = 0;
const UP: i64 = 1;
const PENDING: i64 = 2;
const MAINTENANCE: i64 = 3;

/// JSON as every endpoint, and the multipart form some versions post.
const BODIES: &[MediaType] = &[
    MediaType::Exact("application/json"),
    MediaType::Suffix("+json"),
    MediaType::Exact("text/plain"),
    MediaType::Exact("application/x-www-form-urlencoded"),
    MediaType::Exact("multipart/form-data"),
];

impl Provider for UptimeKuma {
    fn kind(&self) -> ProviderKind {
        ProviderKind::UptimeKuma
    }

    fn media_types(&self) -> &'static [MediaType] {
        BODIES
    }

    /// Uptime Kuma cannot sign a body, but sends "Additional Headers": a secret
    /// travels as is in `X-Tocsin-Secret`, compared in constant time.
    fn verify(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<(), SignatureError> {
        verify_secret_header(inbound.headers, integration.secret.as_ref())
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let document = document_of(inbound)?;
        let Some(object) = document.as_object() else {
            return Err(InvalidPayload::field("body", "must be a JSON object"));
        };
        if !["heartbeat", "monitor", "msg"].iter().any(|k| object.contains_key(*k)) {
            return Err(InvalidPayload::field(
                "heartbeat",
                "is missing (and so are monitor and msg): a custom body must render the published template",
            ));
        }
        require_objects(&document, &[("/heartbeat", "heartbeat"), ("/monitor", "monitor")])?;
        let notification: Notification = serde_path_to_error::deserialize(&document).map_err(|error| {
            let path = error.path().to_string();
            InvalidPayload::field(path, format!("has the wrong type: {}", error.into_inner()))
        })?;
        let Some(heartbeat) = &notification.heartbeat else {
            tracing::info!(
                msg = notification.msg.as_deref().unwrap_or(""),
                "uptime kuma notification without a heartbeat (test or certificate notice): accepted"
            );
            return Ok(Vec::new());
        };
        let monitor = notification.monitor.unwrap_or_default();
        let details = details_of(&document);
        alert_from(heartbeat, &monitor, details)
    }
}

/// The notification document, from whichever shape the delivery has.
fn document_of(inbound: &Inbound<'_>) -> Result<Value, InvalidPayload> {
    let content_type = inbound
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let body = inbound.body;
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());

    let boundary = match multipart::boundary_of(content_type) {
        Some(boundary) => Some(boundary.map_err(|e| InvalidPayload::field("body", e.to_string()))?),
        // A relay that dropped the header: the first line names the boundary.
        None if body.starts_with(b"--") => multipart::boundary_from_first_line(body),
        None => None,
    };
    if let Some(boundary) = boundary {
        let field = multipart::field(body, &boundary, FORM_FIELD)
            .map_err(|e| InvalidPayload::field("body", e.to_string()))?
            .ok_or_else(|| {
                InvalidPayload::field(
                    FORM_FIELD,
                    "is missing: Uptime Kuma's form-data body carries the notification in a \"data\" field",
                )
            })?;
        return serde_json::from_slice(field)
            .map_err(|e| InvalidPayload::field(FORM_FIELD, format!("is not valid JSON: {e}")));
    }
    match first {
        Some(_) => serde_json::from_slice(body).map_err(InvalidPayload::unreadable),
        None => document_from_query(inbound.query),
    }
}

/// The GET method: `msg`, and `heartbeat` and `monitor` JSON-encoded.
fn document_from_query(query: Option<&str>) -> Result<Value, InvalidPayload> {
    let mut document = serde_json::Map::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let name = name.as_ref();
        match name {
            "msg" => {
                document.insert(name.to_owned(), Value::String(value.into_owned()));
            }
            "heartbeat" | "monitor" => {
                let parsed = serde_json::from_str(&value)
                    .map_err(|e| InvalidPayload::field(name, format!("is not valid JSON: {e}")))?;
                document.insert(name.to_owned(), parsed);
            }
            _ => {}
        }
    }
    if document.is_empty() {
        return Err(InvalidPayload::field(
            "body",
            "is empty: Uptime Kuma posts the notification as JSON or form-data",
        ));
    }
    Ok(Value::Object(document))
}

fn alert_from(heartbeat: &Heartbeat, monitor: &Monitor, details: Value) -> Result<Vec<Alert>, InvalidPayload> {
    let mut errors = Vec::new();
    let status = status_of(&heartbeat.status).map_err(|e| errors.push(e)).ok();
    let id = id_text(&monitor.id).or_else(|| id_text(&heartbeat.monitor_id));
    if id.is_none() {
        errors.push(FieldError::new(
            "monitor.id",
            "is missing (and so is heartbeat.monitorID): the monitor's id is the incident's key",
        ));
    }
    let (Some(status), Some(id), true) = (status, id, errors.is_empty()) else {
        return Err(InvalidPayload::new(INVALID, errors));
    };
    let (event_action, severity, state) = match status {
        DOWN => (Action::Trigger, Severity::Critical, "down"),
        UP => (Action::Resolve, Severity::Info, "up"),
        // Still retrying, or planned: nothing to open or close.
        _ => return Ok(Vec::new()),
    };
    let dedup_key = DedupKey::parse(&format!("{KEY_PREFIX}:{id}"))
        .map_err(|e| InvalidPayload::new(INVALID, vec![e.at("monitor.id")]))?;

    let name = non_blank(monitor.name.as_deref());
    let url = non_blank(monitor.url.as_deref()).filter(|u| is_http_url(u));
    let address = address_of(monitor);
    let head = format!("{} is {state}", name.unwrap_or("Uptime Kuma monitor"));
    let summary = match non_blank(heartbeat.msg.as_deref()) {
        Some(msg) => format!("{head}: {msg}"),
        None => head,
    };

    Ok(vec![Alert {
        event_action,
        dedup_key,
        payload: Some(Payload {
            summary: Payload::truncate_summary(&summary),
            source: address.as_deref().or(name).unwrap_or(KEY_PREFIX).to_owned(),
            severity,
            timestamp: non_blank(heartbeat.time.as_deref()).and_then(parse_time),
            component: name.map(str::to_owned),
            group: None,
            class: non_blank(monitor.kind.as_deref()).map(str::to_owned),
            custom_details: Some(details),
        }),
        links: url
            .map(|href| Link {
                href: href.to_owned(),
                text: Some("Monitored URL".to_owned()),
            })
            .into_iter()
            .collect(),
        images: Vec::new(),
        client: Some("Uptime Kuma".to_owned()),
        client_url: None,
    }])
}

fn status_of(value: &Value) -> Result<i64, FieldError> {
    let status = match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    match status {
        Some(s @ (DOWN | UP | PENDING | MAINTENANCE)) => Ok(s),
        _ if value.is_null() => Err(FieldError::new("heartbeat.status", "is missing")),
        _ => Err(FieldError::new(
            "heartbeat.status",
            format!("{value} is not one of 0 (down), 1 (up), 2 (pending), 3 (maintenance)"),
        )),
    }
}

fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => non_blank(Some(s)).map(str::to_owned),
        _ => None,
    }
}

/// What the monitor watches, as Uptime Kuma itself shows it: the URL of an
/// HTTP monitor, otherwise the host (and port).
fn address_of(monitor: &Monitor) -> Option<String> {
    if let Some(url) = non_blank(monitor.url.as_deref()).filter(|u| is_http_url(u)) {
        return Some(url.to_owned());
    }
    let host = non_blank(monitor.hostname.as_deref())?;
    Some(match id_text(&monitor.port) {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// Uptime Kuma leaves "https://" in the URL of monitors that have none.
fn is_http_url(url: &str) -> bool {
    ["https://", "http://"]
        .iter()
        .any(|scheme| strip_prefix_ignore_case(url, scheme).is_some_and(|rest| !rest.is_empty()))
}

/// The heartbeat whole, the message, and what identifies the monitor. The
/// monitor's full settings (retries, DNS, Docker...) are left out: they are
/// long and say nothing about the outage.
fn details_of(document: &Value) -> Value {
    let monitor = document.get("monitor").filter(|m| m.is_object());
    let pick = |key: &str| monitor.and_then(|m| m.get(key)).cloned().unwrap_or(Value::Null);
    json!({
        "msg": document.get("msg").cloned().unwrap_or(Value::Null),
        "heartbeat": document.get("heartbeat").cloned().unwrap_or(Value::Null),
        "monitor": {
            "id": pick("id"),
            "name": pick("name"),
            "pathName": pick("pathName"),
            "description": pick("description"),
            "type": pick("type"),
            "url": pick("url"),
            "hostname": pick("hostname"),
            "port": pick("port"),
            "tags": pick("tags"),
        },
    })
}

/// The heartbeat's time is UTC without a zone; the local time Uptime Kuma
/// adds beside it is for display. An unreadable time orders the event by
/// its arrival instead.
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .map(|t| t.and_utc())
        .ok()
        .or_else(|| DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc)))
}

/// serde reads a JSON array as a struct, field by field: a nested value
/// that must be an object is checked before deserializing.
fn require_objects(raw: &Value, pointers: &[(&str, &str)]) -> Result<(), InvalidPayload> {
    for (pointer, field) in pointers {
        match raw.pointer(pointer) {
            None | Some(Value::Null | Value::Object(_)) => {}
            Some(_) => return Err(InvalidPayload::field(*field, "must be a JSON object")),
        }
    }
    Ok(())
}

fn non_blank(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// Just enough of RFC 7578 (multipart/form-data, over RFC 2046's multipart
/// syntax) to take one field's value out of a body: what Uptime Kuma's
/// form-data library writes, and what any conforming client writes.
mod multipart {
    /// RFC 2046: a boundary is 1 to 70 characters.
    const MAX_BOUNDARY: usize = 70;

    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum MultipartError {
        #[error("the multipart/form-data Content-Type names no boundary")]
        NoBoundary,
        #[error("the multipart boundary must be 1 to 70 characters")]
        BadBoundary,
        #[error("the multipart body does not contain its boundary")]
        NoOpeningDelimiter,
        #[error("a multipart boundary line is followed by neither a line break nor \"--\"")]
        BadDelimiter,
        #[error("a part of the multipart body is not closed by the boundary")]
        Unterminated,
        #[error("a part of the multipart body has no blank line after its headers")]
        NoBlankLine,
    }

    /// `None` when the Content-Type is not multipart/form-data; the boundary,
    /// or why it is unusable, when it is.
    pub fn boundary_of(content_type: &str) -> Option<Result<String, MultipartError>> {
        let mut items = split_params(content_type).into_iter();
        let media_type = items.next()?;
        if !media_type.trim().eq_ignore_ascii_case("multipart/form-data") {
            return None;
        }
        let boundary = items
            .filter_map(|item| param(&item))
            .find(|(name, _)| name.eq_ignore_ascii_case("boundary"))
            .map(|(_, value)| value);
        Some(match boundary {
            None => Err(MultipartError::NoBoundary),
            Some(b) if b.is_empty() || b.len() > MAX_BOUNDARY => Err(MultipartError::BadBoundary),
            Some(b) => Ok(b),
        })
    }

    /// The boundary a body opens with (`--boundary` up to the first CRLF),
    /// for bodies that arrive without their Content-Type.
    pub fn boundary_from_first_line(body: &[u8]) -> Option<String> {
        let line_end = find(body, b"\r\n")?;
        let boundary = std::str::from_utf8(body.get(2..line_end)?).ok()?.trim_end();
        (!boundary.is_empty() && boundary.len() <= MAX_BOUNDARY).then(|| boundary.to_owned())
    }

    /// The value of the first part whose Content-Disposition names `name`.
    pub fn field<'a>(body: &'a [u8], boundary: &str, name: &str) -> Result<Option<&'a [u8]>, MultipartError> {
        if boundary.is_empty() || boundary.len() > MAX_BOUNDARY {
            return Err(MultipartError::BadBoundary);
        }
        let dash_boundary = [b"--", boundary.as_bytes()].concat();
        // Every delimiter after the first is preceded by CRLF, which belongs
        // to the delimiter, not to the part before it.
        let delimiter = [b"\r\n", dash_boundary.as_slice()].concat();
        // A preamble before the first delimiter is allowed and ignored.
        let mut pos = if body.starts_with(&dash_boundary) {
            dash_boundary.len()
        } else {
            find(body, &delimiter).ok_or(MultipartError::NoOpeningDelimiter)? + delimiter.len()
        };
        loop {
            let rest = &body[pos..];
            if rest.starts_with(b"--") {
                return Ok(None);
            }
            // Transport padding (spaces, tabs) may follow a delimiter.
            let padding = rest.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
            if !rest[padding..].starts_with(b"\r\n") {
                return Err(MultipartError::BadDelimiter);
            }
            pos += padding + 2;
            let end = pos + find(&body[pos..], &delimiter).ok_or(MultipartError::Unterminated)?;
            let (headers, content) = split_part(&body[pos..end])?;
            if disposition_name(headers).as_deref() == Some(name) {
                return Ok(Some(content));
            }
            pos = end + delimiter.len();
        }
    }

    /// Headers and content of one part; a part may have no headers at all.
    fn split_part(part: &[u8]) -> Result<(&[u8], &[u8]), MultipartError> {
        if let Some(content) = part.strip_prefix(b"\r\n") {
            return Ok((&[], content));
        }
        let blank = find(part, b"\r\n\r\n").ok_or(MultipartError::NoBlankLine)?;
        Ok((&part[..blank], &part[blank + 4..]))
    }

    /// The `name` parameter of the part's Content-Disposition header.
    fn disposition_name(headers: &[u8]) -> Option<String> {
        let headers = std::str::from_utf8(headers).ok()?;
        let value = headers.split("\r\n").find_map(|line| {
            let (header, value) = line.split_once(':')?;
            header
                .trim()
                .eq_ignore_ascii_case("content-disposition")
                .then_some(value)
        })?;
        let mut items = split_params(value).into_iter();
        if !items.next()?.trim().eq_ignore_ascii_case("form-data") {
            return None;
        }
        items
            .filter_map(|item| param(&item))
            .find(|(key, _)| key.eq_ignore_ascii_case("name"))
            .map(|(_, value)| value)
    }

    /// Splits a header value at the semicolons outside quoted strings.
    fn split_params(value: &str) -> Vec<String> {
        let mut items = Vec::new();
        let mut current = String::new();
        let mut quoted = false;
        let mut escaped = false;
        for c in value.chars() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ';' if !quoted => {
                    items.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            }
            current.push(c);
        }
        items.push(current);
        items
    }

    /// `key=value` or `key="quoted \"value\""`, unquoted.
    fn param(item: &str) -> Option<(String, String)> {
        let (key, value) = item.split_once('=')?;
        let value = value.trim();
        let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(inner) => {
                let mut out = String::with_capacity(inner.len());
                let mut chars = inner.chars();
                while let Some(c) = chars.next() {
                    out.push(if c == '\\' { chars.next().unwrap_or('\\') } else { c });
                }
                out
            }
            None => value.to_owned(),
        };
        Some((key.trim().to_owned(), value))
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const BOUNDARY: &str = "--------------------------482917305518204937261840";

        fn body(parts: &[(&str, &str)]) -> Vec<u8> {
            let mut out = Vec::new();
            for (headers, content) in parts {
                out.extend_from_slice(format!("--{BOUNDARY}\r\n{headers}\r\n\r\n{content}\r\n").as_bytes());
            }
            out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
            out
        }

        #[test]
        fn the_boundary_is_read_from_the_content_type() {
            assert_eq!(
                boundary_of(&format!("multipart/form-data; boundary={BOUNDARY}")),
                Some(Ok(BOUNDARY.to_owned()))
            );
            assert_eq!(
                boundary_of("Multipart/Form-Data; charset=utf-8; BOUNDARY=\"a;b c\""),
                Some(Ok("a;b c".to_owned()))
            );
            assert_eq!(boundary_of("application/json"), None);
            assert_eq!(
                boundary_of("multipart/form-data"),
                Some(Err(MultipartError::NoBoundary))
            );
            assert_eq!(
                boundary_of(&format!("multipart/form-data; boundary={}", "x".repeat(71))),
                Some(Err(MultipartError::BadBoundary))
            );
        }

        #[test]
        fn the_named_field_is_found_among_others() {
            let body = body(&[
                ("Content-Disposition: form-data; name=\"other\"", "first"),
                (
                    "content-disposition: form-data; name=\"data\"\r\nContent-Type: application/json",
                    "{\"a\":\"x\r\ny\"}",
                ),
            ]);
            assert_eq!(
                field(&body, BOUNDARY, "data"),
                Ok(Some(b"{\"a\":\"x\r\ny\"}".as_slice()))
            );
            assert_eq!(field(&body, BOUNDARY, "other"), Ok(Some(b"first".as_slice())));
            assert_eq!(field(&body, BOUNDARY, "absent"), Ok(None));
        }

        #[test]
        fn names_are_matched_exactly_and_quoted_semicolons_do_not_split() {
            let body = body(&[
                (
                    "Content-Disposition: form-data; name=\"datafile\"; filename=\"a;name=data\"",
                    "no",
                ),
                ("Content-Disposition: form-data; name=data", "yes"),
            ]);
            assert_eq!(field(&body, BOUNDARY, "data"), Ok(Some(b"yes".as_slice())));
        }

        #[test]
        fn a_preamble_padding_and_an_empty_value_are_allowed() {
            let body = format!(
                "preamble\r\n--{BOUNDARY}  \r\nContent-Disposition: form-data; name=\"data\"\r\n\r\n\r\n--{BOUNDARY}--"
            );
            assert_eq!(field(body.as_bytes(), BOUNDARY, "data"), Ok(Some(b"".as_slice())));
        }

        #[test]
        fn a_boundary_lookalike_inside_a_value_does_not_end_it() {
            // Only CRLF + "--" + the whole boundary delimits.
            let body = body(&[(
                "Content-Disposition: form-data; name=\"data\"",
                "a\r\n--not-the-boundary\r\nb",
            )]);
            assert_eq!(
                field(&body, BOUNDARY, "data"),
                Ok(Some(b"a\r\n--not-the-boundary\r\nb".as_slice()))
            );
        }

        #[test]
        fn broken_bodies_are_named() {
            assert_eq!(
                field(b"no boundary here", BOUNDARY, "data"),
                Err(MultipartError::NoOpeningDelimiter)
            );
            let unterminated = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\n{{}}");
            assert_eq!(
                field(unterminated.as_bytes(), BOUNDARY, "data"),
                Err(MultipartError::Unterminated)
            );
            let no_blank = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"data\"\r\n--{BOUNDARY}--");
            assert_eq!(
                field(no_blank.as_bytes(), BOUNDARY, "data"),
                Err(MultipartError::NoBlankLine)
            );
            let bad = format!("--{BOUNDARY}garbage\r\n");
            assert_eq!(
                field(bad.as_bytes(), BOUNDARY, "data"),
                Err(MultipartError::BadDelimiter)
            );
            assert_eq!(field(b"--\r\n", "", "data"), Err(MultipartError::BadBoundary));
        }

        #[test]
        fn the_first_line_names_the_boundary_of_a_headerless_body() {
            let body = body(&[("Content-Disposition: form-data; name=\"data\"", "{}")]);
            assert_eq!(boundary_from_first_line(&body), Some(BOUNDARY.to_owned()));
            assert_eq!(boundary_from_first_line(b"--\r\n"), None);
            assert_eq!(boundary_from_first_line(b"--abc"), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use std::sync::Arc;

    use http::{HeaderMap, HeaderValue, StatusCode};

    use super::*;
    use crate::auth::KeyHash;
    use crate::config::Catalog;
    use crate::ingest::{IngestRequest, IngestService};
    use crate::memory::MemoryStore;
    use crate::signature::hmac_sha256_hex;

    const TRIGGER: &str = include_str!("../../../../events/uptime-kuma/trigger.json");
    const RESOLVE: &str = include_str!("../../../../events/uptime-kuma/resolve.json");
    const TEST: &str = include_str!("../../../../events/uptime-kuma/test.json");
    const TRIGGER_MULTIPART: &[u8] = include_bytes!("../../../../events/uptime-kuma/trigger.multipart");
    const CUSTOM_BODY: &str = include_str!("../../../../events/uptime-kuma/custom-body.liquid");
    const MULTIPART_TYPE: &str = "multipart/form-data; boundary=--------------------------482917305518204937261840";

    const KEY: &str = "77777777777777777777777777777777";
    const SECRET: &str = "uptime-kuma-shared-secret";

    /// Built from config text as in production, so that settings other
    /// providers add to Integration need no change here.
    fn catalog(with_secret: bool) -> Catalog {
        let secret = if with_secret {
            format!(", secret: {SECRET}")
        } else {
            String::new()
        };
        let config = format!(
            "services:\n  - id: checkout\n    integrations:\n      - {{id: checkout-uptime-kuma, type: uptime-kuma, key: {KEY}{secret}}}\n"
        );
        Catalog::from_yaml(&config, "test.yaml").unwrap()
    }

    fn integration() -> Integration {
        catalog(false).integration_by_key(&KeyHash::of(KEY)).cloned().unwrap()
    }

    /// One request through ingest: authenticate, verify, normalize, enqueue.
    fn post(body: &[u8], headers: &[(&str, &str)], with_secret: bool) -> (StatusCode, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::new());
        let ingest = IngestService::new(Arc::new(catalog(with_secret)), store.clone(), store.clone());
        let mut map = HeaderMap::new();
        map.insert("x-integration-key", HeaderValue::from_static(KEY));
        for (name, value) in headers {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let answer = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(ingest.handle(IngestRequest {
                provider: ProviderKind::UptimeKuma,
                headers: &map,
                query: None,
                body,
                received_at: Utc::now(),
            }));
        (answer.status(), store)
    }

    fn normalize_with(
        body: &[u8],
        content_type: Option<&str>,
        query: Option<&str>,
    ) -> Result<Vec<Alert>, InvalidPayload> {
        let mut headers = HeaderMap::new();
        if let Some(content_type) = content_type {
            headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        }
        let inbound = Inbound {
            headers: &headers,
            query,
            body,
            received_at: Utc::now(),
        };
        UptimeKuma.normalize(&inbound, &integration())
    }

    fn normalize(body: &str) -> Result<Vec<Alert>, InvalidPayload> {
        normalize_with(body.as_bytes(), Some("application/json"), None)
    }

    fn one(body: &str) -> Alert {
        let mut alerts = normalize(body).unwrap();
        assert_eq!(alerts.len(), 1);
        alerts.remove(0)
    }

    fn refused_with(body: &[u8], content_type: Option<&str>) -> Vec<String> {
        normalize_with(body, content_type, None)
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    fn refused(body: &str) -> Vec<String> {
        refused_with(body.as_bytes(), Some("application/json"))
    }

    fn payload(alert: &Alert) -> &Payload {
        alert.payload.as_ref().unwrap()
    }

    fn with(sample: &str, change: impl FnOnce(&mut Value)) -> String {
        let mut value: Value = serde_json::from_str(sample).unwrap();
        change(&mut value);
        value.to_string()
    }

    #[test]
    fn a_down_heartbeat_triggers_a_critical_incident_keyed_by_the_monitor() {
        let alert = one(TRIGGER);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "uptime-kuma:7");
        let payload = payload(&alert);
        assert_eq!(payload.summary, "Checkout API is down: timeout of 48000ms exceeded");
        assert_eq!(payload.severity, Severity::Critical);
        assert_eq!(payload.source, "https://checkout.example.com/health");
        assert_eq!(payload.class.as_deref(), Some("http"));
        assert_eq!(
            payload.timestamp,
            Utc.with_ymd_and_hms(2024, 9, 24, 23, 51, 35)
                .single()
                .map(|t| t + chrono::Duration::milliseconds(527))
        );
        let details = payload.custom_details.as_ref().unwrap();
        assert_eq!(details["heartbeat"]["localDateTime"], "2024-09-24 16:51:35");
        assert_eq!(details["monitor"]["name"], "Checkout API");
        // The monitor's settings are not copied.
        assert!(details["monitor"].get("dns_resolve_server").is_none());
        assert_eq!(alert.links[0].href, "https://checkout.example.com/health");
        assert_eq!(alert.client.as_deref(), Some("Uptime Kuma"));
    }

    #[test]
    fn an_up_heartbeat_resolves_the_same_key() {
        let resolve = one(RESOLVE);
        assert_eq!(resolve.event_action, Action::Resolve);
        assert_eq!(resolve.dedup_key, one(TRIGGER).dedup_key);
        assert_eq!(payload(&resolve).summary, "Checkout API is up: 200 - OK");
    }

    #[test]
    fn the_test_button_is_accepted_without_an_incident() {
        assert_eq!(normalize(TEST).unwrap(), Vec::new());
        // A certificate notice has a monitor but no heartbeat either.
        let notice = with(TRIGGER, |v| v["heartbeat"] = Value::Null);
        assert_eq!(normalize(&notice).unwrap(), Vec::new());
    }

    #[test]
    fn pending_and_maintenance_change_nothing() {
        for status in [PENDING, MAINTENANCE] {
            let body = with(TRIGGER, |v| v["heartbeat"]["status"] = json!(status));
            assert_eq!(normalize(&body).unwrap(), Vec::new(), "status {status}");
        }
    }

    #[test]
    fn the_form_data_body_reads_like_the_json_one() {
        let alerts = normalize_with(TRIGGER_MULTIPART, Some(MULTIPART_TYPE), None).unwrap();
        assert_eq!(alerts, normalize(TRIGGER).unwrap());
        // Without its Content-Type, the body's first line gives the boundary.
        let alerts = normalize_with(TRIGGER_MULTIPART, None, None).unwrap();
        assert_eq!(alerts, normalize(TRIGGER).unwrap());
    }

    #[test]
    fn broken_form_data_is_refused() {
        let other_boundary = "multipart/form-data; boundary=something-else";
        assert_eq!(refused_with(TRIGGER_MULTIPART, Some(other_boundary)), vec!["body"]);
        assert_eq!(
            refused_with(TRIGGER_MULTIPART, Some("multipart/form-data")),
            vec!["body"]
        );
        let renamed = String::from_utf8(TRIGGER_MULTIPART.to_vec())
            .unwrap()
            .replace("name=\"data\"", "name=\"payload\"");
        assert_eq!(refused_with(renamed.as_bytes(), Some(MULTIPART_TYPE)), vec!["data"]);
        let not_json = String::from_utf8(TRIGGER_MULTIPART.to_vec())
            .unwrap()
            .replace("{\"heartbeat\"", "heartbeat");
        assert_eq!(refused_with(not_json.as_bytes(), Some(MULTIPART_TYPE)), vec!["data"]);
    }

    #[test]
    fn the_get_method_query_is_read() {
        let document: Value = serde_json::from_str(TRIGGER).unwrap();
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", "77777777777777777777777777777777")
            .append_pair("msg", document["msg"].as_str().unwrap())
            .append_pair("heartbeat", &document["heartbeat"].to_string())
            .append_pair("monitor", &document["monitor"].to_string())
            .finish();
        let alerts = normalize_with(b"", None, Some(&query)).unwrap();
        assert_eq!(alerts, normalize(TRIGGER).unwrap());
        let test = normalize_with(b"", None, Some("msg=Tocsin+Testing")).unwrap();
        assert_eq!(test, Vec::new());
        let broken = normalize_with(b"", None, Some("heartbeat=%7B")).unwrap_err();
        assert_eq!(broken.errors[0].field, "heartbeat");
    }

    #[test]
    fn the_monitor_id_falls_back_to_the_heartbeats_and_non_http_monitors_name_their_host() {
        let body = with(TRIGGER, |v| {
            let monitor = v["monitor"].as_object_mut().unwrap();
            monitor.remove("id");
            monitor.insert("type".into(), json!("port"));
            monitor.insert("url".into(), json!("https://"));
            monitor.insert("hostname".into(), json!("db.internal"));
            monitor.insert("port".into(), json!(5432));
        });
        let alert = one(&body);
        assert_eq!(alert.dedup_key.as_str(), "uptime-kuma:7");
        assert_eq!(payload(&alert).source, "db.internal:5432");
        assert!(alert.links.is_empty());
    }

    #[test]
    fn a_url_with_a_wide_character_where_the_scheme_ends_is_not_a_panic() {
        // Found by `tests/fuzz/run 60` (provider_uptime_kuma): byte 8 of
        // the URL falls inside 'Ѧ', so slicing the scheme off panicked.
        let body = with(TRIGGER, |v| {
            v["monitor"]["url"] = json!("https:/Ѧheckout.example.com/health");
            v["monitor"]["hostname"] = json!("checkout.example.com");
        });
        let alert = one(&body);
        assert_eq!(payload(&alert).source, "checkout.example.com");
        assert!(is_http_url("HTTPS://Ѧ.example.com"));
        assert!(!is_http_url("http:/Ѧ"));
    }

    #[test]
    fn a_quoted_status_from_a_custom_template_is_read() {
        let body = with(RESOLVE, |v| v["heartbeat"]["status"] = json!("1"));
        assert_eq!(one(&body).event_action, Action::Resolve);
    }

    #[test]
    fn bad_statuses_missing_ids_and_bad_bodies_are_refused_by_name() {
        let body = with(TRIGGER, |v| v["heartbeat"]["status"] = json!(9));
        assert_eq!(refused(&body), vec!["heartbeat.status"]);
        let body = with(TRIGGER, |v| {
            v["heartbeat"].as_object_mut().unwrap().remove("status");
            v["heartbeat"].as_object_mut().unwrap().remove("monitorID");
            v["monitor"].as_object_mut().unwrap().remove("id");
        });
        assert_eq!(refused(&body), vec!["heartbeat.status", "monitor.id"]);
        let body = with(TRIGGER, |v| v["heartbeat"] = json!("down"));
        assert_eq!(refused(&body), vec!["heartbeat"]);
        let body = with(TRIGGER, |v| v["monitor"] = json!([7]));
        assert_eq!(refused(&body), vec!["monitor"]);
        assert_eq!(refused(r#"{"text": "custom template gone wrong"}"#), vec!["heartbeat"]);
        assert_eq!(refused("{"), vec!["body"]);
        assert_eq!(refused("[]"), vec!["body"]);
        assert_eq!(refused_with(b"", None), vec!["body"]);
    }

    /// Renders the published Liquid template the way Uptime Kuma does for its
    /// three variables (`| json` is JSON.stringify).
    fn render_custom_body(sample: &str) -> String {
        let document: Value = serde_json::from_str(sample).unwrap();
        CUSTOM_BODY
            .replace("{{ heartbeatJSON | json }}", &document["heartbeat"].to_string())
            .replace("{{ monitorJSON | json }}", &document["monitor"].to_string())
            .replace("{{ msg | json }}", &document["msg"].to_string())
    }

    #[test]
    fn the_published_custom_body_renders_the_default_document() {
        assert!(!render_custom_body(TRIGGER).contains("{{"));
        assert_eq!(
            normalize(&render_custom_body(TRIGGER)).unwrap(),
            normalize(TRIGGER).unwrap()
        );
        assert_eq!(
            normalize(&render_custom_body(RESOLVE)).unwrap(),
            normalize(RESOLVE).unwrap()
        );
        assert_eq!(normalize(&render_custom_body(TEST)).unwrap(), Vec::new());
    }

    #[test]
    fn through_ingest_signatures_and_bodies_get_the_right_answers() {
        let (status, store) = post(TRIGGER.as_bytes(), &[], false);
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(store.queued_events().len(), 1);
        // With a secret set, it must come verbatim in X-Tocsin-Secret.
        assert_eq!(post(TRIGGER.as_bytes(), &[], true).0, StatusCode::UNAUTHORIZED);
        let wrong = [("x-tocsin-secret", "not-the-secret-at-all")];
        assert_eq!(post(TRIGGER.as_bytes(), &wrong, true).0, StatusCode::UNAUTHORIZED);
        let right = [("x-tocsin-secret", SECRET)];
        let (status, store) = post(TRIGGER.as_bytes(), &right, true);
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(store.queued_events().len(), 1);
        // A body signature is no substitute: the header is what is checked.
        let signed = format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), TRIGGER.as_bytes()));
        assert_eq!(
            post(TRIGGER.as_bytes(), &[("x-signature", &signed)], true).0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(post(b"{", &[], false).0, StatusCode::BAD_REQUEST);
        // The test button: accepted, nothing queued.
        let (status, store) = post(TEST.as_bytes(), &[], false);
        assert_eq!(status, StatusCode::ACCEPTED);
        assert!(store.queued_events().is_empty());
        // Form-data through the whole path.
        let (status, store) = post(TRIGGER_MULTIPART, &[("content-type", MULTIPART_TYPE)], false);
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(store.queued_events()[0].dedup_key().as_str(), "uptime-kuma:7");
    }
}
