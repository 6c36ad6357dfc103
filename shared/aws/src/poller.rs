//! The Lambda service's SQS poller, for running the processor without
//! Lambda (`tocsin dev --aws --process` against a local AWS API server):
//! long-poll the events queue, hand each batch to the same handler the
//! processor function runs, delete what it applied and leave the failures
//! to come back after the visibility timeout, and after maxReceiveCount to
//! go to the dead-letter queue, exactly as with an event source mapping.

use std::collections::HashMap;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::error::SdkError;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use chrono::Utc;
use tocsin_core::process::ProcessService;
use tokio::sync::watch;

use crate::processor::process_batch;

/// Why polling stopped.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("could not receive from the events queue {queue_url}")]
    Receive {
        queue_url: String,
        /// The connection failed, not the request: worth another receive.
        transient: bool,
        #[source]
        source: aws_sdk_sqs::Error,
    },
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    pub received: usize,
    pub applied: usize,
    pub failed: usize,
}

/// Polls until `stop` turns true. A receive error other than a dropped
/// connection stops polling (a wrong queue URL or missing permission does
/// not heal); a failed delete only means the message comes back, and the
/// processor's idempotency record makes the second apply a no-op.
pub async fn poll_events(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    process: &ProcessService,
    mut stop: watch::Receiver<bool>,
) -> Result<(), PollError> {
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        tokio::select! {
            outcome = poll_once(sqs, queue_url, process, 20) => {
                match outcome {
                    Ok(outcome) if outcome.received > 0 => {
                        tracing::debug!(?outcome, "events batch");
                    }
                    Ok(_) => {}
                    Err(PollError::Receive { source, transient: true, .. }) => {
                        tracing::warn!(error = %source, "receive failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    Err(error) => return Err(error),
                }
            }
            _ = stop.changed() => return Ok(()),
        }
    }
}

/// One receive (long-polling up to `wait_seconds`) and its batch.
pub async fn poll_once(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    process: &ProcessService,
    wait_seconds: i32,
) -> Result<BatchOutcome, PollError> {
    let output = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .wait_time_seconds(wait_seconds)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .map_err(|e| PollError::Receive {
            queue_url: queue_url.to_owned(),
            transient: matches!(
                e,
                SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
            ),
            source: e.into(),
        })?;
    let mut handles = HashMap::new();
    let mut batch = SqsEvent::default();
    for message in output.messages() {
        let id = message.message_id().unwrap_or_default().to_owned();
        if let Some(handle) = message.receipt_handle() {
            handles.insert(id.clone(), handle.to_owned());
        }
        let mut record = SqsMessage::default();
        record.message_id = Some(id);
        record.receipt_handle = message.receipt_handle().map(str::to_owned);
        record.body = message.body().map(str::to_owned);
        record.attributes = message
            .attributes()
            .map(|a| a.iter().map(|(k, v)| (k.as_str().to_owned(), v.clone())).collect())
            .unwrap_or_default();
        batch.records.push(record);
    }
    let received = batch.records.len();
    if received == 0 {
        return Ok(BatchOutcome::default());
    }
    let response = process_batch(process, batch, Utc::now()).await;
    for failure in &response.batch_item_failures {
        handles.remove(&failure.item_identifier);
    }
    let applied = handles.len();
    for (id, handle) in handles {
        if let Err(error) = sqs
            .delete_message()
            .queue_url(queue_url)
            .receipt_handle(handle)
            .send()
            .await
        {
            tracing::warn!(message_id = %id, error = %aws_sdk_sqs::Error::from(error), "applied, but not deleted: it will come back and be skipped");
        }
    }
    Ok(BatchOutcome {
        received,
        applied,
        failed: received - applied,
    })
}
