//! Limits every ingest request meets before a provider parses it, so that
//! hostile or broken input is refused with a clear 4xx by one rule for all
//! providers: the media type the body claims, the nesting depth of a JSON
//! body, and (after normalizing) the number of alerts in one request. The
//! body size limit is per provider (`Provider::max_body_bytes`).

use http::HeaderMap;

/// A media type an endpoint reads: exact (`application/json`) or a
/// structured-syntax suffix (`+json`, RFC 6839).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    Exact(&'static str),
    Suffix(&'static str),
    /// Whatever the header says (raw email: senders label it every way).
    Any,
}

impl MediaType {
    fn matches(self, essence: &str) -> bool {
        match self {
            MediaType::Exact(name) => essence == name,
            MediaType::Suffix(suffix) => essence.ends_with(suffix) && essence.contains('/'),
            MediaType::Any => true,
        }
    }

    fn describe(self) -> String {
        match self {
            MediaType::Exact(name) => name.to_owned(),
            MediaType::Suffix(suffix) => format!("application/*{suffix}"),
            MediaType::Any => "*/*".to_owned(),
        }
    }
}

/// What JSON endpoints accept. Besides JSON itself: `text/plain`, which
/// Amazon SNS and several monitoring tools send JSON as, and
/// `application/x-www-form-urlencoded`, which `curl -d` sends by default
/// and which GitHub and the generic API use for form bodies. The body still
/// has to parse; the header only rules out bodies in another format.
pub const JSON_BODIES: &[MediaType] = &[
    MediaType::Exact("application/json"),
    MediaType::Suffix("+json"),
    MediaType::Exact("text/json"),
    MediaType::Exact("text/plain"),
    MediaType::Exact("application/x-www-form-urlencoded"),
];

/// The deepest JSON accepted. Real payloads nest a handful of levels
/// (Alertmanager 3, Datadog templates 4); serde_json's own recursion limit
/// (128) would refuse deeper input too, but with a message about the
/// parser rather than the request.
pub const MAX_JSON_DEPTH: usize = 64;

/// The most alerts one request may carry: Alertmanager groups and batched
/// webhooks stay far below it within the body size limit.
pub const MAX_ALERTS_PER_REQUEST: usize = 1000;

/// Why a request's Content-Type is refused (415).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaTypeError {
    #[error("Content-Type '{given}' is not accepted here; send one of: {accepted}")]
    Unsupported { given: String, accepted: String },
    #[error("charset '{0}' is not accepted; send UTF-8")]
    Charset(String),
}

/// Checks the Content-Type header, when there is one, against `accepted`.
/// A request without one is read as the endpoint's format: many senders
/// (and Alertmanager's older versions) leave it out.
pub fn check_media_type(headers: &HeaderMap, accepted: &[MediaType]) -> Result<(), MediaTypeError> {
    let Some(value) = headers.get(http::header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("(not text)");
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    if !accepted.iter().any(|media_type| media_type.matches(&essence)) {
        return Err(MediaTypeError::Unsupported {
            given: shorten(text),
            accepted: accepted
                .iter()
                .map(|media_type| media_type.describe())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    for parameter in parts {
        let Some((name, value)) = parameter.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("charset") {
            let charset = value.trim().trim_matches('"').to_ascii_lowercase();
            if !matches!(charset.as_str(), "utf-8" | "utf8" | "us-ascii") {
                return Err(MediaTypeError::Charset(shorten(&charset)));
            }
        }
    }
    Ok(())
}

/// Whether a body that starts as JSON nests deeper than `limit`. Strings
/// are skipped (brackets inside them do not count); anything that is not
/// JSON is left for the provider's parser to refuse.
pub fn json_too_deep(body: &[u8], limit: usize) -> bool {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    if !matches!(start.map(|i| body[i]), Some(b'{' | b'[')) {
        return false;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in body {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// At most 100 characters of something the sender gave, for an error.
fn shorten(text: &str) -> String {
    text.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn json_endpoints_take_json_text_and_curl_defaults_and_nothing_else() {
        for ok in [
            "application/json",
            "Application/JSON; charset=UTF-8",
            "application/vnd.api+json",
            "text/plain; charset=UTF-8",
            "application/x-www-form-urlencoded",
        ] {
            assert_eq!(check_media_type(&with_type(ok), JSON_BODIES), Ok(()), "{ok}");
        }
        assert_eq!(check_media_type(&HeaderMap::new(), JSON_BODIES), Ok(()));
        for refused in [
            "application/xml",
            "multipart/form-data; boundary=x",
            "image/png",
            "+json",
            "",
        ] {
            let error = check_media_type(&with_type(refused), JSON_BODIES).unwrap_err();
            assert!(
                matches!(&error, MediaTypeError::Unsupported { accepted, .. } if accepted.contains("application/json")),
                "{refused}: {error}"
            );
        }
        assert_eq!(
            check_media_type(&with_type("application/json; charset=ISO-8859-1"), JSON_BODIES),
            Err(MediaTypeError::Charset("iso-8859-1".into()))
        );
    }

    #[test]
    fn a_long_content_type_is_shortened_in_the_error() {
        let long = format!("application/{}", "x".repeat(5000));
        let error = check_media_type(&with_type(&long), JSON_BODIES).unwrap_err();
        assert!(error.to_string().len() < 400, "{error}");
    }

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(!json_too_deep(nested(64).as_bytes(), 64));
        assert!(json_too_deep(nested(65).as_bytes(), 64));
        assert!(json_too_deep(format!("  {{\"a\": {}}}", nested(64)).as_bytes(), 64));
        // Brackets in strings, escaped quotes included, do not nest.
        let in_string = format!(r#"{{"a": "{}\"{}"}}"#, "[".repeat(100), "{".repeat(100));
        assert!(!json_too_deep(in_string.as_bytes(), 64));
        // Not JSON: left to the parser.
        assert!(!json_too_deep(format!("a={}", "[".repeat(100)).as_bytes(), 64));
        // Siblings do not add up.
        let wide = format!("[{}]", vec![nested(60); 100].join(","));
        assert!(!json_too_deep(wide.as_bytes(), 64));
    }
}
