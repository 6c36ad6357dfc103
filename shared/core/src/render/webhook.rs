//! Outgoing webhooks: Tocsin's generic JSON, and the chat formats of
//! Microsoft Teams, Discord and Google Chat.
//!
//! The generic body is for programs: every field, typed, stable names. The
//! chat bodies are for people, cut to each service's limits, with mentions
//! an alert could smuggle in turned off where the service has such a switch.

use serde_json::{json, Map, Value};

use super::{
    actor_title, color, detail_rows, headline, incident_url, is_web_link, one_line, severity_title, status_title,
    summary, timestamp, transition_title, truncate_chars, RenderContext,
};
use crate::config::{WebhookFormat, WebhookTarget};
use crate::incident::TransitionKind;
use crate::notify::{Message, NotificationJob};

/// Discord's limits on an embed (title, description, fields, a field's
/// name and value) and on `content`.
const DISCORD_TITLE_CHARS: usize = 256;
const DISCORD_DESCRIPTION_CHARS: usize = 4_096;
const DISCORD_FIELDS: usize = 25;
const DISCORD_FIELD_NAME_CHARS: usize = 256;
const DISCORD_FIELD_VALUE_CHARS: usize = 1_024;
const DISCORD_CONTENT_CHARS: usize = 2_000;
/// Detail rows shown in chat formats; the generic body carries them all.
const MAX_DETAIL_ROWS: usize = 10;
const MAX_DETAIL_VALUE_CHARS: usize = 300;
const HEADLINE_CHARS: usize = 250;

/// `incident.triggered`, `incident.acknowledged`, `incident.resolved`: the
/// generic body's `event` and every format's X-Webhook-Event header;
/// `incident.escalated` when an escalation level is notified
/// (crate::escalation).
pub fn event_name(kind: TransitionKind) -> &'static str {
    match kind {
        TransitionKind::Triggered => "incident.triggered",
        TransitionKind::Acknowledged => "incident.acknowledged",
        TransitionKind::Resolved => "incident.resolved",
        TransitionKind::Escalated => "incident.escalated",
    }
}

pub fn render(job: &NotificationJob, ctx: &RenderContext) -> Message {
    // A recipient that does not parse was not planned by this version: the
    // notifier refuses it, whatever the body.
    let format = WebhookTarget::parse(&job.to).map_or(WebhookFormat::Generic, |t| t.format);
    let body = match format {
        WebhookFormat::Generic => generic(job, ctx),
        WebhookFormat::Teams => teams(job, ctx),
        WebhookFormat::Discord => discord(job, ctx),
        WebhookFormat::GoogleChat => google_chat(job, ctx),
    };
    Message::Webhook {
        format,
        event: event_name(job.transition).to_owned(),
        body,
    }
}

fn generic(job: &NotificationJob, ctx: &RenderContext) -> Value {
    let incident = &job.incident;
    let mut body = json!({
        "id": incident.id.to_string(),
        "service": incident.service.to_string(),
        "service_name": job.service_name,
        "status": incident.status,
        "severity": incident.severity,
        "summary": incident.summary,
        "source": incident.source,
        "dedup_key": incident.dedup_key.to_string(),
        "occurrences": incident.occurrences,
        "created_at": timestamp(incident.created_at),
        "updated_at": timestamp(incident.updated_at),
        "details": incident.custom_details.clone().unwrap_or(Value::Null),
        "links": incident.links.iter().filter(|l| is_web_link(&l.href)).map(|l| json!({"href": l.href, "text": l.text})).collect::<Vec<_>>(),
    });
    if let Some(url) = incident_url(ctx, incident) {
        body["url"] = Value::String(url);
    }
    if let Some(by) = &incident.acknowledged_by {
        body["acknowledged_by"] = Value::String(by.clone());
    }
    if let Some(by) = &incident.resolved_by {
        body["resolved_by"] = Value::String(by.clone());
    }
    json!({
        "event": event_name(job.transition),
        // The same for every attempt of one job: receivers deduplicate on it.
        "delivery_id": job.id,
        "occurred_at": timestamp(incident.last_transition_at),
        "incident": body,
    })
}

