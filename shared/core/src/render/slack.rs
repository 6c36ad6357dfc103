//! Slack: Block Kit inside one attachment, so that the message carries a
//! color bar by severity, with Acknowledge / Resolve / View buttons.
//!
//! Everything the alert sent is escaped for mrkdwn (`&`, `<`, `>`), so an
//! alert can neither mention `@channel` nor forge a link, and every text is
//! cut to Slack's limits, which would otherwise refuse the whole message.

use serde_json::{json, Value};

use super::{
    actor_title, color, detail_rows, duration, headline, incident_url, is_web_link, one_line, severity_title,
    status_title, summary, timestamp, transition_title, truncate_chars, RenderContext,
};
use crate::incident::{Incident, IncidentStatus, TransitionKind};
use crate::notify::{Message, NotificationJob};

/// Slack's limit on a section's text (and a context element's).
pub const MAX_SECTION_TEXT_CHARS: usize = 3_000;
/// Slack's limit on the fields of one section.
pub const MAX_SECTION_FIELDS: usize = 10;
/// Slack's limit on one field's text.
pub const MAX_FIELD_TEXT_CHARS: usize = 2_000;
/// Slack's limit on a header's text.
pub const MAX_HEADER_CHARS: usize = 150;
/// Slack's limit on a button's URL.
const MAX_BUTTON_URL_CHARS: usize = 3_000;
const MAX_FALLBACK_CHARS: usize = 300;
const MAX_DETAIL_VALUE_CHARS: usize = 300;
const MAX_LINKS: usize = 10;

/// The `action_id`s of the buttons, which the interactions endpoint answers.
pub const ACKNOWLEDGE_ACTION_ID: &str = "tocsin_acknowledge";
pub const RESOLVE_ACTION_ID: &str = "tocsin_resolve";
pub const VIEW_ACTION_ID: &str = "tocsin_view";
/// The `block_id` of the buttons' block.
pub const ACTIONS_BLOCK_ID: &str = "tocsin_incident_actions";

pub fn render(job: &NotificationJob, ctx: &RenderContext) -> Message {
    let incident = &job.incident;
    let url = incident_url(ctx, incident);
    let mut blocks = vec![
        header(job),
        summary_section(incident, url.as_deref()),
        fields_section(job),
    ];
    blocks.extend(actors_context(incident));
    blocks.extend(details_section(incident));
    blocks.extend(links_context(incident));
    blocks.extend(actions(incident, url.as_deref()));
    Message::Slack {
        channel: job.to.clone(),
        text: escape(&headline(job, MAX_FALLBACK_CHARS)),
        attachments: json!([{ "color": color(job), "blocks": blocks }]),
    }
}

/// Escapes text for Slack's mrkdwn: `&`, `<` and `>`, and nothing else.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match entity(c) {
            Some(entity) => out.push_str(entity),
            None => out.push(c),
        }
    }
    out
}

fn entity(c: char) -> Option<&'static str> {
    match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        _ => None,
    }
}

/// Escapes `text` and cuts it to at most `max` characters once escaped,
/// ending in `…` when cut, never inside an entity.
fn escape_within(text: &str, max: usize) -> String {
    let whole = escape(text);
    if whole.chars().count() <= max || max == 0 {
        return if max == 0 { String::new() } else { whole };
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let width = entity(c).map_or(1, str::len);
        if used + width + 1 > max {
            break;
        }
        match entity(c) {
            Some(entity) => out.push_str(entity),
            None => out.push(c),
        }
        used += width;
    }
    out.push('…');
    out
}

/// A URL inside `<url|label>`: escaped, and a `|` would end it early.
fn link_target(url: &str) -> String {
    escape(url.trim()).replace('|', "%7C")
}

/// A time every reader sees in their own time zone, with RFC 3339 UTC where
/// the client cannot format it.
fn local_time(at: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "<!date^{}^{{date_short_pretty}} at {{time}}|{}>",
        at.timestamp(),
        timestamp(at)
    )
}

fn plain_text(text: &str) -> Value {
    json!({ "type": "plain_text", "text": text, "emoji": true })
}

fn mrkdwn(text: String) -> Value {
    json!({ "type": "mrkdwn", "text": text })
}

