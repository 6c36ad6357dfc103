//! End to end through the real Lambda binaries: ingest-prometheus invoked
//! with API Gateway events from events/, the processor with the SQS
//! messages that actually landed in the AWS API server (moto), and the
//! incidents read back from the table the processor wrote, then the
//! dispatcher and the email, SMS, Slack and webhook notifiers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use serde_json::{json, Value};
use tocsin_aws::dynamodb::{create_table, incident_key, DynamoStore};
use tocsin_aws::stream::stream_record;
use tocsin_core::auth::{ApiKey, KeyHash, Scope};
use tocsin_core::config::{EmailAddress, FieldMapping, Integration, NotificationPolicy, PhoneNumber, Service};
use tocsin_core::contract::sample_event;
use tocsin_core::event::{Action, DedupKey, IntegrationId, ServiceId, Severity};
use tocsin_core::incident::{IncidentStatus, TransitionKind};
use tocsin_core::ports::IncidentStore;
use tocsin_core::process::ProcessService;
use tocsin_core::providers::ProviderKind;

use crate::app::{fixture, keys};
use crate::runtime_api::{function_bin, Function};

fn moto_url() -> String {
    std::env::var("TOCSIN_MOTO_URL")
        .unwrap_or_else(|_| panic!("TOCSIN_MOTO_URL is not set: this test needs a moto server (tests/run starts one)"))
}

