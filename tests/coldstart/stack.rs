//! What the functions run against: one table, the queues, the SES identity,
//! the Slack secret and bucket of the template, created in moto, and each
//! function's first event as its AWS trigger would shape it. The same setup
//! as tests/e2e/lambda_pipeline.rs, with fresh incidents for every run so
//! that no run finds the work of the one before it done.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName};
use base64::Engine;
use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};
use tocsin_aws::dynamodb::{create_table, incident_key, DynamoStore};
use tocsin_aws::sqs::{SqsEventQueue, SqsNotificationQueues};
use tocsin_aws::stream::stream_record;
use tocsin_core::auth::{ApiKey, KeyHash, Scope};
use tocsin_core::config::{
    CloudWatchSettings, EmailAddress, FieldMapping, Integration, NotificationPolicy, PhoneNumber, Service,
};
use tocsin_core::contract::sample_event;
use tocsin_core::dispatch::DispatchService;
use tocsin_core::event::{Action, EventId, FieldError, IntegrationId, ServiceId, Severity};
use tocsin_core::incident::{Incident, Transition, TransitionKind};
use tocsin_core::notify::Channel;
use tocsin_core::ports::{BackendError, EventQueue};
use tocsin_core::process::{Applied, ProcessService};
use tocsin_core::providers::{InvalidPayload, ProviderKind};
use tocsin_core::sns::{SnsMessage, TopicArn};

/// The API key the api function's first request carries.
const READER_KEY: &str = "sk_coldstart_reader_0123456789abcdef";
/// The integration key in the recipient address of events/aws/ses-receipt.json.
const EMAIL_KEY: &str = "0123456789abcdef0123456789abcdef";
/// The service every integration feeds: it notifies on all three channels.
const SERVICE: &str = "checkout";
/// tocsin-core's test-only SNS signer (shared/core/testdata/sns/README.md):
/// trusted by ingest-cloudwatch here through TOCSIN_SNS_CERTIFICATES only.
const TEST_SIGNER_DIR: &str = "shared/core/testdata/sns";
const TEST_SIGNER_URL: &str =
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000tocsintestsigner0000000000.pem";

/// What a function's first event is, by what triggers it on AWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// ingest-<provider>: an API Gateway request with a provider sample.
    Ingest(ProviderKind),
    /// ingest-cloudwatch: an API Gateway request with a signed SNS envelope.
    IngestCloudWatch,
    /// ingest-cloudwatch-sns: an SNS event.
    IngestCloudWatchSns,
    /// ingest-email-ses: an SES receipt event for a message stored in S3.
    IngestEmailSes,
    /// processor: an SQS batch from the events queue.
    Processor,
    /// dispatch: a DynamoDB stream batch of incident inserts.
    Dispatch,
    /// notify-<channel>: an SQS batch of notification jobs.
    Notify(Channel),
    /// api: an API Gateway request for the open incidents.
    Api,
}

