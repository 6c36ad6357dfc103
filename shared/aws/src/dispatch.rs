//! The dispatcher Lambda's handler: the table's DynamoDB stream, each record
//! an incident write that made a transition (the event source mapping's
//! filter lets nothing else through, infra/dynamodb.md), turned into
//! notification jobs on the per-channel queues.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tocsin_core::dispatch::DispatchService;
use tocsin_core::event::EventId;
use tocsin_core::incident::{Incident, Transition, TransitionKind};
use tocsin_core::notify::NotificationJob;
use tocsin_core::ports::{BackendError, ConfigStore, NotificationQueue};
use tracing::Instrument;

use crate::dynamodb::{attr, incident_fields, incident_of, kind, DynamoStore, IncidentDataError, KeyAttributes};

/// Where the dispatcher reads the details of an incident whose item keeps
/// them apart ([`attr::DETAILS_APART`]: its summary, source, origin, custom
/// details and links): the stream's image has the rest of the incident.
#[async_trait]
pub trait IncidentDetails: Send + Sync {
    /// The `data` of the details item of the incident item `pk`, `sk`.
    async fn details_data(&self, pk: &str, sk: &str) -> Result<String, BackendError>;
}

#[async_trait]
impl IncidentDetails for DynamoStore {
    async fn details_data(&self, pk: &str, sk: &str) -> Result<String, BackendError> {
        DynamoStore::details_data(self, pk, sk).await
    }
}

/// Dispatches the batch's records in order. At the first failure it stops
/// and reports that record: Lambda resumes the shard from the lowest
/// reported sequence number, so later records would be read again anyway,
/// and stopping keeps one incident's transitions in order. A record that
/// keeps failing ends, after the mapping's retries and bisection, in its
/// on-failure destination.
///
/// `details` reads the details that incidents keep apart; without it, a
/// record of such an incident fails.
pub async fn dispatch_records(
    dispatch: &DispatchService,
    details: Option<&dyn IncidentDetails>,
    event: Event,
    now: DateTime<Utc>,
) -> DynamoDbEventResponse {
    let mut response = DynamoDbEventResponse::default();
    for record in event.records {
        let sequence = record.change.sequence_number.clone();
        let span = tracing::info_span!(
            "record",
            event_id = %record.event_id,
            sequence = sequence.as_deref().unwrap_or_default()
        );
        if let Err(error) = dispatch_record(dispatch, details, &record, now).instrument(span).await {
            tracing::warn!(
                event_id = %record.event_id,
                sequence = sequence.as_deref().unwrap_or_default(),
                %error,
                "record failed; the stream will retry from it"
            );
            let mut failure = DynamoDbBatchItemFailure::default();
            // Without a sequence number the answer fails the whole batch,
            // which is still a retry, never a loss.
            failure.item_identifier = sequence;
            response.batch_item_failures.push(failure);
            break;
        }
    }
    response
}

/// Dispatches a batch as [`dispatch_records`] does, with the jobs of all
/// its records sent together at the end: one SendMessageBatch per channel
/// and ten jobs, where sending per transition took one per transition and
/// channel. If sending fails, the batch is reported failed from its first
/// record that planned jobs, so Lambda retries from there; jobs that did
/// reach a queue are not queued twice, as their deduplication ids are the
/// same (within SQS's five minutes).
pub async fn dispatch_batch(
    config: Arc<dyn ConfigStore>,
    queue: Arc<dyn NotificationQueue>,
    event: Event,
    now: DateTime<Utc>,
) -> DynamoDbEventResponse {
    dispatch_batch_holding(config, None, queue, None, event, now).await
}

/// What holds notifications during maintenance windows
/// (tocsin_core::maintenance): the windows, and the timeline that says so.
#[derive(Clone)]
pub struct Hold {
    pub maintenance: Arc<dyn tocsin_core::ports::MaintenanceStore>,
    pub timeline: Arc<dyn tocsin_core::ports::Timeline>,
    /// Where the first escalation level of each triggered transition is
    /// recorded (tocsin_core::escalation); none: no escalation.
    pub escalations: Option<Arc<dyn tocsin_core::escalation::Escalations>>,
}

