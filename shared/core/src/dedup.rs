//! Per-integration dedup keys: the most common complaint about peers is a
//! tool whose key is too fine (one incident per pod) or too coarse (one per
//! rule). An integration's `dedup_key` is a template over the alert as the
//! provider normalized it, so it works the same for every provider:
//!
//! ```yaml
//! dedup_key: "{payload.custom_details.labels.alertname}/{payload.custom_details.labels.cluster}"
//! ```
//!
//! `{dedup_key}` is the provider's own key. A template whose placeholders an
//! alert does not have leaves that alert's key as the provider made it, so
//! nothing is refused for it; fields the resolve carries too (labels, ids)
//! make keys that trigger and resolve share.

use std::fmt;

use serde_json::Value;

use crate::event::{Alert, DedupKey};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Vec<String>),
}

/// A parsed `dedup_key` template.
#[derive(Clone, PartialEq, Eq)]
pub struct DedupTemplate {
    source: String,
    parts: Vec<Part>,
}

impl fmt::Debug for DedupTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DedupTemplate").field(&self.source).finish()
    }
}

impl fmt::Display for DedupTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl DedupTemplate {
    /// Parses `text with {field.path} placeholders`; the reason on error.
    pub fn parse(source: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find('{') {
            if let Some(close) = rest[..open].find('}') {
                return Err(format!("'}}' at {} has no '{{'", source.len() - rest.len() + close));
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("'{{' at {} is never closed", source.len() - rest.len() + open))?;
            let path = after[..close].trim();
            let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
            if path.is_empty() || segments.iter().any(|s| s.is_empty() || s.contains('{')) {
                return Err(format!("'{{{path}}}' is not a field path such as {{payload.source}}"));
            }
            parts.push(Part::Field(segments));
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err("a '}' has no '{'".to_owned());
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if !parts.iter().any(|p| matches!(p, Part::Field(_))) {
            return Err("has no {field} placeholder: every alert would share one key".to_owned());
        }
        Ok(DedupTemplate {
            source: source.to_owned(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The key for `alert`, or `None` when a placeholder names a field the
    /// alert lacks (or one that is not text, a number or a boolean).
    pub fn render(&self, alert: &Alert) -> Option<DedupKey> {
        let value = serde_json::to_value(alert).ok()?;
        let mut key = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => key.push_str(text),
                Part::Field(path) => {
                    let mut at = &value;
                    for segment in path {
                        at = match at {
                            Value::Object(map) => map.get(segment)?,
                            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
                            _ => return None,
                        };
                    }
                    match at {
                        Value::String(text) if !text.is_empty() => key.push_str(text),
                        Value::Number(number) => key.push_str(&number.to_string()),
                        Value::Bool(flag) => key.push_str(if *flag { "true" } else { "false" }),
                        _ => return None,
                    }
                }
            }
        }
        DedupKey::parse(&key).ok()
    }

    /// Rekeys every alert the template applies to.
    pub fn apply(&self, alerts: &mut [Alert]) {
        for alert in alerts {
            match self.render(alert) {
                Some(key) => alert.dedup_key = key,
                None => tracing::debug!(
                    template = %self.source,
                    key = %alert.dedup_key.as_str(),
                    "the dedup_key template does not apply to this alert; the provider's key stays"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::Action;

    fn alert(action: Action, details: Option<Value>) -> Alert {
        serde_json::from_value(json!({
            "event_action": action,
            "dedup_key": "provider-key-1",
            "payload": details.map(|d| json!({
                "summary": "Pod crash looping",
                "source": "pod-7f9c",
                "severity": "error",
                "custom_details": d,
            })),
        }))
        .expect("an alert")
    }

    #[test]
    fn placeholders_take_the_alerts_fields_and_text_stays() {
        let template =
            DedupTemplate::parse("{payload.custom_details.labels.alertname}/{payload.custom_details.labels.cluster}")
                .unwrap();
        let firing = alert(
            Action::Trigger,
            Some(json!({"labels": {"alertname": "KubePodCrashLooping", "cluster": "eu-1", "pod": "a"}})),
        );
        assert_eq!(template.render(&firing).unwrap().as_str(), "KubePodCrashLooping/eu-1");

        // Another pod of the same alert and cluster: the same incident.
        let other_pod = alert(
            Action::Trigger,
            Some(json!({"labels": {"alertname": "KubePodCrashLooping", "cluster": "eu-1", "pod": "b"}})),
        );
        assert_eq!(template.render(&firing), template.render(&other_pod));
    }

    #[test]
    fn the_providers_key_numbers_and_array_items_can_be_used() {
        let template = DedupTemplate::parse("{payload.source}:{dedup_key}:{payload.custom_details.ids.1}").unwrap();
        let alert = alert(Action::Trigger, Some(json!({"ids": [7, 42]})));
        assert_eq!(template.render(&alert).unwrap().as_str(), "pod-7f9c:provider-key-1:42");
    }

    #[test]
    fn an_alert_without_the_field_keeps_the_providers_key() {
        let template = DedupTemplate::parse("{payload.custom_details.labels.alertname}").unwrap();
        let mut alerts = vec![
            alert(Action::Resolve, None),
            alert(Action::Trigger, Some(json!({"labels": {}}))),
            alert(
                Action::Trigger,
                Some(json!({"labels": {"alertname": {"nested": true}}})),
            ),
            alert(Action::Trigger, Some(json!({"labels": {"alertname": "Up"}}))),
        ];
        template.apply(&mut alerts);
        let keys: Vec<&str> = alerts.iter().map(|a| a.dedup_key.as_str()).collect();
        assert_eq!(keys, ["provider-key-1", "provider-key-1", "provider-key-1", "Up"]);
    }

    #[test]
    fn a_long_key_is_hashed_like_any_other() {
        let template = DedupTemplate::parse("{payload.custom_details.text}").unwrap();
        let alert = alert(Action::Trigger, Some(json!({"text": "x".repeat(400)})));
        let key = template.render(&alert).unwrap();
        assert!(key.as_str().len() <= 255);
        assert_eq!(Some(key), template.render(&alert));
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        for (template, reason) in [
            ("", "no {field}"),
            ("constant", "no {field}"),
            ("{", "never closed"),
            ("{payload.source", "never closed"),
            ("payload}", "has no '{'"),
            ("}{payload.source}", "has no '{'"),
            ("{}", "not a field path"),
            ("{payload..source}", "not a field path"),
            ("{payload.{source}}", "not a field path"),
        ] {
            let error = DedupTemplate::parse(template).expect_err(template);
            assert!(error.contains(reason), "{template}: {error}");
        }
    }
}
