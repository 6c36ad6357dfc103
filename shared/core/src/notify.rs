//! Notifications: the jobs the dispatcher plans from a transition and a
//! service's policy, the messages rendered from them, and the notifier port.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::Service;
use crate::incident::{Incident, Transition, TransitionKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
    Slack,
    /// Outgoing webhooks: generic JSON, Teams, Discord, Google Chat.
    Webhook,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Email, Channel::Sms, Channel::Slack, Channel::Webhook];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Slack => "slack",
            Channel::Webhook => "webhook",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message to one recipient about one transition. Its id is derived from
/// the transition, channel and recipient, so a job planned twice is one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationJob {
    pub id: String,
    pub channel: Channel,
    /// An email address, an E.164 number, a Slack channel, or a webhook as
    /// `<format>:<host>#<index>` (crate::config::WebhookTarget).
    pub to: String,
    pub transition: TransitionKind,
    pub service_name: String,
    pub incident: Incident,
    pub planned_at: DateTime<Utc>,
}

/// Plans the notifications of one committed transition under its service's
/// policy: one job per recipient per channel, none for a channel whose
/// minimum severity (or the policy's transitions) says it does not notify.
pub fn plan(transition: &Transition, service: &Service, now: DateTime<Utc>) -> Vec<NotificationJob> {
    let policy = &service.policy;
    let (kind, severity) = (transition.kind, transition.incident.severity);
    let recipients = policy
        .email
        .iter()
        .map(|e| (Channel::Email, e.as_str().to_owned()))
        .chain(policy.sms.iter().map(|n| (Channel::Sms, n.as_str().to_owned())))
        .chain(policy.slack.iter().map(|c| (Channel::Slack, c.clone())))
        .chain(
            policy
                .webhooks
                .iter()
                .enumerate()
                .map(|(i, hook)| (Channel::Webhook, hook.target(i).recipient())),
        );
    recipients
        .filter(|(channel, _)| policy.notifies_on(*channel, kind, severity))
        .map(|(channel, to)| NotificationJob {
            id: format!("{}:{}:{}", transition.id(), channel, to),
            channel,
            to,
            transition: transition.kind,
            service_name: service.name.clone(),
            incident: transition.incident.clone(),
            planned_at: now,
        })
        .collect()
}

/// A message rendered for its channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Message {
    Email {
        subject: String,
        text: String,
        html: String,
    },
    Sms {
        text: String,
        /// `gsm7` or `ucs2`: which alphabet the text needs.
        encoding: String,
        segments: u32,
    },
    Slack {
        channel: String,
        /// The fallback shown in notifications and by clients without blocks.
        text: String,
        /// Block Kit attachments, colored by severity.
        attachments: serde_json::Value,
    },
    Webhook {
        format: crate::config::WebhookFormat,
        /// `incident.triggered`, `incident.acknowledged`, `incident.resolved`:
        /// the X-Webhook-Event header.
        event: String,
        /// The JSON posted, in the format's shape.
        body: serde_json::Value,
    },
}

impl Message {
    /// The channel this message was rendered for.
    pub fn channel(&self) -> Channel {
        match self {
            Message::Email { .. } => Channel::Email,
            Message::Sms { .. } => Channel::Sms,
            Message::Slack { .. } => Channel::Slack,
            Message::Webhook { .. } => Channel::Webhook,
        }
    }
}

/// What a notifier reports after handing a message over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The provider's id of the message (SES MessageId, SNS MessageId,
    /// Slack ts), or the local outbox line.
    pub reference: Option<String>,
    /// Not sent: the recipient's throttle held it for a bundle
    /// (crate::throttle). Counted as throttled, not as sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

impl Receipt {
    /// Handed over to the provider.
    pub fn sent(reference: Option<String>) -> Self {
        Receipt { reference, held: false }
    }

