//! Slack as a way to answer incidents: the buttons of Tocsin's Slack
//! messages (render::slack) and the `/tocsin` slash command. Both post to a
//! Request URL; each request is verified over its raw body (verify), read
//! (payload), and turned into an acknowledge or resolve event on the events
//! queue, so that the processor applies it in order with the provider's own
//! events. The answer goes back at once, well within Slack's 3 seconds: one
//! incident read and one enqueue.

pub mod payload;
pub mod threads;
pub mod verify;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode};
use serde_json::json;

use crate::answer::{empty_answer, error_answer, json_answer, Answer};
use crate::config::Secret;
use crate::event::{Action, Alert, Event, EventId, Origin};
use crate::incident::{Incident, IncidentId, IncidentStatus};
use crate::metrics::{ActionVia, Metrics};
use crate::ports::{EventQueue, IncidentFilter, IncidentStore};
use crate::render::slack::escape;
use payload::{parse_command, parse_interaction, CommandRequest, Interaction, MalformedRequest, SlackUser};

/// Slack's interaction payloads carry the whole message they came from: a
/// generous limit, far below what API Gateway and Lambda take.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Incidents `/tocsin incidents` lists at most, newest first.
const MAX_LISTED: usize = 20;
const MAX_SUMMARY_CHARS: usize = 120;

/// Answers Slack's requests: the interactions URL (buttons) and the slash
/// command URL.
#[derive(Clone)]
pub struct SlackInteractions {
    incidents: Arc<dyn IncidentStore>,
    queue: Arc<dyn EventQueue>,
    signing_secrets: Vec<Secret>,
    /// Counts the actions queued (IncidentActions, Via `slack`).
    metrics: Metrics,
}

impl SlackInteractions {
    pub fn new(incidents: Arc<dyn IncidentStore>, queue: Arc<dyn EventQueue>, signing_secret: Secret) -> Self {
        Self {
            incidents,
            queue,
            signing_secrets: vec![signing_secret],
            metrics: Metrics::disabled(crate::metrics::function::SLACK),
        }
    }

    /// Counts every action queued in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// A button pressed: `acknowledge` / `resolve` become events; anything
    /// else (the View link button) gets the empty 200 Slack expects.
    #[tracing::instrument(skip_all, fields(endpoint = "slack interactions"))]
    pub async fn interaction(&self, headers: &HeaderMap, body: &[u8], now: DateTime<Utc>) -> Answer {
        if let Some(refused) = self.refusal(headers, body, now) {
            return refused;
        }
        match parse_interaction(body) {
            Err(error) => malformed(&error),
            Ok(Interaction::Ignored) => empty_answer(StatusCode::OK),
            Ok(Interaction::Button(press)) => {
                let text = self.act(press.action, &press.incident, &press.user, now).await;
                // Slack shows nothing of a block_actions answer's body; the
                // message update follows from the transition's own
                // notification. The text is for logs and other clients.
                ephemeral(&text)
            }
        }
    }

    /// `/tocsin incidents`, `/tocsin ack ID`, `/tocsin resolve ID`, help.
    #[tracing::instrument(skip_all, fields(endpoint = "slack commands"))]
    pub async fn command(&self, headers: &HeaderMap, body: &[u8], now: DateTime<Utc>) -> Answer {
        if let Some(refused) = self.refusal(headers, body, now) {
            return refused;
        }
        let command = match parse_command(body) {
            Ok(command) => command,
            Err(error) => return malformed(&error),
        };
        let name = escape(&command.command.chars().take(40).collect::<String>());
        let text = match command.request {
            CommandRequest::Incidents => self.list(now).await,
            CommandRequest::Act { action, incident } => self.act(action, &incident, &command.user, now).await,
            CommandRequest::MissingId(action) => {
                format!("Which incident? `{name} {} INCIDENT_ID`", verb(action))
            }
            CommandRequest::Help { unknown } => help(&name, unknown.as_deref()),
        };
        ephemeral(&text)
    }

    /// The 401 answer to a request that is not Slack's, if it is not.
    fn refusal(&self, headers: &HeaderMap, body: &[u8], now: DateTime<Utc>) -> Option<Answer> {
        let secrets: Vec<&Secret> = self.signing_secrets.iter().collect();
        let error = verify::verify(headers, body, &secrets, now).err()?;
        tracing::warn!(%error, "refused a Slack request");
        Some(error_answer(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            error.to_string(),
            Vec::new(),
        ))
    }

