//! The processor's batch handler on real SQS and DynamoDB (moto): a
//! poisoned message fails alone, the others are applied, and the poisoned
//! one reaches the dead-letter queue after its retries.

mod moto;

use std::collections::HashMap;
use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use chrono::Utc;
use tocsin_aws::dynamodb::{create_table, DynamoStore};
use tocsin_aws::processor::process_batch;
use tocsin_aws::sqs::SqsEventQueue;
use tocsin_core::contract::sample_event;
use tocsin_core::event::{Action, Event};
use tocsin_core::incident::IncidentStatus;
use tocsin_core::ports::{EventQueue, IncidentStore};
use tocsin_core::process::ProcessService;

const MAX_RECEIVES: u32 = 2;

fn event(key: &str, action: Action) -> Event {
    sample_event("checkout", key, action)
}

/// An events queue with a DLQ after MAX_RECEIVES, as in template.yaml.
async fn queues(client: &aws_sdk_sqs::Client) -> (String, String) {
    let dlq = client
        .create_queue()
        .queue_name(format!("{}.fifo", moto::unique("events-dlq")))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .unwrap();
    let events = client
        .create_queue()
        .queue_name(format!("{}.fifo", moto::unique("events")))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(
            QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVES}).to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    (events, dlq)
}

/// What the Lambda service does for an SQS event source with
/// ReportBatchItemFailures: receive a batch, invoke, delete what succeeded,
/// make the failures visible again. Returns how many invocations it took.
async fn run_event_source(client: &aws_sdk_sqs::Client, url: &str, process: &ProcessService) -> usize {
    let mut invocations = 0;
    let mut empty = 0;
    while empty < 2 {
        assert!(invocations < 20, "the queue never drained");
        let output = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .send()
            .await
            .unwrap();
        let received = output.messages().to_vec();
        if received.is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        invocations += 1;
        let mut batch = SqsEvent::default();
        batch.records = received
            .iter()
            .map(|m| {
                let mut message = SqsMessage::default();
                message.message_id = m.message_id().map(str::to_owned);
                message.body = m.body().map(str::to_owned);
                message.receipt_handle = m.receipt_handle().map(str::to_owned);
                message.attributes = m
                    .attributes()
                    .map(|a| a.iter().map(|(k, v)| (k.as_str().to_owned(), v.clone())).collect())
                    .unwrap_or_else(HashMap::new);
                message
            })
            .collect();
        let response = process_batch(process, batch, Utc::now()).await;
        let failed: Vec<&str> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        for message in &received {
            let handle = message.receipt_handle().unwrap();
            if failed.contains(&message.message_id().unwrap()) {
                client
                    .change_message_visibility()
                    .queue_url(url)
                    .receipt_handle(handle)
                    .visibility_timeout(0)
                    .send()
                    .await
                    .unwrap();
            } else {
                client
                    .delete_message()
                    .queue_url(url)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .unwrap();
            }
        }
    }
    invocations
}

#[tokio::test]
async fn a_poisoned_message_fails_alone_and_ends_in_the_dead_letter_queue() {
    let config = moto::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let table = moto::unique("tocsin");
    create_table(&dynamodb, &table).await.unwrap();
    let store = Arc::new(DynamoStore::new(dynamodb, &table));
    let process = ProcessService::new(store.clone());
    let (url, dlq) = queues(&sqs).await;

    let disk = event("disk", Action::Trigger);
    let cpu = event("cpu", Action::Trigger);
    let disk_resolved = event("disk", Action::Resolve);
    let queue = SqsEventQueue::new(sqs.clone(), &url);
    queue.enqueue(&[disk.clone(), cpu.clone()]).await.unwrap();
    sqs.send_message()
        .queue_url(&url)
        .message_body("{\"this is\": \"not an event\"}")
        .message_group_id("poison")
        .message_deduplication_id("poison-1")
        .send()
        .await
        .unwrap();
    queue.enqueue(std::slice::from_ref(&disk_resolved)).await.unwrap();

    run_event_source(&sqs, &url, &process).await;

    let disk_incident = store.latest(&disk.service, disk.dedup_key()).await.unwrap().unwrap();
    assert_eq!(disk_incident.status, IncidentStatus::Resolved);
    let cpu_incident = store.latest(&cpu.service, cpu.dedup_key()).await.unwrap().unwrap();
    assert_eq!(cpu_incident.status, IncidentStatus::Open);
    assert_eq!(cpu_incident.occurrences, 1, "applied once though the batch was retried");

    let dead = sqs
        .receive_message()
        .queue_url(&dlq)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    let bodies: Vec<_> = dead.messages().iter().filter_map(|m| m.body()).collect();
    assert_eq!(
        bodies,
        ["{\"this is\": \"not an event\"}"],
        "only the poisoned message is dead-lettered"
    );
}