impl Trigger {
    /// The trigger of a function of functions/, by its crate name.
    pub fn of(function: &str) -> Option<Trigger> {
        Some(match function {
            "ingest-cloudwatch" => Trigger::IngestCloudWatch,
            "ingest-cloudwatch-sns" => Trigger::IngestCloudWatchSns,
            "ingest-email-ses" => Trigger::IngestEmailSes,
            "processor" => Trigger::Processor,
            "dispatch" => Trigger::Dispatch,
            "notify-email" => Trigger::Notify(Channel::Email),
            "notify-sms" => Trigger::Notify(Channel::Sms),
            "notify-slack" => Trigger::Notify(Channel::Slack),
            "api" => Trigger::Api,
            other => Trigger::Ingest(ProviderKind::parse(other.strip_prefix("ingest-")?)?),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("moto: {what}")]
    Aws {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("cannot read {}", path.display())]
    Fixture {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not JSON", path.display())]
    FixtureJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("a value of the harness's config is invalid")]
    Field(#[from] FieldError),
    #[error("the SNS envelope to sign is invalid")]
    Envelope(#[source] InvalidPayload),
    #[error("cannot sign with the test SNS key: {0}")]
    Signing(&'static str),
    #[error("processing a staged event: {0}")]
    Process(#[from] tocsin_core::process::ProcessError),
    #[error("a staged trigger did not open an incident: {0}")]
    NotOpened(String),
    #[error("the Slack stand-in: {0}")]
    SlackStandIn(#[source] std::io::Error),
}

fn aws<E: std::error::Error + Send + Sync + 'static>(what: &'static str) -> impl FnOnce(E) -> StackError {
    move |source| StackError::Aws {
        what,
        source: Box::new(source),
    }
}

/// A FIFO queue in moto.
#[derive(Debug, Clone)]
struct Queue {
    url: String,
    arn: String,
}

/// The resources of one harness run, each named uniquely in moto.
pub struct Stack {
    workspace: PathBuf,
    moto: String,
    nonce: String,
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    store: Arc<DynamoStore>,
    table: String,
    /// Where ingest functions send events (never read: nothing measures it).
    events: Queue,
    /// Where the harness stages the processor's batches.
    processor_feed: Queue,
    /// Where dispatch sends jobs (never read).
    dispatch_sinks: HashMap<Channel, Queue>,
    /// Where the harness stages each notifier's jobs.
    notify_feeds: HashMap<Channel, Queue>,
    sender: String,
    bucket: String,
    slack_secret: String,
    slack_api: String,
}

impl Stack {
    /// Creates everything in moto at `moto` and writes the config items the
    /// first events of `triggers` need.
    pub async fn create(moto: &str, workspace: &Path, triggers: &[Trigger]) -> Result<Stack, StackError> {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(moto)
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .load()
            .await;
        let nonce = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let dynamodb = aws_sdk_dynamodb::Client::new(&config);
        let sqs = aws_sdk_sqs::Client::new(&config);
        let table = format!("coldstart-{nonce}");
        create_table(&dynamodb, &table).await?;
        let store = Arc::new(DynamoStore::new(dynamodb.clone(), &table));

        let events = fifo_queue(&sqs, &format!("coldstart-{nonce}-events")).await?;
        let processor_feed = fifo_queue(&sqs, &format!("coldstart-{nonce}-processor-feed")).await?;
        let mut dispatch_sinks = HashMap::new();
        let mut notify_feeds = HashMap::new();
        for channel in Channel::ALL {
            let sink = fifo_queue(&sqs, &format!("coldstart-{nonce}-{channel}")).await?;
            dispatch_sinks.insert(channel, sink);
            let feed = fifo_queue(&sqs, &format!("coldstart-{nonce}-{channel}-feed")).await?;
            notify_feeds.insert(channel, feed);
        }

        let sender = format!("tocsin-{nonce}@example.com");
        aws_sdk_sesv2::Client::new(&config)
            .create_email_identity()
            .email_identity(&sender)
            .send()
            .await
            .map_err(aws("SES CreateEmailIdentity"))?;
        let slack_secret = aws_sdk_secretsmanager::Client::new(&config)
            .create_secret()
            .name(format!("coldstart-{nonce}-slack"))
            .secret_string(r#"{"bot_token": "xoxb-coldstart-token"}"#)
            .send()
            .await
            .map_err(aws("Secrets Manager CreateSecret"))?
            .arn()
            .unwrap_or_default()
            .to_owned();
        let slack_api = slack_stand_in().await?;

        let stack = Stack {
            workspace: workspace.to_owned(),
            moto: moto.to_owned(),
            bucket: format!("coldstart-{nonce}-mail"),
            nonce,
            dynamodb,
            sqs,
            store,
            table,
            events,
            processor_feed,
            dispatch_sinks,
            notify_feeds,
            sender,
            slack_secret,
            slack_api,
        };
        stack.write_config(&config, triggers).await?;
        Ok(stack)
    }

    /// The services, integrations, API key and mail each trigger needs.
    async fn write_config(&self, config: &aws_config::SdkConfig, triggers: &[Trigger]) -> Result<(), StackError> {
        let every_channel = NotificationPolicy {
            email: vec![email_address("oncall@example.com")?],
            sms: vec![phone_number("+15550100123")?],
            slack: Some("#checkout-oncall".into()),
            webhooks: Vec::new(),
            on: vec![TransitionKind::Triggered],
            min_severity: Severity::Info,
            min_severity_by_channel: Default::default(),
            escalation: Vec::new(),
        };
        self.store
            .put_service(&service(SERVICE, every_channel.clone())?)
            .await?;
        // One service per notifier, notifying on its channel only, so that
        // the jobs staged for one notifier land in its feed alone.
        for channel in Channel::ALL {
            let mut policy = every_channel.clone();
            if channel != Channel::Email {
                policy.email.clear();
            }
            if channel != Channel::Sms {
                policy.sms.clear();
            }
            if channel != Channel::Slack {
                policy.slack = None;
            }
            self.store
                .put_service(&service(&format!("coldstart-{channel}"), policy)?)
                .await?;
        }
        self.store
            .put_api_key(&ApiKey {
                name: "coldstart".into(),
                key_hash: KeyHash::of(READER_KEY),
                scopes: vec![Scope::IncidentsRead],
            })
            .await?;
        // The Python and Node.js equivalents ingest the Alertmanager sample.
        self.put_integration(ProviderKind::Prometheus, CloudWatchSettings::default())
            .await?;
        for trigger in triggers {
            match trigger {
                Trigger::Ingest(provider) => {
                    self.put_integration(*provider, CloudWatchSettings::default()).await?;
                }
                Trigger::IngestCloudWatch | Trigger::IngestCloudWatchSns => {
                    let alarm = self.json_fixture("events/cloudwatch/alarm.json")?;
                    let topic = alarm["TopicArn"].as_str().unwrap_or_default();
                    let topic = TopicArn::parse(topic)?;
                    let settings = CloudWatchSettings {
                        topics: vec![topic],
                        ..Default::default()
                    };
                    self.put_integration(ProviderKind::CloudWatch, settings).await?;
                }
                Trigger::IngestEmailSes => self.store_mail(config).await?,
                _ => {}
            }
        }
        Ok(())
    }

    async fn put_integration(&self, provider: ProviderKind, cloudwatch: CloudWatchSettings) -> Result<(), StackError> {
        let key = integration_key(provider);
        self.store
            .put_integration(&Integration {
                id: integration_id(&format!("coldstart-{}", provider.as_str()))?,
                service: service_id(SERVICE)?,
                provider,
                key_hash: KeyHash::of(&key),
                secret: None,
                enabled: true,
                fields: FieldMapping::default(),
                cloudwatch,
                dedup_key: None,
                // What `tocsin apply` writes by default: ingest counts each request.
                rate_limit_per_minute: Some(tocsin_core::ratelimit::DEFAULT_PER_MINUTE),
                secret_ref: None,
            })
            .await?;
        Ok(())
    }

    /// What the receipt rule's S3 action stores, and the integration whose
    /// key is in the recipient address.
    async fn store_mail(&self, config: &aws_config::SdkConfig) -> Result<(), StackError> {
        self.store
            .put_integration(&Integration {
                id: integration_id("coldstart-mail")?,
                service: service_id(SERVICE)?,
                provider: ProviderKind::Email,
                key_hash: KeyHash::of(EMAIL_KEY),
                secret: None,
                enabled: true,
                fields: FieldMapping::default(),
                cloudwatch: Default::default(),
                dedup_key: None,
                // What `tocsin apply` writes by default: ingest counts each request.
                rate_limit_per_minute: Some(tocsin_core::ratelimit::DEFAULT_PER_MINUTE),
                secret_ref: None,
            })
            .await?;
        let s3 =
            aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(config).force_path_style(true).build());
        s3.create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(aws("S3 CreateBucket"))?;
        let event = self.json_fixture("events/aws/ses-receipt.json")?;
        let message_id = event["Records"][0]["ses"]["mail"]["messageId"]
            .as_str()
            .unwrap_or_default();
        s3.put_object()
            .bucket(&self.bucket)
            .key(format!("inbound/{message_id}"))
            .body(self.fixture("events/email/nagios-problem.eml")?.into())
            .send()
            .await
            .map_err(aws("S3 PutObject"))?;
        Ok(())
    }

    /// The environment the template gives the function (its Globals and
    /// its own variables), pointed at moto. Values only tests use: the
    /// Slack API stand-in, and for ingest-cloudwatch the folder of the
    /// test SNS signer's certificate instead of a fetch from SNS.
    pub fn env(&self, trigger: Option<Trigger>) -> Vec<(String, String)> {
        let mut env = vec![
            ("AWS_ENDPOINT_URL".to_owned(), self.moto.clone()),
            ("TOCSIN_TABLE".to_owned(), self.table.clone()),
            ("TOCSIN_EVENTS_QUEUE_URL".to_owned(), self.events.url.clone()),
        ];
        let public_url = ("TOCSIN_PUBLIC_URL".to_owned(), "https://tocsin.example.com".to_owned());
        let mut add = |name: &str, value: &str| env.push((name.to_owned(), value.to_owned()));
        match trigger {
            Some(Trigger::IngestCloudWatch) => {
                add(
                    "TOCSIN_SNS_CERTIFICATES",
                    &self.workspace.join(TEST_SIGNER_DIR).to_string_lossy(),
                );
            }
            Some(Trigger::IngestEmailSes) => {
                add("TOCSIN_EMAIL_BUCKET", &self.bucket);
                add("TOCSIN_EMAIL_PREFIX", "inbound/");
            }
            Some(Trigger::Dispatch) => {
                for (channel, name) in [
                    (Channel::Email, "TOCSIN_EMAIL_QUEUE_URL"),
                    (Channel::Sms, "TOCSIN_SMS_QUEUE_URL"),
                    (Channel::Slack, "TOCSIN_SLACK_QUEUE_URL"),
                ] {
                    add(name, &self.dispatch_sinks[&channel].url);
                }
            }
            Some(Trigger::Notify(Channel::Email)) => {
                add("TOCSIN_EMAIL_FROM", &self.sender);
                add(&public_url.0, &public_url.1);
            }
            Some(Trigger::Notify(Channel::Sms)) => {
                add("TOCSIN_SMS_SENDER_ID", "");
                add(&public_url.0, &public_url.1);
            }
            Some(Trigger::Notify(Channel::Slack)) => {
                add("TOCSIN_SLACK_SECRET_ARN", &self.slack_secret);
                add("TOCSIN_SLACK_API_URL", &self.slack_api);
                add(&public_url.0, &public_url.1);
            }
            _ => {}
        }
        env
    }

    /// The first event of a function with `trigger`, for run `run`. Staged
    /// batches (processor, dispatch, notifiers) are new incidents each run.
    pub async fn first_event(&self, trigger: Trigger, run: usize) -> Result<Value, StackError> {
        match trigger {
            Trigger::Ingest(provider) => self.ingest_request(provider),
            Trigger::IngestCloudWatch => self.signed_cloudwatch_request(),
            Trigger::IngestCloudWatchSns => Ok(sns_event(&self.json_fixture("events/cloudwatch/alarm.json")?)),
            Trigger::IngestEmailSes => self.json_fixture("events/aws/ses-receipt.json"),
            Trigger::Processor => self.processor_batch(run).await,
            Trigger::Dispatch => self.stream_batch(run).await,
            Trigger::Notify(channel) => self.notify_batch(channel, run).await,
            Trigger::Api => Ok(api_gateway_request(
                "GET",
                "/incidents",
                "status=open&service=checkout",
                &[("authorization", format!("Bearer {READER_KEY}").as_str())],
                None,
            )),
        }
    }

    /// The Alertmanager sample as API Gateway hands it to ingest-prometheus
    /// (and to the Python and Node.js equivalents).
    pub fn sdk_ingest_request(&self) -> Result<Value, StackError> {
        self.ingest_request(ProviderKind::Prometheus)
    }

    fn ingest_request(&self, provider: ProviderKind) -> Result<Value, StackError> {
        let (file, extra) = trigger_sample(provider);
        let mut body = self.fixture(&format!("events/{}/{file}", provider.as_str()))?;
        let key = integration_key(provider);
        if provider == ProviderKind::EventsV2 {
            // The Events API carries its key in the body.
            let mut event: Value = serde_json::from_slice(&body).map_err(|source| StackError::FixtureJson {
                path: file.into(),
                source,
            })?;
            event["routing_key"] = Value::String(key.clone());
            body = event.to_string().into_bytes();
        }
        let content_type = if file.ends_with(".eml") {
            "message/rfc822"
        } else {
            "application/json"
        };
        let authorization = format!("Bearer {key}");
        let mut headers = vec![
            ("content-type", content_type),
            ("authorization", authorization.as_str()),
        ];
        headers.extend_from_slice(extra);
        Ok(api_gateway_request(
            "POST",
            provider.path(),
            &format!("token={key}"),
            &headers,
            Some(&body),
        ))
    }

    /// The CloudWatch alarm sample re-signed now with the test signer, as
    /// SNS would post it to the HTTPS endpoint.
    fn signed_cloudwatch_request(&self) -> Result<Value, StackError> {
        let mut envelope = self.json_fixture("events/cloudwatch/alarm.json")?;
        envelope["Timestamp"] = Value::String(Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true));
        envelope["SignatureVersion"] = json!("2");
        envelope["SigningCertURL"] = json!(TEST_SIGNER_URL);
        let message = SnsMessage::parse(envelope.to_string().as_bytes()).map_err(StackError::Envelope)?;
        let signature = self.sign(message.string_to_sign().as_bytes())?;
        envelope["Signature"] = Value::String(base64::engine::general_purpose::STANDARD.encode(signature));
        let key = integration_key(ProviderKind::CloudWatch);
        Ok(api_gateway_request(
            "POST",
            ProviderKind::CloudWatch.path(),
            &format!("token={key}"),
            &[
                ("content-type", "text/plain; charset=UTF-8"),
                ("x-amz-sns-message-type", "Notification"),
            ],
            Some(envelope.to_string().as_bytes()),
        ))
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, StackError> {
        let pem = self.fixture(&format!("{TEST_SIGNER_DIR}/test-signer.key.pem"))?;
        let body: String = String::from_utf8_lossy(&pem)
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| StackError::Signing("the key is not base64"))?;
        let key = ring::signature::RsaKeyPair::from_pkcs8(&der).map_err(|_| StackError::Signing("not a PKCS#8 key"))?;
        let mut signature = vec![0; key.public().modulus_len()];
        key.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            message,
            &mut signature,
        )
        .map_err(|_| StackError::Signing("RSA signing failed"))?;
        Ok(signature)
    }

    /// Two new triggers on the events queue, taken as the SQS poller does.
    async fn processor_batch(&self, run: usize) -> Result<Value, StackError> {
        let queue = SqsEventQueue::new(self.sqs.clone(), &self.processor_feed.url);
        let events: Vec<_> = (0..2)
            .map(|n| sample_event(SERVICE, &format!("coldstart-{}-{run}-{n}", self.nonce), Action::Trigger))
            .collect();
        queue.enqueue(&events).await?;
        self.take(&self.processor_feed, events.len()).await
    }

    /// Two incidents opened now, as their inserts reach the table's stream.
    async fn stream_batch(&self, run: usize) -> Result<Value, StackError> {
        let mut records = Vec::new();
        for (n, (incident, _)) in self.open_incidents(SERVICE, run).await?.iter().enumerate() {
            let item = self
                .dynamodb
                .get_item()
                .table_name(&self.table)
                .set_key(Some(incident_key(incident)))
                .send()
                .await
                .map_err(aws("DynamoDB GetItem"))?
                .item()
                .cloned()
                .ok_or_else(|| StackError::NotOpened(incident.id.to_string()))?;
            records.push(stream_record(
                "INSERT",
                &format!("{}", 1000 + run * 10 + n),
                &item,
                None,
            ));
        }
        Ok(json!({ "Records": records }))
    }

    /// The jobs dispatch plans for two incidents opened now, on `channel`.
    async fn notify_batch(&self, channel: Channel, run: usize) -> Result<Value, StackError> {
        let feeds = self
            .notify_feeds
            .iter()
            .map(|(channel, queue)| (*channel, queue.url.clone()))
            .collect();
        let dispatch = DispatchService::new(
            self.store.clone(),
            Arc::new(SqsNotificationQueues::new(self.sqs.clone(), feeds)),
        );
        let service = format!("coldstart-{channel}");
        let mut jobs = 0;
        for (incident, event_id) in self.open_incidents(&service, run).await? {
            let transition = Transition {
                kind: TransitionKind::Triggered,
                incident,
                event_id,
            };
            jobs += dispatch.dispatch(&transition, Utc::now()).await?;
        }
        self.take(&self.notify_feeds[&channel], jobs).await
    }

    async fn open_incidents(&self, service: &str, run: usize) -> Result<Vec<(Incident, EventId)>, StackError> {
        let process = ProcessService::new(self.store.clone());
        let mut opened = Vec::new();
        for n in 0..2 {
            let dedup_key = format!("coldstart-{}-{service}-{run}-{n}", self.nonce);
            let event = sample_event(service, &dedup_key, Action::Trigger);
            match process.apply(&event, Utc::now()).await? {
                Applied::Opened(incident) => opened.push((incident, event.id)),
                other => return Err(StackError::NotOpened(format!("{dedup_key}: {other:?}"))),
            }
        }
        Ok(opened)
    }

    /// Takes `expected` messages off `queue` (deleting them, as the poller
    /// does after a successful batch) and shapes them as Lambda's SQS event.
    async fn take(&self, queue: &Queue, expected: usize) -> Result<Value, StackError> {
        let mut records = Vec::new();
        let mut receipts = Vec::new();
        for _ in 0..20 {
            if records.len() >= expected {
                break;
            }
            let output = self
                .sqs
                .receive_message()
                .queue_url(&queue.url)
                .max_number_of_messages(10)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .map_err(aws("SQS ReceiveMessage"))?;
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
                    "eventSourceARN": queue.arn,
                    "awsRegion": "us-east-1",
                }));
                receipts.extend(message.receipt_handle().map(str::to_owned));
            }
        }
        for (n, chunk) in receipts.chunks(10).enumerate() {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, handle)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(format!("{n}-{i}"))
                        .receipt_handle(handle)
                        .build()
                        .map_err(aws("SQS DeleteMessageBatch entry"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.sqs
                .delete_message_batch()
                .queue_url(&queue.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(aws("SQS DeleteMessageBatch"))?;
        }
        Ok(json!({ "Records": records }))
    }

    fn fixture(&self, relative: &str) -> Result<Vec<u8>, StackError> {
        let path = self.workspace.join(relative);
        std::fs::read(&path).map_err(|source| StackError::Fixture { path, source })
    }

    fn json_fixture(&self, relative: &str) -> Result<Value, StackError> {
        serde_json::from_slice(&self.fixture(relative)?).map_err(|source| StackError::FixtureJson {
            path: relative.into(),
            source,
        })
    }
}

/// The sample a provider's tool sends when an alert fires, with the headers
/// it sends along (tests/e2e/providers.rs uses the same pairs).
fn trigger_sample(provider: ProviderKind) -> (&'static str, &'static [(&'static str, &'static str)]) {
    match provider {
        ProviderKind::EventsV2 | ProviderKind::Webhook | ProviderKind::Generic => ("trigger.json", &[]),
        ProviderKind::Prometheus | ProviderKind::Grafana => ("firing.json", &[]),
        ProviderKind::Email => ("nagios-problem.eml", &[]),
        ProviderKind::CloudWatch => ("alarm.json", &[]),
        ProviderKind::Datadog | ProviderKind::Honeycomb => ("triggered.json", &[]),
        ProviderKind::Sentry => ("issue-created.json", &[("sentry-hook-resource", "issue")]),
        ProviderKind::Github => ("workflow_run-failure.json", &[("x-github-event", "workflow_run")]),
        ProviderKind::Gitlab => ("pipeline-failed.json", &[("x-gitlab-event", "Pipeline Hook")]),
        ProviderKind::Bitbucket => (
            "commit_status_updated-failed.json",
            &[("x-event-key", "repo:commit_status_updated")],
        ),
        ProviderKind::NewRelic => ("activated.json", &[]),
        ProviderKind::Azure => ("fired.json", &[]),
        ProviderKind::GoogleCloudMonitoring | ProviderKind::Dynatrace => ("open.json", &[]),
        ProviderKind::AppDynamics => ("open-critical.json", &[]),
        ProviderKind::Elastic => ("active.json", &[]),
        ProviderKind::SplunkObservability => ("anomalous.json", &[]),
        ProviderKind::SplunkOnCall => ("critical.json", &[]),
        ProviderKind::UptimeRobot | ProviderKind::Pingdom | ProviderKind::UptimeKuma | ProviderKind::Site24x7 => {
            ("trigger.json", &[])
        }
        ProviderKind::BetterUptime => ("started.json", &[]),
    }
}

/// The key of the harness's integration for `provider`: 32 hex characters
/// derived from its name, so each provider has its own.
pub fn integration_key(provider: ProviderKind) -> String {
    let digest = KeyHash::of(&format!("coldstart:{}", provider.as_str()));
    digest.as_str()[..32].to_owned()
}

/// An API Gateway HTTP API (payload 2.0) request.
fn api_gateway_request(method: &str, path: &str, query: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Value {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), Value::String((*value).to_owned())))
        .collect();
    let mut request = json!({
        "version": "2.0",
        "routeKey": format!("{method} {path}"),
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "a1b2c3d4e5",
            "domainName": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "a1b2c3d4e5",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.10", "userAgent": "coldstart"},
            "requestId": "coldstart",
            "routeKey": format!("{method} {path}"),
            "stage": "$default",
            "time": "23/Nov/2026:09:00:00 +0000",
            "timeEpoch": 1795424400000_u64
        },
        "isBase64Encoded": false
    });
    if let Some(body) = body {
        request["body"] = match std::str::from_utf8(body) {
            Ok(text) => Value::String(text.to_owned()),
            Err(_) => {
                request["isBase64Encoded"] = Value::Bool(true);
                Value::String(base64::engine::general_purpose::STANDARD.encode(body))
            }
        };
    }
    request
}

