//! The DynamoDB adapter of [`IncidentStore`] and [`ConfigStore`]: incidents,
//! the open slot of each (service, dedup key), idempotency records, ignored
//! events, services, integrations and API keys, all in one table. The design,
//! its access patterns and their round trips: infra/dynamodb.md.
//!
//! A processed event costs two round trips: one strongly consistent Query of
//! its key's partition ([`IncidentStore::latest`]) and one TransactWriteItems
//! ([`IncidentStore::commit`]) that marks the event applied and writes the
//! incident under a condition, atomically. A repeat of an open incident (no
//! transition) is cheaper: one conditional PutItem of the incident item,
//! which keeps the tags of its last events ([`attr::RECENT`]) in place of an
//! applied record, then a PutItem of its timeline entry. Opening an incident
//! reads the key's partition once more, for the previous incident's tags.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::config::AsyncSleep;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CancellationReason, Delete, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, KeysAndAttributes, PointInTimeRecoverySpecification, Projection, ProjectionType, Put,
    ReturnValue, ScalarAttributeType, SseSpecification, SseType, StreamSpecification, StreamViewType,
    TimeToLiveSpecification, TransactWriteItem,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use tocsin_core::auth::{ApiKey, KeyHash, Scope};
use tocsin_core::config::{EmailAddress, EscalationLevel, Integration, NotificationPolicy, PhoneNumber, Service};
use tocsin_core::event::{DedupKey, EventId, FieldError, HeartbeatId, IntegrationId, ServiceId, Severity};
use tocsin_core::heartbeat::{Heartbeat, HeartbeatMonitor, HeartbeatState};
use tocsin_core::incident::{Incident, IncidentId, IncidentStatus, StoreNotes, Transition, TransitionKind};
use tocsin_core::ports::{
    BackendError, Commit, CommitOutcome, ConfigStore, Heartbeats, IgnoredEvent, IncidentFilter, IncidentStore,
    RateCounter, Timeline,
};
use tocsin_core::providers::ProviderKind;
use tocsin_core::records::IntegrationRecord;
use tocsin_core::sns::TopicArn;
use tocsin_core::timeline::TimelineEntry;

/// One DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// Attribute names. Only incident items carry the attributes the indexes
/// are keyed on (`incident_id`, `status`, `service_status`, `created`), so
/// every index is sparse: nothing else lands in it.
pub mod attr {
    pub const PK: &str = "pk";
    pub const SK: &str = "sk";
    /// What an item is: one of [`super::kind`].
    pub const TYPE: &str = "type";
    /// The item's value as JSON: an `Incident`, an `IgnoredEvent`, a config record.
    pub const DATA: &str = "data";
    /// An incident's version, for conditional writes.
    pub const VERSION: &str = "version";
    /// Index `by_id`, partition key.
    pub const INCIDENT_ID: &str = "incident_id";
    pub const SERVICE: &str = "service";
    pub const DEDUP_KEY: &str = "dedup_key";
    /// Index `by_status`, partition key.
    pub const STATUS: &str = "status";
    /// Index `by_service_status`, partition key: `<service>#<status>`.
    pub const SERVICE_STATUS: &str = "service_status";
    /// Sort key of `by_status` and `by_service_status`: `<created_at>#<id>`.
    pub const CREATED: &str = "created";
    /// On an incident item written with a transition: `triggered`,
    /// `acknowledged` or `resolved`. Absent after a write without one.
    pub const TRANSITION: &str = "transition";
    /// The id of the event that made that transition.
    pub const TRANSITION_EVENT: &str = "transition_event";
    /// On an incident item: the tags ([`super::event_tag`]) of the last
    /// [`super::RECENT_EVENTS_KEPT`] events applied to it, oldest first, a
    /// list of strings. A repeat is recognised by them (it has no applied
    /// record): see [`super::DynamoStore`]'s `commit`.
    pub const RECENT: &str = "recent";
    /// On an incident item: `true` when the incident's details (its
    /// summary, source, origin, custom details and links) are not in its
    /// `data` but in its details item ([`super::details_key`]), written once
    /// when it opened. Absent from items written before details were kept
    /// apart (their `data` holds them, and keeps holding them).
    pub const DETAILS_APART: &str = "details_apart";
    /// On an open slot: the open incident's id and sort key.
    pub const OPEN_INCIDENT: &str = "open_incident";
    pub const OPEN_SK: &str = "open_sk";
    /// On applied and ignored records: the incident the event concerned.
    pub const INCIDENT: &str = "incident";
    pub const APPLIED_AT: &str = "applied_at";
    pub const REASON: &str = "reason";
    /// On a rate window: the requests counted in it.
    pub const COUNT: &str = "count";
    /// The table's TTL attribute: epoch seconds.
    pub const EXPIRES_AT: &str = "expires_at";
}

/// The values of [`attr::TYPE`].
pub mod kind {
    pub const INCIDENT: &str = "incident";
    /// What an incident opened with and keeps: its summary, source,
    /// origin, custom details and links.
    pub const DETAILS: &str = "details";
    pub const OPEN_SLOT: &str = "open_slot";
    pub const APPLIED: &str = "applied";
    pub const IGNORED: &str = "ignored";
    pub const SERVICE: &str = "service";
    pub const INTEGRATION: &str = "integration";
    pub const API_KEY: &str = "api_key";
    pub const TOPIC: &str = "topic";
    pub const RATE_WINDOW: &str = "rate_window";
    pub const TIMELINE: &str = "timeline";
    pub const HEARTBEAT: &str = "heartbeat";
}

/// The global secondary indexes, all KEYS_ONLY.
pub mod index {
    /// `incident_id` → the incident item's key.
    pub const BY_ID: &str = "by_id";
    /// `status`, newest first by `created`.
    pub const BY_STATUS: &str = "by_status";
    /// `service_status`, newest first by `created`.
    pub const BY_SERVICE_STATUS: &str = "by_service_status";
}

/// How many event tags an incident item keeps ([`attr::RECENT`]): 16 tags
/// of 12 characters are about 210 bytes of the item, which is kept under
/// 1 KB (one write unit). A redelivery comes within the events queue's
/// visibility timeout, while FIFO holds back the later events of its key:
/// it can fall behind only the rest of its batch (at most 9 events; more
/// only through people's acknowledge and resolve, which overtake it), so 16
/// is more than a redelivered event can fall behind.
pub const RECENT_EVENTS_KEPT: usize = 16;

/// An event's tag in an incident's [`attr::RECENT`] list: the first 72 bits
/// of the SHA-256 of its id, base64url, 12 characters. Short, because every
/// KB of the incident item is a write unit on every write; a collision
/// between two events of one incident's last 16 (about 2^-65) would take
/// the second for a redelivery of the first.
pub fn event_tag(event: &EventId) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let digest = Sha256::digest(event.as_str().as_bytes());
    let mut tag = String::with_capacity(12);
    for chunk in digest[..9].chunks(3) {
        let bits = u32::from(chunk[0]) << 16 | u32::from(chunk[1]) << 8 | u32::from(chunk[2]);
        for shift in [18, 12, 6, 0] {
            tag.push(char::from(ALPHABET[(bits >> shift & 63) as usize]));
        }
    }
    tag
}

/// The tags an incident's item keeps after `event` is applied to it: the
/// ones it had, then the event's, the oldest dropped past
/// [`RECENT_EVENTS_KEPT`].
fn recent_after(incident: &Incident, event: &EventId) -> Vec<String> {
    let tag = event_tag(event);
    let mut recent: Vec<String> = incident
        .store_notes
        .recent_events
        .iter()
        .filter(|t| **t != tag)
        .cloned()
        .collect();
    recent.push(tag);
    let excess = recent.len().saturating_sub(RECENT_EVENTS_KEPT);
    recent.drain(..excess);
    recent
}

/// How long an applied event is remembered: longer than an event can stay
/// on the events queue and its dead-letter queue before a redrive.
pub const APPLIED_RETENTION: TimeDelta = TimeDelta::days(7);
/// How long an ignored event is kept for "why did this not page?".
pub const IGNORED_RETENTION: TimeDelta = TimeDelta::days(30);
/// How long an incident's timeline entries are kept: long enough for any
/// postmortem, short enough that a key repeating for years does not pile up.
pub const TIMELINE_RETENTION: TimeDelta = TimeDelta::days(400);

const DEFAULT_LIST_LIMIT: usize = 100;
const MAX_LIST_LIMIT: usize = 1000;
/// BatchGetItem takes at most 100 keys.
const BATCH_GET_KEYS: usize = 100;
/// Keys a throttled BatchGetItem left unprocessed are asked again this many times.
const BATCH_GET_ATTEMPTS: u32 = 5;

const OPEN_SLOT_SK: &str = "OPEN";
const INCIDENT_SK_PREFIX: &str = "INC#";
/// A details item's sort key is its incident's, then this: it sorts right
/// after the incident, so newest first it comes just before it.
const DETAILS_SK_SUFFIX: &str = "#DETAILS";
const APPLIED_SK: &str = "APPLIED";
const IGNORED_SK: &str = "IGNORED";
const SERVICE_SK: &str = "SERVICE";
const INTEGRATION_SK: &str = "INTEGRATION";
const API_KEY_SK: &str = "APIKEY";

/// The adapter: a client built once per container and the table's name.
#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

