//! The stored form of config that operators change at run time
//! (`tocsin integrations`): one serde shape shared by the DynamoDB table
//! (an item's `data` attribute) and the local stack's SQLite store, so an
//! integration reads back the same whichever store wrote it.

use serde::{Deserialize, Serialize};

use crate::auth::KeyHash;
use crate::config::{CloudWatchSettings, FieldMapping, Integration, Secret};
use crate::dedup::DedupTemplate;
use crate::event::{IntegrationId, ServiceId};
use crate::providers::ProviderKind;
use crate::secrets::SecretRef;

/// An [`Integration`] as stored. Field names, defaults and skip rules are
/// those of the items already in deployed tables: change none of them.
/// Its `Debug` leaves the secret out.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrationRecord {
    pub id: IntegrationId,
    pub service: ServiceId,
    pub provider: ProviderKind,
    pub key_hash: KeyHash,
    /// A secret given as a value in the config (the table is encrypted at
    /// rest); `secret_ref` keeps it out of the table.
    pub secret: Option<String>,
    /// Where the secret lives, when the config names it: only the name is
    /// stored, never the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    pub enabled: bool,
    pub fields: FieldsRecord,
    /// Type cloudwatch: allowed SNS topics, INSUFFICIENT_DATA handling,
    /// default severity. Absent from items written before it existed.
    #[serde(default)]
    pub cloudwatch: CloudWatchSettings,
    /// The `dedup_key` template's text, checked when the config was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    /// 0: no limit. Items written before the limit existed get the default.
    #[serde(default = "default_rate_limit")]
    pub rate_limit_per_minute: u32,
}

impl std::fmt::Debug for IntegrationRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrationRecord")
            .field("id", &self.id)
            .field("service", &self.service)
            .field("provider", &self.provider)
            .field("key_hash", &self.key_hash)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_ref", &self.secret_ref)
            .field("enabled", &self.enabled)
            .field("fields", &self.fields)
            .field("cloudwatch", &self.cloudwatch)
            .field("dedup_key", &self.dedup_key)
            .field("rate_limit_per_minute", &self.rate_limit_per_minute)
            .finish()
    }
}

/// A service's outgoing webhook as stored. The URL and secret are kept
/// like an integration's secret given as a value (the table is encrypted at
/// rest); its `Debug` shows the host only.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookRecord {
    pub url: String,
    pub format: crate::config::WebhookFormat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Where the secret lives, when the config names it: only the name is
    /// stored, never the value (as an integration's `secret_ref`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

impl std::fmt::Debug for WebhookRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = crate::config::WebhookUrl::parse(&self.url);
        f.debug_struct("WebhookRecord")
            .field("host", &url.as_ref().map(|u| u.host()).unwrap_or("<invalid>"))
            .field("format", &self.format)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_ref", &self.secret_ref)
            .finish()
    }
}

impl From<&crate::config::Webhook> for WebhookRecord {
    fn from(hook: &crate::config::Webhook) -> Self {
        WebhookRecord {
            url: hook.url.expose().to_owned(),
            format: hook.format,
            secret: match &hook.secret {
                Some(crate::config::ConfiguredSecret::Value(secret)) => Some(secret.expose().to_owned()),
                _ => None,
            },
            secret_ref: match &hook.secret {
                Some(crate::config::ConfiguredSecret::Reference(reference)) => Some(reference.clone()),
                _ => None,
            },
        }
    }
}

impl TryFrom<WebhookRecord> for crate::config::Webhook {
    type Error = crate::event::FieldError;

    fn try_from(record: WebhookRecord) -> Result<Self, Self::Error> {
        Ok(crate::config::Webhook {
            url: crate::config::WebhookUrl::parse(&record.url)?,
            format: record.format,
            // Written by this code, a record holds one or the other; the
            // reference wins, as the newer form.
            secret: match (record.secret_ref, record.secret) {
                (Some(reference), _) => Some(crate::config::ConfiguredSecret::Reference(reference)),
                (None, Some(value)) => Some(crate::config::ConfiguredSecret::Value(Secret::new(value))),
                (None, None) => None,
            },
        })
    }
}

fn default_rate_limit() -> u32 {
    crate::ratelimit::DEFAULT_PER_MINUTE
}

/// A [`FieldMapping`] as stored: every field optional, so records written
/// before a field existed still read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FieldsRecord {
    pub summary_field: Option<String>,
    pub severity_field: Option<String>,
    pub dedup_key_field: Option<String>,
    pub action_field: Option<String>,
    pub source_field: Option<String>,
    pub trigger_values: Vec<String>,
    pub resolve_values: Vec<String>,
    pub acknowledge_values: Vec<String>,
}

impl From<&FieldMapping> for FieldsRecord {
    fn from(fields: &FieldMapping) -> Self {
        FieldsRecord {
            summary_field: fields.summary_field.clone(),
            severity_field: fields.severity_field.clone(),
            dedup_key_field: fields.dedup_key_field.clone(),
            action_field: fields.action_field.clone(),
            source_field: fields.source_field.clone(),
            trigger_values: fields.trigger_values.clone(),
            resolve_values: fields.resolve_values.clone(),
            acknowledge_values: fields.acknowledge_values.clone(),
        }
    }
}

impl From<FieldsRecord> for FieldMapping {
    fn from(record: FieldsRecord) -> Self {
        FieldMapping {
            summary_field: record.summary_field,
            severity_field: record.severity_field,
            dedup_key_field: record.dedup_key_field,
            action_field: record.action_field,
            source_field: record.source_field,
            trigger_values: record.trigger_values,
            resolve_values: record.resolve_values,
            acknowledge_values: record.acknowledge_values,
        }
    }
}

