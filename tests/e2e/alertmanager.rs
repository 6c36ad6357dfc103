//! Conformance with the real Prometheus Alertmanager: it delivers to the
//! local stack through webhook_configs, pagerduty_configs (Events API v2)
//! and victorops_configs (Splunk On-Call, key in the path), an alert fires,
//! then resolves, and the incidents open and close.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::app::{free_port, wait_for_within, TestApp};

/// Alertmanager batches and retries: give it time.
const DEADLINE: Duration = Duration::from_secs(60);

const WEBHOOK_KEY: &str = "7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a";
const EVENTS_KEY: &str = "8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b";
const ONCALL_KEY: &str = "9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d";
const API_KEY: &str = "sk_e2e_alertmanager_0123456789";

/// A service per receiver, so that they never share a dedup key space.
const TOCSIN_CONFIG: &str = r##"
api_keys:
  - {name: ops, key: sk_e2e_alertmanager_0123456789, scopes: [events:write, incidents:read, incidents:write]}
services:
  - id: via-webhook
    name: Via webhook_configs
    integrations:
      - {id: am-webhook, type: prometheus, key: 7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a}
    notify:
      email: [oncall@example.com]
  - id: via-pagerduty
    name: Via pagerduty_configs
    integrations:
      - {id: am-pagerduty, type: events-v2, key: 8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b}
    notify:
      email: [oncall@example.com]
  - id: via-victorops
    name: Via victorops_configs
    integrations:
      - {id: am-victorops, type: splunk-oncall, key: 9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d}
    notify:
      email: [oncall@example.com]
"##;

fn alertmanager_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("TOCSIN_ALERTMANAGER_BIN") {
        return Some(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut candidates = vec![PathBuf::from("/usr/bin/prometheus-alertmanager")];
    for dir in std::env::split_paths(&path) {
        candidates.push(dir.join("prometheus-alertmanager"));
        candidates.push(dir.join("alertmanager"));
    }
    candidates.into_iter().find(|c| c.is_file())
}

/// A running Alertmanager, killed on drop (its log shown if the test failed).
struct Alertmanager {
    child: Child,
    base: String,
    dir: TempDir,
}

impl Alertmanager {
    fn start(bin: &PathBuf, config: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tocsin-e2e-alertmanager-")
            .tempdir()
            .expect("cannot create a temporary folder");
        let config_path = dir.path().join("alertmanager.yml");
        std::fs::write(&config_path, config).expect("cannot write alertmanager.yml");
        let port = free_port();
        let log = File::create(dir.path().join("alertmanager.log")).expect("cannot create the log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cannot share the log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Alertmanager {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("alertmanager exited with {status}:\n{}", self.log())),
            _ => None,
        }
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- alertmanager log ---\n{}", self.log());
        }
    }
}

/// RFC 3339 in UTC, e.g. 2024-05-14T09:21:18Z.
fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .expect("the clock is before 1970")
        .as_secs() as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[test]
fn rfc3339_formats_utc_times() {
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_secs(1_715_678_478)),
        "2024-05-14T09:21:18Z"
    );
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
        "2000-02-29T00:00:00Z"
    );
}

fn alert(starts_at: SystemTime, ends_at: SystemTime) -> Value {
    json!([{
        "labels": {"alertname": "E2EDiskFull", "severity": "critical", "instance": "db-7:9100", "job": "node"},
        "annotations": {"summary": "Disk full on db-7", "description": "/var is at 99%"},
        "startsAt": rfc3339(starts_at),
        "endsAt": rfc3339(ends_at),
        "generatorURL": "http://prometheus.example.com:9090/graph",
    }])
}

async fn incident_of(app: &TestApp, service: &str, status: &str) -> Option<Value> {
    app.incidents(&format!("service={service}"))
        .await
        .into_iter()
        .find(|i| i["status"] == status)
}

