//! The operator commands of the real `tocsin` binary: `incidents`,
//! `send-test` and `status` against a running local stack, `integrations`
//! against a table on a local AWS API server (moto) served by
//! `tocsin dev --aws`, and against a running local stack's data folder.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::Value;

use crate::app::{fixture, keys, tocsin_bin, workspace_root, TestApp};

/// A config with one GitHub integration whose webhook secret is set.
const GITHUB_CONFIG: &str = r#"
api_keys:
  - {name: ops, key: sk_e2e_ops_0123456789abcdef, scopes: [incidents:read, incidents:write]}
services:
  - id: ci
    name: CI
    integrations:
      - id: ci-github
        type: github
        key: 5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a
        secret: a-github-webhook-secret-for-e2e
"#;
const GITHUB_KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const GITHUB_SECRET: &str = "a-github-webhook-secret-for-e2e";

/// `tocsin <args…>` with none of the operator variables of the caller's
/// environment, run from the workspace root (where events/ is).
fn tocsin(args: &[&str]) -> Output {
    let mut command = Command::new(tocsin_bin());
    command.args(args).current_dir(workspace_root()).stdin(Stdio::null());
    for variable in [
        "TOCSIN_URL",
        "TOCSIN_API_KEY",
        "TOCSIN_KEY",
        "TOCSIN_SECRET",
        "TOCSIN_EVENTS",
        "TOCSIN_TABLE",
        "TOCSIN_DATA",
        "TOCSIN_LISTEN",
    ] {
        command.env_remove(variable);
    }
    command.output().expect("cannot run tocsin")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "tocsin failed ({}):\n{}{}",
        output.status,
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

/// Asserts a non-zero exit and returns stderr.
#[track_caller]
fn failed(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "tocsin should have failed:\n{}{}",
        stdout(output),
        stderr(output)
    );
    stderr(output)
}

