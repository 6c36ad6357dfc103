//! What Slack posts to the app's Request URLs, parsed: the `payload` form
//! field of an interaction (a button pressed) and the fields of a slash
//! command. Only what Tocsin reads is typed; Slack keeps adding fields.

use serde::Deserialize;

use crate::event::Action;
use crate::render::slack::{ACKNOWLEDGE_ACTION_ID, RESOLVE_ACTION_ID};

/// Why a request that passed the signature check cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedRequest {
    #[error("the body has no `{0}` form field")]
    MissingField(&'static str),
    #[error("the `payload` form field is not an interaction payload: {0}")]
    Payload(String),
}

/// A Slack user, as interactions and commands name them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlackUser {
    /// `U…` or `W…`: stable, and what `<@id>` mentions.
    pub id: String,
    /// The handle, for logs and the timeline (may be empty).
    pub name: String,
}

impl SlackUser {
    /// How the incident's timeline names them: `slack:@name (U123)`, cut and
    /// on one line whatever Slack sent.
    pub fn actor(&self) -> String {
        let clean = |text: &str, max: usize| -> String {
            text.chars()
                .filter(|c| !c.is_control())
                .take(max)
                .collect::<String>()
                .trim()
                .to_owned()
        };
        let (id, name) = (clean(&self.id, 32), clean(&self.name, 64));
        match (name.is_empty(), id.is_empty()) {
            (false, false) => format!("slack:@{name} ({id})"),
            (false, true) => format!("slack:@{name}"),
            (true, _) => format!("slack:{id}"),
        }
    }

    /// Mrkdwn that names them: a mention when the id is a Slack id.
    pub fn mention(&self) -> String {
        let is_id = !self.id.is_empty() && self.id.len() <= 32 && self.id.bytes().all(|b| b.is_ascii_alphanumeric());
        if is_id {
            format!("<@{}>", self.id)
        } else {
            let name: String = self.name.chars().filter(|c| !c.is_control()).take(64).collect();
            crate::render::slack::escape(&format!("@{name}"))
        }
    }
}

/// A button Tocsin answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ButtonPress {
    pub action: Action,
    /// The button's value: the incident id, unchecked.
    pub incident: String,
    pub user: SlackUser,
}

/// A request to the interactions URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interaction {
    Button(ButtonPress),
    /// Anything else (the View link button, another kind of interaction):
    /// acknowledged with an empty 200, as Slack expects.
    Ignored,
}

#[derive(Deserialize)]
struct InteractionPayload {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    user: UserPayload,
    #[serde(default)]
    actions: Vec<ActionPayload>,
}

#[derive(Deserialize, Default)]
struct UserPayload {
    #[serde(default)]
    id: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct ActionPayload {
    #[serde(default)]
    action_id: String,
    #[serde(default)]
    value: Option<String>,
}

/// The action a button's `action_id` asks for: Tocsin's own ids, and the
/// plain `acknowledge` / `resolve` a hand-built message may use.
fn button_action(action_id: &str) -> Option<Action> {
    match action_id {
        ACKNOWLEDGE_ACTION_ID | "acknowledge" => Some(Action::Acknowledge),
        RESOLVE_ACTION_ID | "resolve" => Some(Action::Resolve),
        _ => None,
    }
}

/// The form Slack posts to the interactions URL: one field, `payload`,
/// holding JSON.
pub fn parse_interaction(body: &[u8]) -> Result<Interaction, MalformedRequest> {
    let payload = form_field(body, "payload").ok_or(MalformedRequest::MissingField("payload"))?;
    let payload: InteractionPayload =
        serde_json::from_str(&payload).map_err(|e| MalformedRequest::Payload(e.to_string()))?;
    if payload.kind != "block_actions" {
        return Ok(Interaction::Ignored);
    }
    let Some(first) = payload.actions.first() else {
        return Err(MalformedRequest::Payload(
            "a block_actions payload without actions".into(),
        ));
    };
    let Some(action) = button_action(&first.action_id) else {
        return Ok(Interaction::Ignored);
    };
    let incident = first
        .value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| MalformedRequest::Payload(format!("the {} button carries no value", first.action_id)))?;
    let name = if payload.user.username.is_empty() {
        payload.user.name
    } else {
        payload.user.username
    };
    Ok(Interaction::Button(ButtonPress {
        action,
        incident: incident.to_owned(),
        user: SlackUser {
            id: payload.user.id,
            name,
        },
    }))
}

