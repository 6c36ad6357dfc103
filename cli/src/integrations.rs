//! `tocsin integrations`: list, create, rotate keys of, disable and enable
//! the integrations in a deployment's DynamoDB table, where `tocsin apply`
//! writes them. Keys are stored only as SHA-256 hashes: a new key is printed
//! once and cannot be shown again.

use clap::{Args, Subcommand};
use tocsin_aws::dynamodb::DynamoStore;
use tocsin_core::auth::IntegrationKey;
use tocsin_core::config::{CloudWatchSettings, FieldMapping, Integration};
use tocsin_core::event::{FieldError, IntegrationId, ServiceId};
use tocsin_core::ports::{BackendError, ConfigStore};
use tocsin_core::providers::ProviderKind;
use tocsin_core::ratelimit::DEFAULT_PER_MINUTE;

use crate::remote::LOCAL_URL;

#[derive(Args, Debug)]
pub struct TableOptions {
    /// The table (the stack's TableName output; a local AWS API server
    /// through AWS_ENDPOINT_URL).
    #[arg(long, env = "TOCSIN_TABLE", global = true)]
    pub table: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum IntegrationsCommand {
    /// Every integration: id, service, provider, enabled, rate limit,
    /// whether it requires a signature. Never a key: only hashes are stored.
    List {
        /// One JSON object per integration.
        #[arg(long)]
        json: bool,
    },
    /// A new integration with a new key, printed once with its endpoint.
    Create {
        /// The service it feeds (already in the table).
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
    #[error(
        "no table: give --table or set TOCSIN_TABLE (the local stack, `tocsin dev`, reads its integrations from its \
         config file: edit it and restart)"
    )]
    NoTable,
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("unknown provider '{0}' (tocsin providers lists them)")]
    UnknownProvider(String),
    #[error("cloudwatch integrations need their SNS topics: declare one in the config and run `tocsin apply`")]
    CloudWatch,
    #[error("no service '{0}' in the table: declare it in the config and run `tocsin apply` first")]
    NoService(ServiceId),
    #[error("an integration '{0}' already exists")]
    Exists(IntegrationId),
    #[error("no integration '{0}' in the table (tocsin integrations list)")]
    NoIntegration(String),
    #[error("integration '{0}' is already {1}")]
    Already(IntegrationId, &'static str),
    #[error("the table cannot be read or written")]
    Store(#[from] BackendError),
    // getrandom's error is not a std Error without its std feature.
    #[error("no randomness available for a key: {0}")]
    Random(getrandom::Error),
}

pub async fn run(table: &TableOptions, command: IntegrationsCommand) -> Result<(), IntegrationsError> {
    let table = table.table.as_deref().ok_or(IntegrationsError::NoTable)?;
    let sdk = tocsin_aws::sdk_config().await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), table);
    match command {
        IntegrationsCommand::List { json } => list(&store, json).await,
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
            if store.service(&service).await?.is_none() {
                return Err(IntegrationsError::NoService(service));
            }
            if store.list_integrations().await?.iter().any(|i| i.id == id) {
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
            store.put_integration(&integration).await?;
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
            let old = find(&store, &id).await?;
            let key = new_key()?;
            let rotated = Integration {
                key_hash: key.hash(),
                ..old.clone()
            };
            // The new item first: a failure in between leaves both keys
            // working, never none.
            store.put_integration(&rotated).await?;
            store.delete_integration(&old.key_hash).await?;
            println!(
                "new key for {} / {}; the old key no longer works",
                rotated.service, rotated.id
            );
            print_key(&rotated, &key, &url);
            Ok(())
        }
        IntegrationsCommand::Disable { id } => set_enabled(&store, &id, false).await,
        IntegrationsCommand::Enable { id } => set_enabled(&store, &id, true).await,
    }
}

async fn list(store: &DynamoStore, json: bool) -> Result<(), IntegrationsError> {
    let mut integrations = store.list_integrations().await?;
    integrations.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    if json {
        for integration in &integrations {
            println!(
                "{}",
                serde_json::json!({
                    "id": integration.id.as_str(),
                    "service": integration.service.as_str(),
                    "provider": integration.provider.as_str(),
                    "enabled": integration.enabled,
                    "rate_limit_per_minute": integration.rate_limit_per_minute,
                    "signed": integration.secret.is_some() || integration.secret_ref.is_some(),
                })
            );
        }
        return Ok(());
    }
    if integrations.is_empty() {
        println!("no integrations");
        return Ok(());
    }
    println!(
        "{:<28} {:<20} {:<24} {:<8} {:<11} SIGNED",
        "ID", "SERVICE", "PROVIDER", "ENABLED", "RATE/MIN"
    );
    for integration in &integrations {
        println!(
            "{:<28} {:<20} {:<24} {:<8} {:<11} {}",
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
            }
        );
    }
    Ok(())
}

async fn find(store: &DynamoStore, id: &str) -> Result<Integration, IntegrationsError> {
    let wanted = IntegrationId::parse(id)?;
    store
        .list_integrations()
        .await?
        .into_iter()
        .find(|i| i.id == wanted)
        .ok_or_else(|| IntegrationsError::NoIntegration(id.to_owned()))
}

async fn set_enabled(store: &DynamoStore, id: &str, enabled: bool) -> Result<(), IntegrationsError> {
    let mut integration = find(store, id).await?;
    let word = if enabled { "enabled" } else { "disabled" };
    if integration.enabled == enabled {
        return Err(IntegrationsError::Already(integration.id, word));
    }
    integration.enabled = enabled;
    store.put_integration(&integration).await?;
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
