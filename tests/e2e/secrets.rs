//! No key, secret or token ever appears in a log line or an answer: the
//! stack runs with debug logging and a config full of credentials (literal
//! and read from a file), is driven through good and bad requests of every
//! kind (wrong keys one character off, forged signatures, bad API keys,
//! previews, incidents, a Slack delivery that fails), and then every answer
//! and every line it logged is searched for each credential and for its
//! first 12 characters.

use serde_json::json;

use crate::app::{signature, TestApp};

const API_KEY: &str = "sk_leaktest_api_key_9f8e7d6c5b4a";
const WEBHOOK_KEY: &str = "a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7";
const FILE_KEY: &str = "b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8";
const EVENTS_KEY: &str = "c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9";
const LITERAL_SECRET: &str = "leaktest-literal-signing-secret";
const FILE_SECRET: &str = "leaktest-file-held-signing-secret";
/// The secret part of a Slack incoming webhook URL; the URL points at a
/// closed port, so every Slack delivery fails and is logged.
const SLACK_PATH_SECRET: &str = "leaktestslackpathsecret0123456789";
/// An SMS recipient: only its last four digits may be shown anywhere.
const PHONE: &str = "+14155550142";

#[tokio::test]
async fn no_credential_appears_in_any_log_line_or_answer() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("hook-secret");
    std::fs::write(&secret_file, format!("{FILE_SECRET}\n")).unwrap();
    let config = format!(
        r##"
api_keys:
  - {{name: ops, key: {API_KEY}, scopes: [events:write, incidents:read, incidents:write]}}
services:
  - id: checkout
    integrations:
      - {{id: literal, type: webhook, key: {WEBHOOK_KEY}, secret: {LITERAL_SECRET}}}
      - {{id: from-file, type: webhook, key: {FILE_KEY}, secret: {{file: {file}}}}}
      - {{id: events, type: events-v2, key: {EVENTS_KEY}}}
    notify:
      slack: "#checkout"
      sms: ["{PHONE}"]
settings:
  slack_webhook_url: http://127.0.0.1:1/services/T000/B000/{SLACK_PATH_SECRET}
"##,
        file = secret_file.display()
    );
    let app = TestApp::start_logging(Some(&config), API_KEY, "debug").await;

    let body = br#"{"title":"Leak test","severity":"critical","id":"leak","status":"triggered"}"#.to_vec();
    let off_by_one = |key: &str| format!("{}{}", &key[..31], if key.ends_with('0') { '1' } else { '0' });
    let mut answers = Vec::new();
    let mut record = |reply: crate::app::Reply| {
        answers.push(format!("{reply} {:?}", reply.headers));
        reply
    };

    // Webhooks: signed right, forged, unsigned, with keys one character off.
    for (key, secret) in [(WEBHOOK_KEY, LITERAL_SECRET), (FILE_KEY, FILE_SECRET)] {
        let signed = signature(secret, &body);
        let key_header = ("x-integration-key", key);
        record(
            app.post_bytes(
                "/integrations/webhook",
                &[key_header, ("x-signature", &signed)],
                body.clone(),
            )
            .await,
        )
        .expect(202);
        let forged = signature("not-the-secret-at-all", &body);
        record(
            app.post_bytes(
                "/integrations/webhook",
                &[key_header, ("x-signature", &forged)],
                body.clone(),
            )
            .await,
        )
        .expect(401);
        record(
            app.post_bytes("/integrations/webhook", &[key_header], body.clone())
                .await,
        )
        .expect(401);
        let wrong = off_by_one(key);
        record(
            app.post_bytes("/integrations/webhook", &[("x-integration-key", &wrong)], body.clone())
                .await,
        )
        .expect(404);
        let bearer = format!("Bearer {wrong}");
        record(
            app.post_bytes("/integrations/webhook", &[("authorization", &bearer)], body.clone())
                .await,
        )
        .expect(404);
        record(
            app.post_bytes(
                &format!("/integrations/webhook/preview?token={key}"),
                &[("x-signature", &signed)],
                body.clone(),
            )
            .await,
        )
        .expect(200);
        // A key given to another provider's endpoint.
        record(
            app.post_bytes(&format!("/integrations/prometheus?token={key}"), &[], body.clone())
                .await,
        )
        .expect(404);
    }

    // Events API v2: the routing key travels in the body.
    let trigger = json!({"routing_key": EVENTS_KEY, "event_action": "trigger", "dedup_key": "leak",
                         "payload": {"summary": "leak test", "source": "e2e", "severity": "critical"}});
    record(app.enqueue(&trigger).await).expect(202);
    let mut wrong = trigger.clone();
    wrong["routing_key"] = json!(off_by_one(EVENTS_KEY));
    record(app.enqueue(&wrong).await).expect(404);
    let mut malformed = trigger.clone();
    malformed["routing_key"] = json!(format!("{EVENTS_KEY}zz"));
    record(app.enqueue(&malformed).await);

    // The incidents API with the right key, a wrong one, and none.
    let incident = app
        .wait_for_incident("the leak-test incident", |i| i["dedup_key"] == "leak")
        .await;
    let id = incident["id"].as_str().unwrap().to_owned();
    record(app.api_get("/incidents").await).expect(200);
    record(app.api_post(&format!("/incidents/{id}/acknowledge"), API_KEY).await).expect(200);
    let wrong_api_key = format!("{}x", &API_KEY[..API_KEY.len() - 1]);
    record(app.api_post(&format!("/incidents/{id}/resolve"), &wrong_api_key).await).expect(401);
    record(app.send(app.client.get(app.url("/incidents"))).await).expect(401);

    // Let the Slack deliveries fail (and be logged) before reading the log.
    crate::app::wait_for("a failed Slack delivery in the log", || async {
        app.stderr()
            .lines()
            .any(|line| line.contains("will retry") && line.contains("notifications"))
            .then_some(())
    })
    .await;

    // And the SMS of the trigger, delivered to the outbox.
    app.wait_for_outbox("the SMS of the leak-test incident", |lines| {
        lines.iter().any(|line| line["channel"] == "sms" && line["to"] == PHONE)
    })
    .await;

    let log = app.stderr();
    assert!(
        log.contains("DEBUG") || log.contains("debug"),
        "the stack did not log at debug level"
    );
    let credentials = [
        API_KEY,
        WEBHOOK_KEY,
        FILE_KEY,
        EVENTS_KEY,
        LITERAL_SECRET,
        FILE_SECRET,
        SLACK_PATH_SECRET,
    ];
    let mut leaks = Vec::new();
    for credential in credentials {
        for needle in [credential, &credential[..12]] {
            for (n, line) in log.lines().enumerate() {
                if line.contains(needle) {
                    leaks.push(format!("log line {n} carries '{needle}': {line}"));
                }
            }
            for answer in &answers {
                if answer.contains(needle) {
                    leaks.push(format!("an answer carries '{needle}': {answer}"));
                }
            }
        }
    }
    // The number whole, or its national part, is a leak; its last four digits are not.
    // stdout too: the banner there shows keys on purpose, never numbers.
    let terminal = format!("{log}\n{}", app.stdout());
    for needle in [PHONE, &PHONE[2..], &PHONE[..8]] {
        for (n, line) in terminal.lines().enumerate() {
            if line.contains(needle) {
                leaks.push(format!("log line {n} carries the phone number '{needle}': {line}"));
            }
        }
    }
    assert!(leaks.is_empty(), "{} leaks:\n{}", leaks.len(), leaks.join("\n"));
    assert!(answers.len() >= 20, "only {} answers checked", answers.len());
}
