//! `tocsin contacts`: the email contacts SES reported bounces or complaints
//! for (the ses-feedback function records them), and the suppression that
//! stops email to them, in a deployment's DynamoDB table or in the local
//! stack's data folder. `unsuppress` clears the flag and keeps the counts
//! and the latest feedback; each change by hand is kept on the contact
//! (who, when) and shown by `list`.

use std::path::PathBuf;

use chrono::{SecondsFormat, Utc};
use clap::{Args, Subcommand};
use tocsin_aws::contacts::DynamoContactHealth;
use tocsin_core::config::EmailAddress;
use tocsin_core::contacts::{ContactHealth, ContactState, SuppressionChange};
use tocsin_core::event::FieldError;
use tocsin_core::ports::BackendError;
use tocsin_local::store::{Store, DB_FILE};

#[derive(Args, Debug)]
pub struct StoreOptions {
    /// A deployment's table (the stack's TableName output; a local AWS API
    /// server through AWS_ENDPOINT_URL).
    #[arg(long, env = "TOCSIN_TABLE", global = true)]
    pub table: Option<String>,
    /// The local stack's data folder (`tocsin dev --data`) instead of a
    /// table: a running `tocsin dev` sees each change at its next email.
    #[arg(long, global = true)]
    pub data: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ContactsCommand {
    /// Every contact with bounces, complaints or a suppression: counts,
    /// latest feedback, whether email to it is suppressed and why.
    List {
        /// Only the suppressed ones.
        #[arg(long)]
        suppressed: bool,
        /// One JSON object per contact.
        #[arg(long)]
        json: bool,
    },
    /// Email the address again: clears its suppression, keeps its history.
    /// A later permanent bounce or complaint suppresses it again.
    Unsuppress {
        email: String,
        /// Who makes the change, kept on the contact (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Stop email to the address (a known bad address, an ops decision).
    Suppress {
        email: String,
        /// Who makes the change, kept on the contact (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ContactsError {
    #[error("no store: give --table (or TOCSIN_TABLE) for a deployment, or --data for the local stack's data folder")]
    NoStore,
    #[error("give either --table (a deployment) or --data (the local stack), not both (TOCSIN_TABLE counts)")]
    BothStores,
    #[error("{} holds no Tocsin data: give the --data of `tocsin dev` (it creates the folder)", .0.display())]
    NoData(PathBuf),
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("no bounce, complaint or suppression is recorded for {0} (tocsin contacts list)")]
    NoContact(String),
    #[error("{0} is already {1}")]
    Already(String, &'static str),
    #[error("the store cannot be read or written")]
    Store(#[from] BackendError),
}

async fn open(options: &StoreOptions) -> Result<Box<dyn ContactHealth>, ContactsError> {
    match (&options.table, &options.data) {
        (Some(_), Some(_)) => Err(ContactsError::BothStores),
        (None, None) => Err(ContactsError::NoStore),
        (Some(table), None) => {
            let sdk = tocsin_aws::sdk_config().await;
            Ok(Box::new(DynamoContactHealth::new(
                aws_sdk_dynamodb::Client::new(&sdk),
                table,
            )))
        }
        (None, Some(data)) => {
            // Never create a data folder here: a mistyped --data would hold
            // suppressions no stack reads.
            if !data.join(DB_FILE).exists() {
                return Err(ContactsError::NoData(data.clone()));
            }
            Ok(Box::new(Store::open(data)?))
        }
    }
}

pub async fn run(options: &StoreOptions, command: ContactsCommand) -> Result<(), ContactsError> {
    let store = open(options).await?;
    match command {
        ContactsCommand::List { suppressed, json } => {
            let contacts: Vec<ContactState> = store
                .contacts()
                .await?
                .into_iter()
                .filter(|c| !suppressed || c.suppressed)
                .collect();
            list(&contacts, json);
            Ok(())
        }
        ContactsCommand::Unsuppress { email, by } => change(store.as_ref(), &email, by, false).await,
        ContactsCommand::Suppress { email, by } => change(store.as_ref(), &email, by, true).await,
    }
}

fn operator(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "tocsin contacts".to_owned())
}

async fn change(
    store: &dyn ContactHealth,
    email: &str,
    by: Option<String>,
    suppressed: bool,
) -> Result<(), ContactsError> {
    let address = EmailAddress::parse(&email.trim().to_lowercase())?;
    let word = if suppressed { "suppressed" } else { "not suppressed" };
    match store.contact(&address).await? {
        // Unsuppressing an address never reported on is a typo, not a change.
        None if !suppressed => return Err(ContactsError::NoContact(address.as_str().to_owned())),
        Some(state) if state.suppressed == suppressed => {
            return Err(ContactsError::Already(address.as_str().to_owned(), word))
        }
        _ => {}
    }
    let change = SuppressionChange {
        suppressed,
        at: Utc::now(),
        by: operator(by),
    };
    let state = store.change_suppression(&address, &change).await?;
    tracing::info!(suppressed, by = %change.by, "contact suppression changed by hand");
    if suppressed {
        println!("{} is suppressed: no email is sent to it", state.address.as_str());
    } else {
        println!(
            "{} is no longer suppressed: email is sent to it again ({} permanent bounces, {} complaints kept)",
            state.address.as_str(),
            state.permanent_bounces,
            state.complaints
        );
    }
    Ok(())
}

fn stamp(at: chrono::DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn list(contacts: &[ContactState], json: bool) {
    if json {
        for contact in contacts {
            let last = |last: &Option<tocsin_core::contacts::LastFeedback>| {
                last.as_ref().map(|l| {
                    serde_json::json!({
                        "at": stamp(l.at),
                        "kind": l.kind.as_str(),
                        "message_id": l.message_id,
                    })
                })
            };
            let line = serde_json::json!({
                "email": contact.address.as_str(),
                "suppressed": contact.suppressed,
                "reason": contact.suppression_reason(),
                "permanent_bounces": contact.permanent_bounces,
                "transient_bounces": contact.transient_bounces,
                "complaints": contact.complaints,
                "last_bounce": last(&contact.last_bounce),
                "last_complaint": last(&contact.last_complaint),
                "last_change": contact.last_change.as_ref().map(|c| serde_json::json!({
                    "suppressed": c.suppressed,
                    "at": stamp(c.at),
                    "by": c.by,
                })),
            });
            println!("{line}");
        }
        return;
    }
    if contacts.is_empty() {
        println!("no contacts");
        return;
    }
    println!(
        "{:<36} {:<11} {:<8} {:<8} {:<11} {:<21} CHANGED BY HAND",
        "EMAIL", "SUPPRESSED", "BOUNCES", "SOFT", "COMPLAINTS", "LATEST FEEDBACK"
    );
    for contact in contacts {
        let latest = [&contact.last_bounce, &contact.last_complaint]
            .into_iter()
            .flatten()
            .max_by_key(|last| last.at)
            .map(|last| stamp(last.at))
            .unwrap_or_else(|| "-".to_owned());
        let changed = contact
            .last_change
            .as_ref()
            .map(|c| {
                format!(
                    "{} by {} at {}",
                    if c.suppressed { "suppressed" } else { "unsuppressed" },
                    c.by,
                    stamp(c.at)
                )
            })
            .unwrap_or_else(|| "-".to_owned());
        let row = format!(
            "{:<36} {:<11} {:<8} {:<8} {:<11} {:<21} {}",
            contact.address.as_str(),
            if contact.suppressed { "yes" } else { "no" },
            contact.permanent_bounces,
            contact.transient_bounces,
            contact.complaints,
            latest,
            changed
        );
        println!("{}", row.trim_end());
    }
}
