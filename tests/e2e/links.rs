//! One-click action links: the email and SMS of a triggered incident carry
//! signed links to `/act/{token}`; GET shows a page and changes nothing
//! (a mail scanner follows every link), POST acknowledges or resolves.

use chrono::Utc;
use serde_json::{json, Value};
use tocsin_core::config::Secret;
use tocsin_core::incident::IncidentId;
use tocsin_core::links::{ActionSigner, LinkAction};

use crate::app::{keys, wait_for, TestApp};

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
      sms: ["+15555550123"]
settings:
  public_url: https://tocsin.example.test/
  link_signing_secret: e2e-link-signing-secret-0123456789abcdef
  # Every transition texts the same number: no throttle (on by default).
  throttle: {sms: {enabled: false}}
"##;

const SECRET: &str = "e2e-link-signing-secret-0123456789abcdef";

const SUMMARY: &str = "Disk <var> & 'db-1' is 97% full";

/// The token of the `label:` line of an email's text body.
fn token_of(text: &str, label: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{label}:")))
        .unwrap_or_else(|| panic!("no {label} link in:\n{text}"));
    let url = line[label.len() + 1..].trim();
    let token = url
        .strip_prefix("https://tocsin.example.test/act/")
        .unwrap_or_else(|| panic!("not an action link on the public URL: {url}"));
    token.to_owned()
}

async fn status_of(app: &TestApp, id: &str) -> String {
    let reply = app.api_get(&format!("/incidents/{id}")).await;
    reply.expect(200);
    reply.json()["status"].as_str().unwrap_or_default().to_owned()
}

fn html(reply: &crate::app::Reply) -> &str {
    let content_type = reply.headers["content-type"].to_str().unwrap_or_default();
    assert!(content_type.starts_with("text/html"), "{content_type}: {reply}");
    assert!(!reply.text.contains("<script"), "{reply}");
    &reply.text
}

/// The SMS's segments as the notifier reported them, counted again: GSM-7
/// (this text has no character outside it), 160 in one, 153 each beyond.
fn gsm7_segments(text: &str) -> u64 {
    let septets: usize = text
        .chars()
        .map(|c| match c {
            '^' | '{' | '}' | '\\' | '[' | '~' | ']' | '|' => 2,
            _ => 1,
        })
        .sum();
    if septets <= 160 {
        1
    } else {
        septets.div_ceil(153) as u64
    }
}

