//! A local Lambda Runtime API: the HTTP interface the Lambda service offers
//! a function's process (GET next invocation, POST its response or error),
//! so the real function binaries run here as they do on AWS.
//!
//! One emulator serves one function process, started with
//! AWS_LAMBDA_RUNTIME_API pointing at it. Shared by the end-to-end tests
//! (tests/e2e/runtime_api.rs) and the cold-start harness (tests/coldstart),
//! so both time the same thing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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

/// Why a function process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind the runtime API")]
    Bind(#[source] std::io::Error),
    #[error("cannot create {}", path.display())]
    Stderr {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why an invocation has no outcome.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("the runtime API of {0} is gone")]
    Closed(String),
    #[error("{name} gave no answer in {} s (init error: {init_error:?}); its stderr:\n{stderr}", within.as_secs())]
    NoAnswer {
        name: String,
        within: Duration,
        init_error: Option<Value>,
        stderr: String,
    },
    #[error("only the first invocation of {0} is cold")]
    NotCold(String),
}

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

/// A poisoned lock only means another handler panicked; the data is plain.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A function process running against its own Runtime API.
pub struct Function {
    name: String,
    child: Child,
    queue: mpsc::Sender<Pending>,
    shared: Shared,
    started: Instant,
    invocations: u64,
    stderr_path: PathBuf,
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

impl Function {
    /// Starts the Runtime API on a free port, then `command` against it with
    /// only the environment Lambda gives a function (PATH, AWS_LAMBDA_*, the
    /// region, credentials) plus `env`. `name` is the function's name; its
    /// stderr goes to `<scratch>/<name>.stderr`.
    pub async fn spawn(
        mut command: Command,
        name: &str,
        env: &[(&str, &str)],
        scratch: &Path,
    ) -> Result<Function, StartError> {
        let (queue, receiver) = mpsc::channel(16);
        let shared = Shared {
            next: Arc::new(AsyncMutex::new(receiver)),
            waiting: Arc::new(Mutex::new(HashMap::new())),
            init_error: Arc::new(Mutex::new(None)),
            first_poll: Arc::new(Mutex::new(None)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(StartError::Bind)?;
        let addr = listener.local_addr().map_err(StartError::Bind)?;
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });

        let stderr_path = scratch.join(format!("{name}.stderr"));
        let stderr = std::fs::File::create(&stderr_path).map_err(|source| StartError::Stderr {
            path: stderr_path.clone(),
            source,
        })?;
        let program = PathBuf::from(command.get_program());
        let started = Instant::now();
        let child = command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
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
            .map_err(|source| StartError::Spawn { program, source })?;
        Ok(Function {
            name: name.to_owned(),
            child,
            queue,
            shared,
            started,
            invocations: 0,
            stderr_path,
        })
    }

    /// Invokes the function once with `event` and waits up to `within` for
    /// its outcome.
    pub async fn call(&mut self, event: Value, within: Duration) -> Result<Outcome, InvokeError> {
        self.invocations += 1;
        let id = format!("{}-{:06}", self.name, self.invocations);
        let (answer, outcome) = oneshot::channel();
        self.queue
            .send(Pending { id, event, answer })
            .await
            .map_err(|_| InvokeError::Closed(self.name.clone()))?;
        match tokio::time::timeout(within, outcome).await {
            Ok(Ok(outcome)) => Ok(outcome),
            _ => Err(InvokeError::NoAnswer {
                name: self.name.clone(),
                within,
                init_error: lock(&self.shared.init_error).clone(),
                stderr: std::fs::read_to_string(&self.stderr_path).unwrap_or_default(),
            }),
        }
    }

    /// The first invocation, timed from process start.
    pub async fn cold_call(&mut self, event: Value, within: Duration) -> Result<(Outcome, ColdStart), InvokeError> {
        if self.invocations != 0 {
            return Err(InvokeError::NotCold(self.name.clone()));
        }
        let outcome = self.call(event, within).await?;
        let to_first_response = self.started.elapsed();
        let cold = ColdStart {
            init: lock(&self.shared.first_poll).map(|at| at - self.started),
            to_first_response,
            peak_rss_kib: peak_rss_kib(self.child.id()),
        };
        Ok((outcome, cold))
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
    lock(&shared.first_poll).get_or_insert_with(Instant::now);
    // Long poll, as the real API does: the function waits here between
    // invocations.
    let pending = shared.next.lock().await.recv().await;
    let Some(pending) = pending else {
        return StatusCode::GONE.into_response();
    };
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() + 30_000)
        .unwrap_or_default();
    let mut headers = HeaderMap::new();
    let values = [
        ("lambda-runtime-aws-request-id", pending.id.clone()),
        ("lambda-runtime-deadline-ms", deadline.to_string()),
        (
            "lambda-runtime-invoked-function-arn",
            "arn:aws:lambda:us-east-1:123456789012:function:tocsin-local".to_owned(),
        ),
        (
            "lambda-runtime-trace-id",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1".to_owned(),
        ),
        ("content-type", "application/json".to_owned()),
    ];
    for (name, value) in values {
        match HeaderValue::from_str(&value) {
            Ok(value) => {
                headers.insert(name, value);
            }
            Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }
    lock(&shared.waiting).insert(pending.id, pending.answer);
    (StatusCode::OK, headers, pending.event.to_string()).into_response()
}

fn settle(shared: &Shared, id: &str, outcome: Outcome) -> StatusCode {
    match lock(&shared.waiting).remove(id) {
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
    *lock(&shared.init_error) = Some(json_or_text(&body));
    StatusCode::ACCEPTED
}
