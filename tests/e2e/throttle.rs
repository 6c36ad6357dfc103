//! Notification throttling on the local stack (settings.throttle): a burst
//! of incidents sends one number at most its limit of SMS, the timeline of
//! every other incident says it was throttled (bundled), and once the
//! minute rolls over ONE SMS counts them.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::app::{keys, wait_for, wait_for_within, TestApp};

const CONFIG: &str = r##"
api_keys:
  - {name: ops, key: sk_e2e_ops_0123456789abcdef, scopes: [events:write, incidents:read, incidents:write]}

services:
  - id: checkout
    name: Checkout
    integrations:
      - {id: checkout-pd, type: events-v2, key: b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2}
    notify:
      sms: ["+15555550123"]
      on: [triggered]

settings:
  throttle:
    sms: {per_minute: 2, per_15_minutes: 100, per_hour: 100}
"##;

const INCIDENTS: usize = 8;
const PER_MINUTE: usize = 2;

fn minute_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        / 60
}

fn is_bundle(line: &Value) -> bool {
    line["job_id"].as_str().is_some_and(|id| id.starts_with("bundle:"))
}

/// The count an SMS bundle announces: `Tocsin: N more incident…`.
fn bundle_count(line: &Value) -> usize {
    let text = line["message"]["text"].as_str().unwrap_or_default();
    text.strip_prefix("Tocsin: ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a bundle text: {text}"))
}

async fn timeline(app: &TestApp, incident: &str) -> Vec<Value> {
    let body = app
        .api_get(&format!("/incidents/{incident}/timeline"))
        .await
        .expect(200)
        .json();
    body["entries"].as_array().cloned().unwrap_or_default()
}

fn bundled(entries: &[Value]) -> bool {
    entries
        .iter()
        .any(|e| e["kind"] == "notification" && e["result"] == "bundled")
}

#[tokio::test]
async fn a_burst_sends_at_most_the_limit_and_one_bundle_counts_the_rest() {
    let app = TestApp::start_with(Some(CONFIG), keys::OPS).await;
    let first_minute = minute_now();
    for n in 0..INCIDENTS {
        app.enqueue(&json!({
            "routing_key": keys::CHECKOUT_EVENTS,
            "event_action": "trigger",
            "dedup_key": format!("burst-{n}"),
            "payload": {"summary": format!("disk {n} full"), "source": "db-1", "severity": "error"},
        }))
        .await
        .expect(202);
    }
    let incidents = wait_for("every incident", || async {
        let all = app.incidents("").await;
        (all.len() == INCIDENTS).then_some(all)
    })
    .await;
    let ids: Vec<String> = incidents
        .iter()
        .map(|i| i["id"].as_str().expect("an id").to_owned())
        .collect();

    // Every incident is either sent by SMS or held, and its timeline says so.
    let app_ref = &app;
    let ids_ref = &ids;
    let held: Vec<String> = wait_for("every incident sent or bundled", || async move {
        let sent: Vec<String> = app_ref
            .outbox()
            .iter()
            .filter(|l| !is_bundle(l))
            .filter_map(|l| l["incident_id"].as_str().map(str::to_owned))
            .collect();
        let mut held = Vec::new();
        for id in ids_ref {
            if sent.contains(id) {
                continue;
            }
            if !bundled(&timeline(app_ref, id).await) {
                return None;
            }
            held.push(id.clone());
        }
        Some(held)
    })
    .await;
    let minutes = usize::try_from(minute_now() - first_minute + 1).expect("a few minutes");
    let individual = app
        .outbox()
        .iter()
        .filter(|l| l["channel"] == "sms" && !is_bundle(l))
        .count();
    assert!(
        individual <= PER_MINUTE * minutes,
        "{individual} SMS sent one by one in {minutes} minute(s)"
    );
    assert_eq!(individual + held.len(), INCIDENTS);
    assert!(held.len() >= INCIDENTS - PER_MINUTE * minutes, "{} held", held.len());
    // The held ones are explained, the number masked.
    let entries = timeline(&app, &held[0]).await;
    let entry = entries
        .iter()
        .find(|e| e["result"] == "bundled")
        .expect("a bundled entry");
    assert_eq!(entry["channel"], "sms");
    assert_eq!(entry["recipient"], "+•••••••0123");
    assert_eq!(entry["transition"], "triggered");

    // Once a minute has room again (at most a minute from now), bundles
    // go out, one SMS each, that together count every held incident.
    let app_ref = &app;
    let expected = held.len();
    let bundles = wait_for_within(
        std::time::Duration::from_secs(80),
        "bundles counting every held incident",
        || async move {
            let bundles: Vec<Value> = app_ref.outbox().into_iter().filter(is_bundle).collect();
            (bundles.iter().map(bundle_count).sum::<usize>() == expected).then_some(bundles)
        },
    )
    .await;
    for bundle in &bundles {
        assert_eq!(bundle["channel"], "sms");
        assert_eq!(bundle["to"], "+15555550123");
        assert_eq!(bundle["message"]["segments"], 1, "{bundle}");
        let text = bundle["message"]["text"].as_str().unwrap_or_default();
        assert!(text.contains("on Checkout"), "{text}");
    }
    // A bundle is sent once: nothing is left to send again.
    crate::app::settle().await;
    let again: usize = app.outbox().iter().filter(|l| is_bundle(l)).map(bundle_count).sum();
    assert_eq!(again, expected);
    // And the held incidents' timelines show the bundle's delivery.
    let after = timeline(&app, &held[0]).await;
    assert!(
        after
            .iter()
            .any(|e| e["kind"] == "notification" && e["result"] == "delivered"),
        "{after:#?}"
    );
}

