//! A proxy in front of the AWS API server (moto) that every SDK client and
//! function binary of a test uses as its endpoint (AWS_ENDPOINT_URL). It
//! counts requests per caller, service and operation, and injects faults by
//! rule: the connection dropped before the request is forwarded, reset
//! after it was forwarded (applied, answer lost: the hard case), a delay, or
//! the throttling error the service would answer.
//!
//! Each caller (a function, the event source mappings, the test itself)
//! gets a listener of its own, so counts and rules can tell them apart.
//! Requests are forwarded one per upstream connection with
//! `Connection: close`, and every answer closes the client's connection.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How a rule fails a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The connection is closed before anything is forwarded.
    Drop,
    /// The request is forwarded and applied, then the connection is reset
    /// instead of answered.
    ResetAfter,
    /// The request waits this long before it is forwarded.
    Delay(Duration),
    /// The service's throttling error, nothing forwarded.
    Throttle,
    /// A validation error, nothing forwarded: a failure no retry mends.
    Refuse,
}

impl Fault {
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Drop => "drop",
            Fault::ResetAfter => "reset-after",
            Fault::Delay(_) => "delay",
            Fault::Throttle => "throttle",
            Fault::Refuse => "refuse",
        }
    }
}

/// Which of the matching requests a rule fails.
#[derive(Debug, Clone)]
pub enum When {
    /// Every one.
    Always,
    /// The n-th ones (1-based, counted per rule).
    Nth(Vec<u64>),
    /// Each with this probability, from a seeded generator, so a run is
    /// repeatable for a given order of requests.
    Fraction { probability: f64, seed: u64 },
}

/// A fault for the requests that match every given criterion.
#[derive(Debug, Clone)]
pub struct Rule {
    fault: Fault,
    when: When,
    callers: Vec<String>,
    service: Option<String>,
    operations: Vec<String>,
    body_contains: Option<String>,
}

impl Rule {
    /// Every request, until narrowed.
    pub fn new(fault: Fault, when: When) -> Self {
        Rule {
            fault,
            when,
            callers: Vec::new(),
            service: None,
            operations: Vec::new(),
            body_contains: None,
        }
    }

    pub fn callers<S: Into<String>>(mut self, callers: impl IntoIterator<Item = S>) -> Self {
        self.callers = callers.into_iter().map(Into::into).collect();
        self
    }

    /// The signing name: `sqs`, `dynamodb`, `sns`, `ses`, … (and
    /// `dynamodbstreams` for the stream API).
    pub fn service(mut self, service: &str) -> Self {
        self.service = Some(service.to_owned());
        self
    }

    pub fn operations<S: Into<String>>(mut self, operations: impl IntoIterator<Item = S>) -> Self {
        self.operations = operations.into_iter().map(Into::into).collect();
        self
    }

    /// Only requests whose body contains this text.
    pub fn body_contains(mut self, text: &str) -> Self {
        self.body_contains = Some(text.to_owned());
        self
    }

    fn matches(&self, caller: &str, request: &Classified, body: &[u8]) -> bool {
        (self.callers.is_empty() || self.callers.iter().any(|c| c == caller))
            && self.service.as_ref().is_none_or(|s| *s == request.service)
            && (self.operations.is_empty() || self.operations.contains(&request.operation))
            && self
                .body_contains
                .as_ref()
                .is_none_or(|text| contains(body, text.as_bytes()))
    }
}

struct ActiveRule {
    rule: Rule,
    matched: u64,
    fired: u64,
    rng: u64,
}

