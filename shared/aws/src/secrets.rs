//! The [`SecretSource`] of the functions: Secrets Manager for
//! `{secrets_manager: tocsin/…}` references, environment variables and
//! files as everywhere else. Wrapped in [`tocsin_core::secrets::CachedSecrets`]
//! by the functions, so a container asks Secrets Manager once every few
//! minutes per secret, not once per request.

use async_trait::async_trait;
use tocsin_core::config::Secret;
use tocsin_core::ports::BackendError;
use tocsin_core::secrets::{LocalSecrets, SecretRef, SecretSource};

pub struct AwsSecrets {
    client: aws_sdk_secretsmanager::Client,
}

impl AwsSecrets {
    pub fn new(client: aws_sdk_secretsmanager::Client) -> Self {
        Self { client }
    }
}

/// Why a Secrets Manager secret could not be used. Never carries the value.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("the secret has no SecretString")]
    NoString,
    #[error("the secret is empty, or JSON whose \"secret\" field is missing or empty")]
    Empty,
}

/// The value in a SecretString: the text itself, or the `secret` field of
/// a JSON object (the shape the console's key/value editor writes).
fn value_of(text: &str) -> Option<&str> {
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        // A JSON object is read for its field; one without it is an error
        // rather than a secret that happens to start with a brace.
        return None;
    }
    (!trimmed.is_empty()).then_some(trimmed)
}

fn value_in_json(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let secret = value.get("secret")?.as_str()?;
    (!secret.is_empty()).then(|| secret.to_owned())
}

#[async_trait]
impl SecretSource for AwsSecrets {
    async fn fetch(&self, reference: &SecretRef) -> Result<Secret, BackendError> {
        let SecretRef::SecretsManager(id) = reference else {
            return LocalSecrets.fetch(reference).await;
        };
        let output =
            self.client.get_secret_value().secret_id(id).send().await.map_err(|e| {
                BackendError::new("secretsmanager GetSecretValue", aws_sdk_secretsmanager::Error::from(e))
            })?;
        let text = output
            .secret_string()
            .ok_or_else(|| BackendError::new("secretsmanager GetSecretValue", ReadError::NoString))?;
        match value_of(text) {
            Some(value) => Ok(Secret::new(value)),
            None => value_in_json(text)
                .map(Secret::new)
                .ok_or_else(|| BackendError::new("secretsmanager GetSecretValue", ReadError::Empty)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_string_is_the_value_or_json_with_a_secret_field() {
        assert_eq!(value_of("  plain-signing-secret\n"), Some("plain-signing-secret"));
        assert_eq!(value_of(r#"{"secret": "x"}"#), None);
        assert_eq!(
            value_in_json(r#"{"secret": "json-held", "rotated": "2026-11-01"}"#).as_deref(),
            Some("json-held")
        );
        assert_eq!(value_in_json(r#"{"token": "x"}"#), None);
        assert_eq!(value_in_json(r#"{"secret": ""}"#), None);
        assert_eq!(value_of("   "), None);
    }
}