/// A stored item that is not what this code writes.
#[derive(Debug, thiserror::Error)]
enum ItemError {
    #[error("attribute '{name}' is missing or not a {expected}")]
    Attribute { name: &'static str, expected: &'static str },
    #[error("the item is a '{found}', not a '{expected}'")]
    Kind { found: String, expected: &'static str },
    #[error("attribute 'data' is not valid JSON of its type")]
    Data(#[source] serde_json::Error),
    #[error("attribute '{0}' disagrees with the item's data")]
    Disagrees(&'static str),
    #[error(transparent)]
    Incident(#[from] IncidentDataError),
    #[error("a stored value is no longer valid")]
    Invalid(#[from] FieldError),
    #[error("the open slot names incident {0}, which does not exist")]
    MissingOpenIncident(String),
    #[error("incident {0} keeps its details apart, but its details item does not exist")]
    MissingDetails(String),
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn string<'a>(item: &'a Item, name: &'static str) -> Result<&'a str, ItemError> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Ok(value),
        _ => Err(ItemError::Attribute {
            name,
            expected: "string",
        }),
    }
}

fn number<T: FromStr>(item: &Item, name: &'static str) -> Result<T, ItemError> {
    match item.get(name) {
        Some(AttributeValue::N(value)) => value.parse().map_err(|_| ItemError::Attribute {
            name,
            expected: "number in range",
        }),
        _ => Err(ItemError::Attribute {
            name,
            expected: "number",
        }),
    }
}

fn expect_kind(item: &Item, expected: &'static str) -> Result<(), ItemError> {
    let found = string(item, attr::TYPE)?;
    if found == expected {
        Ok(())
    } else {
        Err(ItemError::Kind {
            found: found.to_owned(),
            expected,
        })
    }
}

pub(crate) fn key(pk: String, sk: impl Into<String>) -> Item {
    HashMap::from([(attr::PK.to_owned(), s(pk)), (attr::SK.to_owned(), s(sk))])
}

/// The primary key of a stored item (also what a KEYS_ONLY index returns).
fn key_of(item: &Item) -> Result<Item, ItemError> {
    Ok(ItemKey::of(item)?.into_item())
}

/// A primary key as plain strings: hashable, unlike an [`Item`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ItemKey {
    pk: String,
    sk: String,
}

impl ItemKey {
    fn of(item: &Item) -> Result<Self, ItemError> {
        Ok(ItemKey {
            pk: string(item, attr::PK)?.to_owned(),
            sk: string(item, attr::SK)?.to_owned(),
        })
    }

    fn into_item(self) -> Item {
        key(self.pk, self.sk)
    }
}

/// The partition of a (service, dedup key): its incidents and its open slot.
/// Dedup keys are free text (`#` included), so the pair is hashed, each part
/// length-prefixed; the readable values are attributes of the items.
fn key_partition(service: &ServiceId, dedup_key: &DedupKey) -> String {
    let mut hasher = Sha256::new();
    for part in [service.as_str(), dedup_key.as_str()] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    format!("KEY#{}", hex::encode(hasher.finalize()))
}

/// Sorts as the incidents are listed: by creation, then id. Fixed-width
/// UTC timestamps sort as text.
fn created(incident: &Incident) -> String {
    format!(
        "{}#{}",
        incident.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        incident.id
    )
}

fn incident_sk(incident: &Incident) -> String {
    format!("{INCIDENT_SK_PREFIX}{}", created(incident))
}

fn event_pk(event: &EventId) -> String {
    format!("EVENT#{event}")
}

fn service_pk(service: &ServiceId) -> String {
    format!("SERVICE#{service}")
}

fn integration_pk(key: &KeyHash) -> String {
    format!("INTKEY#{}", key.as_str())
}

fn topic_pk(topic: &TopicArn) -> String {
    format!("TOPIC#{}", topic.as_str())
}

fn timeline_pk(incident: &IncidentId) -> String {
    format!("TIMELINE#{incident}")
}

/// A timeline entry's item: in its incident's partition, keyed by the
/// entry's id so that writing it twice keeps one. Readers sort by time.
pub fn timeline_item(entry: &TimelineEntry) -> Result<Item, serde_json::Error> {
    let mut item = key(timeline_pk(&entry.incident), entry.id.clone());
    item.extend([
        (attr::TYPE.to_owned(), s(kind::TIMELINE)),
        (
            attr::EXPIRES_AT.to_owned(),
            n((entry.at + TIMELINE_RETENTION).timestamp()),
        ),
        (attr::DATA.to_owned(), s(serde_json::to_string(entry)?)),
    ]);
    Ok(item)
}

fn rate_pk(integration: &IntegrationId) -> String {
    format!("RATE#{integration}")
}

/// The key of an integration's request count in one minute window.
pub fn rate_window_key(integration: &IntegrationId, window: i64) -> Item {
    key(rate_pk(integration), window.to_string())
}

fn api_key_pk(key: &KeyHash) -> String {
    format!("APIKEY#{}", key.as_str())
}

/// The key of an incident's item (derived from fields that never change).
pub fn incident_key(incident: &Incident) -> Item {
    key(
        key_partition(&incident.service, &incident.dedup_key),
        incident_sk(incident),
    )
}

/// The key of the item that holds an incident's details (summary, source,
/// origin, custom details, links) when they are kept apart
/// ([`attr::DETAILS_APART`]).
pub fn details_key(incident: &Incident) -> Item {
    key(
        key_partition(&incident.service, &incident.dedup_key),
        format!("{}{DETAILS_SK_SUFFIX}", incident_sk(incident)),
    )
}

/// The key of the item that holds a (service, dedup key)'s open incident id
/// while it has one.
pub fn open_slot_key(service: &ServiceId, dedup_key: &DedupKey) -> Item {
    key(key_partition(service, dedup_key), OPEN_SLOT_SK)
}

/// The key of an event's idempotency record.
pub fn applied_key(event: &EventId) -> Item {
    key(event_pk(event), APPLIED_SK)
}

/// The key of an ignored event's record.
pub fn ignored_key(event: &EventId) -> Item {
    key(event_pk(event), IGNORED_SK)
}

pub fn service_key(service: &ServiceId) -> Item {
    key(service_pk(service), SERVICE_SK)
}

pub fn topic_key(topic: &TopicArn) -> Item {
    key(topic_pk(topic), INTEGRATION_SK)
}

pub fn integration_key(key_hash: &KeyHash) -> Item {
    key(integration_pk(key_hash), INTEGRATION_SK)
}

pub fn api_key_key(key_hash: &KeyHash) -> Item {
    key(api_key_pk(key_hash), API_KEY_SK)
}

/// The fields of an incident's JSON that its item holds as attributes
/// (keys, conditions, indexes), and so leaves out of `data`: (field,
/// attribute). The version too ([`attr::VERSION`], a number).
const KEY_FIELDS: [(&str, &str); 4] = [
    ("id", attr::INCIDENT_ID),
    ("service", attr::SERVICE),
    ("dedup_key", attr::DEDUP_KEY),
    ("status", attr::STATUS),
];
const VERSION_FIELD: &str = "version";

/// The fields of an incident's JSON that never change after it opens
/// (`decide` keeps the opening's), which its details item holds when they
/// are kept apart ([`attr::DETAILS_APART`]).
const DETAIL_FIELDS: [&str; 5] = ["summary", "source", "origin", "custom_details", "links"];

type JsonMap = serde_json::Map<String, serde_json::Value>;

/// An incident's JSON split as its items hold it: the fields of its item's
/// `data`, and those of its details item (none unless `details_apart`).
fn split_incident(incident: &Incident, details_apart: bool) -> Result<(JsonMap, JsonMap), serde_json::Error> {
    let serde_json::Value::Object(mut fields) = serde_json::to_value(incident)? else {
        return Err(serde::ser::Error::custom("an incident is not a JSON object"));
    };
    for (field, _) in KEY_FIELDS {
        fields.remove(field);
    }
    fields.remove(VERSION_FIELD);
    let mut details = JsonMap::new();
    if details_apart {
        for field in DETAIL_FIELDS {
            if let Some(value) = fields.remove(field) {
                details.insert(field.to_owned(), value);
            }
        }
    }
    Ok((fields, details))
}

/// An incident's item and its `data` that do not read as one incident.
#[derive(Debug, thiserror::Error)]
pub enum IncidentDataError {
    #[error("attribute 'data' is not valid JSON of its type")]
    Data(#[source] serde_json::Error),
    #[error("attribute '{0}' disagrees with the item's data")]
    Disagrees(&'static str),
}

/// The incident item's attributes that its `data` leaves out.
pub struct KeyAttributes<'a> {
    /// The values of the attributes of [`KEY_FIELDS`], in its order:
    /// `incident_id`, `service`, `dedup_key`, `status`.
    pub keys: [&'a str; 4],
    pub version: u64,
}

/// An incident's JSON fields from its item's `data` and the attributes that
/// hold the rest. A field that `data` does have (items written before it
/// left them out) must agree with its attribute: the conditions test the
/// attributes.
pub fn incident_fields(data: &str, attributes: &KeyAttributes<'_>) -> Result<JsonMap, IncidentDataError> {
    let mut fields: JsonMap = serde_json::from_str(data).map_err(IncidentDataError::Data)?;
    for ((field, name), value) in KEY_FIELDS.into_iter().zip(attributes.keys) {
        match fields.get(field) {
            None => {
                fields.insert(field.to_owned(), value.into());
            }
            Some(stored) if stored.as_str() == Some(value) => {}
            Some(_) => return Err(IncidentDataError::Disagrees(name)),
        }
    }
    match fields.get(VERSION_FIELD) {
        None => {
            fields.insert(VERSION_FIELD.to_owned(), attributes.version.into());
        }
        Some(stored) if stored.as_u64() == Some(attributes.version) => {}
        Some(_) => return Err(IncidentDataError::Disagrees(attr::VERSION)),
    }
    Ok(fields)
}

/// The incident of `fields` ([`incident_fields`]) and, when it keeps them
/// apart, its details item's `data`.
pub fn incident_of(mut fields: JsonMap, details: Option<&str>) -> Result<Incident, IncidentDataError> {
    if let Some(details) = details {
        let details: JsonMap = serde_json::from_str(details).map_err(IncidentDataError::Data)?;
        for (field, value) in details {
            if DETAIL_FIELDS.contains(&field.as_str()) {
                fields.insert(field, value);
            }
        }
    }
    serde_json::from_value(serde_json::Value::Object(fields)).map_err(IncidentDataError::Data)
}

/// An incident as a commit writes it. The item carries the transition the
/// commit publishes, so a stream consumer knows from the new image alone
/// whether to notify; a write without one leaves the attribute out (a Put
/// replaces the whole item).
struct IncidentWrite<'a> {
    incident: &'a Incident,
    transition: Option<&'a Transition>,
    /// The event applied by this write: its tag joins the item's
    /// [`attr::RECENT`] list, carried from the incident as read.
    event: &'a EventId,
    /// Whether the item leaves out [`DETAIL_FIELDS`], which its details
    /// item holds ([`details_apart`]).
    details_apart: bool,
}

/// Whether an incident's write keeps its details ([`DETAIL_FIELDS`]: its
/// summary, source, origin, custom details and links) apart from its item.
/// An opening does: they are most of the incident (an Alertmanager alert's
/// labels and annotations alone are often half of it), and every later
/// write of the incident item (a repeat, a transition) is billed per KB of
/// it, so leaving them out is what keeps a repeat at one write unit. Later
/// writes keep the incident as it was opened: `decide` never changes the
/// details after opening, so the details item stays right, and an incident
/// opened before details were kept apart keeps them in its item until it is
/// resolved.
fn details_apart(incident: &Incident, opening: bool) -> bool {
    opening || incident.store_notes.details_apart
}

/// The details item of `incident`, holding `details` (from [`IncidentWrite::into_item`]).
fn details_item(incident: &Incident, details: &JsonMap) -> Result<Item, serde_json::Error> {
    let mut item = details_key(incident);
    item.extend([
        (attr::TYPE.to_owned(), s(kind::DETAILS)),
        (attr::DATA.to_owned(), s(serde_json::to_string(details)?)),
    ]);
    Ok(item)
}

impl IncidentWrite<'_> {
    /// The incident's item and, when it keeps its details apart, the
    /// details it leaves out (for an opening's details item).
    fn into_item(self) -> Result<(Item, JsonMap), serde_json::Error> {
        let incident = self.incident;
        let (data, details) = split_incident(incident, self.details_apart)?;
        let mut item = incident_key(incident);
        item.extend([
            (attr::TYPE.to_owned(), s(kind::INCIDENT)),
            (attr::INCIDENT_ID.to_owned(), s(incident.id.as_str())),
            (attr::SERVICE.to_owned(), s(incident.service.as_str())),
            (attr::DEDUP_KEY.to_owned(), s(incident.dedup_key.as_str())),
            (attr::STATUS.to_owned(), s(incident.status.as_str())),
            (
                attr::SERVICE_STATUS.to_owned(),
                s(format!("{}#{}", incident.service, incident.status)),
            ),
            (attr::CREATED.to_owned(), s(created(incident))),
            (attr::VERSION.to_owned(), n(incident.version)),
            (attr::DATA.to_owned(), s(serde_json::to_string(&data)?)),
            (
                attr::RECENT.to_owned(),
                AttributeValue::L(recent_after(incident, self.event).into_iter().map(s).collect()),
            ),
        ]);
        if let Some(transition) = self.transition {
            item.insert(attr::TRANSITION.to_owned(), s(transition.kind.as_str()));
            item.insert(attr::TRANSITION_EVENT.to_owned(), s(transition.event_id.as_str()));
        }
        if self.details_apart {
            item.insert(attr::DETAILS_APART.to_owned(), AttributeValue::Bool(true));
        }
        Ok((item, details))
    }
}

/// An incident item as read: its incident's fields, which
/// [`StoredIncident::complete`] makes the incident, with its details item
/// when it keeps them apart.
struct StoredIncident {
    fields: JsonMap,
    notes: StoreNotes,
    id: String,
    key: ItemKey,
}

impl TryFrom<&Item> for StoredIncident {
    type Error = ItemError;

    fn try_from(item: &Item) -> Result<Self, Self::Error> {
        expect_kind(item, kind::INCIDENT)?;
        let id = string(item, attr::INCIDENT_ID)?;
        let attributes = KeyAttributes {
            keys: [
                id,
                string(item, attr::SERVICE)?,
                string(item, attr::DEDUP_KEY)?,
                string(item, attr::STATUS)?,
            ],
            version: number(item, attr::VERSION)?,
        };
        let fields = incident_fields(string(item, attr::DATA)?, &attributes)?;
        let details_apart = match item.get(attr::DETAILS_APART) {
            None => false,
            Some(AttributeValue::Bool(apart)) => *apart,
            Some(_) => {
                return Err(ItemError::Attribute {
                    name: attr::DETAILS_APART,
                    expected: "boolean",
                })
            }
        };
        Ok(StoredIncident {
            fields,
            notes: StoreNotes {
                recent_events: recent_of(item)?,
                details_apart,
            },
            id: id.to_owned(),
            key: ItemKey::of(item)?,
        })
    }
}

impl StoredIncident {
    /// The key of its details item, when it keeps them apart.
    fn details_key(&self) -> Option<ItemKey> {
        self.notes.details_apart.then(|| ItemKey {
            pk: self.key.pk.clone(),
            sk: format!("{}{DETAILS_SK_SUFFIX}", self.key.sk),
        })
    }

    /// The incident, with `details`, its details item, when it keeps them
    /// apart (a missing one is an error: an incident read without its
    /// details would lose them at its next write).
    fn complete(self, details: Option<&Item>) -> Result<Incident, ItemError> {
        let details = match (self.notes.details_apart, details) {
            (false, _) => None,
            (true, None) => return Err(ItemError::MissingDetails(self.id)),
            (true, Some(item)) => {
                expect_kind(item, kind::DETAILS)?;
                Some(string(item, attr::DATA)?)
            }
        };
        let mut incident = incident_of(self.fields, details)?;
        incident.store_notes = self.notes;
        Ok(incident)
    }
}

/// An incident item's [`attr::RECENT`] tags; none on an item written
/// before they were kept.
fn recent_of(item: &Item) -> Result<Vec<String>, ItemError> {
    let invalid = || ItemError::Attribute {
        name: attr::RECENT,
        expected: "list of strings",
    };
    match item.get(attr::RECENT) {
        None => Ok(Vec::new()),
        Some(AttributeValue::L(values)) => values
            .iter()
            .map(|v| v.as_s().cloned().map_err(|_| invalid()))
            .collect(),
        Some(_) => Err(invalid()),
    }
}

/// The open slot of the incident's key, naming it.
fn open_slot_item(incident: &Incident) -> Item {
    let mut item = open_slot_key(&incident.service, &incident.dedup_key);
    item.extend([
        (attr::TYPE.to_owned(), s(kind::OPEN_SLOT)),
        (attr::OPEN_INCIDENT.to_owned(), s(incident.id.as_str())),
        (attr::OPEN_SK.to_owned(), s(incident_sk(incident))),
        (attr::SERVICE.to_owned(), s(incident.service.as_str())),
        (attr::DEDUP_KEY.to_owned(), s(incident.dedup_key.as_str())),
    ]);
    item
}

fn applied_item(event: &EventId, incident: Option<&IncidentId>, now: DateTime<Utc>) -> Item {
    let mut item = applied_key(event);
    item.extend([
        (attr::TYPE.to_owned(), s(kind::APPLIED)),
        (
            attr::APPLIED_AT.to_owned(),
            s(now.to_rfc3339_opts(SecondsFormat::Micros, true)),
        ),
        (attr::EXPIRES_AT.to_owned(), n((now + APPLIED_RETENTION).timestamp())),
    ]);
    if let Some(incident) = incident {
        item.insert(attr::INCIDENT.to_owned(), s(incident.as_str()));
    }
    item
}

/// An ignored event's record.
struct IgnoredWrite<'a> {
    ignored: &'a IgnoredEvent,
}

impl TryFrom<IgnoredWrite<'_>> for Item {
    type Error = serde_json::Error;

    fn try_from(write: IgnoredWrite<'_>) -> Result<Self, Self::Error> {
        let ignored = write.ignored;
        let mut item = ignored_key(&ignored.event.id);
        item.extend([
            (attr::TYPE.to_owned(), s(kind::IGNORED)),
            (attr::SERVICE.to_owned(), s(ignored.event.service.as_str())),
            (attr::DEDUP_KEY.to_owned(), s(ignored.event.dedup_key().as_str())),
            (attr::REASON.to_owned(), s(ignored.reason.as_str())),
            (
                attr::EXPIRES_AT.to_owned(),
                n((ignored.at + IGNORED_RETENTION).timestamp()),
            ),
            (attr::DATA.to_owned(), s(serde_json::to_string(ignored)?)),
        ]);
        if let Some(incident) = &ignored.incident {
            item.insert(attr::INCIDENT.to_owned(), s(incident.as_str()));
        }
        Ok(item)
    }
}

/// A config value stored as JSON in `data` under a fixed key. The core's
/// config types are validated on parse and carry no serde of their own, so
/// each has a record type here.
trait Record: Serialize + DeserializeOwned {
    const KIND: &'static str;
    fn key(&self) -> Item;
}

fn record_item<R: Record>(record: &R) -> Result<Item, serde_json::Error> {
    let mut item = record.key();
    item.extend([
        (attr::TYPE.to_owned(), s(R::KIND)),
        (attr::DATA.to_owned(), s(serde_json::to_string(record)?)),
    ]);
    Ok(item)
}

fn record_of<R: Record>(item: &Item) -> Result<R, ItemError> {
    expect_kind(item, R::KIND)?;
    let record: R = serde_json::from_str(string(item, attr::DATA)?).map_err(ItemError::Data)?;
    if record.key() != key_of(item)? {
        return Err(ItemError::Disagrees(attr::PK));
    }
    Ok(record)
}

#[derive(Debug, Serialize, Deserialize)]
struct ServiceRecord {
    id: ServiceId,
    name: String,
    email: Vec<String>,
    sms: Vec<String>,
    slack: Option<String>,
    /// Absent from items written before webhooks existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    webhooks: Vec<tocsin_core::records::WebhookRecord>,
    on: Vec<TransitionKind>,
    min_severity: Severity,
    /// Absent from items written before per-channel minimums existed.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    min_severity_by_channel: std::collections::BTreeMap<tocsin_core::notify::Channel, Severity>,
    /// Absent from items written before escalation existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    escalation: Vec<EscalationLevelRecord>,
}

/// One level of `notify.escalation` (tocsin_core::escalation) as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct EscalationLevelRecord {
    after_seconds: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    email: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sms: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slack: Option<String>,
}

