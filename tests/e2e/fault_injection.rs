//! Faults on the AWS path (issue 6): 160 alerts from Alertmanager, GitHub
//! and SNS through the real ingest functions, the processor, the stream and
//! the dispatcher, while the proxy in front of moto drops, resets, delays
//! and throttles SQS and DynamoDB calls. What the functions leave is
//! redelivered as Lambda's event source mappings would. Afterwards every
//! accepted alert is applied exactly once or sits in a dead-letter queue,
//! and every incident is notified once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tocsin_core::config::{EmailAddress, Integration, NotificationPolicy, Service};
use tocsin_core::event::{EventId, IntegrationId, ServiceId, Severity};
use tocsin_core::incident::TransitionKind;
use tocsin_core::providers::ProviderKind;
use tocsin_core::sns::TopicArn;

use crate::aws_proxy::{Call, Fault, Rule, When};
use crate::aws_requests::{alertmanager_event, github_failed_run_event, sns_alarm_event, FiringAlert};
use crate::aws_stack::{QueueSettings, Stack};
use crate::runtime_api::Function;

const ALERTMANAGER_KEY: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const GITHUB_KEY: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const GITHUB_SECRET: &str = "fault-injection-github-secret";
const ALARMS_KEY: &str = "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3";

/// Function instances per kind, as Lambda would run them concurrently.
const INSTANCES: usize = 2;
const PROCESSORS: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Alertmanager,
    Github,
    Sns,
}

/// One alert sent: the tag it is found by, its event id where the
/// delivery id determines it, and whether the processor can never apply it.
#[derive(Debug, Clone)]
struct Sent {
    tag: String,
    event_id: Option<String>,
    poison: bool,
}

#[derive(Debug)]
struct Delivery {
    source: Source,
    event: Value,
    alerts: Vec<Sent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 202 from an ingest endpoint, or an SNS invocation that succeeded.
    Accepted,
    /// Every attempt answered 5xx: the sender was told it failed.
    NotAccepted,
    /// Every invocation SNS and Lambda make failed: the function's
    /// dead-letter queue keeps the notification.
    FunctionDeadLetter,
}

fn caller(function: &str, instance: usize) -> String {
    format!("{function}-{instance}")
}

fn callers(function: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| caller(function, i)).collect()
}

/// Sends one delivery as its sender would: Alertmanager once (its retries
/// are new events), GitHub redelivered up to three times with the same
/// delivery id while it gets 5xx, SNS retried with the same MessageId.
async fn send(function: &mut Function, source: Source, event: &Value) -> Outcome {
    for _ in 0..3 {
        match (source, function.invoke(event.clone()).await) {
            (Source::Sns, Ok(_)) => return Outcome::Accepted,
            (Source::Sns, Err(_)) => continue,
            (source, Ok(answer)) => {
                let status = answer["statusCode"].as_u64().unwrap_or_default();
                match status {
                    202 => return Outcome::Accepted,
                    500..=599 if source == Source::Github => continue,
                    500..=599 => return Outcome::NotAccepted,
                    _ => panic!("{source:?} delivery refused: {answer}"),
                }
            }
            (source, Err(error)) => panic!("{source:?} ingest failed: {error}"),
        }
    }
    match source {
        Source::Sns => Outcome::FunctionDeadLetter,
        _ => Outcome::NotAccepted,
    }
}

/// The ids of the events the ingest functions put on the events queue,
/// by tag, read from the SendMessageBatch requests the proxy saw (whether
/// or not their answer came back).
fn queued_event_ids(calls: &[Call]) -> HashMap<String, HashSet<String>> {
    let mut ids: HashMap<String, HashSet<String>> = HashMap::new();
    for call in calls
        .iter()
        .filter(|c| c.operation == "SendMessageBatch" && c.caller.starts_with("ingest-"))
    {
        let Ok(request) = serde_json::from_slice::<Value>(&call.body) else {
            continue;
        };
        for entry in request["Entries"].as_array().into_iter().flatten() {
            let Some(event) = entry["MessageBody"]
                .as_str()
                .and_then(|b| serde_json::from_str::<Value>(b).ok())
            else {
                continue;
            };
            if let (Some(tag), Some(id)) = (
                event["payload"]["custom_details"]["labels"]["tocsin_tag"].as_str(),
                event["id"].as_str(),
            ) {
                ids.entry(tag.to_owned()).or_default().insert(id.to_owned());
            }
        }
    }
    ids
}

