//! `tocsin integrations`: list, create, rotate keys of, disable and enable
//! integrations, in a deployment's DynamoDB table (where `tocsin apply`
//! writes them) or in the local stack's data folder (`tocsin dev --data`),
//! which the running stack reads on every request. Keys are stored only as
//! SHA-256 hashes: a new key is printed once and cannot be shown again.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use tocsin_aws::dynamodb::DynamoStore;
use tocsin_core::auth::IntegrationKey;
use tocsin_core::config::{Catalog, CloudWatchSettings, ConfigError, FieldMapping, Integration};
use tocsin_core::event::{FieldError, IntegrationId, ServiceId};
use tocsin_core::ports::{BackendError, ConfigStore};
use tocsin_core::providers::ProviderKind;
use tocsin_core::ratelimit::DEFAULT_PER_MINUTE;
use tocsin_local::store::{Store, DB_FILE};

use crate::remote::LOCAL_URL;

#[derive(Args, Debug)]
pub struct StoreOptions {
    /// A deployment's table (the stack's TableName output; a local AWS API
    /// server through AWS_ENDPOINT_URL).
    #[arg(long, env = "TOCSIN_TABLE", global = true)]
    pub table: Option<String>,
    /// The local stack's data folder (`tocsin dev --data`) instead of a
    /// table: a running `tocsin dev` sees each change at its next request.
    #[arg(long, global = true)]
    pub data: Option<PathBuf>,
    /// With --data: the config file `tocsin dev` runs with (its -f); default
    /// the built-in sample, as for `tocsin dev`. Its services are the ones
    /// integrations can feed; its integrations are listed but changed only
    /// in the file.
    #[arg(long, global = true, requires = "data")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum IntegrationsCommand {
    /// Every integration: id, service, provider, enabled, rate limit,
    /// whether it requires a signature, and with --data where it is declared.
    /// Never a key: only hashes are stored.
    List {
        /// One JSON object per integration.
        #[arg(long)]
        json: bool,
    },
    /// A new integration with a new key, printed once with its endpoint.
    Create {
        /// The service it feeds (in the table, or with --data in the config file).
        #[arg(long)]
        service: String,
        /// Its type: see `tocsin providers`.
        #[arg(long)]
        provider: String,
        /// Default: <service>-<provider>.
        #[arg(long)]
        id: Option<String>,
        /// Requests per minute; 0: no limit.
        #[arg(long, default_value_t = DEFAULT_PER_MINUTE)]
        rate_limit: u32,
        /// Tocsin's base URL, for the printed endpoint (the stack's ApiUrl output).
        #[arg(long, env = "TOCSIN_URL", default_value = LOCAL_URL)]
        url: String,
    },
    /// A new key for an integration: the old key stops working at once.
    RotateKey {
        id: String,
        #[arg(long, env = "TOCSIN_URL", default_value = LOCAL_URL)]
        url: String,
    },
    /// Refuse the integration's requests (403) until it is enabled again.
    Disable { id: String },
    /// Accept the integration's requests again.
    Enable { id: String },
}

#[derive(Debug, thiserror::Error)]
pub enum IntegrationsError {
    #[error("no store: give --table (or TOCSIN_TABLE) for a deployment, or --data for the local stack's data folder")]
    NoStore,
    #[error("give either --table (a deployment) or --data (the local stack), not both (TOCSIN_TABLE counts)")]
    BothStores,
    #[error("{} holds no Tocsin data: give the --data of `tocsin dev` (it creates the folder)", .0.display())]
    NoData(PathBuf),
    #[error("cannot read the config file {}", .path.display())]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("unknown provider '{0}' (tocsin providers lists them)")]
    UnknownProvider(String),
    #[error("cloudwatch integrations need their SNS topics: declare one in the config file")]
    CloudWatch,
    #[error("no service '{0}' in the table: declare it in the config and run `tocsin apply` first")]
    NoService(ServiceId),
    #[error("no service '{0}' in {1}: declare it there and restart `tocsin dev` first")]
    NoLocalService(ServiceId, String),
    #[error("an integration '{0}' already exists")]
    Exists(IntegrationId),
    #[error("no integration '{0}' (tocsin integrations list)")]
    NoIntegration(String),
    #[error("integration '{0}' is declared in {1}: change it there and restart `tocsin dev`")]
    InConfigFile(IntegrationId, String),
    #[error("integration '{0}' is already {1}")]
    Already(IntegrationId, &'static str),
    #[error("the store cannot be read or written")]
    Store(#[from] BackendError),
    // getrandom's error is not a std Error without its std feature.
    #[error("no randomness available for a key: {0}")]
    Random(getrandom::Error),
}

/// Where the integrations live.
enum Backend {
    Table(DynamoStore),
    /// The local stack: the config file's integrations (read only here)
    /// over the ones stored in its data folder.
    Local {
        store: Store,
        // Boxed: a Catalog is far larger than the table variant.
        catalog: Box<Catalog>,
        file: String,
    },
}

/// Where an integration is declared, for the list and for what may change it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Table,
    ConfigFile,
    DataFolder,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Table => "table",
            Origin::ConfigFile => "config file",
            Origin::DataFolder => "data folder",
        }
    }
}