impl From<&EscalationLevel> for EscalationLevelRecord {
    fn from(level: &EscalationLevel) -> Self {
        EscalationLevelRecord {
            after_seconds: level.after_seconds,
            email: level.email.iter().map(|e| e.as_str().to_owned()).collect(),
            sms: level.sms.iter().map(|p| p.as_str().to_owned()).collect(),
            slack: level.slack.clone(),
        }
    }
}

/// A stored list of recipients, each parsed again as the config does.
fn parse_all<T>(values: &[String], parse: fn(&str) -> Result<T, FieldError>) -> Result<Vec<T>, FieldError> {
    values.iter().map(|value| parse(value)).collect()
}

impl TryFrom<EscalationLevelRecord> for EscalationLevel {
    type Error = FieldError;

    fn try_from(record: EscalationLevelRecord) -> Result<Self, Self::Error> {
        Ok(EscalationLevel {
            after_seconds: record.after_seconds,
            email: parse_all(&record.email, EmailAddress::parse)?,
            sms: parse_all(&record.sms, PhoneNumber::parse)?,
            slack: record.slack,
        })
    }
}

impl Record for ServiceRecord {
    const KIND: &'static str = kind::SERVICE;

    fn key(&self) -> Item {
        service_key(&self.id)
    }
}

impl From<&Service> for ServiceRecord {
    fn from(service: &Service) -> Self {
        let policy = &service.policy;
        ServiceRecord {
            id: service.id.clone(),
            name: service.name.clone(),
            email: policy.email.iter().map(|e| e.as_str().to_owned()).collect(),
            sms: policy.sms.iter().map(|p| p.as_str().to_owned()).collect(),
            slack: policy.slack.clone(),
            webhooks: policy.webhooks.iter().map(Into::into).collect(),
            on: policy.on.clone(),
            min_severity: policy.min_severity,
            min_severity_by_channel: policy.min_severity_by_channel.clone(),
            escalation: policy.escalation.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<ServiceRecord> for Service {
    type Error = FieldError;

    fn try_from(record: ServiceRecord) -> Result<Self, Self::Error> {
        Ok(Service {
            id: record.id,
            name: record.name,
            policy: NotificationPolicy {
                email: parse_all(&record.email, EmailAddress::parse)?,
                sms: parse_all(&record.sms, PhoneNumber::parse)?,
                slack: record.slack,
                webhooks: record
                    .webhooks
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<Result<_, _>>()?,
                on: record.on,
                min_severity: record.min_severity,
                min_severity_by_channel: record.min_severity_by_channel,
                escalation: record
                    .escalation
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<Result<_, _>>()?,
            },
        })
    }
}

impl Record for IntegrationRecord {
    const KIND: &'static str = kind::INTEGRATION;

    fn key(&self) -> Item {
        integration_key(&self.key_hash)
    }
}

/// Which cloudwatch integration an SNS topic delivers to.
#[derive(Debug, Serialize, Deserialize)]
struct TopicRecord {
    topic: TopicArn,
    key_hash: KeyHash,
}

impl Record for TopicRecord {
    const KIND: &'static str = kind::TOPIC;

    fn key(&self) -> Item {
        topic_key(&self.topic)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct ApiKeyRecord {
    name: String,
    key_hash: KeyHash,
    scopes: Vec<Scope>,
}

impl Record for ApiKeyRecord {
    const KIND: &'static str = kind::API_KEY;

    fn key(&self) -> Item {
        api_key_key(&self.key_hash)
    }
}

impl From<&ApiKey> for ApiKeyRecord {
    fn from(key: &ApiKey) -> Self {
        ApiKeyRecord {
            name: key.name.clone(),
            key_hash: key.key_hash.clone(),
            scopes: key.scopes.clone(),
        }
    }
}

impl From<ApiKeyRecord> for ApiKey {
    fn from(record: ApiKeyRecord) -> Self {
        ApiKey {
            name: record.name,
            key_hash: record.key_hash,
            scopes: record.scopes,
        }
    }
}

/// Every item of one `type` in the table: a paginated, consistent Scan,
/// for operators' listings (never on a request path).
pub(crate) async fn scan_kind(client: &Client, table: &str, kind: &str) -> Result<Vec<Item>, BackendError> {
    let mut items = Vec::new();
    let mut start: Option<Item> = None;
    loop {
        let output = client
            .scan()
            .table_name(table)
            .filter_expression("#type = :type")
            .expression_attribute_names("#type", attr::TYPE)
            .expression_attribute_values(":type", s(kind))
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| BackendError::new("dynamodb Scan", e))?;
        items.extend(output.items.unwrap_or_default());
        match output.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => return Ok(items),
        }
    }
}

/// A condition on one item of a transaction.
struct Condition {
    expression: &'static str,
    names: &'static [(&'static str, &'static str)],
    values: Vec<(&'static str, AttributeValue)>,
}

impl Condition {
    fn absent() -> Self {
        Condition {
            expression: "attribute_not_exists(#pk)",
            names: &[("#pk", attr::PK)],
            values: Vec::new(),
        }
    }
}

fn build_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> BackendError {
    BackendError::new("dynamodb build a request", e)
}

fn put(table: &str, item: Item, condition: Option<Condition>) -> Result<TransactWriteItem, BackendError> {
    let mut put = Put::builder().table_name(table).set_item(Some(item));
    if let Some(condition) = condition {
        put = put.condition_expression(condition.expression);
        for (name, value) in condition.names {
            put = put.expression_attribute_names(*name, *value);
        }
        for (name, value) in condition.values {
            put = put.expression_attribute_values(name, value);
        }
    }
    Ok(TransactWriteItem::builder()
        .put(put.build().map_err(build_error)?)
        .build())
}

fn delete(table: &str, key: Item, condition: Condition) -> Result<TransactWriteItem, BackendError> {
    let mut delete = Delete::builder()
        .table_name(table)
        .set_key(Some(key))
        .condition_expression(condition.expression);
    for (name, value) in condition.names {
        delete = delete.expression_attribute_names(*name, *value);
    }
    for (name, value) in condition.values {
        delete = delete.expression_attribute_values(name, value);
    }
    Ok(TransactWriteItem::builder()
        .delete(delete.build().map_err(build_error)?)
        .build())
}

/// What a cancelled transaction means. When the transaction claims the
/// event (`claims`: an applied record, always the first item), that
/// condition failing means the event was applied, whatever else failed.
/// Any other failed condition, or another transaction writing the same
/// items at the same time, means the incident or its key changed since it
/// was read: the caller re-reads and decides again (an opening's
/// redelivery then finds its incident and its tag: AlreadyApplied).
fn outcome_of_cancellation(reasons: &[CancellationReason], claims: bool) -> Option<CommitOutcome> {
    const CONDITION_FAILED: &str = "ConditionalCheckFailed";
    const TRANSACTION_CONFLICT: &str = "TransactionConflict";
    fn code(reason: &CancellationReason) -> &str {
        reason.code().unwrap_or("None")
    }
    if claims && reasons.first().map(code) == Some(CONDITION_FAILED) {
        return Some(CommitOutcome::AlreadyApplied);
    }
    if reasons.iter().map(code).any(|c| c == CONDITION_FAILED) {
        return Some(CommitOutcome::Conflict);
    }
    if reasons.iter().map(code).any(|c| c == TRANSACTION_CONFLICT)
        && reasons
            .iter()
            .map(code)
            .all(|c| c == TRANSACTION_CONFLICT || c == "None")
    {
        return Some(CommitOutcome::Conflict);
    }
    None
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    async fn get_item(&self, key: Item, consistent: bool) -> Result<Option<Item>, BackendError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(|e| BackendError::new("dynamodb GetItem", e))?;
        Ok(output.item)
    }

    async fn put_item(&self, item: Item) -> Result<(), BackendError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| BackendError::new("dynamodb PutItem", e))?;
        Ok(())
    }

    async fn put_record<R: Record>(&self, record: &R) -> Result<(), BackendError> {
        let item = record_item(record).map_err(|e| BackendError::new("dynamodb encode a config record", e))?;
        self.put_item(item).await
    }

    async fn get_record<R: Record>(&self, key: Item) -> Result<Option<R>, BackendError> {
        // Config changes rarely and is read on every webhook: an eventually
        // consistent read (half the cost) is fresh within about a second.
        let Some(item) = self.get_item(key, false).await? else {
            return Ok(None);
        };
        record_of(&item)
            .map(Some)
            .map_err(|e| BackendError::new("dynamodb read a config record", e))
    }

    /// Creates or replaces a service and its notification policy.
    pub async fn put_service(&self, service: &Service) -> Result<(), BackendError> {
        self.put_record(&ServiceRecord::from(service)).await
    }

    /// Creates or replaces the integration its key hash names. A key
    /// rotation is a new item: delete the old hash's with
    /// [`DynamoStore::delete_integration`]. A cloudwatch integration also
    /// gets one item per allowed topic, naming its key hash, for the SNS
    /// deliveries AWS makes to the function directly.
    pub async fn put_integration(&self, integration: &Integration) -> Result<(), BackendError> {
        self.put_record(&IntegrationRecord::from(integration)).await?;
        if integration.provider == ProviderKind::CloudWatch {
            for topic in &integration.cloudwatch.topics {
                self.put_record(&TopicRecord {
                    topic: topic.clone(),
                    key_hash: integration.key_hash.clone(),
                })
                .await?;
            }
        }
        Ok(())
    }

    pub async fn put_api_key(&self, key: &ApiKey) -> Result<(), BackendError> {
        self.put_record(&ApiKeyRecord::from(key)).await
    }

    /// Removes the integration of this key hash, and the topic items that
    /// name it; nothing if there is none.
    pub async fn delete_integration(&self, key: &KeyHash) -> Result<(), BackendError> {
        if let Some(integration) = self.integration_by_key(key).await? {
            for topic in &integration.cloudwatch.topics {
                let record: Option<TopicRecord> = self.get_record(topic_key(topic)).await?;
                if record.is_some_and(|r| &r.key_hash == key) {
                    self.client
                        .delete_item()
                        .table_name(&self.table)
                        .set_key(Some(topic_key(topic)))
                        .send()
                        .await
                        .map_err(|e| BackendError::new("dynamodb DeleteItem", e))?;
                }
            }
        }
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(integration_key(key)))
            .send()
            .await
            .map_err(|e| BackendError::new("dynamodb DeleteItem", e))?;
        Ok(())
    }

