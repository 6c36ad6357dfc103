//! Ingest's metrics on Lambda: how many events each request queued, and
//! for which integration, is known only to the events queue, so the queue
//! notes them in a tally that lives as long as the request's task (one per
//! request, also when a container serves several at once).

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use lambda_http::{Body, Request, Response};
use tocsin_core::event::{Event, Origin};
use tocsin_core::ingest::IngestService;
use tocsin_core::metrics::Metrics;
use tocsin_core::ports::{BackendError, EventQueue};
use tocsin_core::providers::ProviderKind;
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
}