#[tokio::test]
async fn links_in_the_email_acknowledge_and_resolve_only_when_confirmed() {
    let app = TestApp::start_with(Some(CONFIG), keys::OPS).await;
    app.enqueue(&json!({
        "routing_key": keys::CHECKOUT_EVENTS,
        "event_action": "trigger",
        "dedup_key": "links/disk",
        "payload": {"summary": SUMMARY, "source": "db-1", "severity": "critical"},
    }))
    .await
    .expect(202);
    let lines = app
        .wait_for_outbox("the email and the SMS of the trigger", |lines| {
            lines.iter().filter(|l| l["transition"] == "triggered").count() == 2
        })
        .await;
    let message = |channel: &str| -> Value {
        lines
            .iter()
            .find(|l| l["channel"] == channel)
            .unwrap_or_else(|| panic!("no {channel} in {lines:?}"))["message"]
            .clone()
    };
    let email = message("email");
    let id = lines[0]["incident_id"].as_str().unwrap().to_owned();
    let text = email["text"].as_str().unwrap();
    let acknowledge = token_of(text, "Acknowledge");
    let resolve = token_of(text, "Resolve");
    assert!(email["html"].as_str().unwrap().contains(&format!("/act/{acknowledge}")));

    // The SMS carries an acknowledge link and fits the segments it reports.
    let sms = message("sms");
    let sms_text = sms["text"].as_str().unwrap();
    let sms_token = sms_text
        .rsplit_once("Ack: https://tocsin.example.test/act/")
        .map(|(_, t)| t.to_owned())
        .unwrap_or_else(|| panic!("no link in the SMS: {sms_text}"));
    assert_eq!(sms["encoding"], "gsm7", "{sms}");
    assert_eq!(sms["segments"], 1, "{sms}");
    assert_eq!(gsm7_segments(sms_text), 1, "{sms_text}");

    // A scanner (or the person) opening the link: a page, no change.
    for token in [&acknowledge, &sms_token] {
        let page = app.send(app.client.get(app.url(&format!("/act/{token}")))).await;
        page.expect(200);
        let body = html(&page);
        assert!(body.contains("Acknowledge this incident?"), "{page}");
        assert!(body.contains("<form method=\"post\">"), "{page}");
        assert!(
            body.contains("Disk &lt;var&gt; &amp; &#39;db-1&#39; is 97% full"),
            "{page}"
        );
        assert_eq!(page.headers["cache-control"], "no-store");
        assert_eq!(page.headers["referrer-policy"], "no-referrer");
    }
    assert_eq!(status_of(&app, &id).await, "open", "a GET must change nothing");

    // A tampered token: refused, nothing changes.
    let mut tampered: Vec<char> = acknowledge.chars().collect();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    for request in [
        app.client.get(app.url(&format!("/act/{tampered}"))),
        app.client.post(app.url(&format!("/act/{tampered}"))),
        app.client.post(app.url("/act/not-a-token")),
    ] {
        let reply = app.send(request).await;
        reply.expect(400);
        assert!(html(&reply).contains("This link is not valid"), "{reply}");
    }
    assert_eq!(status_of(&app, &id).await, "open");

    // Signed with the config's secret, but expired (a day and a second
    // ago), or for an incident that does not exist.
    let signer = ActionSigner::new(Secret::new(SECRET)).unwrap();
    let incident = IncidentId::parse(&id).unwrap();
    let expired = signer.token(
        &incident,
        LinkAction::Acknowledge,
        None,
        Utc::now() - chrono::Duration::hours(24) - chrono::Duration::seconds(1),
    );
    for request in [
        app.client.get(app.url(&format!("/act/{expired}"))),
        app.client.post(app.url(&format!("/act/{expired}"))),
    ] {
        let reply = app.send(request).await;
        reply.expect(410);
        assert!(html(&reply).contains("This link has expired"), "{reply}");
    }
    let unknown = IncidentId::parse("inc_00000000000000000000").unwrap();
    let unknown = signer.token(&unknown, LinkAction::Acknowledge, None, Utc::now());
    app.send(app.client.post(app.url(&format!("/act/{unknown}"))))
        .await
        .expect(404);
    assert_eq!(status_of(&app, &id).await, "open");

    // The confirmation: acknowledged, on behalf of the email's recipient.
    let done = app
        .send(
            app.client
                .post(app.url(&format!("/act/{acknowledge}")))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(""),
        )
        .await;
    done.expect(200);
    assert!(html(&done).contains("<h1>Acknowledged</h1>"), "{done}");
    assert_eq!(status_of(&app, &id).await, "acknowledged");
    wait_for("the acknowledge in the timeline, by the link's recipient", || async {
        let reply = app.api_get(&format!("/incidents/{id}/timeline")).await;
        reply.text.contains("link:oncall@example.com").then_some(())
    })
    .await;

    // Again, by email or SMS: already done, said so.
    for token in [&acknowledge, &sms_token] {
        let again = app.send(app.client.post(app.url(&format!("/act/{token}")))).await;
        again.expect(409);
        assert!(
            html(&again).contains("already <strong>acknowledged</strong>"),
            "{again}"
        );
        let page = app.send(app.client.get(app.url(&format!("/act/{token}")))).await;
        page.expect(200);
        assert!(!html(&page).contains("<form"), "nothing left to confirm: {page}");
    }

    // The email's resolve link still applies.
    let page = app.send(app.client.get(app.url(&format!("/act/{resolve}")))).await;
    page.expect(200);
    assert!(html(&page).contains("Resolve this incident?"), "{page}");
    assert_eq!(status_of(&app, &id).await, "acknowledged");
    app.send(app.client.post(app.url(&format!("/act/{resolve}"))))
        .await
        .expect(200);
    assert_eq!(status_of(&app, &id).await, "resolved");
}

#[tokio::test]
async fn without_a_signing_secret_there_are_no_links_and_no_pages() {
    let config = CONFIG.replace("  link_signing_secret: e2e-link-signing-secret-0123456789abcdef\n", "");
    let app = TestApp::start_with(Some(&config), keys::OPS).await;
    app.enqueue(&json!({
        "routing_key": keys::CHECKOUT_EVENTS,
        "event_action": "trigger",
        "dedup_key": "links/none",
        "payload": {"summary": "Disk full", "source": "db-1", "severity": "critical"},
    }))
    .await
    .expect(202);
    let lines = app
        .wait_for_outbox("the email and the SMS of the trigger", |lines| lines.len() == 2)
        .await;
    for line in &lines {
        assert!(!line["message"].to_string().contains("/act/"), "{line}");
    }
    let reply = app
        .send(
            app.client
                .get(app.url("/act/AQE_mhwH0uhLapDBZmfrAgCUupikwZpltLVl5x28vprr")),
        )
        .await;
    reply.expect(404);
}

/// The api function on AWS: the signing secret read from Secrets Manager
/// (TOCSIN_LINK_SECRET_ARN), the same pages, the incident in the table.
mod on_aws {
    use std::sync::Arc;