/// The rows people read in every chat format: status, severity, service,
/// then the first details.
fn fact_rows(job: &NotificationJob) -> Vec<(String, String)> {
    let incident = &job.incident;
    let mut rows = vec![
        ("Status".to_owned(), status_title(incident.status).to_owned()),
        ("Severity".to_owned(), severity_title(incident.severity).to_owned()),
        ("Service".to_owned(), one_line(&job.service_name)),
        ("Dedup key".to_owned(), incident.dedup_key.to_string()),
    ];
    if let Some(by) = &incident.acknowledged_by {
        rows.push(("Acknowledged by".to_owned(), actor_title(by)));
    }
    if let Some(by) = &incident.resolved_by {
        rows.push(("Resolved by".to_owned(), actor_title(by)));
    }
    rows.extend(
        detail_rows(incident.custom_details.as_ref())
            .into_iter()
            .take(MAX_DETAIL_ROWS)
            .map(|(k, v)| (k, truncate_chars(&one_line(&v), MAX_DETAIL_VALUE_CHARS).into_owned())),
    );
    rows
}

/// Microsoft Teams: an Adaptive Card in a `message` activity, the payload
/// of both Teams incoming webhooks and the Workflows app's "Post to a
/// channel when a webhook request is received" template, which replaces
/// the retired Office 365 connectors. Format documented at
/// https://learn.microsoft.com/en-us/microsoftteams/platform/webhooks-and-connectors/how-to/add-incoming-webhook
/// ("Send Adaptive Cards using an Incoming Webhook").
fn teams(job: &NotificationJob, ctx: &RenderContext) -> Value {
    let incident = &job.incident;
    let style = match job.transition {
        TransitionKind::Resolved => "good",
        _ => match incident.severity {
            crate::event::Severity::Critical | crate::event::Severity::Error => "attention",
            _ => "warning",
        },
    };
    let facts: Vec<Value> = fact_rows(job)
        .into_iter()
        .map(|(title, value)| json!({"title": title, "value": value}))
        .collect();
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": [
            {
                "type": "TextBlock",
                "text": headline(job, HEADLINE_CHARS),
                "weight": "Bolder",
                "size": "Medium",
                "color": style,
                "wrap": true,
            },
            {"type": "TextBlock", "text": summary(incident), "wrap": true},
            {"type": "FactSet", "facts": facts},
        ],
    });
    if let Some(url) = incident_url(ctx, incident) {
        card["actions"] = json!([{"type": "Action.OpenUrl", "title": "View incident", "url": url}]);
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card,
        }],
    })
}

/// Discord: an execute-webhook body with one embed
/// (https://discord.com/developers/docs/resources/webhook#execute-webhook),
/// mentions off, so an alert saying `@everyone` pings no one.
fn discord(job: &NotificationJob, ctx: &RenderContext) -> Value {
    let incident = &job.incident;
    let color = u32::from_str_radix(color(job).trim_start_matches('#'), 16).unwrap_or(0);
    let fields: Vec<Value> = fact_rows(job)
        .into_iter()
        .take(DISCORD_FIELDS)
        .map(|(name, value)| {
            json!({
                "name": truncate_chars(&name, DISCORD_FIELD_NAME_CHARS),
                "value": truncate_chars(&value, DISCORD_FIELD_VALUE_CHARS),
                "inline": true,
            })
        })
        .collect();
    let mut embed = Map::new();
    embed.insert(
        "title".into(),
        json!(truncate_chars(
            &format!("{}: {}", transition_title(job.transition), summary(incident)),
            DISCORD_TITLE_CHARS
        )),
    );
    embed.insert(
        "description".into(),
        json!(truncate_chars(&incident.summary, DISCORD_DESCRIPTION_CHARS)),
    );
    embed.insert("color".into(), json!(color));
    embed.insert("fields".into(), json!(fields));
    embed.insert("timestamp".into(), json!(timestamp(incident.last_transition_at)));
    if let Some(url) = incident_url(ctx, incident) {
        embed.insert("url".into(), json!(url));
    }
    json!({
        "content": truncate_chars(&headline(job, HEADLINE_CHARS), DISCORD_CONTENT_CHARS),
        "embeds": [Value::Object(embed)],
        "allowed_mentions": {"parse": []},
    })
}

