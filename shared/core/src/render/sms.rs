//! SMS: one line, `CRIT Checkout: <summary> [triggered] inc_…`, fitted into a
//! single segment by shortening the summary. With action links configured,
//! an open incident's SMS ends in `Ack: <url>` instead of the incident id
//! (the link's page names it); the link is never cut: when even a short
//! summary leaves it no room in one segment, the message takes more.
//!
//! A segment holds 160 GSM-7 septets, or 70 UCS-2 code units once any
//! character falls outside GSM-7; a message of several segments loses room to
//! the concatenation header (153 and 67). Characters of the GSM-7 extension
//! table take two septets (an escape and the character).

use std::fmt;

use super::{action_links, one_line, summary, RenderContext};
use crate::event::Severity;
use crate::links::LinkAction;
use crate::notify::{Message, NotificationJob};

/// Which alphabet a text needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "gsm7",
            Encoding::Ucs2 => "ucs2",
        }
    }

    /// Units (septets or UTF-16 code units) in a message of one segment.
    pub fn single_segment(self) -> usize {
        match self {
            Encoding::Gsm7 => 160,
            Encoding::Ucs2 => 70,
        }
    }

    /// Units in each segment of a message of several.
    pub fn multi_segment(self) -> usize {
        match self {
            Encoding::Gsm7 => 153,
            Encoding::Ucs2 => 67,
        }
    }

    /// The units one character takes in this encoding.
    fn width(self, c: char) -> usize {
        match self {
            // Only asked of texts that are GSM-7 throughout.
            Encoding::Gsm7 => gsm7_width(c).unwrap_or(2),
            Encoding::Ucs2 => c.len_utf16(),
        }
    }

    fn length(self, text: &str) -> usize {
        text.chars().map(|c| self.width(c)).sum()
    }

    fn ellipsis(self) -> &'static str {
        // `…` is not in GSM-7.
        match self {
            Encoding::Gsm7 => "...",
            Encoding::Ucs2 => "…",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Septets a character takes in GSM-7 (3GPP TS 23.038): 1 in the basic set,
/// 2 in the extension table, `None` when GSM-7 cannot carry it.
pub fn gsm7_width(c: char) -> Option<usize> {
    match c {
        // The whole printable ASCII range is in the basic set except the
        // backtick and the extension characters.
        'A'..='Z' | 'a'..='z' | '0'..='9' => Some(1),
        ' ' | '!' | '"' | '#' | '$' | '%' | '&' | '\'' | '(' | ')' | '*' | '+' | ',' | '-' | '.' | '/' => Some(1),
        ':' | ';' | '<' | '=' | '>' | '?' | '@' | '_' | '\n' | '\r' => Some(1),
        '£' | '¥' | 'è' | 'é' | 'ù' | 'ì' | 'ò' | 'Ç' | 'Ø' | 'ø' | 'Å' | 'å' => Some(1),
        'Δ' | 'Φ' | 'Γ' | 'Λ' | 'Ω' | 'Π' | 'Ψ' | 'Σ' | 'Θ' | 'Ξ' => Some(1),
        'Æ' | 'æ' | 'ß' | 'É' | '¤' | '¡' | 'Ä' | 'Ö' | 'Ñ' | 'Ü' | '§' | '¿' | 'ä' | 'ö' | 'ñ' | 'ü' | 'à' => {
            Some(1)
        }
        '^' | '{' | '}' | '\\' | '[' | '~' | ']' | '|' | '€' | '\u{0C}' => Some(2),
        _ => None,
    }
}

/// Septets the text takes in GSM-7, or `None` when it needs UCS-2.
pub fn gsm7_length(text: &str) -> Option<usize> {
    text.chars().map(gsm7_width).sum()
}

/// UTF-16 code units the text takes in UCS-2 (a character beyond the Basic
/// Multilingual Plane, such as most emoji, takes two).
pub fn ucs2_length(text: &str) -> usize {
    text.encode_utf16().count()
}

pub fn encoding(text: &str) -> Encoding {
    if gsm7_length(text).is_some() {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    }
}

/// How many segments the text is sent as. A character is never split across
/// two segments: neither an escape pair nor a surrogate pair.
pub fn segments(text: &str) -> u32 {
    let encoding = encoding(text);
    if encoding.length(text) <= encoding.single_segment() {
        return 1;
    }
    let per_segment = encoding.multi_segment();
    let (mut count, mut used) = (1, 0);
    for c in text.chars() {
        let width = encoding.width(c);
        if used + width > per_segment {
            count += 1;
            used = 0;
        }
        used += width;
    }
    count
}

/// The service name's share of an SMS that carries a link.
const SERVICE_CHARS_WITH_LINK: usize = 30;
/// The summary's share of an SMS whose link takes more than one segment.
const SUMMARY_UNITS_WITH_LINK: usize = 40;

pub fn render(job: &NotificationJob, ctx: &RenderContext) -> Message {
    let incident = &job.incident;
    // SMS tokens name no recipient: a phone number would cost 16 characters.
    let link = action_links(job, ctx, &[LinkAction::Acknowledge], None).pop();
    let text = match link {
        None => {
            let head = format!("{} {}: ", severity_tag(incident.severity), one_line(&job.service_name));
            let tail = format!(" [{}] {}", job.transition, incident.id);
            fit(&head, &summary(incident), &tail)
        }
        Some(link) => {
            let mut service = one_line(&job.service_name);
            if service.chars().count() > SERVICE_CHARS_WITH_LINK {
                // `...`, not `…`: the ellipsis must not make the text UCS-2.
                let kept: String = service.chars().take(SERVICE_CHARS_WITH_LINK - 3).collect();
                service = format!("{}...", kept.trim_end());
            }
            let head = format!("{} {service}: ", severity_tag(incident.severity));
            let tail = format!(" [{}] Ack: {}", job.transition, link.url);
            fit_keeping_tail(&head, &summary(incident), &tail)
        }
    };
    Message::Sms {
        encoding: encoding(&text).as_str().to_owned(),
        segments: segments(&text),
        text,
    }
}

/// The one SMS that stands for a recipient's throttled notifications
/// (crate::throttle): `counts` are (service name, incidents), most first.
/// Always one segment: the services that do not fit are counted together.
pub fn render_bundle(counts: &[(String, usize)]) -> Message {
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    let noun = |n: usize| if n == 1 { "incident" } else { "incidents" };
    let tail = " held back by the SMS limit";
    let text = match counts.split_first() {
        None => format!("Tocsin: no more incidents{tail}"),
        Some(((first, n), rest)) => {
            let head = format!("Tocsin: {n} more {} on {}", noun(*n), one_line(first));
            let mut others: Vec<String> = Vec::new();
            let mut shown = *n;
            for (service, count) in rest {
                let candidate = format!("{count} on {}", one_line(service));
                let mut trial = others.clone();
                trial.push(candidate);
                let left = total - shown - count;
                let text = bundle_text(&head, &trial, left, tail);
                if encoding(&text).length(&text) > encoding(&text).single_segment() {
                    break;
                }
                others = trial;
                shown += count;
            }
            let text = bundle_text(&head, &others, total - shown, tail);
            // A service name too long for any of this: cut, never a second segment.
            let limit = encoding(&text).single_segment();
            prefix_within(&text, limit, encoding(&text)).to_owned()
        }
    };
    Message::Sms {
        encoding: encoding(&text).as_str().to_owned(),
        segments: segments(&text),
        text,
    }
}

fn bundle_text(head: &str, others: &[String], left: usize, tail: &str) -> String {
    let mut parts = others.to_vec();
    if left > 0 {
        parts.push(format!("{left} on other services"));
    }
    if parts.is_empty() {
        format!("{head}{tail}")
    } else {
        format!("{head} (and {}){tail}", parts.join(", "))
    }
}

fn severity_tag(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "CRIT",
        Severity::Error => "ERR",
        Severity::Warning => "WARN",
        Severity::Info => "INFO",
    }
}