/// The faults of the run. Every fraction rule has its own fixed seed.
fn add_fault_rules(stack: &Stack, poison: &str) {
    let ingest: Vec<String> = ["ingest-prometheus", "ingest-github", "ingest-cloudwatch-sns"]
        .iter()
        .flat_map(|f| callers(f, INSTANCES))
        .collect();
    // The first instance of ingest-prometheus has only scripted SQS faults.
    let ingest_random: Vec<String> = ingest.iter().filter(|c| *c != "ingest-prometheus-0").cloned().collect();
    let processors = callers("processor", PROCESSORS);
    let processors_random: Vec<String> = processors.iter().skip(1).cloned().collect();
    let fraction = |probability: f64, seed: u64| When::Fraction { probability, seed };
    let delay = Fault::Delay(Duration::from_millis(150));
    let rules = [
        // The poisoned alert's incident write is refused every time, as
        // invalid: its messages must end in the dead-letter queue.
        Rule::new(Fault::Refuse, When::Always)
            .callers(processors.clone())
            .service("dynamodb")
            .operations(["TransactWriteItems"])
            .body_contains(poison),
        // Scripted hard cases: one delivery whose three SendMessageBatch
        // attempts all reach SQS but lose their answers (503 to the
        // sender, the events queued all the same), and one event whose
        // three commit attempts do the same (applied, the message failed).
        Rule::new(Fault::ResetAfter, When::Nth(vec![3, 4, 5]))
            .callers(["ingest-prometheus-0"])
            .service("sqs")
            .operations(["SendMessageBatch"]),
        Rule::new(Fault::ResetAfter, When::Nth(vec![2, 3, 4]))
            .callers(["processor-0"])
            .service("dynamodb")
            .operations(["TransactWriteItems"]),
        // Ingest: the queue and the integration lookup.
        Rule::new(Fault::Drop, fraction(0.04, 11))
            .callers(ingest_random.clone())
            .service("sqs"),
        Rule::new(Fault::ResetAfter, fraction(0.05, 12))
            .callers(ingest_random.clone())
            .service("sqs"),
        Rule::new(delay, fraction(0.04, 13))
            .callers(ingest_random.clone())
            .service("sqs"),
        Rule::new(Fault::Throttle, fraction(0.04, 14))
            .callers(ingest_random.clone())
            .service("sqs"),
        Rule::new(Fault::Throttle, fraction(0.03, 15))
            .callers(ingest.clone())
            .service("dynamodb"),
        Rule::new(Fault::Drop, fraction(0.02, 16))
            .callers(ingest.clone())
            .service("dynamodb"),
        // The processor: the key's Query and the commit (a transaction, or
        // for a repeat the incident's PutItem and its timeline entry's).
        Rule::new(Fault::ResetAfter, fraction(0.04, 21))
            .callers(processors_random.clone())
            .service("dynamodb")
            .operations(["TransactWriteItems", "PutItem"]),
        Rule::new(Fault::Drop, fraction(0.02, 22))
            .callers(processors.clone())
            .service("dynamodb"),
        Rule::new(Fault::Throttle, fraction(0.02, 23))
            .callers(processors.clone())
            .service("dynamodb"),
        Rule::new(delay, fraction(0.03, 24))
            .callers(processors.clone())
            .service("dynamodb"),
    ];
    for rule in rules {
        stack.proxy.add_rule(rule);
    }
}

