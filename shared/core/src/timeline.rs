//! The incident timeline: what happened to an incident and why, in order.
//!
//! Every event applied to an incident leaves an entry (the opening trigger,
//! each repeat, acknowledge, resolve), written in the same atomic commit as
//! the change it made, so the timeline never shows a change that did not
//! happen nor misses one that did. An event that changed nothing leaves an
//! entry with the reason. Every delivery attempt leaves one too, written by
//! the notifier after it handed the message over (or failed to).
//!
//! Entries are meant for the people who run Tocsin ("why did this not
//! page?"), not for logs: they hold no secrets, and phone numbers are masked.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::{Action, Event, EventId, Origin, Severity};
use crate::incident::{IgnoreReason, Incident, IncidentId, TransitionKind};
use crate::notify::{Channel, NotificationJob};
use crate::ports::IgnoredEvent;

/// How many characters of an event's summary an entry keeps: enough to tell
/// events apart, small enough to keep an entry well under 1 KB (one DynamoDB
/// write unit).
pub const SUMMARY_CHARS: usize = 160;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub incident: IncidentId,
    /// Unique within the incident: writing an entry twice keeps one.
    pub id: String,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub what: Happened,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Happened {
    /// An event changed the incident.
    Event {
        event_id: EventId,
        action: Action,
        outcome: EventOutcome,
        origin: Origin,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        severity: Option<Severity>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        summary: Option<String>,
        /// The incident's occurrences after this event.
        occurrences: u64,
    },
    /// An event about this incident that changed nothing.
    Ignored {
        event_id: EventId,
        action: Action,
        origin: Origin,
        reason: IgnoreReason,
    },
    /// One attempt to deliver one notification.
    Notification {
        channel: Channel,
        /// The address, Slack channel, or the phone number masked to its
        /// last four digits.
        recipient: String,
        transition: TransitionKind,
        /// 1 for the first attempt; retries count up.
        attempt: u32,
        #[serde(flatten)]
        result: DeliveryResult,
    },
    /// A transition's notifications held by a maintenance window
    /// (crate::maintenance).
    Held {
        transition: TransitionKind,
        window: crate::maintenance::WindowId,
        until: DateTime<Utc>,
    },
    /// A maintenance window ended with the incident still open: notified
    /// once, as triggered.
    Released { window: crate::maintenance::WindowId },
    /// Not acknowledged within an escalation level's delay: that level was
    /// notified (crate::escalation).
    Escalated {
        level: u32,
        /// How many notifications were planned for it.
        notifications: usize,
    },
    /// A pending escalation dropped when it came due: the incident was
    /// acknowledged or resolved by then.
    EscalationCancelled {
        level: u32,
        status: crate::incident::IncidentStatus,
    },
}

/// What an event did to the incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventOutcome {
    /// The trigger that opened the incident.
    Opened,
    /// A trigger merged into the open incident: counted, nobody notified.
    Repeated,
    /// A trigger that reopened an acknowledged incident.
    Triggered,
    Acknowledged,
    Resolved,
}