/// `head + summary + tail` in one segment, the summary shortened as needed.
fn fit(head: &str, summary: &str, tail: &str) -> String {
    let full = format!("{head}{summary}{tail}");
    let encoding = encoding(&full);
    let limit = encoding.single_segment();
    if encoding.length(&full) <= limit {
        return full;
    }
    let ellipsis = encoding.ellipsis();
    let fixed = encoding.length(head) + encoding.length(tail) + encoding.length(ellipsis);
    if fixed < limit {
        let kept = prefix_within(summary, limit - fixed, encoding).trim_end();
        format!("{head}{kept}{ellipsis}{tail}")
    } else {
        // A service name too long to leave room for any summary.
        prefix_within(&full, limit, encoding).to_owned()
    }
}

/// As [`fit`], but the tail (a link) is never cut: when it leaves no room
/// in one segment, the summary keeps [`SUMMARY_UNITS_WITH_LINK`] units and
/// the message takes more segments.
fn fit_keeping_tail(head: &str, summary: &str, tail: &str) -> String {
    let full = format!("{head}{summary}{tail}");
    let encoding = encoding(&full);
    let ellipsis = encoding.ellipsis();
    let fixed = encoding.length(head) + encoding.length(tail) + encoding.length(ellipsis);
    if encoding.length(&full) <= encoding.single_segment() {
        return full;
    }
    if fixed < encoding.single_segment() {
        return fit(head, summary, tail);
    }
    if encoding.length(summary) <= SUMMARY_UNITS_WITH_LINK {
        return full;
    }
    let kept = prefix_within(summary, SUMMARY_UNITS_WITH_LINK - encoding.length(ellipsis), encoding).trim_end();
    format!("{head}{kept}{ellipsis}{tail}")
}

