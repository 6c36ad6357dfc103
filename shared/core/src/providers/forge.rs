//! What the code-hosting providers (GitHub, GitLab, Bitbucket Cloud) share:
//! one JSON object per delivery, a handful of timestamp formats, keys built
//! from names people can read, and how loud a failed build is.

use chrono::{DateTime, NaiveDateTime, Utc};
use http::HeaderMap;
use serde::de::DeserializeOwned;

use crate::event::{DedupKey, FieldError, Link, Severity};
use crate::providers::InvalidPayload;

/// Parses a body that must be one JSON object, naming the path of a value
/// of the wrong type (`workflow_run.workflow_id`) rather than the whole body.
pub(super) fn parse_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, InvalidPayload> {
    // serde would read an array into a struct field by field, and a
    // `#[serde(default)]` struct out of `[]`: only an object is a delivery.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(InvalidPayload::field("body", "must be one JSON object"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            InvalidPayload::unreadable(inner)
        } else {
            InvalidPayload::field(path, format!("has the wrong type: {inner}"))
        }
    })
}

/// A header's value, trimmed, when it is present, readable and not blank.
pub(super) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    non_blank(headers.get(name).and_then(|v| v.to_str().ok()))
}

pub(super) fn non_blank(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// The value of a field the event cannot do without; records the field as
/// missing (and answers "") otherwise, so that every missing field is named.
pub(super) fn required<'a>(value: Option<&'a str>, field: &str, errors: &mut Vec<FieldError>) -> &'a str {
    non_blank(value).unwrap_or_else(|| {
        errors.push(FieldError::new(field, "is missing"));
        ""
    })
}

/// A dedup key from readable parts joined by `:`. Callers put the one part
/// that may itself contain `:` (a check or build name) last, so two
/// different events never join to the same key.
pub(super) fn key(parts: &[&str]) -> DedupKey {
    DedupKey::parse(&parts.join(":")).unwrap_or_else(|_| DedupKey::digest_of(parts))
}

/// RFC 3339, and GitLab's `2016-08-12 15:23:28 UTC` and
/// `2022-04-01 15:00:27 +0800`. Anything else is no timestamp: the event is
/// then ordered by when Tocsin received it, which is always safe.
pub(super) fn parse_time(value: Option<&str>) -> Option<DateTime<Utc>> {
    let value = non_blank(value)?;
    if let Ok(time) = DateTime::parse_from_rfc3339(value) {
        return Some(time.with_timezone(&Utc));
    }
    if let Ok(time) = DateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S %z") {
        return Some(time.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S UTC")
        .ok()
        .map(|naive| naive.and_utc())
}

/// A failed build on the default branch is an error: what ships is broken.
/// On any other branch it is a warning, left to routing to page or not.
/// When the default branch is not known it counts as the default.
pub(super) fn build_severity(branch: Option<&str>, default_branch: Option<&str>) -> Severity {
    match (non_blank(branch), non_blank(default_branch)) {
        (Some(branch), Some(default)) if branch == default => Severity::Error,
        (_, Some(_)) => Severity::Warning,
        (_, None) => Severity::Error,
    }
}

/// A link when the provider sent its address.
pub(super) fn link(href: Option<&str>, text: &str) -> Option<Link> {
    non_blank(href).map(|href| Link {
        href: href.to_owned(),
        text: Some(text.to_owned()),
    })
}

/// All the payload's problems at once, or none.
pub(super) fn check(errors: Vec<FieldError>, message: &str) -> Result<(), InvalidPayload> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(InvalidPayload::new(message, errors))
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn times_in_each_providers_format_are_read() {
        let expected = Utc.with_ymd_and_hms(2016, 8, 12, 15, 26, 29).unwrap();
        assert_eq!(parse_time(Some("2016-08-12T15:26:29Z")), Some(expected));
        assert_eq!(parse_time(Some("2016-08-12 15:26:29 UTC")), Some(expected));
        assert_eq!(parse_time(Some("2016-08-12 23:26:29 +0800")), Some(expected));
        assert_eq!(parse_time(Some("yesterday")), None);
        assert_eq!(parse_time(Some(" ")), None);
        assert_eq!(parse_time(None), None);
    }

    #[test]
    fn build_severity_depends_on_the_branch() {
        assert_eq!(build_severity(Some("main"), Some("main")), Severity::Error);
        assert_eq!(build_severity(Some("feature"), Some("main")), Severity::Warning);
        assert_eq!(build_severity(None, Some("main")), Severity::Warning);
        assert_eq!(build_severity(Some("feature"), None), Severity::Error);
    }

    #[test]
    fn only_one_json_object_is_a_delivery() {
        #[derive(serde::Deserialize, Debug, Default)]
        #[serde(default)]
        struct Thing {
            #[allow(dead_code)]
            name: Option<String>,
        }
        assert!(parse_object::<Thing>(br#" {"name": "x"}"#).is_ok());
        for body in [&b"[]"[..], b"", b"payload=%7B%7D", b"{"] {
            let error = parse_object::<Thing>(body).unwrap_err();
            assert_eq!(error.errors[0].field, "body", "{body:?}");
        }
        let error = parse_object::<Thing>(br#"{"name": 3}"#).unwrap_err();
        assert_eq!(error.errors[0].field, "name");
    }

    #[test]
    fn required_fields_are_all_named() {
        let mut errors = Vec::new();
        assert_eq!(required(Some(" a "), "a", &mut errors), "a");
        assert_eq!(required(Some(""), "b", &mut errors), "");
        assert_eq!(required(None, "c", &mut errors), "");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["b", "c"]);
    }
}
