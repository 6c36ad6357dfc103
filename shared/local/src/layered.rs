//! The local stack's [`ConfigStore`]: the config file first, then the
//! integrations `tocsin integrations --data` stored in the SQLite store.
//! The store is read on every lookup the config file misses, so a change
//! made from another process is seen by the next request, without a restart.
//!
//! The config file wins: a stored integration whose id or key hash is also
//! the config file's is shadowed (never answered). The CLI refuses to make
//! such a one, but the file can gain it later. Services, API keys and SNS
//! topics are the config file's only.

use async_trait::async_trait;

use tocsin_core::auth::{ApiKey, KeyHash};
use tocsin_core::config::{Catalog, Integration, Service};
use tocsin_core::event::ServiceId;
use tocsin_core::ports::{BackendError, ConfigStore};
use tocsin_core::sns::TopicArn;

use crate::store::Store;

#[derive(Debug, Clone)]
pub struct LayeredConfig {
    catalog: Catalog,
    store: Store,
}

impl LayeredConfig {
    pub fn new(catalog: Catalog, store: Store) -> Self {
        Self { catalog, store }
    }

    /// Whether `integration`, stored, would be shadowed by the config file.
    pub fn shadowed(catalog: &Catalog, integration: &Integration) -> bool {
        catalog
            .integrations
            .iter()
            .any(|i| i.id == integration.id || i.key_hash == integration.key_hash)
    }
}

#[async_trait]
impl ConfigStore for LayeredConfig {
    async fn integration_by_key(&self, key: &KeyHash) -> Result<Option<Integration>, BackendError> {
        if let Some(integration) = self.catalog.integration_by_key(key) {
            return Ok(Some(integration.clone()));
        }
        Ok(self
            .store
            .integration_by_key(key)
            .await?
            .filter(|stored| !Self::shadowed(&self.catalog, stored)))
    }

    async fn integration_by_topic(&self, topic: &TopicArn) -> Result<Option<Integration>, BackendError> {
        ConfigStore::integration_by_topic(&self.catalog, topic).await
    }

    async fn service(&self, id: &ServiceId) -> Result<Option<Service>, BackendError> {
        Ok(self.catalog.service(id).cloned())
    }

    async fn api_key(&self, key: &KeyHash) -> Result<Option<ApiKey>, BackendError> {
        Ok(self.catalog.api_key(key).cloned())
    }
}

#[cfg(test)]
mod tests {
    use tocsin_core::auth::IntegrationKey;

    use super::*;

    const CONFIG: &str = r#"
services:
  - id: checkout
    name: Checkout
    integrations:
      - id: checkout-prometheus
        type: prometheus
        key: 0123456789abcdef0123456789abcdef
"#;

    fn stored(catalog: &Catalog, id: &str, key: &str) -> Integration {
        Integration {
            id: tocsin_core::event::IntegrationId::parse(id).unwrap(),
            key_hash: IntegrationKey::parse(key).unwrap().hash(),
            ..catalog.integrations[0].clone()
        }
    }

    #[tokio::test]
    async fn stored_integrations_answer_after_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let catalog = Catalog::from_yaml(CONFIG, "test.yaml").unwrap();
        let file = catalog.integrations[0].clone();
        let config = LayeredConfig::new(catalog.clone(), store.clone());

        let added = stored(&catalog, "checkout-added", "11111111111111111111111111111111");
        assert_eq!(config.integration_by_key(&added.key_hash).await.unwrap(), None);
        // Written as the CLI does, through another handle on the same file.
        Store::open(dir.path()).unwrap().put_integration(&added).await.unwrap();
        assert_eq!(config.integration_by_key(&added.key_hash).await.unwrap(), Some(added));
        assert_eq!(config.integration_by_key(&file.key_hash).await.unwrap(), Some(file));
    }

    #[tokio::test]
    async fn the_config_file_shadows_a_stored_integration_of_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let catalog = Catalog::from_yaml(CONFIG, "test.yaml").unwrap();
        let same_id = stored(&catalog, "checkout-prometheus", "22222222222222222222222222222222");
        store.put_integration(&same_id).await.unwrap();
        let config = LayeredConfig::new(catalog, store);
        assert_eq!(config.integration_by_key(&same_id.key_hash).await.unwrap(), None);
    }
}
