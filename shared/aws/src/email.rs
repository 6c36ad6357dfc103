//! The ingest-email-ses function's handler: SES received a message, a
//! receipt rule stored it in S3 (`<prefix><SES message id>`) and invoked the
//! function. Each recipient address names an integration, so one message
//! sent to two integrations is two sets of events.
//!
//! What fails for good (an address without a key, an unknown or disabled
//! integration, a message that is not mail) is logged and skipped: Lambda
//! would only retry it twice more. What may heal (S3 or the events queue
//! unreachable) fails the invocation, Lambda retries it, and after the
//! retries it lands in the function's dead-letter queue, never lost.

use aws_lambda_events::event::ses::{SimpleEmailEvent, SimpleEmailRecord};
use chrono::Utc;
use tocsin_core::ingest::{IngestError, IngestService};

/// Why an invocation failed (and will be retried).
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("the SES record has no message id")]
    NoMessageId,
    #[error("could not read s3://{bucket}/{key}")]
    Read {
        bucket: String,
        key: String,
        #[source]
        source: aws_sdk_s3::Error,
    },
    #[error("could not read the body of s3://{bucket}/{key}")]
    Body {
        bucket: String,
        key: String,
        #[source]
        source: aws_sdk_s3::primitives::ByteStreamError,
    },
    #[error("could not queue the events of message {message_id}")]
    Ingest {
        message_id: String,
        #[source]
        source: IngestError,
    },
}

/// Where the receipt rule's S3 action stores messages.
#[derive(Debug, Clone)]
pub struct MessageStore {
    pub s3: aws_sdk_s3::Client,
    pub bucket: String,
    /// The S3 action's object key prefix (may be empty).
    pub prefix: String,
}

/// What one invocation did, for the logs and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Recipients whose events were queued.
    pub accepted: usize,
    /// Recipients refused for good (no key, unknown integration, …).
    pub refused: usize,
    /// Messages dropped because SES found a virus.
    pub dropped: usize,
}

pub async fn receive(
    ingest: &IngestService,
    store: &MessageStore,
    event: SimpleEmailEvent,
) -> Result<Received, EmailError> {
    let mut received = Received::default();
    for record in event.records {
        receive_one(ingest, store, &record, &mut received).await?;
    }
    Ok(received)
}

async fn receive_one(
    ingest: &IngestService,
    store: &MessageStore,
    record: &SimpleEmailRecord,
    received: &mut Received,
) -> Result<(), EmailError> {
    let message_id = record.ses.mail.message_id.as_deref().ok_or(EmailError::NoMessageId)?;
    let span = tracing::info_span!("email", message_id);
    let _entered = span.enter();
    // Spam verdicts are unreliable for machine mail and alerts are often
    // flagged; a virus is not an alert.
    if record.ses.receipt.virus_verdict.status.as_deref() == Some("FAIL") {
        tracing::warn!("SES found a virus in the message: dropped");
        received.dropped += 1;
        return Ok(());
    }
    let key = format!("{}{message_id}", store.prefix);
    let object = store
        .s3
        .get_object()
        .bucket(&store.bucket)
        .key(&key)
        .send()
        .await
        .map_err(|e| EmailError::Read {
            bucket: store.bucket.clone(),
            key: key.clone(),
            source: e.into(),
        })?;
    let raw = object.body.collect().await.map_err(|source| EmailError::Body {
        bucket: store.bucket.clone(),
        key: key.clone(),
        source,
    })?;
    let raw = raw.into_bytes();
    for (index, recipient) in record.ses.receipt.recipients.iter().enumerate() {
        // One delivery id per recipient: two integrations, two event sets.
        let delivery = format!("{message_id}/{index}");
        match ingest.ingest_email(&raw, recipient, &delivery, Utc::now()).await {
            Ok(_) => received.accepted += 1,
            Err(error @ IngestError::Unavailable(_)) => {
                return Err(EmailError::Ingest {
                    message_id: message_id.to_owned(),
                    source: error,
                })
            }
            Err(error) => {
                // The address carries the key: never log it.
                tracing::warn!(recipient = index, %error, "recipient refused");
                received.refused += 1;
            }
        }
    }
    Ok(())
}