async fn configure(stack: &Stack, recipient: &str, topic: &str) {
    let service = ServiceId::parse("storefront").unwrap();
    stack
        .store
        .put_service(&Service {
            id: service.clone(),
            name: "Storefront".into(),
            policy: NotificationPolicy {
                email: vec![EmailAddress::parse(recipient).unwrap()],
                sms: Vec::new(),
                slack: None,
                webhooks: Vec::new(),
                on: vec![TransitionKind::Triggered],
                min_severity: Severity::Info,
                min_severity_by_channel: Default::default(),
                escalation: Vec::new(),
            },
        })
        .await
        .unwrap();
    let integration = |id: &str, provider, key: &str| crate::aws_stack::integration(id, &service, provider, key);
    stack
        .store
        .put_integration(&integration(
            "storefront-am",
            ProviderKind::Prometheus,
            ALERTMANAGER_KEY,
        ))
        .await
        .unwrap();
    stack
        .store
        .put_integration(&Integration {
            secret: Some(tocsin_core::config::Secret::new(GITHUB_SECRET.to_owned())),
            ..integration("storefront-github", ProviderKind::Github, GITHUB_KEY)
        })
        .await
        .unwrap();
    let mut alarms = integration("storefront-alarms", ProviderKind::CloudWatch, ALARMS_KEY);
    alarms.cloudwatch.topics = vec![TopicArn::parse(topic).unwrap()];
    stack.store.put_integration(&alarms).await.unwrap();
}

/// 160 alerts: Alertmanager groups of three over six fingerprints (and
/// two groups of one poisoned fingerprint), GitHub failures over six
/// branches, CloudWatch alarms over six alarms.
fn deliveries(run: &str, topic: &str, poison: &str) -> Vec<Delivery> {
    let short = &run[..8];
    let mut deliveries = Vec::new();
    for request in 0..20 {
        let alerts: Vec<Sent> = (0..3)
            .map(|i| Sent {
                tag: format!("am-{request}-{i}"),
                event_id: None,
                poison: false,
            })
            .collect();
        let firing: Vec<FiringAlert> = (0..3)
            .map(|i| FiringAlert {
                fingerprint: format!("am-{}-{short}", (request * 3 + i) % 6),
                tag: alerts[i].tag.clone(),
            })
            .collect();
        deliveries.push(Delivery {
            source: Source::Alertmanager,
            event: alertmanager_event(ALERTMANAGER_KEY, &firing),
            alerts,
        });
    }
    for request in 0..2 {
        let alerts: Vec<Sent> = (0..2)
            .map(|i| Sent {
                tag: format!("poison-{request}-{i}"),
                event_id: None,
                poison: true,
            })
            .collect();
        let firing: Vec<FiringAlert> = alerts
            .iter()
            .map(|a| FiringAlert {
                fingerprint: poison.to_owned(),
                tag: a.tag.clone(),
            })
            .collect();
        deliveries.push(Delivery {
            source: Source::Alertmanager,
            event: alertmanager_event(ALERTMANAGER_KEY, &firing),
            alerts,
        });
    }
    let github = IntegrationId::parse("storefront-github").unwrap();
    let alarms = IntegrationId::parse("storefront-alarms").unwrap();
    for n in 0..48 {
        let delivery = uuid::Uuid::new_v4().to_string();
        deliveries.push(Delivery {
            source: Source::Github,
            event: github_failed_run_event(GITHUB_KEY, GITHUB_SECRET, &format!("release-{}", n % 6), &delivery),
            alerts: vec![Sent {
                tag: format!("github-{n}"),
                event_id: Some(EventId::from_delivery(&github, &delivery, 0).to_string()),
                poison: false,
            }],
        });
        let message_id = uuid::Uuid::new_v4().to_string();
        deliveries.push(Delivery {
            source: Source::Sns,
            event: sns_alarm_event(topic, &format!("latency-{}-{short}", n % 6), &message_id),
            alerts: vec![Sent {
                tag: format!("sns-{n}"),
                event_id: Some(EventId::from_delivery(&alarms, &message_id, 0).to_string()),
                poison: false,
            }],
        });
    }
    deliveries
}

