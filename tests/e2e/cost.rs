//! What a million alerts cost on AWS (issue 7): alerts run through the
//! whole AWS pipeline (ingest-prometheus, the events queue, the processor,
//! the table's stream, the dispatcher, the email and SMS queues and their
//! notifiers) against moto through the counting proxy, and the requests,
//! invocations and durations per alert are priced at us-east-1 list prices.
//! docs/cost.md explains the model and records the figures.
//!
//! Ignored by default (it measures, it asserts nothing about cost):
//!
//! ```text
//! cargo build --release --workspace --bins
//! TOCSIN_FUNCTIONS_PROFILE=release TOCSIN_COST_ALERTS=1000 \
//!   cargo test -p tocsin-tests --test e2e cost -- --ignored --nocapture --test-threads 1
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use tocsin_core::auth::KeyHash;
use tocsin_core::config::{EmailAddress, FieldMapping, Integration, NotificationPolicy, PhoneNumber, Service};
use tocsin_core::event::{IntegrationId, ServiceId, Severity};
use tocsin_core::incident::TransitionKind;
use tocsin_core::providers::ProviderKind;

use crate::aws_proxy::Call;
use crate::aws_requests::{alertmanager_event, FiringAlert};
use crate::aws_stack::{Invocation, QueueSettings, Stack, POLLER_CALLER, TEST_CALLER};

const KEY: &str = "f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7";

/// us-east-1 list prices, in dollars (docs/cost.md cites each page).
mod price {
    /// API Gateway HTTP API, per request (first 300 million a month).
    pub const HTTP_API_REQUEST: f64 = 1.00 / 1e6;
    /// Lambda, per request.
    pub const LAMBDA_REQUEST: f64 = 0.20 / 1e6;
    /// Lambda arm64, per GB-second.
    pub const LAMBDA_GB_SECOND: f64 = 0.000_013_333_4;
    /// The functions' memory, template.yaml's Globals.
    pub const LAMBDA_GB: f64 = 128.0 / 1024.0;
    /// SQS FIFO, per request (each 64 KiB of payload is one request).
    pub const SQS_FIFO_REQUEST: f64 = 0.50 / 1e6;
    /// DynamoDB on-demand (Standard table class).
    pub const DYNAMODB_WRITE_UNIT: f64 = 0.625 / 1e6;
    pub const DYNAMODB_READ_UNIT: f64 = 0.125 / 1e6;
    /// CloudWatch Logs ingestion (Standard class, first tier), per GB.
    pub const LOG_INGESTION_GB: f64 = 0.50;
}

/// Assumed latency of one DynamoDB or SQS call from a function in the same
/// region, for the Lambda durations "on AWS" (moto on a shared 2-core
/// machine answers far slower).
const AWS_CALL_MS: f64 = 8.0;

/// Global secondary indexes an incident item is in (template.yaml).
const INCIDENT_INDEXES: f64 = 3.0;
/// Indexes keyed on the incident's status (by_status, by_service_status).
const STATUS_INDEXES: f64 = 2.0;

/// A scenario: the Alertmanager notifications to send, and how many
/// alerts they carry.
struct Scenario {
    name: &'static str,
    requests: Vec<Value>,
    alerts: usize,
}

fn alert(fingerprint: String, tag: String) -> FiringAlert {
    FiringAlert { fingerprint, tag }
}

