//! The shared test app: the real `tocsin dev` as a child process, on a free
//! port, with its own data folder and config, stopped when dropped.

use std::fmt;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// How long `tocsin dev` may take to answer GET /healthz.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// How long the asynchronous pipeline may take to show an effect.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// Long enough for every worker to poll its queue a few times (they poll
/// every 500 ms), so that "nothing happened" is a meaningful observation.
const SETTLE: Duration = Duration::from_millis(1500);

/// Keys of [`TEST_CONFIG`], one constant per integration and API key.
pub mod keys {
    pub const CHECKOUT_PROMETHEUS: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
    pub const CHECKOUT_EVENTS: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
    pub const CHECKOUT_WEBHOOK: &str = "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3";
    pub const CHECKOUT_GENERIC: &str = "d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4";
    pub const CHECKOUT_DISABLED: &str = "e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5";
    pub const PAYMENTS_SIGNED: &str = "f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6";
    pub const PAYMENTS_MAPPED: &str = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a";
    pub const PAYMENTS_EVENTS: &str = "1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b";
    /// Well formed, but no integration has it.
    pub const UNKNOWN: &str = "9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c";
    pub const PAYMENTS_SECRET: &str = "e2e-signing-secret-0123456789";

    /// API key with every scope.
    pub const OPS: &str = "sk_e2e_ops_0123456789abcdef";
    /// API key with incidents:read only.
    pub const READER: &str = "sk_e2e_reader_0123456789abcdef";
    /// API key with events:write only.
    pub const EVENTS_ONLY: &str = "sk_e2e_events_0123456789abcdef";

    /// Keys of the shipped sample config (cli/tocsin.sample.yaml).
    pub const SAMPLE_PROMETHEUS: &str = "11111111111111111111111111111111";
    pub const SAMPLE_API_KEY: &str = "sk_local_0123456789abcdef";
}

/// The config most tests run with: two services, every provider, a disabled
/// integration, a signed one, one with field paths, and three API keys.
pub const TEST_CONFIG: &str = r##"
api_keys:
  - {name: ops, key: sk_e2e_ops_0123456789abcdef, scopes: [events:write, incidents:read, incidents:write]}
  - {name: reader, key: sk_e2e_reader_0123456789abcdef, scopes: [incidents:read]}
  - {name: sender, key: sk_e2e_events_0123456789abcdef, scopes: [events:write]}

services:
  - id: checkout
    name: Checkout
    integrations:
      - {id: checkout-am, type: prometheus, key: a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1}
      - {id: checkout-pd, type: events-v2, key: b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2}
      - {id: checkout-hook, type: webhook, key: c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3}
      - {id: checkout-goalert, type: generic, key: d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4}
      - {id: checkout-off, type: webhook, key: e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5, enabled: false}
    notify:
      email: [oncall@example.com]
      sms: ["+15555550123"]
      slack: "#checkout"
      on: [triggered, acknowledged, resolved]
      min_severity: info

  - id: payments
    name: Payments
    integrations:
      - id: payments-signed
        type: webhook
        key: f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6
        secret: e2e-signing-secret-0123456789
      - id: payments-mapped
        type: webhook
        key: 0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a
        fields:
          summaryField: alert.title
          severityField: alert.level
          dedupKeyField: alert.id
          actionField: alert.state
          triggerValues: [raised]
          resolveValues: [cleared]
      - {id: payments-pd, type: events-v2, key: 1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b}
    notify:
      email: [payments-oncall@example.com]
      slack: "#payments"

settings:
  email_from: tocsin@example.com
  public_url: http://127.0.0.1:3000
  # Tests count every SMS; throttling (on by default) is throttle.rs's subject.
  throttle: {sms: {enabled: false}}
"##;

/// The workspace root: this crate lives in `<workspace>/tests`.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// A file of the workspace, e.g. `events/prometheus/firing.json`.
pub fn fixture(relative: &str) -> Vec<u8> {
    let path = workspace_root().join(relative);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}

/// The `tocsin` binary under test: $TOCSIN_BIN, else `debug/tocsin` in the
/// cargo target folder ($CARGO_TARGET_DIR or `<workspace>/target`).
pub fn tocsin_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TOCSIN_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "TOCSIN_BIN={} is not a file", bin.display());
        return bin;
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    };
    let bin = target
        .join("debug")
        .join(format!("tocsin{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "the tocsin binary is missing at {}: run `cargo build -p tocsin` first \
         (tests/run does), or point TOCSIN_BIN at it",
        bin.display()
    );
    bin
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind an ephemeral port");
    listener.local_addr().expect("ephemeral port has no address").port()
}

