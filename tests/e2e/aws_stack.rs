//! The AWS side of Tocsin assembled for a test: the table, the FIFO queues
//! with their dead-letter queues, the function binaries under their own
//! Runtime API, all talking to moto through the [`AwsProxy`], and Lambda's
//! event source mappings played by the test: SQS batches handed to a
//! function with the failures left on the queue (back after the visibility
//! timeout, to the dead-letter queue after maxReceiveCount), and the
//! table's stream read from moto's DynamoDB Streams API, filtered as the
//! template's filter does, in batches to the dispatcher.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageSystemAttributeName,
    QueueAttributeName,
};
use serde_json::{json, Value};
use tocsin_aws::dynamodb::{create_table, DynamoStore};

use crate::aws_proxy::AwsProxy;
use crate::runtime_api::{function_bin, Function};

/// The caller name of the test's own requests (setup and checks).
pub const TEST_CALLER: &str = "test";
/// The caller name of the emulated event source mappings (Lambda's pollers).
pub const POLLER_CALLER: &str = "event-source-mapping";

pub fn moto_url() -> String {
    std::env::var("TOCSIN_MOTO_URL")
        .unwrap_or_else(|_| panic!("TOCSIN_MOTO_URL is not set: this test needs a moto server (tests/run starts one)"))
}

pub async fn sdk_config(url: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(url)
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .load()
        .await
}

/// A FIFO queue and its FIFO dead-letter queue.
#[derive(Debug, Clone)]
pub struct Queue {
    pub url: String,
    pub arn: String,
    pub dead_letters: String,
}

/// How the queues are set up.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    /// Seconds a received message stays invisible: longer than any
    /// invocation takes, as template.yaml's 180 s are six times the
    /// processor's timeout, so that a message is never handed out twice
    /// while a function still works on it.
    pub visibility_timeout: u32,
    /// Seconds after an invocation before what it did not delete is
    /// visible again: the rest of the visibility timeout, fast-forwarded
    /// so that retries come back within a test.
    pub retry_delay: u32,
    /// Receives before a message goes to the dead-letter queue (5 in
    /// template.yaml).
    pub max_receive_count: u32,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            visibility_timeout: 60,
            retry_delay: 1,
            max_receive_count: 5,
        }
    }
}

pub struct Stack {
    pub proxy: AwsProxy,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub store: DynamoStore,
    pub table: String,
    pub events: Queue,
    pub email: Queue,
    pub sms: Queue,
    pub slack: Queue,
    pub sender: String,
    pub settings: QueueSettings,
    /// Unique to this stack, for names and recipients.
    pub run: String,
    pub scratch: tempfile::TempDir,
    /// RUST_LOG for the functions; `None` leaves their default (INFO), as
    /// deployed.
    pub log_level: Option<&'static str>,
}

impl Stack {
    pub async fn new(settings: QueueSettings) -> Stack {
        let moto = moto_url();
        let proxy = AwsProxy::new(&moto);
        let config = sdk_config(&proxy.endpoint(TEST_CALLER).await).await;
        let sqs = aws_sdk_sqs::Client::new(&config);
        let dynamodb = aws_sdk_dynamodb::Client::new(&config);
        let run = uuid::Uuid::new_v4().simple().to_string();
        let table = format!("tocsin-{run}");
        create_table(&dynamodb, &table).await.expect("create the table");
        let events = fifo_queue(&sqs, &format!("events-{run}"), settings).await;
        let email = fifo_queue(&sqs, &format!("email-{run}"), settings).await;
        let sms = fifo_queue(&sqs, &format!("sms-{run}"), settings).await;
        let slack = fifo_queue(&sqs, &format!("slack-{run}"), settings).await;
        let sender = format!("tocsin-{run}@example.com");
        aws_sdk_sesv2::Client::new(&config)
            .create_email_identity()
            .email_identity(&sender)
            .send()
            .await
            .expect("verify the sender");
        let store = DynamoStore::new(dynamodb.clone(), &table);
        Stack {
            proxy,
            sqs,
            dynamodb,
            store,
            table,
            events,
            email,
            sms,
            slack,
            sender,
            settings,
            run,
            scratch: tempfile::tempdir().expect("a scratch folder"),
            log_level: Some("warn"),
        }
    }