    /// Every integration in the table, for operators (`tocsin integrations
    /// list`): a paginated Scan, never on a request path.
    pub async fn list_integrations(&self) -> Result<Vec<Integration>, BackendError> {
        scan_kind(&self.client, &self.table, kind::INTEGRATION)
            .await?
            .iter()
            .map(|item| {
                record_of::<IntegrationRecord>(item)
                    .map(Integration::from)
                    .map_err(|e| BackendError::new("dynamodb read a config record", e))
            })
            .collect()
    }

    /// The applied record of an event, claimed unless it exists and has not
    /// expired. Expiry is decided here, not by TTL deletion (which may lag
    /// by days, and never happens in moto).
    fn claim_event(
        &self,
        event: &EventId,
        incident: Option<&IncidentId>,
        now: DateTime<Utc>,
    ) -> Result<TransactWriteItem, BackendError> {
        put(
            &self.table,
            applied_item(event, incident, now),
            Some(Condition {
                expression: "attribute_not_exists(#pk) OR #expires_at < :now",
                names: &[("#pk", attr::PK), ("#expires_at", attr::EXPIRES_AT)],
                values: vec![(":now", n(now.timestamp()))],
            }),
        )
    }

    /// The items of one commit, the applied record first.
    fn transaction(&self, commit: &Commit, now: DateTime<Utc>) -> Result<Vec<TransactWriteItem>, BackendError> {
        let encode = |e| BackendError::new("dynamodb encode a commit", e);
        let mut items = self.changes(commit, now)?;
        if let Some(entry) = commit.timeline_entry() {
            items.push(put(&self.table, timeline_item(&entry).map_err(encode)?, None)?);
        }
        Ok(items)
    }

    /// The items a commit changes, but for its timeline entry.
    fn changes(&self, commit: &Commit, now: DateTime<Utc>) -> Result<Vec<TransactWriteItem>, BackendError> {
        let encode = |e| BackendError::new("dynamodb encode a commit", e);
        match commit {
            Commit::Incident {
                event_id,
                incident,
                expected_version,
                transition,
                ..
            } => {
                let opening = expected_version.is_none();
                let apart = details_apart(incident, opening);
                let (item, details) = IncidentWrite {
                    incident,
                    transition: transition.as_ref(),
                    event: event_id,
                    details_apart: apart,
                }
                .into_item()
                .map_err(encode)?;
                let mut items = Vec::with_capacity(4);
                match expected_version {
                    // An opening claims no applied record: the new incident
                    // holds its tag (`recent`), so a redelivery finds it and
                    // is refused as a repeat applied before, and `commit`
                    // reads the previous incident's tags before opening.
                    None => {
                        items.push(put(&self.table, item, Some(Condition::absent()))?);
                        if !incident.status.is_closed() {
                            items.push(put(&self.table, open_slot_item(incident), Some(Condition::absent()))?);
                        }
                        if apart {
                            let details = details_item(incident, &details).map_err(encode)?;
                            items.push(put(&self.table, details, None)?);
                        }
                    }
                    Some(expected) => {
                        items.push(self.claim_event(event_id, Some(&incident.id), now)?);
                        items.push(put(
                            &self.table,
                            item,
                            Some(Condition {
                                expression: "#version = :expected",
                                names: &[("#version", attr::VERSION)],
                                values: vec![(":expected", n(expected))],
                            }),
                        )?);
                        // Only the open incident of a key is ever updated, so
                        // an update to resolved is the one that resolves it.
                        if incident.status.is_closed() {
                            items.push(delete(
                                &self.table,
                                open_slot_key(&incident.service, &incident.dedup_key),
                                Condition {
                                    expression: "#open = :id",
                                    names: &[("#open", attr::OPEN_INCIDENT)],
                                    values: vec![(":id", s(incident.id.as_str()))],
                                },
                            )?);
                        }
                    }
                }
                Ok(items)
            }
            Commit::Ignored(ignored) => {
                let item = Item::try_from(IgnoredWrite { ignored }).map_err(encode)?;
                Ok(vec![
                    self.claim_event(&ignored.event.id, ignored.incident.as_ref(), now)?,
                    put(&self.table, item, None)?,
                ])
            }
        }
    }

    /// The keys of up to `limit` incidents of one index partition, newest
    /// first, with their sort value.
    async fn index_keys(
        &self,
        index: &'static str,
        partition_attr: &'static str,
        partition: String,
        limit: usize,
    ) -> Result<Vec<(String, ItemKey)>, BackendError> {
        let mut found = Vec::new();
        let mut start = None;
        while found.len() < limit {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression("#p = :p")
                .expression_attribute_names("#p", partition_attr)
                .expression_attribute_values(":p", s(partition.clone()))
                .scan_index_forward(false)
                .limit(i32::try_from(limit - found.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| BackendError::new("dynamodb Query", e))?;
            for item in page.items() {
                let read = |e| BackendError::new("dynamodb read an index entry", e);
                let created = string(item, attr::CREATED).map_err(read)?.to_owned();
                found.push((created, ItemKey::of(item).map_err(read)?));
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        Ok(found)
    }

    /// The incidents of these keys, strongly consistent, in the keys' order;
    /// a key without an item is left out. Two rounds: the incidents, then
    /// the details items of those that keep them apart.
    async fn incidents_at(&self, keys: Vec<ItemKey>) -> Result<Vec<Incident>, BackendError> {
        let read = |e| BackendError::new("dynamodb read an incident", e);
        let mut stored: HashMap<ItemKey, StoredIncident> = HashMap::with_capacity(keys.len());
        for item in self.batch_get(&keys).await? {
            let incident = StoredIncident::try_from(&item).map_err(read)?;
            stored.insert(incident.key.clone(), incident);
        }
        let wanted: Vec<ItemKey> = stored.values().filter_map(StoredIncident::details_key).collect();
        let mut details: HashMap<ItemKey, Item> = HashMap::with_capacity(wanted.len());
        for item in self.batch_get(&wanted).await? {
            details.insert(ItemKey::of(&item).map_err(read)?, item);
        }
        let mut found = Vec::with_capacity(keys.len());
        for key in &keys {
            let Some(incident) = stored.remove(key) else {
                continue;
            };
            let details = incident.details_key().and_then(|k| details.get(&k));
            found.push(incident.complete(details).map_err(read)?);
        }
        Ok(found)
    }

    /// The items of these keys, strongly consistent, in no order; keys
    /// without an item are left out.
    async fn batch_get(&self, keys: &[ItemKey]) -> Result<Vec<Item>, BackendError> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH_GET_KEYS) {
            let mut pending: Vec<Item> = chunk.iter().cloned().map(ItemKey::into_item).collect();
            let mut attempt = 0;
            while !pending.is_empty() {
                if attempt == BATCH_GET_ATTEMPTS {
                    return Err(BackendError::new(
                        "dynamodb BatchGetItem",
                        format!("{} keys still unprocessed after {attempt} attempts", pending.len()),
                    ));
                }
                if attempt > 0 {
                    if let Some(sleep) = self.client.config().sleep_impl() {
                        sleep.sleep(Duration::from_millis(25 << attempt)).await;
                    }
                }
                attempt += 1;
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(pending))
                    .consistent_read(true)
                    .build()
                    .map_err(build_error)?;
                let mut output = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(|e| BackendError::new("dynamodb BatchGetItem", e))?;
                found.extend(
                    output
                        .responses
                        .as_mut()
                        .and_then(|r| r.remove(&self.table))
                        .unwrap_or_default(),
                );
                pending = output
                    .unprocessed_keys()
                    .and_then(|u| u.get(&self.table))
                    .map(|k| k.keys().to_vec())
                    .unwrap_or_default();
            }
        }
        Ok(found)
    }

    /// The incident whose item has this key, with its details: one strongly
    /// consistent Query of the item and the details item that sorts after it.
    async fn incident_at(&self, key: Item) -> Result<Option<Incident>, BackendError> {
        let read = |e| BackendError::new("dynamodb read an incident", e);
        let ItemKey { pk, sk } = ItemKey::of(&key).map_err(read)?;
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :sk)")
            .expression_attribute_names("#pk", attr::PK)
            .expression_attribute_names("#sk", attr::SK)
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":sk", s(sk.clone()))
            .limit(2)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| BackendError::new("dynamodb Query", e))?;
        let items = output.items();
        let Some(item) = items.iter().find(|i| string(i, attr::SK).is_ok_and(|s| s == sk)) else {
            return Ok(None);
        };
        let incident = StoredIncident::try_from(item).map_err(read)?;
        let details = incident
            .details_key()
            .and_then(|key| items.iter().find(|i| ItemKey::of(i).is_ok_and(|k| k == key)));
        incident.complete(details).map(Some).map_err(read)
    }

    /// The `data` of the details item of the incident whose item has this
    /// key (`pk`, `sk`): one strongly consistent GetItem. For readers that
    /// have the incident's item without its details (the stream's
    /// dispatcher).
    pub async fn details_data(&self, pk: &str, sk: &str) -> Result<String, BackendError> {
        let read = |e| BackendError::new("dynamodb read an incident's details", e);
        let details_key = key(pk.to_owned(), format!("{sk}{DETAILS_SK_SUFFIX}"));
        let Some(item) = self.get_item(details_key, true).await? else {
            let id = sk.rsplit('#').next().unwrap_or(sk);
            return Err(read(ItemError::MissingDetails(id.to_owned())));
        };
        expect_kind(&item, kind::DETAILS).map_err(read)?;
        string(&item, attr::DATA).map(str::to_owned).map_err(read)
    }
}

