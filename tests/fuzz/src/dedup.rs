//! Per-integration dedup templates (shared/core/src/dedup.rs), fuzzed as
//! `template \0 alert`: the template text as an operator writes it, and an
//! alert as JSON (an [`Alert`], or any JSON value, which becomes a
//! trigger's custom_details, so that every sample in events/ can serve).
//!
//! Invariants: a parsed template keeps its text; parsing is deterministic;
//! a template that renders gives a key of 1 to 255 characters, already
//! trimmed, the same every time, and `apply` uses it (or keeps the
//! provider's key when it does not render); `{dedup_key}` alone renders
//! the provider's key.

use serde_json::{json, Value};
use tocsin_core::dedup::DedupTemplate;
use tocsin_core::event::Alert;

pub fn dedup(data: &[u8]) {
    let Some(nul) = data.iter().position(|&b| b == 0) else {
        let _ = std::str::from_utf8(data).map(DedupTemplate::parse);
        return;
    };
    let Ok(source) = std::str::from_utf8(&data[..nul]) else {
        return;
    };
    let template = match DedupTemplate::parse(source) {
        Ok(template) => template,
        Err(reason) => {
            assert!(!reason.is_empty(), "{source:?} refused without a reason");
            assert_eq!(DedupTemplate::parse(source), Err(reason));
            return;
        }
    };
    assert_eq!(template.as_str(), source);
    assert_eq!(template.to_string(), source);
    assert_eq!(DedupTemplate::parse(source).as_ref(), Ok(&template));

    let Some(alert) = alert(&data[nul + 1..]) else {
        return;
    };
    let rendered = template.render(&alert);
    assert_eq!(
        template.render(&alert),
        rendered,
        "{source:?} renders differently twice"
    );
    if let Some(key) = &rendered {
        let text = key.as_str();
        assert!(
            !text.is_empty() && text.chars().count() <= 255,
            "{source:?} rendered {text:?}"
        );
        assert_eq!(text, text.trim(), "{source:?} rendered {text:?}");
    }
    let mut applied = vec![alert.clone()];
    template.apply(&mut applied);
    assert_eq!(
        applied[0].dedup_key,
        rendered.unwrap_or_else(|| alert.dedup_key.clone()),
        "{source:?}: apply did not use what render gives"
    );

    let own = DedupTemplate::parse("{dedup_key}").unwrap_or_else(|reason| panic!("harness: {reason}"));
    assert_eq!(own.render(&alert).as_ref(), Some(&alert.dedup_key));
}

fn alert(body: &[u8]) -> Option<Alert> {
    if let Ok(alert) = serde_json::from_slice::<Alert>(body) {
        return Some(alert);
    }
    let details: Value = serde_json::from_slice(body).ok()?;
    // Built from JSON, as the queue reads it, so that fields added to
    // Alert later need no change here.
    serde_json::from_value(json!({
        "event_action": "trigger",
        "dedup_key": "provider-key",
        "payload": {"summary": "fuzzed", "source": "fuzz", "severity": "error", "custom_details": details},
    }))
    .ok()
}