    /// Starts a function binary whose AWS requests go through the proxy,
    /// counted under `caller`.
    pub async fn function(&self, binary: &str, caller: &str) -> Function {
        let endpoint = self.proxy.endpoint(caller).await;
        let env = [
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("TOCSIN_TABLE", self.table.as_str()),
            ("TOCSIN_EVENTS_QUEUE_URL", self.events.url.as_str()),
            ("TOCSIN_EMAIL_QUEUE_URL", self.email.url.as_str()),
            ("TOCSIN_SMS_QUEUE_URL", self.sms.url.as_str()),
            ("TOCSIN_SLACK_QUEUE_URL", self.slack.url.as_str()),
            ("TOCSIN_EMAIL_FROM", self.sender.as_str()),
            ("TOCSIN_PUBLIC_URL", "https://tocsin.example.com"),
            // The tests count every SMS; throttling (on by default) is
            // throttle.rs's subject, which starts notify-sms its own way.
            ("TOCSIN_THROTTLE_SMS", "off"),
        ];
        let mut env = env.to_vec();
        if let Some(level) = self.log_level {
            env.push(("RUST_LOG", level));
        }
        // A folder per caller, each process's output apart: stdout (where
        // the functions log, as CloudWatch Logs would receive it) and stderr.
        let folder = self.scratch.path().join(caller);
        std::fs::create_dir_all(&folder).expect("a folder for the function's logs");
        let mut command = std::process::Command::new("sh");
        command
            .arg("-c")
            .arg("exec \"$0\" >\"$1\"")
            .arg(function_bin(binary))
            .arg(folder.join(format!("{binary}.stdout")));
        Function::spawn(command, binary, &env, &folder)
            .await
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"))
    }

    /// The event source mapping of `queue`, polling through its own listener.
    pub async fn sqs_source(&self, queue: &Queue) -> SqsSource {
        let config = sdk_config(&self.proxy.endpoint(POLLER_CALLER).await).await;
        SqsSource {
            sqs: aws_sdk_sqs::Client::new(&config),
            queue: queue.clone(),
            batch_size: 10,
            retry_delay: self.settings.retry_delay,
        }
    }

    /// The table stream's event source mapping, from the stream's start.
    pub async fn stream_source(&self) -> StreamSource {
        let endpoint = self.proxy.endpoint(POLLER_CALLER).await;
        let described = self
            .dynamodb
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .expect("describe the table");
        let stream_arn = described
            .table()
            .and_then(|t| t.latest_stream_arn())
            .expect("the table has a stream")
            .to_owned();
        let mut source = StreamSource {
            http: reqwest::Client::new(),
            endpoint,
            stream_arn,
            shard: String::new(),
            after: None,
            batch_size: 25,
            max_retries: 5,
        };
        let stream = source
            .call("DescribeStream", json!({"StreamArn": source.stream_arn}))
            .await;
        source.shard = stream["StreamDescription"]["Shards"][0]["ShardId"]
            .as_str()
            .expect("the stream's shard")
            .to_owned();
        source
    }

    /// Bytes each caller's functions logged to stdout so far.
    pub fn log_bytes(&self) -> Vec<(String, u64)> {
        let mut sizes = Vec::new();
        for folder in std::fs::read_dir(self.scratch.path()).into_iter().flatten().flatten() {
            let caller = folder.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read_dir(folder.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|f| f.file_name().to_string_lossy().ends_with(".stdout"))
                .filter_map(|f| f.metadata().ok())
                .map(|m| m.len())
                .sum();
            sizes.push((caller, bytes));
        }
        sizes
    }

    /// Takes every message out of a queue's dead-letter queue: the bodies.
    /// Each batch is deleted once read, since a FIFO queue hands out no
    /// more of a message group while some of it is in flight.
    pub async fn take_dead_letters(&self, queue: &Queue) -> Vec<String> {
        let mut bodies = Vec::new();
        loop {
            let output = self
                .sqs
                .receive_message()
                .queue_url(&queue.dead_letters)
                .max_number_of_messages(10)
                .send()
                .await
                .expect("receive from the dead-letter queue");
            if output.messages().is_empty() {
                break;
            }
            for message in output.messages() {
                bodies.extend(message.body().map(str::to_owned));
                self.sqs
                    .delete_message()
                    .queue_url(&queue.dead_letters)
                    .receipt_handle(message.receipt_handle().unwrap_or_default())
                    .send()
                    .await
                    .expect("delete from the dead-letter queue");
            }
        }
        bodies
    }