#[async_trait]
impl IncidentStore for DynamoStore {
    async fn latest(&self, service: &ServiceId, dedup_key: &DedupKey) -> Result<Option<Incident>, BackendError> {
        let read = |e| BackendError::new("dynamodb read an incident", e);
        let partition = key_partition(service, dedup_key);
        // Newest first, the open slot ("OPEN" sorts after "INC#…") before
        // the incidents, and an incident's details item just before it:
        // three items are the slot, the newest incident's details and the
        // newest incident.
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", attr::PK)
            .expression_attribute_values(":pk", s(partition.clone()))
            .scan_index_forward(false)
            .limit(3)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| BackendError::new("dynamodb Query", e))?;
        let items = output.items();
        let slot = items
            .iter()
            .find(|i| string(i, attr::SK).is_ok_and(|sk| sk == OPEN_SLOT_SK));
        let newest = items
            .iter()
            .find(|i| string(i, attr::TYPE).is_ok_and(|t| t == kind::INCIDENT));
        let newest = match slot {
            None => newest,
            Some(slot) => {
                let open_id = string(slot, attr::OPEN_INCIDENT).map_err(read)?;
                match newest.filter(|i| string(i, attr::INCIDENT_ID).is_ok_and(|id| id == open_id)) {
                    Some(item) => Some(item),
                    None => {
                        // The open incident is not the newest created: a
                        // clock went back. Rare; one more read.
                        let open_sk = string(slot, attr::OPEN_SK).map_err(read)?;
                        return match self.incident_at(key(partition, open_sk)).await? {
                            Some(incident) => Ok(Some(incident)),
                            None => Err(read(ItemError::MissingOpenIncident(open_id.to_owned()))),
                        };
                    }
                }
            }
        };
        let Some(item) = newest else {
            return Ok(None);
        };
        let incident = StoredIncident::try_from(item).map_err(read)?;
        let Some(details_key) = incident.details_key() else {
            return incident.complete(None).map(Some).map_err(read);
        };
        match items.iter().find(|i| ItemKey::of(i).is_ok_and(|k| k == details_key)) {
            Some(details) => incident.complete(Some(details)).map(Some).map_err(read),
            // Not among the three items: read it.
            None => {
                let details = self.get_item(details_key.into_item(), true).await?;
                incident.complete(details.as_ref()).map(Some).map_err(read)
            }
        }
    }

    async fn get(&self, id: &IncidentId) -> Result<Option<Incident>, BackendError> {
        let read = |e| BackendError::new("dynamodb read an incident", e);
        // The index gives the item's key (fixed at creation), the table its
        // current value, strongly consistent.
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(index::BY_ID)
            .key_condition_expression("#id = :id")
            .expression_attribute_names("#id", attr::INCIDENT_ID)
            .expression_attribute_values(":id", s(id.as_str()))
            .limit(1)
            .send()
            .await
            .map_err(|e| BackendError::new("dynamodb Query", e))?;
        let Some(entry) = output.items().first() else {
            return Ok(None);
        };
        self.incident_at(key_of(entry).map_err(read)?).await
    }

    async fn list(&self, filter: &IncidentFilter) -> Result<Vec<Incident>, BackendError> {
        let limit = filter.limit.unwrap_or(DEFAULT_LIST_LIMIT).min(MAX_LIST_LIMIT);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let statuses = match filter.status {
            Some(status) => vec![status],
            None => vec![
                IncidentStatus::Open,
                IncidentStatus::Acknowledged,
                IncidentStatus::Resolved,
            ],
        };
        // One index partition per status asked: the newest `limit` of each,
        // merged, hold the newest `limit` of all.
        let mut entries = Vec::new();
        for status in statuses {
            let found = match &filter.service {
                Some(service) => {
                    self.index_keys(
                        index::BY_SERVICE_STATUS,
                        attr::SERVICE_STATUS,
                        format!("{service}#{status}"),
                        limit,
                    )
                    .await?
                }
                None => {
                    self.index_keys(index::BY_STATUS, attr::STATUS, status.to_string(), limit)
                        .await?
                }
            };
            entries.extend(found);
        }
        entries.sort_by(|a, b| b.0.cmp(&a.0));
        // The index lags the table: an incident that just changed status may
        // show under both, or under its old one (dropped below).
        let mut seen = HashSet::new();
        let keys: Vec<ItemKey> = entries
            .into_iter()
            .map(|(_, key)| key)
            .filter(|key| seen.insert(key.clone()))
            .take(limit)
            .collect();
        let incidents = self.incidents_at(keys).await?;
        Ok(incidents
            .into_iter()
            .filter(|i| filter.status.is_none_or(|s| i.status == s))
            .filter(|i| filter.service.as_ref().is_none_or(|s| &i.service == s))
            .collect())
    }

    async fn is_applied(&self, event: &EventId) -> Result<bool, BackendError> {
        let Some(item) = self.get_item(applied_key(event), true).await? else {
            return Ok(false);
        };
        let expires_at: i64 =
            number(&item, attr::EXPIRES_AT).map_err(|e| BackendError::new("dynamodb read an applied record", e))?;
        Ok(expires_at >= Utc::now().timestamp())
    }

    async fn commit(&self, commit: &Commit) -> Result<CommitOutcome, BackendError> {
        match commit {
            Commit::Incident {
                event_id,
                incident,
                expected_version: Some(expected),
                transition: None,
                timeline,
            } => {
                return self
                    .commit_repeat(event_id, incident, *expected, timeline.as_ref())
                    .await;
            }
            // A trigger that opened or repeated the key's previous incident
            // left no applied record: if that incident was resolved since,
            // its redelivery decides to open a new one, or to ignore it as
            // stale. The previous incident's tags tell (one Query, on these
            // two only). Not atomic with the transaction: only a new
            // incident opened, repeated by this same event and resolved
            // between the two would slip through.
            Commit::Incident {
                event_id,
                incident,
                expected_version: None,
                ..
            } => {
                if self
                    .applied_to_latest(&incident.service, &incident.dedup_key, event_id)
                    .await?
                {
                    tracing::debug!("opening event applied before to the key's newest incident");
                    return Ok(CommitOutcome::AlreadyApplied);
                }
            }
            Commit::Ignored(ignored) => {
                let event = &ignored.event;
                if self
                    .applied_to_latest(&event.service, event.dedup_key(), &event.id)
                    .await?
                {
                    tracing::debug!("ignored event applied before to the key's newest incident");
                    return Ok(CommitOutcome::AlreadyApplied);
                }
            }
            Commit::Incident { .. } => {}
        }
        let claims = !matches!(
            commit,
            Commit::Incident {
                expected_version: None,
                ..
            }
        );
        let items = self.transaction(commit, Utc::now())?;
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        match result {
            Ok(_) => Ok(CommitOutcome::Written),
            Err(err) => {
                if let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) = err.as_service_error() {
                    if let Some(outcome) = outcome_of_cancellation(cancelled.cancellation_reasons(), claims) {
                        tracing::debug!(?outcome, "transaction cancelled");
                        return Ok(outcome);
                    }
                }
                Err(BackendError::new("dynamodb TransactWriteItems", err))
            }
        }
    }
}

impl DynamoStore {
    /// Whether `event` is among the tags of the key's newest incident.
    async fn applied_to_latest(
        &self,
        service: &ServiceId,
        dedup_key: &DedupKey,
        event: &EventId,
    ) -> Result<bool, BackendError> {
        let tag = event_tag(event);
        let latest = self.latest(service, dedup_key).await?;
        Ok(latest.is_some_and(|incident| incident.store_notes.recent_events.contains(&tag)))
    }

    /// A repeat (no transition): one conditional PutItem of the incident
    /// item, instead of a transaction with an applied record (transactional
    /// writes cost twice the units, and the applied record is one more
    /// item). The event's idempotency is in the item itself: its tag joins
    /// the [`attr::RECENT`] list, and the write is refused if the version
    /// moved or the tag is already there. A refusal is told apart by reading
    /// the item: the tag there means applied before (whatever was written
    /// since: every incident write, transactions too, carries the list
    /// forward), else another writer got in first.
    ///
    /// The timeline entry follows as a plain PutItem (one unit, not two in
    /// the transaction). If the function dies between the two writes, the
    /// redelivered event is answered AlreadyApplied and the entry written
    /// then, if it is still missing: it tells the redelivery's view of the
    /// incident (its occurrences may be one more than when it was applied).
    /// If the event is never redelivered (dead-lettered after it was
    /// applied), that repeat's line is missing from the timeline: the
    /// trade-off for the cheaper write.
    async fn commit_repeat(
        &self,
        event: &EventId,
        incident: &Incident,
        expected: u64,
        timeline: Option<&TimelineEntry>,
    ) -> Result<CommitOutcome, BackendError> {
        let encode = |e| BackendError::new("dynamodb encode a commit", e);
        let (item, _) = IncidentWrite {
            incident,
            transition: None,
            event,
            details_apart: details_apart(incident, false),
        }
        .into_item()
        .map_err(encode)?;
        let tag = event_tag(event);
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("#version = :expected AND NOT contains(#recent, :tag)")
            .expression_attribute_names("#version", attr::VERSION)
            .expression_attribute_names("#recent", attr::RECENT)
            .expression_attribute_values(":expected", n(expected))
            .expression_attribute_values(":tag", s(tag.clone()))
            .send()
            .await;
        match result {
            Ok(_) => {
                if let Some(entry) = timeline {
                    self.put_item(timeline_item(entry).map_err(encode)?).await?;
                }
                Ok(CommitOutcome::Written)
            }
            Err(error) if error.as_service_error().is_some_and(is_condition_failure) => {
                let read = |e| BackendError::new("dynamodb read an incident", e);
                let stored = match self.get_item(incident_key(incident), true).await? {
                    Some(item) => Some(StoredIncident::try_from(&item).map_err(read)?),
                    None => None,
                };
                if !stored.is_some_and(|s| s.notes.recent_events.contains(&tag)) {
                    tracing::debug!("repeat refused: the incident changed");
                    return Ok(CommitOutcome::Conflict);
                }
                tracing::debug!("repeat applied before");
                if let Some(entry) = timeline {
                    self.put_if_absent(
                        timeline_item(entry).map_err(encode)?,
                        "dynamodb PutItem a timeline entry",
                    )
                    .await?;
                }
                Ok(CommitOutcome::AlreadyApplied)
            }
            Err(error) => Err(BackendError::new("dynamodb PutItem an incident", error)),
        }
    }
}

/// One UpdateItem per request: an atomic ADD on the window's item, which
/// expires (TTL) a minute after its window ends.
/// The partition of every heartbeat: one Query lists them for the check.
const HEARTBEAT_PK: &str = "HEARTBEAT";
const LAST_BEAT_AT: &str = "last_beat_at";
const MISSED_SINCE: &str = "missed_since";

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn heartbeat_key(id: &HeartbeatId) -> Item {
    key(HEARTBEAT_PK.to_owned(), id.as_str().to_owned())
}

fn heartbeat_time(item: &Item, name: &'static str) -> Result<Option<DateTime<Utc>>, BackendError> {
    match item.get(name) {
        None => Ok(None),
        Some(_) => {
            let text = string(item, name).map_err(|e| BackendError::new("dynamodb read a heartbeat", e))?;
            DateTime::parse_from_rfc3339(text)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|e| BackendError::new("dynamodb read a heartbeat time", e))
        }
    }
}

fn monitor_of(item: &Item) -> Result<HeartbeatMonitor, BackendError> {
    let data = string(item, attr::DATA).map_err(|e| BackendError::new("dynamodb read a heartbeat", e))?;
    Ok(HeartbeatMonitor {
        heartbeat: serde_json::from_str(data).map_err(|e| BackendError::new("dynamodb decode a heartbeat", e))?,
        state: HeartbeatState {
            last_beat_at: heartbeat_time(item, LAST_BEAT_AT)?,
            missed_since: heartbeat_time(item, MISSED_SINCE)?,
        },
    })
}

pub(crate) fn is_condition_failure<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(error: &E) -> bool {
    error.code() == Some("ConditionalCheckFailedException")
}

impl DynamoStore {
    /// Writes `item` unless an item of its key is there: the first write
    /// stays, and a repeat is not an error. `what` names the call in errors.
    async fn put_if_absent(&self, item: Item, what: &'static str) -> Result<(), BackendError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", attr::PK)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if error.as_service_error().is_some_and(is_condition_failure) => Ok(()),
            Err(error) => Err(BackendError::new(what, error)),
        }
    }

    /// Writes a heartbeat's config, keeping the state of its beats.
    pub async fn put_heartbeat(&self, heartbeat: &Heartbeat) -> Result<(), BackendError> {
        let data = serde_json::to_string(heartbeat).map_err(|e| BackendError::new("dynamodb encode a heartbeat", e))?;
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(heartbeat_key(&heartbeat.id)))
            .update_expression("SET #type = :kind, #data = :data")
            .expression_attribute_names("#type", attr::TYPE)
            .expression_attribute_names("#data", attr::DATA)
            .expression_attribute_values(":kind", s(kind::HEARTBEAT))
            .expression_attribute_values(":data", s(data))
            .send()
            .await
            .map_err(|e| BackendError::new("dynamodb UpdateItem (heartbeat)", e))?;
        Ok(())
    }

    pub async fn delete_heartbeat(&self, id: &HeartbeatId) -> Result<(), BackendError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(heartbeat_key(id)))
            .send()
            .await
            .map_err(|e| BackendError::new("dynamodb DeleteItem (heartbeat)", e))?;
        Ok(())
    }
}

/// Heartbeats live in one partition (`HEARTBEAT`, one item each): a beat or
/// a miss is one UpdateItem conditional on the state read, the check one Query.
#[async_trait]
impl Heartbeats for DynamoStore {
    async fn monitors(&self) -> Result<Vec<HeartbeatMonitor>, BackendError> {
        let mut monitors = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", attr::PK)
                .expression_attribute_values(":pk", s(HEARTBEAT_PK))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| BackendError::new("dynamodb Query (heartbeats)", e))?;
            for item in page.items() {
                monitors.push(monitor_of(item)?);
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        Ok(monitors)
    }