    use serde_json::{json, Value};
    use tocsin_aws::dynamodb::{create_table, DynamoStore};
    use tocsin_core::contract::sample_event;
    use tocsin_core::event::{Action, DedupKey, ServiceId};
    use tocsin_core::incident::IncidentStatus;
    use tocsin_core::ports::IncidentStore;
    use tocsin_core::process::ProcessService;

    use super::*;
    use crate::runtime_api::{function_bin, Function};

    /// An API Gateway HTTP API (payload 2.0) request for `/act/{token}`.
    fn act_request(method: &str, token: &str) -> Value {
        let path = format!("/act/{token}");
        json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": "",
            "headers": {"accept": "text/html", "content-type": "application/x-www-form-urlencoded"},
            "requestContext": {
                "accountId": "123456789012",
                "apiId": "a1b2c3d4e5",
                "domainName": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
                "domainPrefix": "a1b2c3d4e5",
                "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.10", "userAgent": "Mozilla/5.0"},
                "requestId": "links-test",
                "routeKey": "$default",
                "stage": "$default",
                "time": "23/Nov/2026:09:00:00 +0000",
                "timeEpoch": 1795424400000_u64
            },
            "body": "",
            "isBase64Encoded": false
        })
    }

    #[tokio::test]
    async fn the_api_function_serves_action_links_signed_with_the_secrets_manager_secret() {
        let moto = crate::aws_stack::moto_url();
        let sdk = crate::aws_stack::sdk_config(&moto).await;
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let table = format!("tocsin-{suffix}");
        let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
        create_table(&dynamodb, &table).await.unwrap();
        let store = Arc::new(DynamoStore::new(dynamodb, &table));
        let process = ProcessService::new(store.clone());
        let trigger = sample_event("checkout", "links-disk", Action::Trigger);
        process.apply(&trigger, trigger.received_at).await.unwrap();
        let service = ServiceId::parse("checkout").unwrap();
        let key = DedupKey::parse("links-disk").unwrap();
        let incident = store.latest(&service, &key).await.unwrap().expect("the incident");

        // JSON with a secret field, as integration secrets may be stored.
        let created = aws_sdk_secretsmanager::Client::new(&sdk)
            .create_secret()
            .name(format!("tocsin/links-{suffix}"))
            .secret_string(json!({ "secret": SECRET }).to_string())
            .send()
            .await
            .unwrap();
        let arn = created.arn().expect("the secret's ARN").to_owned();
        let scratch = tempfile::tempdir().unwrap();
        let env = [
            ("AWS_ENDPOINT_URL", moto.as_str()),
            ("TOCSIN_TABLE", table.as_str()),
            ("TOCSIN_LINK_SECRET_ARN", arn.as_str()),
            ("TOCSIN_LINK_TTL_HOURS", "2"),
        ];
        let mut api = Function::start(&function_bin("api"), &env, scratch.path()).await;

        let signer = ActionSigner::new(Secret::new(SECRET)).unwrap();
        let token = signer.token(
            &incident.id,
            LinkAction::Acknowledge,
            Some("oncall@example.com"),
            Utc::now(),
        );
        let status = |answer: &Value| answer["statusCode"].as_u64().unwrap_or_default();
        let body = |answer: &Value| answer["body"].as_str().unwrap_or_default().to_owned();

        let page = api.invoke(act_request("GET", &token)).await.unwrap();
        assert_eq!(status(&page), 200, "{page}");
        assert!(body(&page).contains("<form method=\"post\">"), "{page}");
        let current = store.get(&incident.id).await.unwrap().unwrap();
        assert_eq!(current.status, IncidentStatus::Open, "a GET changes nothing");

        let forged = ActionSigner::new(Secret::new("another-secret-0123456789abcdef-0123")).unwrap();
        let forged = forged.token(&incident.id, LinkAction::Acknowledge, None, Utc::now());
        let refused = api.invoke(act_request("POST", &forged)).await.unwrap();
        assert_eq!(status(&refused), 400, "{refused}");
        let current = store.get(&incident.id).await.unwrap().unwrap();
        assert_eq!(current.status, IncidentStatus::Open);

        let done = api.invoke(act_request("POST", &token)).await.unwrap();
        assert_eq!(status(&done), 200, "{done}");
        assert!(body(&done).contains("<h1>Acknowledged</h1>"), "{done}");
        let current = store.get(&incident.id).await.unwrap().unwrap();
        assert_eq!(current.status, IncidentStatus::Acknowledged);
        let again = api.invoke(act_request("POST", &token)).await.unwrap();
        assert_eq!(status(&again), 409, "{again}");
    }
}