/// Polls `probe` until it yields a value, or panics naming `what` once
/// `deadline` has passed.
pub async fn wait_for_within<T, F, Fut>(deadline: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if started.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`wait_for_within`] with the default deadline.
pub async fn wait_for<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_for_within(DEADLINE, what, probe).await
}

/// Lets the queues drain, before asserting that something did NOT happen.
pub async fn settle() {
    tokio::time::sleep(SETTLE).await;
}

/// An HTTP answer, read whole.
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    /// The body as JSON; panics (showing the answer) if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {self}"))
    }

    /// Asserts the status, showing the whole answer when it differs.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "unexpected answer: {self}");
        self
    }

    /// Asserts an error answer as every endpoint gives it: this status, a
    /// JSON object with a non-empty "message".
    #[track_caller]
    pub fn expect_error(&self, status: u16) -> Value {
        self.expect(status);
        let body = self.json();
        let message = body["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "error answer without a message: {self}");
        body
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: String = self.text.chars().take(2000).collect();
        write!(f, "HTTP {} {}", self.status, text)
    }
}

/// One running `tocsin dev`, killed on drop.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub client: reqwest::Client,
    /// The API key (all scopes) of the config in use.
    pub api_key: String,
    dir: TempDir,
    config: Option<PathBuf>,
    child: Option<Child>,
    starts: u32,
    /// RUST_LOG of the process: TOCSIN_E2E_LOG, else info.
    log: String,
    /// Extra environment of the process (e.g. TOCSIN_SLACK_API_URL).
    env: Vec<(String, String)>,
}

impl TestApp {
    /// `tocsin dev` with [`TEST_CONFIG`].
    pub async fn start() -> Self {
        Self::start_with(Some(TEST_CONFIG), keys::OPS).await
    }

    /// `tocsin dev` without -f: the built-in sample config.
    pub async fn start_with_sample_config() -> Self {
        Self::start_with(None, keys::SAMPLE_API_KEY).await
    }

    /// `tocsin dev -f <yaml written to the app's folder>`; `api_key` must be
    /// one of its keys with incidents:read and incidents:write.
    pub async fn start_with(config: Option<&str>, api_key: &str) -> Self {
        let log = std::env::var("TOCSIN_E2E_LOG").unwrap_or_else(|_| "info".into());
        Self::start_logging(config, api_key, &log).await
    }

    /// As [`start_with`](Self::start_with), with extra environment for the
    /// process.
    pub async fn start_with_env(config: Option<&str>, api_key: &str, env: &[(&str, &str)]) -> Self {
        let log = std::env::var("TOCSIN_E2E_LOG").unwrap_or_else(|_| "info".into());
        Self::start_full(config, api_key, &log, env).await
    }

    /// As [`start_with`](Self::start_with), logging at `log` (RUST_LOG).
    pub async fn start_logging(config: Option<&str>, api_key: &str, log: &str) -> Self {
        Self::start_full(config, api_key, log, &[]).await
    }

    async fn start_full(config: Option<&str>, api_key: &str, log: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tocsin-e2e-")
            .tempdir()
            .expect("cannot create a temporary folder");
        let config = config.map(|yaml| {
            let path = dir.path().join("tocsin.yaml");
            std::fs::write(&path, yaml).expect("cannot write the test config");
            path
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("cannot build the HTTP client");
        let mut app = TestApp {
            base: String::new(),
            client,
            api_key: api_key.to_owned(),
            dir,
            config,
            child: None,
            starts: 0,
            log: log.to_owned(),
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        };
        app.launch().await;
        app
    }

    /// The folder given as --data (created by tocsin itself).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log_path(&self, stream: &str) -> PathBuf {
        self.dir.path().join(format!("tocsin-{}.{stream}", self.starts))
    }

    /// What the current process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log_path("stderr")).unwrap_or_default()
    }

