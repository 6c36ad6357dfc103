//! Email: a subject that reads well in an inbox list, a plain-text body and
//! an HTML body. The HTML uses inline styles only, because mail clients drop
//! `<style>` blocks, and escapes everything the alert sent.

use super::escape_html as escape;
use super::{
    action_links, actor_title, color, detail_rows, headline, incident_url, is_web_link, one_line, severity_title,
    status_title, summary, timestamp, transition_title, truncate_chars, ActionLink, RenderContext,
};
use crate::links::LinkAction;
use crate::notify::{Message, NotificationJob};

/// Subjects longer than this are cut in the summary.
pub const MAX_SUBJECT_CHARS: usize = 150;
/// Custom details beyond this many rows are counted, not shown.
const MAX_DETAIL_ROWS: usize = 100;
const MAX_DETAIL_VALUE_CHARS: usize = 1_000;

pub fn render(job: &NotificationJob, ctx: &RenderContext) -> Message {
    let body = Body::of(job, ctx);
    Message::Email {
        subject: headline(job, MAX_SUBJECT_CHARS),
        text: body.text(),
        html: body.html(),
    }
}

/// What both bodies show, already cut to size.
struct Body<'a> {
    job: &'a NotificationJob,
    color: &'static str,
    summary: String,
    facts: Vec<(&'static str, String)>,
    details: Vec<(String, String)>,
    hidden_details: usize,
    /// (text, href); only web links.
    links: Vec<(String, String)>,
    incident_url: Option<String>,
    /// One-click acknowledge and resolve, signed for this recipient.
    actions: Vec<ActionLink>,
}

impl<'a> Body<'a> {
    fn of(job: &'a NotificationJob, ctx: &RenderContext) -> Self {
        let incident = &job.incident;
        let mut facts = vec![
            ("Service", job.service_name.clone()),
            ("Status", status_title(incident.status).to_owned()),
            ("Severity", severity_title(incident.severity).to_owned()),
            ("Source", incident.source.clone()),
            ("Dedup key", incident.dedup_key.to_string()),
            ("Occurrences", incident.occurrences.to_string()),
            ("Created", timestamp(incident.created_at)),
        ];
        if let Some(at) = incident.acknowledged_at {
            facts.push(("Acknowledged", timestamp(at)));
        }
        if let Some(by) = &incident.acknowledged_by {
            facts.push(("Acknowledged by", actor_title(by)));
        }
        if let Some(at) = incident.resolved_at {
            facts.push(("Resolved", timestamp(at)));
        }
        if let Some(by) = &incident.resolved_by {
            facts.push(("Resolved by", actor_title(by)));
        }
        facts.push(("Incident", incident.id.to_string()));

        let mut details = detail_rows(incident.custom_details.as_ref());
        let hidden_details = details.len().saturating_sub(MAX_DETAIL_ROWS);
        details.truncate(MAX_DETAIL_ROWS);
        for (_, value) in &mut details {
            *value = truncate_chars(value, MAX_DETAIL_VALUE_CHARS).into_owned();
        }

        let links = incident
            .links
            .iter()
            .filter(|link| is_web_link(&link.href))
            .map(|link| {
                let text = link.text.as_deref().map(one_line).filter(|t| !t.is_empty());
                (text.unwrap_or_else(|| link.href.clone()), link.href.trim().to_owned())
            })
            .collect();

        Body {
            job,
            color: color(job),
            summary: summary(incident),
            facts,
            details,
            hidden_details,
            links,
            incident_url: incident_url(ctx, incident),
            actions: action_links(job, ctx, &[LinkAction::Acknowledge, LinkAction::Resolve], Some(&job.to)),
        }
    }

    /// `CRITICAL · TRIGGERED`, or `RESOLVED` once resolved.
    fn kicker(&self) -> String {
        format!(
            "{} · {}",
            self.job.incident.severity.as_str().to_uppercase(),
            transition_title(self.job.transition).to_uppercase()
        )
    }

