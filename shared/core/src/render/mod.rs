//! Rendering notifications: pure functions from a job to the message its
//! channel carries, snapshot-tested.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::event::Severity;
use crate::incident::{Incident, IncidentStatus, TransitionKind};
use crate::notify::{Channel, Message, NotificationJob};

pub mod email;
pub mod slack;
pub mod sms;
pub mod webhook;

/// What rendering needs beyond the job.
#[derive(Debug, Clone, Default)]
pub struct RenderContext {
    /// Base URL of the API (links to the incident); none locally configured
    /// means no links.
    pub public_url: Option<String>,
    /// Signs the one-click acknowledge and resolve links of emails and SMS;
    /// with a public URL only (crate::links).
    pub action_links: Option<crate::links::ActionSigner>,
}

pub fn render(job: &NotificationJob, ctx: &RenderContext) -> Message {
    match job.channel {
        Channel::Email => email::render(job, ctx),
        Channel::Sms => sms::render(job, ctx),
        Channel::Slack => slack::render(job, ctx),
        Channel::Webhook => webhook::render(job, ctx),
    }
}

// What the channels share: wording, colors, links and the flattened details.

/// HTML-escapes text and attribute values: the email body and the
/// action-link pages of tocsin-api.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page of an incident, when a public URL is configured.
fn incident_url(ctx: &RenderContext, incident: &Incident) -> Option<String> {
    let base = public_base(ctx)?;
    Some(format!("{base}/incidents/{}", incident.id))
}

fn public_base(ctx: &RenderContext) -> Option<&str> {
    let base = ctx.public_url.as_deref()?.trim().trim_end_matches('/');
    (!base.is_empty()).then_some(base)
}

/// A signed one-click link: what it does, where, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ActionLink {
    action: crate::links::LinkAction,
    url: String,
    expires_at: DateTime<Utc>,
}

/// The one-click links of `actions` that still apply to the incident as
/// the job saw it (acknowledge while open, resolve until resolved), when
/// a public URL and a signing secret are configured. Issued at the job's
/// planned time, so a redelivered job renders the same message.
fn action_links(
    job: &NotificationJob,
    ctx: &RenderContext,
    actions: &[crate::links::LinkAction],
    recipient: Option<&str>,
) -> Vec<ActionLink> {
    use crate::links::LinkAction;
    let (Some(base), Some(signer)) = (public_base(ctx), ctx.action_links.as_ref()) else {
        return Vec::new();
    };
    let status = job.incident.status;
    actions
        .iter()
        .filter(|action| match action {
            LinkAction::Acknowledge => status == IncidentStatus::Open,
            LinkAction::Resolve => status != IncidentStatus::Resolved,
        })
        .map(|&action| ActionLink {
            action,
            url: crate::links::action_url(base, &signer.token(&job.incident.id, action, recipient, job.planned_at)),
            expires_at: signer.expiry(job.planned_at),
        })
        .collect()
}

/// Who made a transition, for people: the actor an incident records
/// (crate::incident::actor_name) with its prefix spelled out, so
/// `slack:@alice (U024BE7LH)` reads `alice (Slack)` and `api-key:deploy`
/// reads `deploy (API key)`. On one line, at most 80 characters.
pub fn actor_title(by: &str) -> String {
    let by = one_line(by);
    let title = if let Some(user) = by.strip_prefix("slack:") {
        // `@name (U…)`, `@name` or `U…`: the name where Slack sent one.
        let name = user
            .strip_prefix('@')
            .map_or(user, |named| named.rsplit_once(" (").map_or(named, |(name, _)| name));
        format!("{name} (Slack)")
    } else if let Some(key) = by.strip_prefix("api-key:") {
        format!("{key} (API key)")
    } else if let Some(recipient) = by.strip_prefix("link:") {
        format!("{recipient} (action link)")
    } else if by == "link" {
        "an action link".to_owned()
    } else {
        by
    };
    truncate_chars(&title, 80).into_owned()
}