/// Sends every delivery with `INSTANCES` functions per source in parallel.
async fn ingest_all(stack: &Stack, deliveries: Vec<Delivery>) -> Vec<(Delivery, Outcome)> {
    let mut workers = tokio::task::JoinSet::new();
    for (source, binary) in [
        (Source::Alertmanager, "ingest-prometheus"),
        (Source::Github, "ingest-github"),
        (Source::Sns, "ingest-cloudwatch-sns"),
    ] {
        let mine: Vec<(usize, &Delivery)> = deliveries
            .iter()
            .enumerate()
            .filter(|(_, d)| d.source == source)
            .collect();
        for instance in 0..INSTANCES {
            let mut function = stack.function(binary, &caller(binary, instance)).await;
            let share: Vec<(usize, Value)> = mine
                .iter()
                .skip(instance)
                .step_by(INSTANCES)
                .map(|(index, d)| (*index, d.event.clone()))
                .collect();
            workers.spawn(async move {
                let mut outcomes = Vec::new();
                for (index, event) in share {
                    outcomes.push((index, send(&mut function, source, &event).await));
                }
                outcomes
            });
        }
    }
    let mut outcomes: HashMap<usize, Outcome> = HashMap::new();
    while let Some(done) = workers.join_next().await {
        outcomes.extend(done.expect("an ingest worker"));
    }
    deliveries
        .into_iter()
        .enumerate()
        .map(|(i, d)| (d, outcomes[&i]))
        .collect()
}