/// The longest prefix of whole characters that takes at most `budget` units.
fn prefix_within(text: &str, budget: usize, encoding: Encoding) -> &str {
    let mut used = 0;
    for (i, c) in text.char_indices() {
        used += encoding.width(c);
        if used > budget {
            return &text[..i];
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use insta::assert_snapshot;

    use super::*;
    use crate::incident::TransitionKind;
    use crate::notify::Channel;
    use crate::render::fixtures;

    fn rendered(job: &NotificationJob) -> (String, String, u32) {
        match render(job, &fixtures::context()) {
            Message::Sms {
                text,
                encoding,
                segments,
            } => (text, encoding, segments),
            other => panic!("not an SMS: {other:?}"),
        }
    }

    fn snapshot(kind: TransitionKind) -> String {
        let (text, encoding, segments) = rendered(&fixtures::job(Channel::Sms, kind));
        format!(
            "{text}\n---\nencoding: {encoding}\nsegments: {segments}\nlength: {}",
            encoding_length(&text)
        )
    }

    fn encoding_length(text: &str) -> usize {
        gsm7_length(text).unwrap_or_else(|| ucs2_length(text))
    }

    fn job_with_summary(summary: &str) -> NotificationJob {
        let mut job = fixtures::job(Channel::Sms, TransitionKind::Triggered);
        job.incident.summary = summary.to_owned();
        job
    }

    #[test]
    fn triggered() {
        assert_snapshot!(snapshot(TransitionKind::Triggered));
    }

    fn bundle_snapshot(counts: &[(&str, usize)]) -> String {
        let counts: Vec<(String, usize)> = counts.iter().map(|(s, n)| ((*s).to_owned(), *n)).collect();
        let Message::Sms {
            text,
            encoding,
            segments,
        } = render_bundle(&counts)
        else {
            panic!("not an SMS")
        };
        format!(
            "{text}\n---\nencoding: {encoding}\nsegments: {segments}\nlength: {}",
            encoding_length(&text)
        )
    }

    #[test]
    fn bundle() {
        assert_snapshot!(bundle_snapshot(&[("Checkout", 9), ("Payments", 2), ("Search", 1)]));
    }

    #[test]
    fn bundle_of_one() {
        assert_snapshot!(bundle_snapshot(&[("Checkout", 1)]));
    }

    #[test]
    fn a_bundle_of_many_services_stays_in_one_segment_and_counts_them_all() {
        let names: Vec<(String, usize)> = (0..40).map(|i| (format!("Service number {i}"), 40 - i)).collect();
        let Message::Sms { text, segments, .. } = render_bundle(&names) else {
            panic!("not an SMS")
        };
        assert_eq!(segments, 1, "{text}");
        assert!(
            text.starts_with("Tocsin: 40 more incidents on Service number 0 (and 39 on Service number 1"),
            "{text}"
        );
        assert!(text.contains(" on other services)"), "{text}");
        // Every incident is counted: the numbers before " on " add up.
        let sum: usize = text
            .replacen(" more incidents", "", 1)
            .split(" on ")
            .filter_map(|part| part.rsplit([' ', '(']).next())
            .filter_map(|n| n.parse::<usize>().ok())
            .sum();
        let total: usize = names.iter().map(|(_, n)| n).sum();
        assert_eq!(sum, total, "{text}");

        let long = vec![("x".repeat(300), 3)];
        let Message::Sms { segments, .. } = render_bundle(&long) else {
            panic!("not an SMS")
        };
        assert_eq!(segments, 1);
    }

    fn rendered_with_links(job: &NotificationJob) -> (String, String, u32) {
        match render(job, &fixtures::context_with_links()) {
            Message::Sms {
                text,
                encoding,
                segments,
            } => (text, encoding, segments),
            other => panic!("not an SMS: {other:?}"),
        }
    }

    #[test]
    fn triggered_with_an_acknowledge_link() {
        let (text, encoding, segments) = rendered_with_links(&fixtures::job(Channel::Sms, TransitionKind::Triggered));
        assert_snapshot!(format!(
            "{text}\n---\nencoding: {encoding}\nsegments: {segments}\nlength: {}",
            encoding_length(&text)
        ));
    }

    /// The token at the end of an SMS, verified.
    fn claim_of(text: &str) -> crate::links::ActionClaim {
        let token = text.rsplit_once("/act/").map(|(_, t)| t).expect("a link");
        let signer = fixtures::context_with_links().action_links.unwrap();
        signer.verify(token, fixtures::opened_at()).unwrap()
    }

    #[test]
    fn the_link_acknowledges_and_names_no_recipient() {
        let (text, _, _) = rendered_with_links(&fixtures::job(Channel::Sms, TransitionKind::Triggered));
        let claim = claim_of(&text);
        assert_eq!(claim.action, LinkAction::Acknowledge);
        assert_eq!(claim.recipient, None);
        assert_eq!(claim.incident.as_str(), "inc_3f9a1c07d2e84b6a90c1");
        // Acknowledged and resolved incidents get no link.
        for kind in [TransitionKind::Acknowledged, TransitionKind::Resolved] {
            let (text, _, _) = rendered_with_links(&fixtures::job(Channel::Sms, kind));
            assert!(!text.contains("/act/"), "{text}");
            assert!(text.ends_with("inc_3f9a1c07d2e84b6a90c1"), "{text}");
        }
    }

    #[test]
    fn a_long_summary_gives_way_to_the_link_within_one_segment() {
        let mut job = job_with_summary(&"0123456789".repeat(30));
        job.service_name = "A service with a very long name indeed, longer than thirty".to_owned();
        let (text, encoding, segments) = rendered_with_links(&job);
        assert_eq!((encoding.as_str(), segments), ("gsm7", 1), "{text}");
        assert_eq!(gsm7_length(&text), Some(160), "{text}");
        assert!(
            text.contains("... [triggered] Ack: https://tocsin.example.com/act/"),
            "{text}"
        );
        claim_of(&text);
    }

    #[test]
    fn the_link_is_never_cut_even_when_it_needs_two_segments() {
        // UCS-2 leaves 70 units: not enough for the link alone.
        let job = job_with_summary(&"🔥 database on fire ".repeat(10));
        let (text, encoding, segments) = rendered_with_links(&job);
        assert_eq!(encoding, "ucs2");
        assert!(segments > 1, "{text}");
        claim_of(&text);
        assert!(text.starts_with("CRIT Checkout: 🔥"), "{text}");
        assert!(text.contains("… [triggered] Ack: "), "{text}");
        // So does a huge public URL.
        let mut ctx = fixtures::context_with_links();
        ctx.public_url = Some(format!("https://{}.example.com", "x".repeat(150)));
        let Message::Sms { text, segments, .. } = render(&job_with_summary("Disk full"), &ctx) else {
            panic!("an SMS")
        };
        assert!(segments > 1, "{text}");
        assert!(text.contains("Disk full [triggered] Ack: https://"), "{text}");
        claim_of(&text);
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
    fn a_short_summary_is_sent_whole() {
        let (text, encoding, segments) = rendered(&job_with_summary("Disk full"));
        assert_eq!(text, "CRIT Checkout: Disk full [triggered] inc_3f9a1c07d2e84b6a90c1");
        assert_eq!(encoding, "gsm7");
        assert_eq!(segments, 1);
    }

    #[test]
    fn a_long_ascii_summary_fills_exactly_one_gsm_segment() {
        let (text, encoding, segments) = rendered(&job_with_summary(&"0123456789".repeat(30)));
        assert_eq!(encoding, "gsm7");
        assert_eq!(segments, 1);
        assert_eq!(gsm7_length(&text), Some(160), "{text}");
        assert!(text.starts_with("CRIT Checkout: 0123456789"), "{text}");
        assert!(text.ends_with("... [triggered] inc_3f9a1c07d2e84b6a90c1"), "{text}");
    }

    #[test]
    fn extension_characters_count_double_when_fitting() {
        let (text, encoding, segments) = rendered(&job_with_summary(&"{x}".repeat(60)));
        assert_eq!(encoding, "gsm7");
        assert_eq!(segments, 1);
        let length = gsm7_length(&text).unwrap();
        assert!((159..=160).contains(&length), "{length}: {text}");
        assert!(text.chars().count() < 130, "{text}");
    }

    #[test]
    fn an_emoji_summary_is_ucs2_within_one_segment() {
        let (text, encoding, segments) = rendered(&job_with_summary(&"🔥 database on fire ".repeat(10)));
        assert_eq!(encoding, "ucs2");
        assert_eq!(segments, 1);
        assert!(ucs2_length(&text) <= 70, "{}: {text}", ucs2_length(&text));
        assert!(text.starts_with("CRIT Checkout: 🔥"), "{text}");
        assert!(text.ends_with("… [triggered] inc_3f9a1c07d2e84b6a90c1"), "{text}");
    }

    #[test]
    fn a_surrogate_pair_is_never_split() {
        // Whatever the budget, a cut lands between characters.
        for n in 1..40 {
            let summary = format!("{}{}", "a".repeat(n), "😀".repeat(40));
            let (text, encoding, segments) = rendered(&job_with_summary(&summary));
            assert_eq!(encoding, "ucs2", "{text}");
            assert_eq!(segments, 1, "{text}");
            assert!(ucs2_length(&text) <= 70, "{text}");
            assert!(text.contains("… [triggered]"), "{text}");
        }
    }

    #[test]
    fn a_huge_service_name_still_fits() {
        let mut job = job_with_summary("Disk full");
        job.service_name = "S".repeat(300);
        let (text, _, segments) = rendered(&job);
        assert_eq!(segments, 1);
        assert_eq!(gsm7_length(&text), Some(160));
    }

    #[test]
    fn gsm7_widths() {
        assert_eq!(gsm7_length("Hello @ £5 é Δ"), Some(14));
        for c in ['{', '}', '[', ']', '~', '^', '|', '€', '\\'] {
            assert_eq!(gsm7_width(c), Some(2), "{c}");
        }
        assert_eq!(gsm7_length("{}[]~^|€\\"), Some(18));
        for c in ['`', 'ç', '…', '😀', '\t', 'Ā', '中'] {
            assert_eq!(gsm7_width(c), None, "{c:?}");
        }
        assert_eq!(gsm7_length("plain `code`"), None);
    }

    #[test]
    fn every_printable_ascii_character_but_the_backtick_is_gsm7() {
        for b in 0x20u8..0x7f {
            let c = b as char;
            assert_eq!(gsm7_width(c).is_some(), c != '`', "{c}");
        }
    }

    #[test]
    fn segment_counts() {
        assert_eq!(segments(""), 1);
        assert_eq!(segments(&"a".repeat(160)), 1);
        assert_eq!(segments(&"a".repeat(161)), 2);
        assert_eq!(segments(&"a".repeat(306)), 2);
        assert_eq!(segments(&"a".repeat(307)), 3);
        // 80 extension characters: 160 septets, one segment.
        assert_eq!(segments(&"€".repeat(80)), 1);
        assert_eq!(segments(&"€".repeat(81)), 2);
        // An escape pair is not split: 152 + 2 does not fit 153.
        assert_eq!(segments(&format!("{}€{}", "a".repeat(152), "a".repeat(10))), 2);
        assert_eq!(segments(&format!("{}€{}", "a".repeat(152), "a".repeat(152))), 3);
        assert_eq!(segments(&"é".repeat(70)), 1);
        assert_eq!(segments(&"中".repeat(70)), 1);
        assert_eq!(segments(&"中".repeat(71)), 2);
        assert_eq!(segments(&"中".repeat(134)), 2);
        assert_eq!(segments(&"中".repeat(135)), 3);
        // An emoji takes two code units: 35 fill one segment.
        assert_eq!(segments(&"😀".repeat(35)), 1);
        assert_eq!(segments(&"😀".repeat(36)), 2);
    }
}
