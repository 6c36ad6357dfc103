//! SQS FIFO adapters: the events queue (grouped by service + dedup key, so
//! one alert's trigger, acknowledge and resolve stay in order) and the
//! per-channel notification queues (grouped by recipient).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use sha2::{Digest, Sha256};
use tocsin_core::event::Event;
use tocsin_core::ingest::MAX_EVENT_BYTES;
use tocsin_core::notify::{Channel, NotificationJob};
use tocsin_core::ports::{BackendError, EventQueue, NotificationQueue};

/// SendMessageBatch takes at most 10 entries per call.
const MAX_BATCH_ENTRIES: usize = 10;
/// ... and at most this many bytes of bodies per call (as one message).
const MAX_BATCH_BYTES: usize = MAX_EVENT_BYTES;
/// Entries SQS refused for a passing reason (throttling, an internal
/// error) are sent again this many times before the request fails.
const RESEND_ATTEMPTS: usize = 3;

/// One message to send: body, group and deduplication id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outgoing {
    body: String,
    group: String,
    dedup: String,
}

/// Message group and deduplication ids are at most 128 characters of a
/// restricted alphabet; dedup keys and recipients are free text. Their hex
/// SHA-256 keeps the grouping exact within the limits.
fn fifo_id(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Splits messages into SendMessageBatch calls: at most 10 entries and at
/// most 256 KiB of bodies each, in order.
fn batches(messages: &[Outgoing]) -> Vec<&[Outgoing]> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, message) in messages.iter().enumerate() {
        let full = i - start == MAX_BATCH_ENTRIES || (i > start && bytes + message.body.len() > MAX_BATCH_BYTES);
        if full {
            batches.push(&messages[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += message.body.len();
    }
    if start < messages.len() {
        batches.push(&messages[start..]);
    }
    batches
}

async fn send(client: &aws_sdk_sqs::Client, queue_url: &str, messages: &[Outgoing]) -> Result<(), BackendError> {
    for batch in batches(messages) {
        let mut pending: Vec<(usize, &Outgoing)> = batch.iter().enumerate().collect();
        for attempt in 0..=RESEND_ATTEMPTS {
            let entries = pending
                .iter()
                .map(|(i, m)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(&m.body)
                        .message_group_id(&m.group)
                        .message_deduplication_id(&m.dedup)
                        .build()
                        .map_err(|e| BackendError::new("sqs SendMessageBatch entry", e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let output = client
                .send_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| {
                    BackendError::new(
                        "sqs SendMessageBatch",
                        aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
                    )
                })?;
            let failed = output.failed();
            if failed.is_empty() {
                break;
            }
            // A refusal that is the sender's fault will not pass on a retry.
            if let Some(refused) = failed.iter().find(|f| f.sender_fault()) {
                return Err(BackendError::new(
                    "sqs SendMessageBatch",
                    format!(
                        "entry refused: {} {}",
                        refused.code(),
                        refused.message().unwrap_or_default()
                    ),
                ));
            }
            if attempt == RESEND_ATTEMPTS {
                return Err(BackendError::new(
                    "sqs SendMessageBatch",
                    format!("{} entries still failing after {RESEND_ATTEMPTS} resends", failed.len()),
                ));
            }
            let failed_ids: Vec<&str> = failed.iter().map(|f| f.id()).collect();
            pending.retain(|(i, _)| failed_ids.contains(&i.to_string().as_str()));
            tracing::warn!(entries = pending.len(), attempt, "resending entries SQS refused");
        }
    }
    Ok(())
}

/// The events queue. Sending is not atomic across batches: when a later
/// batch fails the caller is answered 503 and retries, and the processor's
/// idempotency records keep the resend of an already-sent event from being
/// applied twice within SQS's 5-minute deduplication window (same
/// MessageDeduplicationId) or afterwards (same event id).
#[derive(Clone)]
pub struct SqsEventQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsEventQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }

    /// The message group of an event: its service and dedup key.
    pub fn group_of(event: &Event) -> String {
        fifo_id(&[event.service.as_str(), event.dedup_key().as_str()])
    }
}

#[async_trait]
impl EventQueue for SqsEventQueue {
    async fn enqueue(&self, events: &[Event]) -> Result<(), BackendError> {
        let messages = events
            .iter()
            .map(|event| {
                Ok(Outgoing {
                    body: serde_json::to_string(event).map_err(|e| BackendError::new("encode event", e))?,
                    group: Self::group_of(event),
                    dedup: fifo_id(&[event.id.as_str()]),
                })
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        send(&self.client, &self.queue_url, &messages).await
    }
}

/// One FIFO queue per channel, grouped by recipient so that one person's
/// messages arrive in the order of the transitions.
#[derive(Clone)]
pub struct SqsNotificationQueues {
    client: aws_sdk_sqs::Client,
    queue_urls: HashMap<Channel, String>,
}

impl SqsNotificationQueues {
    pub fn new(client: aws_sdk_sqs::Client, queue_urls: HashMap<Channel, String>) -> Self {
        Self { client, queue_urls }
    }
}

#[async_trait]
impl NotificationQueue for SqsNotificationQueues {
    async fn enqueue(&self, jobs: &[NotificationJob]) -> Result<(), BackendError> {
        let mut by_channel: HashMap<Channel, Vec<Outgoing>> = HashMap::new();
        for job in jobs {
            by_channel.entry(job.channel).or_default().push(Outgoing {
                body: serde_json::to_string(job).map_err(|e| BackendError::new("encode notification job", e))?,
                group: fifo_id(&[job.channel.as_str(), &job.to]),
                dedup: fifo_id(&[&job.id]),
            });
        }
        for channel in Channel::ALL {
            let Some(messages) = by_channel.get(&channel) else {
                continue;
            };
            let url = self.queue_urls.get(&channel).ok_or_else(|| {
                BackendError::new(
                    "sqs notification queue",
                    format!("no queue is configured for {channel}"),
                )
            })?;
            send(&self.client, url, messages).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(bytes: usize) -> Outgoing {
        Outgoing {
            body: "x".repeat(bytes),
            group: "g".into(),
            dedup: "d".into(),
        }
    }

    #[test]
    fn batches_hold_at_most_ten_entries() {
        let messages: Vec<_> = (0..23).map(|_| message(10)).collect();
        let sizes: Vec<usize> = batches(&messages).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [10, 10, 3]);
    }

    #[test]
    fn batches_hold_at_most_256_kib_of_bodies() {
        let messages: Vec<_> = (0..5).map(|_| message(100 * 1024)).collect();
        let sizes: Vec<usize> = batches(&messages).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [2, 2, 1]);
        let one_big = [message(MAX_EVENT_BYTES), message(1)];
        let sizes: Vec<usize> = batches(&one_big).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [1, 1]);
    }

    #[test]
    fn no_messages_make_no_batches() {
        assert!(batches(&[]).is_empty());
    }

    #[test]
    fn fifo_ids_fit_sqs_limits_and_keep_parts_apart() {
        let long = "é#|".repeat(200);
        let id = fifo_id(&["checkout", &long]);
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(fifo_id(&["ab", "c"]), fifo_id(&["a", "bc"]));
    }
}