impl From<&Integration> for IntegrationRecord {
    fn from(integration: &Integration) -> Self {
        IntegrationRecord {
            id: integration.id.clone(),
            service: integration.service.clone(),
            provider: integration.provider,
            key_hash: integration.key_hash.clone(),
            secret: integration.secret.as_ref().map(|s| s.expose().to_owned()),
            secret_ref: integration.secret_ref.clone(),
            enabled: integration.enabled,
            fields: FieldsRecord::from(&integration.fields),
            cloudwatch: integration.cloudwatch.clone(),
            dedup_key: integration.dedup_key.as_ref().map(|t| t.as_str().to_owned()),
            rate_limit_per_minute: integration.rate_limit_per_minute.unwrap_or(0),
        }
    }
}

impl From<IntegrationRecord> for Integration {
    fn from(record: IntegrationRecord) -> Self {
        // The config loader refuses a bad template, so one here was written
        // by another version: the provider's keys are the safe side.
        let dedup_key = record.dedup_key.and_then(|text| match DedupTemplate::parse(&text) {
            Ok(template) => Some(template),
            Err(reason) => {
                tracing::warn!(integration = %record.id, %reason, "ignoring a stored dedup_key template");
                None
            }
        });
        Integration {
            id: record.id,
            service: record.service,
            provider: record.provider,
            key_hash: record.key_hash,
            secret: record.secret.map(Secret::new),
            secret_ref: record.secret_ref,
            enabled: record.enabled,
            fields: record.fields.into(),
            cloudwatch: record.cloudwatch,
            dedup_key,
            rate_limit_per_minute: (record.rate_limit_per_minute > 0).then_some(record.rate_limit_per_minute),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::IntegrationKey;

    fn webhook() -> Integration {
        Integration {
            id: IntegrationId::parse("checkout-webhook").unwrap(),
            service: ServiceId::parse("checkout").unwrap(),
            provider: ProviderKind::Webhook,
            key_hash: IntegrationKey::parse("0123456789abcdef0123456789abcdef")
                .unwrap()
                .hash(),
            secret: None,
            secret_ref: None,
            enabled: true,
            fields: FieldMapping::default(),
            cloudwatch: CloudWatchSettings::default(),
            dedup_key: None,
            rate_limit_per_minute: None,
        }
    }

    #[test]
    fn an_integration_reads_back_as_written() {
        let integration = webhook();
        let json = serde_json::to_string(&IntegrationRecord::from(&integration)).unwrap();
        let record: IntegrationRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(Integration::from(record), integration);
    }

    #[test]
    fn the_stored_shape_is_the_one_deployed_tables_hold() {
        let integration = webhook();
        let json = serde_json::to_string(&IntegrationRecord::from(&integration)).unwrap();
        // Byte for byte what tables already hold: field order, nulls kept,
        // no secret_ref nor dedup_key when unset, 0 for no limit.
        let expected = format!(
            concat!(
                r#"{{"id":"checkout-webhook","service":"checkout","provider":"webhook","key_hash":"{}","#,
                r#""secret":null,"enabled":true,"fields":{{"summary_field":null,"severity_field":null,"#,
                r#""dedup_key_field":null,"action_field":null,"source_field":null,"trigger_values":[],"#,
                r#""resolve_values":[],"acknowledge_values":[]}},"cloudwatch":{{"topics":[],"#,
                r#""insufficient_data":"ignore","severity":"error"}},"rate_limit_per_minute":0}}"#
            ),
            integration.key_hash.as_str()
        );
        assert_eq!(json, expected);
    }

    #[test]
    fn debug_leaves_the_secret_out() {
        let mut record = IntegrationRecord::from(&webhook());
        record.secret = Some("s3cr3t-value".into());
        let shown = format!("{record:?}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn records_older_than_the_rate_limit_get_the_default() {
        let mut json = serde_json::to_value(IntegrationRecord::from(&webhook())).unwrap();
        json.as_object_mut().unwrap().remove("rate_limit_per_minute");
        json.as_object_mut().unwrap().remove("cloudwatch");
        let record: IntegrationRecord = serde_json::from_value(json).unwrap();
        assert_eq!(record.rate_limit_per_minute, crate::ratelimit::DEFAULT_PER_MINUTE);
        assert_eq!(record.cloudwatch, CloudWatchSettings::default());
    }

    #[test]
    fn a_webhook_stores_a_literal_secret_as_before_and_only_the_name_of_a_reference() {
        use crate::config::{ConfiguredSecret, Webhook, WebhookFormat, WebhookUrl};
        let hook = |secret| Webhook {
            url: WebhookUrl::parse("https://hooks.example.com/tocsin").unwrap(),
            format: WebhookFormat::Generic,
            secret,
        };
        let literal = hook(Some(ConfiguredSecret::Value(Secret::new("whsec-literal"))));
        let json = serde_json::to_string(&WebhookRecord::from(&literal)).unwrap();
        assert_eq!(
            json,
            r#"{"url":"https://hooks.example.com/tocsin","format":"generic","secret":"whsec-literal"}"#
        );
        let named = hook(Some(ConfiguredSecret::Reference(SecretRef::SecretsManager(
            "tocsin/checkout-hook".into(),
        ))));
        let json = serde_json::to_string(&WebhookRecord::from(&named)).unwrap();
        assert_eq!(
            json,
            r#"{"url":"https://hooks.example.com/tocsin","format":"generic","secret_ref":{"secrets_manager":"tocsin/checkout-hook"}}"#
        );
        for hook in [literal, named, hook(None)] {
            let record: WebhookRecord =
                serde_json::from_str(&serde_json::to_string(&WebhookRecord::from(&hook)).unwrap()).unwrap();
            assert_eq!(Webhook::try_from(record).unwrap(), hook);
        }
    }
}