impl Backend {
    async fn open(options: &StoreOptions) -> Result<Backend, IntegrationsError> {
        match (&options.table, &options.data) {
            (Some(_), Some(_)) => Err(IntegrationsError::BothStores),
            (None, None) => Err(IntegrationsError::NoStore),
            (Some(table), None) => {
                let sdk = tocsin_aws::sdk_config().await;
                Ok(Backend::Table(DynamoStore::new(
                    aws_sdk_dynamodb::Client::new(&sdk),
                    table,
                )))
            }
            (None, Some(data)) => {
                let (catalog, file) = load_config(options.config.as_deref())?;
                // Never create a data folder here: a mistyped --data would
                // hold integrations no stack reads.
                if !data.join(DB_FILE).exists() {
                    return Err(IntegrationsError::NoData(data.clone()));
                }
                Ok(Backend::Local {
                    store: Store::open(data)?,
                    catalog: Box::new(catalog),
                    file,
                })
            }
        }
    }

    async fn list(&self) -> Result<Vec<(Integration, Origin)>, IntegrationsError> {
        match self {
            Backend::Table(store) => Ok(store
                .list_integrations()
                .await?
                .into_iter()
                .map(|i| (i, Origin::Table))
                .collect()),
            Backend::Local { store, catalog, .. } => {
                let mut all: Vec<_> = catalog
                    .integrations
                    .iter()
                    .map(|i| (i.clone(), Origin::ConfigFile))
                    .collect();
                // Shadowed ones are left out: the stack never answers them.
                for stored in store.list_integrations().await? {
                    if !tocsin_local::layered::LayeredConfig::shadowed(catalog, &stored) {
                        all.push((stored, Origin::DataFolder));
                    }
                }
                Ok(all)
            }
        }
    }

    async fn check_service(&self, service: &ServiceId) -> Result<(), IntegrationsError> {
        match self {
            Backend::Table(store) => match store.service(service).await? {
                Some(_) => Ok(()),
                None => Err(IntegrationsError::NoService(service.clone())),
            },
            Backend::Local { catalog, file, .. } => match catalog.service(service) {
                Some(_) => Ok(()),
                None => Err(IntegrationsError::NoLocalService(service.clone(), file.clone())),
            },
        }
    }

    async fn put(&self, integration: &Integration) -> Result<(), IntegrationsError> {
        match self {
            Backend::Table(store) => store.put_integration(integration).await?,
            Backend::Local { store, .. } => store.put_integration(integration).await?,
        }
        Ok(())
    }

    /// Replaces `old` by `rotated`, which differs in its key hash only.
    async fn rotate(&self, old: &Integration, rotated: &Integration) -> Result<(), IntegrationsError> {
        match self {
            Backend::Table(store) => {
                // The new item first: a failure in between leaves both keys
                // working, never none.
                store.put_integration(rotated).await?;
                store.delete_integration(&old.key_hash).await?;
            }
            // One transaction replaces the row of the id.
            Backend::Local { store, .. } => store.put_integration(rotated).await?,
        }
        Ok(())
    }

    /// The integration `id`, if this command may change it.
    async fn changeable(&self, id: &str) -> Result<Integration, IntegrationsError> {
        let wanted = IntegrationId::parse(id)?;
        let (integration, origin) = self
            .list()
            .await?
            .into_iter()
            .find(|(i, _)| i.id == wanted)
            .ok_or_else(|| IntegrationsError::NoIntegration(id.to_owned()))?;
        match (origin, self) {
            (Origin::ConfigFile, Backend::Local { file, .. }) => {
                Err(IntegrationsError::InConfigFile(integration.id, file.clone()))
            }
            _ => Ok(integration),
        }
    }
}

/// The config `tocsin dev` runs with: the file, or the built-in sample.
fn load_config(path: Option<&Path>) -> Result<(Catalog, String), IntegrationsError> {
    match path {
        None => Ok((
            Catalog::from_yaml(crate::SAMPLE_CONFIG, crate::SAMPLE_NAME)?,
            crate::SAMPLE_NAME.to_owned(),
        )),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| IntegrationsError::ReadConfig {
                path: path.to_owned(),
                source,
            })?;
            let name = path.display().to_string();
            Ok((Catalog::from_yaml(&text, &name)?, name))
        }
    }
}