/// A topic's notification as SNS hands it to a subscribed function.
fn sns_event(envelope: &Value) -> Value {
    let topic = envelope["TopicArn"].as_str().unwrap_or_default();
    json!({"Records": [{
        "EventSource": "aws:sns",
        "EventVersion": "1.0",
        "EventSubscriptionArn": format!("{topic}:2bcfbf39-05c3-41de-beaa-fcfcc21c8f55"),
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

async fn fifo_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> Result<Queue, StackError> {
    let url = sqs
        .create_queue()
        .queue_name(format!("{name}.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .map_err(aws("SQS CreateQueue"))?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(aws("SQS GetQueueAttributes"))?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .unwrap_or_default();
    Ok(Queue { url, arn })
}

/// Answers chat.postMessage as Slack does; returns the API base URL.
async fn slack_stand_in() -> Result<String, StackError> {
    async fn post_message() -> axum::Json<Value> {
        axum::Json(json!({"ok": true, "channel": "C0123ABCD", "ts": "1718000000.000100"}))
    }
    let app = axum::Router::new().route("/api/chat.postMessage", axum::routing::post(post_message));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(StackError::SlackStandIn)?;
    let address = listener.local_addr().map_err(StackError::SlackStandIn)?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{address}/api"))
}

fn service(id: &str, policy: NotificationPolicy) -> Result<Service, StackError> {
    Ok(Service {
        id: service_id(id)?,
        name: id.to_owned(),
        policy,
    })
}

fn service_id(id: &str) -> Result<ServiceId, StackError> {
    Ok(ServiceId::parse(id)?)
}

fn integration_id(id: &str) -> Result<IntegrationId, StackError> {
    Ok(IntegrationId::parse(id)?)
}

fn email_address(address: &str) -> Result<EmailAddress, StackError> {
    Ok(EmailAddress::parse(address)?)
}

fn phone_number(number: &str) -> Result<PhoneNumber, StackError> {
    Ok(PhoneNumber::parse(number)?)
}
