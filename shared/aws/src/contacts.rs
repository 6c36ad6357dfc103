//! The DynamoDB adapter of [`ContactHealth`]: one item per contact in the
//! single table, `pk = CONTACT#email#<address>`, `sk = HEALTH`
//! (infra/dynamodb.md). One UpdateItem per feedback: ADD on the counter,
//! SET of the latest bounce or complaint, under a condition that skips an
//! SNS redelivery of the contact's latest feedback.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, SecondsFormat, Utc};

use tocsin_core::config::EmailAddress;
use tocsin_core::contacts::{
    ContactFeedback, ContactHealth, ContactState, FeedbackKind, LastFeedback, SuppressionChange,
};
use tocsin_core::ports::BackendError;

use crate::dynamodb::{attr, Item};

/// The value of `type` on a contact's item.
pub const KIND: &str = "contact_health";
pub const SK: &str = "HEALTH";

/// The attributes of a contact's item.
pub mod contact_attr {
    pub const PERMANENT_BOUNCES: &str = "permanent_bounces";
    pub const TRANSIENT_BOUNCES: &str = "transient_bounces";
    pub const COMPLAINTS: &str = "complaints";
    pub const LAST_BOUNCE_AT: &str = "last_bounce_at";
    pub const LAST_BOUNCE_KIND: &str = "last_bounce_kind";
    pub const LAST_BOUNCE_MESSAGE: &str = "last_bounce_message_id";
    pub const LAST_COMPLAINT_AT: &str = "last_complaint_at";
    pub const LAST_COMPLAINT_MESSAGE: &str = "last_complaint_message_id";
    pub const SUPPRESSED: &str = "suppressed";
    pub const LAST_FEEDBACK_ID: &str = "last_feedback_id";
    /// The latest change by hand (`tocsin contacts suppress|unsuppress`).
    pub const CHANGED_SUPPRESSED: &str = "changed_suppressed";
    pub const CHANGED_AT: &str = "changed_at";
    pub const CHANGED_BY: &str = "changed_by";
}

/// The partition of a contact reached by email.
pub fn contact_pk(address: &EmailAddress) -> String {
    format!("CONTACT#email#{}", address.as_str().to_lowercase())
}

pub fn contact_key(address: &EmailAddress) -> Item {
    crate::dynamodb::key(contact_pk(address), SK)
}

/// A contact item that is not what this code writes.
#[derive(Debug, thiserror::Error)]
#[error("attribute '{0}' of a contact item is missing or malformed")]
struct ContactItemError(&'static str);

#[derive(Clone, Debug)]
pub struct DynamoContactHealth {
    client: Client,
    table: String,
}

impl DynamoContactHealth {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

fn count(item: &Item, name: &'static str) -> Result<u64, ContactItemError> {
    match item.get(name) {
        None => Ok(0),
        Some(AttributeValue::N(value)) => value.parse().map_err(|_| ContactItemError(name)),
        Some(_) => Err(ContactItemError(name)),
    }
}

fn text<'a>(item: &'a Item, name: &'static str) -> Result<Option<&'a str>, ContactItemError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::S(value)) => Ok(Some(value)),
        Some(_) => Err(ContactItemError(name)),
    }
}

fn time(item: &Item, name: &'static str) -> Result<Option<DateTime<Utc>>, ContactItemError> {
    text(item, name)?
        .map(|value| {
            DateTime::parse_from_rfc3339(value)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| ContactItemError(name))
        })
        .transpose()
}

fn state(address: &EmailAddress, item: &Item) -> Result<ContactState, ContactItemError> {
    use contact_attr::*;
    let last_bounce = match time(item, LAST_BOUNCE_AT)? {
        None => None,
        Some(at) => Some(LastFeedback {
            at,
            kind: match text(item, LAST_BOUNCE_KIND)? {
                Some("permanent_bounce") => FeedbackKind::PermanentBounce,
                Some("transient_bounce") => FeedbackKind::TransientBounce,
                _ => return Err(ContactItemError(LAST_BOUNCE_KIND)),
            },
            message_id: text(item, LAST_BOUNCE_MESSAGE)?.unwrap_or_default().to_owned(),
        }),
    };
    let last_complaint = time(item, LAST_COMPLAINT_AT)?.map(|at| LastFeedback {
        at,
        kind: FeedbackKind::Complaint,
        message_id: text(item, LAST_COMPLAINT_MESSAGE)
            .ok()
            .flatten()
            .unwrap_or_default()
            .to_owned(),
    });
    let last_change = match (item.get(CHANGED_SUPPRESSED), time(item, CHANGED_AT)?) {
        (Some(AttributeValue::Bool(suppressed)), Some(at)) => Some(SuppressionChange {
            suppressed: *suppressed,
            at,
            by: text(item, CHANGED_BY)?.unwrap_or_default().to_owned(),
        }),
        (None, None) => None,
        _ => return Err(ContactItemError(CHANGED_SUPPRESSED)),
    };
    Ok(ContactState {
        address: address.clone(),
        permanent_bounces: count(item, PERMANENT_BOUNCES)?,
        transient_bounces: count(item, TRANSIENT_BOUNCES)?,
        complaints: count(item, COMPLAINTS)?,
        last_bounce,
        last_complaint,
        suppressed: matches!(item.get(SUPPRESSED), Some(AttributeValue::Bool(true))),
        last_change,
    })
}

