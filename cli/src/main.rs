//! `tocsin`: run the whole pipeline locally, check configs, make keys and
//! look after dead letters.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tocsin_core::auth::IntegrationKey;
use tocsin_core::config::Catalog;
use tocsin_core::providers::ProviderKind;
use tocsin_local::stack::{error_chain, start, StackOptions};
use tocsin_local::store::Store;

mod contacts;
mod incidents;
mod integrations;
mod remote;
mod send_test;
mod status;

const SAMPLE_CONFIG: &str = include_str!("../tocsin.sample.yaml");
const SAMPLE_NAME: &str = "tocsin.sample.yaml (built in)";

#[derive(Parser)]
#[command(
    name = "tocsin",
    version,
    about = "Alert ingestion and notification, on AWS Lambda or one machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole stack on this machine: every endpoint, the processor,
    /// the dispatcher and the notifiers, with state kept in --data.
    Dev {
        /// Config file (YAML). Without it, the built-in sample config.
        #[arg(short = 'f', long = "file", conflicts_with = "aws")]
        file: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:3000", env = "TOCSIN_LISTEN")]
        listen: SocketAddr,
        #[arg(long, default_value = ".tocsin", env = "TOCSIN_DATA")]
        data: PathBuf,
        /// Do not print a line per notification (the outbox still has them).
        #[arg(long)]
        quiet: bool,
        /// Serve the same endpoints with the AWS adapters instead: config
        /// and incidents in the DynamoDB table (written by `tocsin apply`),
        /// events onto the SQS events queue. The SDK's own endpoint
        /// resolution applies: a deployment, or AWS_ENDPOINT_URL for a local
        /// AWS API server.
        #[arg(long, requires_all = ["table", "events_queue_url"])]
        aws: bool,
        /// With --aws: the table (the stack's TableName output).
        #[arg(long, env = "TOCSIN_TABLE")]
        table: Option<String>,
        /// With --aws: the events queue (the stack's EventsQueueUrl output).
        #[arg(long, env = "TOCSIN_EVENTS_QUEUE_URL")]
        events_queue_url: Option<String>,
        /// With --aws: also consume the events queue here, as the processor
        /// function's event source would (where no Lambda polls it).
        #[arg(long, requires = "aws")]
        process: bool,
    },
    /// Check a config file and print what it declares.
    Validate {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Write a config's services, integrations and API keys to the DynamoDB
    /// table of a deployment (the SDK's own endpoint resolution: AWS, or
    /// AWS_ENDPOINT_URL for a local AWS API server), and print each
    /// integration's URL and key.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// The table (the stack's TableName output).
        #[arg(long, env = "TOCSIN_TABLE")]
        table: String,
        /// The API's base URL (the stack's ApiUrl output), for the printed URLs.
        #[arg(long, env = "TOCSIN_API_URL")]
        api_url: Option<String>,
        /// Create the table first, as template.yaml defines it (for a local
        /// AWS API server; a deployment's stack already has it).
        #[arg(long)]
        create_table: bool,
    },
    /// Print a new integration key and the SHA-256 to put in config as
    /// key_sha256.
    Keygen,
    /// List the providers and their endpoints.
    Providers,
    /// Events and notifications that could not be handled.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Incidents through the HTTP API of the local stack or a deployment:
    /// list, show (with the timeline), ack, resolve.
    Incidents {
        #[command(flatten)]
        api: remote::ApiOptions,
        #[command(subcommand)]
        command: incidents::IncidentsCommand,
    },
    /// Ingestion health (GET /integrations/health): the counters overall,
    /// per provider and per integration, with each one's last event and
    /// last error.
    Status {
        #[command(flatten)]
        api: remote::ApiOptions,
    },
    /// Post a provider's sample from events/<type>/ to its endpoint, with
    /// the headers the tool sends (and its signature, given --secret), and
    /// print the answer.
    SendTest {
        /// The provider type (`tocsin providers`).
        provider: String,
        /// The integration's key.
        #[arg(long, env = "TOCSIN_KEY", hide_env_values = true)]
        key: String,
        /// Tocsin's base URL.
        #[arg(long, env = "TOCSIN_URL", default_value = remote::LOCAL_URL)]
        url: String,
        /// A file of events/<type>/ (`.json` may be left out); default: the
        /// provider's trigger sample.
        #[arg(long)]
        sample: Option<String>,
        /// The integration's secret, when it has one: the request is signed
        /// as the tool signs it.
        #[arg(long, env = "TOCSIN_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// The samples folder.
        #[arg(long, env = "TOCSIN_EVENTS", default_value = "events")]
        events: PathBuf,
    },
    /// Integrations in a deployment's DynamoDB table (--table) or in the
    /// local stack's data folder (--data, seen by a running `tocsin dev` at
    /// once): list, create, rotate-key, disable, enable. Integrations
    /// declared in a config file are changed in the file: `tocsin apply`
    /// rewrites them in a table, and with --data they are read only.
    Integrations {
        #[command(flatten)]
        store: integrations::StoreOptions,
        #[command(subcommand)]
        command: integrations::IntegrationsCommand,
    },
    /// Email contacts SES reported bounces or complaints for, in a
    /// deployment's table (--table) or the local stack's data folder
    /// (--data): list, unsuppress (keeps the history), suppress.
    Contacts {
        #[command(flatten)]
        store: contacts::StoreOptions,
        #[command(subcommand)]
        command: contacts::ContactsCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters as JSON lines.
    List {
        #[arg(long, default_value = ".tocsin", env = "TOCSIN_DATA")]
        data: PathBuf,
    },
    /// Put a dead letter back on its queue.
    Redrive {
        id: i64,
        #[arg(long, default_value = ".tocsin", env = "TOCSIN_DATA")]
        data: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Dev {
            aws: true,
            listen,
            table,
            events_queue_url,
            process,
            ..
        } => {
            // clap's requires_all guarantees both with --aws.
            let (Some(table), Some(queue_url)) = (table, events_queue_url) else {
                return Err("--aws needs --table and --events-queue-url".to_owned());
            };
            dev_aws(listen, table, queue_url, process).await
        }
        Command::Dev {
            file,
            listen,
            data,
            quiet,
            ..
        } => dev(file.as_deref(), listen, data, quiet).await,
        Command::Validate { file } => {
            let catalog = load(Some(&file))?;
            println!(
                "{}: {} services, {} integrations, {} API keys",
                file.display(),
                catalog.services.len(),
                catalog.integrations.len(),
                catalog.api_keys.len()
            );
            Ok(())
        }
        Command::Apply {
            file,
            table,
            api_url,
            create_table,
        } => apply(&file, &table, api_url.as_deref(), create_table).await,
        Command::Keygen => {
            let key = IntegrationKey::generate().map_err(|e| format!("no randomness available: {e}"))?;
            println!("key:        {}", key.reveal());
            println!("key_sha256: {}", key.hash().as_str());
            Ok(())
        }
        Command::Providers => {
            println!("{:<24} {:<44} {:<40} CHECK", "TYPE", "ENDPOINT", "TOOL");
            for kind in ProviderKind::ALL {
                println!(
                    "{:<24} POST {:<39} {:<40} {}",
                    kind.as_str(),
                    kind.path(),
                    kind.title(),
                    kind.signature()
                );
            }
            println!("\nThe key: Authorization: Bearer KEY, X-Integration-Key: KEY or ?token=KEY. Setup: docs/providers/<type>.md");
            Ok(())
        }
        Command::Dlq(DlqCommand::List { data }) => {
            let store = open_store(&data)?;
            let letters = store.dead_letters().await.map_err(|e| e.to_string())?;
            for letter in &letters {
                println!("{}", serde_json::to_string(letter).map_err(|e| e.to_string())?);
            }
            eprintln!("{} dead letters in {}", letters.len(), data.display());
            Ok(())
        }
        Command::Incidents { api, command } => incidents::run(&api, command).await.map_err(|e| error_chain(&e)),
        Command::Status { api } => status::run(&api).await.map_err(|e| error_chain(&e)),
        Command::SendTest {
            provider,
            key,
            url,
            sample,
            secret,
            events,
        } => send_test::run(send_test::SendTest {
            provider: &provider,
            key: &key,
            url: &url,
            sample: sample.as_deref(),
            secret: secret.as_deref(),
            events: &events,
        })
        .await
        .map_err(|e| error_chain(&e)),
        Command::Integrations { store, command } => {
            integrations::run(&store, command).await.map_err(|e| error_chain(&e))
        }
        Command::Contacts { store, command } => contacts::run(&store, command).await.map_err(|e| error_chain(&e)),
        Command::Dlq(DlqCommand::Redrive { id, data }) => {
            let store = open_store(&data)?;
            if store.redrive(id).await.map_err(|e| e.to_string())? {
                println!("dead letter {id} is back on its queue");
                Ok(())
            } else {
                Err(format!("no dead letter {id}"))
            }
        }
    }
}