impl ActiveRule {
    /// Counts a matching request and decides whether it fails.
    fn fires(&mut self) -> bool {
        self.matched += 1;
        let fire = match &self.rule.when {
            When::Always => true,
            When::Nth(which) => which.contains(&self.matched),
            When::Fraction { probability, .. } => {
                let draw = (splitmix64(&mut self.rng) >> 11) as f64 / (1u64 << 53) as f64;
                draw < *probability
            }
        };
        if fire {
            self.fired += 1;
        }
        fire
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One request the proxy received.
#[derive(Debug, Clone)]
pub struct Call {
    pub caller: String,
    pub service: String,
    pub operation: String,
    /// The request body as sent.
    pub body: Arc<Vec<u8>>,
    pub response_bytes: usize,
    /// The answer's body, as the caller received it (empty without one).
    pub response: Arc<Vec<u8>>,
    /// The status the caller received; `None` when it received no answer.
    pub status: Option<u16>,
    /// The fault injected, if any.
    pub fault: Option<Fault>,
    /// Whether the request reached the AWS API server.
    pub forwarded: bool,
    /// From receiving the request to answering it (or giving up on it).
    pub elapsed: Duration,
    /// How long the AWS API server took to answer.
    pub upstream: Duration,
}

struct State {
    upstream: String,
    rules: Mutex<Vec<ActiveRule>>,
    calls: Mutex<Vec<Call>>,
    /// moto applies a DynamoDB transaction by copying the whole table and
    /// restoring the copy when a condition fails, which loses whatever
    /// another thread wrote meanwhile. DynamoDB itself is atomic per item:
    /// one DynamoDB write at a time keeps moto faithful to that (a read
    /// during a cancelled transaction may see its writes, which only makes
    /// the reader's conditional write fail and retry).
    dynamodb_writes: tokio::sync::RwLock<()>,
}

/// The proxy. Listeners live as long as the test's runtime.
#[derive(Clone)]
pub struct AwsProxy {
    state: Arc<State>,
}

impl AwsProxy {
    /// A proxy in front of `upstream` (`http://host:port`).
    pub fn new(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_owned();
        AwsProxy {
            state: Arc::new(State {
                upstream,
                rules: Mutex::new(Vec::new()),
                calls: Mutex::new(Vec::new()),
                dynamodb_writes: tokio::sync::RwLock::new(()),
            }),
        }
    }

    /// A new listener whose requests are counted under `caller`; its URL.
    pub async fn endpoint(&self, caller: &str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a proxy listener");
        let address = listener.local_addr().expect("the proxy's address");
        let state = self.state.clone();
        let caller = caller.to_owned();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (state, caller) = (state.clone(), caller.clone());
                tokio::spawn(async move {
                    let _ = serve(&state, &caller, stream).await;
                });
            }
        });
        format!("http://{address}")
    }

    pub fn add_rule(&self, rule: Rule) {
        let seed = match rule.when {
            When::Fraction { seed, .. } => seed,
            _ => 0,
        };
        self.state.rules.lock().unwrap().push(ActiveRule {
            rule,
            matched: 0,
            fired: 0,
            rng: seed,
        });
    }

    /// Removes every rule; returns how often each fired, by fault.
    pub fn clear_rules(&self) -> BTreeMap<&'static str, u64> {
        let mut fired = BTreeMap::new();
        for rule in self.state.rules.lock().unwrap().drain(..) {
            *fired.entry(rule.rule.fault.name()).or_default() += rule.fired;
        }
        fired
    }

    /// Every request so far, in the order they arrived.
    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().unwrap().clone()
    }

    /// Forgets the requests so far (counts start again from zero).
    pub fn reset_calls(&self) {
        self.state.calls.lock().unwrap().clear();
    }
}

/// What a request is, as AWS would bill it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Classified {
    service: String,
    operation: String,
}

/// Service from the SigV4 credential scope (every SDK request is signed);
/// operation from X-Amz-Target (JSON protocols: DynamoDB, SQS, Secrets
/// Manager), the Action parameter (query protocols: SNS) or the method and
/// path (REST protocols: SES v2).
fn classify(request: &RawRequest) -> Classified {
    let target = request.header("x-amz-target");
    let mut service = request
        .header("authorization")
        .and_then(|auth| auth.split("Credential=").nth(1))
        .and_then(|scope| scope.split('/').nth(3))
        .unwrap_or("unknown")
        .to_owned();
    if target.is_some_and(|t| t.starts_with("DynamoDBStreams")) {
        service = "dynamodbstreams".to_owned();
    }
    let operation = if let Some(target) = target {
        target.rsplit('.').next().unwrap_or(target).to_owned()
    } else if let Some(action) = form_value(&request.body, "Action") {
        action
    } else {
        let path = request.path.split('?').next().unwrap_or_default();
        match (request.method.as_str(), path) {
            ("POST", "/v2/email/outbound-emails") => "SendEmail".to_owned(),
            (method, path) => format!("{method} {path}"),
        }
    };
    Classified { service, operation }
}