/// Triggers `count` incidents of checkout at once; their ids.
async fn burst(app: &TestApp, prefix: &str, count: usize) -> Vec<String> {
    for n in 0..count {
        app.enqueue(&json!({
            "routing_key": keys::CHECKOUT_EVENTS,
            "event_action": "trigger",
            "dedup_key": format!("{prefix}-{n}"),
            "payload": {"summary": format!("disk {n} full"), "source": "db-1", "severity": "error"},
        }))
        .await
        .expect(202);
    }
    let incidents = wait_for("every incident", || async {
        let all = app.incidents("").await;
        (all.len() == count).then_some(all)
    })
    .await;
    incidents
        .iter()
        .map(|i| i["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// Waits until every incident was texted one by one or held for a bundle:
/// (texted, held).
async fn texted_or_held(app: &TestApp, ids: &[String]) -> (usize, usize) {
    wait_for("every incident texted or bundled", || async move {
        let texted: Vec<String> = app
            .outbox()
            .iter()
            .filter(|l| l["channel"] == "sms" && !is_bundle(l))
            .filter_map(|l| l["incident_id"].as_str().map(str::to_owned))
            .collect();
        let mut held = 0;
        for id in ids.iter().filter(|id| !texted.contains(id)) {
            if !bundled(&timeline(app, id).await) {
                return None;
            }
            held += 1;
        }
        Some((texted.len(), held))
    })
    .await
}

/// Without `settings.throttle`, SMS is throttled with the defaults (one a
/// minute), as on AWS; `sms: {enabled: false}` sends every one.
#[tokio::test]
async fn sms_is_throttled_by_default_and_can_be_turned_off() {
    const BURST: usize = 3;
    let (head, _) = CONFIG.split_once("settings:").expect("the throttle settings");
    let app = TestApp::start_with(Some(head), keys::OPS).await;
    let first_minute = minute_now();
    let ids = burst(&app, "default", BURST).await;
    let (texted, held) = texted_or_held(&app, &ids).await;
    let minutes = usize::try_from(minute_now() - first_minute + 1).expect("a few minutes");
    let per_minute = tocsin_core::throttle::DEFAULT_SMS_PER_MINUTE as usize;
    assert!(minutes < BURST, "the burst took {minutes} minutes: it proves nothing");
    assert!(texted <= per_minute * minutes, "{texted} SMS in {minutes} minute(s)");
    assert_eq!(texted + held, BURST);

    let off = format!("{head}settings:\n  throttle: {{sms: {{enabled: false}}}}\n");
    let app = TestApp::start_with(Some(&off), keys::OPS).await;
    let ids = burst(&app, "off", BURST).await;
    assert_eq!(texted_or_held(&app, &ids).await, (BURST, 0));
}

/// The AWS path against moto: the real notify-sms function holds what goes
/// over a number's limit (DynamoDB counters and bundle items), and the real
/// scheduler sends one bundle SMS through SNS once a minute has room.
#[tokio::test]
async fn on_aws_notify_sms_holds_the_burst_and_the_scheduler_sends_the_bundle() {
    use std::collections::HashMap;
    use std::sync::Arc;

    use chrono::Utc;
    use tocsin_aws::sqs::SqsNotificationQueues;
    use tocsin_core::config::{NotificationPolicy, PhoneNumber, Service};
    use tocsin_core::contract::sample_event;
    use tocsin_core::event::{Action, ServiceId, Severity};
    use tocsin_core::incident::TransitionKind;
    use tocsin_core::notify::{plan, Channel};
    use tocsin_core::ports::{NotificationQueue, Timeline};
    use tocsin_core::process::{Applied, ProcessService};
    use tocsin_core::timeline::{DeliveryResult, Happened};

    use crate::aws_stack::{QueueSettings, Stack};
    use crate::runtime_api::{function_bin, Function};

    const BURST: usize = 5;
    let stack = Stack::new(QueueSettings::default()).await;
    let service = ServiceId::parse(&format!("checkout-{}", &stack.run[..8])).unwrap();
    let phone = format!(
        "+1555{:07}",
        u32::from_str_radix(&stack.run[..6], 16).unwrap() % 10_000_000
    );
    let checkout = Service {
        id: service.clone(),
        name: "Checkout".into(),
        policy: NotificationPolicy {
            email: Vec::new(),
            sms: vec![PhoneNumber::parse(&phone).unwrap()],
            slack: None,
            webhooks: Vec::new(),
            on: vec![TransitionKind::Triggered],
            min_severity: Severity::Info,
            min_severity_by_channel: Default::default(),
            escalation: Vec::new(),
        },
    };
    let store = Arc::new(stack.store.clone());
    let process = ProcessService::new(store.clone());
    let queues = SqsNotificationQueues::new(
        stack.sqs.clone(),
        HashMap::from([(Channel::Sms, stack.sms.url.clone())]),
    );
    let mut incidents = Vec::new();
    for n in 0..BURST {
        let trigger = sample_event(service.as_str(), &format!("burst-{n}"), Action::Trigger);
        let Applied::Opened(incident) = process.apply(&trigger, Utc::now()).await.unwrap() else {
            panic!("the trigger opens an incident");
        };
        let transition = tocsin_core::incident::Transition {
            kind: TransitionKind::Triggered,
            incident: incident.clone(),
            event_id: trigger.id.clone(),
        };
        queues.enqueue(&plan(&transition, &checkout, Utc::now())).await.unwrap();
        incidents.push(incident);
    }

    let first_minute = minute_now();
    let endpoint = stack.proxy.endpoint("notify-sms").await;
    let throttle = [
        ("TOCSIN_THROTTLE_SMS", "1/100/100"),
        ("TOCSIN_TABLE", stack.table.as_str()),
    ];
    let mut env = vec![("AWS_ENDPOINT_URL", endpoint.as_str()), ("RUST_LOG", "warn")];
    env.extend(throttle);
    let notifier = Function::start(&function_bin("notify-sms"), &env, stack.scratch.path()).await;
    stack
        .sqs_source(&stack.sms)
        .await
        .drain(vec![notifier], std::time::Duration::from_secs(60))
        .await;
    let minutes = usize::try_from(minute_now() - first_minute + 1).expect("a few minutes");
    let individual = stack.texts_sent_to(&phone);
    assert!(
        individual >= 1 && individual <= minutes,
        "{individual} SMS in {minutes} minute(s)"
    );
    assert!(stack.take_dead_letters(&stack.sms).await.is_empty());

    let results = |entries: &[tocsin_core::timeline::TimelineEntry]| -> Vec<DeliveryResult> {
        entries
            .iter()
            .filter_map(|e| match &e.what {
                Happened::Notification { result, .. } => Some(result.clone()),
                _ => None,
            })
            .collect()
    };
    let mut held = Vec::new();
    for incident in &incidents {
        let entries = store.timeline(&incident.id).await.unwrap();
        let results = results(&entries);
        assert_eq!(results.len(), 1, "{entries:#?}");
        if results[0] == DeliveryResult::Bundled {
            held.push(incident.id.clone());
        }
    }
    assert_eq!(individual + held.len(), BURST);

    // The scheduler, every few seconds until a minute has room: bundles
    // until every held incident's timeline shows its delivery.
    let scheduler_endpoint = stack.proxy.endpoint("scheduler").await;
    let mut env = vec![
        ("AWS_ENDPOINT_URL", scheduler_endpoint.as_str()),
        ("TOCSIN_EVENTS_QUEUE_URL", stack.events.url.as_str()),
        ("TOCSIN_EMAIL_QUEUE_URL", stack.email.url.as_str()),
        ("TOCSIN_SMS_QUEUE_URL", stack.sms.url.as_str()),
        ("TOCSIN_SLACK_QUEUE_URL", stack.slack.url.as_str()),
        ("RUST_LOG", "warn"),
    ];
    env.extend(throttle);
    let mut scheduler = Function::start(&function_bin("scheduler"), &env, stack.scratch.path()).await;
    let tick = json!({"version": "0", "source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
    let mut bundles = 0;
    let started = std::time::Instant::now();
    loop {
        let answer = scheduler.invoke(tick.clone()).await.expect("scheduler");
        bundles += answer["throttle_bundles_sent"].as_u64().expect("a count");
        let mut delivered = 0;
        for id in &held {
            let entries = store.timeline(id).await.unwrap();
            if results(&entries)
                .iter()
                .any(|r| matches!(r, DeliveryResult::Delivered { .. }))
            {
                delivered += 1;
            }
        }
        if delivered == held.len() {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(80),
            "{delivered} of {} held incidents bundled after {bundles} bundle(s)",
            held.len()
        );
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    }
    assert!(bundles >= 1);
    assert_eq!(stack.texts_sent_to(&phone), individual + bundles as usize);
    // Sent once: the next tick has nothing left.
    let answer = scheduler.invoke(tick).await.expect("scheduler");
    assert_eq!(answer["throttle_bundles_sent"], 0, "{answer}");
}
