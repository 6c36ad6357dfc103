//! notify-webhook's notifier with a signing secret the config names in
//! Secrets Manager (moto): the service's record holds only the secret's
//! name, the body is signed with the value read through the cached reader,
//! and a secret that cannot be read fails the delivery (retried) instead
//! of posting it unsigned.

mod moto;

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use tocsin_aws::dynamodb::{self, DynamoStore};
use tocsin_core::config::{ConfiguredSecret, NotificationPolicy, Service, Webhook, WebhookFormat, WebhookUrl};
use tocsin_core::contract::sample_job;
use tocsin_core::event::{ServiceId, Severity};
use tocsin_core::incident::TransitionKind;
use tocsin_core::notify::{Channel, Notifier, NotifyError};
use tocsin_core::render::{render, RenderContext};
use tocsin_core::secrets::SecretRef;

/// One received request: lower-cased header names and values, and the body.
type Request = (Vec<(String, String)>, Vec<u8>);

/// A plain HTTP/1.1 receiver on 127.0.0.1 answering 204 to every request.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Request>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (sender, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut headers = Vec::new();
                let mut line = String::new();
                reader.read_line(&mut line).await.expect("request line");
                loop {
                    line.clear();
                    reader.read_line(&mut line).await.expect("header");
                    let Some((name, value)) = line.trim_end().split_once(':') else {
                        break;
                    };
                    headers.push((name.trim().to_lowercase(), value.trim().to_owned()));
                }
                let length = headers
                    .iter()
                    .find(|(name, _)| name == "content-length")
                    .and_then(|(_, value)| value.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; length];
                reader.read_exact(&mut body).await.expect("body");
                let _ = sender.send((headers, body));
                let mut stream = reader.into_inner();
                let _ = stream
                    .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (format!("http://{address}"), received)
}

fn service(hooks: Vec<Webhook>) -> Service {
    Service {
        id: ServiceId::parse("checkout").expect("id"),
        name: "Checkout".into(),
        policy: NotificationPolicy {
            email: Vec::new(),
            sms: Vec::new(),
            slack: None,
            webhooks: hooks,
            on: vec![TransitionKind::Triggered],
            min_severity: Severity::Info,
            min_severity_by_channel: Default::default(),
            escalation: Vec::new(),
        },
    }
}

fn named(url: &str, secret_id: &str) -> Webhook {
    Webhook {
        url: WebhookUrl::parse(url).expect("url"),
        format: WebhookFormat::Generic,
        secret: Some(ConfiguredSecret::Reference(SecretRef::SecretsManager(
            secret_id.to_owned(),
        ))),
    }
}

#[tokio::test]
async fn a_webhook_is_signed_with_its_secret_from_secrets_manager_and_never_sent_unsigned() {
    let sdk = moto::sdk_config().await;
    let secret_id = moto::unique("tocsin/checkout-hook");
    aws_sdk_secretsmanager::Client::new(&sdk)
        .create_secret()
        .name(&secret_id)
        .secret_string(r#"{"secret": "whsec-from-secrets-manager"}"#)
        .send()
        .await
        .expect("create the secret");
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let table = moto::unique("tocsin-webhook-secrets");
    dynamodb::create_table(&client, &table).await.expect("create the table");
    let store = Arc::new(DynamoStore::new(client.clone(), &table));

    let (base, mut received) = receiver().await;
    let hooks = vec![
        named(&format!("{base}/hook"), &secret_id),
        named(&format!("{base}/hook"), "tocsin/never-created"),
    ];
    store
        .put_service(&service(hooks.clone()))
        .await
        .expect("put the service");

    // The table holds the secret's name, not its value.
    let items = client.scan().table_name(&table).send().await.expect("scan");
    let stored = format!("{:?}", items.items());
    assert!(stored.contains(&secret_id), "{stored}");
    assert!(!stored.contains("whsec-from-secrets-manager"), "{stored}");

    let notifier = tocsin_aws::function::webhook_notifier(store, &sdk);
    assert_eq!(notifier.channel(), Channel::Webhook);
    let mut job = sample_job(Channel::Webhook, "Disk full");
    job.to = hooks[0].target(0).recipient();
    notifier
        .deliver(&job, &render(&job, &RenderContext::default()))
        .await
        .expect("delivered");
    let (headers, body) = received.recv().await.expect("a request");
    let signature = headers
        .iter()
        .find(|(name, _)| name == "x-webhook-signature")
        .map(|(_, value)| value.clone());
    let expected = format!(
        "sha256={}",
        tocsin_core::signature::hmac_sha256_hex(b"whsec-from-secrets-manager", &body)
    );
    assert_eq!(signature, Some(expected));

    job.to = hooks[1].target(1).recipient();
    let error = notifier
        .deliver(&job, &render(&job, &RenderContext::default()))
        .await
        .expect_err("the secret does not exist");
    assert!(matches!(error, NotifyError::Transient { .. }), "{error:?}");
    assert!(received.try_recv().is_err(), "nothing was posted unsigned");
}
