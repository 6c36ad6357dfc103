//! The fuzz harness: what every target in fuzz_targets/ shares. Each target
//! is one line that hands libFuzzer's bytes to a function here, so the
//! checks can be read (and reused) in one place.
//!
//! Every check is an `assert!`: a panic is what libFuzzer reports as a
//! crash, with the input that caused it.
//!
//! An input is a request: `meta \0 body`. The meta part, before the first
//! NUL byte, holds one item a line: `?query` or `Name: value` (a header).
//! An input without a NUL byte is a body alone, sent with `?token=KEY`.
//! Seeds are written in this form by seeds.py from events/.

use std::borrow::Cow;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use chrono::{DateTime, TimeZone, Utc};
use http::{HeaderMap, HeaderName, HeaderValue};

pub mod config;
pub mod dedup;
pub mod email;
pub mod provider;
pub mod signature;
pub mod sns;

/// The integration key of every fuzzed integration: the one the email
/// samples in events/email are addressed to.
pub const KEY: &str = "0123456789abcdef0123456789abcdef";

/// The integration secret when one is set. No seed carries it, and a
/// fuzzer cannot guess it: a request that passes a check with it has found
/// a way around the check, and an error that shows it leaks it.
pub const SECRET: &str = "fuzz-secret-in-no-input-7c1d93e05ab4";

/// When every request is received (unless the input says otherwise): a
/// fixed time, so that a crash replays exactly.
pub fn received_at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 6, 1, 12, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// One decoded fuzz input.
#[derive(Debug)]
pub struct Request<'a> {
    pub headers: HeaderMap,
    pub query: Option<String>,
    pub body: &'a [u8],
    /// The meta part as read (`?token=KEY` for an input without one).
    pub meta: Cow<'a, [u8]>,
    /// The meta part's lines that are neither a query nor a valid header,
    /// for targets that give them a meaning of their own.
    pub other: Vec<&'a [u8]>,
}

impl<'a> Request<'a> {
    pub fn decode(data: &'a [u8]) -> Self {
        let Some(nul) = data.iter().position(|&b| b == 0) else {
            let query = format!("token={KEY}");
            return Request {
                headers: HeaderMap::new(),
                meta: Cow::Owned(format!("?{query}").into_bytes()),
                query: Some(query),
                body: data,
                other: Vec::new(),
            };
        };
        let (meta, body) = (&data[..nul], &data[nul + 1..]);
        let mut request = Request {
            headers: HeaderMap::new(),
            query: None,
            body,
            meta: Cow::Borrowed(meta),
            other: Vec::new(),
        };
        for line in meta.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            if let Some(query) = line.strip_prefix(b"?") {
                request.query = Some(String::from_utf8_lossy(query).into_owned());
                continue;
            }
            let header = line.iter().position(|&b| b == b':').and_then(|colon| {
                let name = HeaderName::from_bytes(line[..colon].trim_ascii()).ok()?;
                let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
                Some((name, value))
            });
            match header {
                Some((name, value)) => {
                    request.headers.append(name, value);
                }
                None => request.other.push(line),
            }
        }
        request
    }

    /// How often `needle` occurs in the request as read, ignoring ASCII case.
    pub fn occurrences(&self, needle: &str) -> usize {
        occurrences(&self.meta, needle) + occurrences(self.body, needle)
    }
}

/// Runs a future that never waits (the in-memory stores, SNS certificates
/// read from a folder) to its end, without a runtime.
pub fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        // The harness's own mistake, not a finding: every port here answers at once.
        Poll::Pending => panic!("harness: a future waited on I/O"),
    }
}

/// How often `needle` occurs in `haystack`, ignoring ASCII case.
pub fn occurrences(haystack: &[u8], needle: &str) -> usize {
    let needle = needle.as_bytes();
    if needle.is_empty() || haystack.len() < needle.len() {
        return 0;
    }
    haystack
        .windows(needle.len())
        .filter(|window| window.eq_ignore_ascii_case(needle))
        .count()
}

/// Panics when `text` shows the secret, which no input ever carries.
pub fn assert_no_secret(what: &str, text: &[u8]) {
    assert!(
        occurrences(text, SECRET) == 0,
        "{what} shows the integration's secret: {}",
        String::from_utf8_lossy(text)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_alone_is_sent_with_the_key_in_the_query() {
        let request = Request::decode(b"{\"a\": 1}");
        assert_eq!(request.query.as_deref(), Some(format!("token={KEY}").as_str()));
        assert!(request.headers.is_empty());
        assert_eq!(request.body, b"{\"a\": 1}");
    }

    #[test]
    fn the_meta_part_holds_the_query_and_headers() {
        let request = Request::decode(b"?to=x\r\nX-GitHub-Event: ping\nnot a header\n\0body");
        assert_eq!(request.query.as_deref(), Some("to=x"));
        assert_eq!(request.headers["x-github-event"], "ping");
        assert_eq!(request.other, [b"not a header".as_slice()]);
        assert_eq!(request.body, b"body");
    }

    #[test]
    fn occurrences_ignore_ascii_case() {
        assert_eq!(occurrences(b"abcABCabc", "abc"), 3);
        assert_eq!(occurrences(b"ab", "abc"), 0);
    }
}
