//! Escalation on the local stack: an incident nobody acknowledges reaches
//! the first escalation level's recipient after the level's delay, even
//! with the stack restarted in between (pending levels are in the store,
//! not in a timer's memory); one acknowledged before the delay never
//! escalates, and its timeline says the escalation was cancelled.
//!
//! The delay is 10 seconds (`after_seconds`; the local scheduler ticks at
//! least every second): long enough for an acknowledgement and a restart to
//! come first on any machine, which the test checks rather than assumes.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};

use crate::app::{count_transition, keys, outbox_for, wait_for, TestApp};

const DELAY_SECONDS: i64 = 10;

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
      escalation:
        - after_seconds: 10
          sms: ["+15555550199"]
"##;

async fn event(app: &TestApp, action: &str, dedup_key: &str) {
    app.enqueue(&json!({
        "routing_key": keys::CHECKOUT_EVENTS,
        "event_action": action,
        "dedup_key": dedup_key,
        "payload": {"summary": format!("{dedup_key} is failing"), "source": "db-1", "severity": "critical"},
    }))
    .await
    .expect(202);
}

fn time(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{value} is not a time: {e}"))
        .with_timezone(&Utc)
}

async fn timeline(app: &TestApp, id: &str) -> Vec<Value> {
    let body = app
        .api_get(&format!("/incidents/{id}/timeline"))
        .await
        .expect(200)
        .json();
    body["entries"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn escalation_fires_after_the_delay_survives_a_restart_and_is_cancelled_by_ack() {
    let mut app = TestApp::start_with(Some(CONFIG), keys::OPS).await;
    event(&app, "trigger", "ignored-page").await;
    event(&app, "trigger", "handled-page").await;
    let ignored = app
        .wait_for_incident("the ignored incident", |i| i["dedup_key"] == "ignored-page")
        .await;
    let handled = app
        .wait_for_incident("the handled incident", |i| i["dedup_key"] == "handled-page")
        .await;
    let (ignored_id, handled_id) = (
        ignored["id"].as_str().expect("an id").to_owned(),
        handled["id"].as_str().expect("an id").to_owned(),
    );
    event(&app, "acknowledge", "handled-page").await;
    let acknowledged = app
        .wait_for_incident("the acknowledgement", |i| {
            i["dedup_key"] == "handled-page" && i["status"] == "acknowledged"
        })
        .await;
    // Both triggered notifications went out: their escalations are recorded.
    app.wait_for_outbox("both triggered emails", |lines| {
        count_transition(lines, &ignored_id, "triggered") == 1 && count_transition(lines, &handled_id, "triggered") == 1
    })
    .await;

    app.restart().await;
    let restarted_at = Utc::now();
    let due = time(&ignored["created_at"]) + TimeDelta::seconds(DELAY_SECONDS);
    assert!(
        time(&acknowledged["acknowledged_at"]) < due && restarted_at < due,
        "the acknowledgement and the restart must come before the delay runs out for this test to mean anything"
    );

    let lines = app
        .wait_for_outbox("the escalation of the unacknowledged incident", |lines| {
            count_transition(lines, &ignored_id, "escalated") == 1
        })
        .await;
    let escalated: Vec<&Value> = outbox_for(&lines, &ignored_id)
        .into_iter()
        .filter(|l| l["transition"] == "escalated")
        .collect();
    assert_eq!(escalated[0]["channel"], "sms");
    assert_eq!(escalated[0]["to"], "+15555550199");
    assert!(
        time(&escalated[0]["delivered_at"]) >= due,
        "not before the delay: {}",
        escalated[0]
    );
    assert!(
        escalated[0]["message"]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("escalated"),
        "{}",
        escalated[0]
    );
    let entries = timeline(&app, &ignored_id).await;
    assert!(
        entries.iter().any(|e| e["kind"] == "escalated" && e["level"] == 1),
        "{entries:#?}"
    );

    // The acknowledged incident's level came due too, and was dropped.
    let app_ref = &app;
    let handled_ref = handled_id.as_str();
    let entries = wait_for("the cancelled escalation in the timeline", || async move {
        let entries = timeline(app_ref, handled_ref).await;
        entries
            .iter()
            .any(|e| e["kind"] == "escalation_cancelled")
            .then_some(entries)
    })
    .await;
    let cancelled = entries
        .iter()
        .find(|e| e["kind"] == "escalation_cancelled")
        .expect("the entry");
    assert_eq!(
        (cancelled["level"].clone(), cancelled["status"].clone()),
        (json!(1), json!("acknowledged"))
    );
    assert_eq!(count_transition(&app.outbox(), &handled_id, "escalated"), 0);
    assert_eq!(
        count_transition(&app.outbox(), &ignored_id, "escalated"),
        1,
        "one level, notified once"
    );
}

/// The scheduler function on AWS (moto): a level the dispatcher recorded in
/// the table is notified through the SMS queue once due, for the incident
/// nobody acknowledged; the acknowledged one's is dropped; a second run
/// notifies no one again.
mod on_aws {
    use std::sync::Arc;

    use aws_sdk_sqs::types::QueueAttributeName;
    use chrono::{TimeDelta, Utc};
    use serde_json::{json, Value};
    use tocsin_aws::dynamodb::{create_table, DynamoStore};
    use tocsin_core::config::{EmailAddress, EscalationLevel, NotificationPolicy, PhoneNumber, Service};
    use tocsin_core::contract::sample_event;
    use tocsin_core::dispatch::DispatchService;
    use tocsin_core::event::{Action, EventId, ServiceId, Severity};
    use tocsin_core::incident::{Transition, TransitionKind};
    use tocsin_core::process::{Applied, ProcessService};

    use crate::aws_stack::{moto_url, sdk_config};
    use crate::runtime_api::{function_bin, Function};

    async fn fifo_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> String {
        sqs.create_queue()
            .queue_name(format!("{name}-{}.fifo", uuid::Uuid::new_v4().simple()))
            .attributes(QueueAttributeName::FifoQueue, "true")
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_owned()
    }

    async fn bodies(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<Value> {
        let output = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        output
            .messages()
            .iter()
            .map(|m| serde_json::from_str(m.body().unwrap_or_default()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn the_scheduler_function_notifies_a_due_level_once_and_drops_an_acknowledged_ones() {
        let moto = moto_url();
        let config = sdk_config(&moto).await;
        let sqs = aws_sdk_sqs::Client::new(&config);
        let dynamodb = aws_sdk_dynamodb::Client::new(&config);
        let table = format!("tocsin-{}", uuid::Uuid::new_v4().simple());
        create_table(&dynamodb, &table).await.unwrap();
        let store = Arc::new(DynamoStore::new(dynamodb, &table));
        // What `tocsin apply` writes for a service with one escalation level.
        let checkout = Service {
            id: ServiceId::parse("checkout").unwrap(),
            name: "Checkout".into(),
            policy: NotificationPolicy {
                email: vec![EmailAddress::parse("oncall@example.com").unwrap()],
                sms: Vec::new(),
                slack: None,
                webhooks: Vec::new(),
                on: vec![TransitionKind::Triggered, TransitionKind::Acknowledged],
                min_severity: Severity::Info,
                min_severity_by_channel: Default::default(),
                escalation: vec![EscalationLevel {
                    after_seconds: 300,
                    email: Vec::new(),
                    sms: vec![PhoneNumber::parse("+15555550199").unwrap()],
                    slack: None,
                }],
            },
        };
        store.put_service(&checkout).await.unwrap();

        // Two incidents opened ten minutes ago and dispatched (the dispatch
        // function's code, its jobs dropped); one acknowledged since.
        let opened_at = Utc::now() - TimeDelta::minutes(10);
        let process = ProcessService::new(store.clone());
        let dispatch = DispatchService::new(store.clone(), Arc::new(tocsin_core::memory::MemoryStore::new()))
            .with_escalations(store.clone());
        let mut ids = Vec::new();
        for key in ["ignored-page", "handled-page"] {
            let Applied::Opened(incident) = process
                .apply(&sample_event("checkout", key, Action::Trigger), opened_at)
                .await
                .unwrap()
            else {
                panic!("expected an opening");
            };
            let transition = Transition {
                kind: TransitionKind::Triggered,
                incident: incident.clone(),
                event_id: EventId::new(key),
            };
            dispatch.dispatch(&transition, opened_at).await.unwrap();
            ids.push(incident.id.to_string());
        }
        process
            .apply(
                &sample_event("checkout", "handled-page", Action::Acknowledge),
                opened_at + TimeDelta::seconds(30),
            )
            .await
            .unwrap();

        let (email, sms, slack) = (
            fifo_queue(&sqs, "email").await,
            fifo_queue(&sqs, "sms").await,
            fifo_queue(&sqs, "slack").await,
        );
        let scratch = tempfile::tempdir().unwrap();
        let env = [
            ("AWS_ENDPOINT_URL", moto.as_str()),
            ("TOCSIN_TABLE", table.as_str()),
            ("TOCSIN_EVENTS_QUEUE_URL", email.as_str()),
            ("TOCSIN_EMAIL_QUEUE_URL", email.as_str()),
            ("TOCSIN_SMS_QUEUE_URL", sms.as_str()),
            ("TOCSIN_SLACK_QUEUE_URL", slack.as_str()),
        ];
        let tick = json!({"version": "0", "source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
        let mut scheduler = Function::start(&function_bin("scheduler"), &env, scratch.path()).await;
        let answer = scheduler.invoke(tick.clone()).await.unwrap();
        assert_eq!(
            (
                answer["escalations_notified"].clone(),
                answer["escalations_cancelled"].clone()
            ),
            (json!(1), json!(1)),
            "{answer}"
        );
        let jobs = bodies(&sqs, &sms).await;
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        assert_eq!(jobs[0]["transition"], "escalated");
        assert_eq!(jobs[0]["to"], "+15555550199");
        assert_eq!(jobs[0]["incident"]["id"], ids[0].as_str());

        let again = scheduler.invoke(tick).await.unwrap();
        assert_eq!(again["escalations_notified"], 0, "{again}");
        assert_eq!(again["escalations_cancelled"], 0, "{again}");
    }
}