/// Google Chat: a text message
/// (https://developers.google.com/workspace/chat/format-messages), bold
/// headline, one fact a line, and the incident's link.
fn google_chat(job: &NotificationJob, ctx: &RenderContext) -> Value {
    let mut text = format!("*{}*\n", escape_chat(&headline(job, HEADLINE_CHARS)));
    for (name, value) in fact_rows(job) {
        text.push_str(&format!("{}: {}\n", escape_chat(&name), escape_chat(&value)));
    }
    if let Some(url) = incident_url(ctx, &job.incident) {
        text.push_str(&format!("<{url}|View incident>"));
    }
    json!({ "text": text.trim_end() })
}

/// Google Chat reads `<…>` as links and mentions (`<users/all>`): an alert's
/// text must not make any.
fn escape_chat(text: &str) -> String {
    text.replace('<', "‹").replace('>', "›")
}

#[cfg(test)]
mod tests {
    use insta::assert_json_snapshot;

    use super::*;
    use crate::config::WebhookFormat;
    use crate::notify::Channel;
    use crate::render::fixtures;

    fn job(format: WebhookFormat, kind: TransitionKind) -> NotificationJob {
        let mut job = fixtures::job(Channel::Webhook, kind);
        job.to = WebhookTarget {
            format,
            host: "hooks.example.com".into(),
            index: 0,
        }
        .recipient();
        job
    }

    fn snapshot(format: WebhookFormat, kind: TransitionKind) {
        let message = render(&job(format, kind), &fixtures::context());
        insta::with_settings!({ sort_maps => true }, {
            assert_json_snapshot!(format!("{}_{}", format.as_str(), kind.as_str()), message);
        });
    }

    #[test]
    fn generic_snapshots() {
        for kind in [
            TransitionKind::Triggered,
            TransitionKind::Acknowledged,
            TransitionKind::Resolved,
            TransitionKind::Escalated,
        ] {
            snapshot(WebhookFormat::Generic, kind);
        }
    }

    #[test]
    fn teams_snapshots() {
        for kind in [
            TransitionKind::Triggered,
            TransitionKind::Acknowledged,
            TransitionKind::Resolved,
        ] {
            snapshot(WebhookFormat::Teams, kind);
        }
    }

    #[test]
    fn discord_snapshots() {
        for kind in [
            TransitionKind::Triggered,
            TransitionKind::Acknowledged,
            TransitionKind::Resolved,
        ] {
            snapshot(WebhookFormat::Discord, kind);
        }
    }

    #[test]
    fn google_chat_snapshots() {
        for kind in [
            TransitionKind::Triggered,
            TransitionKind::Acknowledged,
            TransitionKind::Resolved,
        ] {
            snapshot(WebhookFormat::GoogleChat, kind);
        }
    }

    #[test]
    fn the_event_names_the_transition_in_every_format() {
        for format in [
            WebhookFormat::Generic,
            WebhookFormat::Teams,
            WebhookFormat::Discord,
            WebhookFormat::GoogleChat,
        ] {
            let Message::Webhook {
                event,
                format: rendered,
                ..
            } = render(&job(format, TransitionKind::Resolved), &fixtures::context())
            else {
                panic!("not a webhook message");
            };
            assert_eq!(event, "incident.resolved");
            assert_eq!(rendered, format);
        }
    }

    #[test]
    fn chat_formats_cannot_mention_anyone() {
        let mut job = job(WebhookFormat::GoogleChat, TransitionKind::Triggered);
        job.incident.summary = "<users/all> @everyone disk full".into();
        let Message::Webhook { body, .. } = render(&job, &RenderContext::default()) else {
            panic!("not a webhook message");
        };
        assert!(!body["text"].as_str().unwrap_or("").contains("<users/all>"));

        job.to = job.to.replacen("google-chat", "discord", 1);
        let Message::Webhook { body, .. } = render(&job, &RenderContext::default()) else {
            panic!("not a webhook message");
        };
        assert_eq!(body["allowed_mentions"], json!({"parse": []}));
    }

    #[test]
    fn the_generic_body_has_no_url_without_a_public_url() {
        let Message::Webhook { body, .. } = render(
            &job(WebhookFormat::Generic, TransitionKind::Triggered),
            &RenderContext::default(),
        ) else {
            panic!("not a webhook message");
        };
        assert!(body["incident"].get("url").is_none());
        assert_eq!(body["incident"]["dedup_key"], "disk-full/db-1/var");
    }
}