    async fn monitor(&self, id: &HeartbeatId) -> Result<Option<HeartbeatMonitor>, BackendError> {
        self.get_item(heartbeat_key(id), true)
            .await?
            .as_ref()
            .map(monitor_of)
            .transpose()
    }

    async fn record_beat(
        &self,
        id: &HeartbeatId,
        seen: &HeartbeatState,
        last_beat_at: DateTime<Utc>,
    ) -> Result<bool, BackendError> {
        // Only a configured heartbeat, and only in the state that was read.
        let mut condition = vec!["attribute_exists(#pk)"];
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(heartbeat_key(id)))
            .update_expression("SET #last = :last REMOVE #missed")
            .expression_attribute_names("#pk", attr::PK)
            .expression_attribute_names("#last", LAST_BEAT_AT)
            .expression_attribute_names("#missed", MISSED_SINCE)
            .expression_attribute_values(":last", s(stamp(last_beat_at)));
        match seen.last_beat_at {
            Some(last) => {
                condition.push("#last = :seen_last");
                request = request.expression_attribute_values(":seen_last", s(stamp(last)));
            }
            None => condition.push("attribute_not_exists(#last)"),
        }
        match seen.missed_since {
            Some(missed) => {
                condition.push("#missed = :seen_missed");
                request = request.expression_attribute_values(":seen_missed", s(stamp(missed)));
            }
            None => condition.push("attribute_not_exists(#missed)"),
        }
        let result = request.condition_expression(condition.join(" AND ")).send().await;
        match result {
            Ok(_) => Ok(true),
            Err(error) if error.as_service_error().is_some_and(is_condition_failure) => Ok(false),
            Err(error) => Err(BackendError::new("dynamodb UpdateItem (beat)", error)),
        }
    }

    async fn mark_missed(
        &self,
        id: &HeartbeatId,
        last_beat_at: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool, BackendError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(heartbeat_key(id)))
            .update_expression("SET #missed = :at")
            .condition_expression("#last = :seen AND attribute_not_exists(#missed)")
            .expression_attribute_names("#last", LAST_BEAT_AT)
            .expression_attribute_names("#missed", MISSED_SINCE)
            .expression_attribute_values(":seen", s(stamp(last_beat_at)))
            .expression_attribute_values(":at", s(stamp(at)))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error) if error.as_service_error().is_some_and(is_condition_failure) => Ok(false),
            Err(error) => Err(BackendError::new("dynamodb UpdateItem (missed heartbeat)", error)),
        }
    }
}

/// Entries of events are written in the commit's transaction; a delivery
/// attempt is one PutItem. A timeline is one Query of its partition.
#[async_trait]
impl Timeline for DynamoStore {
    async fn record(&self, entry: &TimelineEntry) -> Result<(), BackendError> {
        let item = timeline_item(entry).map_err(|e| BackendError::new("dynamodb encode a timeline entry", e))?;
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| BackendError::new("dynamodb PutItem (timeline)", e))?;
        Ok(())
    }

    async fn timeline(&self, incident: &IncidentId) -> Result<Vec<TimelineEntry>, BackendError> {
        let mut entries = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", attr::PK)
                .expression_attribute_values(":pk", s(timeline_pk(incident)))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| BackendError::new("dynamodb Query (timeline)", e))?;
            for item in page.items() {
                let data =
                    string(item, attr::DATA).map_err(|e| BackendError::new("dynamodb read a timeline entry", e))?;
                let entry =
                    serde_json::from_str(data).map_err(|e| BackendError::new("dynamodb decode a timeline entry", e))?;
                entries.push(entry);
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        entries.sort_by_cached_key(TimelineEntry::sort_key);
        Ok(entries)
    }
}

/// The notification throttle (tocsin_core::throttle). Counters: one item
/// per recipient and window, `THROTTLE#<channel>#<recipient>` /
/// `<seconds>#<window>`, an atomic ADD conditioned on the limit, expiring
/// (TTL) a minute after the window ends. Bundles: one item per held
/// incident in the channel's partition `THROTTLE#BUNDLE#<channel>` /
/// `<recipient>#<incident>`, which the scheduler's one Query lists.
const THROTTLE_WINDOW_KIND: &str = "throttle_window";
const THROTTLE_BUNDLE_KIND: &str = "throttle_bundle";
/// A bundle that could not be sent for this long is dropped (TTL).
const THROTTLE_BUNDLE_RETENTION: TimeDelta = TimeDelta::days(2);
const THROTTLE_AT: &str = "at";

pub fn throttle_window_key(
    channel: tocsin_core::notify::Channel,
    to: &str,
    slot: &tocsin_core::throttle::Slot,
) -> Item {
    key(
        format!("THROTTLE#{channel}#{to}"),
        format!("{}#{}", slot.seconds, slot.index),
    )
}

pub fn throttle_bundle_key(channel: tocsin_core::notify::Channel, to: &str, incident: &IncidentId) -> Item {
    key(format!("THROTTLE#BUNDLE#{channel}"), format!("{to}#{incident}"))
}

impl DynamoStore {
    /// Adds `delta` to one window's count: only while under the limit, or
    /// in any case with `limit` none. False when the limit stopped it.
    async fn add_to_window(
        &self,
        channel: tocsin_core::notify::Channel,
        to: &str,
        slot: &tocsin_core::throttle::Slot,
        delta: i64,
        limit: Option<u32>,
    ) -> Result<bool, BackendError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(throttle_window_key(channel, to, slot)))
            .update_expression("ADD #count :delta SET #type = :kind, #expires_at = :expires_at")
            .expression_attribute_names("#count", attr::COUNT)
            .expression_attribute_names("#type", attr::TYPE)
            .expression_attribute_names("#expires_at", attr::EXPIRES_AT)
            .expression_attribute_values(":delta", n(delta))
            .expression_attribute_values(":kind", s(THROTTLE_WINDOW_KIND))
            .expression_attribute_values(":expires_at", n(slot.ends_at() + 60));
        if let Some(limit) = limit {
            update = update
                .condition_expression("attribute_not_exists(#count) OR #count < :limit")
                .expression_attribute_values(":limit", n(limit));
        }
        match update.send().await {
            Ok(_) => Ok(true),
            Err(error) if error.as_service_error().is_some_and(is_condition_failure) => Ok(false),
            Err(error) => Err(BackendError::new("dynamodb UpdateItem (throttle window)", error)),
        }
    }
}

#[async_trait]
impl tocsin_core::throttle::ThrottleStore for DynamoStore {
    /// One conditional ADD per window, shortest first; when one is full,
    /// the ones already counted are given back. Each count is atomic, so no
    /// window ever lets more than its limit through; a send racing a
    /// give-back may be held that would have fit (fewer SMS, never more).
    async fn take(
        &self,
        channel: tocsin_core::notify::Channel,
        to: &str,
        slots: &[tocsin_core::throttle::Slot],
        force: bool,
    ) -> Result<bool, BackendError> {
        for (done, slot) in slots.iter().enumerate() {
            let limit = (!force).then_some(slot.limit);
            if !self.add_to_window(channel, to, slot, 1, limit).await? {
                for counted in &slots[..done] {
                    self.add_to_window(channel, to, counted, -1, None).await?;
                }
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn suppress(&self, held: &tocsin_core::throttle::Suppressed) -> Result<(), BackendError> {
        let data = serde_json::to_string(held).map_err(|e| BackendError::new("dynamodb encode a bundle entry", e))?;
        let mut item = throttle_bundle_key(held.channel, &held.to, &held.incident);
        item.insert(attr::TYPE.to_owned(), s(THROTTLE_BUNDLE_KIND));
        item.insert(attr::DATA.to_owned(), s(data));
        item.insert(THROTTLE_AT.to_owned(), n(held.at.timestamp_micros()));
        item.insert(
            attr::EXPIRES_AT.to_owned(),
            n((held.at + THROTTLE_BUNDLE_RETENTION).timestamp()),
        );
        // One entry per incident: a redelivered job keeps the first.
        self.put_if_absent(item, "dynamodb PutItem (throttle bundle)").await
    }

    async fn bundled(
        &self,
        channel: tocsin_core::notify::Channel,
    ) -> Result<Vec<tocsin_core::throttle::Suppressed>, BackendError> {
        let mut held: Vec<(i64, tocsin_core::throttle::Suppressed)> = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", attr::PK)
                .expression_attribute_values(":pk", s(format!("THROTTLE#BUNDLE#{channel}")))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| BackendError::new("dynamodb Query (throttle bundles)", e))?;
            for item in page.items() {
                let data =
                    string(item, attr::DATA).map_err(|e| BackendError::new("dynamodb read a bundle entry", e))?;
                let at = number(item, THROTTLE_AT).map_err(|e| BackendError::new("dynamodb read a bundle entry", e))?;
                let entry =
                    serde_json::from_str(data).map_err(|e| BackendError::new("dynamodb decode a bundle entry", e))?;
                held.push((at, entry));
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        held.sort_by(|a, b| (a.0, &a.1.to, &a.1.incident).cmp(&(b.0, &b.1.to, &b.1.incident)));
        Ok(held.into_iter().map(|(_, entry)| entry).collect())
    }

    async fn clear(&self, items: &[tocsin_core::throttle::Suppressed]) -> Result<(), BackendError> {
        for held in items {
            self.client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(throttle_bundle_key(held.channel, &held.to, &held.incident)))
                .send()
                .await
                .map_err(|e| BackendError::new("dynamodb DeleteItem (throttle bundle)", e))?;
        }
        Ok(())
    }
}

#[async_trait]
impl RateCounter for DynamoStore {
    async fn hit(&self, integration: &IntegrationId, window: i64) -> Result<u64, BackendError> {
        let output = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(rate_window_key(integration, window)))
            .update_expression("ADD #count :one SET #type = :kind, #expires_at = :expires_at")
            .expression_attribute_names("#count", attr::COUNT)
            .expression_attribute_names("#type", attr::TYPE)
            .expression_attribute_names("#expires_at", attr::EXPIRES_AT)
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":kind", s(kind::RATE_WINDOW))
            .expression_attribute_values(":expires_at", n((window + 2) * 60))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| BackendError::new("dynamodb UpdateItem (rate window)", e))?;
        let attributes = output.attributes.unwrap_or_default();
        number(&attributes, attr::COUNT).map_err(|e| BackendError::new("dynamodb read a rate window", e))
    }
}

/// The partition of every integration's health counters: one Query lists them.
pub const HEALTH_PK: &str = "HEALTH";

/// The attributes of a health item (`type = ingest_stats`, infra/dynamodb.md).
pub mod health_attr {
    pub const KIND: &str = "ingest_stats";
    pub const RECEIVED: &str = "received";
    pub const SUCCESS: &str = "success";
    pub const ERRORS: &str = "errors";
    pub const LATENCY_MS: &str = "latency_ms";
    pub const PROVIDER: &str = "provider";
    pub const LAST_EVENT_AT: &str = "last_event_at";
    /// A map: `at`, `status`, `message`.
    pub const LAST_ERROR: &str = "last_error";
}

/// The key of an integration's health counters.
pub fn health_key(integration: &IntegrationId) -> Item {
    key(HEALTH_PK.to_owned(), integration.as_str())
}

fn health_stats(item: &Item) -> Result<tocsin_core::health::IntegrationStats, ItemError> {
    use health_attr::*;
    let time = |value: &str, name: &'static str| {
        DateTime::parse_from_rfc3339(value)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| ItemError::Attribute {
                name,
                expected: "RFC 3339 time",
            })
    };
    let count = |name: &'static str| match item.get(name) {
        None => Ok(0),
        Some(_) => number::<i64>(item, name).map(|n| u64::try_from(n).unwrap_or(0)),
    };
    let last_error = match item.get(LAST_ERROR) {
        Some(AttributeValue::M(error)) => Some(tocsin_core::health::LastError {
            at: time(string(error, "at")?, LAST_ERROR)?,
            status: number(error, "status")?,
            message: string(error, "message")?.to_owned(),
        }),
        _ => None,
    };
    Ok(tocsin_core::health::IntegrationStats {
        integration: IntegrationId::parse(string(item, attr::SK)?)?,
        service: ServiceId::parse(string(item, attr::SERVICE)?)?,
        provider: ProviderKind::parse(string(item, PROVIDER)?).ok_or(ItemError::Attribute {
            name: PROVIDER,
            expected: "provider slug",
        })?,
        received: count(RECEIVED)?,
        success: count(SUCCESS)?,
        errors: count(ERRORS)?,
        latency_ms_total: count(LATENCY_MS)?,
        last_event_at: Some(time(string(item, LAST_EVENT_AT)?, LAST_EVENT_AT)?),
        last_error,
    })
}

