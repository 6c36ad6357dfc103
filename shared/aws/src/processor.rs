//! The processor Lambda's handler: a batch from the events queue, each
//! message applied on its own, the failures reported so that SQS retries
//! only those (and, after maxReceiveCount, moves them to the DLQ).

use std::collections::HashSet;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Utc};
use tocsin_core::event::{Event, Origin};
use tocsin_core::metrics::{function, Metrics};
use tocsin_core::process::ProcessService;
use tracing::Instrument;

/// Applies every message of a batch and returns the ids of those that
/// failed. On a FIFO queue a failed message blocks its group: the group's
/// later messages in the same batch are not applied but reported failed
/// too, so SQS hands them back in order.
pub async fn process_batch(process: &ProcessService, batch: SqsEvent, now: DateTime<Utc>) -> SqsBatchResponse {
    process_batch_measured(process, &Metrics::disabled(function::PROCESSOR), batch, now).await
}

/// As [`process_batch`], with one metrics document per message applied or
/// failed (crate::function sends them to CloudWatch on Lambda).
pub async fn process_batch_measured(
    process: &ProcessService,
    metrics: &Metrics,
    batch: SqsEvent,
    now: DateTime<Utc>,
) -> SqsBatchResponse {
    let mut failures = Vec::new();
    let mut blocked_groups: HashSet<String> = HashSet::new();
    for message in batch.records {
        let id = message.message_id.clone().unwrap_or_default();
        let group = message.attributes.get("MessageGroupId").cloned();
        if group.as_ref().is_some_and(|g| blocked_groups.contains(g)) {
            tracing::info!(message_id = %id, "not applied: an earlier message of its group failed");
            failures.push(failure(id));
            continue;
        }
        let span = tracing::info_span!("message", message_id = %id);
        if let Err(error) = apply(process, metrics, &message, now).instrument(span).await {
            metrics.event_failed(Utc::now());
            tracing::warn!(message_id = %id, %error, "message failed; SQS will retry it");
            if let Some(group) = group {
                blocked_groups.insert(group);
            }
            failures.push(failure(id));
        }
    }
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failures;
    response
}

fn failure(id: String) -> BatchItemFailure {
    let mut failure = BatchItemFailure::default();
    failure.item_identifier = id;
    failure
}

