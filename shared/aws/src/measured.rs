//! Metrics on Lambda that only a wrapper can see. Ingest: how many events
//! each request queued, and for which integration, is known only to the
//! events queue, so the queue notes them in a tally that lives as long as
//! the request's task (one per request, also when a container serves
//! several at once). Dispatch: the jobs queued and the transitions held, as
//! seen by the notification queue and the timeline. The API: the incident
//! actions its router answered.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use aws_lambda_events::event::streams::DynamoDbEventResponse;
use chrono::{DateTime, Utc};
use lambda_http::{Body, Request, Response};
use tocsin_core::event::{Action, Event, Origin};
use tocsin_core::incident::IncidentId;
use tocsin_core::ingest::IngestService;
use tocsin_core::metrics::Metrics;
use tocsin_core::notify::{Channel, NotificationJob};
use tocsin_core::ports::{BackendError, ConfigStore, EventQueue, NotificationQueue, Timeline};
use tocsin_core::providers::ProviderKind;
use tocsin_core::timeline::{Happened, TimelineEntry};
use tracing::Instrument;

/// What one request queued.
#[derive(Debug, Default)]
pub struct Queued {
    pub events: usize,
    /// The integration the events came through: a metrics property, never
    /// a dimension.
    pub integration: Option<String>,
}

#[derive(Default)]
struct Tally {
    events: Cell<usize>,
    integration: RefCell<Option<String>>,
}

tokio::task_local! {
    static TALLY: Tally;
}

/// An events queue that adds what it queued to the current request's tally.
pub struct CountingQueue {
    inner: Arc<dyn EventQueue>,
}

