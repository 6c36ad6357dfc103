//! `tocsin incidents`: list, show (with the timeline), acknowledge and
//! resolve incidents through the HTTP API.

use chrono::Utc;
use clap::Subcommand;
use serde_json::Value;

use crate::remote::{age, print_json, text, ApiError, ApiOptions, Remote};

/// Summaries are cut here in the list, so that a row fits a terminal.
const SUMMARY_WIDTH: usize = 60;

#[derive(Subcommand, Debug)]
pub enum IncidentsCommand {
    /// The newest incidents first.
    List {
        /// open, acknowledged or resolved.
        #[arg(long)]
        status: Option<String>,
        /// A service id.
        #[arg(long)]
        service: Option<String>,
        /// At most this many (1 to 1000; the API's default is 100).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// One incident and its timeline: each event, ignored event and
    /// notification.
    Show { id: String },
    /// Acknowledge an open incident (its service is notified).
    Ack { id: String },
    /// Resolve an incident.
    Resolve { id: String },
}

pub async fn run(api: &ApiOptions, command: IncidentsCommand) -> Result<(), ApiError> {
    let remote = Remote::new(api)?;
    match command {
        IncidentsCommand::List { status, service, limit } => {
            let mut query = Vec::new();
            if let Some(status) = &status {
                query.push(format!("status={}", encode(status)));
            }
            if let Some(service) = &service {
                query.push(format!("service={}", encode(service)));
            }
            if let Some(limit) = limit {
                query.push(format!("limit={limit}"));
            }
            let path = if query.is_empty() {
                "/incidents".to_owned()
            } else {
                format!("/incidents?{}", query.join("&"))
            };
            let listed = remote.get(&path).await?;
            if api.json {
                print_json(&listed);
            } else {
                print_list(listed["incidents"].as_array().map(Vec::as_slice).unwrap_or_default());
            }
            Ok(())
        }
        IncidentsCommand::Show { id } => {
            let path = format!("/incidents/{}", encode(&id));
            let incident = remote.get(&path).await?;
            // The incident exists: a 404 here is a server without timelines.
            let timeline = match remote.get(&format!("{path}/timeline")).await {
                Ok(timeline) => Some(timeline),
                Err(ApiError::NotFound { .. }) => None,
                Err(other) => return Err(other),
            };
            if api.json {
                let mut both = serde_json::json!({ "incident": incident });
                if let Some(timeline) = timeline {
                    both["timeline"] = timeline;
                }
                print_json(&both);
            } else {
                print_incident(&incident);
                match &timeline {
                    Some(timeline) => {
                        print_timeline(timeline["entries"].as_array().map(Vec::as_slice).unwrap_or_default())
                    }
                    None => println!("\n(this server has no timeline endpoint)"),
                }
            }
            Ok(())
        }
        IncidentsCommand::Ack { id } => act(&remote, api.json, &id, "acknowledge").await,
        IncidentsCommand::Resolve { id } => act(&remote, api.json, &id, "resolve").await,
    }
}

async fn act(remote: &Remote, json: bool, id: &str, action: &str) -> Result<(), ApiError> {
    let incident = remote.post(&format!("/incidents/{}/{action}", encode(id))).await?;
    if json {
        print_json(&incident);
    } else {
        println!(
            "{} is {}: {}",
            text(&incident["id"]),
            text(&incident["status"]),
            text(&incident["summary"])
        );
    }
    Ok(())
}

fn print_list(incidents: &[Value]) {
    if incidents.is_empty() {
        println!("no incidents");
        return;
    }
    let now = Utc::now();
    println!(
        "{:<25} {:<13} {:<9} {:<16} {:>6} {:<9} SUMMARY",
        "ID", "STATUS", "SEVERITY", "SERVICE", "COUNT", "OPENED"
    );
    for incident in incidents {
        println!(
            "{:<25} {:<13} {:<9} {:<16} {:>6} {:<9} {}",
            text(&incident["id"]),
            text(&incident["status"]),
            text(&incident["severity"]),
            text(&incident["service"]),
            text(&incident["occurrences"]),
            incident["created_at"]
                .as_str()
                .map(|at| age(at, now))
                .unwrap_or_default(),
            cut(&text(&incident["summary"]), SUMMARY_WIDTH),
        );
    }
}

fn print_incident(incident: &Value) {
    let field = |label: &str, value: &Value| {
        if !value.is_null() {
            println!("{label:<14}{}", text(value));
        }
    };
    field("incident", &incident["id"]);
    field("summary", &incident["summary"]);
    field("status", &incident["status"]);
    field("severity", &incident["severity"]);
    field("service", &incident["service"]);
    field("dedup key", &incident["dedup_key"]);
    field("source", &incident["source"]);
    field("occurrences", &incident["occurrences"]);
    if let Some(origin) = incident["origin"].as_object().filter(|o| !o.is_empty()) {
        println!("{:<14}{}", "origin", origin_text(&Value::Object(origin.clone())));
    }
    field("created", &incident["created_at"]);
    field("acknowledged", &incident["acknowledged_at"]);
    field("  by", &incident["acknowledged_by"]);
    field("resolved", &incident["resolved_at"]);
    field("  by", &incident["resolved_by"]);
    for link in incident["links"].as_array().map(Vec::as_slice).unwrap_or_default() {
        println!("{:<14}{}", "link", text(&link["href"]));
    }
}

fn print_timeline(entries: &[Value]) {
    println!("\ntimeline:");
    if entries.is_empty() {
        println!("  (no entries)");
        return;
    }
    println!("  {:<23} {:<13} WHAT", "TIME (UTC)", "KIND");
    for entry in entries {
        println!(
            "  {:<23} {:<13} {}",
            entry["at"]
                .as_str()
                .map(short_time)
                .unwrap_or_else(|| text(&entry["at"])),
            text(&entry["kind"]),
            describe(entry)
        );
    }
}

/// One line for an entry of GET /incidents/{id}/timeline. Reads the JSON
/// rather than the server's types, so that a newer server's entries still
/// print.
fn describe(entry: &Value) -> String {
    let field = |name: &str| entry.get(name).filter(|v| !v.is_null()).map(text);
    match entry["kind"].as_str() {
        Some("event") => {
            let mut line = format!(
                "{}: {} from {}",
                field("outcome").unwrap_or_else(|| "applied".to_owned()),
                field("action").unwrap_or_else(|| "event".to_owned()),
                origin_text(&entry["origin"]),
            );
            if let Some(occurrences) = field("occurrences") {
                line.push_str(&format!(" (occurrences {occurrences})"));
            }
            if let Some(summary) = field("summary") {
                line.push_str(&format!(" \"{summary}\""));
            }
            line
        }
        Some("ignored") => format!(
            "ignored: {} from {} ({})",
            field("action").unwrap_or_else(|| "event".to_owned()),
            origin_text(&entry["origin"]),
            field("reason").unwrap_or_else(|| "no reason given".to_owned()),
        ),
        Some("notification") => {
            let attempt = field("attempt").map(|a| format!(", attempt {a}")).unwrap_or_default();
            let head = format!(
                "{} by {} to {}{attempt}",
                field("transition").unwrap_or_default(),
                field("channel").unwrap_or_default(),
                field("recipient").unwrap_or_default(),
            );
            match field("result").as_deref() {
                Some("failed") => format!(
                    "notification failed: {head}: {}{}",
                    field("reason").unwrap_or_default(),
                    if entry["will_retry"] == Value::Bool(true) {
                        " (will retry)"
                    } else {
                        ""
                    }
                ),
                // Held by the recipient's throttle for one bundle message.
                Some("bundled") => format!("throttled (bundled): {head}"),
                // SES reported a permanent bounce or a complaint for the address.
                Some("suppressed") => format!("not sent: {head}: {}", field("reason").unwrap_or_default()),
                _ => format!("notified: {head}"),
            }
        }
        _ => {
            // Unknown kinds: every field but the ones in other columns.
            let rest: Vec<String> = entry
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(name, _)| !matches!(name.as_str(), "id" | "at" | "kind" | "incident"))
                .map(|(name, value)| format!("{name}={}", text(value)))
                .collect();
            rest.join(" ")
        }
    }
}

/// `2026-11-23 19:24:08.541`: milliseconds tell apart what happened in one
/// second; the rest of the precision is noise in a table.
fn short_time(at: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(at)
        .map(|at| at.with_timezone(&Utc).format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_else(|_| at.to_owned())
}

fn origin_text(origin: &Value) -> String {
    if let Some(integration) = origin["integration"].as_str() {
        match origin["provider"].as_str() {
            Some(provider) => format!("{provider} ({integration})"),
            None => integration.to_owned(),
        }
    } else if let Some(actor) = origin["actor"].as_str() {
        format!("{actor} (api)")
    } else {
        text(origin)
    }
}

fn cut(value: &str, width: usize) -> String {
    match value.char_indices().nth(width) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}

/// Percent-encodes a path segment or query value: operators type ids and
/// service names, which must not reshape the URL.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
