//! Honeycomb triggers and SLO burn alerts through a Honeycomb webhook
//! recipient, with its default payload (`version` v0.1.0): one alert per
//! notification, keyed by the trigger's `id`, opened on `TRIGGERED` and
//! resolved on `OK`. Test notifications (`is_test`) are answered and dropped.
//!
//! <https://docs.honeycomb.io/integrations/webhooks/>
//! <https://github.com/honeycombio/examples/tree/master/webhook-listener-triggers>

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, FieldError, Link, Payload, Severity};
use crate::providers::{Inbound, InvalidPayload, Provider, ProviderKind};
use crate::signature::SignatureError;

pub struct Honeycomb;

/// The header carrying the webhook recipient's shared secret, as is.
const TOKEN_HEADER: &str = "x-honeycomb-webhook-token";
/// Stable across Honeycomb's retries of one notification.
const DELIVERY_HEADER: &str = "x-honeycomb-webhook-delivery-id";

/// The default payload carries no severity. Honeycomb's own default for
/// paging recipients is critical, and a trigger firing means someone asked
/// to be told.
const SEVERITY: Severity = Severity::Critical;

const SOURCE: &str = "honeycomb";

const INVALID: &str = "the Honeycomb notification is invalid";

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Notification {
    id: Option<String>,
    name: Option<String>,
    status: Option<String>,
    summary: Option<String>,
    trigger_url: Option<String>,
    result_url: Option<String>,
    slo_url: Option<String>,
    sli_url: Option<String>,
    is_test: Option<bool>,
}

impl Provider for Honeycomb {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Honeycomb
    }

    fn delivery_id<'a>(&self, inbound: &Inbound<'a>) -> Option<&'a str> {
        inbound
            .headers
            .get(DELIVERY_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|id| !id.is_empty())
    }

    /// Honeycomb sends the recipient's shared secret itself in
    /// `X-Honeycomb-Webhook-Token`: no signature, no timestamp.
    fn verify(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<(), SignatureError> {
        let Some(secret) = &integration.secret else {
            return Ok(());
        };
        let token = inbound
            .headers
            .get(TOKEN_HEADER)
            .ok_or(SignatureError::Missing {
                expected: "X-Honeycomb-Webhook-Token: <shared secret>",
            })?
            .as_bytes();
        // Digests of equal length, so the comparison leaks neither the
        // secret nor its length.
        let sent = Sha256::digest(token);
        let expected = Sha256::digest(secret.expose().as_bytes());
        if bool::from(sent.ct_eq(&expected)) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let mut raw = parse_object(inbound.body)?;
        let notification: Notification = serde_path_to_error::deserialize(&raw).map_err(|error| {
            let path = error.path().to_string();
            InvalidPayload::field(path, format!("has the wrong type: {}", error.into_inner()))
        })?;

        if notification.is_test == Some(true) {
            tracing::info!(
                trigger = notification.id.as_deref().unwrap_or(""),
                "honeycomb test notification"
            );
            return Ok(Vec::new());
        }

        let mut errors = Vec::new();
        let action = action_of(notification.status.as_deref())
            .map_err(|e| errors.push(e))
            .ok();
        let key = dedup_key_of(&notification).map_err(|e| errors.push(e)).ok();
        let (Some(event_action), Some(dedup_key)) = (action, key) else {
            return Err(InvalidPayload::new(INVALID, errors));
        };

        let summary = non_blank(notification.summary.as_deref())
            .or(non_blank(notification.name.as_deref()))
            .map(str::to_owned)
            .unwrap_or_else(|| format!("Honeycomb trigger {dedup_key}"));
        // Early payloads carried the recipient's secret in the body; it must
        // not be stored with the incident.
        if let Some(object) = raw.as_object_mut() {
            object.remove("shared_secret");
        }

        Ok(vec![Alert {
            event_action,
            dedup_key,
            payload: Some(Payload {
                summary: Payload::truncate_summary(&summary),
                source: SOURCE.to_owned(),
                severity: SEVERITY,
                // The default payload has no time of its own.
                timestamp: None,
                component: None,
                group: None,
                class: non_blank(notification.name.as_deref()).map(str::to_owned),
                custom_details: Some(raw),
            }),
            links: links_of(&notification),
            images: Vec::new(),
            client: Some("Honeycomb".to_owned()),
            client_url: non_blank(notification.trigger_url.as_deref()).map(str::to_owned),
        }])
    }
}