async fn sdk_config(url: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(url)
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .load()
        .await
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// An API Gateway HTTP API event for the Alertmanager endpoint, carrying
/// one of the shipped sample payloads.
fn api_gateway_event(body_fixture: &str) -> Value {
    let mut event: Value = serde_json::from_slice(&fixture("events/aws/apigw-prometheus-firing.json")).unwrap();
    event["body"] = Value::String(String::from_utf8(fixture(body_fixture)).unwrap());
    event
}

/// Takes what is on the queue, as the Lambda service's SQS poller does,
/// and shapes it as the SQS event the processor receives.
async fn take_sqs_event(client: &aws_sdk_sqs::Client, url: &str, arn: &str) -> (Value, Vec<String>) {
    let mut records = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..5 {
        let output = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        if output.messages().is_empty() && !records.is_empty() {
            break;
        }
        for message in output.messages() {
            let attributes: HashMap<String, String> = message
                .attributes()
                .map(|a| a.iter().map(|(k, v)| (k.as_str().to_owned(), v.clone())).collect())
                .unwrap_or_default();
            records.push(json!({
                "messageId": message.message_id(),
                "receiptHandle": message.receipt_handle(),
                "body": message.body(),
                "attributes": attributes,
                "messageAttributes": {},
                "md5OfBody": message.md5_of_body(),
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": "us-east-1",
            }));
            handles.push(message.receipt_handle().unwrap().to_owned());
        }
    }
    (json!({ "Records": records }), handles)
}

/// A FIFO queue: its URL and ARN.
async fn fifo_queue(sqs: &aws_sdk_sqs::Client, prefix: &str) -> (String, String) {
    let url = sqs
        .create_queue()
        .queue_name(format!("{}.fifo", unique(prefix)))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .unwrap();
    (url, arn)
}

/// Every record moto keeps of one model (`ses`/`Message`, `sns`/`SMS`),
/// whatever account and region it sits under.
fn moto_records<'a>(data: &'a Value, service: &str, model: &str) -> Vec<&'a Value> {
    fn leaves<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
        match value {
            Value::Array(items) => out.extend(items),
            Value::Object(map) => map.values().for_each(|v| leaves(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    leaves(&data[service][model], &mut out);
    out
}

/// Every chat.postMessage received: its Authorization header and body.
type SlackPosts = Arc<Mutex<Vec<(String, Value)>>>;

/// Answers chat.postMessage as Slack does; returns the API base URL.
async fn fake_slack_api() -> (String, SlackPosts) {
    use axum::extract::State;
    use axum::http::HeaderMap;
    use axum::Json;

    async fn post_message(State(posts): State<SlackPosts>, headers: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        posts.lock().unwrap().push((authorization, body));
        Json(json!({"ok": true, "channel": "C0123ABCD", "ts": "1718000000.000100"}))
    }

    let posts = SlackPosts::default();
    let app = axum::Router::new()
        .route("/api/chat.postMessage", axum::routing::post(post_message))
        .with_state(posts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/api"), posts)
}

/// Every webhook POST received: its headers and raw body.
type WebhookPosts = Arc<Mutex<Vec<(axum::http::HeaderMap, axum::body::Bytes)>>>;

/// A webhook receiver on 127.0.0.1; returns its URL.
async fn webhook_receiver() -> (String, WebhookPosts) {
    use axum::extract::State;

    async fn receive(
        State(posts): State<WebhookPosts>,
        headers: axum::http::HeaderMap,
        body: axum::body::Bytes,
    ) -> axum::http::StatusCode {
        posts.lock().unwrap().push((headers, body));
        axum::http::StatusCode::NO_CONTENT
    }

    let posts = WebhookPosts::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(posts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/hook"), posts)
}

#[tokio::test]
async fn an_alert_fires_and_resolves_through_the_lambda_functions() {
    let moto = moto_url();
    let config = sdk_config(&moto).await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);

    let table = unique("tocsin");
    create_table(&dynamodb, &table).await.unwrap();
    let (queue_url, queue_arn) = fifo_queue(&sqs, "events").await;

    // What `tocsin apply` writes: the service and its integration, by key hash.
    let store = DynamoStore::new(dynamodb, &table);
    let service = ServiceId::parse("checkout").unwrap();
    // Recipients of this test only: moto keeps every message it was sent.
    let run = uuid::Uuid::new_v4().simple().to_string();
    let email = format!("oncall-{run}@example.com");
    let phone = format!("+1555{:07}", u32::from_str_radix(&run[..6], 16).unwrap() % 10_000_000);
    let (webhook_url, webhook_posts) = webhook_receiver().await;
    store
        .put_service(&Service {
            id: service.clone(),
            name: "Checkout".into(),
            policy: NotificationPolicy {
                email: vec![EmailAddress::parse(&email).unwrap()],
                sms: vec![PhoneNumber::parse(&phone).unwrap()],
                slack: Some("#checkout-oncall".into()),
                webhooks: vec![tocsin_core::config::Webhook {
                    url: tocsin_core::config::WebhookUrl::parse(&webhook_url).unwrap(),
                    format: tocsin_core::config::WebhookFormat::Generic,
                    secret: Some(tocsin_core::config::ConfiguredSecret::Value(
                        tocsin_core::config::Secret::new("whsec-pipeline"),
                    )),
                }],
                on: vec![TransitionKind::Triggered],
                min_severity: Severity::Info,
                min_severity_by_channel: Default::default(),
                escalation: Vec::new(),
            },
        })
        .await
        .unwrap();
    store
        .put_integration(&Integration {
            id: IntegrationId::parse("checkout-prometheus").unwrap(),
            service: service.clone(),
            provider: ProviderKind::Prometheus,
            key_hash: KeyHash::of(keys::SAMPLE_PROMETHEUS),
            secret: None,
            enabled: true,
            fields: FieldMapping::default(),
            cloudwatch: Default::default(),
            dedup_key: None,
            rate_limit_per_minute: None,
            secret_ref: None,
        })
        .await
        .unwrap();

    let email_queue = fifo_queue(&sqs, "email").await;
    let sms_queue = fifo_queue(&sqs, "sms").await;
    let slack_queue = fifo_queue(&sqs, "slack").await;
    let webhook_queue = fifo_queue(&sqs, "webhook").await;
    let sender = format!("tocsin-{run}@example.com");
    aws_sdk_sesv2::Client::new(&config)
        .create_email_identity()
        .email_identity(&sender)
        .send()
        .await
        .unwrap();

    // Slack itself cannot run here: a stand-in answers chat.postMessage as
    // Slack does, and the bot token comes from a real Secrets Manager secret.
    let (slack_api, slack_posts) = fake_slack_api().await;
    let slack_secret = aws_sdk_secretsmanager::Client::new(&config)
        .create_secret()
        .name(unique("tocsin-slack"))
        .secret_string(r#"{"bot_token": "xoxb-pipeline-test-token"}"#)
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();

    let scratch = tempfile::tempdir().unwrap();
    let env = [
        ("AWS_ENDPOINT_URL", moto.as_str()),
        ("TOCSIN_TABLE", table.as_str()),
        ("TOCSIN_EVENTS_QUEUE_URL", queue_url.as_str()),
        ("TOCSIN_EMAIL_QUEUE_URL", email_queue.0.as_str()),
        ("TOCSIN_SMS_QUEUE_URL", sms_queue.0.as_str()),
        ("TOCSIN_SLACK_QUEUE_URL", slack_queue.0.as_str()),
        ("TOCSIN_WEBHOOK_QUEUE_URL", webhook_queue.0.as_str()),
        ("TOCSIN_EMAIL_FROM", sender.as_str()),
        ("TOCSIN_PUBLIC_URL", "https://tocsin.example.com"),
        ("TOCSIN_SLACK_SECRET_ARN", slack_secret.as_str()),
        ("TOCSIN_SLACK_API_URL", slack_api.as_str()),
        // Both incidents text the same number: no throttle (on by default).
        ("TOCSIN_THROTTLE_SMS", "off"),
    ];
    let mut ingest = Function::start(&function_bin("ingest-prometheus"), &env, scratch.path()).await;
    let mut processor = Function::start(&function_bin("processor"), &env, scratch.path()).await;

    // Fire: the API Gateway answer is the ingest service's.
    let (answer, cold) = ingest
        .cold_invoke(api_gateway_event("events/prometheus/firing.json"))
        .await;
    let answer = answer.unwrap_or_else(|e| panic!("ingest failed: {e}"));
    assert_eq!(answer["statusCode"], 202, "{answer}");
    println!(
        "ingest-prometheus cold start: init {:?}, first response {:?}, peak RSS {:?} KiB",
        cold.init, cold.to_first_response, cold.peak_rss_kib
    );

    let (batch, handles) = take_sqs_event(&sqs, &queue_url, &queue_arn).await;
    assert_eq!(batch["Records"].as_array().unwrap().len(), 2, "one message per alert");
    let (answer, cold) = processor.cold_invoke(batch).await;
    let answer = answer.unwrap_or_else(|e| panic!("processor failed: {e}"));
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
    println!(
        "processor cold start: init {:?}, first response {:?}, peak RSS {:?} KiB",
        cold.init, cold.to_first_response, cold.peak_rss_kib
    );
    for handle in handles {
        sqs.delete_message()
            .queue_url(&queue_url)
            .receipt_handle(handle)
            .send()
            .await
            .unwrap();
    }

    // The table's stream: one INSERT record per incident the processor
    // wrote, built from the items as they are in the table.
    let mut records = Vec::new();
    for (n, incident) in store
        .list(&tocsin_core::ports::IncidentFilter::default())
        .await
        .unwrap()
        .iter()
        .enumerate()
    {
        let item = aws_sdk_dynamodb::Client::new(&config)
            .get_item()
            .table_name(&table)
            .set_key(Some(incident_key(incident)))
            .send()
            .await
            .unwrap()
            .item()
            .cloned()
            .expect("the incident item");
        records.push(stream_record("INSERT", &format!("{}", 100 + n), &item, None));
    }
    assert_eq!(records.len(), 2);
    let mut dispatch = Function::start(&function_bin("dispatch"), &env, scratch.path()).await;
    let (answer, cold) = dispatch.cold_invoke(json!({ "Records": records })).await;
    let answer = answer.unwrap_or_else(|e| panic!("dispatch failed: {e}"));
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
    println!(
        "dispatch cold start: init {:?}, first response {:?}, peak RSS {:?} KiB",
        cold.init, cold.to_first_response, cold.peak_rss_kib
    );

    for (binary, queue) in [
        ("notify-email", &email_queue),
        ("notify-sms", &sms_queue),
        ("notify-slack", &slack_queue),
        ("notify-webhook", &webhook_queue),
    ] {
        let (batch, _) = take_sqs_event(&sqs, &queue.0, &queue.1).await;
        assert_eq!(
            batch["Records"].as_array().unwrap().len(),
            2,
            "{binary}: one job per incident"
        );
        let mut notifier = Function::start(&function_bin(binary), &env, scratch.path()).await;
        let (answer, cold) = notifier.cold_invoke(batch).await;
        let answer = answer.unwrap_or_else(|e| panic!("{binary} failed: {e}"));
        assert_eq!(answer["batchItemFailures"], json!([]), "{binary}: {answer}");
        println!(
            "{binary} cold start: init {:?}, first response {:?}, peak RSS {:?} KiB",
            cold.init, cold.to_first_response, cold.peak_rss_kib
        );
    }
    let data: Value = reqwest::get(format!("{moto}/moto-api/data.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let emails = moto_records(&data, "ses", "Message")
        .into_iter()
        .filter(|m| m["destinations"]["ToAddresses"][0] == email.as_str())
        .count();
    assert_eq!(emails, 2, "one email per incident reached SES");
    let texts = moto_records(&data, "sns", "SMS")
        .into_iter()
        .filter(|m| m["phone_number"] == phone.as_str())
        .count();
    assert_eq!(texts, 2, "one SMS per incident reached SNS");
    let posts = slack_posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 2, "one Slack message per incident: {posts:?}");
    for (authorization, body) in &posts {
        assert_eq!(authorization, "Bearer xoxb-pipeline-test-token");
        assert_eq!(body["channel"], "#checkout-oncall");
        assert!(body["attachments"][0]["blocks"].is_array(), "{body}");
    }
    // The webhook's URL and secret came from the service's item in the table.
    let hooks = webhook_posts.lock().unwrap().clone();
    assert_eq!(hooks.len(), 2, "one webhook POST per incident");
    for (headers, body) in &hooks {
        assert_eq!(headers["x-webhook-event"], "incident.triggered");
        assert_eq!(
            headers["x-webhook-signature"].to_str().unwrap(),
            crate::app::signature("whsec-pipeline", body)
        );
        let body: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(body["incident"]["service"], "checkout");
    }

    let fired: Value = serde_json::from_slice(&fixture("events/prometheus/firing.json")).unwrap();
    let fingerprints: Vec<String> = fired["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["fingerprint"].as_str().unwrap().to_owned())
        .collect();
    for fingerprint in &fingerprints {
        let incident = store
            .latest(&service, &DedupKey::parse(fingerprint).unwrap())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no incident for {fingerprint}"));
        assert_eq!(incident.status, IncidentStatus::Open);
        // notify-slack kept the first message, for the thread of later transitions.
        let thread = tocsin_core::slack::threads::SlackThreads::thread(&store, &incident.id, "#checkout-oncall")
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no Slack thread for {fingerprint}"));
        assert_eq!(thread.channel_id, "C0123ABCD");
        assert_eq!(thread.ts, "1718000000.000100");
    }

    // Resolve, through the warm functions.
    let answer = ingest
        .invoke(api_gateway_event("events/prometheus/resolved.json"))
        .await
        .unwrap();
    assert_eq!(answer["statusCode"], 202, "{answer}");
    let (batch, _) = take_sqs_event(&sqs, &queue_url, &queue_arn).await;
    let answer = processor.invoke(batch).await.unwrap();
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
    for fingerprint in &fingerprints {
        let incident = store
            .latest(&service, &DedupKey::parse(fingerprint).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(incident.status, IncidentStatus::Resolved, "{fingerprint}");
    }

    // A bad key is refused by the function itself, with the same JSON.
    let mut refused = api_gateway_event("events/prometheus/firing.json");
    refused["headers"]["authorization"] = Value::String(format!("Bearer {}", keys::UNKNOWN));
    let answer = ingest.invoke(refused).await.unwrap();
    assert_eq!(answer["statusCode"], 404, "{answer}");
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["status"], "not found");
}

#[tokio::test]
async fn tocsin_apply_writes_the_config_to_the_table() {
    use tocsin_core::ports::ConfigStore;

    let moto = moto_url();
    let table = unique("apply");
    let output = std::process::Command::new(crate::app::tocsin_bin())
        .args([
            "apply",
            "-f",
            "cli/tocsin.sample.yaml",
            "--table",
            &table,
            "--create-table",
        ])
        .args(["--api-url", "https://api.example.com/"])
        .current_dir(crate::app::workspace_root())
        .env("AWS_ENDPOINT_URL", &moto)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .expect("tocsin apply runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tocsin apply failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("POST https://api.example.com/integrations/prometheus"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("key {}", keys::SAMPLE_PROMETHEUS)), "{stdout}");

    let config = sdk_config(&moto).await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&config), &table);
    let integration = store
        .integration_by_key(&KeyHash::of(keys::SAMPLE_PROMETHEUS))
        .await
        .unwrap()
        .expect("the integration is in the table");
    assert_eq!(integration.provider, ProviderKind::Prometheus);
    assert_eq!(integration.service.as_str(), "checkout");
    let payments = store
        .service(&ServiceId::parse("payments").unwrap())
        .await
        .unwrap()
        .expect("the service is in the table");
    assert_eq!(payments.policy.min_severity, Severity::Warning);
    assert!(store
        .api_key(&KeyHash::of(keys::SAMPLE_API_KEY))
        .await
        .unwrap()
        .is_some());
}

/// An API Gateway HTTP API request as the api function receives it.
fn api_request(method: &str, path: &str, query: &str, api_key: Option<&str>) -> Value {
    let mut headers = json!({"accept": "application/json"});
    if let Some(key) = api_key {
        headers["authorization"] = Value::String(format!("Bearer {key}"));
    }
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "a1b2c3d4e5",
            "domainName": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "a1b2c3d4e5",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.10", "userAgent": "curl/8"},
            "requestId": "api-test",
            "routeKey": "$default",
            "stage": "$default",
            "time": "23/Nov/2026:09:00:00 +0000",
            "timeEpoch": 1795424400000_u64
        },
        "isBase64Encoded": false
    })
}

fn answer_body(answer: &Value) -> Value {
    serde_json::from_str(answer["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
}

#[tokio::test]
async fn the_api_function_lists_reads_and_acknowledges_incidents_in_the_table() {
    let moto = moto_url();
    let config = sdk_config(&moto).await;
    let table = unique("tocsin");
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    create_table(&dynamodb, &table).await.unwrap();
    let store = Arc::new(DynamoStore::new(dynamodb, &table));
    store
        .put_api_key(&ApiKey {
            name: "ops".into(),
            key_hash: KeyHash::of(keys::OPS),
            scopes: vec![Scope::IncidentsRead, Scope::IncidentsWrite],
        })
        .await
        .unwrap();
    store
        .put_api_key(&ApiKey {
            name: "reader".into(),
            key_hash: KeyHash::of(keys::READER),
            scopes: vec![Scope::IncidentsRead],
        })
        .await
        .unwrap();
    let process = ProcessService::new(store.clone());
    let trigger = sample_event("checkout", "disk-full", Action::Trigger);
    process.apply(&trigger, trigger.received_at).await.unwrap();
    let incident = store
        .latest(
            &ServiceId::parse("checkout").unwrap(),
            &DedupKey::parse("disk-full").unwrap(),
        )
        .await
        .unwrap()
        .expect("the incident the processor service opened");

    let scratch = tempfile::tempdir().unwrap();
    let env = [("AWS_ENDPOINT_URL", moto.as_str()), ("TOCSIN_TABLE", table.as_str())];
    let mut api = Function::start(&function_bin("api"), &env, scratch.path()).await;

    let (answer, cold) = api
        .cold_invoke(api_request(
            "GET",
            "/incidents",
            "status=open&service=checkout",
            Some(keys::READER),
        ))
        .await;
    let answer = answer.unwrap_or_else(|e| panic!("api failed: {e}"));
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let listed = answer_body(&answer);
    assert_eq!(listed["incidents"][0]["id"], incident.id.as_str(), "{listed}");
    println!(
        "api cold start: init {:?}, first response {:?}, peak RSS {:?} KiB",
        cold.init, cold.to_first_response, cold.peak_rss_kib
    );

    let path = format!("/incidents/{}/acknowledge", incident.id);
    let answer = api
        .invoke(api_request("POST", &path, "", Some(keys::READER)))
        .await
        .unwrap();
    assert_eq!(answer["statusCode"], 403, "incidents:read cannot acknowledge: {answer}");
    let answer = api
        .invoke(api_request("POST", &path, "", Some(keys::OPS)))
        .await
        .unwrap();
    assert_eq!(answer["statusCode"], 200, "{answer}");
    assert_eq!(answer_body(&answer)["status"], "acknowledged");
    let answer = api
        .invoke(api_request("POST", &path, "", Some(keys::OPS)))
        .await
        .unwrap();
    assert_eq!(answer["statusCode"], 409, "acknowledged twice: {answer}");

    let answer = api
        .invoke(api_request(
            "GET",
            &format!("/incidents/{}", incident.id),
            "",
            Some(keys::READER),
        ))
        .await
        .unwrap();
    assert_eq!(answer["statusCode"], 200, "{answer}");
    assert_eq!(answer_body(&answer)["status"], "acknowledged");
    assert_eq!(
        store.get(&incident.id).await.unwrap().unwrap().status,
        IncidentStatus::Acknowledged,
        "written to the table"
    );

    for (request, status) in [
        (api_request("GET", "/incidents", "", None), 401),
        (
            api_request("GET", "/incidents", "", Some("sk_nobody_0123456789abcdef")),
            401,
        ),
        (api_request("GET", "/incidents", "limit=0", Some(keys::READER)), 400),
        (
            api_request("GET", "/incidents/inc_00000000000000000000", "", Some(keys::READER)),
            404,
        ),
        (api_request("GET", "/nowhere", "", Some(keys::READER)), 404),
        (api_request("DELETE", "/incidents", "", Some(keys::OPS)), 405),
        (api_request("GET", "/healthz", "", None), 200),
    ] {
        let path = request["rawPath"].clone();
        let answer = api.invoke(request).await.unwrap();
        assert_eq!(answer["statusCode"], status, "{path}: {answer}");
        assert!(
            answer_body(&answer).is_object(),
            "{path}: every answer is JSON: {answer}"
        );
    }
}

/// Kills the child when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn tocsin_dev_aws_serves_the_endpoints_on_a_table_and_queue_and_processes_the_queue() {
    let moto = moto_url();
    let config = sdk_config(&moto).await;
    let table = unique("dev-aws");
    let (queue_url, _) = fifo_queue(&aws_sdk_sqs::Client::new(&config), "dev-aws-events").await;
    let aws_env = [
        ("AWS_ENDPOINT_URL", moto.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    let applied = std::process::Command::new(crate::app::tocsin_bin())
        .args([
            "apply",
            "-f",
            "cli/tocsin.sample.yaml",
            "--table",
            &table,
            "--create-table",
        ])
        .current_dir(crate::app::workspace_root())
        .envs(aws_env)
        .output()
        .expect("tocsin apply runs");
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));

    let scratch = tempfile::tempdir().unwrap();
    let port = crate::app::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _dev = Running(
        std::process::Command::new(crate::app::tocsin_bin())
            .args(["dev", "--aws", "--process", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--table", &table, "--events-queue-url", &queue_url])
            .envs(aws_env)
            .env("RUST_LOG", "warn")
            .stdout(std::fs::File::create(scratch.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(scratch.path().join("stderr")).unwrap())
            .spawn()
            .expect("tocsin dev --aws starts"),
    );
    let client = reqwest::Client::new();
    crate::app::wait_for("tocsin dev --aws to answer /healthz", || {
        let client = client.clone();
        let url = format!("{base}/healthz");
        async move { client.get(url).send().await.ok().filter(|r| r.status() == 200) }
    })
    .await;

    let post = |fixture_path: &'static str, key: &'static str| {
        let client = client.clone();
        let url = format!("{base}/integrations/prometheus");
        async move {
            client
                .post(url)
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(fixture(fixture_path))
                .send()
                .await
                .unwrap()
        }
    };
    let open_incidents = |status: &'static str| {
        let client = client.clone();
        let url = format!("{base}/incidents?service=checkout&status={status}");
        async move {
            let listed: Value = client
                .get(url)
                .bearer_auth(keys::SAMPLE_API_KEY)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let incidents = listed["incidents"].as_array()?.clone();
            (incidents.len() == 2).then_some(incidents)
        }
    };

    let answer = post("events/prometheus/firing.json", keys::SAMPLE_PROMETHEUS).await;
    assert_eq!(answer.status(), 202, "{:?}", answer.text().await);
    crate::app::wait_for("both alerts to open incidents through SQS and the poller", || {
        open_incidents("open")
    })
    .await;

    let answer = post("events/prometheus/resolved.json", keys::SAMPLE_PROMETHEUS).await;
    assert_eq!(answer.status(), 202);
    crate::app::wait_for("both incidents to resolve", || open_incidents("resolved")).await;

    let refused = post("events/prometheus/firing.json", keys::UNKNOWN).await;
    assert_eq!(refused.status(), 404);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["status"], "not found", "the same JSON as the function's: {body}");
}

#[tokio::test]
async fn mail_that_ses_stored_in_s3_becomes_events_for_each_recipients_integration() {
    const KEY: &str = "0123456789abcdef0123456789abcdef";
    let moto = moto_url();
    let config = sdk_config(&moto).await;
    let table = unique("email");
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    create_table(&dynamodb, &table).await.unwrap();
    let store = DynamoStore::new(dynamodb, &table);
    store
        .put_integration(&Integration {
            id: IntegrationId::parse("db-mail").unwrap(),
            service: ServiceId::parse("checkout").unwrap(),
            provider: ProviderKind::Email,
            key_hash: KeyHash::of(KEY),
            secret: None,
            enabled: true,
            fields: FieldMapping::default(),
            cloudwatch: Default::default(),
            dedup_key: None,
            rate_limit_per_minute: None,
            secret_ref: None,
        })
        .await
        .unwrap();
    let sqs = aws_sdk_sqs::Client::new(&config);
    let (queue_url, queue_arn) = fifo_queue(&sqs, "email-events").await;

    // What the receipt rule's S3 action wrote.
    let bucket = unique("tocsin-mail");
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let mut event: Value = serde_json::from_slice(&fixture("events/aws/ses-receipt.json")).unwrap();
    let message_id = event["Records"][0]["ses"]["mail"]["messageId"]
        .as_str()
        .unwrap()
        .to_owned();
    s3.put_object()
        .bucket(&bucket)
        .key(format!("inbound/{message_id}"))
        .body(fixture("events/email/nagios-problem.eml").into())
        .send()
        .await
        .unwrap();
    // A second recipient without a key: refused, and the first still counts.
    event["Records"][0]["ses"]["receipt"]["recipients"]
        .as_array_mut()
        .unwrap()
        .push(json!("postmaster@alerts.example.com"));

    let scratch = tempfile::tempdir().unwrap();
    let env = [
        ("AWS_ENDPOINT_URL", moto.as_str()),
        ("TOCSIN_TABLE", table.as_str()),
        ("TOCSIN_EVENTS_QUEUE_URL", queue_url.as_str()),
        ("TOCSIN_EMAIL_BUCKET", bucket.as_str()),
        ("TOCSIN_EMAIL_PREFIX", "inbound/"),
    ];
    let mut function = Function::start(&function_bin("ingest-email-ses"), &env, scratch.path()).await;
    let (answer, cold) = function.cold_invoke(event.clone()).await;
    let answer = answer.unwrap_or_else(|e| panic!("ingest-email-ses failed: {e}"));
    assert_eq!(answer, json!({"accepted": 1, "refused": 1, "dropped": 0}));
    println!(
        "ingest-email-ses cold start: init {:?}, first response {:?}, peak RSS {:?} KiB",
        cold.init, cold.to_first_response, cold.peak_rss_kib
    );

    let (batch, _) = take_sqs_event(&sqs, &queue_url, &queue_arn).await;
    let records = batch["Records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{batch}");
    let queued: Value = serde_json::from_str(records[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(queued["origin"]["integration"], "db-mail");
    assert_eq!(queued["event_action"], "trigger");
    assert!(
        queued["payload"]["summary"].as_str().unwrap().contains("db1/Disk /var"),
        "{queued}"
    );
    assert!(!queued.to_string().contains(KEY), "the key never travels in the event");

    // Lambda retries an invocation: the same events, by id.
    let again = function.invoke(event).await.unwrap();
    assert_eq!(again["accepted"], 1);
    let (retried, _) = take_sqs_event(&sqs, &queue_url, &queue_arn).await;
    for record in retried["Records"].as_array().unwrap() {
        let body: Value = serde_json::from_str(record["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["id"], queued["id"], "a retried invocation is the same event");
    }

    // A message S3 does not have fails the invocation, so Lambda retries it
    // and, after the retries, the function's dead-letter queue keeps it.
    let mut missing: Value = serde_json::from_slice(&fixture("events/aws/ses-receipt.json")).unwrap();
    missing["Records"][0]["ses"]["mail"]["messageId"] = json!("not-in-the-bucket");
    let error = function
        .invoke(missing)
        .await
        .expect_err("an error for Lambda to retry");
    assert!(error.to_string().contains("not-in-the-bucket"), "{error}");
}

/// A topic's notification as SNS hands it to a subscribed function.
fn sns_lambda_event(envelope: &Value) -> Value {
    json!({"Records": [{
        "EventSource": "aws:sns",
        "EventVersion": "1.0",
        "EventSubscriptionArn": format!("{}:2bcfbf39-05c3-41de-beaa-fcfcc21c8f55", envelope["TopicArn"].as_str().unwrap()),
        "Sns": {
            "Type": envelope["Type"],
            "MessageId": envelope["MessageId"],
            "TopicArn": envelope["TopicArn"],
            "Subject": envelope["Subject"],
            "Message": envelope["Message"],
            "Timestamp": envelope["Timestamp"],
            "SignatureVersion": envelope["SignatureVersion"],
            "Signature": envelope["Signature"],
            "SigningCertUrl": envelope["SigningCertURL"],
            "UnsubscribeUrl": envelope["UnsubscribeURL"],
            "MessageAttributes": {}
        }
    }]})
}

#[tokio::test]
async fn a_topic_that_invokes_the_function_directly_reaches_the_integration_listing_it() {
    let moto = moto_url();
    let config = sdk_config(&moto).await;
    let table = unique("sns-direct");
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    create_table(&dynamodb, &table).await.unwrap();
    let store = DynamoStore::new(dynamodb, &table);
    let alarm: Value = serde_json::from_slice(&fixture("events/cloudwatch/alarm.json")).unwrap();
    let topic = alarm["TopicArn"].as_str().unwrap();
    let settings = tocsin_core::config::CloudWatchSettings {
        topics: vec![tocsin_core::sns::TopicArn::parse(topic).unwrap()],
        ..Default::default()
    };
    store
        .put_integration(&Integration {
            id: IntegrationId::parse("alarms").unwrap(),
            service: ServiceId::parse("checkout").unwrap(),
            provider: ProviderKind::CloudWatch,
            key_hash: KeyHash::of("5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"),
            secret: None,
            enabled: true,
            fields: FieldMapping::default(),
            cloudwatch: settings,
            dedup_key: None,
            rate_limit_per_minute: None,
            secret_ref: None,
        })
        .await
        .unwrap();
    let sqs = aws_sdk_sqs::Client::new(&config);
    let (queue_url, queue_arn) = fifo_queue(&sqs, "sns-direct-events").await;

    let scratch = tempfile::tempdir().unwrap();
    let env = [
        ("AWS_ENDPOINT_URL", moto.as_str()),
        ("TOCSIN_TABLE", table.as_str()),
        ("TOCSIN_EVENTS_QUEUE_URL", queue_url.as_str()),
    ];
    let mut function = Function::start(&function_bin("ingest-cloudwatch-sns"), &env, scratch.path()).await;
    let event = sns_lambda_event(&alarm);
    let (answer, cold) = function.cold_invoke(event.clone()).await;
    let answer = answer.unwrap_or_else(|e| panic!("ingest-cloudwatch-sns failed: {e}"));
    assert_eq!(answer, json!({"accepted": 1}));
    println!(
        "ingest-cloudwatch-sns cold start: init {:?}, first response {:?}, peak RSS {:?} KiB",
        cold.init, cold.to_first_response, cold.peak_rss_kib
    );
    let (batch, _) = take_sqs_event(&sqs, &queue_url, &queue_arn).await;
    let records = batch["Records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{batch}");
    let queued: Value = serde_json::from_str(records[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(queued["origin"]["integration"], "alarms");
    assert_eq!(queued["event_action"], "trigger");
    let alarm_arn = serde_json::from_str::<Value>(alarm["Message"].as_str().unwrap()).unwrap()["AlarmArn"].clone();
    assert_eq!(queued["dedup_key"], alarm_arn, "keyed by the alarm");

    // SNS retries with the same MessageId: the same event.
    function.invoke(event).await.unwrap();
    let (retried, _) = take_sqs_event(&sqs, &queue_url, &queue_arn).await;
    for record in retried["Records"].as_array().unwrap() {
        let body: Value = serde_json::from_str(record["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["id"], queued["id"]);
    }

    // A topic no integration lists fails the invocation: retried, then kept
    // in the function's dead-letter queue, never dropped.
    let mut stranger = alarm.clone();
    stranger["TopicArn"] = json!("arn:aws:sns:us-east-1:123456789012:someone-elses-topic");
    let error = function
        .invoke(sns_lambda_event(&stranger))
        .await
        .expect_err("an unknown topic is an error");
    assert!(
        error
            .to_string()
            .contains("lists the topic arn:aws:sns:us-east-1:123456789012:someone-elses-topic"),
        "{error}"
    );
}

#[tokio::test]
async fn a_missed_heartbeat_is_found_by_the_scheduler_and_its_beat_through_the_api_resolves_it() {
    use tocsin_core::heartbeat::Heartbeat;
    use tocsin_core::ports::Heartbeats;

    let moto = moto_url();
    let config = sdk_config(&moto).await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let table = unique("tocsin");
    create_table(&dynamodb, &table).await.unwrap();
    let (queue_url, queue_arn) = fifo_queue(&sqs, "events").await;
    let store = DynamoStore::new(dynamodb, &table);
    // What `tocsin apply` writes for the config's heartbeats.
    let key = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
    let heartbeat = Heartbeat {
        id: tocsin_core::event::HeartbeatId::parse("watchdog").unwrap(),
        service: ServiceId::parse("checkout").unwrap(),
        key_hash: KeyHash::of(key),
        interval_seconds: 60,
        severity: Severity::Critical,
    };
    store.put_heartbeat(&heartbeat).await.unwrap();
    store
        .beat(&heartbeat.id, chrono::Utc::now() - chrono::TimeDelta::minutes(5))
        .await
        .unwrap();

    // The channel queues, where ended maintenance windows release to.
    let email_queue = fifo_queue(&sqs, "email").await;
    let sms_queue = fifo_queue(&sqs, "sms").await;
    let slack_queue = fifo_queue(&sqs, "slack").await;
    let scratch = tempfile::tempdir().unwrap();
    let env = [
        ("AWS_ENDPOINT_URL", moto.as_str()),
        ("TOCSIN_TABLE", table.as_str()),
        ("TOCSIN_EVENTS_QUEUE_URL", queue_url.as_str()),
        ("TOCSIN_EMAIL_QUEUE_URL", email_queue.0.as_str()),
        ("TOCSIN_SMS_QUEUE_URL", sms_queue.0.as_str()),
        ("TOCSIN_SLACK_QUEUE_URL", slack_queue.0.as_str()),
    ];
    // EventBridge's scheduled event: the function does not read it.
    let tick = json!({"version": "0", "source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
    let mut scheduler = Function::start(&function_bin("scheduler"), &env, scratch.path()).await;
    let answer = scheduler.invoke(tick.clone()).await.unwrap();
    assert_eq!(answer["heartbeats_missed"], 1, "{answer}");
    let (batch, handles) = take_sqs_event(&sqs, &queue_url, &queue_arn).await;
    let records = batch["Records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{batch}");
    // Taken, as the processor would: the key's next event can come out.
    for handle in handles {
        sqs.delete_message()
            .queue_url(&queue_url)
            .receipt_handle(handle)
            .send()
            .await
            .unwrap();
    }
    let trigger: Value = serde_json::from_str(records[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["dedup_key"], "heartbeat:watchdog");
    assert_eq!(trigger["origin"], json!({"kind": "heartbeat", "heartbeat": "watchdog"}));
    let state = store.monitor(&heartbeat.id).await.unwrap().unwrap().state;
    assert!(state.missed_since.is_some(), "{state:?}");

    // The beat, through the api function: a wrong key changes nothing.
    let mut api = Function::start(&function_bin("api"), &env, scratch.path()).await;
    let wrong = api
        .invoke(api_request(
            "POST",
            "/heartbeat/watchdog",
            "",
            Some(keys::SAMPLE_PROMETHEUS),
        ))
        .await
        .unwrap();
    assert_eq!(wrong["statusCode"], 404, "{wrong}");
    let answer = api
        .invoke(api_request(
            "POST",
            "/heartbeat/watchdog",
            &format!("token={key}"),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(answer["statusCode"], 200, "{answer}");
    assert_eq!(answer_body(&answer)["recovered"], true, "{answer}");
    let state = store.monitor(&heartbeat.id).await.unwrap().unwrap().state;
    assert_eq!(state.missed_since, None);
    let (batch, _) = take_sqs_event(&sqs, &queue_url, &queue_arn).await;
    let bodies: Vec<Value> = batch["Records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r["body"].as_str().unwrap()).unwrap())
        .collect();
    assert!(
        bodies
            .iter()
            .any(|e| e["event_action"] == "resolve" && e["dedup_key"] == "heartbeat:watchdog"),
        "{bodies:?}"
    );

    // Healthy again: the next tick finds nothing.
    let answer = scheduler.invoke(tick).await.unwrap();
    assert_eq!(answer["heartbeats_missed"], 0, "{answer}");
}