fn header(job: &NotificationJob) -> Value {
    let emoji = match job.transition {
        TransitionKind::Triggered => ":rotating_light:",
        TransitionKind::Acknowledged => ":eyes:",
        TransitionKind::Resolved => ":white_check_mark:",
        TransitionKind::Escalated => ":rotating_light:",
    };
    let text = format!(
        "{emoji} {}: {}",
        transition_title(job.transition),
        one_line(&job.service_name)
    );
    json!({ "type": "header", "text": plain_text(&truncate_chars(&text, MAX_HEADER_CHARS)) })
}

/// The summary in bold, linked to the incident's page when there is one.
fn summary_section(incident: &Incident, url: Option<&str>) -> Value {
    let summary = summary(incident);
    let linked = url.map(link_target).and_then(|target| {
        // `*<` + target + `|` + summary + `>*`
        let room = MAX_SECTION_TEXT_CHARS.checked_sub(target.chars().count() + 5)?;
        (room >= 20).then(|| format!("*<{target}|{}>*", escape_within(&summary, room)))
    });
    let text = linked.unwrap_or_else(|| format!("*{}*", escape_within(&summary, MAX_SECTION_TEXT_CHARS - 2)));
    json!({ "type": "section", "text": mrkdwn(text) })
}

fn fields_section(job: &NotificationJob) -> Value {
    let incident = &job.incident;
    let mut fields: Vec<(&str, String)> = vec![
        ("Service", escape(&one_line(&job.service_name))),
        ("Status", status_title(incident.status).to_owned()),
        ("Severity", severity_title(incident.severity).to_owned()),
        ("Source", escape(&one_line(&incident.source))),
        ("Occurrences", incident.occurrences.to_string()),
        ("Opened at", local_time(incident.created_at)),
    ];
    if let Some(at) = incident.acknowledged_at {
        let after = duration(incident.created_at, at);
        fields.push(("Acknowledged at", format!("{} (after {after})", local_time(at))));
    }
    if let Some(at) = incident.resolved_at {
        let after = duration(incident.created_at, at);
        fields.push(("Resolved at", format!("{} (after {after})", local_time(at))));
    }
    fields.push(("Dedup key", escape(incident.dedup_key.as_str())));

    let fields: Vec<Value> = fields
        .into_iter()
        .take(MAX_SECTION_FIELDS)
        .map(|(label, value)| {
            let text = format!("*{label}*\n{value}");
            if text.chars().count() <= MAX_FIELD_TEXT_CHARS {
                mrkdwn(text)
            } else {
                // Only the alert's own values (already escaped) can be this
                // long: cut them again from the raw text.
                let raw = match label {
                    "Source" => incident.source.as_str(),
                    "Dedup key" => incident.dedup_key.as_str(),
                    _ => job.service_name.as_str(),
                };
                let room = MAX_FIELD_TEXT_CHARS - label.chars().count() - 3;
                mrkdwn(format!("*{label}*\n{}", escape_within(&one_line(raw), room)))
            }
        })
        .collect();
    json!({ "type": "section", "fields": fields })
}

/// `Acknowledged by alice (Slack)  ·  Resolved by prometheus`, once
/// someone or something has.
fn actors_context(incident: &Incident) -> Option<Value> {
    let text = actors_line(incident)?;
    Some(json!({ "type": "context", "elements": [mrkdwn(text)] }))
}

/// Who acknowledged and who resolved, escaped for mrkdwn: also the thread
/// reply's wording (tocsin-outbound).
pub fn actors_line(incident: &Incident) -> Option<String> {
    let parts: Vec<String> = [
        ("Acknowledged", incident.acknowledged_by.as_deref()),
        ("Resolved", incident.resolved_by.as_deref()),
    ]
    .into_iter()
    .filter_map(|(what, by)| Some(format!("{what} by {}", escape(&actor_title(by?)))))
    .collect();
    (!parts.is_empty()).then(|| parts.join("  ·  "))
}

/// The custom details as `key: value` lines, as many as fit one section.
fn details_section(incident: &Incident) -> Option<Value> {
    let rows = detail_rows(incident.custom_details.as_ref());
    if rows.is_empty() {
        return None;
    }
    // Room kept for the line that counts what did not fit.
    const RESERVED: usize = 40;
    let mut text = "*Details*".to_owned();
    let mut used = text.chars().count();
    let mut shown = 0;
    for (key, value) in &rows {
        let line = format!(
            "\n• *{}:* {}",
            escape_within(&one_line(key), 100),
            escape_within(&one_line(value), MAX_DETAIL_VALUE_CHARS)
        );
        let width = line.chars().count();
        if used + width > MAX_SECTION_TEXT_CHARS - RESERVED {
            break;
        }
        text.push_str(&line);
        used += width;
        shown += 1;
    }
    if shown < rows.len() {
        text.push_str(&format!("\n_… and {} more_", rows.len() - shown));
    }
    Some(json!({ "type": "section", "text": mrkdwn(text) }))
}

