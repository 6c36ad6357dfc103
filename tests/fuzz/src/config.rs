//! The config file (Catalog::from_yaml), fuzzed on its text.
//!
//! Invariants: the same text gives the same verdict (errors equal); an
//! error names the file and a field; an accepted catalog has unique
//! service and integration ids and keys, every integration in a declared
//! service, secrets of at least 16 characters, topics for every cloudwatch
//! integration; and its Debug form never shows a secret, a Slack token or
//! a plain integration key (written once in the text).

use tocsin_core::config::{Catalog, SlackDelivery};
use tocsin_core::providers::ProviderKind;

pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let catalog = match Catalog::from_yaml(text, "fuzz.yaml") {
        Ok(catalog) => catalog,
        Err(error) => {
            assert_eq!(error.file, "fuzz.yaml");
            assert!(!error.field.is_empty(), "an error without a field: {error}");
            assert_eq!(Catalog::from_yaml(text, "fuzz.yaml").err(), Some(error));
            return;
        }
    };
    assert!(
        Catalog::from_yaml(text, "fuzz.yaml").is_ok(),
        "accepted once, refused once"
    );

    let mut ids = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    for integration in &catalog.integrations {
        assert!(ids.insert(&integration.id), "integration {} twice", integration.id);
        assert!(keys.insert(&integration.key_hash), "a key shared by two integrations");
        assert!(
            catalog.service(&integration.service).is_some(),
            "integration {} of an undeclared service",
            integration.id
        );
        if let Some(secret) = &integration.secret {
            assert!(secret.expose().len() >= 16, "a short secret accepted");
        }
        if integration.provider == ProviderKind::CloudWatch {
            assert!(!integration.cloudwatch.topics.is_empty(), "cloudwatch without topics");
        }
    }
    let mut services = std::collections::HashSet::new();
    for service in &catalog.services {
        assert!(services.insert(&service.id), "service {} twice", service.id);
    }

    let mut hidden: Vec<&str> = catalog
        .integrations
        .iter()
        .filter_map(|integration| integration.secret.as_ref().map(|s| s.expose()))
        .collect();
    hidden.extend(catalog.plain_keys.values().map(|key| key.reveal()));
    match &catalog.settings.slack {
        Some(SlackDelivery::Bot { token }) => hidden.push(token.expose()),
        Some(SlackDelivery::IncomingWebhook { url }) => hidden.push(url.expose()),
        None => {}
    }
    let debug = format!("{catalog:?}");
    for value in hidden.into_iter().filter(|v| v.len() >= 16) {
        // Only a value the text holds once, as the secret: the text may
        // repeat it inside another value (a service name, say), which
        // Debug then rightly shows.
        if text.matches(value).count() == 1 {
            assert!(
                !debug.contains(value),
                "the catalog's Debug shows a secret or key: {value:?}"
            );
        }
    }
}
