//! What SES tells us about the people we email: bounces and complaints,
//! published by SES to an SNS topic (the configuration set's event
//! destination), parsed into one [`ContactFeedback`] per recipient and
//! recorded against the contact by a [`ContactHealth`] store.
//!
//! PII is kept minimal: the address is the key; no message body, subject,
//! headers or diagnostic text is kept.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::config::EmailAddress;
use crate::ports::BackendError;

/// What SES reported about one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeedbackKind {
    /// A hard bounce: the address does not exist or never will accept mail.
    PermanentBounce,
    /// A soft bounce (mailbox full, message too large, `Undetermined`).
    TransientBounce,
    /// The recipient marked our message as spam.
    Complaint,
}

impl FeedbackKind {
    /// Whether email to the contact should stop: SES's own account-level
    /// suppression list treats permanent bounces and complaints the same way.
    pub fn suppresses(self) -> bool {
        matches!(self, FeedbackKind::PermanentBounce | FeedbackKind::Complaint)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackKind::PermanentBounce => "permanent_bounce",
            FeedbackKind::TransientBounce => "transient_bounce",
            FeedbackKind::Complaint => "complaint",
        }
    }
}

/// One recipient's bounce or complaint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactFeedback {
    /// Lowercased: SES's suppression list matches addresses without case.
    pub address: EmailAddress,
    pub kind: FeedbackKind,
    /// When the bounce or complaint happened (SES's `bounce.timestamp` or
    /// `complaint.timestamp`).
    pub at: DateTime<Utc>,
    /// SES's `feedbackId`: the same on a redelivery, so a store can skip it.
    pub feedback_id: String,
    /// The SES message id of the email that bounced (`mail.messageId`).
    pub message_id: String,
}