    /// Every item of the table, read through the test's listener.
    pub async fn scan(&self) -> Vec<tocsin_aws::dynamodb::Item> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .dynamodb
                .scan()
                .table_name(&self.table)
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("scan the table");
            items.extend(page.items().iter().cloned());
            start = page.last_evaluated_key;
            if start.is_none() {
                return items;
            }
        }
    }

    /// Emails SES accepted for `recipient` (SendEmail answered 200).
    pub fn emails_sent_to(&self, recipient: &str) -> usize {
        self.proxy
            .calls()
            .iter()
            .filter(|c| c.operation == "SendEmail" && c.status == Some(200))
            .filter_map(|c| serde_json::from_slice::<Value>(&c.body).ok())
            .filter(|request| {
                request["Destination"]["ToAddresses"]
                    .as_array()
                    .is_some_and(|to| to.iter().any(|a| a == recipient))
            })
            .count()
    }

    /// Text messages SNS accepted for `phone` (Publish answered 200).
    pub fn texts_sent_to(&self, phone: &str) -> usize {
        let field = format!("PhoneNumber={}", phone.replace('+', "%2B"));
        self.proxy
            .calls()
            .iter()
            .filter(|c| c.operation == "Publish" && c.status == Some(200))
            .filter(|c| String::from_utf8_lossy(&c.body).split('&').any(|pair| pair == field))
            .count()
    }
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("the queue's attributes")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .expect("the queue's ARN")
}

/// A FIFO queue as template.yaml declares them: explicit deduplication
/// ids, a FIFO dead-letter queue after `max_receive_count` receives.
async fn fifo_queue(sqs: &aws_sdk_sqs::Client, name: &str, settings: QueueSettings) -> Queue {
    let dead_letters = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .expect("create a dead-letter queue")
        .queue_url()
        .expect("its URL")
        .to_owned();
    let dead_letters_arn = queue_arn(sqs, &dead_letters).await;
    let url = sqs
        .create_queue()
        .queue_name(format!("{name}.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::ContentBasedDeduplication, "false")
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            settings.visibility_timeout.to_string(),
        )
        .attributes(
            QueueAttributeName::RedrivePolicy,
            json!({"deadLetterTargetArn": dead_letters_arn, "maxReceiveCount": settings.max_receive_count}).to_string(),
        )
        .send()
        .await
        .expect("create a queue")
        .queue_url()
        .expect("its URL")
        .to_owned();
    let arn = queue_arn(sqs, &url).await;
    Queue { url, arn, dead_letters }
}

/// One invocation a mapping made.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub records: usize,
    pub failed: usize,
    /// From handing the event to the function to its answer.
    pub duration: Duration,
}

/// An SQS event source mapping with ReportBatchItemFailures.
#[derive(Clone)]
pub struct SqsSource {
    sqs: aws_sdk_sqs::Client,
    pub queue: Queue,
    pub batch_size: i32,
    retry_delay: u32,
}

impl SqsSource {
    /// One receive and, when it brought messages, one invocation; what the
    /// function did not report failed is deleted, the rest comes back.
    pub async fn poll_once(&self, function: &mut Function) -> Option<Invocation> {
        self.poll(function, true).await
    }

    /// As [`SqsSource::poll_once`], but with the deletes lost (`delete`
    /// false): the whole batch comes back after the visibility timeout, as
    /// when the poller's DeleteMessageBatch fails. What is not deleted is
    /// visible again after the retry delay.
    pub async fn poll(&self, function: &mut Function, delete: bool) -> Option<Invocation> {
        let output = self
            .sqs
            .receive_message()
            .queue_url(&self.queue.url)
            .max_number_of_messages(self.batch_size)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .expect("the poller receives");
        if output.messages().is_empty() {
            return None;
        }
        let mut records = Vec::new();
        let mut handles = HashMap::new();
        for message in output.messages() {
            let attributes: HashMap<String, String> = message
                .attributes()
                .map(|a| a.iter().map(|(k, v)| (k.as_str().to_owned(), v.clone())).collect())
                .unwrap_or_default();
            let id = message.message_id().unwrap_or_default().to_owned();
            records.push(json!({
                "messageId": id,
                "receiptHandle": message.receipt_handle(),
                "body": message.body(),
                "attributes": attributes,
                "messageAttributes": {},
                "md5OfBody": message.md5_of_body(),
                "eventSource": "aws:sqs",
                "eventSourceARN": self.queue.arn,
                "awsRegion": "us-east-1",
            }));
            handles.insert(id, message.receipt_handle().unwrap_or_default().to_owned());
        }
        let received = records.len();
        let started = Instant::now();
        let answer = function.invoke(json!({ "Records": records })).await;
        let duration = started.elapsed();
        // A function error (not a partial answer) leaves the whole batch.
        let failed_ids: Vec<String> = match &answer {
            Ok(answer) => answer["batchItemFailures"]
                .as_array()
                .map(|failures| {
                    failures
                        .iter()
                        .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            Err(_) => handles.keys().cloned().collect(),
        };
        let mut kept = Vec::new();
        for id in &failed_ids {
            kept.extend(handles.remove(id));
        }
        if !delete {
            kept.extend(handles.drain().map(|(_, handle)| handle));
        }
        let delays: Vec<ChangeMessageVisibilityBatchRequestEntry> = kept
            .iter()
            .enumerate()
            .map(|(i, handle)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .visibility_timeout(self.retry_delay as i32)
                    .build()
                    .expect("a visibility entry")
            })
            .collect();
        if !delays.is_empty() {
            self.sqs
                .change_message_visibility_batch()
                .queue_url(&self.queue.url)
                .set_entries(Some(delays))
                .send()
                .await
                .expect("the poller fast-forwards the visibility timeout");
        }
        let entries: Vec<DeleteMessageBatchRequestEntry> = handles
            .values()
            .enumerate()
            .map(|(i, handle)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .build()
                    .expect("a delete entry")
            })
            .collect();
        if !entries.is_empty() {
            self.sqs
                .delete_message_batch()
                .queue_url(&self.queue.url)
                .set_entries(Some(entries))
                .send()
                .await
                .expect("the poller deletes");
        }
        Some(Invocation {
            records: received,
            failed: failed_ids.len(),
            duration,
        })
    }