    /// Queues `action` on the incident `id` for `user`; the text says what
    /// happened, errors included (Slack shows it to that user only).
    async fn act(&self, action: Action, id: &str, user: &SlackUser, now: DateTime<Utc>) -> String {
        let shown = || escape(&id.chars().take(40).collect::<String>());
        let Some(id) = IncidentId::parse(id) else {
            return format!(
                "There is no incident `{}`: ids look like `inc_3f9a1c07d2e84b6a90c1`.",
                shown()
            );
        };
        let incident = match self.incidents.get(&id).await {
            Ok(Some(incident)) => incident,
            Ok(None) => return format!("There is no incident `{}`.", shown()),
            Err(error) => {
                tracing::error!(%error, source = %error.source, "cannot read the incident");
                return "Tocsin cannot read its incidents right now; try again in a minute.".to_owned();
            }
        };
        // Only the open incident of a key may be the target of a key-addressed
        // event: acting on an older, resolved one must not touch a newer one.
        let done = match action {
            Action::Resolve => incident.status == IncidentStatus::Resolved,
            _ => incident.status != IncidentStatus::Open,
        };
        if done {
            return format!("`{id}` is already {}.", incident.status);
        }
        let event = responder_event(&incident, action, user, now);
        if let Err(error) = self.queue.enqueue(std::slice::from_ref(&event)).await {
            tracing::error!(%error, source = %error.source, "cannot enqueue the event");
            return format!(
                "Tocsin could not {} `{id}` right now; try again in a minute.",
                verb(action)
            );
        }
        tracing::info!(incident = %id, action = %action, event = %event.id, "queued from Slack");
        self.metrics
            .incident_action_via(now, action, ActionVia::Slack, id.as_str());
        let doing = match action {
            Action::Resolve => "Resolving",
            _ => "Acknowledging",
        };
        format!(
            "{doing} `{id}` ({}) for {}.",
            escape(&cut(&incident.summary, MAX_SUMMARY_CHARS)),
            user.mention()
        )
    }

    async fn list(&self, now: DateTime<Utc>) -> String {
        let mut incidents = Vec::new();
        for status in [IncidentStatus::Open, IncidentStatus::Acknowledged] {
            let filter = IncidentFilter {
                status: Some(status),
                service: None,
                limit: Some(MAX_LISTED + 1),
            };
            match self.incidents.list(&filter).await {
                Ok(found) => incidents.extend(found),
                Err(error) => {
                    tracing::error!(%error, source = %error.source, "cannot list incidents");
                    return "Tocsin cannot read its incidents right now; try again in a minute.".to_owned();
                }
            }
        }
        if incidents.is_empty() {
            return "No open or acknowledged incidents.".to_owned();
        }
        incidents.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.id.cmp(&b.id)));
        let more = incidents.len() > MAX_LISTED;
        incidents.truncate(MAX_LISTED);
        let mut text = format!(
            "*{} open or acknowledged incident{}*{}",
            incidents.len(),
            if incidents.len() == 1 { "" } else { "s" },
            if more { " (the newest; there are more)" } else { "" }
        );
        for incident in &incidents {
            text.push('\n');
            text.push_str(&list_line(incident, now));
        }
        text
    }
}

/// The acknowledge or resolve of `incident`'s key, by a Slack user. The
/// origin is an API actor (`slack:@name (U…)`), which every reader of queued
/// and stored events already knows.
pub fn responder_event(incident: &Incident, action: Action, user: &SlackUser, now: DateTime<Utc>) -> Event {
    Event {
        id: EventId::generate(),
        service: incident.service.clone(),
        origin: Origin::Api { actor: user.actor() },
        received_at: now,
        alert: Alert {
            event_action: action,
            dedup_key: incident.dedup_key.clone(),
            payload: None,
            links: Vec::new(),
            images: Vec::new(),
            client: None,
            client_url: None,
        },
    }
}

/// Reads the signing secret from the Slack secret in Secrets Manager: the
/// JSON object's `signing_secret` field, beside `bot_token` or
/// `webhook_url`.
pub fn signing_secret_from_secret(value: &str) -> Result<Secret, InvalidSigningSecret> {
    let fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(value.trim()).map_err(|_| InvalidSigningSecret::NotAnObject)?;
    match fields
        .get("signing_secret")
        .and_then(serde_json::Value::as_str)
        .map(str::trim)
    {
        Some(secret) if !secret.is_empty() => Ok(Secret::new(secret)),
        _ => Err(InvalidSigningSecret::Missing),
    }
}