/// The alert's web links, as many as fit one context element.
fn links_context(incident: &Incident) -> Option<Value> {
    let mut text = String::new();
    for link in incident.links.iter().filter(|l| is_web_link(&l.href)).take(MAX_LINKS) {
        let target = link_target(&link.href);
        let label = link.text.as_deref().map(one_line).filter(|t| !t.is_empty());
        let piece = match label {
            Some(label) => format!("<{target}|{}>", escape_within(&label, 200)),
            None => format!("<{target}>"),
        };
        let separator = if text.is_empty() { "" } else { "  ·  " };
        if text.chars().count() + separator.chars().count() + piece.chars().count() > MAX_SECTION_TEXT_CHARS {
            break;
        }
        text.push_str(separator);
        text.push_str(&piece);
    }
    (!text.is_empty()).then(|| json!({ "type": "context", "elements": [mrkdwn(text)] }))
}

/// Acknowledge while open, Resolve until resolved, View when there is a page.
fn actions(incident: &Incident, url: Option<&str>) -> Option<Value> {
    let mut buttons = Vec::new();
    if incident.status == IncidentStatus::Open {
        buttons.push(json!({
            "type": "button",
            "action_id": ACKNOWLEDGE_ACTION_ID,
            "text": plain_text("Acknowledge"),
            "value": incident.id.as_str(),
            "style": "primary",
        }));
    }
    if incident.status != IncidentStatus::Resolved {
        buttons.push(json!({
            "type": "button",
            "action_id": RESOLVE_ACTION_ID,
            "text": plain_text("Resolve"),
            "value": incident.id.as_str(),
            "style": "danger",
        }));
    }
    if let Some(url) = url.filter(|u| u.chars().count() <= MAX_BUTTON_URL_CHARS) {
        buttons.push(json!({
            "type": "button",
            "action_id": VIEW_ACTION_ID,
            "text": plain_text("View"),
            "url": url,
        }));
    }
    (!buttons.is_empty()).then(|| json!({ "type": "actions", "block_id": ACTIONS_BLOCK_ID, "elements": buttons }))
}

#[cfg(test)]
mod tests {
    use insta::assert_json_snapshot;

    use super::*;
    use crate::event::Link;
    use crate::notify::Channel;
    use crate::render::fixtures;

    fn rendered(job: &NotificationJob, ctx: &RenderContext) -> (String, String, Value) {
        match render(job, ctx) {
            Message::Slack {
                channel,
                text,
                attachments,
            } => (channel, text, attachments),
            other => panic!("not a Slack message: {other:?}"),
        }
    }

    fn blocks(attachments: &Value) -> &Vec<Value> {
        attachments[0]["blocks"].as_array().expect("blocks")
    }