/// One UpdateItem per request: ADD on the counters, SET of the latest
/// times, all in the `HEALTH` partition.
#[async_trait]
impl tocsin_core::ports::IngestStats for DynamoStore {
    async fn record(
        &self,
        integration: &IntegrationId,
        service: &ServiceId,
        provider: ProviderKind,
        outcome: &tocsin_core::health::IngestOutcome,
    ) -> Result<(), BackendError> {
        use health_attr::*;
        use tocsin_core::health::OutcomeKind;
        let (add, failure) = match &outcome.kind {
            OutcomeKind::Success => ("#received :one, #success :one, #latency :latency", None),
            OutcomeKind::Error(failure) => ("#received :one, #errors :one, #latency :latency", Some(failure)),
            OutcomeKind::FailedAfterSuccess(failure) => ("#success :minus_one, #errors :one", Some(failure)),
        };
        let at = s(outcome.at.to_rfc3339_opts(SecondsFormat::Micros, true));
        let mut set = String::from("#type = :kind, #service = :service, #provider = :provider, #last_event_at = :at");
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(health_key(integration)))
            .expression_attribute_names("#type", attr::TYPE)
            .expression_attribute_names("#service", attr::SERVICE)
            .expression_attribute_names("#provider", PROVIDER)
            .expression_attribute_names("#last_event_at", LAST_EVENT_AT)
            .expression_attribute_values(":kind", s(KIND))
            .expression_attribute_values(":service", s(service.as_str()))
            .expression_attribute_values(":provider", s(provider.as_str()))
            .expression_attribute_values(":at", at.clone())
            .expression_attribute_values(":one", n(1));
        // DynamoDB refuses a name or value the expression does not use.
        for (name, attribute) in [
            ("#received", RECEIVED),
            ("#success", SUCCESS),
            ("#errors", ERRORS),
            ("#latency", LATENCY_MS),
        ] {
            if add.contains(name) {
                request = request.expression_attribute_names(name, attribute);
            }
        }
        request = match &outcome.kind {
            OutcomeKind::FailedAfterSuccess(_) => request.expression_attribute_values(":minus_one", n(-1)),
            _ => request.expression_attribute_values(":latency", n(outcome.latency_ms)),
        };
        if let Some(failure) = failure {
            set.push_str(", #last_error = :error");
            request = request
                .expression_attribute_names("#last_error", LAST_ERROR)
                .expression_attribute_values(
                    ":error",
                    AttributeValue::M(HashMap::from([
                        ("at".to_owned(), at),
                        ("status".to_owned(), n(failure.status)),
                        ("message".to_owned(), s(failure.message.clone())),
                    ])),
                );
        }
        request
            .update_expression(format!("ADD {add} SET {set}"))
            .send()
            .await
            .map_err(|e| BackendError::new("dynamodb UpdateItem (health)", e))?;
        Ok(())
    }

    async fn snapshot(&self) -> Result<Vec<tocsin_core::health::IntegrationStats>, BackendError> {
        let mut all = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", attr::PK)
                .expression_attribute_values(":pk", s(HEALTH_PK))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| BackendError::new("dynamodb Query (health)", e))?;
            for item in page.items() {
                all.push(health_stats(item).map_err(|e| BackendError::new("dynamodb read a health item", e))?);
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(all);
            }
        }
    }
}

#[async_trait]
impl ConfigStore for DynamoStore {
    async fn integration_by_key(&self, key: &KeyHash) -> Result<Option<Integration>, BackendError> {
        let record: Option<IntegrationRecord> = self.get_record(integration_key(key)).await?;
        Ok(record.map(Integration::from))
    }

    async fn integration_by_topic(&self, topic: &TopicArn) -> Result<Option<Integration>, BackendError> {
        let record: Option<TopicRecord> = self.get_record(topic_key(topic)).await?;
        let Some(record) = record else { return Ok(None) };
        // The topic item may outlive a change of the integration's topics.
        Ok(self
            .integration_by_key(&record.key_hash)
            .await?
            .filter(|i| i.provider == ProviderKind::CloudWatch && i.cloudwatch.topics.contains(topic)))
    }

    async fn service(&self, id: &ServiceId) -> Result<Option<Service>, BackendError> {
        let record: Option<ServiceRecord> = self.get_record(service_key(id)).await?;
        record
            .map(Service::try_from)
            .transpose()
            .map_err(|e| BackendError::new("dynamodb read a config record", ItemError::Invalid(e)))
    }

    async fn api_key(&self, key: &KeyHash) -> Result<Option<ApiKey>, BackendError> {
        let record: Option<ApiKeyRecord> = self.get_record(api_key_key(key)).await?;
        Ok(record.map(ApiKey::from))
    }
}

/// Creates the table as template.yaml declares it (infra/dynamodb.md):
/// on-demand, `pk`/`sk` strings, the three KEYS_ONLY indexes, a stream of
/// new and old images, encryption with the AWS managed key; then, once it
/// is active, TTL on `expires_at` and point-in-time recovery.
pub async fn create_table(client: &Client, name: &str) -> Result<(), BackendError> {
    let string_attribute = |attribute: &str| {
        AttributeDefinition::builder()
            .attribute_name(attribute)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(build_error)
    };
    let key_element = |attribute: &str, key_type: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(attribute)
            .key_type(key_type)
            .build()
            .map_err(build_error)
    };
    let keys_only_index = |index: &str, hash: &str, range: Option<&str>| {
        let mut schema = vec![key_element(hash, KeyType::Hash)?];
        if let Some(range) = range {
            schema.push(key_element(range, KeyType::Range)?);
        }
        GlobalSecondaryIndex::builder()
            .index_name(index)
            .set_key_schema(Some(schema))
            .projection(Projection::builder().projection_type(ProjectionType::KeysOnly).build())
            .build()
            .map_err(build_error)
    };

    client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_attribute_definitions(Some(vec![
            string_attribute(attr::PK)?,
            string_attribute(attr::SK)?,
            string_attribute(attr::INCIDENT_ID)?,
            string_attribute(attr::STATUS)?,
            string_attribute(attr::SERVICE_STATUS)?,
            string_attribute(attr::CREATED)?,
        ]))
        .set_key_schema(Some(vec![
            key_element(attr::PK, KeyType::Hash)?,
            key_element(attr::SK, KeyType::Range)?,
        ]))
        .set_global_secondary_indexes(Some(vec![
            keys_only_index(index::BY_ID, attr::INCIDENT_ID, None)?,
            keys_only_index(index::BY_STATUS, attr::STATUS, Some(attr::CREATED))?,
            keys_only_index(index::BY_SERVICE_STATUS, attr::SERVICE_STATUS, Some(attr::CREATED))?,
        ]))
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .map_err(build_error)?,
        )
        .sse_specification(SseSpecification::builder().enabled(true).sse_type(SseType::Kms).build())
        .send()
        .await
        .map_err(|e| BackendError::new("dynamodb CreateTable", e))?;

    client
        .wait_until_table_exists()
        .table_name(name)
        .wait(Duration::from_secs(300))
        .await
        .map_err(|e| BackendError::new("dynamodb DescribeTable (wait until active)", e))?;

    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(attr::EXPIRES_AT)
                .build()
                .map_err(build_error)?,
        )
        .send()
        .await
        .map_err(|e| BackendError::new("dynamodb UpdateTimeToLive", e))?;

    client
        .update_continuous_backups()
        .table_name(name)
        .point_in_time_recovery_specification(
            PointInTimeRecoverySpecification::builder()
                .point_in_time_recovery_enabled(true)
                .build()
                .map_err(build_error)?,
        )
        .send()
        .await
        .map_err(|e| BackendError::new("dynamodb UpdateContinuousBackups", e))?;
    Ok(())
}

/// The partition of pending escalations (tocsin_core::escalation), sorted
/// by due time: the scheduler Queries `sk <= <now>#~` for the due ones.
pub const ESCALATION_PK: &str = "ESCALATION";
const ESCALATION_KIND: &str = "escalation";

/// A pending escalation's key: [`PendingEscalation::sort_key`], due time
/// first.
///
/// [`PendingEscalation::sort_key`]: tocsin_core::escalation::PendingEscalation::sort_key
pub fn escalation_key(pending: &tocsin_core::escalation::PendingEscalation) -> Item {
    key(ESCALATION_PK.to_owned(), pending.sort_key())
}

fn pending_escalation(item: &Item) -> Result<tocsin_core::escalation::PendingEscalation, ItemError> {
    expect_kind(item, ESCALATION_KIND)?;
    let pending: tocsin_core::escalation::PendingEscalation =
        serde_json::from_str(string(item, attr::DATA)?).map_err(ItemError::Data)?;
    if escalation_key(&pending) != key_of(item)? {
        return Err(ItemError::Disagrees(attr::SK));
    }
    Ok(pending)
}

#[async_trait]
impl tocsin_core::escalation::Escalations for DynamoStore {
    async fn schedule(&self, pending: &tocsin_core::escalation::PendingEscalation) -> Result<(), BackendError> {
        let data = serde_json::to_string(pending).map_err(|e| BackendError::new("dynamodb encode an escalation", e))?;
        let mut item = escalation_key(pending);
        item.insert(attr::TYPE.to_owned(), s(ESCALATION_KIND));
        item.insert(attr::DATA.to_owned(), s(data));
        // The same key always holds the same escalation: a plain put is idempotent.
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| BackendError::new("dynamodb PutItem (escalation)", e))?;
        Ok(())
    }

    async fn due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<tocsin_core::escalation::PendingEscalation>, BackendError> {
        let bound = tocsin_core::escalation::PendingEscalation::due_bound(now);
        let mut due = Vec::new();
        let mut start = None;
        while due.len() < limit {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk AND #sk <= :bound")
                .expression_attribute_names("#pk", attr::PK)
                .expression_attribute_names("#sk", attr::SK)
                .expression_attribute_values(":pk", s(ESCALATION_PK))
                .expression_attribute_values(":bound", s(bound.clone()))
                .limit(i32::try_from(limit - due.len()).unwrap_or(i32::MAX))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| BackendError::new("dynamodb Query (due escalations)", e))?;
            for item in page.items() {
                due.push(pending_escalation(item).map_err(|e| BackendError::new("dynamodb read an escalation", e))?);
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        due.truncate(limit);
        Ok(due)
    }

    async fn remove(&self, pending: &tocsin_core::escalation::PendingEscalation) -> Result<(), BackendError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(escalation_key(pending)))
            .send()
            .await
            .map_err(|e| BackendError::new("dynamodb DeleteItem (escalation)", e))?;
        Ok(())
    }
}

/// The partition of every maintenance window: one Query lists them all,
/// or one service's with `begins_with(sk, "<service>#")`.
pub const MAINTENANCE_PK: &str = "MAINTENANCE";
/// On a maintenance window item: when its end was released (RFC 3339).
/// Beside `data`, so that rewriting the window keeps it.
pub const RELEASED_AT: &str = "released_at";
const MAINTENANCE_KIND: &str = "maintenance_window";

/// A window's key: `<service>#<start>#<id>` sorts by service, then start.
pub fn maintenance_key(window: &tocsin_core::maintenance::MaintenanceWindow) -> Item {
    key(
        MAINTENANCE_PK.to_owned(),
        format!(
            "{}#{}#{}",
            window.service,
            window.start.to_rfc3339_opts(SecondsFormat::Micros, true),
            window.id
        ),
    )
}

fn maintenance_window(item: &Item) -> Result<tocsin_core::maintenance::MaintenanceWindow, ItemError> {
    expect_kind(item, MAINTENANCE_KIND)?;
    let mut window: tocsin_core::maintenance::MaintenanceWindow =
        serde_json::from_str(string(item, attr::DATA)?).map_err(ItemError::Data)?;
    if maintenance_key(&window) != key_of(item)? {
        return Err(ItemError::Disagrees(attr::SK));
    }
    window.released_at = match item.get(RELEASED_AT) {
        None => None,
        Some(_) => Some(
            DateTime::parse_from_rfc3339(string(item, RELEASED_AT)?)
                .map_err(|_| ItemError::Attribute {
                    name: RELEASED_AT,
                    expected: "RFC 3339 time",
                })?
                .with_timezone(&Utc),
        ),
    };
    Ok(window)
}

impl DynamoStore {
    async fn find_window(
        &self,
        id: &tocsin_core::maintenance::WindowId,
    ) -> Result<Option<tocsin_core::maintenance::MaintenanceWindow>, BackendError> {
        use tocsin_core::ports::MaintenanceStore;
        Ok(self.windows(None).await?.into_iter().find(|w| &w.id == id))
    }
}

