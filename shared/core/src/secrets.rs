//! Secrets the config names instead of holding: an integration's signing
//! secret as `secret: {secrets_manager: tocsin/payments-webhook}`,
//! `{env: VAR}` or `{file: /run/secrets/x}`. Ingest resolves the reference
//! when a request needs it, through a [`SecretSource`], and keeps the value
//! for [`CACHE_FOR`] in the process (a Lambda container, the local stack),
//! so a busy integration costs one Secrets Manager call per container every
//! few minutes and a rotated secret is picked up within that time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::ports::BackendError;

/// How long a fetched value is used before it is fetched again.
pub const CACHE_FOR: Duration = Duration::from_secs(300);

/// Secrets Manager names the functions may read (template.yaml grants
/// `secret:tocsin/*` only).
pub const SECRETS_MANAGER_PREFIX: &str = "tocsin/";

/// Where a secret's value lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretRef {
    /// An AWS Secrets Manager secret, by name or ARN: its SecretString,
    /// either the value itself or JSON with a `secret` field.
    SecretsManager(String),
    /// An environment variable of the process.
    Env(String),
    /// A file's content without its trailing newline.
    File(PathBuf),
}

impl SecretRef {
    /// Checks the reference itself (not the value, which may not exist
    /// yet where the config is validated).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            SecretRef::SecretsManager(id) => {
                let name = match id.strip_prefix("arn:") {
                    // arn:aws:secretsmanager:region:account:secret:NAME-suffix
                    Some(_) => id.splitn(7, ':').nth(6).unwrap_or(""),
                    None => id.as_str(),
                };
                if name.starts_with(SECRETS_MANAGER_PREFIX) && name.len() > SECRETS_MANAGER_PREFIX.len() {
                    Ok(())
                } else {
                    Err(format!(
                        "'{id}': the functions may read only secrets named {SECRETS_MANAGER_PREFIX}…"
                    ))
                }
            }
            SecretRef::Env(name) if name.is_empty() => Err("must name an environment variable".into()),
            SecretRef::File(path) if path.as_os_str().is_empty() => Err("must name a file".into()),
            SecretRef::Env(_) | SecretRef::File(_) => Ok(()),
        }
    }
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the secret is empty")]
    Empty,
    #[error("this runtime cannot read Secrets Manager secrets; use env or file")]
    NoSecretsManager,
}

/// Reads secrets by reference.
#[async_trait]
pub trait SecretSource: Send + Sync {
    async fn fetch(&self, reference: &SecretRef) -> Result<Secret, BackendError>;
}

/// Environment variables and files; a Secrets Manager reference is an
/// error (tocsin-aws's source reads those and delegates the rest here).
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalSecrets;

impl LocalSecrets {
    pub fn read(reference: &SecretRef) -> Result<Secret, SecretError> {
        let value = match reference {
            SecretRef::Env(name) => std::env::var(name).map_err(|_| SecretError::MissingEnv(name.clone()))?,
            SecretRef::File(path) => std::fs::read_to_string(path).map_err(|source| SecretError::File {
                path: path.clone(),
                source,
            })?,
            SecretRef::SecretsManager(_) => return Err(SecretError::NoSecretsManager),
        };
        let value = value.trim_end_matches(['\r', '\n']);
        if value.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Secret::new(value))
    }
}

#[async_trait]
impl SecretSource for LocalSecrets {
    async fn fetch(&self, reference: &SecretRef) -> Result<Secret, BackendError> {
        Self::read(reference).map_err(|e| BackendError::new("read a secret", e))
    }
}

/// A [`SecretSource`] with a per-process cache of [`CACHE_FOR`]. When a
/// refresh fails, the value it had is used on (and the failure logged):
/// a Secrets Manager outage must not stop verified alerts.
pub struct CachedSecrets {
    inner: Arc<dyn SecretSource>,
    ttl: Duration,
    cache: Mutex<HashMap<SecretRef, (Secret, Instant)>>,
}

impl CachedSecrets {
    pub fn new(inner: Arc<dyn SecretSource>) -> Self {
        Self::with_ttl(inner, CACHE_FOR)
    }