/// `[CRITICAL] Triggered: <summary> (<service>)`, or `[RESOLVED] <summary>
/// (<service>)`, in at most `max_chars` characters: the summary gives way.
fn headline(job: &NotificationJob, max_chars: usize) -> String {
    let head = match job.transition {
        TransitionKind::Resolved => "[RESOLVED] ".to_owned(),
        kind => format!(
            "[{}] {}: ",
            job.incident.severity.as_str().to_uppercase(),
            transition_title(kind)
        ),
    };
    let tail = format!(" ({})", truncate_chars(&one_line(&job.service_name), 40));
    let budget = max_chars.saturating_sub(head.chars().count() + tail.chars().count());
    format!("{head}{}{tail}", truncate_chars(&summary(&job.incident), budget))
}

/// The summary on one line; a placeholder when the alert sent an empty one.
fn summary(incident: &Incident) -> String {
    let line = one_line(&incident.summary);
    if line.is_empty() {
        "(no summary)".to_owned()
    } else {
        line
    }
}

fn transition_title(kind: TransitionKind) -> &'static str {
    match kind {
        TransitionKind::Triggered => "Triggered",
        TransitionKind::Acknowledged => "Acknowledged",
        TransitionKind::Resolved => "Resolved",
        TransitionKind::Escalated => "Escalated",
    }
}

fn status_title(status: IncidentStatus) -> &'static str {
    match status {
        IncidentStatus::Open => "Open",
        IncidentStatus::Acknowledged => "Acknowledged",
        IncidentStatus::Resolved => "Resolved",
    }
}

fn severity_title(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "Critical",
        Severity::Error => "Error",
        Severity::Warning => "Warning",
        Severity::Info => "Info",
    }
}

/// The color bar of a message: the severity's, green once resolved.
fn color(job: &NotificationJob) -> &'static str {
    if job.transition == TransitionKind::Resolved {
        return "#2E7D32";
    }
    match job.incident.severity {
        Severity::Critical => "#D32F2F",
        Severity::Error => "#F57C00",
        Severity::Warning => "#FBC02D",
        Severity::Info => "#1976D2",
    }
}