impl EventOutcome {
    /// What a write did: a new incident (no version to replace), a repeat
    /// (no transition), or the transition it made.
    pub fn of(expected_version: Option<u64>, transition: Option<TransitionKind>) -> Self {
        match (expected_version, transition) {
            (None, _) => EventOutcome::Opened,
            (Some(_), None) => EventOutcome::Repeated,
            (Some(_), Some(TransitionKind::Triggered)) => EventOutcome::Triggered,
            (Some(_), Some(TransitionKind::Acknowledged)) => EventOutcome::Acknowledged,
            (Some(_), Some(TransitionKind::Resolved)) => EventOutcome::Resolved,
            // No event escalates (the scheduler does): a write that says so
            // changed the incident as a trigger would.
            (Some(_), Some(TransitionKind::Escalated)) => EventOutcome::Triggered,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Opened => "opened",
            EventOutcome::Repeated => "repeated",
            EventOutcome::Triggered => "triggered",
            EventOutcome::Acknowledged => "acknowledged",
            EventOutcome::Resolved => "resolved",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum DeliveryResult {
    Delivered {
        /// The provider's message id (SES, SNS) or Slack's ts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    Failed {
        reason: String,
        /// Whether the job goes back on its queue for another attempt (and
        /// to the dead-letter queue once the attempts run out).
        will_retry: bool,
    },
    /// Not sent: the recipient's throttle (crate::throttle) held it for the
    /// one message that bundles what it held.
    Bundled,
    /// Not sent: SES reported a permanent bounce or a complaint for the
    /// address (crate::contacts); mailing it again hurts the sender.
    Suppressed { reason: String },
}

impl TimelineEntry {
    /// The entry of an event that changed `incident` (as written).
    pub fn of_event(event: &Event, incident: &Incident, outcome: EventOutcome, at: DateTime<Utc>) -> Self {
        let payload = event.alert.payload.as_ref();
        TimelineEntry {
            incident: incident.id.clone(),
            id: event_entry_id(&event.id),
            at,
            what: Happened::Event {
                event_id: event.id.clone(),
                action: event.action(),
                outcome,
                origin: event.origin.clone(),
                severity: payload.map(|p| p.severity),
                summary: payload.map(|p| shorten(&p.summary)),
                occurrences: incident.occurrences,
            },
        }
    }

    /// The entry of an ignored event, when it concerned an incident.
    pub fn of_ignored(ignored: &IgnoredEvent) -> Option<Self> {
        let incident = ignored.incident.clone()?;
        Some(TimelineEntry {
            incident,
            id: event_entry_id(&ignored.event.id),
            at: ignored.at,
            what: Happened::Ignored {
                event_id: ignored.event.id.clone(),
                action: ignored.event.action(),
                origin: ignored.event.origin.clone(),
                reason: ignored.reason,
            },
        })
    }

    /// The entry of one delivery attempt of `job`.
    pub fn of_delivery(job: &NotificationJob, attempt: u32, result: DeliveryResult, at: DateTime<Utc>) -> Self {
        // The job id names the recipient in full; the entry id must not.
        let digest = Sha256::digest(job.id.as_bytes());
        TimelineEntry {
            incident: job.incident.id.clone(),
            id: format!("notify:{}:{attempt}", hex::encode(&digest[..8])),
            at,
            what: Happened::Notification {
                channel: job.channel,
                recipient: recipient_for_display(job.channel, &job.to),
                transition: job.transition,
                attempt,
                result,
            },
        }
    }

    /// The sort key of an entry within its incident: time, then id, as text
    /// (fixed-width RFC 3339 in UTC with nanoseconds sorts in time order).
    /// Nanoseconds, as `at` has them: two entries written within the same
    /// microsecond (a delivery and an event, from two tasks) would otherwise
    /// be ordered by id, not by time.
    pub fn sort_key(&self) -> String {
        format!(
            "{}#{}",
            self.at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            self.id
        )
    }

    /// One line for people: `repeated: trigger from prometheus (12 occurrences)`.
    pub fn describe(&self) -> String {
        match &self.what {
            Happened::Event {
                action,
                outcome,
                origin,
                occurrences,
                ..
            } => format!(
                "{}: {action} from {} ({occurrences} occurrence{})",
                outcome.as_str(),
                origin_name(origin),
                if *occurrences == 1 { "" } else { "s" }
            ),
            Happened::Ignored {
                action, origin, reason, ..
            } => format!("ignored: {action} from {} ({reason})", origin_name(origin)),
            Happened::Notification {
                channel,
                recipient,
                transition,
                attempt,
                result,
            } => match result {
                DeliveryResult::Delivered { .. } => {
                    format!("notified: {transition} by {channel} to {recipient} (attempt {attempt})")
                }
                DeliveryResult::Failed { reason, will_retry } => format!(
                    "notification failed: {transition} by {channel} to {recipient} (attempt {attempt}, {}): {reason}",
                    if *will_retry { "will retry" } else { "dead-lettered" }
                ),
                DeliveryResult::Bundled => {
                    format!("throttled (bundled): {transition} by {channel} to {recipient}")
                }
                DeliveryResult::Suppressed { reason } => {
                    format!("not sent: {transition} by {channel} to {recipient}: {reason}")
                }
            },
            Happened::Held { window, until, .. } => format!(
                "notifications held: maintenance window {window} until {}",
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            Happened::Released { window } => {
                format!("notifications released: maintenance window {window} ended")
            }
            Happened::Escalated { level, notifications } => format!(
                "escalated to level {level} ({notifications} notification{})",
                if *notifications == 1 { "" } else { "s" }
            ),
            Happened::EscalationCancelled { level, status } => {
                format!("escalation to level {level} cancelled ({status})")
            }
        }
    }
}

fn event_entry_id(event: &EventId) -> String {
    format!("event:{event}")
}

fn origin_name(origin: &Origin) -> String {
    match origin {
        Origin::Integration { integration, provider } => format!("{provider} ({integration})"),
        Origin::Api { actor } => format!("{actor} (api)"),
        Origin::Heartbeat { heartbeat } => format!("heartbeat {heartbeat}"),
    }
}

fn shorten(summary: &str) -> String {
    match summary.char_indices().nth(SUMMARY_CHARS) {
        Some((end, _)) => format!("{}…", &summary[..end]),
        None => summary.to_owned(),
    }
}

/// Phone numbers are personal data: a timeline shows enough of one to tell
/// recipients apart (`+•••••••0123`), never the whole number.
pub fn recipient_for_display(channel: Channel, to: &str) -> String {
    match channel {
        Channel::Sms => {
            let digits = to.chars().filter(char::is_ascii_digit).count();
            let keep = 4.min(digits);
            let mut seen = 0;
            to.chars()
                .map(|c| {
                    if c.is_ascii_digit() {
                        seen += 1;
                        if seen > digits - keep {
                            return c;
                        }
                        '•'
                    } else {
                        c
                    }
                })
                .collect()
        }
        Channel::Email | Channel::Slack | Channel::Webhook => to.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::job;

    fn sample_job(channel: Channel, _summary: &str) -> NotificationJob {
        job(channel, TransitionKind::Triggered)
    }

    #[test]
    fn a_phone_number_shows_only_its_last_four_digits() {
        assert_eq!(recipient_for_display(Channel::Sms, "+14155550123"), "+•••••••0123");
        assert_eq!(recipient_for_display(Channel::Sms, "123"), "123");
        assert_eq!(
            recipient_for_display(Channel::Email, "oncall@example.com"),
            "oncall@example.com"
        );
    }

    #[test]
    fn a_delivery_entry_never_names_the_phone_number() {
        let mut job = sample_job(Channel::Sms, "disk full");
        job.to = "+14155550123".to_owned();
        job.id = format!("inc_1:2:sms:{}", job.to);
        let entry = TimelineEntry::of_delivery(&job, 2, DeliveryResult::Delivered { reference: None }, Utc::now());
        let json = serde_json::to_string(&entry).expect("serializes");
        assert!(!json.contains("4155550123"), "{json}");
        assert!(entry.id.ends_with(":2"));
        assert!(entry.describe().contains("attempt 2"), "{}", entry.describe());
    }

    #[test]
    fn long_summaries_are_shortened_on_a_character_boundary() {
        let long = "é".repeat(SUMMARY_CHARS + 10);
        let short = shorten(&long);
        assert_eq!(short.chars().count(), SUMMARY_CHARS + 1);
        assert!(short.ends_with('…'));
        assert_eq!(shorten("short"), "short");
    }

    #[test]
    fn entries_round_trip_through_json() {
        let job = sample_job(Channel::Email, "disk full");
        let entry = TimelineEntry::of_delivery(
            &job,
            1,
            DeliveryResult::Failed {
                reason: "throttled".into(),
                will_retry: true,
            },
            Utc::now(),
        );
        let json = serde_json::to_value(&entry).expect("serializes");
        assert_eq!(json["kind"], "notification");
        assert_eq!(json["result"], "failed");
        assert_eq!(json["will_retry"], true);
        let back: TimelineEntry = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, entry);
    }
}