/// The address as the item's key holds it: SES matches without case.
fn lowered(address: &EmailAddress) -> EmailAddress {
    EmailAddress::parse(&address.as_str().to_lowercase()).unwrap_or_else(|_| address.clone())
}

/// The address of a contact's item, from its partition key.
fn address_of(item: &Item) -> Option<EmailAddress> {
    let pk = item.get(attr::PK)?.as_s().ok()?;
    EmailAddress::parse(pk.strip_prefix("CONTACT#email#")?).ok()
}

#[async_trait]
impl ContactHealth for DynamoContactHealth {
    #[tracing::instrument(skip_all, fields(kind = feedback.kind.as_str(), feedback_id = %feedback.feedback_id))]
    async fn record(&self, feedback: &ContactFeedback) -> Result<bool, BackendError> {
        use contact_attr::*;
        let (counter, at, message) = match feedback.kind {
            FeedbackKind::PermanentBounce => (PERMANENT_BOUNCES, LAST_BOUNCE_AT, LAST_BOUNCE_MESSAGE),
            FeedbackKind::TransientBounce => (TRANSIENT_BOUNCES, LAST_BOUNCE_AT, LAST_BOUNCE_MESSAGE),
            FeedbackKind::Complaint => (COMPLAINTS, LAST_COMPLAINT_AT, LAST_COMPLAINT_MESSAGE),
        };
        let mut set = vec!["#type = :type", "#at = :at", "#message = :message"];
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(contact_key(&feedback.address)))
            .expression_attribute_names("#type", attr::TYPE)
            .expression_attribute_names("#counter", counter)
            .expression_attribute_names("#at", at)
            .expression_attribute_names("#message", message)
            .expression_attribute_names("#suppressed", SUPPRESSED)
            .expression_attribute_values(":type", AttributeValue::S(KIND.to_owned()))
            .expression_attribute_values(":one", AttributeValue::N("1".to_owned()))
            .expression_attribute_values(
                ":at",
                AttributeValue::S(feedback.at.to_rfc3339_opts(SecondsFormat::Millis, true)),
            )
            .expression_attribute_values(":message", AttributeValue::S(feedback.message_id.clone()))
            .expression_attribute_values(":suppressed", AttributeValue::Bool(feedback.kind.suppresses()));
        // Suppression only ever turns on from feedback.
        set.push(if feedback.kind.suppresses() {
            "#suppressed = :suppressed"
        } else {
            "#suppressed = if_not_exists(#suppressed, :suppressed)"
        });
        if feedback.kind != FeedbackKind::Complaint {
            set.push("#bounce_kind = :bounce_kind");
            request = request
                .expression_attribute_names("#bounce_kind", LAST_BOUNCE_KIND)
                .expression_attribute_values(":bounce_kind", AttributeValue::S(feedback.kind.as_str().to_owned()));
        }
        if !feedback.feedback_id.is_empty() {
            set.push("#feedback = :feedback");
            request = request
                .expression_attribute_names("#feedback", LAST_FEEDBACK_ID)
                .expression_attribute_values(":feedback", AttributeValue::S(feedback.feedback_id.clone()))
                .condition_expression("attribute_not_exists(#feedback) OR #feedback <> :feedback");
        }
        let result = request
            .update_expression(format!("SET {} ADD #counter :one", set.join(", ")))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(crate::dynamodb::is_condition_failure) =>
            {
                Ok(false)
            }
            Err(error) => Err(BackendError::new("dynamodb UpdateItem contact", error)),
        }
    }

    async fn contact(&self, address: &EmailAddress) -> Result<Option<ContactState>, BackendError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(contact_key(address)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| BackendError::new("dynamodb GetItem contact", e))?;
        output
            .item
            .map(|item| state(&lowered(address), &item))
            .transpose()
            .map_err(|e| BackendError::new("dynamodb GetItem contact", e))
    }

    async fn contacts(&self) -> Result<Vec<ContactState>, BackendError> {
        let mut contacts = Vec::new();
        for item in crate::dynamodb::scan_kind(&self.client, &self.table, KIND).await? {
            let address = address_of(&item)
                .ok_or_else(|| BackendError::new("dynamodb Scan contacts", ContactItemError(attr::PK)))?;
            contacts.push(state(&address, &item).map_err(|e| BackendError::new("dynamodb Scan contacts", e))?);
        }
        contacts.sort_by(|a, b| a.address.as_str().cmp(b.address.as_str()));
        Ok(contacts)
    }

    #[tracing::instrument(skip_all, fields(suppressed = change.suppressed))]
    async fn change_suppression(
        &self,
        address: &EmailAddress,
        change: &SuppressionChange,
    ) -> Result<ContactState, BackendError> {
        use contact_attr::*;
        let output = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(contact_key(address)))
            .update_expression(
                "SET #type = :type, #suppressed = :suppressed, #changed = :suppressed, #at = :at, #by = :by",
            )
            .expression_attribute_names("#type", attr::TYPE)
            .expression_attribute_names("#suppressed", SUPPRESSED)
            .expression_attribute_names("#changed", CHANGED_SUPPRESSED)
            .expression_attribute_names("#at", CHANGED_AT)
            .expression_attribute_names("#by", CHANGED_BY)
            .expression_attribute_values(":type", AttributeValue::S(KIND.to_owned()))
            .expression_attribute_values(":suppressed", AttributeValue::Bool(change.suppressed))
            .expression_attribute_values(
                ":at",
                AttributeValue::S(change.at.to_rfc3339_opts(SecondsFormat::Millis, true)),
            )
            .expression_attribute_values(":by", AttributeValue::S(change.by.clone()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| BackendError::new("dynamodb UpdateItem contact suppression", e))?;
        let item = output.attributes.unwrap_or_default();
        state(&lowered(address), &item).map_err(|e| BackendError::new("dynamodb UpdateItem contact suppression", e))
    }
}