    fn block<'a>(attachments: &'a Value, kind: &str) -> Option<&'a Value> {
        blocks(attachments).iter().find(|b| b["type"] == kind)
    }

    fn action_ids(attachments: &Value) -> Vec<String> {
        block(attachments, "actions")
            .map(|b| {
                b["elements"]
                    .as_array()
                    .expect("elements")
                    .iter()
                    .map(|e| e["action_id"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every text within Slack's limits.
    fn assert_within_limits(attachments: &Value) {
        for block in blocks(attachments) {
            match block["type"].as_str() {
                Some("header") => {
                    let text = block["text"]["text"].as_str().expect("header text");
                    assert!(text.chars().count() <= MAX_HEADER_CHARS, "{text}");
                }
                Some("section") => {
                    if let Some(text) = block["text"]["text"].as_str() {
                        assert!(text.chars().count() <= MAX_SECTION_TEXT_CHARS, "{}", text.len());
                    }
                    if let Some(fields) = block["fields"].as_array() {
                        assert!(fields.len() <= MAX_SECTION_FIELDS);
                        for field in fields {
                            let text = field["text"].as_str().expect("field text");
                            assert!(text.chars().count() <= MAX_FIELD_TEXT_CHARS, "{}", text.len());
                        }
                    }
                }
                Some("context") => {
                    for element in block["elements"].as_array().expect("elements") {
                        let text = element["text"].as_str().expect("element text");
                        assert!(text.chars().count() <= MAX_SECTION_TEXT_CHARS, "{}", text.len());
                    }
                }
                _ => {}
            }
        }
    }

    /// Keys sorted whatever serde_json's `preserve_order` says.
    fn snapshot(kind: TransitionKind) {
        let job = fixtures::job(Channel::Slack, kind);
        insta::with_settings!({ sort_maps => true }, {
            assert_json_snapshot!(kind.as_str(), render(&job, &fixtures::context()));
        });
    }

    #[test]
    fn triggered() {
        snapshot(TransitionKind::Triggered);
    }

    #[test]
    fn acknowledged() {
        snapshot(TransitionKind::Acknowledged);
    }

    #[test]
    fn resolved() {
        snapshot(TransitionKind::Resolved);
    }

    #[test]
    fn escalated() {
        snapshot(TransitionKind::Escalated);
    }

    #[test]
    fn the_color_follows_severity_and_turns_green_on_resolve() {
        use crate::event::Severity;
        let ctx = fixtures::context();
        for (severity, expected) in [
            (Severity::Critical, "#D32F2F"),
            (Severity::Error, "#F57C00"),
            (Severity::Warning, "#FBC02D"),
            (Severity::Info, "#1976D2"),
        ] {
            for kind in [TransitionKind::Triggered, TransitionKind::Acknowledged] {
                let mut job = fixtures::job(Channel::Slack, kind);
                job.incident.severity = severity;
                assert_eq!(rendered(&job, &ctx).2[0]["color"], expected);
            }
            let mut job = fixtures::job(Channel::Slack, TransitionKind::Resolved);
            job.incident.severity = severity;
            assert_eq!(rendered(&job, &ctx).2[0]["color"], "#2E7D32");
        }
    }

    #[test]
    fn buttons_follow_the_status() {
        let ctx = fixtures::context();
        let ids = |kind, ctx: &RenderContext| action_ids(&rendered(&fixtures::job(Channel::Slack, kind), ctx).2);
        assert_eq!(
            ids(TransitionKind::Triggered, &ctx),
            [ACKNOWLEDGE_ACTION_ID, RESOLVE_ACTION_ID, VIEW_ACTION_ID]
        );
        assert_eq!(
            ids(TransitionKind::Acknowledged, &ctx),
            [RESOLVE_ACTION_ID, VIEW_ACTION_ID]
        );
        assert_eq!(ids(TransitionKind::Resolved, &ctx), [VIEW_ACTION_ID]);

        let local = RenderContext::default();
        assert_eq!(
            ids(TransitionKind::Triggered, &local),
            [ACKNOWLEDGE_ACTION_ID, RESOLVE_ACTION_ID]
        );
        let (_, _, attachments) = rendered(&fixtures::job(Channel::Slack, TransitionKind::Resolved), &local);
        assert!(
            block(&attachments, "actions").is_none(),
            "an empty actions block is refused by Slack"
        );
    }

    #[test]
    fn buttons_carry_the_incident_id() {
        let job = fixtures::job(Channel::Slack, TransitionKind::Triggered);
        let (channel, _, attachments) = rendered(&job, &fixtures::context());
        assert_eq!(channel, "#checkout");
        let actions = block(&attachments, "actions").expect("actions");
        assert_eq!(actions["elements"][0]["value"], job.incident.id.as_str());
        assert_eq!(actions["elements"][0]["style"], "primary");
        assert_eq!(actions["elements"][1]["value"], job.incident.id.as_str());
        assert_eq!(actions["elements"][1]["style"], "danger");
        assert_eq!(
            actions["elements"][2]["url"],
            "https://tocsin.example.com/incidents/inc_3f9a1c07d2e84b6a90c1"
        );
    }

    #[test]
    fn mrkdwn_escapes_only_ampersand_and_angle_brackets() {
        assert_eq!(
            escape("a & b < c > d *e* 'f' \"g\""),
            "a &amp; b &lt; c &gt; d *e* 'f' \"g\""
        );
        assert_eq!(escape_within("&&&&", 11), "&amp;&amp;…");
        assert_eq!(escape_within("&&&&", 10), "&amp;…");
        assert_eq!(escape_within("&&&&", 20), "&amp;&amp;&amp;&amp;");
    }

    #[test]
    fn an_alert_cannot_mention_everyone_or_forge_links() {
        let mut job = fixtures::job(Channel::Slack, TransitionKind::Triggered);
        job.incident.summary = "<!channel> look & <https://evil.example|click here>".to_owned();
        job.incident.source = "<@U123>".to_owned();
        job.incident.custom_details = Some(json!({"note": "<!here>"}));
        job.incident.links = vec![Link {
            href: "https://example.com/a|b>c".to_owned(),
            text: Some("<!everyone>".to_owned()),
        }];
        let (_, text, attachments) = rendered(&job, &fixtures::context());
        let all = format!("{text} {attachments}");
        for forbidden in ["<!channel>", "<!here>", "<!everyone>", "<@U123>", "<https://evil"] {
            assert!(!all.contains(forbidden), "{forbidden} in {all}");
        }
        assert!(
            text.contains("&lt;!channel&gt; look &amp; &lt;https://evil.example|click here&gt;"),
            "{text}"
        );
        let context = block(&attachments, "context").expect("links");
        assert_eq!(
            context["elements"][0]["text"],
            "<https://example.com/a%7Cb&gt;c|&lt;!everyone&gt;>"
        );
    }

    #[test]
    fn only_web_links_are_shown() {
        let mut job = fixtures::job(Channel::Slack, TransitionKind::Triggered);
        job.incident.links = vec![Link {
            href: "javascript:alert(1)".to_owned(),
            text: None,
        }];
        let (_, _, attachments) = rendered(&job, &fixtures::context());
        assert!(block(&attachments, "context").is_none());
    }

    #[test]
    fn huge_alerts_stay_within_slack_limits() {
        let mut job = fixtures::job(Channel::Slack, TransitionKind::Acknowledged);
        job.service_name = "Service ".repeat(100);
        job.incident.summary = "<&>".repeat(2_000);
        job.incident.source = "&".repeat(5_000);
        let many: serde_json::Map<String, Value> = (0..500)
            .map(|i| (format!("key<{i:03}>"), json!("v&".repeat(1_000))))
            .collect();
        job.incident.custom_details = Some(Value::Object(many));
        job.incident.links = (0..50)
            .map(|i| Link {
                href: format!("https://example.com/{i}?{}", "q&".repeat(200)),
                text: Some("t<".repeat(300)),
            })
            .collect();
        let (_, text, attachments) = rendered(&job, &fixtures::context());
        // Slack advises keeping the fallback under 4,000 characters.
        assert!(text.chars().count() < 2_000, "{}", text.len());
        assert_within_limits(&attachments);
        let details = blocks(&attachments)
            .iter()
            .filter_map(|b| b["text"]["text"].as_str())
            .find(|text| text.starts_with("*Details*"))
            .expect("details");
        assert!(details.ends_with(" more_"), "{details}");
        // An entity is never cut in two.
        let summary = blocks(&attachments)[1]["text"]["text"].as_str().expect("summary");
        assert!(summary.ends_with("…>*"), "{summary}");
        assert!(!summary.contains("&a…") && !summary.contains("&l…") && !summary.contains("&g…"));
    }

    #[test]
    fn the_sample_incident_is_within_limits() {
        for kind in [
            TransitionKind::Triggered,
            TransitionKind::Acknowledged,
            TransitionKind::Resolved,
        ] {
            let (_, _, attachments) = rendered(&fixtures::job(Channel::Slack, kind), &fixtures::context());
            assert_within_limits(&attachments);
        }
    }

    #[test]
    fn without_details_or_links_those_blocks_are_left_out() {
        let mut job = fixtures::job(Channel::Slack, TransitionKind::Triggered);
        job.incident.custom_details = None;
        job.incident.links.clear();
        let (_, _, attachments) = rendered(&job, &RenderContext::default());
        let kinds: Vec<&str> = blocks(&attachments).iter().filter_map(|b| b["type"].as_str()).collect();
        assert_eq!(kinds, ["header", "section", "section", "actions"]);
        assert_eq!(
            blocks(&attachments)[1]["text"]["text"],
            "*Disk /var on db-1 is 97% full*"
        );
    }
}