#[tokio::test]
async fn every_accepted_alert_is_applied_once_or_dead_lettered_under_aws_faults() {
    let stack = Stack::new(QueueSettings::default()).await;
    let recipient = format!("oncall-{}@example.com", stack.run);
    let topic = format!("arn:aws:sns:us-east-1:123456789012:alarms-{}", &stack.run[..8]);
    let poison = format!("poison-{}", &stack.run[..8]);
    configure(&stack, &recipient, &topic).await;
    add_fault_rules(&stack, &poison);

    // The processors poll while the alerts come in, as on AWS.
    let mut processors = Vec::new();
    for i in 0..PROCESSORS {
        processors.push(stack.function("processor", &caller("processor", i)).await);
    }
    let source = stack.sqs_source(&stack.events).await;
    let ingest_done = Arc::new(AtomicBool::new(false));
    let started = std::time::Instant::now();
    let (sent, (_processors, invocations)) = tokio::join!(
        async {
            let sent = ingest_all(&stack, deliveries(&stack.run, &topic, &poison)).await;
            ingest_done.store(true, Ordering::SeqCst);
            sent
        },
        source.drain_after(processors, Duration::from_secs(120), ingest_done.clone()),
    );

    // Alertmanager event ids are fresh per request: read them from what
    // reached the queue.
    let queued = queued_event_ids(&stack.proxy.calls());
    let mut alerts: Vec<(Sent, Outcome)> = Vec::new();
    for (delivery, outcome) in &sent {
        for alert in &delivery.alerts {
            let mut alert = alert.clone();
            if alert.event_id.is_none() {
                let ids = queued.get(&alert.tag).cloned().unwrap_or_default();
                assert!(ids.len() <= 1, "{}: one event id per alert, got {ids:?}", alert.tag);
                alert.event_id = ids.into_iter().next();
            }
            alerts.push((alert, *outcome));
        }
    }
    assert_eq!(alerts.len(), 160);
    let processed = started.elapsed();
    // What the table and the dead-letter queue hold.
    let items = stack.scan().await;
    let text = |item: &tocsin_aws::dynamodb::Item, name: &str| match item.get(name) {
        Some(aws_sdk_dynamodb::types::AttributeValue::S(s)) => Some(s.clone()),
        _ => None,
    };
    let mut applied: HashMap<String, Option<String>> = HashMap::new();
    let mut occurrences: HashMap<String, u64> = HashMap::new();
    // Openings and repeats have no applied record: the event's tag in the
    // incident's item says it was applied (fewer than RECENT_EVENTS_KEPT
    // events per incident here).
    let mut recent: HashMap<String, String> = HashMap::new();
    for item in &items {
        match text(item, "type").as_deref() {
            Some("applied") => {
                let id = text(item, "pk")
                    .unwrap_or_default()
                    .trim_start_matches("EVENT#")
                    .to_owned();
                applied.insert(id, text(item, "incident"));
            }
            Some("incident") => {
                let data: Value = serde_json::from_str(&text(item, "data").unwrap_or_default()).unwrap();
                let id = text(item, "incident_id").expect("an incident id");
                occurrences.insert(id.clone(), data["occurrences"].as_u64().unwrap());
                if let Some(aws_sdk_dynamodb::types::AttributeValue::L(tags)) =
                    item.get(tocsin_aws::dynamodb::attr::RECENT)
                {
                    for tag in tags.iter().filter_map(|t| t.as_s().ok()) {
                        recent.insert(tag.clone(), id.clone());
                    }
                }
            }
            _ => {}
        }
    }
    for id in alerts.iter().filter_map(|(a, _)| a.event_id.as_deref()) {
        if let Some(incident) = recent.get(&tocsin_aws::dynamodb::event_tag(&EventId::new(id))) {
            let previous = applied.insert(id.to_owned(), Some(incident.clone()));
            assert!(
                previous.is_none() || previous == Some(Some(incident.clone())),
                "{id}: applied to two incidents"
            );
        }
    }
    let sent_tags: HashSet<String> = alerts
        .iter()
        .filter_map(|(a, _)| a.event_id.as_deref())
        .map(|id| tocsin_aws::dynamodb::event_tag(&EventId::new(id)))
        .collect();
    for (tag, incident) in &recent {
        assert!(sent_tags.contains(tag), "{incident} names an event nobody sent ({tag})");
    }
    let dead: HashSet<String> = stack
        .take_dead_letters(&stack.events)
        .await
        .iter()
        .filter_map(|body| serde_json::from_str::<Value>(body).ok())
        .filter_map(|event| event["id"].as_str().map(str::to_owned))
        .collect();

    // Applied once: each incident counts exactly the events recorded as
    // applied to it, so no event was counted twice.
    let mut per_incident: HashMap<String, u64> = HashMap::new();
    for incident in applied.values().flatten() {
        *per_incident.entry(incident.clone()).or_default() += 1;
    }
    assert_eq!(
        per_incident, occurrences,
        "an incident's occurrences are the events applied to it"
    );

    let known: HashSet<&str> = alerts.iter().filter_map(|(a, _)| a.event_id.as_deref()).collect();
    for id in applied.keys() {
        assert!(known.contains(id.as_str()), "applied an event nobody sent: {id}");
    }

    let (mut accepted, mut not_accepted, mut applied_anyway, mut applied_count) = (0, 0, 0, 0);
    let (mut dead_lettered, mut ingest_dead_lettered, mut lost) = (0, 0, Vec::new());
    let mut applied_and_dead = 0;
    for (alert, outcome) in &alerts {
        let id = alert.event_id.as_deref();
        let is_applied = id.is_some_and(|id| applied.contains_key(id));
        let is_dead = id.is_some_and(|id| dead.contains(id));
        if alert.poison {
            assert!(!is_applied, "{}: a poisoned alert was applied", alert.tag);
        }
        match outcome {
            Outcome::Accepted => {
                accepted += 1;
                match (is_applied, is_dead) {
                    (true, false) => applied_count += 1,
                    (false, true) => dead_lettered += 1,
                    (true, true) => {
                        applied_count += 1;
                        applied_and_dead += 1;
                    }
                    (false, false) => lost.push(alert.tag.clone()),
                }
            }
            Outcome::NotAccepted => {
                not_accepted += 1;
                if is_applied {
                    applied_anyway += 1;
                }
            }
            Outcome::FunctionDeadLetter => ingest_dead_lettered += 1,
        }
    }
    let fired = stack.proxy.clear_rules();
    let mut faults: BTreeMap<(String, &str), u64> = BTreeMap::new();
    for call in stack.proxy.calls() {
        if let Some(fault) = call.fault {
            *faults.entry((call.service.clone(), fault.name())).or_default() += 1;
        }
    }
    let stream_faults = add_dispatch_faults(&stack);

    // Notifications: the stream to the dispatcher, then the email queue.
    let mut dispatch = stack.function("dispatch", &caller("dispatch", 0)).await;
    let mut stream = stack.stream_source().await;
    let streamed = stream.drain(&mut dispatch).await;
    let dispatch_fired = stack.proxy.clear_rules();
    let notifier = stack.function("notify-email", "notify-email-0").await;
    let email_source = stack.sqs_source(&stack.email).await;
    let (_notifier, _) = email_source.drain(vec![notifier], Duration::from_secs(30)).await;
    let notified = started.elapsed();
    let emails = stack.emails_sent_to(&recipient);

    println!(
        "fault injection: {} alerts in {} deliveries; processor invocations {}; faults by service {faults:?}, \
         then on the dispatcher {dispatch_fired:?} ({stream_faults} rules)",
        alerts.len(),
        sent.len(),
        invocations.len(),
    );
    println!(
        "  accepted {accepted}, applied {applied_count}, dead-lettered {dead_lettered}, lost {} \
         (applied and also dead-lettered {applied_and_dead})",
        lost.len()
    );
    println!(
        "  not accepted {not_accepted} (applied anyway {applied_anyway}); SNS notifications in the function's \
         dead-letter queue {ingest_dead_lettered}"
    );
    println!(
        "  incidents {}, stream records {} read / {} dispatched / {} given up, emails {emails}; \
         processed at {processed:.1?}, notified at {notified:.1?}",
        occurrences.len(),
        streamed.records_read,
        streamed.records_dispatched,
        streamed.given_up
    );

    assert!(
        lost.is_empty(),
        "accepted alerts neither applied nor dead-lettered: {lost:?}"
    );
    for (alert, _) in alerts.iter().filter(|(a, _)| a.poison) {
        let id = alert.event_id.as_deref().unwrap_or_default();
        assert!(
            dead.contains(id),
            "{}: a poisoned alert is in the dead-letter queue",
            alert.tag
        );
    }
    assert!(not_accepted > 0, "the scripted SQS failure was answered 5xx");
    assert!(
        applied_anyway > 0,
        "the scripted SQS failure queued its events all the same"
    );
    assert!(fired.values().sum::<u64>() > 20, "faults were injected: {fired:?}");
    assert_eq!(streamed.given_up, 0, "no transition was given up on");
    assert_eq!(
        emails,
        occurrences.len(),
        "one email per incident, however often its transition was dispatched"
    );
}

/// Faults on the dispatcher's calls while it reads the stream: the first
/// SendMessageBatch lands three times without an answer (the batch fails
/// and the stream hands its records over again), the next one is dropped
/// once, and a service lookup is throttled.
fn add_dispatch_faults(stack: &Stack) -> usize {
    let dispatch = callers("dispatch", 1);
    let rules = [
        Rule::new(Fault::ResetAfter, When::Nth(vec![1, 2, 3]))
            .callers(dispatch.clone())
            .service("sqs"),
        Rule::new(Fault::Drop, When::Nth(vec![2]))
            .callers(dispatch.clone())
            .service("sqs"),
        Rule::new(Fault::Throttle, When::Nth(vec![2]))
            .callers(dispatch)
            .service("dynamodb"),
    ];
    let count = rules.len();
    for rule in rules {
        stack.proxy.add_rule(rule);
    }
    count
}