    pub fn with_ttl(inner: Arc<dyn SecretSource>, ttl: Duration) -> Self {
        Self {
            inner,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, reference: &SecretRef) -> Option<(Secret, bool)> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(reference)
            .map(|(secret, at)| (secret.clone(), at.elapsed() < self.ttl))
    }
}

#[async_trait]
impl SecretSource for CachedSecrets {
    async fn fetch(&self, reference: &SecretRef) -> Result<Secret, BackendError> {
        let stale = match self.cached(reference) {
            Some((secret, true)) => return Ok(secret),
            Some((secret, false)) => Some(secret),
            None => None,
        };
        match self.inner.fetch(reference).await {
            Ok(secret) => {
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                cache.insert(reference.clone(), (secret.clone(), Instant::now()));
                Ok(secret)
            }
            Err(error) => match stale {
                Some(secret) => {
                    tracing::warn!(error = %error, source = %error.source, "refreshing a secret failed; the previous value is used");
                    Ok(secret)
                }
                None => Err(error),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    #[test]
    fn references_are_checked_for_what_the_functions_may_read() {
        let ok = [
            SecretRef::SecretsManager("tocsin/payments".into()),
            SecretRef::SecretsManager(
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:tocsin/payments-AbCdEf".into(),
            ),
            SecretRef::Env("PAYMENTS_SECRET".into()),
            SecretRef::File("/run/secrets/payments".into()),
        ];
        for reference in ok {
            assert_eq!(reference.validate(), Ok(()), "{reference:?}");
        }
        for reference in [
            SecretRef::SecretsManager("payments".into()),
            SecretRef::SecretsManager("tocsin/".into()),
            SecretRef::SecretsManager("arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf".into()),
            SecretRef::Env(String::new()),
        ] {
            assert!(reference.validate().is_err(), "{reference:?}");
        }
    }

    #[test]
    fn files_and_environment_variables_are_read_without_the_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-a-file-0123456789\n").unwrap();
        let secret = LocalSecrets::read(&SecretRef::File(path)).unwrap();
        assert_eq!(secret.expose(), "from-a-file-0123456789");
        assert!(matches!(
            LocalSecrets::read(&SecretRef::Env("TOCSIN_TEST_SURELY_UNSET_VARIABLE".into())),
            Err(SecretError::MissingEnv(_))
        ));
        assert!(matches!(
            LocalSecrets::read(&SecretRef::SecretsManager("tocsin/x".into())),
            Err(SecretError::NoSecretsManager)
        ));
    }

    /// Counts fetches; fails once `fail` is set.
    struct Counting {
        fetches: AtomicUsize,
        fail: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl SecretSource for Counting {
        async fn fetch(&self, _: &SecretRef) -> Result<Secret, BackendError> {
            let n = self.fetches.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(BackendError::new("secretsmanager GetSecretValue", "unreachable"));
            }
            Ok(Secret::new(format!("value-{n}")))
        }
    }

    #[test]
    fn values_are_cached_refreshed_after_the_ttl_and_kept_when_a_refresh_fails() {
        let inner = Arc::new(Counting {
            fetches: AtomicUsize::new(0),
            fail: false.into(),
        });
        let reference = SecretRef::SecretsManager("tocsin/x".into());

        let cached = CachedSecrets::new(inner.clone());
        for _ in 0..3 {
            assert_eq!(block_on(cached.fetch(&reference)).unwrap().expose(), "value-0");
        }
        assert_eq!(inner.fetches.load(Ordering::SeqCst), 1);

        let expiring = CachedSecrets::with_ttl(inner.clone(), Duration::ZERO);
        assert_eq!(block_on(expiring.fetch(&reference)).unwrap().expose(), "value-1");
        assert_eq!(block_on(expiring.fetch(&reference)).unwrap().expose(), "value-2");
        inner.fail.store(true, Ordering::SeqCst);
        assert_eq!(block_on(expiring.fetch(&reference)).unwrap().expose(), "value-2");
        let other = SecretRef::SecretsManager("tocsin/y".into());
        assert!(
            block_on(expiring.fetch(&other)).is_err(),
            "nothing cached to fall back on"
        );
    }
}