/// Why the Slack secret holds no signing secret; never shows the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSigningSecret {
    #[error("the secret is not a JSON object (give {{\"bot_token\": …, \"signing_secret\": …}})")]
    NotAnObject,
    #[error("the secret's JSON has no non-empty signing_secret field")]
    Missing,
}

fn verb(action: Action) -> &'static str {
    match action {
        Action::Resolve => "resolve",
        _ => "ack",
    }
}

fn list_line(incident: &Incident, now: DateTime<Utc>) -> String {
    format!(
        "• `{}` *{}* {} · {} · {} · opened {} ago",
        incident.id,
        incident.severity.as_str().to_ascii_uppercase(),
        incident.status,
        incident.service,
        escape(&cut(&incident.summary, MAX_SUMMARY_CHARS)),
        crate::render::duration(incident.created_at, now)
    )
}

fn help(command: &str, unknown: Option<&str>) -> String {
    let mut text = String::new();
    if let Some(word) = unknown {
        text.push_str(&format!("I do not know `{}`.\n", escape(word)));
    }
    text.push_str(&format!(
        "`{command} incidents`: the open and acknowledged incidents\n\
         `{command} ack INCIDENT_ID`: acknowledge one\n\
         `{command} resolve INCIDENT_ID`: resolve one"
    ));
    text
}

/// On one line, at most `max` characters, `…` when cut.
fn cut(text: &str, max: usize) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        return line;
    }
    let mut out: String = line.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A message only the user who asked sees.
fn ephemeral(text: &str) -> Answer {
    json_answer(
        StatusCode::OK,
        &json!({ "response_type": "ephemeral", "replace_original": false, "text": text }),
    )
}