fn parse_object(body: &[u8]) -> Result<Value, InvalidPayload> {
    let value: Value = serde_json::from_slice(body).map_err(InvalidPayload::unreadable)?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(InvalidPayload::field(
            "body",
            "must be one JSON object (a Honeycomb webhook notification)",
        ))
    }
}

/// Honeycomb writes TRIGGERED and OK; its integration test has been seen
/// with other casing, so case is ignored.
fn action_of(status: Option<&str>) -> Result<Action, FieldError> {
    match non_blank(status) {
        Some(s) if s.eq_ignore_ascii_case("triggered") => Ok(Action::Trigger),
        Some(s) if s.eq_ignore_ascii_case("ok") => Ok(Action::Resolve),
        Some(other) => Err(FieldError::new(
            "status",
            format!("'{other}' is not one of TRIGGERED, OK"),
        )),
        None => Err(FieldError::new("status", "is missing (TRIGGERED or OK)")),
    }
}

/// The trigger (or burn alert) id. Payloads from before Honeycomb added `id`
/// name the trigger only: its name, the same in TRIGGERED and OK, keys it.
fn dedup_key_of(notification: &Notification) -> Result<DedupKey, FieldError> {
    if let Some(id) = non_blank(notification.id.as_deref()) {
        return DedupKey::parse(id).map_err(|e| e.at("id"));
    }
    match non_blank(notification.name.as_deref()) {
        Some(name) => Ok(DedupKey::digest_of(&[SOURCE, name])),
        None => Err(FieldError::new(
            "id",
            "is missing, and so is name: nothing identifies the trigger",
        )),
    }
}

fn links_of(notification: &Notification) -> Vec<Link> {
    [
        (&notification.trigger_url, "Honeycomb trigger"),
        (&notification.result_url, "Query result"),
        (&notification.slo_url, "Honeycomb SLO"),
        (&notification.sli_url, "SLI"),
    ]
    .into_iter()
    .filter_map(|(href, text)| {
        non_blank(href.as_deref()).map(|href| Link {
            href: href.to_owned(),
            text: Some(text.to_owned()),
        })
    })
    .collect()
}