async fn apply(file: &Path, table: &str, api_url: Option<&str>, create: bool) -> Result<(), String> {
    let catalog = load(Some(file))?;
    let sdk = tocsin_aws::sdk_config().await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    if create {
        tocsin_aws::dynamodb::create_table(&client, table)
            .await
            .map_err(|e| error_chain(&e))?;
        println!("created table {table}");
    }
    let store = tocsin_aws::dynamodb::DynamoStore::new(client, table);
    for service in &catalog.services {
        store.put_service(service).await.map_err(|e| error_chain(&e))?;
    }
    // Ids derive from service and times: applying again rewrites, never doubles.
    let now = chrono::Utc::now();
    for window in &catalog.maintenance {
        tocsin_core::maintenance::apply_window(&store, window, now)
            .await
            .map_err(|e| error_chain(&e))?;
        println!(
            "maintenance window {} of {}: {} to {}",
            window.id, window.service, window.start, window.end
        );
    }
    for key in &catalog.api_keys {
        store.put_api_key(key).await.map_err(|e| error_chain(&e))?;
    }
    // Heartbeats: the config's, with their beat state kept; the table's
    // others are removed.
    use tocsin_core::ports::Heartbeats as _;
    for heartbeat in &catalog.heartbeats {
        store.put_heartbeat(heartbeat).await.map_err(|e| error_chain(&e))?;
    }
    for monitor in store.monitors().await.map_err(|e| error_chain(&e))? {
        if !catalog.heartbeats.iter().any(|h| h.id == monitor.heartbeat.id) {
            store
                .delete_heartbeat(&monitor.heartbeat.id)
                .await
                .map_err(|e| error_chain(&e))?;
        }
    }
    let base = api_url.unwrap_or("").trim_end_matches('/');
    for integration in &catalog.integrations {
        store.put_integration(integration).await.map_err(|e| error_chain(&e))?;
        let key = catalog
            .plain_keys
            .get(&integration.id)
            .map(|k| k.reveal().to_owned())
            .unwrap_or_else(|| "(given as key_sha256)".to_owned());
        println!(
            "{} / {} ({}{})\n  POST {base}{}\n  key {key}",
            integration.service,
            integration.id,
            integration.provider.title(),
            if integration.enabled { "" } else { ", disabled" },
            integration.provider.path(),
        );
    }
    println!(
        "applied {}: {} services, {} integrations, {} API keys, {} heartbeats to table {table}",
        file.display(),
        catalog.services.len(),
        catalog.integrations.len(),
        catalog.api_keys.len(),
        catalog.heartbeats.len()
    );
    Ok(())
}