    /// What the current process wrote to stdout so far (the outbox's
    /// console lines among it).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.log_path("stdout")).unwrap_or_default()
    }

    async fn launch(&mut self) {
        let bin = tocsin_bin();
        // A free port can be taken between probing and binding: try again
        // on another one rather than fail on that race.
        for attempt in 1..=3 {
            self.starts += 1;
            let port = free_port();
            let stdout = File::create(self.log_path("stdout")).expect("cannot create the stdout log");
            let stderr = File::create(self.log_path("stderr")).expect("cannot create the stderr log");
            let mut command = Command::new(&bin);
            command.arg("dev");
            if let Some(config) = &self.config {
                command.arg("-f").arg(config);
            }
            command
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data")
                .arg(self.data_dir())
                .arg("--quiet")
                .env_remove("TOCSIN_LISTEN")
                .env_remove("TOCSIN_DATA")
                .env("RUST_LOG", &self.log)
                .env("NO_COLOR", "1")
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr);
            let child = command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            self.child = Some(child);
            self.base = format!("http://127.0.0.1:{port}");
            match self.wait_until_healthy().await {
                Ok(()) => return,
                Err(exit) if attempt < 3 && self.stderr().contains("cannot listen") => {
                    eprintln!("port {port} was taken ({exit}); retrying on another");
                }
                Err(problem) => panic!(
                    "tocsin dev did not become healthy: {problem}\n--- stderr ---\n{}",
                    self.stderr()
                ),
            }
        }
    }

    async fn wait_until_healthy(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let url = self.url("/healthz");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("it exited with {status}"));
                }
            }
            let answer = self.client.get(&url).timeout(Duration::from_secs(1)).send().await;
            if let Ok(answer) = answer {
                if answer.status().as_u16() == 200 {
                    return Ok(());
                }
            }
            if started.elapsed() > STARTUP_DEADLINE {
                return Err(format!("no 200 from GET /healthz within {STARTUP_DEADLINE:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the process as an operator would (SIGTERM, then SIGKILL after
    /// 15 s) and returns how it exited.
    pub async fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the app is not running");
        let signalled = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .is_ok_and(|status| status.success());
        if !signalled {
            // No kill(1) here: a hard stop is the best we can do.
            let _ = child.kill();
        }
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if started.elapsed() < Duration::from_secs(15) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => {
                    let _ = child.kill();
                    let status = child.wait().expect("cannot reap the tocsin process");
                    panic!(
                        "tocsin dev did not stop within 15 s of SIGTERM ({status})\n--- stderr ---\n{}",
                        self.stderr()
                    );
                }
            }
        }
    }

    /// Stops the process and starts a new one on the same data folder and
    /// config (on a new port: `base` changes).
    pub async fn restart(&mut self) {
        let status = self.stop().await;
        assert!(
            status.success(),
            "tocsin dev should exit 0 on SIGTERM, got {status}\n--- stderr ---\n{}",
            self.stderr()
        );
        self.launch().await;
    }

    /// Kills the process without warning (SIGKILL: no draining, no
    /// shutdown), as a crash or the OOM killer would, then starts a new one
    /// on the same data folder and config (on a new port).
    pub async fn kill_and_restart(&mut self) {
        let mut child = self.child.take().expect("the app is not running");
        child.kill().expect("cannot kill tocsin dev");
        child.wait().expect("cannot reap the tocsin process");
        self.launch().await;
    }

    // ---- HTTP ----

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let answer = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("request failed: {e:?}\n--- stderr ---\n{}", self.stderr()));
        let status = answer.status().as_u16();
        let headers = answer.headers().clone();
        let text = answer.text().await.expect("cannot read the answer body");
        Reply { status, headers, text }
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path))
    }

    /// POSTs raw bytes with the given headers.
    pub async fn post_bytes(&self, path: &str, headers: &[(&str, &str)], body: impl Into<reqwest::Body>) -> Reply {
        let mut request = self.post(path).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request).await
    }

    /// POSTs JSON with the given headers.
    pub async fn post_json(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
        let mut with_type = vec![("content-type", "application/json")];
        with_type.extend_from_slice(headers);
        self.post_bytes(path, &with_type, body.to_string()).await
    }

    /// An Events API v2 event to POST /v2/enqueue.
    pub async fn enqueue(&self, event: &Value) -> Reply {
        self.post_json("/v2/enqueue", &[], event).await
    }

    /// GET with the app's API key.
    pub async fn api_get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path)).bearer_auth(&self.api_key))
            .await
    }

    /// POST (no body) with the given API key.
    pub async fn api_post(&self, path: &str, api_key: &str) -> Reply {
        self.send(self.post(path).bearer_auth(api_key)).await
    }

    /// GET /incidents?{query} with the app's API key.
    pub async fn incidents(&self, query: &str) -> Vec<Value> {
        let path = if query.is_empty() {
            "/incidents".to_owned()
        } else {
            format!("/incidents?{query}")
        };
        let reply = self.api_get(&path).await;
        reply.expect(200);
        let body = reply.json();
        body["incidents"]
            .as_array()
            .unwrap_or_else(|| panic!("GET {path}: no incidents array: {reply}"))
            .clone()
    }

    /// Waits until an incident matches `matches`, and returns it.
    pub async fn wait_for_incident(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let incidents = self.incidents("").await;
            if let Some(found) = incidents.iter().find(|i| matches(i)) {
                return found.clone();
            }
            if started.elapsed() > DEADLINE {
                panic!(
                    "timed out after {DEADLINE:?} waiting for {what}; incidents: {}",
                    serde_json::to_string_pretty(&incidents).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The lines of `<data>/outbox.jsonl`, parsed.
    pub fn outbox(&self) -> Vec<Value> {
        let path = self.data_dir().join("outbox.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("cannot read {}: {e}", path.display()),
        };
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("outbox line is not JSON ({e}): {line}")))
            .collect()
    }

    /// Waits until the outbox satisfies `done`, and returns it.
    pub async fn wait_for_outbox(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let lines = self.outbox();
            if done(&lines) {
                return lines;
            }
            if started.elapsed() > DEADLINE {
                panic!(
                    "timed out after {DEADLINE:?} waiting for {what}; outbox:\n{}",
                    lines.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `tocsin <args…>` (another process of the same binary) and
    /// returns its output.
    pub fn tocsin(&self, args: &[&str]) -> Output {
        Command::new(tocsin_bin())
            .args(args)
            .env_remove("TOCSIN_DATA")
            .env_remove("TOCSIN_LISTEN")
            .stdin(Stdio::null())
            .output()
            .expect("cannot run tocsin")
    }

    /// `tocsin dlq list --data DIR`: one JSON line per dead letter.
    pub fn dead_letters(&self) -> Vec<String> {
        let data = self.data_dir();
        let output = self.tocsin(&["dlq", "list", "--data", &data.display().to_string()]);
        assert!(
            output.status.success(),
            "tocsin dlq list failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl TestApp {
    /// With TOCSIN_E2E_LOG_ARCHIVE set (tests/run sets it), copies every
    /// start's stderr and the config into a folder of their own there, for
    /// tests/scan-logs to search the whole run's logs for credentials.
    fn archive_logs(&self) {
        let Some(archive) = std::env::var_os("TOCSIN_E2E_LOG_ARCHIVE") else {
            return;
        };
        let name = self.dir.path().file_name().unwrap_or_default();
        let folder = PathBuf::from(archive).join(name);
        if std::fs::create_dir_all(&folder).is_err() {
            return;
        }
        let config = self.config.as_deref().map(Path::to_path_buf).unwrap_or_else(|| {
            // Without -f the stack runs the built-in sample.
            workspace_root().join("cli").join("tocsin.sample.yaml")
        });
        let _ = std::fs::copy(config, folder.join("tocsin.yaml"));
        for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().ends_with(".stderr") {
                let _ = std::fs::copy(entry.path(), folder.join(entry.file_name()));
            }
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.archive_logs();
        if std::thread::panicking() {
            // The harness shows a failed test's output: give it the app's log.
            let log = self.stderr();
            let tail: Vec<&str> = log.lines().rev().take(200).collect();
            eprintln!(
                "--- tocsin dev stderr (start #{}, last {} lines) ---",
                self.starts,
                tail.len()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Lines of the outbox about one incident.
pub fn outbox_for<'a>(lines: &'a [Value], incident_id: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["incident_id"] == incident_id).collect()
}

/// How many outbox lines of one incident carry `transition`.
pub fn count_transition(lines: &[Value], incident_id: &str, transition: &str) -> usize {
    outbox_for(lines, incident_id)
        .into_iter()
        .filter(|l| l["transition"] == transition)
        .count()
}

/// HMAC-SHA256 of `body` under `secret`, as `sha256=<hex>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}