#[derive(Debug, thiserror::Error)]
enum MessageError {
    /// Never valid: it fails every receive and so reaches the DLQ, where it
    /// can be read; it is never dropped.
    #[error("the message body is not an event: {0}")]
    NotAnEvent(#[source] serde_json::Error),
    #[error(transparent)]
    Process(#[from] tocsin_core::process::ProcessError),
}

async fn apply(
    process: &ProcessService,
    metrics: &Metrics,
    message: &SqsMessage,
    now: DateTime<Utc>,
) -> Result<(), MessageError> {
    let body = message.body.as_deref().unwrap_or_default();
    let event: Event = serde_json::from_str(body).map_err(MessageError::NotAnEvent)?;
    // The integration and provider beside the apply span's dedup key.
    let span = match &event.origin {
        Origin::Integration { integration, provider } => {
            tracing::info_span!("event", integration = %integration, provider = provider.as_str())
        }
        _ => tracing::Span::none(),
    };
    let applied = process.apply(&event, now).instrument(span).await?;
    metrics.applied(Utc::now(), &applied, event.received_at);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use tocsin_core::contract::sample_event;
    use tocsin_core::event::Action;
    use tocsin_core::incident::IncidentStatus;
    use tocsin_core::memory::MemoryStore;

    use super::*;

    fn event(key: &str, action: Action) -> Event {
        sample_event("checkout", key, action)
    }

    fn message(id: &str, group: &str, body: String) -> SqsMessage {
        let mut message = SqsMessage::default();
        message.message_id = Some(id.to_owned());
        message.body = Some(body);
        message.attributes = HashMap::from([("MessageGroupId".to_owned(), group.to_owned())]);
        message
    }

    fn batch(messages: Vec<SqsMessage>) -> SqsEvent {
        let mut batch = SqsEvent::default();
        batch.records = messages;
        batch
    }

    fn failed_ids(response: &SqsBatchResponse) -> Vec<&str> {
        response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect()
    }

    #[tokio::test]
    async fn a_poisoned_message_is_reported_alone_and_the_rest_are_applied() {
        let store = Arc::new(MemoryStore::new());
        let process = ProcessService::new(store.clone());
        let json = |e: &Event| serde_json::to_string(e).unwrap();
        let response = process_batch(
            &process,
            batch(vec![
                message("m1", "g-disk", json(&event("disk", Action::Trigger))),
                message("m2", "g-poison", "{not an event".to_owned()),
                message("m3", "g-cpu", json(&event("cpu", Action::Trigger))),
                message("m4", "g-disk", json(&event("disk", Action::Resolve))),
            ]),
            Utc::now(),
        )
        .await;
        assert_eq!(failed_ids(&response), ["m2"]);
        let incidents = store.incidents();
        assert_eq!(incidents.len(), 2);
        let disk = incidents.iter().find(|i| i.dedup_key.as_str() == "disk").unwrap();
        assert_eq!(disk.status, IncidentStatus::Resolved);
    }

    #[tokio::test]
    async fn a_failed_message_holds_back_the_rest_of_its_group() {
        let store = Arc::new(MemoryStore::new());
        let process = ProcessService::new(store.clone());
        let json = |e: &Event| serde_json::to_string(e).unwrap();
        let response = process_batch(
            &process,
            batch(vec![
                message("m1", "g-disk", "garbage".to_owned()),
                message("m2", "g-disk", json(&event("disk", Action::Trigger))),
                message("m3", "g-cpu", json(&event("cpu", Action::Trigger))),
            ]),
            Utc::now(),
        )
        .await;
        assert_eq!(failed_ids(&response), ["m1", "m2"]);
        let keys: Vec<_> = store.incidents().iter().map(|i| i.dedup_key.to_string()).collect();
        assert_eq!(keys, ["cpu"], "the disk group waits for its first message");
    }

    #[tokio::test]
    async fn each_message_applied_or_failed_is_measured() {
        use tocsin_core::metrics::{function, CollectingSink, Metrics};

        let store = Arc::new(MemoryStore::new());
        let process = ProcessService::new(store.clone());
        let sink = Arc::new(CollectingSink::default());
        let metrics = Metrics::new(function::PROCESSOR, sink.clone());
        let body = serde_json::to_string(&event("disk", Action::Trigger)).unwrap();
        let twice = || {
            batch(vec![
                message("m1", "g", body.clone()),
                message("m2", "h", "garbage".to_owned()),
            ])
        };
        process_batch_measured(&process, &metrics, twice(), Utc::now()).await;
        process_batch_measured(&process, &metrics, twice(), Utc::now()).await;
        let documents = sink.documents();
        let outcomes: Vec<_> = documents
            .iter()
            .map(|d| {
                d["Outcome"]
                    .as_str()
                    .unwrap_or(if d["EventsFailed"] == 1.0 { "failed" } else { "?" })
            })
            .collect();
        assert_eq!(outcomes, ["opened", "failed", "duplicate", "failed"]);
        assert!(documents[0]["ProcessingLag"].as_f64().is_some());
    }

    #[tokio::test]
    async fn a_redelivered_batch_changes_nothing() {
        let store = Arc::new(MemoryStore::new());
        let process = ProcessService::new(store.clone());
        let body = serde_json::to_string(&event("disk", Action::Trigger)).unwrap();
        for _ in 0..2 {
            let response = process_batch(&process, batch(vec![message("m1", "g", body.clone())]), Utc::now()).await;
            assert!(response.batch_item_failures.is_empty());
        }
        assert_eq!(store.incidents()[0].occurrences, 1);
    }
}