    /// What the one-click links do and until when.
    fn actions_note(&self) -> Option<String> {
        let expires = self.actions.first()?.expires_at;
        Some(format!(
            "Each link asks you to confirm before it changes anything, and works until {}.",
            timestamp(expires)
        ))
    }

    fn text(&self) -> String {
        let mut out = format!("{}\n{}\n\n", self.kicker(), self.summary);

        let width = self.facts.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0) + 2;
        for (key, value) in &self.facts {
            out.push_str(&format!("{:<width$}{}\n", format!("{key}:"), one_line(value)));
        }

        if !self.details.is_empty() {
            out.push_str("\nDetails\n");
            let width = self
                .details
                .iter()
                .map(|(k, _)| k.chars().count())
                .max()
                .unwrap_or(0)
                .min(32)
                + 2;
            for (key, value) in &self.details {
                out.push_str(&format!("  {:<width$}{}\n", format!("{key}:"), one_line(value)));
            }
            if self.hidden_details > 0 {
                out.push_str(&format!("  … and {} more\n", self.hidden_details));
            }
        }

        if !self.links.is_empty() {
            out.push_str("\nLinks\n");
            for (text, href) in &self.links {
                if text == href {
                    out.push_str(&format!("  {href}\n"));
                } else {
                    out.push_str(&format!("  {text} <{href}>\n"));
                }
            }
        }

        if !self.actions.is_empty() {
            out.push('\n');
            let width = self.actions.iter().map(|a| a.action.title().len()).max().unwrap_or(0) + 2;
            for link in &self.actions {
                out.push_str(&format!(
                    "{:<width$}{}\n",
                    format!("{}:", link.action.title()),
                    link.url
                ));
            }
        }

        if let Some(url) = &self.incident_url {
            out.push_str(&format!("\nOpen the incident: {url}\n"));
        }

        if let Some(note) = self.actions_note() {
            out.push_str(&format!("\n{note}\n"));
        }