/// [`dispatch_batch`], holding the notifications of services in a
/// maintenance window when `hold` is given. Each service's windows are read
/// once per batch. `details` is as for [`dispatch_records`].
pub async fn dispatch_batch_holding(
    config: Arc<dyn ConfigStore>,
    details: Option<Arc<dyn IncidentDetails>>,
    queue: Arc<dyn NotificationQueue>,
    hold: Option<Hold>,
    event: Event,
    now: DateTime<Utc>,
) -> DynamoDbEventResponse {
    let collected = Arc::new(CollectedJobs::default());
    let mut dispatch = DispatchService::new(config, collected.clone());
    if let Some(hold) = hold {
        dispatch = dispatch
            .with_maintenance(Arc::new(WindowsOfBatch::new(hold.maintenance)))
            .with_timeline(hold.timeline);
        if let Some(escalations) = hold.escalations {
            dispatch = dispatch.with_escalations(escalations);
        }
    }
    let mut response = DynamoDbEventResponse::default();
    let mut first_with_jobs: Option<Option<String>> = None;
    for record in event.records {
        let sequence = record.change.sequence_number.clone();
        let span = tracing::info_span!(
            "record",
            event_id = %record.event_id,
            sequence = sequence.as_deref().unwrap_or_default()
        );
        let planned = collected.len();
        if let Err(error) = dispatch_record(&dispatch, details.as_deref(), &record, now)
            .instrument(span)
            .await
        {
            tracing::warn!(
                event_id = %record.event_id,
                sequence = sequence.as_deref().unwrap_or_default(),
                %error,
                "record failed; the stream will retry from it"
            );
            let mut failure = DynamoDbBatchItemFailure::default();
            failure.item_identifier = sequence;
            response.batch_item_failures.push(failure);
            break;
        }
        if first_with_jobs.is_none() && collected.len() > planned {
            first_with_jobs = Some(sequence);
        }
    }
    let jobs = collected.take();
    if jobs.is_empty() {
        return response;
    }
    if let Err(error) = queue.enqueue(&jobs).await {
        tracing::warn!(jobs = jobs.len(), %error, "jobs not queued; the stream will retry their records");
        let mut failure = DynamoDbBatchItemFailure::default();
        // Lambda resumes from the lowest sequence number reported.
        failure.item_identifier = first_with_jobs.flatten();
        response.batch_item_failures = vec![failure];
    }
    response
}

/// The jobs planned for one batch, held until they are sent together.
#[derive(Default)]
struct CollectedJobs {
    jobs: Mutex<Vec<NotificationJob>>,
}

impl CollectedJobs {
    fn len(&self) -> usize {
        self.jobs.lock().map(|jobs| jobs.len()).unwrap_or_default()
    }

    fn take(&self) -> Vec<NotificationJob> {
        self.jobs
            .lock()
            .map(|mut jobs| std::mem::take(&mut *jobs))
            .unwrap_or_default()
    }
}

#[async_trait]
impl NotificationQueue for CollectedJobs {
    async fn enqueue(&self, jobs: &[NotificationJob]) -> Result<(), BackendError> {
        self.jobs
            .lock()
            .map_err(|_| BackendError::new("collect notification jobs", "a planner panicked"))?
            .extend_from_slice(jobs);
        Ok(())
    }
}

/// The maintenance windows of each service as first read in one batch: a
/// batch of 25 transitions of one service costs one Query, not 25.
struct WindowsOfBatch {
    store: Arc<dyn tocsin_core::ports::MaintenanceStore>,
    read: Mutex<std::collections::HashMap<Option<tocsin_core::event::ServiceId>, Vec<MaintenanceWindow>>>,
}