fn form_value(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.to_owned())
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

struct RawRequest {
    method: String,
    path: String,
    version: String,
    headers: Vec<(String, String)>,
    /// The body as framed on the wire (chunked stays chunked).
    framed_body: Vec<u8>,
    /// The body's content.
    body: Vec<u8>,
}

impl RawRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The request as forwarded: one request per upstream connection.
    fn forwarded(&self) -> Vec<u8> {
        let mut out = format!("{} {} {}\r\n", self.method, self.path, self.version).into_bytes();
        for (name, value) in &self.headers {
            if !name.eq_ignore_ascii_case("connection") && !name.eq_ignore_ascii_case("keep-alive") {
                out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
        }
        out.extend_from_slice(b"connection: close\r\n\r\n");
        out.extend_from_slice(&self.framed_body);
        out
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await?;
    buffer.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Reads one HTTP/1.1 request; `None` when the client closed first.
async fn read_request(stream: &mut TcpStream) -> io::Result<Option<RawRequest>> {
    let mut buffer = Vec::with_capacity(16 * 1024);
    let head_end = loop {
        if let Some(i) = find(&buffer, b"\r\n\r\n") {
            break i + 4;
        }
        if read_more(stream, &mut buffer).await? == 0 {
            return if buffer.is_empty() {
                Ok(None)
            } else {
                Err(invalid("the request ended inside its head"))
            };
        }
    };
    let head = std::str::from_utf8(&buffer[..head_end]).map_err(|_| invalid("a request head that is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (method, path, version) = (
        request_line.next().unwrap_or_default().to_owned(),
        request_line.next().unwrap_or_default().to_owned(),
        request_line.next().unwrap_or("HTTP/1.1").to_owned(),
    );
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut request = RawRequest {
        method,
        path,
        version,
        headers,
        framed_body: Vec::new(),
        body: Vec::new(),
    };
    let chunked = request
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            if let Some((length, body)) = dechunk(&buffer[head_end..]) {
                request.framed_body = buffer[head_end..head_end + length].to_vec();
                request.body = body;
                break;
            }
            if read_more(stream, &mut buffer).await? == 0 {
                return Err(invalid("the request ended inside its chunked body"));
            }
        }
    } else {
        let length: usize = request
            .header("content-length")
            .map(|v| v.parse().map_err(|_| invalid("a bad content-length")))
            .transpose()?
            .unwrap_or(0);
        while buffer.len() < head_end + length {
            if read_more(stream, &mut buffer).await? == 0 {
                return Err(invalid("the request ended inside its body"));
            }
        }
        request.framed_body = buffer[head_end..head_end + length].to_vec();
        request.body = request.framed_body.clone();
    }
    Ok(Some(request))
}

/// A complete chunked body at the start of `data`: its framed length and
/// its content; `None` while incomplete.
fn dechunk(data: &[u8]) -> Option<(usize, Vec<u8>)> {
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let line_end = at + find(&data[at..], b"\r\n")?;
        let size_text = std::str::from_utf8(&data[at..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let end = at + find(&data[at..], b"\r\n")?;
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Some((at, body));
                }
            }
        }
        if data.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&data[at..at + size]);
        at += size + 2;
    }
}

/// Makes sure the answer tells the client the connection closes with it.
fn closing(mut response: Vec<u8>) -> Vec<u8> {
    let Some(head_end) = find(&response, b"\r\n\r\n") else {
        return response;
    };
    let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
    if !head.contains("\r\nconnection:") {
        if let Some(line_end) = find(&response, b"\r\n") {
            response.splice(line_end + 2..line_end + 2, b"connection: close\r\n".iter().copied());
        }
    }
    response
}