/// Windows are few and small: all in one partition, written with
/// UpdateItem so that `released_at` survives a rewrite.
#[async_trait]
impl tocsin_core::ports::MaintenanceStore for DynamoStore {
    async fn put_window(&self, window: &tocsin_core::maintenance::MaintenanceWindow) -> Result<(), BackendError> {
        let mut data = window.clone();
        data.released_at = None;
        let data =
            serde_json::to_string(&data).map_err(|e| BackendError::new("dynamodb encode a maintenance window", e))?;
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(maintenance_key(window)))
            .update_expression("SET #type = :kind, #data = :data, #service = :service")
            .expression_attribute_names("#type", attr::TYPE)
            .expression_attribute_names("#data", attr::DATA)
            .expression_attribute_names("#service", attr::SERVICE)
            .expression_attribute_values(":kind", s(MAINTENANCE_KIND))
            .expression_attribute_values(":data", s(data))
            .expression_attribute_values(":service", s(window.service.as_str()))
            .send()
            .await
            .map_err(|e| BackendError::new("dynamodb UpdateItem (maintenance window)", e))?;
        Ok(())
    }

    async fn delete_window(&self, id: &tocsin_core::maintenance::WindowId) -> Result<bool, BackendError> {
        let Some(window) = self.find_window(id).await? else {
            return Ok(false);
        };
        let output = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(maintenance_key(&window)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| BackendError::new("dynamodb DeleteItem (maintenance window)", e))?;
        Ok(output.attributes.is_some_and(|a| !a.is_empty()))
    }

    async fn windows(
        &self,
        service: Option<&ServiceId>,
    ) -> Result<Vec<tocsin_core::maintenance::MaintenanceWindow>, BackendError> {
        let mut windows = Vec::new();
        let mut start = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .expression_attribute_names("#pk", attr::PK)
                .expression_attribute_values(":pk", s(MAINTENANCE_PK))
                .set_exclusive_start_key(start);
            query = match service {
                Some(service) => query
                    .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
                    .expression_attribute_names("#sk", attr::SK)
                    .expression_attribute_values(":prefix", s(format!("{service}#"))),
                None => query.key_condition_expression("#pk = :pk"),
            };
            let page = query
                .send()
                .await
                .map_err(|e| BackendError::new("dynamodb Query (maintenance windows)", e))?;
            for item in page.items() {
                windows.push(
                    maintenance_window(item).map_err(|e| BackendError::new("dynamodb read a maintenance window", e))?,
                );
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        // The sort key already orders so (`#` sorts below every character of
        // a service id); sorted again so the port's order rests on no encoding.
        windows.sort_by(|a, b| (&a.service, a.start, &a.id).cmp(&(&b.service, b.start, &b.id)));
        Ok(windows)
    }

    async fn mark_released(
        &self,
        id: &tocsin_core::maintenance::WindowId,
        at: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        let Some(window) = self.find_window(id).await? else {
            return Ok(());
        };
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(maintenance_key(&window)))
            .update_expression("SET #released = if_not_exists(#released, :at)")
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#released", RELEASED_AT)
            .expression_attribute_names("#pk", attr::PK)
            .expression_attribute_values(":at", s(at.to_rfc3339_opts(SecondsFormat::Micros, true)))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Deleted since it was read: nothing left to mark.
            Err(error) if error.as_service_error().is_some_and(is_condition_failure) => Ok(()),
            Err(error) => Err(BackendError::new("dynamodb UpdateItem (maintenance released)", error)),
        }
    }

    async fn end_window(
        &self,
        id: &tocsin_core::maintenance::WindowId,
        end: DateTime<Utc>,
    ) -> Result<bool, BackendError> {
        let Some(ended) = self.find_window(id).await?.and_then(|w| w.ended_at(end)) else {
            return Ok(false);
        };
        let data =
            serde_json::to_string(&ended).map_err(|e| BackendError::new("dynamodb encode a maintenance window", e))?;
        // The key names the start, not the end: the same item, ended in place.
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(maintenance_key(&ended)))
            .update_expression("SET #data = :data")
            .condition_expression("attribute_exists(#pk) AND attribute_not_exists(#released)")
            .expression_attribute_names("#data", attr::DATA)
            .expression_attribute_names("#pk", attr::PK)
            .expression_attribute_names("#released", RELEASED_AT)
            .expression_attribute_values(":data", s(data))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            // Deleted or released since it was read: left as it is.
            Err(error) if error.as_service_error().is_some_and(is_condition_failure) => Ok(false),
            Err(error) => Err(BackendError::new("dynamodb UpdateItem (maintenance end)", error)),
        }
    }
}

/// The first Slack message of an incident per configured channel
/// (tocsin_core::slack::threads): `SLACK#<incident>` / `CHANNEL#<channel>`,
/// expiring with the incident's timeline.
const SLACK_THREAD_KIND: &str = "slack_thread";
const SLACK_CHANNEL_ID: &str = "channel_id";
const SLACK_TS: &str = "ts";

fn slack_thread_key(incident: &IncidentId, channel: &str) -> Item {
    key(format!("SLACK#{}", incident.as_str()), format!("CHANNEL#{channel}"))
}

#[async_trait]
impl tocsin_core::slack::threads::SlackThreads for DynamoStore {
    async fn remember(
        &self,
        incident: &IncidentId,
        channel: &str,
        thread: &tocsin_core::slack::threads::SlackThread,
    ) -> Result<(), BackendError> {
        let mut item = slack_thread_key(incident, channel);
        item.insert(attr::TYPE.to_owned(), s(SLACK_THREAD_KIND));
        item.insert(SLACK_CHANNEL_ID.to_owned(), s(thread.channel_id.clone()));
        item.insert(SLACK_TS.to_owned(), s(thread.ts.clone()));
        item.insert(
            attr::EXPIRES_AT.to_owned(),
            n((Utc::now() + TIMELINE_RETENTION).timestamp()),
        );
        // The first message stays: a redelivered trigger never moves the thread.
        self.put_if_absent(item, "dynamodb PutItem (Slack thread)").await
    }

    async fn thread(
        &self,
        incident: &IncidentId,
        channel: &str,
    ) -> Result<Option<tocsin_core::slack::threads::SlackThread>, BackendError> {
        let Some(item) = self.get_item(slack_thread_key(incident, channel), true).await? else {
            return Ok(None);
        };
        let read = |item: &Item| -> Result<_, ItemError> {
            expect_kind(item, SLACK_THREAD_KIND)?;
            Ok(tocsin_core::slack::threads::SlackThread {
                channel_id: string(item, SLACK_CHANNEL_ID)?.to_owned(),
                ts: string(item, SLACK_TS)?.to_owned(),
            })
        };
        read(&item)
            .map(Some)
            .map_err(|e| BackendError::new("dynamodb read a Slack thread", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_tag_is_twelve_url_safe_characters_of_its_id() {
        let tag = event_tag(&EventId::new("e1"));
        assert_eq!(tag.len(), 12);
        assert!(
            tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{tag}"
        );
        assert_eq!(tag, event_tag(&EventId::new("e1")));
        assert_ne!(tag, event_tag(&EventId::new("e2")));
        // The first 9 bytes of SHA-256("e1"), base64url.
        let digest = Sha256::digest(b"e1");
        let expected: String = hex::encode(&digest[..9]);
        let decoded: Vec<u8> = tag
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' => b - b'A',
                b'a'..=b'z' => b - b'a' + 26,
                b'0'..=b'9' => b - b'0' + 52,
                b'-' => 62,
                _ => 63,
            })
            .collect::<Vec<u8>>()
            .chunks(4)
            .flat_map(|c| {
                let bits = u32::from(c[0]) << 18 | u32::from(c[1]) << 12 | u32::from(c[2]) << 6 | u32::from(c[3]);
                [(bits >> 16) as u8, (bits >> 8) as u8, bits as u8]
            })
            .collect();
        assert_eq!(hex::encode(decoded), expected);
    }

    #[test]
    fn an_incident_keeps_the_tags_of_its_last_events_once_each() {
        let event = |i: usize| EventId::new(format!("e{i}"));
        let mut incident = tocsin_core::contract::sample_job(tocsin_core::notify::Channel::Email, "x").incident;
        for i in 0..40 {
            incident.store_notes.recent_events = recent_after(&incident, &event(i));
        }
        let expected: Vec<String> = (40 - RECENT_EVENTS_KEPT..40).map(|i| event_tag(&event(i))).collect();
        assert_eq!(
            incident.store_notes.recent_events, expected,
            "the newest 16, oldest first"
        );
        let again = recent_after(&incident, &event(30));
        assert_eq!(again.len(), RECENT_EVENTS_KEPT);
        assert_eq!(again.iter().filter(|t| **t == event_tag(&event(30))).count(), 1);
        assert_eq!(again.last(), Some(&event_tag(&event(30))));
    }

    #[test]
    fn a_services_channel_minimums_survive_its_stored_form() {
        let yaml = "services:\n  - id: checkout\n    notify:\n      email: [oncall@example.com]\n      \
                    sms: [\"+15555550123\"]\n      min_severity_by_channel: {sms: critical}\n";
        let catalog = tocsin_core::config::Catalog::from_yaml(yaml, "tocsin.yaml").expect("a valid config");
        let service = &catalog.services[0];
        let stored = serde_json::to_string(&ServiceRecord::from(service)).expect("serializes");
        let record: ServiceRecord = serde_json::from_str(&stored).expect("reads back");
        let back = Service::try_from(record).expect("a valid service");
        assert_eq!(&back, service);
        assert_eq!(
            back.policy.min_severity_of(tocsin_core::notify::Channel::Sms),
            Severity::Critical
        );
    }

    #[test]
    fn a_service_item_from_before_channel_minimums_reads_with_none() {
        let old = r#"{"id":"checkout","name":"Checkout","email":["oncall@example.com"],"sms":["+15555550123"],
                      "slack":null,"on":["triggered"],"min_severity":"warning"}"#;
        let record: ServiceRecord = serde_json::from_str(old).expect("an old item reads");
        let service = Service::try_from(record).expect("a valid service");
        assert!(service.policy.min_severity_by_channel.is_empty());
        assert_eq!(
            service.policy.min_severity_of(tocsin_core::notify::Channel::Sms),
            Severity::Warning
        );
    }

    fn reason(code: &str) -> CancellationReason {
        CancellationReason::builder().code(code).build()
    }

    #[test]
    fn a_failed_applied_record_wins_over_every_other_reason() {
        let cases = [
            (
                vec!["ConditionalCheckFailed", "ConditionalCheckFailed"],
                Some(CommitOutcome::AlreadyApplied),
            ),
            (
                vec!["ConditionalCheckFailed", "None"],
                Some(CommitOutcome::AlreadyApplied),
            ),
            (vec!["None", "ConditionalCheckFailed"], Some(CommitOutcome::Conflict)),
            (
                vec!["None", "None", "ConditionalCheckFailed"],
                Some(CommitOutcome::Conflict),
            ),
            (vec!["TransactionConflict", "None"], Some(CommitOutcome::Conflict)),
            (vec!["None", "ThrottlingError"], None),
            (vec!["TransactionConflict", "ValidationError"], None),
            (vec![], None),
        ];
        for (codes, expected) in cases {
            let reasons: Vec<_> = codes.iter().map(|c| reason(c)).collect();
            assert_eq!(outcome_of_cancellation(&reasons, true), expected, "{codes:?}");
        }
    }

    #[test]
    fn an_opening_claims_nothing_so_its_failed_conditions_are_conflicts() {
        // An opening's items: the incident, the open slot, the timeline entry.
        for codes in [
            vec!["ConditionalCheckFailed", "None", "None"],
            vec!["None", "ConditionalCheckFailed", "None"],
            vec!["TransactionConflict", "None", "None"],
        ] {
            let reasons: Vec<_> = codes.iter().map(|c| reason(c)).collect();
            assert_eq!(
                outcome_of_cancellation(&reasons, false),
                Some(CommitOutcome::Conflict),
                "{codes:?}"
            );
        }
    }

    #[test]
    fn dedup_keys_with_separators_never_share_a_partition() {
        let service = |s: &str| ServiceId::parse(s).unwrap();
        let dedup = |d: &str| DedupKey::parse(d).unwrap();
        let a = key_partition(&service("a"), &dedup("b#c"));
        let b = key_partition(&service("a"), &dedup("b"));
        let c = key_partition(&service("a-b"), &dedup("c"));
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert!(a.starts_with("KEY#") && a.len() == 4 + 64);
    }

    #[test]
    fn the_open_slot_sorts_before_every_incident_newest_first() {
        // A descending Query of a key's partition must return the slot first.
        assert!(OPEN_SLOT_SK > "INC#9999-12-31T23:59:59.999999Z#inc_ffffffffffffffffffff");
    }
}