impl CountingQueue {
    pub fn new(inner: Arc<dyn EventQueue>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl EventQueue for CountingQueue {
    async fn enqueue(&self, events: &[Event]) -> Result<(), BackendError> {
        self.inner.enqueue(events).await?;
        // Outside a measured request there is nothing to count into.
        let _ = TALLY.try_with(|tally| {
            tally.events.set(tally.events.get() + events.len());
            if let Some(Origin::Integration { integration, .. }) = events.first().map(|e| &e.origin) {
                tally.integration.replace(Some(integration.to_string()));
            }
        });
        Ok(())
    }
}

/// Runs `work` (one request's ingest) and tallies what it queued.
pub async fn counting<T>(work: impl std::future::Future<Output = T>) -> (T, Queued) {
    TALLY
        .scope(Tally::default(), async {
            let output = work.await;
            let queued = TALLY.with(|tally| Queued {
                events: tally.events.get(),
                integration: tally.integration.take(),
            });
            (output, queued)
        })
        .await
}

/// [`crate::function::answer_ingest`] in a span naming the provider, with
/// one metrics document for the answer.
pub async fn answer_ingest_measured(
    ingest: &IngestService,
    metrics: &Metrics,
    provider: ProviderKind,
    request: Request,
) -> Response<Body> {
    let span = tracing::info_span!("ingest", provider = provider.as_str());
    let (answer, queued) = counting(crate::function::answer_ingest(ingest, provider, request))
        .instrument(span)
        .await;
    let status = answer.status().as_u16();
    metrics.ingest(
        Utc::now(),
        provider.as_str(),
        status,
        queued.events,
        queued.integration.as_deref(),
    );
    answer
}

/// [`crate::dispatch::dispatch_batch_holding`] with one metrics document
/// per channel that jobs were queued on and one for the batch: the
/// transitions held and whether it failed. A batch the stream retries is
/// counted again.
pub async fn dispatch_batch_measured(
    config: Arc<dyn ConfigStore>,
    details: Option<Arc<dyn crate::dispatch::IncidentDetails>>,
    queue: Arc<dyn NotificationQueue>,
    hold: Option<crate::dispatch::Hold>,
    metrics: &Metrics,
    event: StreamEvent,
    now: DateTime<Utc>,
) -> DynamoDbEventResponse {
    let queued = Arc::new(QueuedJobs::new(queue));
    // The dispatcher writes one Held entry per held transition.
    let held = hold.map(|hold| {
        let timeline = Arc::new(HeldEntries::new(hold.timeline));
        (
            crate::dispatch::Hold {
                maintenance: hold.maintenance,
                timeline: timeline.clone(),
                escalations: hold.escalations,
            },
            timeline,
        )
    });
    let (hold, held) = held.unzip();
    let response = crate::dispatch::dispatch_batch_holding(config, details, queued.clone(), hold, event, now).await;
    let at = Utc::now();
    for (channel, jobs) in queued.counts() {
        metrics.notifications_queued(at, channel, jobs);
    }
    let held = held.map_or(0, |held| held.count());
    metrics.dispatched(at, held, !response.batch_item_failures.is_empty());
    response
}

/// A notification queue that counts, per channel, the jobs it queued: each
/// job id once, as the FIFO queue keeps a redelivered transition's jobs.
struct QueuedJobs {
    inner: Arc<dyn NotificationQueue>,
    ids: Mutex<HashSet<String>>,
    counts: Mutex<BTreeMap<Channel, usize>>,
}

impl QueuedJobs {
    fn new(inner: Arc<dyn NotificationQueue>) -> Self {
        Self {
            inner,
            ids: Mutex::default(),
            counts: Mutex::default(),
        }
    }

    fn counts(&self) -> BTreeMap<Channel, usize> {
        self.counts.lock().map(|counts| counts.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl NotificationQueue for QueuedJobs {
    async fn enqueue(&self, jobs: &[NotificationJob]) -> Result<(), BackendError> {
        self.inner.enqueue(jobs).await?;
        if let (Ok(mut ids), Ok(mut counts)) = (self.ids.lock(), self.counts.lock()) {
            for job in jobs.iter().filter(|job| ids.insert(job.id.clone())) {
                *counts.entry(job.channel).or_default() += 1;
            }
        }
        Ok(())
    }
}

/// A timeline that counts the held transitions it is told of, written or
/// not (a timeline that cannot be written does not undo the hold); a
/// transition redelivered within the batch, the same entry, counts once.
struct HeldEntries {
    inner: Arc<dyn Timeline>,
    held: Mutex<HashSet<(IncidentId, String)>>,
}

impl HeldEntries {
    fn new(inner: Arc<dyn Timeline>) -> Self {
        Self {
            inner,
            held: Mutex::default(),
        }
    }

    fn count(&self) -> usize {
        self.held.lock().map(|held| held.len()).unwrap_or_default()
    }
}

#[async_trait]
impl Timeline for HeldEntries {
    async fn record(&self, entry: &TimelineEntry) -> Result<(), BackendError> {
        if matches!(entry.what, Happened::Held { .. }) {
            if let Ok(mut held) = self.held.lock() {
                held.insert((entry.incident.clone(), entry.id.clone()));
            }
        }
        self.inner.record(entry).await
    }

    async fn timeline(&self, incident: &IncidentId) -> Result<Vec<TimelineEntry>, BackendError> {
        self.inner.timeline(incident).await
    }
}

/// The incident action a request asks the API for: `POST
/// /incidents/{id}/acknowledge` or `/resolve`, as the router routes them.
pub fn incident_action<'a>(method: &lambda_http::http::Method, path: &'a str) -> Option<(Action, &'a str)> {
    if method != lambda_http::http::Method::POST {
        return None;
    }
    let rest = path.strip_prefix("/incidents/")?;
    let (incident, action) = rest.split_once('/')?;
    let action = match action {
        "acknowledge" => Action::Acknowledge,
        "resolve" => Action::Resolve,
        _ => return None,
    };
    (!incident.is_empty()).then_some((action, incident))
}

/// The API's router with a metrics document for each incident action it
/// carried out (answered 2xx); the router itself is unchanged.
pub async fn answer_api_measured<S, B>(router: S, metrics: &Metrics, request: Request) -> Result<Response<B>, S::Error>
where
    S: lambda_http::Service<Request, Response = Response<B>>,
{
    use lambda_http::tower::ServiceExt;
    let action =
        incident_action(request.method(), request.uri().path()).map(|(action, incident)| (action, incident.to_owned()));
    let response = router.oneshot(request).await?;
    if let Some((action, incident)) = action.filter(|_| response.status().is_success()) {
        metrics.incident_action(Utc::now(), action, &incident);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use tocsin_core::config::Catalog;
    use tocsin_core::memory::MemoryStore;
    use tocsin_core::metrics::{function, CollectingSink};

    use super::*;

    fn request(file: &str) -> Request {
        let path = format!("{}/../../events/aws/{file}", env!("CARGO_MANIFEST_DIR"));
        lambda_http::request::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn each_answer_is_one_document_with_the_events_it_queued() {
        let catalog = Catalog::from_yaml(include_str!("../../../cli/tocsin.sample.yaml"), "sample").unwrap();
        let store = Arc::new(MemoryStore::new());
        let queue = Arc::new(CountingQueue::new(store.clone()));
        let ingest = IngestService::new(Arc::new(catalog), queue, store.clone());
        let sink = Arc::new(CollectingSink::default());
        let metrics = Metrics::new(function::INGEST, sink.clone());

        let accepted = answer_ingest_measured(
            &ingest,
            &metrics,
            ProviderKind::Prometheus,
            request("apigw-prometheus-firing.json"),
        )
        .await;
        assert_eq!(accepted.status(), 202);
        let refused = answer_ingest_measured(
            &ingest,
            &metrics,
            ProviderKind::Webhook,
            request("apigw-prometheus-firing.json"),
        )
        .await;
        assert_eq!(refused.status(), 404);

        let documents = sink.documents();
        assert_eq!(documents.len(), 2);
        assert_eq!(documents[0]["Provider"], "prometheus");
        assert_eq!(documents[0]["EventsAccepted"], 2.0, "the two alerts of the sample");
        assert_eq!(documents[0]["integration"], "checkout-prometheus");
        assert_eq!(documents[1]["Provider"], "webhook");
        assert_eq!(documents[1]["RequestsRejected"], 1.0);
        assert_eq!(documents[1]["Reason"], "unknown_integration");
        assert!(documents[1].get("integration").is_none());
        assert_eq!(store.queued_events().len(), 2);
        let text = serde_json::to_string(&documents).unwrap();
        assert!(!text.contains("1111111111"), "no key in the metrics: {text}");
    }

    /// Records of the transition of an incident of `checkout` opened at
    /// 2026-11-23T11:07:54Z (see crate::dispatch's tests): 100 and 104 are
    /// one transition, 103 is broken.
    fn stream_batch(broken: bool) -> StreamEvent {
        let path = format!(
            "{}/../../events/aws/dynamodb-stream-transitions.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut batch: StreamEvent = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        if !broken {
            batch.records.retain(|r| r.event_id != "ev-103");
        }
        batch
    }

    fn catalog() -> Arc<Catalog> {
        Arc::new(Catalog::from_yaml(include_str!("../../../cli/tocsin.sample.yaml"), "sample").unwrap())
    }

    fn time(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn a_dispatched_batch_counts_its_jobs_per_channel() {
        let store = Arc::new(MemoryStore::new());
        let sink = Arc::new(CollectingSink::default());
        let metrics = Metrics::new(function::DISPATCH, sink.clone());
        let hold = crate::dispatch::Hold {
            maintenance: store.clone(),
            timeline: store.clone(),
            escalations: None,
        };
        let now = time("2026-11-23T11:08:00Z");
        let response = dispatch_batch_measured(
            catalog(),
            None,
            store.clone(),
            Some(hold),
            &metrics,
            stream_batch(false),
            now,
        )
        .await;
        assert!(response.batch_item_failures.is_empty(), "{response:?}");

        let documents = sink.documents();
        let queued: Vec<(&str, f64)> = documents
            .iter()
            .filter_map(|d| Some((d["Channel"].as_str()?, d["NotificationsQueued"].as_f64()?)))
            .collect();
        assert_eq!(
            queued,
            [("email", 1.0), ("sms", 1.0), ("slack", 1.0)],
            "records 100 and 104 are one transition: their jobs are the same"
        );
        assert_eq!(store.queued_jobs().len(), 3);
        let batch = documents.last().unwrap();
        assert_eq!(batch["NotificationsHeld"], 0.0);
        assert_eq!(batch["DispatchFailures"], 0.0);
    }

    #[tokio::test]
    async fn a_failed_batch_and_held_transitions_are_counted() {
        let store = Arc::new(MemoryStore::new());
        let window = tocsin_core::maintenance::MaintenanceWindow::new(
            tocsin_core::event::ServiceId::parse("checkout").unwrap(),
            time("2026-11-23T11:00:00Z"),
            time("2026-11-23T12:00:00Z"),
            None,
            "config",
        )
        .unwrap();
        tocsin_core::ports::MaintenanceStore::put_window(store.as_ref(), &window)
            .await
            .unwrap();
        let sink = Arc::new(CollectingSink::default());
        let metrics = Metrics::new(function::DISPATCH, sink.clone());
        let hold = crate::dispatch::Hold {
            maintenance: store.clone(),
            timeline: store.clone(),
            escalations: None,
        };
        let now = time("2026-11-23T11:30:00Z");
        let response = dispatch_batch_measured(
            catalog(),
            None,
            store.clone(),
            Some(hold),
            &metrics,
            stream_batch(true),
            now,
        )
        .await;
        assert_eq!(response.batch_item_failures.len(), 1, "record 103 is broken");

        let documents = sink.documents();
        assert_eq!(documents.len(), 1, "no job was queued: {documents:?}");
        assert!(store.queued_jobs().is_empty());
        assert_eq!(
            documents[0]["NotificationsHeld"], 1.0,
            "one transition, however often delivered"
        );
        assert_eq!(documents[0]["DispatchFailures"], 1.0);
    }

    #[test]
    fn only_incident_actions_are_read_as_such() {
        use lambda_http::http::Method;
        assert_eq!(
            incident_action(&Method::POST, "/incidents/inc_1/acknowledge"),
            Some((Action::Acknowledge, "inc_1"))
        );
        assert_eq!(
            incident_action(&Method::POST, "/incidents/inc_1/resolve"),
            Some((Action::Resolve, "inc_1"))
        );
        assert_eq!(incident_action(&Method::GET, "/incidents/inc_1/resolve"), None);
        assert_eq!(incident_action(&Method::POST, "/incidents/inc_1/timeline"), None);
        assert_eq!(incident_action(&Method::POST, "/incidents//resolve"), None);
        assert_eq!(incident_action(&Method::POST, "/maintenance"), None);
    }

    #[tokio::test]
    async fn only_actions_carried_out_are_counted() {
        let sink = Arc::new(CollectingSink::default());
        let metrics = Metrics::new(function::API, sink.clone());
        // A stand-in for the router: resolving inc_done conflicts, as an
        // incident already resolved does.
        let router = lambda_http::service_fn(|request: Request| async move {
            let status = if request.uri().path().starts_with("/incidents/inc_done/") {
                409
            } else {
                200
            };
            Ok::<_, std::convert::Infallible>(Response::builder().status(status).body(Body::Empty).unwrap())
        });
        let request = |method: &str, path: &str| {
            lambda_http::http::Request::builder()
                .method(method)
                .uri(path)
                .body(Body::Empty)
                .unwrap()
        };
        for (method, path) in [
            ("POST", "/incidents/inc_1/acknowledge"),
            ("POST", "/incidents/inc_done/resolve"),
            ("GET", "/incidents/inc_1"),
            ("POST", "/incidents/inc_1/resolve"),
        ] {
            answer_api_measured(router, &metrics, request(method, path))
                .await
                .unwrap();
        }
        let documents = sink.documents();
        let counted: Vec<(&str, &str)> = documents
            .iter()
            .map(|d| (d["Action"].as_str().unwrap(), d["incident"].as_str().unwrap()))
            .collect();
        assert_eq!(counted, [("acknowledge", "inc_1"), ("resolve", "inc_1")]);
    }
}
