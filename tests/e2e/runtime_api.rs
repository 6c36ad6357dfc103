//! A local Lambda Runtime API: the HTTP interface the Lambda service offers
//! a function's process (GET next invocation, POST its response or error),
//! so the real function binaries run here as they do on AWS.
//!
//! One emulator serves one function process, started with
//! AWS_LAMBDA_RUNTIME_API pointing at it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Mutex as AsyncMutex};

/// How an invocation ended: the function's response, or its error report.
pub type Outcome = Result<Value, Value>;

struct Pending {
    id: String,
    event: Value,
    answer: oneshot::Sender<Outcome>,
}

#[derive(Clone)]
struct Shared {
    next: Arc<AsyncMutex<mpsc::Receiver<Pending>>>,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Outcome>>>>,
    init_error: Arc<Mutex<Option<Value>>>,
    /// When the function first asked for an invocation: its init is done.
    first_poll: Arc<Mutex<Option<Instant>>>,
}

/// A function binary running against its own Runtime API.
pub struct Function {
    name: String,
    child: Child,
    queue: mpsc::Sender<Pending>,
    shared: Shared,
    started: Instant,
    invocations: u64,
    pub stderr_path: PathBuf,
}

/// What the first invocation measured.
#[derive(Debug, Clone, Copy)]
pub struct ColdStart {
    /// From spawning the process to its first request for an invocation
    /// (what Lambda reports as Init Duration).
    pub init: Option<Duration>,
    /// From spawning the process to the first response received.
    pub to_first_response: Duration,
    /// Peak resident memory of the process so far (VmHWM), in KiB.
    pub peak_rss_kib: Option<u64>,
}

/// A workspace binary: the debug build (tests/run builds them all), or the
/// profile named by TOCSIN_FUNCTIONS_PROFILE (`release` to measure).
pub fn function_bin(name: &str) -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => crate::app::workspace_root().join(dir),
        None => crate::app::workspace_root().join("target"),
    };
    let profile = std::env::var("TOCSIN_FUNCTIONS_PROFILE").unwrap_or_else(|_| "debug".to_owned());
    let bin = target.join(&profile).join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (tests/run does; add --release for \
         TOCSIN_FUNCTIONS_PROFILE=release)",
        bin.display()
    );
    bin
}

impl Function {
    /// Starts the Runtime API on a free port and the binary against it.
    pub async fn start(binary: &Path, env: &[(&str, &str)], scratch: &Path) -> Function {
        let (queue, receiver) = mpsc::channel(16);
        let shared = Shared {
            next: Arc::new(AsyncMutex::new(receiver)),
            waiting: Arc::new(Mutex::new(HashMap::new())),
            init_error: Arc::new(Mutex::new(None)),
            first_poll: Arc::new(Mutex::new(None)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the runtime API");
        let addr = listener.local_addr().expect("runtime API address");
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });

        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stderr_path = scratch.join(format!("{name}.stderr"));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let started = Instant::now();
        let child = Command::new(binary)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", &name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
            .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Function {
            name,
            child,
            queue,
            shared,
            started,
            invocations: 0,
            stderr_path,
        }
    }

    /// Invokes the function once with `event` and waits for its outcome.
    pub async fn invoke(&mut self, event: Value) -> Outcome {
        self.invocations += 1;
        let id = format!("{}-{:06}", self.name, self.invocations);
        let (answer, outcome) = oneshot::channel();
        self.queue
            .send(Pending { id, event, answer })
            .await
            .expect("the runtime API is running");
        match tokio::time::timeout(Duration::from_secs(30), outcome).await {
            Ok(Ok(outcome)) => outcome,
            _ => panic!(
                "{} gave no answer in 30 s (init error: {:?}); its stderr:\n{}",
                self.name,
                self.shared.init_error.lock().unwrap().clone(),
                std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
            ),
        }
    }

    /// The first invocation, timed from process start.
    pub async fn cold_invoke(&mut self, event: Value) -> (Outcome, ColdStart) {
        assert_eq!(self.invocations, 0, "only the first invocation is cold");
        let outcome = self.invoke(event).await;
        let to_first_response = self.started.elapsed();
        (
            outcome,
            ColdStart {
                init: self.shared.first_poll.lock().unwrap().map(|at| at - self.started),
                to_first_response,
                peak_rss_kib: peak_rss_kib(self.child.id()),
            },
        )
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn next(State(shared): State<Shared>) -> Response {
    shared.first_poll.lock().unwrap().get_or_insert_with(Instant::now);
    // Long poll, as the real API does: the function waits here between
    // invocations.
    let pending = shared.next.lock().await.recv().await;
    let Some(pending) = pending else {
        return StatusCode::GONE.into_response();
    };
    shared
        .waiting
        .lock()
        .unwrap()
        .insert(pending.id.clone(), pending.answer);
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() + 30_000)
        .unwrap_or_default();
    let mut headers = HeaderMap::new();
    let header = |value: &str| HeaderValue::from_str(value).expect("a header value");
    headers.insert("lambda-runtime-aws-request-id", header(&pending.id));
    headers.insert("lambda-runtime-deadline-ms", header(&deadline.to_string()));
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        header("arn:aws:lambda:us-east-1:123456789012:function:tocsin-local"),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        header("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"),
    );
    headers.insert("content-type", header("application/json"));
    (StatusCode::OK, headers, pending.event.to_string()).into_response()
}

fn settle(shared: &Shared, id: &str, outcome: Outcome) -> StatusCode {
    match shared.waiting.lock().unwrap().remove(id) {
        Some(answer) => {
            let _ = answer.send(outcome);
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

fn json_or_text(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

async fn response(State(shared): State<Shared>, UrlPath(id): UrlPath<String>, body: Bytes) -> StatusCode {
    settle(&shared, &id, Ok(json_or_text(&body)))
}

async fn error(State(shared): State<Shared>, UrlPath(id): UrlPath<String>, body: Bytes) -> StatusCode {
    settle(&shared, &id, Err(json_or_text(&body)))
}

async fn init_error(State(shared): State<Shared>, body: Bytes) -> StatusCode {
    *shared.init_error.lock().unwrap() = Some(json_or_text(&body));
    StatusCode::ACCEPTED
}