    /// Held by the throttle, not sent.
    pub fn held() -> Self {
        Receipt {
            reference: None,
            held: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Worth retrying: throttled, timed out, 5xx.
    #[error("delivery failed, will retry: {reason}")]
    Transient {
        reason: String,
        retry_after_secs: Option<u64>,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Will never succeed as sent: bad recipient, revoked token.
    #[error("delivery refused: {reason}")]
    Permanent {
        reason: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl NotifyError {
    /// A message handed to the notifier of another channel: a wiring bug
    /// that no retry will fix.
    pub fn wrong_message(message: &Message, notifier: Channel) -> Self {
        NotifyError::Permanent {
            reason: format!(
                "a message rendered for {} cannot be delivered by the {notifier} notifier",
                message.channel()
            ),
            source: None,
        }
    }
}

/// One channel's delivery.
#[async_trait]
pub trait Notifier: Send + Sync {
    fn channel(&self) -> Channel;
    async fn deliver(&self, job: &NotificationJob, message: &Message) -> Result<Receipt, NotifyError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_webhook_gets_one_job_named_without_its_url() {
        use crate::config::{NotificationPolicy, Webhook, WebhookFormat, WebhookUrl};
        use crate::event::Severity;
        use crate::incident::Transition;

        let job = crate::render::fixtures::job(Channel::Email, TransitionKind::Triggered);
        let hook = |url: &str, format| Webhook {
            url: WebhookUrl::parse(url).expect("a valid url"),
            format,
            secret: None,
        };
        let service = Service {
            id: job.incident.service.clone(),
            name: "Checkout".into(),
            policy: NotificationPolicy {
                email: Vec::new(),
                sms: Vec::new(),
                slack: None,
                webhooks: vec![
                    hook("https://hooks.example.com/tocsin?token=abc", WebhookFormat::Generic),
                    hook(
                        "https://discord.com/api/webhooks/1/secret-token",
                        WebhookFormat::Discord,
                    ),
                ],
                on: vec![TransitionKind::Triggered],
                min_severity: Severity::Info,
                min_severity_by_channel: Default::default(),
                escalation: Vec::new(),
            },
        };
        let transition = Transition {
            kind: TransitionKind::Triggered,
            incident: job.incident.clone(),
            event_id: crate::event::EventId::new("e1"),
        };
        let jobs = plan(&transition, &service, job.planned_at);
        let to: Vec<_> = jobs.iter().map(|j| (j.channel, j.to.as_str())).collect();
        assert_eq!(
            to,
            [
                (Channel::Webhook, "generic:hooks.example.com#0"),
                (Channel::Webhook, "discord:discord.com#1"),
            ]
        );
        assert!(jobs.iter().all(|j| !j.id.contains("token")), "{jobs:?}");

        let resolved = Transition {
            kind: TransitionKind::Resolved,
            ..transition
        };
        assert!(plan(&resolved, &service, job.planned_at).is_empty());
    }

    #[test]
    fn each_channel_is_planned_against_its_own_minimum_severity() {
        use crate::config::Catalog;
        use crate::event::Severity;
        use crate::incident::Transition;

        // The service declares no notify: the default policy routes it.
        let catalog = Catalog::from_yaml(
            r#"
settings:
  default_notify:
    email: [platform@example.com]
    sms: ["+15555550199"]
    min_severity_by_channel: {sms: critical}
services:
  - id: checkout
"#,
            "tocsin.yaml",
        )
        .expect("a valid config");
        let job = crate::render::fixtures::job(Channel::Email, TransitionKind::Triggered);
        let planned = |severity| {
            let mut incident = job.incident.clone();
            incident.severity = severity;
            let transition = Transition {
                kind: TransitionKind::Triggered,
                incident,
                event_id: crate::event::EventId::new("e1"),
            };
            plan(&transition, &catalog.services[0], job.planned_at)
                .into_iter()
                .map(|j| (j.channel, j.to))
                .collect::<Vec<_>>()
        };
        let email = (Channel::Email, "platform@example.com".to_owned());
        let sms = (Channel::Sms, "+15555550199".to_owned());
        assert_eq!(
            planned(Severity::Info),
            std::slice::from_ref(&email),
            "info reaches email, not SMS"
        );
        assert_eq!(planned(Severity::Error), std::slice::from_ref(&email));
        assert_eq!(planned(Severity::Critical), [email, sms]);
    }

    #[test]
    fn a_message_for_another_channel_is_refused_for_good_naming_both() {
        let sms = Message::Sms {
            text: "x".to_owned(),
            encoding: "gsm7".to_owned(),
            segments: 1,
        };
        assert_eq!(sms.channel(), Channel::Sms);
        match NotifyError::wrong_message(&sms, Channel::Email) {
            NotifyError::Permanent { reason, .. } => {
                assert_eq!(
                    reason,
                    "a message rendered for sms cannot be delivered by the email notifier"
                )
            }
            other => panic!("expected Permanent, got {other:?}"),
        }
    }
}