use tocsin_core::maintenance::{MaintenanceWindow, WindowId};

impl WindowsOfBatch {
    fn new(store: Arc<dyn tocsin_core::ports::MaintenanceStore>) -> Self {
        Self {
            store,
            read: Mutex::default(),
        }
    }
}

#[async_trait]
impl tocsin_core::ports::MaintenanceStore for WindowsOfBatch {
    async fn put_window(&self, window: &MaintenanceWindow) -> Result<(), BackendError> {
        self.store.put_window(window).await
    }

    async fn delete_window(&self, id: &WindowId) -> Result<bool, BackendError> {
        self.store.delete_window(id).await
    }

    async fn windows(
        &self,
        service: Option<&tocsin_core::event::ServiceId>,
    ) -> Result<Vec<MaintenanceWindow>, BackendError> {
        let key = service.cloned();
        if let Some(windows) = self.read.lock().ok().and_then(|read| read.get(&key).cloned()) {
            return Ok(windows);
        }
        let windows = self.store.windows(service).await?;
        if let Ok(mut read) = self.read.lock() {
            read.insert(key, windows.clone());
        }
        Ok(windows)
    }

    async fn mark_released(&self, id: &WindowId, at: DateTime<Utc>) -> Result<(), BackendError> {
        self.store.mark_released(id, at).await
    }