fn non_blank(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};
    use serde_json::json;

    use super::*;

    const TRIGGERED: &str = include_str!("../../../../events/honeycomb/triggered.json");
    const OK: &str = include_str!("../../../../events/honeycomb/ok.json");
    const TEST: &str = include_str!("../../../../events/honeycomb/test.json");
    const TEST_INTEGRATION: &str = include_str!("../../../../events/honeycomb/test-integration.json");

    // The shared secret of Honeycomb's own example listener.
    const SECRET: &str = "would you like to play a game";

    fn integration(secret: Option<&str>) -> Integration {
        crate::providers::test_support::integration(
            "checkout-honeycomb",
            "checkout",
            ProviderKind::Honeycomb,
            "55555555555555555555555555555555",
            secret,
        )
    }

    fn inbound<'a>(headers: &'a HeaderMap, body: &'a str) -> Inbound<'a> {
        Inbound {
            headers,
            query: None,
            body: body.as_bytes(),
            received_at: chrono::Utc::now(),
        }
    }

    fn normalize(body: &str) -> Result<Vec<Alert>, InvalidPayload> {
        let headers = HeaderMap::new();
        Honeycomb.normalize(&inbound(&headers, body), &integration(None))
    }

    fn one(body: &str) -> Alert {
        let mut alerts = normalize(body).unwrap();
        assert_eq!(alerts.len(), 1);
        alerts.remove(0)
    }

    fn refused(body: &str) -> Vec<String> {
        normalize(body)
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    fn with(sample: &str, change: impl FnOnce(&mut Value)) -> String {
        let mut value: Value = serde_json::from_str(sample).unwrap();
        change(&mut value);
        value.to_string()
    }

    fn verify(token: Option<&str>, secret: Option<&str>) -> Result<(), SignatureError> {
        let mut headers = HeaderMap::new();
        if let Some(token) = token {
            headers.insert(TOKEN_HEADER, HeaderValue::from_str(token).unwrap());
        }
        Honeycomb.verify(&inbound(&headers, TRIGGERED), &integration(secret))
    }

    #[test]
    fn a_triggered_notification_opens_the_trigger_id() {
        let alert = one(TRIGGERED);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "abdcefg");
        let payload = alert.payload.as_ref().unwrap();
        assert_eq!(payload.summary, "Triggered: trig on ttt");
        assert_eq!(payload.source, "honeycomb");
        assert_eq!(payload.severity, Severity::Critical);
        assert_eq!(payload.class.as_deref(), Some("trig on ttt"));
        assert_eq!(payload.timestamp, None);
        let details = payload.custom_details.as_ref().unwrap();
        assert_eq!(
            details["result_groups_triggered"],
            json!([{"Group": {"foo": "fooOOOddd"}, "Result": 5}])
        );
        assert_eq!(details["threshold"], json!(2));
        // result_url is empty in the sample: only the trigger is linked.
        assert_eq!(alert.links.len(), 1);
        assert_eq!(alert.links[0].text.as_deref(), Some("Honeycomb trigger"));
        assert_eq!(
            alert.client_url.as_deref(),
            Some("https://ui.honeycomb.io/team/datasets/dataset/triggers/abdcefg")
        );
    }

    #[test]
    fn ok_resolves_the_same_trigger() {
        let alert = one(OK);
        assert_eq!(alert.event_action, Action::Resolve);
        assert_eq!(alert.dedup_key, one(TRIGGERED).dedup_key);
        assert_eq!(alert.payload.unwrap().summary, "Resolved: trig on ttt");
    }

    #[test]
    fn test_notifications_are_accepted_and_dropped() {
        assert_eq!(normalize(TEST).unwrap(), Vec::new());
        // Honeycomb's integration test, with its oddly cased status.
        assert_eq!(normalize(TEST_INTEGRATION).unwrap(), Vec::new());
        let not_a_test = with(TEST_INTEGRATION, |v| v["is_test"] = json!(false));
        let alert = one(&not_a_test);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "IdlLjelDnWKh");
        // Empty summary: the name stands in.
        assert_eq!(alert.payload.as_ref().unwrap().summary, "Sample Honeycomb Alert");
        let texts: Vec<_> = alert.links.iter().filter_map(|l| l.text.as_deref()).collect();
        assert_eq!(texts, vec!["Query result", "Honeycomb SLO", "SLI"]);
    }

    #[test]
    fn payloads_without_an_id_key_on_the_trigger_name() {
        let old_triggered = with(TRIGGERED, |v| {
            v.as_object_mut().unwrap().remove("id");
            v["shared_secret"] = json!(SECRET);
        });
        let old_ok = with(OK, |v| {
            v.as_object_mut().unwrap().remove("id");
        });
        let alert = one(&old_triggered);
        assert_eq!(alert.dedup_key, DedupKey::digest_of(&["honeycomb", "trig on ttt"]));
        assert_eq!(alert.dedup_key, one(&old_ok).dedup_key);
        // The secret in the body is not kept.
        let details = alert.payload.unwrap().custom_details.unwrap();
        assert!(details.get("shared_secret").is_none(), "{details}");
    }

    #[test]
    fn unknown_or_missing_status_and_identity_are_refused() {
        assert_eq!(
            refused(&with(TRIGGERED, |v| v["status"] = json!("PENDING"))),
            vec!["status"]
        );
        let bare = json!({"summary": "s"}).to_string();
        assert_eq!(refused(&bare), vec!["status", "id"]);
        assert_eq!(refused(&with(TRIGGERED, |v| v["id"] = json!(12))), vec!["id"]);
        assert_eq!(
            refused(&with(TRIGGERED, |v| v["is_test"] = json!("yes"))),
            vec!["is_test"]
        );
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert_eq!(refused("{"), vec!["body"]);
        assert_eq!(refused("[]"), vec!["body"]);
        assert_eq!(refused("\"TRIGGERED\""), vec!["body"]);
    }

    #[test]
    fn the_token_header_must_carry_the_secret() {
        assert_eq!(verify(Some(SECRET), Some(SECRET)), Ok(()));
        assert_eq!(
            verify(Some("would you like to play a gam"), Some(SECRET)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some("WOULD YOU LIKE TO PLAY A GAME"), Some(SECRET)),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify(None, Some(SECRET)),
            Err(SignatureError::Missing { .. })
        ));
        // No secret configured: the header is not required, nor checked.
        assert_eq!(verify(None, None), Ok(()));
        assert_eq!(verify(Some("anything"), None), Ok(()));
    }
}