/// Why one SNS record could not be recorded: the invocation fails, SNS and
/// Lambda retry, and what still fails lands in the dead-letter queue.
#[derive(Debug, thiserror::Error)]
pub enum SesFeedbackFailure {
    #[error(transparent)]
    Parse(#[from] tocsin_core::contacts::SesFeedbackError),
    #[error(transparent)]
    Store(#[from] BackendError),
}

/// Records every recipient's feedback in one SES notification (an SNS
/// `Message`); answers how many contacts changed.
pub async fn record_ses_notification(store: &dyn ContactHealth, message: &str) -> Result<usize, SesFeedbackFailure> {
    let mut recorded = 0;
    for feedback in tocsin_core::contacts::parse_ses_notification(message)? {
        if store.record(&feedback).await? {
            recorded += 1;
        }
    }
    Ok(recorded)
}

/// The ses-feedback function: SNS (the SES configuration set's event
/// destination) invokes it; each bounce or complaint is recorded against
/// the contact in TOCSIN_TABLE. No signature check: AWS invokes it.
pub async fn run_ses_feedback() -> Result<(), lambda_runtime::Error> {
    use aws_lambda_events::event::sns::SnsEvent;
    use lambda_runtime::{Diagnostic, LambdaEvent};

    crate::function::init_tracing();
    let table = std::env::var("TOCSIN_TABLE")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or(crate::function::MissingVariable("TOCSIN_TABLE"))?;
    let sdk = crate::trust::function_sdk_config().await;
    let store = DynamoContactHealth::new(Client::new(&sdk), table);
    lambda_runtime::run(lambda_runtime::service_fn(|event: LambdaEvent<SnsEvent>| {
        let store = store.clone();
        async move {
            let mut recorded = 0;
            for record in event.payload.records {
                let message_id = record.sns.message_id;
                let changed = record_ses_notification(&store, &record.sns.message)
                    .await
                    .map_err(|error| {
                        tracing::error!(%message_id, %error, "the invocation fails, for SNS and Lambda to retry");
                        Diagnostic {
                            error_type: "SesFeedbackError".to_owned(),
                            error_message: format!("message {message_id}: {error}"),
                        }
                    })?;
                recorded += changed;
            }
            Ok::<_, Diagnostic>(serde_json::json!({ "recorded": recorded }))
        }
    }))
    .await
}
