//! The acknowledge link in a real browser: headless Chromium opens the
//! email's link, the person presses the confirm button, the incident is
//! acknowledged. Driven over the Chrome DevTools Protocol on
//! `--remote-debugging-pipe` (fd 3 Chromium's input, fd 4 its output, JSON
//! messages ended by a NUL byte), so no WebSocket client is needed.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::app::{keys, wait_for, TestApp};

/// Every wait on the browser: a cold Chromium start on a 2-core CI machine
/// takes a few seconds, a page load far less.
const BROWSER_DEADLINE: Duration = Duration::from_secs(30);

/// Chromium's stderr shown on a failure: the end (the start is D-Bus noise
/// in a container).
const STDERR_LINES: usize = 40;

const CONFIG: &str = r##"
api_keys:
  - {name: ops, key: sk_e2e_ops_0123456789abcdef, scopes: [events:write, incidents:read, incidents:write]}
services:
  - id: checkout
    name: Checkout
    integrations:
      - {id: checkout-pd, type: events-v2, key: b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2}
    notify:
      email: [oncall@example.com]
settings:
  public_url: https://tocsin.example.test/
  link_signing_secret: e2e-browser-link-secret-0123456789abcdef
"##;

const PUBLIC_URL: &str = "https://tocsin.example.test";

const SUMMARY: &str = "Checkout p99 latency above 2s on web-3";

/// The Chromium to drive: TOCSIN_CHROMIUM_BIN, else Debian's `chromium`,
/// else `chromium-browser`, on PATH.
fn chromium_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("TOCSIN_CHROMIUM_BIN") {
        return Some(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    ["chromium", "chromium-browser"]
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|c| c.is_file())
}