#[tokio::test]
async fn alertmanager_delivers_through_webhook_pagerduty_and_victorops_configs() {
    let Some(bin) = alertmanager_bin() else {
        if std::env::var("TOCSIN_SKIP_ALERTMANAGER").as_deref() == Ok("1") {
            eprintln!("SKIPPED: prometheus-alertmanager is not installed and TOCSIN_SKIP_ALERTMANAGER=1");
            return;
        }
        panic!(
            "prometheus-alertmanager is not installed: run tests/run (it installs it), \
             or `apt-get install prometheus-alertmanager`, or set TOCSIN_ALERTMANAGER_BIN; \
             TOCSIN_SKIP_ALERTMANAGER=1 skips this test"
        );
    };

    let app = TestApp::start_with(Some(TOCSIN_CONFIG), API_KEY).await;
    let config = format!(
        r#"
global:
  resolve_timeout: 30s
route:
  receiver: nowhere
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
  routes:
    - receiver: tocsin-webhook
      continue: true
    - receiver: tocsin-pagerduty
      continue: true
    - receiver: tocsin-victorops
      continue: true
receivers:
  - name: nowhere
  - name: tocsin-webhook
    webhook_configs:
      - url: {base}/integrations/prometheus
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials: {WEBHOOK_KEY}
  - name: tocsin-pagerduty
    pagerduty_configs:
      - routing_key: {EVENTS_KEY}
        url: {base}/v2/enqueue
        send_resolved: true
  - name: tocsin-victorops
    victorops_configs:
      - api_key: {ONCALL_KEY}
        api_url: {base}/integrations/splunk-oncall/
        routing_key: db-team
        send_resolved: true
"#,
        base = app.base
    );
    let mut alertmanager = Alertmanager::start(&bin, &config);

    // Ready when its API answers.
    let ready_url = format!("{}/-/ready", alertmanager.base);
    let mut exited = None;
    wait_for_within(Duration::from_secs(30), "Alertmanager to be ready", || {
        let url = ready_url.clone();
        let client = app.client.clone();
        exited = exited.take().or_else(|| alertmanager.exited());
        let gone = exited.is_some();
        async move {
            if gone {
                return Some(());
            }
            let answer = client.get(&url).send().await.ok()?;
            answer.status().is_success().then_some(())
        }
    })
    .await;
    if let Some(problem) = exited {
        panic!("{problem}");
    }

    let started = SystemTime::now();
    let alerts_url = format!("{}/api/v2/alerts", alertmanager.base);
    let post_alert = |body: Value| {
        let client = app.client.clone();
        let url = alerts_url.clone();
        async move {
            let answer = client
                .post(&url)
                .json(&body)
                .send()
                .await
                .expect("cannot reach Alertmanager");
            let status = answer.status();
            let text = answer.text().await.unwrap_or_default();
            assert!(status.is_success(), "POST /api/v2/alerts: {status} {text}");
        }
    };

    post_alert(alert(started, started + Duration::from_secs(3600))).await;

    let app = &app;
    let via_webhook = wait_for_within(DEADLINE, "an open incident through webhook_configs", || async move {
        incident_of(app, "via-webhook", "open").await
    })
    .await;
    let via_pagerduty = wait_for_within(DEADLINE, "an open incident through pagerduty_configs", || async move {
        incident_of(app, "via-pagerduty", "open").await
    })
    .await;
    let via_victorops = wait_for_within(DEADLINE, "an open incident through victorops_configs", || async move {
        incident_of(app, "via-victorops", "open").await
    })
    .await;
    assert_eq!(
        via_victorops["origin"]["integration"], "am-victorops",
        "{via_victorops}"
    );
    assert_eq!(via_victorops["severity"], "critical", "{via_victorops}");

    assert_eq!(via_webhook["severity"], "critical", "{via_webhook}");
    assert_eq!(via_webhook["summary"], "Disk full on db-7", "{via_webhook}");
    assert_eq!(via_webhook["source"], "db-7:9100", "{via_webhook}");
    assert_eq!(via_webhook["origin"]["integration"], "am-webhook", "{via_webhook}");
    assert_eq!(
        via_pagerduty["origin"]["integration"], "am-pagerduty",
        "{via_pagerduty}"
    );
    let summary = via_pagerduty["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("E2EDiskFull"),
        "the PagerDuty summary names the alert: {via_pagerduty}"
    );

    // The alert ends now: both receivers send resolved.
    let now = SystemTime::now();
    post_alert(alert(started, now)).await;

    for incident in [&via_webhook, &via_pagerduty, &via_victorops] {
        let service = incident["service"].as_str().unwrap_or_default().to_owned();
        let id = incident["id"].clone();
        wait_for_within(DEADLINE, &format!("the {service} incident to be resolved"), || {
            let id = id.clone();
            async move {
                app.incidents("status=resolved")
                    .await
                    .into_iter()
                    .find(|i| i["id"] == id)
            }
        })
        .await;
    }

    let all = app.incidents("").await;
    assert_eq!(all.len(), 3, "one incident per receiver: {all:#?}");
    if let Some(problem) = alertmanager.exited() {
        panic!("{problem}");
    }
}
