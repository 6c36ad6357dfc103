//! tocsin-coldstart: the cold start of each Lambda function, measured the
//! way Lambda counts it, on this machine.
//!
//! Each function's release binary starts as a fresh process under the local
//! Lambda Runtime API (tests/support/runtime_api.rs) with the environment
//! template.yaml gives it, pointed at moto. *init* is from exec to its first
//! request for an invocation (Lambda's Init Duration); *first response* is
//! from exec to its answer to a realistic first event (an API Gateway
//! request, an SQS, SNS, SES or DynamoDB stream batch), calls to moto
//! included; *peak RSS* is VmHWM after that answer. Every function runs
//! `--runs` times (after `--warmup` unrecorded passes), passes interleaved,
//! and the table gives the median and range of each.
//!
//! `python` and `node` are the same ingest in Python (boto3, awslambdaric)
//! and Node.js (AWS SDK v3, a minimal Runtime API loop), installed by
//! tests/coldstart/run, measured under the same emulator.
//!
//! ```sh
//! tests/coldstart/run                      # builds, starts moto, runs this
//! tocsin-coldstart --moto http://127.0.0.1:5000 [--runs 5] [FUNCTION...]
//! ```
//!
//! FUNCTION is a crate of functions/ (its binary in target/release), `python`
//! or `node`; by default every function with a release binary, then python
//! and node when installed.

mod stack;

#[path = "../support/runtime_api.rs"]
mod runtime_api;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::Parser;
use serde_json::Value;

use runtime_api::{Function, InvokeError, StartError};
use stack::{Stack, StackError, Trigger};

/// How long a first invocation may take before the run counts as failed.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "tocsin-coldstart",
    about = "Cold start of every Lambda function under a local Runtime API"
)]
struct Args {
    /// Functions to measure: crates of functions/, `python`, `node`.
    functions: Vec<String>,
    /// Recorded runs of each function.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Unrecorded passes first (page cache, Python bytecode).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// The moto server the functions' SDKs talk to.
    #[arg(long, env = "TOCSIN_MOTO_URL")]
    moto: String,
    /// Where the release binaries are (default: $CARGO_TARGET_DIR or target, then release).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// An extra environment variable for every function (NAME=VALUE;
    /// repeatable), to measure a setting without a rebuild.
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    extra_env: Vec<(String, String)>,
    /// Print every run, not only the table.
    #[arg(long)]
    verbose: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("expected NAME=VALUE")]
struct NotAnAssignment;

fn parse_env(text: &str) -> Result<(String, String), NotAnAssignment> {
    let (name, value) = text.split_once('=').ok_or(NotAnAssignment)?;
    Ok((name.to_owned(), value.to_owned()))
}