        out.push_str(&format!(
            "\n-- \nSent by Tocsin for incident {} (notification {}).\n",
            self.job.incident.id, self.job.id
        ));
        out
    }

    fn html(&self) -> String {
        let color = self.color;
        let font = "font-family:-apple-system,BlinkMacSystemFont,'Segoe UI',Helvetica,Arial,sans-serif";
        let label = "padding:4px 16px 4px 0;color:#57606a;font-size:14px;vertical-align:top;white-space:nowrap";
        let value = "padding:4px 0;color:#1f2328;font-size:14px;vertical-align:top;word-break:break-word";
        let heading = "margin:0 0 8px;font-size:13px;font-weight:bold;text-transform:uppercase;letter-spacing:0.04em;color:#57606a";

        let mut out = String::with_capacity(4_096);
        out.push_str("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n");
        out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
        out.push_str(&format!(
            "<title>{}</title>\n",
            escape(&headline(self.job, MAX_SUBJECT_CHARS))
        ));
        out.push_str("</head>\n<body style=\"margin:0;padding:0;background:#f4f5f7\">\n");
        out.push_str(
            "<table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" style=\"background:#f4f5f7\">\n\
             <tr><td align=\"center\" style=\"padding:24px 12px\">\n",
        );
        out.push_str(&format!(
            "<table role=\"presentation\" width=\"600\" cellpadding=\"0\" cellspacing=\"0\" \
             style=\"width:100%;max-width:600px;background:#ffffff;border:1px solid #d0d7de;border-radius:6px;{font}\">\n"
        ));
        out.push_str(&format!(
            "<tr><td style=\"height:6px;background:{color};border-radius:6px 6px 0 0;font-size:0;line-height:0\">&nbsp;</td></tr>\n"
        ));

        out.push_str("<tr><td style=\"padding:20px 24px 8px\">\n");
        out.push_str(&format!(
            "<p style=\"margin:0 0 6px;font-size:12px;font-weight:bold;letter-spacing:0.06em;color:{color}\">{}</p>\n",
            escape(&self.kicker())
        ));
        out.push_str(&format!(
            "<h1 style=\"margin:0;font-size:20px;line-height:1.35;color:#1f2328;word-break:break-word\">{}</h1>\n",
            escape(&self.summary)
        ));
        out.push_str("</td></tr>\n");

        out.push_str("<tr><td style=\"padding:12px 24px\">\n");
        out.push_str("<table role=\"presentation\" cellpadding=\"0\" cellspacing=\"0\">\n");
        for (key, text) in &self.facts {
            out.push_str(&format!(
                "<tr><td style=\"{label}\">{}</td><td style=\"{value}\">{}</td></tr>\n",
                escape(key),
                escape(text)
            ));
        }
        out.push_str("</table>\n</td></tr>\n");

        if !self.details.is_empty() {
            out.push_str("<tr><td style=\"padding:12px 24px\">\n");
            out.push_str(&format!("<p style=\"{heading}\">Details</p>\n"));
            out.push_str(
                "<table role=\"presentation\" cellpadding=\"0\" cellspacing=\"0\" \
                 style=\"width:100%;border-collapse:collapse;font-size:13px\">\n",
            );
            for (key, text) in &self.details {
                out.push_str(&format!(
                    "<tr><td style=\"padding:4px 12px 4px 0;border-top:1px solid #eaeef2;color:#57606a;vertical-align:top;white-space:nowrap\">{}</td>\
                     <td style=\"padding:4px 0;border-top:1px solid #eaeef2;color:#1f2328;vertical-align:top;white-space:pre-wrap;word-break:break-word;font-family:SFMono-Regular,Menlo,Consolas,monospace\">{}</td></tr>\n",
                    escape(key),
                    escape(text)
                ));
            }
            if self.hidden_details > 0 {
                out.push_str(&format!(
                    "<tr><td colspan=\"2\" style=\"padding:4px 0;border-top:1px solid #eaeef2;color:#57606a\">… and {} more</td></tr>\n",
                    self.hidden_details
                ));
            }
            out.push_str("</table>\n</td></tr>\n");
        }

        if !self.links.is_empty() {
            out.push_str("<tr><td style=\"padding:12px 24px\">\n");
            out.push_str(&format!("<p style=\"{heading}\">Links</p>\n"));
            for (text, href) in &self.links {
                out.push_str(&format!(
                    "<p style=\"margin:0 0 4px;font-size:14px\"><a href=\"{}\" style=\"color:#0969da\">{}</a></p>\n",
                    escape(href),
                    escape(text)
                ));
            }
            out.push_str("</td></tr>\n");
        }

        if !self.actions.is_empty() || self.incident_url.is_some() {
            out.push_str("<tr><td style=\"padding:16px 24px 8px\">\n");
            for link in &self.actions {
                out.push_str(&format!(
                    "<a href=\"{}\" style=\"display:inline-block;margin:0 8px 8px 0;padding:10px 18px;background:#1f2328;\
                     color:#ffffff;font-size:14px;font-weight:bold;text-decoration:none;border-radius:4px\">{}</a>\n",
                    escape(&link.url),
                    link.action.title()
                ));
            }
            if let Some(url) = &self.incident_url {
                out.push_str(&format!(
                    "<a href=\"{}\" style=\"display:inline-block;padding:10px 18px;background:{color};color:#ffffff;\
                     font-size:14px;font-weight:bold;text-decoration:none;border-radius:4px\">Open the incident</a>\n",
                    escape(url)
                ));
            }
            if let Some(note) = self.actions_note() {
                out.push_str(&format!(
                    "<p style=\"margin:4px 0 0;font-size:12px;color:#57606a\">{}</p>\n",
                    escape(&note)
                ));
            }
            out.push_str("</td></tr>\n");
        }

        out.push_str(&format!(
            "<tr><td style=\"padding:16px 24px 20px;font-size:12px;color:#8c959f\">Sent by Tocsin for incident {} (notification {}).</td></tr>\n",
            escape(self.job.incident.id.as_str()),
            escape(&self.job.id)
        ));
        out.push_str("</table>\n</td></tr>\n</table>\n</body>\n</html>\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use insta::assert_snapshot;
    use serde_json::json;

    use super::*;
    use crate::event::Link;
    use crate::incident::TransitionKind;
    use crate::notify::Channel;
    use crate::render::fixtures;

    fn rendered(job: &NotificationJob, ctx: &RenderContext) -> (String, String, String) {
        match render(job, ctx) {
            Message::Email { subject, text, html } => (subject, text, html),
            other => panic!("not an email: {other:?}"),
        }
    }

    fn snapshot(kind: TransitionKind) -> String {
        let (subject, text, html) = rendered(&fixtures::job(Channel::Email, kind), &fixtures::context());
        format!("Subject: {subject}\n\n===== text =====\n{text}\n===== html =====\n{html}")
    }

    #[test]
    fn triggered() {
        assert_snapshot!(snapshot(TransitionKind::Triggered));
    }

    fn snapshot_with_links(kind: TransitionKind) -> String {
        let (subject, text, html) = rendered(&fixtures::job(Channel::Email, kind), &fixtures::context_with_links());
        format!("Subject: {subject}\n\n===== text =====\n{text}\n===== html =====\n{html}")
    }

    #[test]
    fn triggered_with_action_links() {
        assert_snapshot!(snapshot_with_links(TransitionKind::Triggered));
    }

    #[test]
    fn acknowledged_with_action_links() {
        assert_snapshot!(snapshot_with_links(TransitionKind::Acknowledged));
    }

    #[test]
    fn action_links_follow_the_incident_and_verify() {
        let ctx = fixtures::context_with_links();
        let signer = ctx.action_links.clone().unwrap();
        let urls = |kind| {
            let (_, text, _) = rendered(&fixtures::job(Channel::Email, kind), &ctx);
            text.lines()
                .filter_map(|line| {
                    line.split_once("https://tocsin.example.com/act/")
                        .map(|(_, t)| t.to_owned())
                })
                .map(|token| signer.verify(&token, fixtures::opened_at()).unwrap())
                .collect::<Vec<_>>()
        };
        let open = urls(TransitionKind::Triggered);
        let actions: Vec<_> = open.iter().map(|c| c.action).collect();
        assert_eq!(actions, [LinkAction::Acknowledge, LinkAction::Resolve]);
        assert!(open
            .iter()
            .all(|c| c.recipient.as_deref() == Some("oncall@example.com")));
        assert!(open.iter().all(|c| c.incident.as_str() == "inc_3f9a1c07d2e84b6a90c1"));
        let acknowledged: Vec<_> = urls(TransitionKind::Acknowledged).iter().map(|c| c.action).collect();
        assert_eq!(acknowledged, [LinkAction::Resolve]);
        assert!(urls(TransitionKind::Resolved).is_empty());
    }

    #[test]
    fn action_links_need_a_public_url_and_a_secret() {
        let job = fixtures::job(Channel::Email, TransitionKind::Triggered);
        let without_url = RenderContext {
            public_url: None,
            ..fixtures::context_with_links()
        };
        for ctx in [fixtures::context(), without_url] {
            let (_, text, html) = rendered(&job, &ctx);
            assert!(!text.contains("/act/"), "{text}");
            assert!(!html.contains("/act/"), "{html}");
            assert!(!text.contains("Acknowledge:"), "{text}");
        }
    }

    #[test]
    fn acknowledged() {
        assert_snapshot!(snapshot(TransitionKind::Acknowledged));
    }

    #[test]
    fn resolved() {
        assert_snapshot!(snapshot(TransitionKind::Resolved));
    }

    #[test]
    fn escalated() {
        assert_snapshot!(snapshot(TransitionKind::Escalated));
    }

    #[test]
    fn subjects_carry_severity_transition_and_service() {
        let ctx = fixtures::context();
        let subject = |kind| rendered(&fixtures::job(Channel::Email, kind), &ctx).0;
        assert_eq!(
            subject(TransitionKind::Triggered),
            "[CRITICAL] Triggered: Disk /var on db-1 is 97% full (Checkout)"
        );
        assert_eq!(
            subject(TransitionKind::Acknowledged),
            "[CRITICAL] Acknowledged: Disk /var on db-1 is 97% full (Checkout)"
        );
        assert_eq!(
            subject(TransitionKind::Resolved),
            "[RESOLVED] Disk /var on db-1 is 97% full (Checkout)"
        );
    }

    #[test]
    fn long_summaries_are_cut_in_the_subject_on_a_character_boundary() {
        let mut job = fixtures::job(Channel::Email, TransitionKind::Triggered);
        job.incident.summary = "Ünïcödé\nsummary ".repeat(40);
        let (subject, text, _) = rendered(&job, &fixtures::context());
        assert!(subject.chars().count() <= MAX_SUBJECT_CHARS, "{subject}");
        assert!(subject.ends_with("… (Checkout)"), "{subject}");
        assert!(!subject.contains('\n'));
        // The body keeps the whole summary.
        assert!(text.contains(&"Ünïcödé summary ".repeat(39)));
    }

    #[test]
    fn html_escapes_what_the_alert_sent() {
        let mut job = fixtures::job(Channel::Email, TransitionKind::Triggered);
        job.incident.summary = "<script>alert('x')</script> & co".to_owned();
        job.incident.source = "\"><img src=x onerror=alert(1)>".to_owned();
        job.incident.custom_details = Some(json!({"<b>": "</td><script>"}));
        job.incident.links = vec![Link {
            href: "https://example.com/?a=1&b=\"2\"".to_owned(),
            text: Some("<i>dash</i>".to_owned()),
        }];
        let (_, text, html) = rendered(&job, &fixtures::context());
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(!html.contains("<i>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co"),
            "{html}"
        );
        assert!(
            html.contains("href=\"https://example.com/?a=1&amp;b=&quot;2&quot;\""),
            "{html}"
        );
        // The text body is plain text: nothing to escape.
        assert!(text.contains("<script>alert('x')</script> & co"));
    }

    #[test]
    fn only_web_links_become_links() {
        let mut job = fixtures::job(Channel::Email, TransitionKind::Triggered);
        job.incident.links = vec![Link {
            href: "javascript:alert(1)".to_owned(),
            text: Some("click".to_owned()),
        }];
        let (_, text, html) = rendered(&job, &fixtures::context());
        assert!(!html.contains("javascript:"), "{html}");
        assert!(!text.contains("javascript:"), "{text}");
    }

    #[test]
    fn without_a_public_url_there_is_no_incident_link() {
        let job = fixtures::job(Channel::Email, TransitionKind::Triggered);
        let (_, text, html) = rendered(&job, &RenderContext::default());
        assert!(!text.contains("/incidents/"), "{text}");
        assert!(!html.contains("/incidents/"), "{html}");
    }

    #[test]
    fn details_are_bounded() {
        let mut job = fixtures::job(Channel::Email, TransitionKind::Triggered);
        let many: serde_json::Map<String, serde_json::Value> = (0..150)
            .map(|i| (format!("k{i:03}"), json!("x".repeat(5_000))))
            .collect();
        job.incident.custom_details = Some(serde_json::Value::Object(many));
        let (_, text, html) = rendered(&job, &fixtures::context());
        assert!(text.contains("… and 50 more"), "{text}");
        assert!(html.contains("… and 50 more"));
        assert!(!text.contains("k100:"));
        assert!(text.len() < 150_000, "{}", text.len());
    }
}
