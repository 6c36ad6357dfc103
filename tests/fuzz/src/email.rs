//! Inbound email as SES hands it over (providers::email::read_email), fuzzed
//! as `recipient \0 raw message`; a message alone goes to `KEY@…`. MIME
//! parsing itself is mail-parser's; what is checked here is what Tocsin
//! makes of it.
//!
//! Invariants: reading is deterministic; the recipient's key is what the
//! address carries; a message makes at most one alert, valid as every
//! provider's (key, payload, summary); the integration key the address
//! carries is masked in the summary and the custom_details.

use serde_json::Value;
use tocsin_core::providers::email::{read_email, Recipient};

use crate::occurrences;

pub fn email(data: &[u8]) {
    let default = format!("{}@alerts.example.com", crate::KEY);
    let (recipient, raw) = match data.iter().position(|&b| b == 0) {
        Some(nul) => match std::str::from_utf8(&data[..nul]) {
            Ok(recipient) => (recipient, &data[nul + 1..]),
            Err(_) => return,
        },
        None => (default.as_str(), data),
    };

    let parsed = Recipient::parse(recipient);
    if let Ok(parsed) = &parsed {
        let key = parsed.key().reveal();
        assert!(
            key.len() == 32 && key.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{recipient:?} read as the key {key:?}"
        );
        if let Some(dedup) = parsed.dedup_override() {
            assert!(
                !dedup.is_empty() && dedup == dedup.trim(),
                "{recipient:?} read as +{dedup:?}"
            );
        }
    }

    let first = read_email(raw, recipient);
    let second = read_email(raw, recipient);
    let (first, second) = match (first, second) {
        (Ok(first), Ok(second)) => (first, second),
        (Err(first), Err(second)) => {
            assert_eq!(first, second, "the same message refused differently");
            return;
        }
        (first, second) => panic!("read_email is not deterministic: {first:?} then {second:?}"),
    };
    assert_eq!(first.alerts, second.alerts, "read_email is not deterministic");
    let expected_key = parsed.as_ref().map(|r| r.key().clone()).ok();
    assert_eq!(
        Some(&first.key),
        expected_key.as_ref(),
        "the key is not the recipient's"
    );
    assert!(
        first.alerts.len() <= 1,
        "one message made {} alerts",
        first.alerts.len()
    );

    let key = first.key.reveal();
    for alert in &first.alerts {
        crate::provider::check_alert(tocsin_core::providers::ProviderKind::Email, alert);
        let Some(payload) = &alert.payload else {
            continue;
        };
        assert!(
            occurrences(payload.summary.as_bytes(), key) == 0,
            "the summary shows the integration key: {}",
            payload.summary
        );
        if let Some(details) = &payload.custom_details {
            for text in strings(details) {
                assert!(
                    occurrences(text.as_bytes(), key) == 0,
                    "custom_details show the integration key: {text:?} in {details}"
                );
            }
        }
    }
}

/// Every string in a JSON value, object keys included: the text people
/// see, unlike the JSON form, whose escapes can spell a key by chance.
fn strings(value: &Value) -> Vec<&str> {
    match value {
        Value::String(text) => vec![text],
        Value::Array(items) => items.iter().flat_map(strings).collect(),
        Value::Object(map) => map
            .iter()
            .flat_map(|(name, value)| std::iter::once(name.as_str()).chain(strings(value)))
            .collect(),
        _ => Vec::new(),
    }
}
