//! An invalid config is refused at once, naming the file, the field and the
//! reason, and nothing starts half-configured.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::app::{free_port, tocsin_bin, TEST_CONFIG};

struct Refusal {
    code: Option<i32>,
    stderr: String,
}

/// Runs `tocsin dev -f <file>` and expects it to exit by itself, quickly.
fn run_dev(config: &Path, data: &Path) -> Refusal {
    let port = free_port();
    let mut child = Command::new(tocsin_bin())
        .arg("dev")
        .arg("-f")
        .arg(config)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(data)
        .arg("--quiet")
        .env_remove("TOCSIN_LISTEN")
        .env_remove("TOCSIN_DATA")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start tocsin");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot poll tocsin") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tocsin dev -f {} kept running with an invalid config", config.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = child
        .wait_with_output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing may listen on the port after a refused config"
    );
    Refusal {
        code: status.code(),
        stderr,
    }
}

#[test]
fn an_invalid_config_is_refused_with_file_field_and_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "a number that is not E.164",
            TEST_CONFIG.replace("\"+15555550123\"", "\"555-0123\""),
            "services[0].notify.sms[0]",
            "E.164",
        ),
        (
            "an unknown provider type",
            TEST_CONFIG.replace("type: prometheus", "type: nagios"),
            "services[0].integrations[0]",
            "nagios",
        ),
        (
            "a short integration key",
            TEST_CONFIG.replace("key: a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1", "key: a1a1"),
            "services[0].integrations[0].key",
            "32 hex",
        ),
        (
            "a misspelt field",
            TEST_CONFIG.replace("name: Checkout", "nmae: Checkout"),
            "services[0]",
            "nmae",
        ),
    ];
    for (n, (what, yaml, field, reason)) in cases.into_iter().enumerate() {
        assert_ne!(yaml, TEST_CONFIG, "{what}: the replacement did not apply");
        let file = dir.path().join(format!("bad-{n}.yaml"));
        std::fs::write(&file, yaml).expect("cannot write the config");
        let data = dir.path().join(format!("data-{n}"));
        let refusal = run_dev(&file, &data);
        assert_ne!(refusal.code, Some(0), "{what}: must exit non-zero");
        let file_name = file.display().to_string();
        for expected in [file_name.as_str(), field, reason] {
            assert!(
                refusal.stderr.contains(expected),
                "{what}: stderr should contain '{expected}':\n{}",
                refusal.stderr
            );
        }
        assert!(
            !data.join("tocsin.db").exists(),
            "{what}: nothing may be created in the data folder"
        );
    }
}

#[test]
fn a_webhook_secret_the_stack_cannot_read_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = TEST_CONFIG.replacen(
        "    notify:\n",
        "    notify:\n      webhooks:\n        - {url: \"https://hooks.example.com/t\", secret: {env: TOCSIN_E2E_SURELY_UNSET_HOOK_SECRET}}\n",
        1,
    );
    assert!(yaml.contains("SURELY_UNSET"), "the replacement did not apply");
    let file = dir.path().join("tocsin.yaml");
    std::fs::write(&file, yaml).expect("cannot write the config");
    let data = dir.path().join("data");
    let refusal = run_dev(&file, &data);
    assert_ne!(refusal.code, Some(0));
    for expected in ["webhook 0 of service checkout", "TOCSIN_E2E_SURELY_UNSET_HOOK_SECRET"] {
        assert!(
            refusal.stderr.contains(expected),
            "stderr should contain '{expected}':\n{}",
            refusal.stderr
        );
    }
    assert!(
        !data.join("tocsin.db").exists(),
        "nothing may be created in the data folder"
    );
}

#[test]
fn a_missing_config_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("absent.yaml");
    let refusal = run_dev(&file, &dir.path().join("data"));
    assert_ne!(refusal.code, Some(0));
    assert!(refusal.stderr.contains("absent.yaml"), "{}", refusal.stderr);
}

#[test]
fn tocsin_validate_accepts_the_test_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tocsin.yaml");
    std::fs::write(&file, TEST_CONFIG).expect("cannot write the config");
    let output = Command::new(tocsin_bin())
        .arg("validate")
        .arg("-f")
        .arg(&file)
        .output()
        .expect("cannot run tocsin validate");
    assert!(
        output.status.success(),
        "tocsin validate: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("2 services"), "{stdout}");
}