fn open_store(data: &Path) -> Result<Store, String> {
    if !data.join("tocsin.db").exists() {
        return Err(format!("{} holds no Tocsin data (give --data)", data.display()));
    }
    Store::open(data).map_err(|e| format!("{}: {e}", data.display()))
}

fn load(file: Option<&Path>) -> Result<Catalog, String> {
    match file {
        None => Catalog::from_yaml(SAMPLE_CONFIG, SAMPLE_NAME).map_err(|e| e.to_string()),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Catalog::from_yaml(&text, &path.display().to_string()).map_err(|e| e.to_string())
        }
    }
}

async fn dev(file: Option<&Path>, listen: SocketAddr, data: PathBuf, quiet: bool) -> Result<(), String> {
    let catalog = load(file)?;
    let banner = banner(&catalog, file, &data);
    let mut stack = start(StackOptions {
        catalog,
        listen,
        data_dir: data,
        echo_deliveries: !quiet,
    })
    .await
    .map_err(|e| error_chain(&e))?;
    println!(
        "Tocsin is listening on http://{}\n{}",
        stack.addr,
        banner.replace("$TOCSIN", &stack.addr.to_string())
    );

    let shutdown = stack.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!("stopping: finishing the messages in hand");
        let _ = shutdown.send(true);
    });
    stack.wait().await.map_err(|e| error_chain(&e))
}