/// RFC 3339 in UTC, to the second.
fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `45s`, `7m 21s`, `3h 5m`, `2d 4h`: how long between two moments.
pub(crate) fn duration(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let secs = (to - from).num_seconds().max(0);
    let (d, h, m, s) = (secs / 86_400, secs % 86_400 / 3_600, secs % 3_600 / 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if s == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// Whitespace runs (newlines included) become one space and control
/// characters go: for subjects, SMS and table cells.
fn one_line(text: &str) -> String {
    let mut line = String::with_capacity(text.len());
    for word in text.split(|c: char| c.is_whitespace() || c.is_control()) {
        if word.is_empty() {
            continue;
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    line
}

/// At most `max` characters, the last one `…` when the text was cut.
fn truncate_chars(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some(_) if max == 0 => Cow::Borrowed(""),
        Some(_) => {
            let cut = text.char_indices().nth(max - 1).map_or(text.len(), |(i, _)| i);
            Cow::Owned(format!("{}…", text[..cut].trim_end()))
        }
    }
}

/// Links people may open: http and https only (an alert could send
/// `javascript:`).
fn is_web_link(href: &str) -> bool {
    let lower = href.trim_start().to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

/// An incident's custom details as rows: nested objects flattened one level
/// with dotted keys, values that are not strings as compact JSON. Sorted by
/// key, so the order never depends on how the map was built.
fn detail_rows(details: Option<&serde_json::Value>) -> Vec<(String, String)> {
    use serde_json::Value;

    fn cell(value: &Value) -> String {
        match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    let mut rows = match details {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(map)) => {
            let mut rows = Vec::with_capacity(map.len());
            for (key, value) in map {
                match value {
                    Value::Object(inner) if !inner.is_empty() => {
                        rows.extend(inner.iter().map(|(k, v)| (format!("{key}.{k}"), cell(v))));
                    }
                    other => rows.push((key.clone(), cell(other))),
                }
            }
            rows
        }
        Some(other) => vec![("details".to_owned(), cell(other))],
    };
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! One fixed incident seen at each transition: fixed ids and times, so
    //! snapshots never move.

    use chrono::{DateTime, Duration, TimeZone, Utc};
    use serde_json::json;

    use super::RenderContext;
    use crate::event::{DedupKey, IntegrationId, Link, Origin, ServiceId, Severity};
    use crate::incident::{Incident, IncidentId, IncidentStatus, TransitionKind};
    use crate::notify::{Channel, NotificationJob};
    use crate::providers::ProviderKind;

    pub(crate) fn opened_at() -> DateTime<Utc> {
        // 2024-06-10T06:13:20Z
        Utc.timestamp_opt(1_718_000_000, 0).single().expect("a valid timestamp")
    }

    pub(crate) fn context() -> RenderContext {
        RenderContext {
            public_url: Some("https://tocsin.example.com/".to_owned()),
            action_links: None,
        }
    }

    /// As [`context`], with one-click action links signed by a fixed secret.
    pub(crate) fn context_with_links() -> RenderContext {
        RenderContext {
            action_links: Some(
                crate::links::ActionSigner::new(crate::config::Secret::new("render-fixture-secret-0123456789abcdef"))
                    .expect("a long enough secret"),
            ),
            ..context()
        }
    }

    pub(crate) fn incident(kind: TransitionKind) -> Incident {
        let opened = opened_at();
        let acknowledged = opened + Duration::seconds(7 * 60 + 21);
        let resolved = opened + Duration::seconds(42 * 60 + 5);
        let mut incident = Incident {
            id: IncidentId::parse("inc_3f9a1c07d2e84b6a90c1").expect("a valid incident id"),
            service: ServiceId::parse("checkout").expect("a valid service id"),
            dedup_key: DedupKey::parse("disk-full/db-1/var").expect("a valid dedup key"),
            status: IncidentStatus::Open,
            severity: Severity::Critical,
            summary: "Disk /var on db-1 is 97% full".to_owned(),
            source: "db-1.prod.example.net".to_owned(),
            occurrences: 3,
            origin: Origin::Integration {
                integration: IntegrationId::parse("alertmanager").expect("a valid integration id"),
                provider: ProviderKind::Prometheus,
            },
            custom_details: Some(json!({
                "alertname": "DiskFull",
                "value": 97.4,
                "firing": true,
                "labels": {"instance": "db-1:9100", "mountpoint": "/var", "team": "payments"},
                "annotations": {"description": "Less than 3% left & <falling> fast"},
                "thresholds": [90, 95],
            })),
            links: vec![
                Link {
                    href: "https://grafana.example.com/d/disk?var-host=db-1&from=now-6h".to_owned(),
                    text: Some("Grafana: disk usage".to_owned()),
                },
                Link {
                    href: "https://runbooks.example.com/disk-full".to_owned(),
                    text: None,
                },
            ],
            created_at: opened,
            updated_at: opened,
            last_seen_at: opened + Duration::seconds(120),
            last_transition_at: opened,
            transition_clock: crate::incident::TransitionClock {
                received_at: opened,
                provider: None,
            },
            acknowledged_at: None,
            resolved_at: None,
            acknowledged_by: None,
            resolved_by: None,
            version: 1,
            store_notes: Default::default(),
        };
        // Escalated: still open, as when triggered.
        if matches!(kind, TransitionKind::Acknowledged | TransitionKind::Resolved) {
            incident.status = IncidentStatus::Acknowledged;
            incident.acknowledged_at = Some(acknowledged);
            incident.acknowledged_by = Some("slack:@alice (U024BE7LH)".to_owned());
            incident.last_transition_at = acknowledged;
            incident.updated_at = acknowledged;
            incident.version = 4;
        }
        if kind == TransitionKind::Resolved {
            incident.status = IncidentStatus::Resolved;
            incident.resolved_at = Some(resolved);
            incident.resolved_by = Some("prometheus".to_owned());
            incident.last_transition_at = resolved;
            incident.updated_at = resolved;
            incident.version = 5;
        }
        incident
    }

    pub(crate) fn job(channel: Channel, kind: TransitionKind) -> NotificationJob {
        let incident = incident(kind);
        let to = match channel {
            Channel::Email => "oncall@example.com",
            Channel::Sms => "+15555550123",
            Channel::Slack => "#checkout",
            Channel::Webhook => "generic:hooks.example.com#0",
        };
        NotificationJob {
            id: format!("{}:{}:{}:{}", incident.id, incident.version, channel, to),
            channel,
            to: to.to_owned(),
            transition: kind,
            service_name: "Checkout".to_owned(),
            planned_at: incident.last_transition_at + Duration::seconds(2),
            incident,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use serde_json::json;

    use super::*;

    #[test]
    fn truncation_cuts_on_character_boundaries_and_marks_the_cut() {
        assert_eq!(truncate_chars("short", 10), "short");
        assert_eq!(truncate_chars("exactly", 7), "exactly");
        assert_eq!(truncate_chars("éééééé", 4), "ééé…");
        assert_eq!(truncate_chars("abc", 0), "");
        assert_eq!(truncate_chars("ab cd", 4), "ab…");
    }

    #[test]
    fn one_line_collapses_whitespace_and_drops_controls() {
        assert_eq!(one_line("  a\n\tb\r\n c\u{7}d "), "a b c d");
    }

    #[test]
    fn details_flatten_one_level_and_render_non_strings_as_json() {
        let rows = detail_rows(Some(&json!({
            "b": {"x": 1, "y": {"deep": true}},
            "a": "text",
            "c": [1, "two"],
            "e": {},
        })));
        assert_eq!(
            rows,
            vec![
                ("a".into(), "text".into()),
                ("b.x".into(), "1".into()),
                ("b.y".into(), r#"{"deep":true}"#.into()),
                ("c".into(), r#"[1,"two"]"#.into()),
                ("e".into(), "{}".into()),
            ]
        );
        assert_eq!(
            detail_rows(Some(&json!("plain"))),
            vec![("details".into(), "plain".into())]
        );
        assert!(detail_rows(None).is_empty());
    }

    #[test]
    fn the_incident_url_ignores_a_trailing_slash() {
        let incident = fixtures::incident(TransitionKind::Triggered);
        assert_eq!(
            incident_url(&fixtures::context(), &incident).as_deref(),
            Some("https://tocsin.example.com/incidents/inc_3f9a1c07d2e84b6a90c1")
        );
        assert_eq!(incident_url(&RenderContext::default(), &incident), None);
    }

    #[test]
    fn durations_read_like_people_write_them() {
        let t = fixtures::opened_at();
        assert_eq!(duration(t, t + Duration::seconds(45)), "45s");
        assert_eq!(duration(t, t + Duration::seconds(7 * 60)), "7m");
        assert_eq!(duration(t, t + Duration::seconds(441)), "7m 21s");
        assert_eq!(duration(t, t + Duration::seconds(3 * 3600 + 300)), "3h 5m");
        assert_eq!(duration(t, t + Duration::seconds(2 * 86_400 + 4 * 3600)), "2d 4h");
        assert_eq!(duration(t, t - Duration::seconds(5)), "0s");
    }

    #[test]
    fn actors_read_as_people_name_them() {
        assert_eq!(actor_title("slack:@alice (U024BE7LH)"), "alice (Slack)");
        assert_eq!(actor_title("slack:@alice"), "alice (Slack)");
        assert_eq!(actor_title("slack:U024BE7LH"), "U024BE7LH (Slack)");
        assert_eq!(actor_title("api-key:deploy-bot"), "deploy-bot (API key)");
        assert_eq!(
            actor_title("link:oncall@example.com"),
            "oncall@example.com (action link)"
        );
        assert_eq!(actor_title("link"), "an action link");
        assert_eq!(actor_title("prometheus"), "prometheus");
        assert_eq!(actor_title("heartbeat nightly\nbackup"), "heartbeat nightly backup");
        assert_eq!(actor_title(&"x".repeat(200)).chars().count(), 80);
    }

    #[test]
    fn only_web_links_are_links() {
        assert!(is_web_link("https://example.com"));
        assert!(is_web_link("HTTP://example.com"));
        assert!(!is_web_link("javascript:alert(1)"));
        assert!(!is_web_link("data:text/html,hi"));
    }

    #[test]
    fn every_channel_renders_its_own_message() {
        let ctx = fixtures::context();
        for channel in Channel::ALL {
            let message = render(&fixtures::job(channel, TransitionKind::Triggered), &ctx);
            let matches = matches!(
                (channel, &message),
                (Channel::Email, Message::Email { .. })
                    | (Channel::Sms, Message::Sms { .. })
                    | (Channel::Slack, Message::Slack { .. })
                    | (Channel::Webhook, Message::Webhook { .. })
            );
            assert!(matches, "{channel}: {message:?}");
        }
    }
}