#[tokio::test]
async fn incidents_are_listed_shown_acknowledged_and_resolved_from_the_command_line() {
    let app = TestApp::start().await;
    app.post_bytes(
        "/integrations/prometheus",
        &[("authorization", &format!("Bearer {}", keys::CHECKOUT_PROMETHEUS))],
        fixture("events/prometheus/firing.json"),
    )
    .await
    .expect(202);
    let incident = app
        .wait_for_incident("an incident from the Alertmanager sample", |i| {
            i["origin"]["integration"] == "checkout-am"
        })
        .await;
    let id = incident["id"].as_str().expect("an incident id").to_owned();
    let summary = incident["summary"].as_str().expect("a summary").to_owned();
    let api = ["--url", app.base.as_str(), "--api-key", keys::OPS];
    let with = |args: &[&str]| -> Vec<String> { args.iter().chain(&api).map(|a| a.to_string()).collect() };
    let run = |args: &[&str]| {
        let args = with(args);
        tocsin(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let listed = succeeded(&run(&[
        "incidents",
        "list",
        "--service",
        "checkout",
        "--status",
        "open",
    ]));
    let row = listed
        .lines()
        .find(|line| line.starts_with(&id))
        .unwrap_or_else(|| panic!("no row for {id}:\n{listed}"));
    assert!(row.contains("open") && row.contains("checkout"), "{row}");

    let json: Value = serde_json::from_str(&succeeded(&run(&["incidents", "list", "--json", "--limit", "5"])))
        .expect("--json prints the API's JSON");
    assert!(
        json["incidents"]
            .as_array()
            .is_some_and(|all| all.iter().any(|i| i["id"] == id.as_str())),
        "{json}"
    );
    let none = succeeded(&run(&["incidents", "list", "--service", "payments"]));
    assert!(!none.contains(&id), "filtered by service: {none}");

    let shown = succeeded(&run(&["incidents", "show", &id]));
    assert!(shown.contains(&summary), "show prints the summary:\n{shown}");
    assert!(shown.contains(&id), "{shown}");
    assert!(
        shown.contains("timeline:") || shown.contains("no timeline endpoint"),
        "the timeline, or why there is none:\n{shown}"
    );
    if shown.contains("timeline:") {
        assert!(
            shown.contains("opened: trigger from prometheus (checkout-am)"),
            "the opening event is on the timeline:\n{shown}"
        );
    }

    let acked = succeeded(&run(&["incidents", "ack", &id]));
    assert!(acked.contains("acknowledged"), "{acked}");
    let again = failed(&run(&["incidents", "ack", &id]));
    assert!(
        again.contains("409") && again.contains("already acknowledged"),
        "a second ack names the conflict: {again}"
    );
    let resolved = succeeded(&run(&["incidents", "resolve", &id]));
    assert!(resolved.contains("resolved"), "{resolved}");
    let after = app.api_get(&format!("/incidents/{id}")).await.json();
    assert_eq!(after["status"], "resolved", "{after}");
    let shown = succeeded(&run(&["incidents", "show", &id]));
    let by: Vec<&str> = shown.lines().filter(|line| line.starts_with("  by")).collect();
    assert_eq!(by.len(), 2, "who acknowledged and who resolved:\n{shown}");
    assert!(by.iter().all(|line| line.contains("api-key:")), "{shown}");

    let missing = failed(&run(&["incidents", "show", "00000000-0000-4000-8000-000000000000"]));
    assert!(missing.contains("404"), "{missing}");

    let bad_key = failed(&tocsin(&[
        "incidents",
        "list",
        "--url",
        &app.base,
        "--api-key",
        "sk_not_a_key_0123456789",
    ]));
    assert!(bad_key.contains("401"), "{bad_key}");
    let reader = failed(&tocsin(&[
        "incidents",
        "resolve",
        &id,
        "--url",
        &app.base,
        "--api-key",
        keys::READER,
    ]));
    assert!(reader.contains("403"), "{reader}");
    let no_key = failed(&tocsin(&["incidents", "list", "--url", &app.base]));
    assert!(no_key.contains("TOCSIN_API_KEY"), "{no_key}");
}

#[test]
fn a_stack_that_is_not_running_is_named() {
    let url = format!("http://127.0.0.1:{}", crate::app::free_port());
    let refused = failed(&tocsin(&["incidents", "list", "--url", &url, "--api-key", keys::OPS]));
    assert!(refused.contains("is `tocsin dev` running?"), "{refused}");
    let refused = failed(&tocsin(&["status", "--url", &url]));
    assert!(refused.contains("is `tocsin dev` running?"), "{refused}");
}

#[test]
fn a_failed_send_test_does_not_print_the_key() {
    // The key travels in the query string; the error names the endpoint only.
    let url = format!("http://127.0.0.1:{}", crate::app::free_port());
    let refused = failed(&tocsin(&[
        "send-test",
        "webhook",
        "--key",
        keys::UNKNOWN,
        "--url",
        &url,
    ]));
    assert!(refused.contains("is `tocsin dev` running?"), "{refused}");
    assert!(!refused.contains(keys::UNKNOWN), "{refused}");
}

#[tokio::test]
async fn send_test_posts_a_providers_sample_unsigned_and_signed() {
    let app = TestApp::start().await;
    let sent = succeeded(&tocsin(&[
        "send-test",
        "prometheus",
        "--key",
        keys::CHECKOUT_PROMETHEUS,
        "--url",
        &app.base,
    ]));
    assert!(sent.contains("HTTP 202"), "{sent}");
    app.wait_for_incident("the Alertmanager sample's incident", |i| {
        i["origin"]["integration"] == "checkout-am"
    })
    .await;
    let wrong = failed(&tocsin(&[
        "send-test",
        "prometheus",
        "--key",
        keys::UNKNOWN,
        "--url",
        &app.base,
    ]));
    assert!(wrong.contains("404"), "{wrong}");

    let app = TestApp::start_with(Some(GITHUB_CONFIG), keys::OPS).await;
    let send = |extra: &[&str]| {
        let mut args = vec!["send-test", "github", "--key", GITHUB_KEY, "--url", app.base.as_str()];
        args.extend_from_slice(extra);
        tocsin(&args)
    };
    let unsigned = send(&[]);
    failed(&unsigned);
    assert!(stdout(&unsigned).contains("HTTP 401"), "{}", stdout(&unsigned));
    let forged = send(&["--secret", "not-the-webhook-secret"]);
    failed(&forged);
    assert!(stdout(&forged).contains("HTTP 401"), "{}", stdout(&forged));

    let signed = succeeded(&send(&["--secret", GITHUB_SECRET, "--sample", "workflow_run-failure"]));
    assert!(signed.contains("HTTP 202"), "{signed}");
    app.wait_for_incident("the GitHub sample's incident", |i| {
        i["origin"]["integration"] == "ci-github" && i["status"] == "open"
    })
    .await;
}

#[tokio::test]
async fn status_prints_the_ingestion_counters() {
    let app = TestApp::start().await;
    succeeded(&tocsin(&[
        "send-test",
        "prometheus",
        "--key",
        keys::CHECKOUT_PROMETHEUS,
        "--url",
        &app.base,
    ]));
    let status = succeeded(&tocsin(&["status", "--url", &app.base, "--api-key", keys::OPS]));
    assert!(status.starts_with("status: "), "{status}");
    assert!(status.contains("all integrations: received 1,"), "{status}");
    let line = status
        .lines()
        .find(|line| line.starts_with("checkout-am "))
        .unwrap_or_else(|| panic!("no line for checkout-am:\n{status}"));
    assert!(line.contains("received 1, ok 1, errors 0"), "{line}");
    assert!(line.contains("ago"), "the last event's age: {line}");

    let json: Value = serde_json::from_str(&succeeded(&tocsin(&[
        "status",
        "--json",
        "--url",
        &app.base,
        "--api-key",
        keys::OPS,
    ])))
    .expect("--json prints the API's JSON");
    assert_eq!(json["global"]["totalReceived"], 1, "{json}");
}

/// A child process killed when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn integrations_are_created_listed_disabled_enabled_and_rotated_in_the_table() {
    let moto = crate::aws_stack::moto_url();
    let aws_env = [
        ("AWS_ENDPOINT_URL", moto.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    let run = uuid::Uuid::new_v4().simple().to_string();
    let table = format!("cli-{run}");
    let aws = |args: &[&str]| {
        let mut command = Command::new(tocsin_bin());
        command
            .args(args)
            .current_dir(workspace_root())
            .envs(aws_env)
            .env("TOCSIN_TABLE", &table)
            .env_remove("TOCSIN_URL")
            .stdin(Stdio::null());
        command.output().expect("cannot run tocsin")
    };
    succeeded(&aws(&["apply", "-f", "cli/tocsin.sample.yaml", "--create-table"]));

    let config = crate::aws_stack::sdk_config(&moto).await;
    let queue = aws_sdk_sqs::Client::new(&config)
        .create_queue()
        .queue_name(format!("cli-{run}.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .expect("create the events queue")
        .queue_url()
        .expect("a queue url")
        .to_owned();
    let scratch = tempfile::tempdir().expect("a scratch folder");
    let port = crate::app::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _dev = Running(
        Command::new(tocsin_bin())
            .args(["dev", "--aws", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--events-queue-url", &queue])
            .envs(aws_env)
            .env("TOCSIN_TABLE", &table)
            .env("RUST_LOG", "warn")
            .stdout(std::fs::File::create(scratch.path().join("stdout")).expect("a log file"))
            .stderr(std::fs::File::create(scratch.path().join("stderr")).expect("a log file"))
            .spawn()
            .expect("tocsin dev --aws starts"),
    );
    let client = reqwest::Client::new();
    crate::app::wait_for("tocsin dev --aws to answer /healthz", || {
        let request = client.get(format!("{base}/healthz"));
        async move { request.send().await.ok().filter(|r| r.status() == 200) }
    })
    .await;
    let deliver = |key: String| {
        let request = client
            .post(format!("{base}/integrations/prometheus"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(fixture("events/prometheus/firing.json"));
        async move { request.send().await.expect("the stack answers").status().as_u16() }
    };

    let created = succeeded(&aws(&[
        "integrations",
        "create",
        "--service",
        "checkout",
        "--provider",
        "prometheus",
        "--id",
        "checkout-cli",
        "--url",
        &base,
    ]));
    assert!(
        created.contains(&format!("POST {base}/integrations/prometheus")),
        "{created}"
    );
    let key = printed_key(&created);
    assert_eq!(deliver(key.clone()).await, 202, "the new key is accepted");
    let again = failed(&aws(&[
        "integrations",
        "create",
        "--service",
        "checkout",
        "--provider",
        "prometheus",
        "--id",
        "checkout-cli",
    ]));
    assert!(again.contains("already exists"), "{again}");

    let listed = succeeded(&aws(&["integrations", "list"]));
    let row = listed
        .lines()
        .find(|line| line.starts_with("checkout-cli "))
        .unwrap_or_else(|| panic!("no row for checkout-cli:\n{listed}"));
    assert!(row.contains("prometheus") && row.contains("yes"), "{row}");
    assert!(
        listed.lines().any(|line| line.starts_with("checkout-prometheus ")),
        "the applied integrations are listed too:\n{listed}"
    );
    assert!(!listed.contains(&key), "keys are never listed:\n{listed}");

    succeeded(&aws(&["integrations", "disable", "checkout-cli"]));
    assert_eq!(deliver(key.clone()).await, 403, "a disabled integration refuses");
    let json = succeeded(&aws(&["integrations", "list", "--json"]));
    let entry: Value = json
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|entry| entry["id"] == "checkout-cli")
        .unwrap_or_else(|| panic!("no JSON line for checkout-cli:\n{json}"));
    assert_eq!(entry["enabled"], false, "{entry}");
    succeeded(&aws(&["integrations", "enable", "checkout-cli"]));
    assert_eq!(deliver(key.clone()).await, 202, "enabled again");

    let rotated = succeeded(&aws(&["integrations", "rotate-key", "checkout-cli"]));
    let new_key = printed_key(&rotated);
    assert_ne!(new_key, key);
    assert_eq!(deliver(key).await, 404, "the old key is refused");
    assert_eq!(deliver(new_key).await, 202, "the new key is accepted");

    let missing = failed(&aws(&["integrations", "disable", "no-such-integration"]));
    assert!(missing.contains("no integration 'no-such-integration'"), "{missing}");
    let no_table = failed(&tocsin(&["integrations", "list"]));
    assert!(no_table.contains("--table"), "{no_table}");
}

/// The key of a `key <32 hex>` line.
fn printed_key(output: &str) -> String {
    output
        .lines()
        .find_map(|line| line.trim().strip_prefix("key "))
        .filter(|key| key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no key line:\n{output}"))
        .to_owned()
}

#[test]
fn send_test_names_a_missing_sample_and_an_unknown_provider() {
    let output = tocsin(&[
        "send-test",
        "prometheus",
        "--key",
        keys::UNKNOWN,
        "--sample",
        "no-such-sample",
    ]);
    let message = failed(&output);
    assert!(
        message.contains(
            &Path::new("events")
                .join("prometheus")
                .join("no-such-sample.json")
                .display()
                .to_string()
        ),
        "{message}"
    );
    let message = failed(&tocsin(&["send-test", "nagios", "--key", keys::UNKNOWN]));
    assert!(message.contains("unknown provider 'nagios'"), "{message}");
}

/// `tocsin status` against a server answering a fixed health document in
/// the shape of GET /integrations/health, whatever the stack under test
/// serves yet: the printing alone.
#[tokio::test]
async fn status_prints_a_health_document_per_provider_and_integration() {
    let document = serde_json::json!({
        "status": "degraded",
        "global": {"totalReceived": 12, "totalSuccess": 9, "totalErrors": 3, "successRate": 0.75, "averageLatencyMs": 4.2},
        "byType": {
            "prometheus": {"totalReceived": 10, "totalSuccess": 9, "totalErrors": 1, "successRate": 0.9, "averageLatencyMs": 3.5},
            "github": {"totalReceived": 2, "totalSuccess": 0, "totalErrors": 2, "successRate": 0.0, "averageLatencyMs": 7.7}
        },
        "integrations": [
            {"id": "checkout-am", "service": "checkout", "provider": "prometheus", "status": "healthy",
             "totalReceived": 10, "totalSuccess": 9, "totalErrors": 1, "successRate": 0.9, "averageLatencyMs": 3.5,
             "lastEventAt": "2020-01-01T00:00:00Z", "lastError": null},
            {"id": "ci-github", "service": "ci", "provider": "github", "status": "degraded",
             "totalReceived": 2, "totalSuccess": 0, "totalErrors": 2, "successRate": 0.0, "averageLatencyMs": 7.7,
             "lastEventAt": null,
             "lastError": {"at": "2020-01-01T00:00:00Z", "status": 401, "message": "the signature does not match the body"}}
        ]
    });
    let served = document.clone();
    let router = axum::Router::new().route(
        "/integrations/health",
        axum::routing::get(move || {
            let served = served.clone();
            async move { axum::Json(served) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port for the fake server");
    let base = format!("http://{}", listener.local_addr().expect("its address"));
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let url = base.clone();
    let printed = tokio::task::spawn_blocking(move || tocsin(&["status", "--url", &url]))
        .await
        .expect("tocsin ran");
    let status = succeeded(&printed);
    assert!(status.starts_with("status: degraded\n"), "{status}");
    assert!(
        status.contains("all integrations: received 12, ok 9, errors 3, 75.0% ok, 4.2 ms average"),
        "{status}"
    );
    let provider = status
        .lines()
        .find(|line| line.starts_with("github "))
        .unwrap_or_else(|| panic!("no line for github:\n{status}"));
    assert!(provider.contains("received 2, ok 0, errors 2, 0.0% ok"), "{provider}");
    let healthy = status
        .lines()
        .find(|line| line.starts_with("checkout-am "))
        .unwrap_or_else(|| panic!("no line for checkout-am:\n{status}"));
    assert!(healthy.contains("healthy") && healthy.contains("d ago"), "{healthy}");
    let failing = status
        .lines()
        .find(|line| line.starts_with("ci-github "))
        .unwrap_or_else(|| panic!("no line for ci-github:\n{status}"));
    assert!(failing.contains("never"), "no event yet: {failing}");
    assert!(
        status.contains("last error: 401 the signature does not match the body"),
        "{status}"
    );

    let url = base.clone();
    let json = tokio::task::spawn_blocking(move || tocsin(&["status", "--json", "--url", &url]))
        .await
        .expect("tocsin ran");
    let printed: Value = serde_json::from_str(&succeeded(&json)).expect("--json prints JSON");
    assert_eq!(printed, document);
    server.abort();
}

#[tokio::test]
async fn integrations_are_created_disabled_enabled_and_rotated_in_a_running_local_stack() {
    let app = TestApp::start().await;
    let data = app.data_dir();
    let data = data.to_str().expect("a UTF-8 data folder");
    // TestApp writes the config it runs with next to the data folder.
    let config = app.data_dir().with_file_name("tocsin.yaml");
    let config = config.to_str().expect("a UTF-8 config path");
    let local = |args: &[&str]| {
        let args: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--data", data, "--config", config])
            .collect();
        tocsin(&args)
    };
    let deliver = |key: String| {
        let request = app
            .client
            .post(app.url("/integrations/webhook"))
            .header("x-integration-key", key)
            .body(fixture("events/webhook/trigger.json"));
        async move { request.send().await.expect("the stack answers").status().as_u16() }
    };

    let created = succeeded(&local(&[
        "integrations",
        "create",
        "--service",
        "checkout",
        "--provider",
        "webhook",
        "--url",
        &app.base,
    ]));
    assert!(
        created.contains(&format!("POST {}/integrations/webhook", app.base)),
        "{created}"
    );
    let key = printed_key(&created);
    assert_eq!(
        deliver(key.clone()).await,
        202,
        "the running stack accepts the new key at once"
    );

    let listed = succeeded(&local(&["integrations", "list"]));
    let row = |id: &str| {
        listed
            .lines()
            .find(|line| line.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row for {id}:\n{listed}"))
            .to_owned()
    };
    assert!(row("checkout-webhook").ends_with("data folder"), "{listed}");
    assert!(row("checkout-hook").ends_with("config file"), "{listed}");
    assert!(!listed.contains(&key), "keys are never listed:\n{listed}");

    succeeded(&local(&["integrations", "disable", "checkout-webhook"]));
    assert_eq!(deliver(key.clone()).await, 403, "a disabled integration refuses");
    succeeded(&local(&["integrations", "enable", "checkout-webhook"]));
    assert_eq!(deliver(key.clone()).await, 202, "enabled again");

    let rotated = succeeded(&local(&["integrations", "rotate-key", "checkout-webhook"]));
    let new_key = printed_key(&rotated);
    assert_ne!(new_key, key);
    assert_eq!(deliver(key).await, 404, "the old key is refused");
    assert_eq!(deliver(new_key).await, 202, "the new key is accepted");

    let in_file = failed(&local(&["integrations", "disable", "checkout-hook"]));
    assert!(
        in_file.contains("change it there"),
        "config-file integrations are the file's: {in_file}"
    );
    let again = failed(&local(&[
        "integrations",
        "create",
        "--service",
        "checkout",
        "--provider",
        "webhook",
        "--id",
        "checkout-hook",
    ]));
    assert!(again.contains("already exists"), "{again}");
    let no_service = failed(&local(&[
        "integrations",
        "create",
        "--service",
        "no-such-service",
        "--provider",
        "webhook",
    ]));
    assert!(no_service.contains("no service 'no-such-service'"), "{no_service}");
}