/// The local router on the AWS adapters: what the ingest and api functions
/// do, in one process, against a deployment's table and queue.
async fn dev_aws(listen: SocketAddr, table: String, queue_url: String, process: bool) -> Result<(), String> {
    use std::sync::Arc;

    let sdk = tocsin_aws::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let store = Arc::new(tocsin_aws::dynamodb::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        table.clone(),
    ));
    let queue = Arc::new(tocsin_aws::sqs::SqsEventQueue::new(sqs.clone(), queue_url.clone()));
    let heartbeats = tocsin_core::heartbeat::HeartbeatService::new(store.clone(), queue.clone());
    let health: Arc<dyn tocsin_core::ports::IngestStats> = store.clone();
    let processing = tocsin_core::process::ProcessService::new(store.clone());
    let sns = tocsin_outbound::sns::sns_support(std::env::var_os("TOCSIN_SNS_CERTIFICATES").map(PathBuf::from))
        .map_err(|e| format!("cannot build the HTTPS client for SNS: {e}"))?;
    let ingest = tocsin_core::ingest::IngestService::new(store.clone(), queue, store.clone())
        .with_sns(sns)
        .with_rate_limiter(store.clone())
        .with_stats(store.clone())
        .with_secrets(Arc::new(tocsin_core::secrets::CachedSecrets::new(Arc::new(
            tocsin_aws::secrets::AwsSecrets::new(aws_sdk_secretsmanager::Client::new(&sdk)),
        ))));
    let windows: Arc<dyn tocsin_core::ports::MaintenanceStore> = store.clone();
    let api = tocsin_api::ApiState {
        process: processing.clone(),
        incidents: store.clone(),
        timeline: store.clone(),
        config: store,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("Tocsin (AWS adapters) is listening on http://{addr}\ntable:  {table}\nevents: {queue_url}");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let poller = process.then(|| {
        println!("processing the events queue here, as the processor function would");
        // The scheduler function also releases ended maintenance windows;
        // that needs the notification queues, which this command has not.
        println!("checking heartbeats every minute, as the scheduler function would (maintenance windows are released by the deployment's scheduler)");
        let checks = heartbeats.clone();
        let mut stop_checks = stopped.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stop_checks.wait_for(|stop| *stop) => return,
                }
                if let Err(e) = checks.check(chrono::Utc::now()).await {
                    eprintln!("heartbeat check failed: {}", error_chain(&e));
                }
            }
        });
        let stopped = stopped.clone();
        tokio::spawn(async move { tocsin_aws::poller::poll_events(&sqs, &queue_url, &processing, stopped).await })
    });
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!("stopping");
        let _ = stop.send(true);
    });
    let mut stopped_server = stopped.clone();
    let app = tocsin_api::with_maintenance(tocsin_api::router(ingest, api), windows);
    let app = tocsin_api::with_ingest_health(app, health);
    axum::serve(listener, tocsin_api::with_heartbeats(app, heartbeats))
        .with_graceful_shutdown(async move {
            let _ = stopped_server.wait_for(|stop| *stop).await;
        })
        .await
        .map_err(|e| format!("the HTTP server failed: {e}"))?;
    if let Some(poller) = poller {
        poller
            .await
            .map_err(|e| format!("the events poller stopped: {e}"))?
            .map_err(|e| error_chain(&e))?;
    }
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// What a newcomer needs to try it: each webhook URL with a curl line.
fn banner(catalog: &Catalog, file: Option<&Path>, data: &Path) -> String {
    let base = "http://$TOCSIN";
    let mut out = format!(
        "config: {}\ndata:   {} (incidents survive restarts; notifications in {}/outbox.jsonl)\n",
        file.map(|f| f.display().to_string())
            .unwrap_or_else(|| SAMPLE_NAME.to_owned()),
        data.display(),
        data.display()
    );
    let mut others = Vec::new();
    for integration in &catalog.integrations {
        let path = integration.provider.path();
        if !matches!(
            integration.provider,
            ProviderKind::EventsV2 | ProviderKind::Prometheus | ProviderKind::Webhook | ProviderKind::Generic
        ) {
            // The monitoring tools' own payloads: one line each, the setup
            // is in their doc page.
            let token = catalog
                .plain_keys
                .get(&integration.id)
                .map(|key| match integration.provider {
                    // The key is the recipient's local part.
                    ProviderKind::Email => format!("?to={}@localhost", key.reveal()),
                    _ => format!("?token={}", key.reveal()),
                })
                .unwrap_or_default();
            others.push(format!(
                "  {:<34} POST {base}{path}{token}\n",
                format!("{} / {}", integration.service, integration.id)
            ));
            continue;
        }
        out.push_str(&format!(
            "\n{} / {} ({}{})\n  POST {base}{path}\n",
            integration.service,
            integration.id,
            integration.provider.title(),
            if integration.enabled { "" } else { ", disabled" },
        ));
        let Some(key) = catalog.plain_keys.get(&integration.id) else {
            out.push_str("  (key given as key_sha256: use the key you hashed)\n");
            continue;
        };
        let key = key.reveal();
        let example = match integration.provider {
            ProviderKind::EventsV2 => format!(
                "curl -s {base}{path} -H 'Content-Type: application/json' -d '{{\"routing_key\":\"{key}\",\"event_action\":\"trigger\",\"dedup_key\":\"disk-full\",\"payload\":{{\"summary\":\"Disk full on db-1\",\"source\":\"db-1\",\"severity\":\"critical\"}}}}'"
            ),
            ProviderKind::Prometheus => format!(
                "curl -s {base}{path} -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' --data-binary @events/prometheus/firing.json"
            ),
            ProviderKind::Webhook if integration.secret.is_some() => format!(
                "body='{{\"alert\":{{\"title\":\"Card declines up\",\"level\":\"error\",\"id\":\"declines\",\"state\":\"raised\"}}}}'; curl -s {base}{path} -H 'X-Integration-Key: {key}' -H \"X-Signature: sha256=$(printf %s \"$body\" | openssl dgst -sha256 -hmac \"$SECRET\" -r | cut -d' ' -f1)\" -d \"$body\"   # SECRET: the integration's secret"
            ),
            ProviderKind::Webhook => format!(
                "curl -s {base}{path} -H 'X-Integration-Key: {key}' -H 'Content-Type: application/json' -d '{{\"title\":\"Checkout latency high\",\"severity\":\"warning\",\"id\":\"latency\",\"status\":\"triggered\"}}'"
            ),
            ProviderKind::Generic => format!(
                "curl -s '{base}{path}?token={key}' -H 'Accept: application/json' -d summary='Queue backed up' -d dedup=queue"
            ),
            // Listed above with the other monitoring tools.
            _ => continue,
        };
        out.push_str(&format!("  {example}\n"));
    }
    if !others.is_empty() {
        out.push_str("\nmonitoring tools (setup: docs/providers/<type>.md, samples: events/<type>/):\n");
        out.extend(others);
    }
    if !catalog.api_keys.is_empty() {
        out.push_str(&format!(
            "\nincidents: curl -s {base}/incidents -H 'Authorization: Bearer <an api_keys key from the config>'\n"
        ));
    }
    out
}