    async fn end_window(&self, id: &WindowId, end: DateTime<Utc>) -> Result<bool, BackendError> {
        self.store.end_window(id, end).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the new image cannot be read as DynamoDB JSON")]
    Image(#[source] serde_json::Error),
    #[error("attribute '{name}' of the new image is missing or not a {expected}")]
    Attribute { name: &'static str, expected: &'static str },
    #[error("attribute 'transition' is '{0}', not a transition")]
    UnknownTransition(String),
    #[error("attribute 'data' (and the details item's, when apart) is not an incident")]
    Data(#[source] serde_json::Error),
    #[error("attribute '{0}' disagrees with the incident in 'data'")]
    Disagrees(&'static str),
    #[error("attribute 'transition_event' is empty")]
    EventId,
    #[error("the incident keeps its details apart, and there is nothing to read them from")]
    NoDetailsReader,
    #[error(transparent)]
    Dispatch(#[from] BackendError),
}

impl From<IncidentDataError> for RecordError {
    fn from(error: IncidentDataError) -> Self {
        match error {
            IncidentDataError::Data(e) => RecordError::Data(e),
            IncidentDataError::Disagrees(name) => RecordError::Disagrees(name),
        }
    }
}

async fn dispatch_record(
    dispatch: &DispatchService,
    details: Option<&dyn IncidentDetails>,
    record: &EventRecord,
    now: DateTime<Utc>,
) -> Result<(), RecordError> {
    let Some(transition) = transition_of(record, details).await? else {
        tracing::debug!(event_name = %record.event_name, "not an incident transition; skipped");
        return Ok(());
    };
    dispatch.dispatch(&transition, now).await?;
    Ok(())
}

/// The transition a record publishes: `None` for records that are not an
/// incident write with a transition (the filter keeps them out; should one
/// arrive it is nothing to do), an error for an incident record that does
/// not read as what DynamoStore writes. An incident that keeps its details
/// apart has them read from `details` (without it, that is an error).
pub async fn transition_of(
    record: &EventRecord,
    details: Option<&dyn IncidentDetails>,
) -> Result<Option<Transition>, RecordError> {
    if !matches!(record.event_name.as_str(), "INSERT" | "MODIFY") {
        return Ok(None);
    }
    // The stream's AttributeValues serialize as DynamoDB JSON
    // ({"name": {"S": "..."}}), which is read here without a second model.
    let image = match serde_json::to_value(&record.change.new_image).map_err(RecordError::Image)? {
        Value::Object(image) => image,
        _ => {
            return Err(RecordError::Attribute {
                name: "NewImage",
                expected: "map",
            })
        }
    };
    if optional_string(&image, attr::TYPE)? != Some(kind::INCIDENT) {
        return Ok(None);
    }
    let Some(transition) = optional_string(&image, attr::TRANSITION)? else {
        return Ok(None);
    };
    let kind =
        TransitionKind::parse(transition).ok_or_else(|| RecordError::UnknownTransition(transition.to_owned()))?;
    let event_id = string(&image, attr::TRANSITION_EVENT)?;
    if event_id.trim().is_empty() {
        return Err(RecordError::EventId);
    }
    // The transition's id is `<incident id>:<version>`: `data` must agree
    // with both attributes, where it has them.
    let attributes = KeyAttributes {
        keys: [
            string(&image, attr::INCIDENT_ID)?,
            string(&image, attr::SERVICE)?,
            string(&image, attr::DEDUP_KEY)?,
            string(&image, attr::STATUS)?,
        ],
        version: number(&image, attr::VERSION)?
            .parse()
            .map_err(|_| RecordError::Attribute {
                name: attr::VERSION,
                expected: "version number",
            })?,
    };
    let fields = incident_fields(string(&image, attr::DATA)?, &attributes)?;
    let details_apart = match image.get(attr::DETAILS_APART) {
        None => false,
        Some(value) => value
            .get("BOOL")
            .and_then(Value::as_bool)
            .ok_or(RecordError::Attribute {
                name: attr::DETAILS_APART,
                expected: "boolean",
            })?,
    };
    let details = if details_apart {
        let reader = details.ok_or(RecordError::NoDetailsReader)?;
        Some(
            reader
                .details_data(string(&image, attr::PK)?, string(&image, attr::SK)?)
                .await?,
        )
    } else {
        None
    };
    let incident: Incident = incident_of(fields, details.as_deref())?;
    Ok(Some(Transition {
        kind,
        incident,
        event_id: EventId::new(event_id),
    }))
}

/// A typed attribute of DynamoDB JSON: `{"S": "..."}`, `{"N": "..."}`.
fn typed<'a>(
    image: &'a Map<String, Value>,
    name: &'static str,
    tag: &'static str,
    expected: &'static str,
) -> Result<Option<&'a str>, RecordError> {
    match image.get(name) {
        None => Ok(None),
        Some(value) => value
            .get(tag)
            .and_then(Value::as_str)
            .map(Some)
            .ok_or(RecordError::Attribute { name, expected }),
    }
}

fn optional_string<'a>(image: &'a Map<String, Value>, name: &'static str) -> Result<Option<&'a str>, RecordError> {
    typed(image, name, "S", "string")
}

fn string<'a>(image: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, RecordError> {
    optional_string(image, name)?.ok_or(RecordError::Attribute {
        name,
        expected: "string",
    })
}

fn number<'a>(image: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, RecordError> {
    typed(image, name, "N", "number")?.ok_or(RecordError::Attribute {
        name,
        expected: "number",
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tocsin_core::config::Catalog;
    use tocsin_core::memory::MemoryStore;
    use tocsin_core::notify::Channel;

    use super::*;

    /// Records built from an incident item DynamoStore wrote to moto (see
    /// tests/dispatch.rs), plus an open slot, a TTL deletion, a record whose
    /// `version` disagrees with its data, and a redelivery of the first.
    fn fixture() -> Event {
        let path = format!(
            "{}/../../events/aws/dynamodb-stream-transitions.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn service() -> (DispatchService, Arc<MemoryStore>) {
        let catalog = Catalog::from_yaml(include_str!("../../../cli/tocsin.sample.yaml"), "sample").unwrap();
        let store = Arc::new(MemoryStore::new());
        (DispatchService::new(Arc::new(catalog), store.clone()), store)
    }

    fn failed(response: &DynamoDbEventResponse) -> Vec<Option<&str>> {
        response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_deref())
            .collect()
    }

    #[tokio::test]
    async fn the_first_broken_record_is_reported_and_the_batch_stops_there() {
        let (dispatch, store) = service();
        let response = dispatch_records(&dispatch, None, fixture(), Utc::now()).await;
        assert_eq!(failed(&response), [Some("103")]);
        let mut channels: Vec<Channel> = store.queued_jobs().iter().map(|j| j.channel).collect();
        channels.sort();
        assert_eq!(channels, [Channel::Email, Channel::Sms, Channel::Slack]);
    }

    #[tokio::test]
    async fn dispatching_a_record_twice_plans_the_same_jobs() {
        let (dispatch, store) = service();
        let mut batch = fixture();
        batch.records.retain(|r| r.event_id != "ev-103");
        let response = dispatch_records(&dispatch, None, batch, Utc::now()).await;
        assert!(response.batch_item_failures.is_empty(), "{response:?}");
        assert_eq!(store.queued_jobs().len(), 3, "records 100 and 104 are one transition");
    }

    /// Counts the calls it gets and fails them when asked.
    #[derive(Default)]
    struct CountingQueue {
        calls: Mutex<Vec<usize>>,
        fail: bool,
    }

    #[async_trait]
    impl NotificationQueue for CountingQueue {
        async fn enqueue(&self, jobs: &[NotificationJob]) -> Result<(), BackendError> {
            self.calls.lock().unwrap().push(jobs.len());
            if self.fail {
                return Err(BackendError::new("sqs SendMessageBatch", "unavailable"));
            }
            Ok(())
        }
    }

    fn catalog() -> Arc<Catalog> {
        Arc::new(Catalog::from_yaml(include_str!("../../../cli/tocsin.sample.yaml"), "sample").unwrap())
    }

    #[tokio::test]
    async fn a_batch_sends_the_jobs_of_all_its_records_at_once() {
        let mut batch = fixture();
        batch.records.retain(|r| r.event_id != "ev-103");
        let queue = Arc::new(CountingQueue::default());
        let response = dispatch_batch(catalog(), queue.clone(), batch, Utc::now()).await;
        assert!(response.batch_item_failures.is_empty(), "{response:?}");
        assert_eq!(
            *queue.calls.lock().unwrap(),
            [6],
            "records 100 and 104, three channels each, in one call"
        );
    }

    #[tokio::test]
    async fn jobs_that_cannot_be_sent_fail_the_batch_from_their_first_record() {
        let queue = Arc::new(CountingQueue {
            fail: true,
            ..Default::default()
        });
        let response = dispatch_batch(catalog(), queue, fixture(), Utc::now()).await;
        assert_eq!(
            failed(&response),
            [Some("100")],
            "record 103 also failed, but 100 is first"
        );
    }

    #[tokio::test]
    async fn the_transition_is_rebuilt_from_the_new_image() {
        let batch = fixture();
        let transition = transition_of(&batch.records[0], None)
            .await
            .unwrap()
            .expect("a transition");
        assert_eq!(transition.kind, TransitionKind::Triggered);
        assert_eq!(transition.incident.id.as_str(), "inc_0e87094c381efc1ba49c");
        assert_eq!(transition.event_id.as_str(), "550f958b-3f06-4aca-b412-e74eaaba8128");
        assert_eq!(transition.id(), "inc_0e87094c381efc1ba49c:1");
    }

    /// The details item of one incident, as the table would answer.
    struct OneDetailsItem {
        key: (String, String),
        data: String,
    }

    #[async_trait]
    impl IncidentDetails for OneDetailsItem {
        async fn details_data(&self, pk: &str, sk: &str) -> Result<String, BackendError> {
            assert_eq!(
                (pk, sk),
                (self.key.0.as_str(), self.key.1.as_str()),
                "the incident's own"
            );
            Ok(self.data.clone())
        }
    }

    #[tokio::test]
    async fn an_incident_that_keeps_its_details_apart_has_them_read() {
        let whole = transition_of(&fixture().records[0], None)
            .await
            .unwrap()
            .unwrap()
            .incident;
        // The image as DynamoStore writes it now: `data` without the key
        // fields and the details, which are in the details item.
        let mut record = serde_json::to_value(&fixture().records[0]).unwrap();
        let image = &mut record["dynamodb"]["NewImage"];
        let mut data: Map<String, Value> = serde_json::from_str(image["data"]["S"].as_str().unwrap()).unwrap();
        let mut details = Map::new();
        for field in ["summary", "source", "origin", "custom_details", "links"] {
            if let Some(value) = data.remove(field) {
                details.insert(field.to_owned(), value);
            }
        }
        for field in ["id", "service", "dedup_key", "status", "version"] {
            data.remove(field);
        }
        image["data"] = serde_json::json!({"S": serde_json::to_string(&data).unwrap()});
        image["details_apart"] = serde_json::json!({"BOOL": true});
        let key = (
            image["pk"]["S"].as_str().unwrap().to_owned(),
            image["sk"]["S"].as_str().unwrap().to_owned(),
        );
        let record: EventRecord = serde_json::from_value(record).unwrap();

        let table = OneDetailsItem {
            key,
            data: serde_json::to_string(&details).unwrap(),
        };
        let transition = transition_of(&record, Some(&table)).await.unwrap().unwrap();
        assert_eq!(transition.incident, whole);

        let (dispatch, store) = service();
        let mut batch = fixture();
        batch.records = vec![record];
        let response = dispatch_records(&dispatch, None, batch, Utc::now()).await;
        assert_eq!(failed(&response), [Some("100")], "nothing to read them from");
        assert!(store.queued_jobs().is_empty());
    }

    #[tokio::test]
    async fn records_that_are_not_transitions_are_nothing_to_do() {
        let batch = fixture();
        assert!(
            transition_of(&batch.records[1], None).await.unwrap().is_none(),
            "an open slot"
        );
        assert!(
            transition_of(&batch.records[2], None).await.unwrap().is_none(),
            "a TTL deletion"
        );
    }

    #[tokio::test]
    async fn malformed_incident_records_are_errors() {
        async fn broken(change: &dyn Fn(&mut serde_json::Value)) -> RecordError {
            let mut record = serde_json::to_value(&fixture().records[0]).unwrap();
            change(&mut record["dynamodb"]["NewImage"]);
            let record: EventRecord = serde_json::from_value(record).unwrap();
            transition_of(&record, None).await.unwrap_err()
        }
        assert!(matches!(
            broken(&|image| image["transition"] = serde_json::json!({"S": "exploded"})).await,
            RecordError::UnknownTransition(_)
        ));
        assert!(matches!(
            broken(&|image| image["transition"] = serde_json::json!({"N": "1"})).await,
            RecordError::Attribute { name: "transition", .. }
        ));
        assert!(matches!(
            broken(&|image| {
                image.as_object_mut().unwrap().remove("data");
            })
            .await,
            RecordError::Attribute { name: "data", .. }
        ));
        assert!(matches!(
            broken(&|image| image["data"] = serde_json::json!({"S": "{}"})).await,
            RecordError::Data(_)
        ));
        assert!(matches!(
            broken(&|image| image["incident_id"] = serde_json::json!({"S": "inc_other"})).await,
            RecordError::Disagrees("incident_id")
        ));
        assert!(matches!(
            broken(&|image| image["transition_event"] = serde_json::json!({"S": " "})).await,
            RecordError::EventId
        ));
        assert!(matches!(
            broken(&|image| image["details_apart"] = serde_json::json!({"S": "yes"})).await,
            RecordError::Attribute {
                name: "details_apart",
                ..
            }
        ));
        assert_eq!(
            broken(&|image| image["version"] = serde_json::json!({"N": "7"}))
                .await
                .to_string(),
            "attribute 'version' disagrees with the incident in 'data'"
        );
    }
}