fn alerts_wanted() -> usize {
    std::env::var("TOCSIN_COST_ALERTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

/// Every alert in its own webhook, every alert a new incident.
fn single_alert_webhooks(run: &str, alerts: usize) -> Scenario {
    Scenario {
        name: "single-alert webhooks",
        requests: (0..alerts)
            .map(|n| alertmanager_event(KEY, &[alert(format!("single-{n}-{run}"), format!("{n}"))]))
            .collect(),
        alerts,
    }
}

/// Alertmanager groups of ten alerts, every alert a new incident.
fn groups_of_ten(run: &str, alerts: usize) -> Scenario {
    Scenario {
        name: "10-alert Alertmanager groups",
        requests: (0..alerts / 10)
            .map(|g| {
                let group: Vec<FiringAlert> = (0..10)
                    .map(|i| alert(format!("group-{g}-{i}-{run}"), format!("{g}-{i}")))
                    .collect();
                alertmanager_event(KEY, &group)
            })
            .collect(),
        alerts: alerts / 10 * 10,
    }
}

/// Single-alert webhooks, each key firing ten times: one incident and
/// nine repeats per key.
fn dedup_heavy(run: &str, alerts: usize) -> Scenario {
    let keys = alerts / 10;
    Scenario {
        name: "dedup-heavy (each key fires 10 times)",
        requests: (0..keys * 10)
            .map(|n| alertmanager_event(KEY, &[alert(format!("repeat-{}-{run}", n % keys), format!("{n}"))]))
            .collect(),
        alerts: keys * 10,
    }
}

/// Alertmanager's own stream: groups of ten alerts, each group sent ten
/// times while it fires (Alertmanager re-sends a firing group every
/// group_interval while it changes, every repeat_interval after): one
/// incident and nine repeats per alert, ten alerts per webhook.
fn groups_resent(run: &str, alerts: usize) -> Scenario {
    let groups = (alerts / 100).max(1);
    Scenario {
        name: "10-alert groups, each sent 10 times",
        requests: (0..10)
            .flat_map(|send| {
                (0..groups).map(move |g| {
                    let group: Vec<FiringAlert> = (0..10)
                        .map(|i| alert(format!("resent-{g}-{i}-{run}"), format!("{g}-{i}-{send}")))
                        .collect();
                    alertmanager_event(KEY, &group)
                })
            })
            .collect(),
        alerts: groups * 100,
    }
}

async fn configure(stack: &Stack) {
    let service = ServiceId::parse("payments").unwrap();
    stack
        .store
        .put_service(&Service {
            id: service.clone(),
            name: "Payments".into(),
            policy: NotificationPolicy {
                email: vec![EmailAddress::parse(&format!("oncall-{}@example.com", stack.run)).unwrap()],
                sms: vec![PhoneNumber::parse("+15555550123").unwrap()],
                slack: None,
                webhooks: Vec::new(),
                on: vec![TransitionKind::Triggered, TransitionKind::Resolved],
                min_severity: Severity::Info,
                min_severity_by_channel: Default::default(),
                escalation: Vec::new(),
            },
        })
        .await
        .unwrap();
    stack
        .store
        .put_integration(&Integration {
            id: IntegrationId::parse("payments-am").unwrap(),
            service,
            provider: ProviderKind::Prometheus,
            key_hash: KeyHash::of(KEY),
            secret: None,
            enabled: true,
            fields: FieldMapping::default(),
            cloudwatch: Default::default(),
            dedup_key: None,
            // Counted as a deployment's default limit would be, and high
            // enough never to refuse the benchmark.
            rate_limit_per_minute: Some(1_000_000),
            secret_ref: None,
        })
        .await
        .unwrap();
}

/// The function a caller label names (`processor-2` → `processor`).
fn function_of(caller: &str) -> &str {
    match caller.rsplit_once('-') {
        Some((function, instance)) if instance.chars().all(|c| c.is_ascii_digit()) => function,
        _ => caller,
    }
}

/// DynamoDB's item size: attribute names plus values.
fn item_size(item: &Value) -> f64 {
    item.as_object()
        .map(|attributes| {
            attributes
                .iter()
                .map(|(name, value)| name.len() as f64 + value_size(value))
                .sum()
        })
        .unwrap_or(0.0)
}

fn value_size(value: &Value) -> f64 {
    let Some((tag, inner)) = value.as_object().and_then(|o| o.iter().next()) else {
        return 0.0;
    };
    match tag.as_str() {
        "S" => inner.as_str().map(|s| s.len()).unwrap_or(0) as f64,
        "N" => inner.as_str().map(|s| s.len().div_ceil(2) + 1).unwrap_or(1) as f64,
        "BOOL" | "NULL" => 1.0,
        "SS" | "NS" => inner
            .as_array()
            .map(|v| v.iter().map(|s| s.as_str().map(str::len).unwrap_or(0)).sum::<usize>())
            .unwrap_or(0) as f64,
        "L" => {
            3.0 + inner
                .as_array()
                .map(|v| v.iter().map(|x| value_size(x) + 1.0).sum())
                .unwrap_or(0.0)
        }
        "M" => 3.0 + item_size(inner) + inner.as_object().map(|m| m.len() as f64).unwrap_or(0.0),
        _ => 0.0,
    }
}

/// Write units of one item written transactionally (2 per KB) or not.
fn write_units(size: f64, transactional: bool) -> f64 {
    let units = (size / 1024.0).ceil().max(1.0);
    if transactional {
        2.0 * units
    } else {
        units
    }
}

/// Read units of `size` bytes read in one request.
fn read_units(size: f64, consistent: bool) -> f64 {
    let units = (size / 4096.0).ceil().max(1.0);
    if consistent {
        units
    } else {
        units / 2.0
    }
}

/// Index writes of a Put of an incident item: a new incident enters every
/// (sparse, KEYS_ONLY) index; a status change moves it in the two status
/// indexes (a delete and a put each); a repeat changes no indexed key.
fn index_writes(put: &Value) -> f64 {
    let item = &put["Item"];
    if item["type"]["S"] != "incident" {
        return 0.0;
    }
    let condition = put["ConditionExpression"].as_str().unwrap_or_default();
    if condition.contains("attribute_not_exists") {
        INCIDENT_INDEXES
    } else if matches!(item["transition"]["S"].as_str(), Some("acknowledged" | "resolved")) {
        2.0 * STATUS_INDEXES
    } else {
        0.0
    }
}

/// DynamoDB request units of one successful call: (read, write).
fn dynamodb_units(call: &Call) -> (f64, f64) {
    let request: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
    let response: Value = serde_json::from_slice(&call.response).unwrap_or(Value::Null);
    let consistent = request["ConsistentRead"] == true;
    match call.operation.as_str() {
        "GetItem" => (read_units(item_size(&response["Item"]), consistent), 0.0),
        "Query" | "Scan" => {
            let size: f64 = response["Items"].as_array().into_iter().flatten().map(item_size).sum();
            (read_units(size, consistent), 0.0)
        }
        "BatchGetItem" => {
            let sizes: f64 = response["Responses"]
                .as_object()
                .into_iter()
                .flat_map(|tables| tables.values())
                .flat_map(|items| items.as_array().into_iter().flatten())
                .map(|item| read_units(item_size(item), consistent))
                .sum();
            (sizes, 0.0)
        }
        "TransactWriteItems" => {
            let mut units = 0.0;
            for entry in request["TransactItems"].as_array().into_iter().flatten() {
                if let Some(put) = entry.get("Put") {
                    units += write_units(item_size(&put["Item"]), true) + index_writes(put);
                } else {
                    // A delete or condition check: the items involved are
                    // small (the open slot); one KB.
                    units += write_units(1.0, true);
                }
            }
            (0.0, units)
        }
        "PutItem" => (0.0, write_units(item_size(&request["Item"]), false)),
        // Counters and deletes of small items.
        "UpdateItem" | "DeleteItem" => (0.0, write_units(1.0, false)),
        _ => (0.0, 0.0),
    }
}

/// SQS billed requests of one call: each 64 KiB of payload is a request.
fn sqs_requests(call: &Call) -> f64 {
    let payload = call.body.len().max(call.response.len()) as f64;
    (payload / 65_536.0).ceil().max(1.0)
}

/// Whether a ReceiveMessage brought messages (an empty one is Lambda's
/// idle polling, a fixed monthly cost, not a cost per alert).
fn received_messages(call: &Call) -> bool {
    let response: Value = serde_json::from_slice(&call.response).unwrap_or(Value::Null);
    response["Messages"].as_array().is_some_and(|m| !m.is_empty())
}

/// Invocations and their durations, by function.
#[derive(Default)]
struct Lambda {
    invocations: BTreeMap<&'static str, Vec<Duration>>,
}

impl Lambda {
    fn add(&mut self, function: &'static str, durations: impl IntoIterator<Item = Duration>) {
        self.invocations.entry(function).or_default().extend(durations);
    }
}

fn durations(invocations: &[Invocation]) -> Vec<Duration> {
    invocations.iter().map(|i| i.duration).collect()
}

fn median_ms(durations: &[Duration]) -> f64 {
    let mut ms: Vec<f64> = durations.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    ms.get(ms.len() / 2).copied().unwrap_or(0.0)
}

async fn measure(scenario: Scenario) {
    let mut stack = Stack::new(QueueSettings::default()).await;
    stack.log_level = None;
    configure(&stack).await;
    stack.proxy.reset_calls();
    let started = Instant::now();
    let mut lambda = Lambda::default();

    // Ingest: four concurrent instances, as Lambda would scale.
    let mut workers = tokio::task::JoinSet::new();
    let requests = scenario.requests.len();
    for instance in 0..4 {
        let mut function = stack
            .function("ingest-prometheus", &format!("ingest-prometheus-{instance}"))
            .await;
        let share: Vec<Value> = scenario.requests.iter().skip(instance).step_by(4).cloned().collect();
        workers.spawn(async move {
            let mut durations = Vec::new();
            for event in share {
                let started = Instant::now();
                let answer = function.invoke(event).await.expect("ingest answers");
                durations.push(started.elapsed());
                assert_eq!(answer["statusCode"], 202, "{answer}");
            }
            durations
        });
    }
    while let Some(done) = workers.join_next().await {
        lambda.add("ingest-prometheus", done.expect("an ingest worker"));
    }

    let mut processors = Vec::new();
    for i in 0..2 {
        processors.push(stack.function("processor", &format!("processor-{i}")).await);
    }
    let events = stack.sqs_source(&stack.events).await;
    let (_, invocations) = events.drain(processors, Duration::from_secs(600)).await;
    lambda.add("processor", durations(&invocations));

    let mut dispatch = stack.function("dispatch", "dispatch").await;
    let mut stream = stack.stream_source().await;
    let streamed = stream.drain(&mut dispatch).await;
    lambda.add("dispatch", durations(&streamed.invocations));

    for (binary, queue) in [("notify-email", &stack.email), ("notify-sms", &stack.sms)] {
        let notifier = stack.function(binary, binary).await;
        let source = stack.sqs_source(queue).await;
        let (_, invocations) = source.drain(vec![notifier], Duration::from_secs(600)).await;
        lambda.add(binary, durations(&invocations));
    }
    let elapsed = started.elapsed();
    let mut logs: BTreeMap<String, u64> = BTreeMap::new();
    for (caller, bytes) in stack.log_bytes() {
        *logs.entry(function_of(&caller).to_owned()).or_default() += bytes;
    }
    report(&scenario, requests, &stack.proxy.calls(), &lambda, &logs, elapsed);
}

fn report(
    scenario: &Scenario,
    requests: usize,
    calls: &[Call],
    lambda: &Lambda,
    logs: &BTreeMap<String, u64>,
    elapsed: Duration,
) {
    let alerts = scenario.alerts as f64;
    let per_million = 1e6 / alerts;
    println!(
        "\n== {}: {} alerts in {requests} webhooks, {:.1} s",
        scenario.name,
        scenario.alerts,
        elapsed.as_secs_f64()
    );

    // Requests per alert, by function, service and operation. The test's
    // own calls and the emulated pollers' queue-length checks are not
    // Tocsin's; stream reads by Lambda are free.
    let mut counted: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    let (mut sqs, mut reads, mut writes) = (0.0, 0.0, 0.0);
    let mut excluded_empty_receives = 0;
    for call in calls
        .iter()
        .filter(|c| c.caller != TEST_CALLER && c.status == Some(200))
    {
        let function = function_of(&call.caller).to_owned();
        match call.service.as_str() {
            "sqs" if call.operation == "GetQueueAttributes" && call.caller == POLLER_CALLER => continue,
            "sqs" if call.operation == "ReceiveMessage" && !received_messages(call) => {
                excluded_empty_receives += 1;
                continue;
            }
            "sqs" => sqs += sqs_requests(call),
            "dynamodb" => {
                let (read, write) = dynamodb_units(call);
                reads += read;
                writes += write;
            }
            _ => {}
        }
        *counted
            .entry((function, call.service.clone(), call.operation.clone()))
            .or_default() += 1.0;
    }
    println!("AWS requests per alert (excluding {excluded_empty_receives} empty receives while draining):");
    for ((function, service, operation), count) in &counted {
        println!("  {function:<22} {service:<16} {operation:<22} {:>8.3}", count / alerts);
    }
    // Time each function spent waiting on its AWS calls (moto on this
    // machine, behind the proxy), and how many calls it made.
    let mut waiting: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for call in calls
        .iter()
        .filter(|c| c.caller != TEST_CALLER && c.caller != POLLER_CALLER)
    {
        let entry = waiting.entry(function_of(&call.caller)).or_default();
        entry.0 += call.elapsed.as_secs_f64();
        entry.1 += 1.0;
    }
    println!(
        "Lambda per alert (measured against moto; \"on AWS\" replaces the time waiting on moto with {AWS_CALL_MS} ms \
         per call):"
    );
    let (mut lambda_cost, mut lambda_on_aws) = (0.0, 0.0);
    let gb_second = price::LAMBDA_GB * price::LAMBDA_GB_SECOND;
    for (function, durations) in &lambda.invocations {
        let billed_seconds: f64 = durations
            .iter()
            .map(|d| (d.as_secs_f64() * 1000.0).ceil() / 1000.0)
            .sum();
        let (waited, aws_calls) = waiting.get(*function).copied().unwrap_or_default();
        let on_aws_seconds = (billed_seconds - waited).max(0.0) + aws_calls * AWS_CALL_MS / 1000.0;
        let invocations = durations.len() as f64;
        lambda_cost += invocations * price::LAMBDA_REQUEST + billed_seconds * gb_second;
        lambda_on_aws += invocations * price::LAMBDA_REQUEST + on_aws_seconds * gb_second;
        println!(
            "  {function:<22} invocations {:>6.3}   median {:>7.1} ms   billed {:>7.2} ms   on AWS {:>6.2} ms   \
             logs {:>5.0} B",
            invocations / alerts,
            median_ms(durations),
            billed_seconds * 1000.0 / alerts,
            on_aws_seconds * 1000.0 / alerts,
            logs.get(*function).copied().unwrap_or(0) as f64 / alerts,
        );
    }
    let log_bytes: u64 = logs.values().sum();
    let log_cost = log_bytes as f64 / 1e9 * price::LOG_INGESTION_GB;
    let http_api = requests as f64 * price::HTTP_API_REQUEST;
    let sqs_cost = sqs * price::SQS_FIFO_REQUEST;
    let dynamodb_cost = reads * price::DYNAMODB_READ_UNIT + writes * price::DYNAMODB_WRITE_UNIT;
    println!(
        "DynamoDB per alert: {:.2} read units, {:.2} write units; SQS billed requests per alert {:.3}",
        reads / alerts,
        writes / alerts,
        sqs / alerts
    );
    let total = http_api + lambda_on_aws + sqs_cost + dynamodb_cost;
    println!("Dollars per million alerts (SES and SMS messages excluded):");
    for (what, cost) in [
        ("HTTP API", http_api),
        ("Lambda (as measured against moto)", lambda_cost),
        ("Lambda (on AWS latencies)", lambda_on_aws),
        ("SQS FIFO", sqs_cost),
        ("DynamoDB", dynamodb_cost),
        ("total (Lambda on AWS latencies)", total),
        ("CloudWatch Logs, application logs (not in the total)", log_cost),
    ] {
        println!("  {what:<54} {:>8.3}", cost * per_million);
    }
    let mut sizes: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for call in calls
        .iter()
        .filter(|c| c.operation == "TransactWriteItems" && c.status == Some(200))
    {
        let request: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
        for put in request["TransactItems"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i.get("Put"))
        {
            let kind = put["Item"]["type"]["S"].as_str().unwrap_or("other").to_owned();
            let entry = sizes.entry(kind).or_default();
            entry.0 += item_size(&put["Item"]);
            entry.1 += 1.0;
        }
    }
    let sizes: Vec<String> = sizes
        .iter()
        .map(|(kind, (bytes, count))| format!("{kind} {:.0} B", bytes / count))
        .collect();
    println!("Mean item size written by the processor: {}", sizes.join(", "));
}

#[tokio::test]
#[ignore = "a benchmark: run by the command in this file's header"]
async fn cost_of_single_alert_webhooks() {
    let run = uuid::Uuid::new_v4().simple().to_string();
    measure(single_alert_webhooks(&run[..8], alerts_wanted())).await;
}

#[tokio::test]
#[ignore = "a benchmark: run by the command in this file's header"]
async fn cost_of_alertmanager_groups_of_ten() {
    let run = uuid::Uuid::new_v4().simple().to_string();
    measure(groups_of_ten(&run[..8], alerts_wanted())).await;
}

#[tokio::test]
#[ignore = "a benchmark: run by the command in this file's header"]
async fn cost_of_a_dedup_heavy_stream() {
    let run = uuid::Uuid::new_v4().simple().to_string();
    measure(dedup_heavy(&run[..8], alerts_wanted())).await;
}

#[tokio::test]
#[ignore = "a benchmark: run by the command in this file's header"]
async fn cost_of_alertmanager_groups_re_sent() {
    let run = uuid::Uuid::new_v4().simple().to_string();
    measure(groups_resent(&run[..8], alerts_wanted())).await;
}
