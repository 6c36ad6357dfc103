//! HTTP answers built by the domain and sent unchanged by API Gateway or
//! the local router: every one is JSON (or empty), so both runtimes agree.

use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

pub type Answer = Response<Vec<u8>>;

pub fn json_answer<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Answer {
    // Serializing our own response types cannot fail; fall back to an empty
    // object rather than panic on a request path.
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut answer = Response::new(bytes);
    *answer.status_mut() = status;
    answer
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    answer
}

pub fn empty_answer(status: StatusCode) -> Answer {
    let mut answer = Response::new(Vec::new());
    *answer.status_mut() = status;
    answer
}

/// The error body every endpoint uses, in PagerDuty's shape:
/// `{"status": "...", "message": "...", "errors": [...]}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub status: &'a str,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

pub fn error_answer(status: StatusCode, label: &str, message: impl Into<String>, errors: Vec<String>) -> Answer {
    json_answer(
        status,
        &ErrorBody {
            status: label,
            message: message.into(),
            errors,
        },
    )
}