/// A pipe whose both ends close on exec: only what `pre_exec` places on
/// fds 3 and 4 reaches Chromium.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`, owned from here on.
    let done = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(done, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both were just opened and nothing else owns them.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A headless Chromium with a DevTools pipe, its process group killed on
/// drop (its stderr shown if the test failed).
struct Chromium {
    child: Child,
    /// Chromium's fd 3: our commands.
    commands: File,
    /// Chromium's fd 4, read by a thread: responses and events.
    messages: UnboundedReceiver<Value>,
    /// Messages read while waiting for another one.
    unread: VecDeque<Value>,
    next_id: u64,
    dir: TempDir,
    /// Whether a panic message already carried the stderr.
    stderr_shown: bool,
}

impl Chromium {
    fn start(bin: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tocsin-e2e-chromium-")
            .tempdir()
            .expect("cannot create a temporary folder");
        let stderr = File::create(dir.path().join("chromium.stderr")).expect("cannot create the stderr log");
        let (their_input, commands) = pipe();
        let (messages, their_output) = pipe();
        let (input, output) = (their_input.as_raw_fd(), their_output.as_raw_fd());
        let mut command = Command::new(bin);
        command
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--mute-audio",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Its own group, so that drop ends its helper processes too.
            .process_group(0);
        // SAFETY: only async-signal-safe calls (fcntl, dup2, close) between
        // fork and exec. Copies above 10 first, so that dup2 never meets a
        // descriptor already numbered 3 or 4 (it would keep close-on-exec).
        unsafe {
            command.pre_exec(move || {
                for (from, to) in [(input, 3), (output, 4)] {
                    let high = libc::fcntl(from, libc::F_DUPFD, 10);
                    if high < 0 || libc::dup2(high, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(high);
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        // Chromium's ends now live in Chromium only: EOF when it exits.
        drop((their_input, their_output));

        let (sender, receiver) = unbounded_channel();
        let mut reader = File::from(messages);
        std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buffer = [0u8; 64 * 1024];
            while let Ok(read @ 1..) = reader.read(&mut buffer) {
                pending.extend_from_slice(&buffer[..read]);
                while let Some(end) = pending.iter().position(|b| *b == 0) {
                    let message: Vec<u8> = pending.drain(..=end).collect();
                    let message = serde_json::from_slice(&message[..end])
                        .unwrap_or_else(|e| json!({"unparsable": e.to_string()}));
                    if sender.send(message).is_err() {
                        return;
                    }
                }
            }
        });
        Chromium {
            child,
            commands: File::from(commands),
            messages: receiver,
            unread: VecDeque::new(),
            next_id: 1,
            dir,
            stderr_shown: false,
        }
    }

    /// The last lines Chromium wrote to stderr.
    fn stderr(&self) -> String {
        let all = std::fs::read_to_string(self.dir.path().join("chromium.stderr")).unwrap_or_default();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(STDERR_LINES)..].join("\n")
    }

    /// Panics with `problem` and Chromium's stderr.
    fn fail(&mut self, problem: &str) -> ! {
        self.stderr_shown = true;
        let exit = match self.child.try_wait() {
            Ok(Some(status)) => format!(" (chromium exited with {status})"),
            _ => String::new(),
        };
        panic!(
            "{problem}{exit}\n--- chromium stderr, last {STDERR_LINES} lines ---\n{}",
            self.stderr()
        );
    }

    /// The next message from Chromium, or a panic naming `what` and showing
    /// its stderr after [`BROWSER_DEADLINE`] or once it closed the pipe.
    async fn receive(&mut self, what: &str) -> Value {
        match tokio::time::timeout(BROWSER_DEADLINE, self.messages.recv()).await {
            Ok(Some(message)) => message,
            Ok(None) => self.fail(&format!("chromium closed its DevTools pipe while we waited for {what}")),
            Err(_) => self.fail(&format!("timed out after {BROWSER_DEADLINE:?} waiting for {what}")),
        }
    }

    /// Sends a command (to the page of `session`, or to the browser) and
    /// returns its result; events read meanwhile are kept for [`Self::event`].
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&command).expect("a command is JSON");
        bytes.push(0);
        if let Err(e) = self.commands.write_all(&bytes) {
            self.fail(&format!("cannot send {method} to chromium: {e}"));
        }
        loop {
            let message = self.receive(&format!("the answer to {method}")).await;
            if message["id"] != id {
                self.unread.push_back(message);
                continue;
            }
            if !message["error"].is_null() {
                self.fail(&format!("{method} failed: {message}"));
            }
            return message["result"].clone();
        }
    }

    /// Waits for the event `method` of `session`.
    async fn event(&mut self, session: &str, method: &str) -> Value {
        let is_it = |m: &Value| m["method"] == method && m["sessionId"] == session;
        if let Some(at) = self.unread.iter().position(is_it) {
            return self.unread.remove(at).expect("the position was just found");
        }
        loop {
            let message = self.receive(&format!("the event {method}")).await;
            if is_it(&message) {
                return message;
            }
            self.unread.push_back(message);
        }
    }

    /// Forgets the events so far, before an action whose own events are
    /// awaited next.
    fn forget_events(&mut self) {
        self.unread.clear();
        while self.messages.try_recv().is_ok() {}
    }

    /// Evaluates `expression` in the page and returns its value.
    async fn evaluate(&mut self, session: &str, expression: &str) -> Value {
        let result = self
            .call(
                Some(session),
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if !result["exceptionDetails"].is_null() {
            self.fail(&format!("`{expression}` threw: {result}"));
        }
        result["result"]["value"].clone()
    }

    /// The page's visible text.
    async fn text(&mut self, session: &str) -> String {
        let text = self.evaluate(session, "document.body.innerText").await;
        text.as_str().unwrap_or_default().to_owned()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the group this child leads (process_group(0)).
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() && !self.stderr_shown {
            eprintln!("--- chromium stderr, last {STDERR_LINES} lines ---\n{}", self.stderr());
        }
    }
}

async fn incident(app: &TestApp, id: &str) -> Value {
    let reply = app.api_get(&format!("/incidents/{id}")).await;
    reply.expect(200);
    reply.json()
}

#[tokio::test]
async fn the_acknowledge_link_opened_and_confirmed_in_chromium_acknowledges() {
    let Some(bin) = chromium_bin() else {
        if std::env::var("TOCSIN_SKIP_CHROMIUM").as_deref() == Ok("1") {
            eprintln!("SKIPPED: chromium is not installed and TOCSIN_SKIP_CHROMIUM=1");
            return;
        }
        panic!(
            "chromium is not installed: run tests/run (it installs it), \
             or `apt-get install chromium`, or set TOCSIN_CHROMIUM_BIN; \
             TOCSIN_SKIP_CHROMIUM=1 skips this test"
        );
    };

    let app = TestApp::start_with(Some(CONFIG), keys::OPS).await;
    app.enqueue(&json!({
        "routing_key": keys::CHECKOUT_EVENTS,
        "event_action": "trigger",
        "dedup_key": "browser/latency",
        "payload": {"summary": SUMMARY, "source": "web-3", "severity": "critical"},
    }))
    .await
    .expect(202);
    let lines = app
        .wait_for_outbox("the email of the trigger", |lines| {
            lines
                .iter()
                .any(|l| l["channel"] == "email" && l["transition"] == "triggered")
        })
        .await;
    let email = lines
        .iter()
        .find(|l| l["channel"] == "email")
        .expect("the email was just found");
    let id = email["incident_id"]
        .as_str()
        .expect("the email names its incident")
        .to_owned();
    let text = email["message"]["text"].as_str().expect("the email has a text body");
    let link = text
        .lines()
        .find_map(|l| l.strip_prefix("Acknowledge:"))
        .unwrap_or_else(|| panic!("no Acknowledge link in:\n{text}"))
        .trim();
    // The public URL of the config is not this test's port: same path here.
    let path = link
        .strip_prefix(PUBLIC_URL)
        .unwrap_or_else(|| panic!("not a link on the public URL: {link}"));
    assert!(path.starts_with("/act/"), "{link}");
    let url = app.url(path);

    let mut chromium = Chromium::start(&bin);
    let target = chromium
        .call(None, "Target.createTarget", json!({"url": "about:blank"}))
        .await;
    let target = target["targetId"].as_str().expect("a target id").to_owned();
    let session = chromium
        .call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        )
        .await;
    let session = session["sessionId"].as_str().expect("a session id").to_owned();
    let page = Some(session.as_str());
    chromium.call(page, "Page.enable", json!({})).await;
    chromium.call(page, "Runtime.enable", json!({})).await;

    // The person opens the link: a page about the incident, nothing changed.
    chromium.forget_events();
    let navigated = chromium.call(page, "Page.navigate", json!({"url": url})).await;
    assert!(navigated["errorText"].is_null(), "cannot open {url}: {navigated}");
    chromium.event(&session, "Page.loadEventFired").await;
    let shown = chromium.text(&session).await;
    assert!(shown.contains("Acknowledge this incident?"), "{shown}");
    assert!(shown.contains(SUMMARY), "the page names the incident: {shown}");
    assert_eq!(
        incident(&app, &id).await["status"],
        "open",
        "opening the link changes nothing"
    );

    // The person presses the button: a mouse click at its centre.
    let centre = chromium
        .evaluate(
            &session,
            "(() => { const b = document.querySelector('form button, form input[type=submit]'); \
             if (!b) return null; b.scrollIntoView(); const r = b.getBoundingClientRect(); \
             return {x: r.left + r.width / 2, y: r.top + r.height / 2}; })()",
        )
        .await;
    assert!(centre.is_object(), "no confirm button on the page: {shown}");
    chromium.forget_events();
    for kind in ["mousePressed", "mouseReleased"] {
        chromium
            .call(
                page,
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": centre["x"], "y": centre["y"], "button": "left", "clickCount": 1}),
            )
            .await;
    }
    chromium.event(&session, "Page.loadEventFired").await;
    let done = chromium.text(&session).await;
    assert!(done.contains("Acknowledged"), "{done}");
    assert!(done.contains("The incident is now acknowledged"), "{done}");
    let at = chromium.evaluate(&session, "location.href").await;
    assert_eq!(at, json!(url), "the form posts back to the link itself");

    assert_eq!(incident(&app, &id).await["status"], "acknowledged");
    wait_for("the acknowledge in the timeline, by the link's recipient", || async {
        let reply = app.api_get(&format!("/incidents/{id}/timeline")).await;
        reply.text.contains("link:oncall@example.com").then_some(())
    })
    .await;
}
