//! The local Lambda Runtime API (tests/support/runtime_api.rs, shared with
//! the cold-start harness), with the panicking entry points a test wants.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

#[path = "../support/runtime_api.rs"]
mod emulator;

pub use emulator::{ColdStart, Function, Outcome};

/// How long a test waits for an invocation's outcome.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

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
        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Function::spawn(Command::new(binary), &name, env, scratch)
            .await
            .unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)))
    }

    /// Invokes the function once with `event` and waits for its outcome.
    pub async fn invoke(&mut self, event: Value) -> Outcome {
        self.call(event, ANSWER_WITHIN).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// The first invocation, timed from process start.
    pub async fn cold_invoke(&mut self, event: Value) -> (Outcome, ColdStart) {
        self.cold_call(event, ANSWER_WITHIN)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }
}