pub async fn run(options: &StoreOptions, command: IntegrationsCommand) -> Result<(), IntegrationsError> {
    let backend = Backend::open(options).await?;
    match command {
        IntegrationsCommand::List { json } => list(&backend, json).await,
        IntegrationsCommand::Create {
            service,
            provider,
            id,
            rate_limit,
            url,
        } => {
            let service = ServiceId::parse(&service)?;
            let provider = ProviderKind::parse(&provider).ok_or(IntegrationsError::UnknownProvider(provider))?;
            if provider == ProviderKind::CloudWatch {
                return Err(IntegrationsError::CloudWatch);
            }
            let id = IntegrationId::parse(&id.unwrap_or_else(|| format!("{service}-{provider}")))?;
            backend.check_service(&service).await?;
            if backend.list().await?.iter().any(|(i, _)| i.id == id) {
                return Err(IntegrationsError::Exists(id));
            }
            let key = new_key()?;
            let integration = Integration {
                id,
                service,
                provider,
                key_hash: key.hash(),
                secret: None,
                secret_ref: None,
                enabled: true,
                fields: FieldMapping::default(),
                cloudwatch: CloudWatchSettings::default(),
                dedup_key: None,
                rate_limit_per_minute: (rate_limit > 0).then_some(rate_limit),
            };
            backend.put(&integration).await?;
            println!(
                "created {} / {} ({})",
                integration.service,
                integration.id,
                provider.title()
            );
            print_key(&integration, &key, &url);
            Ok(())
        }
        IntegrationsCommand::RotateKey { id, url } => {
            let old = backend.changeable(&id).await?;
            let key = new_key()?;
            let rotated = Integration {
                key_hash: key.hash(),
                ..old.clone()
            };
            backend.rotate(&old, &rotated).await?;
            println!(
                "new key for {} / {}; the old key no longer works",
                rotated.service, rotated.id
            );
            print_key(&rotated, &key, &url);
            Ok(())
        }
        IntegrationsCommand::Disable { id } => set_enabled(&backend, &id, false).await,
        IntegrationsCommand::Enable { id } => set_enabled(&backend, &id, true).await,
    }
}

async fn list(backend: &Backend, json: bool) -> Result<(), IntegrationsError> {
    let mut integrations = backend.list().await?;
    integrations.sort_by(|(a, _), (b, _)| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    let local = matches!(backend, Backend::Local { .. });
    if json {
        for (integration, origin) in &integrations {
            let mut line = serde_json::json!({
                "id": integration.id.as_str(),
                "service": integration.service.as_str(),
                "provider": integration.provider.as_str(),
                "enabled": integration.enabled,
                "rate_limit_per_minute": integration.rate_limit_per_minute,
                "signed": integration.secret.is_some() || integration.secret_ref.is_some(),
            });
            if local {
                line["declared_in"] = origin.as_str().into();
            }
            println!("{line}");
        }
        return Ok(());
    }
    if integrations.is_empty() {
        println!("no integrations");
        return Ok(());
    }
    println!(
        "{:<28} {:<20} {:<24} {:<8} {:<11} {:<7}{}",
        "ID",
        "SERVICE",
        "PROVIDER",
        "ENABLED",
        "RATE/MIN",
        "SIGNED",
        if local { "DECLARED IN" } else { "" }
    );
    for (integration, origin) in &integrations {
        let row = format!(
            "{:<28} {:<20} {:<24} {:<8} {:<11} {:<7}{}",
            integration.id.as_str(),
            integration.service.as_str(),
            integration.provider.as_str(),
            if integration.enabled { "yes" } else { "no" },
            integration
                .rate_limit_per_minute
                .map(|n| n.to_string())
                .unwrap_or_else(|| "no limit".to_owned()),
            if integration.secret.is_some() || integration.secret_ref.is_some() {
                "yes"
            } else {
                "no"
            },
            if local { origin.as_str() } else { "" }
        );
        println!("{}", row.trim_end());
    }
    Ok(())
}

async fn set_enabled(backend: &Backend, id: &str, enabled: bool) -> Result<(), IntegrationsError> {
    let mut integration = backend.changeable(id).await?;
    let word = if enabled { "enabled" } else { "disabled" };
    if integration.enabled == enabled {
        return Err(IntegrationsError::Already(integration.id, word));
    }
    integration.enabled = enabled;
    backend.put(&integration).await?;
    println!("{} / {} is {word}", integration.service, integration.id);
    Ok(())
}

fn new_key() -> Result<IntegrationKey, IntegrationsError> {
    IntegrationKey::generate().map_err(IntegrationsError::Random)
}

fn print_key(integration: &Integration, key: &IntegrationKey, url: &str) {
    println!(
        "  POST {}{}\n  key {}\n  (shown once: only its SHA-256 is stored)",
        url.trim_end_matches('/'),
        integration.provider.path(),
        key.reveal()
    );
}
