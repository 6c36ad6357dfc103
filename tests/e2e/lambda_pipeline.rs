//! End to end through the real Lambda binaries: ingest-prometheus invoked
//! with API Gateway events from events/, the processor with the SQS
//! messages that actually landed in the AWS API server (moto), and the
//! incidents read back from the table the processor wrote.

use std::collections::HashMap;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use serde_json::{json, Value};
use tocsin_aws::dynamodb::{create_table, DynamoStore};
use tocsin_core::auth::KeyHash;
use tocsin_core::config::{FieldMapping, Integration, NotificationPolicy, Service};
use tocsin_core::event::{DedupKey, IntegrationId, ServiceId, Severity};
use tocsin_core::incident::IncidentStatus;
use tocsin_core::ports::IncidentStore;
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

#[tokio::test]
async fn an_alert_fires_and_resolves_through_the_lambda_functions() {
    let moto = moto_url();
    let config = sdk_config(&moto).await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);

    let table = unique("tocsin");
    create_table(&dynamodb, &table).await.unwrap();
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("{}.fifo", unique("events")))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .unwrap();

    // What `tocsin apply` writes: the service and its integration, by key hash.
    let store = DynamoStore::new(dynamodb, &table);
    let service = ServiceId::parse("checkout").unwrap();
    store
        .put_service(&Service {
            id: service.clone(),
            name: "Checkout".into(),
            policy: NotificationPolicy {
                email: Vec::new(),
                sms: Vec::new(),
                slack: None,
                on: Vec::new(),
                min_severity: Severity::Info,
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
        })
        .await
        .unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let env = [
        ("AWS_ENDPOINT_URL", moto.as_str()),
        ("TOCSIN_TABLE", table.as_str()),
        ("TOCSIN_EVENTS_QUEUE_URL", queue_url.as_str()),
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
