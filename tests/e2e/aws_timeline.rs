//! The incident timeline on the AWS path: an SMS that SNS throttles is
//! recorded by the real notify-sms function as a failed attempt that will
//! be retried, then as delivered on a later attempt, in the incident's
//! timeline in the table, with the phone number masked.

use std::collections::HashMap;
use std::time::Duration;

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

use crate::aws_proxy::{Fault, Rule, When};
use crate::aws_stack::{QueueSettings, Stack};

#[tokio::test]
async fn a_throttled_sms_is_explained_by_the_timeline_in_the_table() {
    let stack = Stack::new(QueueSettings::default()).await;
    let service = ServiceId::parse(&format!("checkout-{}", &stack.run[..8])).unwrap();
    let phone = format!(
        "+1555{:07}",
        u32::from_str_radix(&stack.run[..6], 16).unwrap() % 10_000_000
    );

    // An incident, opened as the processor opens one.
    let store = std::sync::Arc::new(stack.store.clone());
    let process = ProcessService::new(store.clone());
    let trigger = sample_event(service.as_str(), "db-disk", Action::Trigger);
    let Applied::Opened(incident) = process.apply(&trigger, Utc::now()).await.unwrap() else {
        panic!("the trigger opens an incident");
    };

    // Its SMS job, as the dispatcher plans and queues it.
    let policy = NotificationPolicy {
        email: Vec::new(),
        sms: vec![PhoneNumber::parse(&phone).unwrap()],
        slack: None,
        webhooks: Vec::new(),
        on: vec![TransitionKind::Triggered],
        min_severity: Severity::Info,
        min_severity_by_channel: Default::default(),
        escalation: Vec::new(),
    };
    let checkout = Service {
        id: service.clone(),
        name: "Checkout".into(),
        policy,
    };
    let transition = tocsin_core::incident::Transition {
        kind: TransitionKind::Triggered,
        incident: incident.clone(),
        event_id: trigger.id.clone(),
    };
    let jobs = plan(&transition, &checkout, Utc::now());
    assert_eq!(jobs.len(), 1);
    let queues = SqsNotificationQueues::new(
        stack.sqs.clone(),
        HashMap::from([(Channel::Sms, stack.sms.url.clone())]),
    );
    queues.enqueue(&jobs).await.unwrap();

    // SNS throttles the first Publish calls (the SDK's own retries
    // included): the first delivery fails, a later one goes through.
    stack.proxy.add_rule(
        Rule::new(Fault::Throttle, When::Nth(vec![1, 2, 3]))
            .callers(["notify-sms"])
            .service("sns"),
    );
    let notifier = stack.function("notify-sms", "notify-sms").await;
    stack
        .sqs_source(&stack.sms)
        .await
        .drain(vec![notifier], Duration::from_secs(90))
        .await;
    assert_eq!(stack.texts_sent_to(&phone), 1, "one SMS in the end");
    assert!(stack.take_dead_letters(&stack.sms).await.is_empty());

    let entries = store.timeline(&incident.id).await.unwrap();
    let attempts: Vec<(u32, &DeliveryResult)> = entries
        .iter()
        .filter_map(|e| match &e.what {
            Happened::Notification {
                channel: Channel::Sms,
                attempt,
                result,
                recipient,
                ..
            } => {
                assert!(!recipient.contains(&phone[2..]), "the number is masked: {recipient}");
                assert!(recipient.ends_with(&phone[phone.len() - 4..]), "{recipient}");
                Some((*attempt, result))
            }
            _ => None,
        })
        .collect();
    assert!(attempts.len() >= 2, "{entries:#?}");
    let (first_attempt, first) = attempts[0];
    assert_eq!(first_attempt, 1);
    let DeliveryResult::Failed { reason, will_retry } = first else {
        panic!("the first attempt was throttled: {entries:#?}");
    };
    assert!(*will_retry, "{reason}");
    assert!(
        reason.to_lowercase().contains("throttl"),
        "the reason names the throttling: {reason}"
    );
    let (last_attempt, last) = attempts[attempts.len() - 1];
    assert!(matches!(last, DeliveryResult::Delivered { .. }), "{entries:#?}");
    assert!(last_attempt > 1);
    assert!(
        attempts.windows(2).all(|w| w[0].0 < w[1].0),
        "one entry per attempt: {attempts:?}"
    );
    // The opening event is there too, first.
    assert!(matches!(entries[0].what, Happened::Event { .. }), "{entries:#?}");
}
