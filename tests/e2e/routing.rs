//! Routing on the local stack: each channel is notified against its own
//! minimum severity (a warning emails but texts no one when SMS is for
//! critical incidents only), and a service that declares no `notify` is
//! routed by `settings.default_notify`.

use serde_json::{json, Value};

use crate::app::{keys, outbox_for, settle, TestApp};

const CONFIG: &str = r##"
api_keys:
  - {name: ops, key: sk_e2e_ops_0123456789abcdef, scopes: [events:write, incidents:read, incidents:write]}

settings:
  default_notify:
    email: [platform@example.com]
    sms: ["+15555550199"]
    min_severity_by_channel: {sms: critical}

services:
  - id: checkout
    integrations:
      - {id: checkout-pd, type: events-v2, key: b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2}
    notify:
      email: [oncall@example.com]
      sms: ["+15555550123"]
      min_severity: info
      min_severity_by_channel: {sms: critical}
  - id: payments
    integrations:
      - {id: payments-pd, type: events-v2, key: 1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b}
"##;

async fn trigger(app: &TestApp, routing_key: &str, dedup_key: &str, severity: &str) -> String {
    app.enqueue(&json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {"summary": format!("{dedup_key} is failing"), "source": "db-1", "severity": severity},
    }))
    .await
    .expect(202);
    let incident = app.wait_for_incident(dedup_key, |i| i["dedup_key"] == dedup_key).await;
    incident["id"].as_str().expect("an incident id").to_owned()
}

/// The (channel, recipient) pairs an incident's triggered notifications went to.
fn sent(outbox: &[Value], incident: &str) -> Vec<(String, String)> {
    let mut sent: Vec<(String, String)> = outbox_for(outbox, incident)
        .into_iter()
        .filter(|l| l["transition"] == "triggered")
        .map(|l| {
            (
                l["channel"].as_str().unwrap_or_default().to_owned(),
                l["to"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    sent.sort();
    sent
}

fn pair(channel: &str, to: &str) -> (String, String) {
    (channel.to_owned(), to.to_owned())
}

#[tokio::test]
async fn each_channel_has_its_minimum_and_a_service_without_notify_gets_the_default() {
    let app = TestApp::start_with(Some(CONFIG), keys::OPS).await;
    let disk = trigger(&app, keys::CHECKOUT_EVENTS, "disk", "warning").await;
    let db = trigger(&app, keys::CHECKOUT_EVENTS, "db", "critical").await;
    let ledger = trigger(&app, keys::PAYMENTS_EVENTS, "ledger", "warning").await;
    let vault = trigger(&app, keys::PAYMENTS_EVENTS, "vault", "critical").await;

    app.wait_for_outbox("every email, and the critical incidents' SMS", |lines| {
        sent(lines, &disk).contains(&pair("email", "oncall@example.com"))
            && sent(lines, &db).len() == 2
            && sent(lines, &ledger).contains(&pair("email", "platform@example.com"))
            && sent(lines, &vault).len() == 2
    })
    .await;
    settle().await;
    let outbox = app.outbox();

    // A warning emails, but SMS is for critical incidents only.
    assert_eq!(
        sent(&outbox, &disk),
        [pair("email", "oncall@example.com")],
        "{outbox:?}"
    );
    assert_eq!(
        sent(&outbox, &db),
        [pair("email", "oncall@example.com"), pair("sms", "+15555550123")],
        "{outbox:?}"
    );
    // payments declares no notify: the default policy's recipients and minimums.
    assert_eq!(
        sent(&outbox, &ledger),
        [pair("email", "platform@example.com")],
        "{outbox:?}"
    );
    assert_eq!(
        sent(&outbox, &vault),
        [pair("email", "platform@example.com"), pair("sms", "+15555550199")],
        "{outbox:?}"
    );
}

/// `tocsin apply` writes each service with its effective policy, so the
/// functions, which never see the settings, route as the local stack does.
#[tokio::test]
async fn apply_writes_the_default_policy_into_a_service_without_notify() {
    use tocsin_aws::dynamodb::DynamoStore;
    use tocsin_core::event::{ServiceId, Severity};
    use tocsin_core::notify::Channel;
    use tocsin_core::ports::ConfigStore;

    let moto = std::env::var("TOCSIN_MOTO_URL")
        .unwrap_or_else(|_| panic!("TOCSIN_MOTO_URL is not set: this test needs a moto server (tests/run starts one)"));
    let dir = tempfile::tempdir().expect("a temporary folder");
    let file = dir.path().join("tocsin.yaml");
    std::fs::write(&file, CONFIG).expect("the config is written");
    let table = format!("routing-{}", uuid::Uuid::new_v4().simple());
    let output = std::process::Command::new(crate::app::tocsin_bin())
        .arg("apply")
        .arg("-f")
        .arg(&file)
        .args(["--table", &table, "--create-table"])
        .env("AWS_ENDPOINT_URL", &moto)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .expect("tocsin apply runs");
    assert!(
        output.status.success(),
        "tocsin apply failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&moto)
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .load()
        .await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), &table);
    let stored = |id: &'static str| {
        let store = &store;
        async move {
            store
                .service(&ServiceId::parse(id).expect("a service id"))
                .await
                .expect("the table answers")
                .unwrap_or_else(|| panic!("{id} is in the table"))
        }
    };
    let payments = stored("payments").await;
    let emails: Vec<&str> = payments.policy.email.iter().map(|e| e.as_str()).collect();
    let numbers: Vec<&str> = payments.policy.sms.iter().map(|n| n.as_str()).collect();
    assert_eq!(emails, ["platform@example.com"]);
    assert_eq!(numbers, ["+15555550199"]);
    assert_eq!(payments.policy.min_severity_of(Channel::Sms), Severity::Critical);
    assert_eq!(payments.policy.min_severity_of(Channel::Email), Severity::Info);
    let checkout = stored("checkout").await;
    assert_eq!(checkout.policy.min_severity_of(Channel::Sms), Severity::Critical);
    assert_eq!(checkout.policy.email[0].as_str(), "oncall@example.com");
}