fn malformed(error: &MalformedRequest) -> Answer {
    let message = error.to_string();
    error_answer(
        StatusCode::BAD_REQUEST,
        "invalid request",
        message.clone(),
        vec![message],
    )
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};
    use http::HeaderValue;

    use super::*;
    use crate::event::{DedupKey, IntegrationId, Payload, ServiceId, Severity};
    use crate::memory::MemoryStore;
    use crate::process::ProcessService;
    use crate::providers::ProviderKind;
    use crate::render::slack::{ACKNOWLEDGE_ACTION_ID, RESOLVE_ACTION_ID};

    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
            .block_on(future)
    }

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_718_000_000, 0).single().expect("a valid time")
    }

    /// A store with one open incident (and its id), and the service on it.
    fn setup() -> (Arc<MemoryStore>, SlackInteractions, IncidentId) {
        let store = Arc::new(MemoryStore::new());
        let trigger = Event {
            id: EventId::new("e1".to_owned()),
            service: ServiceId::parse("checkout").unwrap(),
            origin: Origin::Integration {
                integration: IntegrationId::parse("am").unwrap(),
                provider: ProviderKind::Prometheus,
            },
            received_at: now() - Duration::seconds(441),
            alert: Alert {
                event_action: Action::Trigger,
                dedup_key: DedupKey::parse("disk-full").unwrap(),
                payload: Some(Payload {
                    summary: "Disk <full> on db-1".into(),
                    source: "db-1".into(),
                    severity: Severity::Critical,
                    timestamp: None,
                    component: None,
                    group: None,
                    class: None,
                    custom_details: None,
                }),
                links: Vec::new(),
                images: Vec::new(),
                client: None,
                client_url: None,
            },
        };
        block_on(ProcessService::new(store.clone()).apply(&trigger, trigger.received_at)).unwrap();
        let id = store.incidents()[0].id.clone();
        let slack = SlackInteractions::new(store.clone(), store.clone(), Secret::new(SECRET));
        (store, slack, id)
    }

    fn signed(body: &[u8], timestamp: i64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            verify::TIMESTAMP_HEADER,
            HeaderValue::from_str(&timestamp.to_string()).unwrap(),
        );
        let signature = verify::sign(&Secret::new(SECRET), timestamp, body);
        headers.insert(verify::SIGNATURE_HEADER, HeaderValue::from_str(&signature).unwrap());
        headers
    }

    fn form(fields: &[(&str, &str)]) -> Vec<u8> {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish()
            .into_bytes()
    }

    fn button(action_id: &str, value: &str) -> Vec<u8> {
        let payload = json!({
            "type": "block_actions",
            "user": {"id": "U2CERLKJA", "username": "roadrunner"},
            "actions": [{"action_id": action_id, "value": value, "type": "button"}],
        });
        form(&[("payload", &payload.to_string())])
    }

    fn command(text: &str) -> Vec<u8> {
        form(&[
            ("command", "/tocsin"),
            ("text", text),
            ("user_id", "U2CERLKJA"),
            ("user_name", "roadrunner"),
        ])
    }

    fn text(answer: &Answer) -> String {
        let body: serde_json::Value = serde_json::from_slice(answer.body()).expect("JSON");
        assert_eq!(body["response_type"], "ephemeral", "{body}");
        body["text"].as_str().expect("text").to_owned()
    }

    #[test]
    fn a_signed_button_press_queues_the_acknowledge_of_the_incidents_key() {
        let (store, slack, id) = setup();
        let body = button(ACKNOWLEDGE_ACTION_ID, id.as_str());
        let answer = block_on(slack.interaction(&signed(&body, now().timestamp()), &body, now()));
        assert_eq!(answer.status(), 200);
        let said = text(&answer);
        assert!(said.contains(id.as_str()) && said.contains("<@U2CERLKJA>"), "{said}");
        assert!(said.contains("Disk &lt;full&gt; on db-1"), "escaped: {said}");
        let queued = store.queued_events();
        assert_eq!(queued.len(), 1);
        let event = &queued[0];
        assert_eq!(event.action(), Action::Acknowledge);
        assert_eq!(event.service.as_str(), "checkout");
        assert_eq!(event.dedup_key().as_str(), "disk-full");
        assert_eq!(
            event.origin,
            Origin::Api {
                actor: "slack:@roadrunner (U2CERLKJA)".into()
            }
        );
        assert_eq!(event.received_at, now());
        // What the queue carries reads back as the same event.
        let json = serde_json::to_string(event).unwrap();
        assert_eq!(&serde_json::from_str::<Event>(&json).unwrap(), event);
    }

    #[test]
    fn a_queued_button_press_or_command_counts_as_a_slack_incident_action() {
        let (store, slack, id) = setup();
        let sink = Arc::new(crate::metrics::CollectingSink::default());
        let slack = slack.with_metrics(Metrics::new(crate::metrics::function::SLACK, sink.clone()));
        let press = |body: Vec<u8>| block_on(slack.interaction(&signed(&body, now().timestamp()), &body, now()));
        let run = |text: &str| {
            let body = command(text);
            block_on(slack.command(&signed(&body, now().timestamp()), &body, now()))
        };

        press(button(ACKNOWLEDGE_ACTION_ID, id.as_str()));
        // Refused, unknown or a listing: nothing done, nothing counted.
        let body = button(RESOLVE_ACTION_ID, id.as_str());
        block_on(slack.interaction(&HeaderMap::new(), &body, now()));
        press(button(RESOLVE_ACTION_ID, "inc_00000000000000000000"));
        run("incidents");
        run(&format!("resolve {id}"));

        assert_eq!(store.queued_events().len(), 2);
        let counted: Vec<(String, String, String, String)> = sink
            .documents()
            .iter()
            .map(|d| {
                assert_eq!(d["IncidentActions"], 1.0, "{d}");
                let field = |name: &str| d[name].as_str().unwrap_or_default().to_owned();
                (field("Function"), field("Action"), field("Via"), field("incident"))
            })
            .collect();
        let expected = |action: &str| ("slack".into(), action.into(), "slack".into(), id.to_string());
        assert_eq!(counted, [expected("acknowledge"), expected("resolve")]);
    }

    #[test]
    fn bad_expired_or_missing_signatures_are_401_and_queue_nothing() {
        let (store, slack, id) = setup();
        let body = button(RESOLVE_ACTION_ID, id.as_str());
        let stale = signed(&body, now().timestamp() - 301);
        let ahead = signed(&body, now().timestamp() + 301);
        let mut wrong = signed(&body, now().timestamp());
        wrong.insert(
            verify::SIGNATURE_HEADER,
            HeaderValue::from_str(&verify::sign(&Secret::new("not-the-secret"), now().timestamp(), &body)).unwrap(),
        );
        for headers in [stale, ahead, wrong, HeaderMap::new()] {
            let answer = block_on(slack.interaction(&headers, &body, now()));
            assert_eq!(answer.status(), 401);
            let answer = block_on(slack.command(&headers, &body, now()));
            assert_eq!(answer.status(), 401);
        }
        assert!(store.queued_events().is_empty());
    }

    #[test]
    fn malformed_requests_are_400_and_unknown_incidents_an_ephemeral_error() {
        let (store, slack, _) = setup();
        for body in [b"payload=%7Bnot-json".to_vec(), b"token=x".to_vec(), vec![0xff, 0x00]] {
            let answer = block_on(slack.interaction(&signed(&body, now().timestamp()), &body, now()));
            assert_eq!(answer.status(), 400, "{}", String::from_utf8_lossy(answer.body()));
        }
        let body = b"text=incidents".to_vec();
        let answer = block_on(slack.command(&signed(&body, now().timestamp()), &body, now()));
        assert_eq!(answer.status(), 400);

        for value in ["inc_00000000000000000000", "not-an-id <!channel>"] {
            let body = button(ACKNOWLEDGE_ACTION_ID, value);
            let answer = block_on(slack.interaction(&signed(&body, now().timestamp()), &body, now()));
            assert_eq!(answer.status(), 200);
            let said = text(&answer);
            assert!(said.starts_with("There is no incident"), "{said}");
            assert!(!said.contains("<!channel>"), "{said}");
        }
        let view = json!({"type": "block_actions", "user": {"id": "U1"}, "actions": [{"action_id": "tocsin_view"}]});
        let body = form(&[("payload", &view.to_string())]);
        let answer = block_on(slack.interaction(&signed(&body, now().timestamp()), &body, now()));
        assert_eq!(answer.status(), 200);
        assert!(answer.body().is_empty());
        assert!(store.queued_events().is_empty());
    }

    #[test]
    fn an_incident_already_there_is_said_so_and_nothing_queued() {
        let (store, slack, id) = setup();
        let process = ProcessService::new(store.clone());
        let ack = Event {
            id: EventId::new("e2".to_owned()),
            ..responder_event(&store.incidents()[0], Action::Acknowledge, &SlackUser::default(), now())
        };
        block_on(process.apply(&ack, now())).unwrap();
        let body = button(ACKNOWLEDGE_ACTION_ID, id.as_str());
        let said = text(&block_on(slack.interaction(
            &signed(&body, now().timestamp()),
            &body,
            now(),
        )));
        assert_eq!(said, format!("`{id}` is already acknowledged."));
        assert!(store.queued_events().is_empty());
        // Resolving an acknowledged incident is still possible.
        let body = command(&format!("resolve {id}"));
        let said = text(&block_on(slack.command(
            &signed(&body, now().timestamp()),
            &body,
            now(),
        )));
        assert!(said.starts_with(&format!("Resolving `{id}`")), "{said}");
        assert_eq!(store.queued_events()[0].action(), Action::Resolve);
    }

    #[test]
    fn the_slash_command_lists_acts_and_helps() {
        let (store, slack, id) = setup();
        let run = |text_: &str| {
            let body = command(text_);
            let answer = block_on(slack.command(&signed(&body, now().timestamp()), &body, now()));
            assert_eq!(answer.status(), 200);
            text(&answer)
        };
        let listed = run("incidents");
        assert!(listed.starts_with("*1 open or acknowledged incident*"), "{listed}");
        assert!(
            listed.contains(&format!(
                "• `{id}` *CRITICAL* open · checkout · Disk &lt;full&gt; on db-1 · opened 7m 21s ago"
            )),
            "{listed}"
        );
        assert!(run("ack").starts_with("Which incident?"));
        assert!(run("").contains("/tocsin ack INCIDENT_ID"));
        assert!(run("page everyone").starts_with("I do not know `page`"));
        assert!(store.queued_events().is_empty());
        assert!(run(&format!("ack {id}")).starts_with("Acknowledging"));
        assert_eq!(store.queued_events()[0].action(), Action::Acknowledge);

        let empty = SlackInteractions::new(
            Arc::new(MemoryStore::new()),
            Arc::new(MemoryStore::new()),
            Secret::new(SECRET),
        );
        let body = command("incidents");
        let answer = block_on(empty.command(&signed(&body, now().timestamp()), &body, now()));
        assert_eq!(text(&answer), "No open or acknowledged incidents.");
    }

    #[test]
    fn the_signing_secret_is_read_from_the_slack_secrets_json() {
        assert_eq!(
            signing_secret_from_secret(r#"{"bot_token": "xoxb-1", "signing_secret": " abc123 "}"#),
            Ok(Secret::new("abc123"))
        );
        assert_eq!(
            signing_secret_from_secret(r#"{"bot_token": "xoxb-1"}"#),
            Err(InvalidSigningSecret::Missing)
        );
        assert_eq!(
            signing_secret_from_secret(r#"{"signing_secret": ""}"#),
            Err(InvalidSigningSecret::Missing)
        );
        assert_eq!(
            signing_secret_from_secret("xoxb-plain-token-hunter2"),
            Err(InvalidSigningSecret::NotAnObject)
        );
    }
}