fn status_of(response: &[u8]) -> Option<u16> {
    let line_end = find(response, b"\r\n")?;
    std::str::from_utf8(&response[..line_end])
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// The throttling error each service answers, in its protocol.
fn throttling(request: &RawRequest, classified: &Classified, fired: u64) -> Vec<u8> {
    let json = request.header("content-type").is_some_and(|t| t.contains("json"));
    let (status, content_type, extra, body) = match classified.service.as_str() {
        "dynamodb" | "dynamodbstreams" => {
            // Both are what DynamoDB answers when it throttles; alternate.
            let code = if fired % 2 == 0 {
                "ProvisionedThroughputExceededException"
            } else {
                "ThrottlingException"
            };
            (
                400,
                "application/x-amz-json-1.0",
                String::new(),
                format!(
                    r#"{{"__type":"com.amazonaws.dynamodb.v20120810#{code}","message":"Rate of requests exceeds the allowed throughput."}}"#
                ),
            )
        }
        "sqs" if json => (
            503,
            "application/x-amz-json-1.0",
            "x-amzn-query-error: RequestThrottled;Sender\r\n".to_owned(),
            r#"{"__type":"com.amazonaws.sqs#RequestThrottled","message":"Request is throttled."}"#.to_owned(),
        ),
        "ses" => (
            429,
            "application/json",
            "x-amzn-errortype: TooManyRequestsException\r\n".to_owned(),
            r#"{"message":"Too many requests."}"#.to_owned(),
        ),
        service => {
            let code = if service == "sqs" {
                "RequestThrottled"
            } else {
                "Throttling"
            };
            let status = if service == "sqs" { 503 } else { 400 };
            (
                status,
                "text/xml",
                String::new(),
                format!(
                    "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>Rate exceeded</Message>\
                     </Error><RequestId>tocsin-proxy</RequestId></ErrorResponse>"
                ),
            )
        }
    };
    format!(
        "HTTP/1.1 {status} Throttled\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         x-amzn-requestid: tocsin-proxy-{fired}\r\n{extra}connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The validation error each service answers, in its protocol.
fn refusal(request: &RawRequest, classified: &Classified) -> Vec<u8> {
    let json = request.header("content-type").is_some_and(|t| t.contains("json"));
    let (content_type, extra, body) = match classified.service.as_str() {
        "dynamodb" | "dynamodbstreams" => (
            "application/x-amz-json-1.0",
            String::new(),
            r#"{"__type":"com.amazon.coral.validate#ValidationException","message":"Refused by the fault proxy."}"#
                .to_owned(),
        ),
        "sqs" if json => (
            "application/x-amz-json-1.0",
            "x-amzn-query-error: InvalidParameterValue;Sender\r\n".to_owned(),
            r#"{"__type":"com.amazonaws.sqs#InvalidParameterValue","message":"Refused by the fault proxy."}"#
                .to_owned(),
        ),
        "ses" => (
            "application/json",
            "x-amzn-errortype: BadRequestException\r\n".to_owned(),
            r#"{"message":"Refused by the fault proxy."}"#.to_owned(),
        ),
        _ => (
            "text/xml",
            String::new(),
            "<ErrorResponse><Error><Type>Sender</Type><Code>ValidationError</Code>\
             <Message>Refused by the fault proxy.</Message></Error><RequestId>tocsin-proxy</RequestId></ErrorResponse>"
                .to_owned(),
        ),
    };
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         x-amzn-requestid: tocsin-proxy\r\n{extra}connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Forwards one request; the whole answer and how long the server took.
async fn forward(state: &State, classified: &Classified, request: &RawRequest) -> io::Result<(Vec<u8>, Duration)> {
    let writes = [
        "TransactWriteItems",
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "BatchWriteItem",
    ];
    let (_exclusive, _shared) = match classified.service.as_str() {
        "dynamodb" if writes.contains(&classified.operation.as_str()) => {
            (Some(state.dynamodb_writes.write().await), None)
        }
        "dynamodb" | "dynamodbstreams" => (None, Some(state.dynamodb_writes.read().await)),
        _ => (None, None),
    };
    let started = Instant::now();
    let mut upstream = TcpStream::connect(&state.upstream).await?;
    upstream.write_all(&request.forwarded()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), upstream.read_to_end(&mut response))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the AWS API server did not answer in 60 s"))??;
    Ok((response, started.elapsed()))
}

async fn serve(state: &State, caller: &str, mut stream: TcpStream) -> io::Result<()> {
    let Some(request) = read_request(&mut stream).await? else {
        return Ok(());
    };
    let started = Instant::now();
    let classified = classify(&request);
    let fault = {
        let mut rules = state.rules.lock().unwrap();
        rules.iter_mut().find_map(|rule| {
            (rule.rule.matches(caller, &classified, &request.body) && rule.fires())
                .then_some((rule.rule.fault, rule.fired))
        })
    };
    let mut call = Call {
        caller: caller.to_owned(),
        service: classified.service.clone(),
        operation: classified.operation.clone(),
        body: Arc::new(request.body.clone()),
        response_bytes: 0,
        response: Arc::new(Vec::new()),
        status: None,
        fault: fault.map(|(f, _)| f),
        forwarded: false,
        elapsed: Duration::ZERO,
        upstream: Duration::ZERO,
    };
    let outcome = match fault {
        Some((Fault::Drop, _)) => {
            drop(stream);
            Ok(())
        }
        Some((fault @ (Fault::Throttle | Fault::Refuse), fired)) => {
            let answer = if fault == Fault::Throttle {
                throttling(&request, &classified, fired)
            } else {
                refusal(&request, &classified)
            };
            call.status = status_of(&answer);
            call.response_bytes = answer.len();
            answer_with(&mut stream, &answer).await
        }
        Some((Fault::ResetAfter, _)) => {
            let response = forward(state, &classified, &request).await;
            call.forwarded = true;
            if let Ok((response, upstream)) = &response {
                call.response_bytes = response.len();
                call.upstream = *upstream;
            }
            // Linger 0: the close is a reset, not an orderly end. (The
            // deprecation is about a positive linger blocking on drop.)
            #[allow(deprecated)]
            let reset = stream.set_linger(Some(Duration::ZERO));
            drop(stream);
            reset.and(response.map(|_| ()))
        }
        Some((Fault::Delay(delay), _)) => {
            tokio::time::sleep(delay).await;
            pass(state, &classified, &request, &mut stream, &mut call).await
        }
        None => pass(state, &classified, &request, &mut stream, &mut call).await,
    };
    call.elapsed = started.elapsed();
    state.calls.lock().unwrap().push(call);
    outcome
}

async fn answer_with(stream: &mut TcpStream, answer: &[u8]) -> io::Result<()> {
    stream.write_all(answer).await?;
    stream.shutdown().await
}

/// Forwards the request and hands the answer back.
async fn pass(
    state: &State,
    classified: &Classified,
    request: &RawRequest,
    stream: &mut TcpStream,
    call: &mut Call,
) -> io::Result<()> {
    let (response, upstream) = forward(state, classified, request).await?;
    let response = closing(response);
    call.upstream = upstream;
    call.forwarded = true;
    call.status = status_of(&response);
    call.response_bytes = response.len();
    call.response = Arc::new(body_of(&response));
    answer_with(stream, &response).await
}

/// The body of a complete answer, unchunked.
fn body_of(response: &[u8]) -> Vec<u8> {
    let Some(head_end) = find(response, b"\r\n\r\n") else {
        return Vec::new();
    };
    let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
    let body = &response[head_end + 4..];
    if head.contains("transfer-encoding: chunked") {
        dechunk(body).map(|(_, content)| content).unwrap_or_default()
    } else {
        body.to_vec()
    }
}