#[derive(Debug, thiserror::Error)]
enum HarnessError {
    #[error("no release binary {}: build it with `cargo build --release -p {name}`", path.display())]
    MissingBinary { name: String, path: PathBuf },
    #[error("{0} is not installed: tests/coldstart/run installs it")]
    NotInstalled(&'static str),
    #[error("{0} is not a function of functions/ with a known trigger, nor python or node")]
    UnknownFunction(String),
    #[error("nothing to measure: no release binary of a function in {}", .0.display())]
    NothingToMeasure(PathBuf),
    #[error("cannot list {}", path.display())]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("zip of {}", path.display())]
    Zip {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`zip -9` failed on {}: is the zip command installed?", .0.display())]
    ZipFailed(PathBuf),
    #[error("a scratch folder")]
    Scratch(#[source] std::io::Error),
    #[error(transparent)]
    Stack(#[from] StackError),
}

/// How a measured function is started.
#[derive(Debug, Clone)]
enum Program {
    /// A release binary of functions/.
    Rust(PathBuf),
    /// tests/coldstart/python: handler.py under awslambdaric, in its venv.
    Python { python: PathBuf, dir: PathBuf },
    /// tests/coldstart/node: index.mjs under bootstrap.mjs.
    Node { dir: PathBuf },
}

#[derive(Debug, Clone)]
struct Subject {
    name: String,
    program: Program,
    /// None for python and node: they take ingest-prometheus's first event.
    trigger: Option<Trigger>,
}

impl Subject {
    fn command(&self) -> Command {
        match &self.program {
            Program::Rust(binary) => Command::new(binary),
            Program::Python { python, dir } => {
                let mut command = Command::new(python);
                command.args(["-m", "awslambdaric", "handler.handler"]).current_dir(dir);
                command
            }
            Program::Node { dir } => {
                let mut command = Command::new("node");
                command.arg("bootstrap.mjs").current_dir(dir);
                command
            }
        }
    }

    /// What Lambda adds for the runtime besides AWS_LAMBDA_*.
    fn runtime_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("AWS_DEFAULT_REGION".to_owned(), "us-east-1".to_owned()),
            ("AWS_SESSION_TOKEN".to_owned(), "testing".to_owned()),
            ("AWS_LAMBDA_INITIALIZATION_TYPE".to_owned(), "on-demand".to_owned()),
        ];
        match &self.program {
            Program::Rust(_) => {}
            Program::Python { dir, .. } => {
                env.push(("AWS_EXECUTION_ENV".to_owned(), "AWS_Lambda_python3.11".to_owned()));
                env.push(("LAMBDA_TASK_ROOT".to_owned(), dir.to_string_lossy().into_owned()));
                env.push(("_HANDLER".to_owned(), "handler.handler".to_owned()));
            }
            Program::Node { dir } => {
                env.push(("AWS_EXECUTION_ENV".to_owned(), "AWS_Lambda_nodejs20.x".to_owned()));
                env.push(("LAMBDA_TASK_ROOT".to_owned(), dir.to_string_lossy().into_owned()));
                env.push(("_HANDLER".to_owned(), "index.handler".to_owned()));
            }
        }
        env
    }

    /// The deployed file: the binary (as `bootstrap`), or the handler alone
    /// (the Python and Node.js runtimes bring their SDK).
    fn deployed_file(&self) -> (PathBuf, &'static str) {
        match &self.program {
            Program::Rust(binary) => (binary.clone(), "bootstrap"),
            Program::Python { dir, .. } => (dir.join("handler.py"), "handler.py"),
            Program::Node { dir } => (dir.join("index.mjs"), "index.mjs"),
        }
    }
}

/// One recorded cold start.
#[derive(Debug, Clone, Copy)]
struct Sample {
    init: Duration,
    first_response: Duration,
    peak_rss_kib: u64,
}

/// Everything measured of one function.
#[derive(Debug, Default)]
struct Measured {
    samples: Vec<Sample>,
    answer: String,
    failure: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match measure(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("tocsin-coldstart: {}", chain(&error));
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Measures and prints the table; false when a function failed.
async fn measure(args: Args) -> Result<bool, HarnessError> {
    let workspace = workspace_root();
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(|dir| workspace.join(dir))
            .unwrap_or_else(|| workspace.join("target"));
        target.join("release")
    });
    let subjects = subjects(&args.functions, &workspace, &bin_dir)?;
    let triggers: Vec<Trigger> = subjects.iter().filter_map(|s| s.trigger).collect();
    let load_before = load_average();
    let stack = Stack::create(&args.moto, &workspace, &triggers).await?;
    let scratch = tempfile::tempdir().map_err(HarnessError::Scratch)?;

    let mut measured: Vec<Measured> = subjects.iter().map(|_| Measured::default()).collect();
    for pass in 0..args.warmup + args.runs {
        let recorded = pass >= args.warmup;
        for (subject, measured) in subjects.iter().zip(measured.iter_mut()) {
            if measured.failure.is_some() {
                continue;
            }
            match cold_start(subject, &stack, pass, &args.extra_env, scratch.path()).await {
                Ok((sample, answer, ok)) => {
                    if args.verbose {
                        eprintln!(
                            "{} pass {pass}: init {:.2} ms, first response {:.2} ms, peak RSS {} KiB, answer {answer}{}",
                            subject.name,
                            ms(sample.init),
                            ms(sample.first_response),
                            sample.peak_rss_kib,
                            if recorded { "" } else { " (warm-up)" }
                        );
                    }
                    if !ok {
                        eprintln!("{}: the first invocation was not a success: {answer}", subject.name);
                    }
                    measured.answer = answer;
                    if recorded {
                        measured.samples.push(sample);
                    }
                }
                Err(error) => {
                    let error = chain(&error);
                    eprintln!("{}: {error}", subject.name);
                    measured.failure = Some(error);
                }
            }
        }
    }
    let load_after = load_average();

    println!(
        "tocsin-coldstart: {} run(s) each after {} warm-up pass(es); {}; load average before {load_before}, after {load_after}",
        args.runs,
        args.warmup,
        machine()
    );
    println!();
    println!("| function | binary | zip | init: median (range) | first response: median (range) | peak RSS: median (range) | first answer |");
    println!("|---|--:|--:|---|---|---|---|");
    let mut all_ok = true;
    for (subject, measured) in subjects.iter().zip(&measured) {
        let (file, as_name) = subject.deployed_file();
        let zip = zip_size(&file, as_name)?;
        let binary = match subject.program {
            Program::Rust(ref path) => megabytes(file_size(path)?),
            _ => "—".to_owned(),
        };
        let zip = match subject.program {
            Program::Rust(_) => megabytes(zip),
            _ => format!("{:.1} KB (handler)", zip as f64 / 1e3),
        };
        if let Some(failure) = &measured.failure {
            all_ok = false;
            println!(
                "| {} | {binary} | {zip} | failed: {} | | | |",
                subject.name,
                failure.lines().next().unwrap_or_default()
            );
            continue;
        }
        let init = spread(measured.samples.iter().map(|s| ms(s.init)).collect(), 2, "ms");
        let first = spread(measured.samples.iter().map(|s| ms(s.first_response)).collect(), 1, "ms");
        let rss = spread(
            measured
                .samples
                .iter()
                .map(|s| s.peak_rss_kib as f64 / 1024.0)
                .collect(),
            1,
            "MiB",
        );
        println!(
            "| {} | {binary} | {zip} | {init} | {first} | {rss} | {} |",
            subject.name, measured.answer
        );
    }
    Ok(all_ok)
}

/// Starts `subject` once, sends its first event and measures.
async fn cold_start(
    subject: &Subject,
    stack: &Stack,
    pass: usize,
    extra_env: &[(String, String)],
    scratch: &Path,
) -> Result<(Sample, String, bool), RunError> {
    let event = match subject.trigger {
        Some(trigger) => stack.first_event(trigger, pass).await?,
        None => stack.sdk_ingest_request()?,
    };
    let mut env = stack.env(subject.trigger);
    env.extend(subject.runtime_env());
    env.extend(extra_env.iter().cloned());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut function = Function::spawn(subject.command(), &subject.name, &env, scratch).await?;
    let (outcome, cold) = function.cold_call(event, ANSWER_WITHIN).await?;
    drop(function);
    let (answer, ok) = summary(&outcome);
    let sample = Sample {
        init: cold.init.ok_or(RunError::NeverPolled)?,
        first_response: cold.to_first_response,
        peak_rss_kib: cold.peak_rss_kib.ok_or(RunError::NoRss)?,
    };
    Ok((sample, answer, ok))
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("staging its first event")]
    Stack(#[from] StackError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    #[error("it answered without asking for an invocation")]
    NeverPolled,
    #[error("its peak RSS could not be read from /proc")]
    NoRss,
}

/// The first answer in a few words, and whether it is a success: an HTTP
/// status, the failed items of a batch, or the function's own summary.
fn summary(outcome: &runtime_api::Outcome) -> (String, bool) {
    match outcome {
        Ok(answer) => {
            if let Some(status) = answer.get("statusCode").and_then(Value::as_u64) {
                (format!("HTTP {status}"), (200..300).contains(&status))
            } else if let Some(failures) = answer.get("batchItemFailures").and_then(Value::as_array) {
                (format!("{} item failure(s)", failures.len()), failures.is_empty())
            } else {
                (answer.to_string(), true)
            }
        }
        Err(error) => (format!("error {}", error.get("errorType").unwrap_or(error)), false),
    }
}

/// The functions to measure, in the order given, or by default every
/// function of functions/ with a release binary, then python and node.
fn subjects(names: &[String], workspace: &Path, bin_dir: &Path) -> Result<Vec<Subject>, HarnessError> {
    let python = workspace.join("tests/coldstart/python");
    let node = workspace.join("tests/coldstart/node");
    let python_bin = python.join(".venv/bin/python");
    let node_installed = node.join("node_modules/@aws-sdk/client-sqs").is_dir();
    let names = if names.is_empty() {
        let functions = workspace.join("functions");
        let entries = std::fs::read_dir(&functions).map_err(|source| HarnessError::List {
            path: functions.clone(),
            source,
        })?;
        let mut found: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().join("Cargo.toml").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| bin_dir.join(name).is_file())
            .collect();
        if found.is_empty() {
            return Err(HarnessError::NothingToMeasure(bin_dir.to_owned()));
        }
        found.sort_by_key(|name| (pipeline_rank(name), name.clone()));
        if python_bin.is_file() {
            found.push("python".to_owned());
        }
        if node_installed {
            found.push("node".to_owned());
        }
        found
    } else {
        names.to_vec()
    };
    names
        .into_iter()
        .map(|name| match name.as_str() {
            "python" if python_bin.is_file() => Ok(Subject {
                program: Program::Python {
                    python: python_bin.clone(),
                    dir: python.clone(),
                },
                name,
                trigger: None,
            }),
            "python" => Err(HarnessError::NotInstalled("tests/coldstart/python/.venv")),
            "node" if node_installed => Ok(Subject {
                program: Program::Node { dir: node.clone() },
                name,
                trigger: None,
            }),
            "node" => Err(HarnessError::NotInstalled("tests/coldstart/node/node_modules")),
            _ => {
                let trigger = Trigger::of(&name).ok_or_else(|| HarnessError::UnknownFunction(name.clone()))?;
                let binary = bin_dir.join(&name);
                if !binary.is_file() {
                    return Err(HarnessError::MissingBinary { name, path: binary });
                }
                Ok(Subject {
                    program: Program::Rust(binary),
                    name,
                    trigger: Some(trigger),
                })
            }
        })
        .collect()
}

/// Orders the default list as events flow.
fn pipeline_rank(name: &str) -> u8 {
    match name {
        n if n.starts_with("ingest-") => 0,
        "processor" => 1,
        "dispatch" => 2,
        n if n.starts_with("notify-") => 3,
        _ => 4,
    }
}

/// The size of `file` zipped alone as `as_name` with `zip -9`, as a
/// deployment package holds it.
fn zip_size(file: &Path, as_name: &str) -> Result<u64, HarnessError> {
    let dir = tempfile::tempdir().map_err(HarnessError::Scratch)?;
    let zip_error = |source| HarnessError::Zip {
        path: file.to_owned(),
        source,
    };
    std::fs::copy(file, dir.path().join(as_name)).map_err(zip_error)?;
    let status = Command::new("zip")
        .args(["-9", "-q", "-X", "package.zip", as_name])
        .current_dir(dir.path())
        .status();
    match status {
        Ok(status) if status.success() => file_size(&dir.path().join("package.zip")),
        _ => Err(HarnessError::ZipFailed(file.to_owned())),
    }
}

fn file_size(path: &Path) -> Result<u64, HarnessError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|source| HarnessError::Zip {
            path: path.to_owned(),
            source,
        })
}

fn megabytes(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// `median (min – max) unit`.
fn spread(mut values: Vec<f64>, decimals: usize, unit: &str) -> String {
    if values.is_empty() {
        return "no runs".to_owned();
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    format!(
        "{median:.decimals$} {unit} ({:.decimals$} – {:.decimals$})",
        values[0],
        values[n - 1]
    )
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Cores and CPU model, for the figures' context.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cores} cores, {model}, {}", std::env::consts::ARCH)
}

/// An error and its sources, on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