    /// Nothing visible, in flight or delayed.
    pub async fn is_empty(&self) -> bool {
        let output = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .expect("the queue's counts");
        output
            .attributes()
            .map(|a| a.values().all(|count| count == "0"))
            .unwrap_or(true)
    }

    /// Polls with one poller per function until the queue is empty (every
    /// message deleted or moved to the dead-letter queue); gives the
    /// functions back with every invocation made.
    pub async fn drain(&self, functions: Vec<Function>, deadline: Duration) -> (Vec<Function>, Vec<Invocation>) {
        self.drain_after(functions, deadline, Arc::new(AtomicBool::new(true)))
            .await
    }

    /// As [`SqsSource::drain`], polling while messages are still being
    /// sent: an empty queue ends polling only once `senders_done` is true.
    pub async fn drain_after(
        &self,
        functions: Vec<Function>,
        deadline: Duration,
        senders_done: Arc<AtomicBool>,
    ) -> (Vec<Function>, Vec<Invocation>) {
        let mut pollers = tokio::task::JoinSet::new();
        for mut function in functions {
            let source = self.clone();
            let senders_done = senders_done.clone();
            pollers.spawn(async move {
                let started = Instant::now();
                let mut invocations = Vec::new();
                loop {
                    match source.poll_once(&mut function).await {
                        Some(invocation) => invocations.push(invocation),
                        None if senders_done.load(Ordering::SeqCst) && source.is_empty().await => break,
                        // Short polls, spaced: moto serves every poller on
                        // one Python thread at a time.
                        None => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                    assert!(
                        started.elapsed() < deadline,
                        "the queue {} is not empty after {deadline:?}",
                        source.queue.url
                    );
                }
                (function, invocations)
            });
        }
        let mut functions = Vec::new();
        let mut invocations = Vec::new();
        while let Some(done) = pollers.join_next().await {
            let (function, made) = done.expect("a poller");
            functions.push(function);
            invocations.extend(made);
        }
        (functions, invocations)
    }
}

/// The dispatcher's event source mapping on the table's stream.
pub struct StreamSource {
    http: reqwest::Client,
    endpoint: String,
    pub stream_arn: String,
    shard: String,
    /// The last sequence number handled.
    after: Option<String>,
    pub batch_size: usize,
    /// Retries of a failing batch before its records go to the mapping's
    /// on-failure destination (MaximumRetryAttempts).
    pub max_retries: usize,
}

/// What reading the stream to its end did.
#[derive(Debug, Default)]
pub struct StreamOutcome {
    pub records_read: usize,
    pub records_dispatched: usize,
    pub invocations: Vec<Invocation>,
    /// Records given up on after the retries (the on-failure destination).
    pub given_up: usize,
}

impl StreamSource {
    /// A DynamoDB Streams API call, shaped and signed-looking as the SDK's
    /// (moto routes on the credential scope and the target; it checks no
    /// signature).
    async fn call(&self, operation: &str, body: Value) -> Value {
        let response = self
            .http
            .post(&self.endpoint)
            .header("content-type", "application/x-amz-json-1.0")
            .header("x-amz-target", format!("DynamoDBStreams_20120810.{operation}"))
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/dynamodb/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature=0",
            )
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("DynamoDB Streams {operation}: {e}"));
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "DynamoDB Streams {operation}: {status} {answer}");
        answer
    }

    /// The records after the last one handled. A fresh iterator each time:
    /// moto swaps the table object when it rolls a transaction back, which
    /// strands older iterators on a stale copy of the stream.
    async fn read(&self) -> Vec<Value> {
        let mut request = json!({"StreamArn": self.stream_arn, "ShardId": self.shard});
        match &self.after {
            Some(sequence) => {
                request["ShardIteratorType"] = json!("AFTER_SEQUENCE_NUMBER");
                request["SequenceNumber"] = json!(sequence);
            }
            None => request["ShardIteratorType"] = json!("TRIM_HORIZON"),
        }
        let iterator = self.call("GetShardIterator", request).await["ShardIterator"].clone();
        let records = self
            .call("GetRecords", json!({"ShardIterator": iterator, "Limit": 1000}))
            .await;
        records["Records"].as_array().cloned().unwrap_or_default()
    }

    /// The template's filter: incident writes that carry a transition.
    fn passes_filter(record: &Value) -> bool {
        matches!(record["eventName"].as_str(), Some("INSERT" | "MODIFY"))
            && record["dynamodb"]["NewImage"]["type"]["S"] == "incident"
            && record["dynamodb"]["NewImage"]["transition"]["S"].is_string()
    }

    /// As Lambda hands it to the function.
    fn lambda_record(&self, mut record: Value) -> Value {
        record["eventSourceARN"] = json!(self.stream_arn);
        record["eventVersion"] = json!("1.1");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        record["dynamodb"]["ApproximateCreationDateTime"] = json!(now as f64);
        record
    }

    /// Reads the stream to its end, dispatching in batches; a batch that
    /// reports a failure is retried from the failed record.
    pub async fn drain(&mut self, function: &mut Function) -> StreamOutcome {
        let mut outcome = StreamOutcome::default();
        loop {
            let records = self.read().await;
            if records.is_empty() {
                return outcome;
            }
            outcome.records_read += records.len();
            let last = records
                .last()
                .and_then(|r| r["dynamodb"]["SequenceNumber"].as_str())
                .map(str::to_owned);
            let wanted: Vec<Value> = records
                .into_iter()
                .filter(Self::passes_filter)
                .map(|r| self.lambda_record(r))
                .collect();
            for batch in wanted.chunks(self.batch_size) {
                let mut pending = batch.to_vec();
                let mut retries = 0;
                while !pending.is_empty() {
                    let started = Instant::now();
                    let answer = function.invoke(json!({ "Records": pending })).await;
                    let duration = started.elapsed();
                    let failed_from = match &answer {
                        Ok(answer) => answer["batchItemFailures"]
                            .as_array()
                            .and_then(|f| f.first())
                            .map(|f| f["itemIdentifier"].as_str().unwrap_or_default().to_owned()),
                        Err(_) => Some(String::new()),
                    };
                    let position = failed_from.map(|sequence| {
                        pending
                            .iter()
                            .position(|r| r["dynamodb"]["SequenceNumber"] == sequence.as_str())
                            .unwrap_or(0)
                    });
                    outcome.invocations.push(Invocation {
                        records: pending.len(),
                        failed: position.map(|p| pending.len() - p).unwrap_or(0),
                        duration,
                    });
                    match position {
                        None => {
                            outcome.records_dispatched += pending.len();
                            pending.clear();
                        }
                        Some(_) if retries == self.max_retries => {
                            outcome.given_up += pending.len();
                            pending.clear();
                        }
                        Some(position) => {
                            outcome.records_dispatched += position;
                            pending.drain(..position);
                            retries += 1;
                        }
                    }
                }
            }
            self.after = last;
        }
    }
}

/// An enabled integration of `provider` on `service`, keyed by `key`, with
/// no secret and no rate limit: what the AWS runs start from.
pub fn integration(
    id: &str,
    service: &tocsin_core::event::ServiceId,
    provider: tocsin_core::providers::ProviderKind,
    key: &str,
) -> tocsin_core::config::Integration {
    tocsin_core::config::Integration {
        id: tocsin_core::event::IntegrationId::parse(id).unwrap(),
        service: service.clone(),
        provider,
        key_hash: tocsin_core::auth::KeyHash::of(key),
        secret: None,
        secret_ref: None,
        enabled: true,
        fields: tocsin_core::config::FieldMapping::default(),
        cloudwatch: Default::default(),
        dedup_key: None,
        rate_limit_per_minute: None,
    }
}
