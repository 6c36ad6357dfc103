//! The SQS adapters against a real AWS API server (moto).

mod moto;

use std::collections::HashMap;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use chrono::Utc;
use tocsin_aws::sqs::{SqsEventQueue, SqsNotificationQueues};
use tocsin_core::event::{
    Action, Alert, DedupKey, Event, EventId, IntegrationId, Origin, Payload, ServiceId, Severity,
};
use tocsin_core::notify::Channel;
use tocsin_core::ports::EventQueue;
use tocsin_core::providers::ProviderKind;

async fn fifo_queue(client: &aws_sdk_sqs::Client, prefix: &str) -> String {
    client
        .create_queue()
        .queue_name(format!("{}.fifo", moto::unique(prefix)))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .expect("moto creates the queue")
        .queue_url()
        .expect("a queue url")
        .to_owned()
}

fn event(key: &str, action: Action, summary_bytes: usize) -> Event {
    Event {
        id: EventId::generate(),
        service: ServiceId::parse("checkout").unwrap(),
        origin: Origin::Integration {
            integration: IntegrationId::parse("am").unwrap(),
            provider: ProviderKind::Prometheus,
        },
        received_at: Utc::now(),
        alert: Alert {
            event_action: action,
            dedup_key: DedupKey::parse(key).unwrap(),
            payload: Some(Payload {
                summary: "s".repeat(summary_bytes.max(1)),
                source: "host".into(),
                severity: Severity::Error,
                timestamp: None,
                component: None,
                group: None,
                class: None,
                custom_details: None,
            }),
            links: Vec::new(),
            images: Vec::new(),
            client: None,
            client_url: None,
        },
    }
}

/// Every message on the queue, in the order SQS hands them out, with its
/// group id. Deletes nothing: FIFO groups stay blocked while in flight, so
/// each receive uses a zero visibility timeout.
async fn drain(client: &aws_sdk_sqs::Client, url: &str) -> Vec<(String, Event)> {
    let mut seen = Vec::new();
    loop {
        let output = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .send()
            .await
            .expect("receive");
        let messages = output.messages();
        if messages.is_empty() {
            return seen;
        }
        for message in messages {
            let group = message
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                .cloned()
                .unwrap_or_default();
            let event: Event = serde_json::from_str(message.body().unwrap()).unwrap();
            seen.push((group, event));
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .expect("delete");
        }
    }
}

#[tokio::test]
async fn events_arrive_whole_grouped_by_service_and_dedup_key_in_order() {
    let client = aws_sdk_sqs::Client::new(&moto::sdk_config().await);
    let url = fifo_queue(&client, "events").await;
    let queue = SqsEventQueue::new(client.clone(), &url);

    // 23 events over 3 keys: three SendMessageBatch calls.
    let sent: Vec<Event> = (0..23)
        .map(|i| event(&format!("key-{}", i % 3), Action::Trigger, 10))
        .collect();
    queue.enqueue(&sent).await.unwrap();

    let received = drain(&client, &url).await;
    assert_eq!(received.len(), sent.len());
    for key in ["key-0", "key-1", "key-2"] {
        let sent_ids: Vec<_> = sent
            .iter()
            .filter(|e| e.dedup_key().as_str() == key)
            .map(|e| &e.id)
            .collect();
        let got: Vec<_> = received.iter().filter(|(_, e)| e.dedup_key().as_str() == key).collect();
        let got_ids: Vec<_> = got.iter().map(|(_, e)| &e.id).collect();
        assert_eq!(got_ids, sent_ids, "order within {key}");
        let groups: std::collections::HashSet<_> = got.iter().map(|(g, _)| g.as_str()).collect();
        assert_eq!(groups.len(), 1, "one group per key");
        assert_eq!(*groups.iter().next().unwrap(), SqsEventQueue::group_of(&got[0].1));
    }
    assert_eq!(received.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>().len(), 23);
    assert!(
        received.iter().all(|(_, e)| sent.contains(e)),
        "bodies round-trip exactly"
    );
}

#[tokio::test]
async fn large_events_are_split_across_batches_within_the_size_limit() {
    let client = aws_sdk_sqs::Client::new(&moto::sdk_config().await);
    let url = fifo_queue(&client, "big").await;
    let queue = SqsEventQueue::new(client.clone(), &url);
    // Five events of ~100 KiB: more than one batch's 256 KiB.
    let sent: Vec<Event> = (0..5)
        .map(|i| event(&format!("big-{i}"), Action::Trigger, 100 * 1024))
        .collect();
    queue.enqueue(&sent).await.unwrap();
    assert_eq!(drain(&client, &url).await.len(), 5);
}

#[tokio::test]
async fn a_resent_event_is_deduplicated_by_its_id() {
    let client = aws_sdk_sqs::Client::new(&moto::sdk_config().await);
    let url = fifo_queue(&client, "dedup").await;
    let queue = SqsEventQueue::new(client.clone(), &url);
    let once = event("disk", Action::Trigger, 10);
    queue.enqueue(std::slice::from_ref(&once)).await.unwrap();
    queue.enqueue(std::slice::from_ref(&once)).await.unwrap();
    assert_eq!(drain(&client, &url).await.len(), 1);
}

#[tokio::test]
async fn a_missing_queue_is_an_error_not_a_silent_loss() {
    let client = aws_sdk_sqs::Client::new(&moto::sdk_config().await);
    let queue = SqsEventQueue::new(client, "http://127.0.0.1:1/000000000000/no-such-queue.fifo".to_owned());
    assert!(queue.enqueue(&[event("disk", Action::Trigger, 10)]).await.is_err());
}

#[tokio::test]
async fn the_event_queue_passes_the_contract_suite() {
    let client = aws_sdk_sqs::Client::new(&moto::sdk_config().await);
    let url = fifo_queue(&client, "contract").await;
    tocsin_core::contract::event_queue(&SqsEventQueue::new(client, url)).await;
}

#[tokio::test]
async fn notification_jobs_go_to_their_channel_queue() {
    let client = aws_sdk_sqs::Client::new(&moto::sdk_config().await);
    let mut urls = HashMap::new();
    for channel in Channel::ALL {
        urls.insert(channel, fifo_queue(&client, channel.as_str()).await);
    }
    let queues = SqsNotificationQueues::new(client.clone(), urls.clone());
    tocsin_core::contract::notification_queue(&queues).await;
    let total: usize = {
        let mut n = 0;
        for url in urls.values() {
            let output = client
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .send()
                .await
                .unwrap();
            n += output
                .attributes()
                .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
        }
        n
    };
    assert!(total > 0, "the contract suite's jobs reached the channel queues");
}