/// What a slash command asks, from its text (`/tocsin ack inc_…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandRequest {
    Incidents,
    Act {
        action: Action,
        incident: String,
    },
    /// `ack` or `resolve` without an id.
    MissingId(Action),
    Help {
        unknown: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlashCommand {
    /// `/tocsin`, or whatever the app's command is called.
    pub command: String,
    pub request: CommandRequest,
    pub user: SlackUser,
}

/// The form Slack posts to a slash command's URL.
pub fn parse_command(body: &[u8]) -> Result<SlashCommand, MalformedRequest> {
    let command = form_field(body, "command").ok_or(MalformedRequest::MissingField("command"))?;
    let user_id = form_field(body, "user_id").ok_or(MalformedRequest::MissingField("user_id"))?;
    let user_name = form_field(body, "user_name").unwrap_or_default();
    let text = form_field(body, "text").unwrap_or_default();
    Ok(SlashCommand {
        command: command.trim().to_owned(),
        request: command_request(&text),
        user: SlackUser {
            id: user_id,
            name: user_name,
        },
    })
}

fn command_request(text: &str) -> CommandRequest {
    let mut words = text.split_whitespace();
    let Some(verb) = words.next() else {
        return CommandRequest::Help { unknown: None };
    };
    let action = match verb.to_ascii_lowercase().as_str() {
        "incidents" | "list" | "ls" | "open" => return CommandRequest::Incidents,
        "help" => return CommandRequest::Help { unknown: None },
        "ack" | "acknowledge" => Action::Acknowledge,
        "resolve" => Action::Resolve,
        _ => {
            return CommandRequest::Help {
                unknown: Some(verb.chars().take(40).collect()),
            }
        }
    };
    match words.next() {
        Some(id) => CommandRequest::Act {
            action,
            incident: id.to_owned(),
        },
        None => CommandRequest::MissingId(action),
    }
}

/// The first value of `name` in a urlencoded form.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn form(fields: &[(&str, &str)]) -> Vec<u8> {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish()
            .into_bytes()
    }

    fn pressed(action_id: &str, value: Option<&str>) -> Vec<u8> {
        let mut action = json!({"action_id": action_id, "block_id": "tocsin_incident_actions", "type": "button"});
        if let Some(value) = value {
            action["value"] = json!(value);
        }
        let payload = json!({
            "type": "block_actions",
            "user": {"id": "U2CERLKJA", "username": "roadrunner", "name": "roadrunner", "team_id": "T1"},
            "api_app_id": "A1",
            "response_url": "https://hooks.slack.com/actions/T1/1/x",
            "actions": [action],
            "message": {"text": "anything", "blocks": []},
        });
        form(&[("payload", &payload.to_string())])
    }

    #[test]
    fn a_button_press_names_the_action_incident_and_user() {
        for (action_id, action) in [
            (ACKNOWLEDGE_ACTION_ID, Action::Acknowledge),
            ("acknowledge", Action::Acknowledge),
            (RESOLVE_ACTION_ID, Action::Resolve),
            ("resolve", Action::Resolve),
        ] {
            let parsed = parse_interaction(&pressed(action_id, Some("inc_3f9a1c07d2e84b6a90c1"))).unwrap();
            assert_eq!(
                parsed,
                Interaction::Button(ButtonPress {
                    action,
                    incident: "inc_3f9a1c07d2e84b6a90c1".into(),
                    user: SlackUser {
                        id: "U2CERLKJA".into(),
                        name: "roadrunner".into()
                    },
                })
            );
        }
    }

    #[test]
    fn other_buttons_and_interactions_are_ignored() {
        assert_eq!(
            parse_interaction(&pressed("tocsin_view", None)).unwrap(),
            Interaction::Ignored
        );
        let shortcut = json!({"type": "shortcut", "callback_id": "x"}).to_string();
        assert_eq!(
            parse_interaction(&form(&[("payload", &shortcut)])).unwrap(),
            Interaction::Ignored
        );
    }

    #[test]
    fn malformed_interactions_are_named() {
        assert_eq!(
            parse_interaction(b"token=x"),
            Err(MalformedRequest::MissingField("payload"))
        );
        assert!(matches!(
            parse_interaction(&form(&[("payload", "{not json")])),
            Err(MalformedRequest::Payload(_))
        ));
        assert!(matches!(
            parse_interaction(&pressed(ACKNOWLEDGE_ACTION_ID, None)),
            Err(MalformedRequest::Payload(_))
        ));
        let empty = json!({"type": "block_actions", "actions": []}).to_string();
        assert!(matches!(
            parse_interaction(&form(&[("payload", &empty)])),
            Err(MalformedRequest::Payload(_))
        ));
        // Not UTF-8, not a form: still an answer.
        assert!(parse_interaction(&[0xff, 0xfe, b'%', b'z']).is_err());
    }

    #[test]
    fn slash_commands_read_their_text() {
        let command = |text: &str| {
            parse_command(&form(&[
                ("command", "/tocsin"),
                ("text", text),
                ("user_id", "U2CERLKJA"),
                ("user_name", "roadrunner"),
            ]))
            .unwrap()
            .request
        };
        assert_eq!(command("incidents"), CommandRequest::Incidents);
        assert_eq!(command("  LIST "), CommandRequest::Incidents);
        assert_eq!(
            command("ack inc_3f9a1c07d2e84b6a90c1"),
            CommandRequest::Act {
                action: Action::Acknowledge,
                incident: "inc_3f9a1c07d2e84b6a90c1".into()
            }
        );
        assert_eq!(
            command("resolve  inc_3f9a1c07d2e84b6a90c1"),
            CommandRequest::Act {
                action: Action::Resolve,
                incident: "inc_3f9a1c07d2e84b6a90c1".into()
            }
        );
        assert_eq!(command("resolve"), CommandRequest::MissingId(Action::Resolve));
        assert_eq!(command(""), CommandRequest::Help { unknown: None });
        assert_eq!(command("help"), CommandRequest::Help { unknown: None });
        assert_eq!(
            command("page everyone"),
            CommandRequest::Help {
                unknown: Some("page".into())
            }
        );
        assert_eq!(
            parse_command(&form(&[("command", "/tocsin"), ("text", "incidents")])),
            Err(MalformedRequest::MissingField("user_id"))
        );
    }

    #[test]
    fn users_are_named_safely() {
        let user = SlackUser {
            id: "U2CERLKJA".into(),
            name: "roadrunner".into(),
        };
        assert_eq!(user.actor(), "slack:@roadrunner (U2CERLKJA)");
        assert_eq!(user.mention(), "<@U2CERLKJA>");
        let odd = SlackUser {
            id: "<!channel>".into(),
            name: "a\nb<c>".into(),
        };
        assert_eq!(odd.mention(), "@ab&lt;c&gt;");
        assert_eq!(odd.actor(), "slack:@ab<c> (<!channel>)");
    }
}