/// Why an SNS message is not an SES notification we can read.
#[derive(Debug, thiserror::Error)]
pub enum SesFeedbackError {
    #[error("the SNS message is not an SES notification")]
    Json(#[source] serde_json::Error),
    #[error("the SES {0} notification has no '{1}'")]
    Missing(&'static str, &'static str),
    #[error("the SES notification names a recipient that is not an email address")]
    Address(#[source] crate::event::FieldError),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Notification {
    // SES's identity notifications say `notificationType`; configuration
    // set event destinations say `eventType`.
    #[serde(default, alias = "eventType")]
    notification_type: String,
    #[serde(default)]
    mail: Mail,
    bounce: Option<Bounce>,
    complaint: Option<Complaint>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Mail {
    #[serde(default)]
    message_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bounce {
    #[serde(default)]
    bounce_type: String,
    #[serde(default)]
    bounced_recipients: Vec<Recipient>,
    timestamp: Option<DateTime<Utc>>,
    #[serde(default)]
    feedback_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Complaint {
    #[serde(default)]
    complained_recipients: Vec<Recipient>,
    timestamp: Option<DateTime<Utc>>,
    #[serde(default)]
    feedback_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Recipient {
    email_address: String,
}

/// The per-recipient feedback in an SES notification (the SNS `Message`).
/// Deliveries and any other notification type carry none: an empty list.
pub fn parse_ses_notification(message: &str) -> Result<Vec<ContactFeedback>, SesFeedbackError> {
    let notification: Notification = serde_json::from_str(message).map_err(SesFeedbackError::Json)?;
    let (kind_of, recipients, at, feedback_id) = match notification.notification_type.as_str() {
        "Bounce" => {
            let bounce = notification
                .bounce
                .ok_or(SesFeedbackError::Missing("Bounce", "bounce"))?;
            let kind = if bounce.bounce_type == "Permanent" {
                FeedbackKind::PermanentBounce
            } else {
                FeedbackKind::TransientBounce
            };
            let at = bounce
                .timestamp
                .ok_or(SesFeedbackError::Missing("Bounce", "bounce.timestamp"))?;
            (kind, bounce.bounced_recipients, at, bounce.feedback_id)
        }
        "Complaint" => {
            let complaint = notification
                .complaint
                .ok_or(SesFeedbackError::Missing("Complaint", "complaint"))?;
            let at = complaint
                .timestamp
                .ok_or(SesFeedbackError::Missing("Complaint", "complaint.timestamp"))?;
            (
                FeedbackKind::Complaint,
                complaint.complained_recipients,
                at,
                complaint.feedback_id,
            )
        }
        _ => return Ok(Vec::new()),
    };
    recipients
        .into_iter()
        .map(|recipient| {
            Ok(ContactFeedback {
                address: EmailAddress::parse(&recipient.email_address.trim().to_lowercase())
                    .map_err(SesFeedbackError::Address)?,
                kind: kind_of,
                at,
                feedback_id: feedback_id.clone(),
                message_id: notification.mail.message_id.clone(),
            })
        })
        .collect()
}

/// A contact's email health, as recorded from SES feedback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactState {
    pub address: EmailAddress,
    pub permanent_bounces: u64,
    pub transient_bounces: u64,
    pub complaints: u64,
    /// The latest bounce of either kind: when, which kind, which SES message.
    pub last_bounce: Option<LastFeedback>,
    pub last_complaint: Option<LastFeedback>,
    /// Set by a permanent bounce or a complaint; never cleared by feedback,
    /// only by hand (`tocsin contacts unsuppress`).
    pub suppressed: bool,
    /// The latest suppression set or cleared by hand; feedback leaves it.
    pub last_change: Option<SuppressionChange>,
}

/// A suppression set or cleared by an operator (`tocsin contacts suppress`
/// and `unsuppress`): the counts and latest feedback stay as they were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressionChange {
    pub suppressed: bool,
    pub at: DateTime<Utc>,
    /// Who made it: the operator's name as the CLI found it.
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastFeedback {
    pub at: DateTime<Utc>,
    pub kind: FeedbackKind,
    pub message_id: String,
}

impl ContactState {
    pub fn new(address: EmailAddress) -> Self {
        Self {
            address,
            permanent_bounces: 0,
            transient_bounces: 0,
            complaints: 0,
            last_bounce: None,
            last_complaint: None,
            suppressed: false,
            last_change: None,
        }
    }

    /// The state after an operator's change: the flag, and the change kept.
    pub fn change(&mut self, change: &SuppressionChange) {
        self.suppressed = change.suppressed;
        self.last_change = Some(change.clone());
    }

    /// Why email to the contact is not sent; `None` unless suppressed.
    pub fn suppression_reason(&self) -> Option<String> {
        if !self.suppressed {
            return None;
        }
        let at = |last: &LastFeedback| last.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        // Suppressed by hand after the latest feedback: the operator's reason.
        if let Some(change) = self.last_change.as_ref().filter(|c| c.suppressed) {
            let latest_feedback = [&self.last_bounce, &self.last_complaint]
                .into_iter()
                .flatten()
                .map(|last| last.at)
                .max();
            if latest_feedback.is_none_or(|feedback| feedback <= change.at) {
                return Some(format!(
                    "the address was suppressed by {} ({})",
                    change.by,
                    change.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ));
            }
        }
        Some(match (&self.last_complaint, &self.last_bounce) {
            (Some(complaint), _) => format!(
                "the recipient marked our email as spam (SES complaint, {})",
                at(complaint)
            ),
            (None, Some(bounce)) => format!("the address bounced permanently (SES, latest bounce {})", at(bounce)),
            (None, None) => "the address bounced permanently (SES)".to_owned(),
        })
    }

    /// The state after one more feedback (what every store computes).
    pub fn apply(&mut self, feedback: &ContactFeedback) {
        let last = LastFeedback {
            at: feedback.at,
            kind: feedback.kind,
            message_id: feedback.message_id.clone(),
        };
        match feedback.kind {
            FeedbackKind::PermanentBounce => {
                self.permanent_bounces += 1;
                self.last_bounce = Some(last);
            }
            FeedbackKind::TransientBounce => {
                self.transient_bounces += 1;
                self.last_bounce = Some(last);
            }
            FeedbackKind::Complaint => {
                self.complaints += 1;
                self.last_complaint = Some(last);
            }
        }
        self.suppressed |= feedback.kind.suppresses();
    }
}

/// Where bounces and complaints are recorded against contacts.
#[async_trait]
pub trait ContactHealth: Send + Sync {
    /// Records one feedback. `false`: the contact's latest recorded feedback
    /// has the same `feedback_id` (an SNS redelivery), nothing changed.
    async fn record(&self, feedback: &ContactFeedback) -> Result<bool, BackendError>;

    /// The contact's state; `None` if SES never reported on it.
    async fn contact(&self, address: &EmailAddress) -> Result<Option<ContactState>, BackendError>;

    /// Every contact SES reported on or an operator changed, by address.
    async fn contacts(&self) -> Result<Vec<ContactState>, BackendError>;

    /// Sets or clears the contact's suppression by hand, keeping its counts
    /// and latest feedback; creates the contact if unknown. Answers the
    /// state after the change.
    async fn change_suppression(
        &self,
        address: &EmailAddress,
        change: &SuppressionChange,
    ) -> Result<ContactState, BackendError>;
}

/// In memory: tests and the embedded stack.
#[derive(Debug, Default)]
pub struct MemoryContactHealth {
    contacts: Mutex<HashMap<String, (ContactState, String)>>,
}

#[async_trait]
impl ContactHealth for MemoryContactHealth {
    async fn record(&self, feedback: &ContactFeedback) -> Result<bool, BackendError> {
        let mut contacts = self.contacts.lock().unwrap_or_else(|e| e.into_inner());
        let (state, last_id) = contacts
            .entry(feedback.address.as_str().to_owned())
            .or_insert_with(|| (ContactState::new(feedback.address.clone()), String::new()));
        if !feedback.feedback_id.is_empty() && *last_id == feedback.feedback_id {
            return Ok(false);
        }
        state.apply(feedback);
        last_id.clone_from(&feedback.feedback_id);
        Ok(true)
    }

    async fn contact(&self, address: &EmailAddress) -> Result<Option<ContactState>, BackendError> {
        let contacts = self.contacts.lock().unwrap_or_else(|e| e.into_inner());
        Ok(contacts
            .get(&address.as_str().to_lowercase())
            .map(|(state, _)| state.clone()))
    }

    async fn contacts(&self) -> Result<Vec<ContactState>, BackendError> {
        let contacts = self.contacts.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<ContactState> = contacts.values().map(|(state, _)| state.clone()).collect();
        all.sort_by(|a, b| a.address.as_str().cmp(b.address.as_str()));
        Ok(all)
    }

    async fn change_suppression(
        &self,
        address: &EmailAddress,
        change: &SuppressionChange,
    ) -> Result<ContactState, BackendError> {
        let mut contacts = self.contacts.lock().unwrap_or_else(|e| e.into_inner());
        let key = address.as_str().to_lowercase();
        let lowered = EmailAddress::parse(&key).unwrap_or_else(|_| address.clone());
        let (state, _) = contacts
            .entry(key)
            .or_insert_with(|| (ContactState::new(lowered), String::new()));
        state.change(change);
        Ok(state.clone())
    }
}

/// The contract every [`ContactHealth`] passes; `store` must be empty.
#[cfg(feature = "contract")]
pub async fn contract(store: &dyn ContactHealth) {
    let message = include_str!("../../../events/aws/ses-feedback/bounce-permanent.json");
    let feedback = parse_ses_notification(message).expect("the sample parses");
    let first = &feedback[0];
    assert_eq!(store.contact(&first.address).await.expect("read"), None);
    assert!(store.record(first).await.expect("record"));
    assert!(
        !store.record(first).await.expect("record again"),
        "a redelivery is skipped"
    );
    let state = store.contact(&first.address).await.expect("read").expect("recorded");
    assert_eq!(state.permanent_bounces, 1);
    assert_eq!(state.complaints, 0);
    assert!(state.suppressed);
    assert_eq!(
        state.last_bounce.as_ref().map(|b| b.kind),
        Some(FeedbackKind::PermanentBounce)
    );
    assert_eq!(state.last_bounce.as_ref().map(|b| b.at), Some(first.at));

    let transient = parse_ses_notification(include_str!("../../../events/aws/ses-feedback/bounce-transient.json"))
        .expect("the sample parses");
    let other = &transient[0];
    assert!(store.record(other).await.expect("record"));
    let state = store.contact(&other.address).await.expect("read").expect("recorded");
    assert_eq!((state.transient_bounces, state.permanent_bounces), (1, 0));
    assert!(!state.suppressed, "a soft bounce does not suppress");

    let complaint = parse_ses_notification(include_str!("../../../events/aws/ses-feedback/complaint.json"))
        .expect("the sample parses");
    let complaint = ContactFeedback {
        address: other.address.clone(),
        ..complaint[0].clone()
    };
    assert!(store.record(&complaint).await.expect("record"));
    let state = store.contact(&other.address).await.expect("read").expect("recorded");
    assert_eq!((state.transient_bounces, state.complaints), (1, 1));
    assert!(state.suppressed, "a complaint suppresses");
    assert_eq!(state.last_complaint.map(|c| c.at), Some(complaint.at));
    assert_eq!(state.last_bounce.map(|b| b.kind), Some(FeedbackKind::TransientBounce));

    // Both contacts are listed, by address.
    let listed: Vec<_> = store
        .contacts()
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.address)
        .collect();
    let mut expected = vec![first.address.clone(), other.address.clone()];
    expected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(listed, expected);

    // Unsuppressing keeps the history and records who did it; the next
    // suppressing feedback suppresses again.
    let at = chrono::TimeZone::timestamp_opt(&Utc, 1_800_000_000, 0)
        .single()
        .expect("a time");
    let cleared = SuppressionChange {
        suppressed: false,
        at,
        by: "ops@example.com".to_owned(),
    };
    let state = store
        .change_suppression(&first.address, &cleared)
        .await
        .expect("unsuppress");
    assert!(!state.suppressed);
    assert_eq!(state.permanent_bounces, 1, "the counts stay");
    assert_eq!(state.last_change.as_ref(), Some(&cleared));
    let read = store.contact(&first.address).await.expect("read").expect("kept");
    assert_eq!(read, state);
    let again = ContactFeedback {
        feedback_id: format!("{}-again", first.feedback_id),
        ..first.clone()
    };
    assert!(store.record(&again).await.expect("record"));
    let state = store.contact(&first.address).await.expect("read").expect("kept");
    assert!(state.suppressed, "a new permanent bounce suppresses again");
    assert_eq!(state.permanent_bounces, 2);
    assert_eq!(state.last_change.as_ref(), Some(&cleared), "feedback leaves the change");

    // An operator may suppress an address SES never reported on.
    let unknown = EmailAddress::parse("Nobody-Yet@example.com").expect("an address");
    let set = SuppressionChange {
        suppressed: true,
        at,
        by: "ops".to_owned(),
    };
    let state = store.change_suppression(&unknown, &set).await.expect("suppress");
    assert!(state.suppressed);
    assert_eq!(state.permanent_bounces + state.transient_bounces + state.complaints, 0);
    let read = store.contact(&unknown).await.expect("read").expect("created");
    assert!(read.suppressed);
    assert_eq!(read.address.as_str(), "nobody-yet@example.com");
    assert_eq!(store.contacts().await.expect("list").len(), 3);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> String {
        let path = format!("{}/../../events/aws/ses-feedback/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn a_permanent_bounce_names_each_recipient_and_suppresses() {
        let feedback = parse_ses_notification(&sample("bounce-permanent.json")).unwrap();
        assert_eq!(feedback.len(), 1);
        let first = &feedback[0];
        assert_eq!(first.address.as_str(), "jane@example.com");
        assert_eq!(first.kind, FeedbackKind::PermanentBounce);
        assert!(first.kind.suppresses());
        assert_eq!(first.at, "2016-01-27T14:59:38.237Z".parse::<DateTime<Utc>>().unwrap());
        assert_eq!(
            first.message_id,
            "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000"
        );
        assert_eq!(
            first.feedback_id,
            "00000137860315fd-869464a4-8680-4114-98d3-716fe35851f9-000000"
        );
    }

    #[test]
    fn a_transient_bounce_does_not_suppress() {
        let feedback = parse_ses_notification(&sample("bounce-transient.json")).unwrap();
        assert_eq!(feedback.len(), 1);
        assert_eq!(feedback[0].address.as_str(), "richard@example.com");
        assert_eq!(feedback[0].kind, FeedbackKind::TransientBounce);
        assert!(!feedback[0].kind.suppresses());
    }

    #[test]
    fn a_complaint_names_each_complainer() {
        let feedback = parse_ses_notification(&sample("complaint.json")).unwrap();
        let addresses: Vec<_> = feedback.iter().map(|f| f.address.as_str()).collect();
        assert_eq!(addresses, ["richard@example.com"]);
        assert_eq!(feedback[0].kind, FeedbackKind::Complaint);
        assert_eq!(
            feedback[0].at,
            "2016-01-27T14:59:38.237Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn a_delivery_and_unknown_types_carry_no_feedback() {
        let delivery =
            r#"{"notificationType":"Delivery","mail":{"messageId":"m"},"delivery":{"recipients":["a@example.com"]}}"#;
        assert!(parse_ses_notification(delivery).unwrap().is_empty());
        assert!(
            parse_ses_notification(r#"{"notificationType":"AmazonSnsSubscriptionSucceeded"}"#)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_configuration_set_event_reads_like_a_notification() {
        let event = r#"{"eventType":"Bounce","mail":{"messageId":"m1"},"bounce":{"bounceType":"Permanent","feedbackId":"f1","timestamp":"2017-08-05T00:41:02.669Z","bouncedRecipients":[{"emailAddress":"Recipient@Example.com"}]}}"#;
        let feedback = parse_ses_notification(event).unwrap();
        assert_eq!(feedback[0].kind, FeedbackKind::PermanentBounce);
        assert_eq!(feedback[0].message_id, "m1");
        assert_eq!(feedback[0].address.as_str(), "recipient@example.com");
    }

    #[test]
    fn malformed_notifications_are_named() {
        assert!(matches!(
            parse_ses_notification("not json"),
            Err(SesFeedbackError::Json(_))
        ));
        assert!(matches!(
            parse_ses_notification(r#"{"notificationType":"Bounce","mail":{}}"#),
            Err(SesFeedbackError::Missing("Bounce", "bounce"))
        ));
        let bad = r#"{"notificationType":"Complaint","complaint":{"timestamp":"2016-01-27T14:59:38.237Z","complainedRecipients":[{"emailAddress":"nobody"}]}}"#;
        assert!(matches!(parse_ses_notification(bad), Err(SesFeedbackError::Address(_))));
    }

    /// Records what it was asked to send.
    #[derive(Default)]
    struct Recording {
        sent: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl crate::notify::Notifier for Recording {
        fn channel(&self) -> crate::notify::Channel {
            crate::notify::Channel::Email
        }
        async fn deliver(
            &self,
            job: &crate::notify::NotificationJob,
            _message: &crate::notify::Message,
        ) -> Result<crate::notify::Receipt, crate::notify::NotifyError> {
            self.sent.lock().unwrap().push(job.to.clone());
            Ok(crate::notify::Receipt::sent(Some("ses-1".to_owned())))
        }
    }

    #[tokio::test]
    async fn email_to_a_suppressed_contact_is_not_sent_and_the_timeline_says_why() {
        use crate::incident::TransitionKind;
        use crate::notify::Channel;
        use crate::ports::Timeline;
        use std::sync::Arc;

        let contacts = Arc::new(MemoryContactHealth::default());
        let bounce = parse_ses_notification(&sample("bounce-permanent.json")).unwrap();
        contacts.record(&bounce[0]).await.unwrap();
        let transient = parse_ses_notification(&sample("bounce-transient.json")).unwrap();
        contacts.record(&transient[0]).await.unwrap();
        let notifier = Arc::new(Recording::default());
        let timeline = Arc::new(crate::memory::MemoryStore::new());
        let notify = crate::dispatch::NotifyService::new(vec![notifier.clone()], Default::default())
            .with_timeline(timeline.clone())
            .with_contacts(contacts);

        let mut jane = crate::render::fixtures::job(Channel::Email, TransitionKind::Triggered);
        jane.to = "Jane@example.com".to_owned();
        let receipt = notify.deliver(&jane, 1).await.expect("handled");
        assert!(receipt.held, "not sent, and not retried");
        let mut richard = jane.clone();
        richard.id = format!("{}-richard", jane.id);
        richard.to = "richard@example.com".to_owned();
        notify.deliver(&richard, 1).await.expect("sent");
        assert_eq!(
            *notifier.sent.lock().unwrap(),
            ["richard@example.com"],
            "a soft bounce still gets mail"
        );

        let entries = timeline.timeline(&jane.incident.id).await.unwrap();
        let described: Vec<_> = entries.iter().map(|e| e.describe()).collect();
        assert!(
            described.iter().any(|d| d.starts_with("not sent: triggered by email to Jane@example.com: the address bounced permanently (SES, latest bounce 2016-01-27T14:59:38Z)")),
            "{described:?}"
        );
        assert!(
            described
                .iter()
                .any(|d| d.starts_with("notified: triggered by email to richard@example.com")),
            "{described:?}"
        );
    }

    #[test]
    fn a_suppression_by_hand_names_who_unless_feedback_came_after() {
        let bounce = parse_ses_notification(&sample("bounce-permanent.json")).unwrap();
        let mut state = ContactState::new(bounce[0].address.clone());
        let by_hand = |seconds: i64| SuppressionChange {
            suppressed: true,
            at: bounce[0].at + chrono::TimeDelta::seconds(seconds),
            by: "alice".to_owned(),
        };
        state.change(&by_hand(-60));
        assert!(state.suppression_reason().unwrap().contains("suppressed by alice"));
        state.apply(&bounce[0]);
        assert!(state.suppression_reason().unwrap().contains("bounced permanently"));
        state.change(&by_hand(60));
        assert!(state.suppression_reason().unwrap().contains("suppressed by alice"));
        state.change(&SuppressionChange {
            suppressed: false,
            ..by_hand(120)
        });
        assert_eq!(state.suppression_reason(), None);
        assert_eq!(state.permanent_bounces, 1);
    }

    #[tokio::test]
    async fn memory_store_counts_and_suppresses() {
        let store = MemoryContactHealth::default();
        let feedback = parse_ses_notification(&sample("bounce-permanent.json")).unwrap();
        assert!(store.record(&feedback[0]).await.unwrap());
        assert!(!store.record(&feedback[0]).await.unwrap());
        let state = store.contact(&feedback[0].address).await.unwrap().unwrap();
        assert_eq!(state.permanent_bounces, 1);
        assert!(state.suppressed);
        let never = EmailAddress::parse("never@example.com").unwrap();
        assert_eq!(store.contact(&never).await.unwrap(), None);
    }
}
