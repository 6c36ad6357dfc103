//! Ingest: authenticate → verify → normalize → enqueue. The same service
//! answers in the provider Lambdas and in the local router.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode};

use crate::answer::{error_answer, Answer};
use crate::auth::{key_from_request, IntegrationKey, KeyHash};
use crate::config::Integration;
use crate::event::{Action, Event, EventId, IntegrationId, Origin};
use crate::incident::IncidentId;
use crate::ports::{BackendError, ConfigStore, EventQueue, IncidentStore};
use crate::providers::{provider, Accepted, Inbound, IncidentHint, InvalidPayload, ProviderKind};
use crate::signature::SignatureError;

/// Every way a request is refused, each with one status code.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the request body is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("alert {index} makes an event of {size} bytes; one event may carry at most {limit}")]
    EventTooLarge { index: usize, size: usize, limit: usize },
    #[error(
        "no integration key: send Authorization: Token token=KEY, Authorization: Bearer KEY, X-Integration-Key: KEY or ?token=KEY"
    )]
    MissingKey,
    #[error("the integration key is malformed: it must be 32 hex characters")]
    MalformedKey,
    #[error("no integration has this key")]
    UnknownIntegration,
    #[error("this key belongs to a {actual} integration; send it to {path}")]
    WrongProvider { actual: ProviderKind, path: &'static str },
    #[error("integration '{0}' is disabled")]
    Disabled(IntegrationId),
    #[error("signature check failed: {0}")]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    Payload(#[from] InvalidPayload),
    #[error("the events could not be queued; retry")]
    Unavailable(#[source] BackendError),
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::TooLarge { .. } | IngestError::EventTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::MissingKey | IngestError::MalformedKey | IngestError::Signature(_) => StatusCode::UNAUTHORIZED,
            IngestError::UnknownIntegration | IngestError::WrongProvider { .. } => StatusCode::NOT_FOUND,
            IngestError::Disabled(_) => StatusCode::FORBIDDEN,
            IngestError::Payload(_) => StatusCode::BAD_REQUEST,
            IngestError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON answer: PagerDuty's error shape for every provider. Never
    /// contains a key, a secret or an expected signature.
    pub fn answer(&self) -> Answer {
        let status = self.status();
        let (label, errors) = match self {
            IngestError::Payload(invalid) => (
                "invalid event",
                invalid.errors.iter().map(ToString::to_string).collect(),
            ),
            IngestError::TooLarge { .. } | IngestError::EventTooLarge { .. } => ("payload too large", Vec::new()),
            IngestError::MissingKey | IngestError::MalformedKey | IngestError::Signature(_) => {
                ("unauthorized", Vec::new())
            }
            IngestError::UnknownIntegration | IngestError::WrongProvider { .. } => ("not found", Vec::new()),
            IngestError::Disabled(_) => ("forbidden", Vec::new()),
            IngestError::Unavailable(_) => ("unavailable", Vec::new()),
        };
        let mut answer = error_answer(status, label, self.to_string(), errors);
        if matches!(self, IngestError::Unavailable(_)) {
            answer
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("5"));
        }
        answer
    }
}

/// The largest event, as queued JSON: SQS's limit for one message.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// One request to a provider endpoint.
#[derive(Debug, Clone, Copy)]
pub struct IngestRequest<'a> {
    pub provider: ProviderKind,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    pub received_at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct IngestService {
    config: Arc<dyn ConfigStore>,
    queue: Arc<dyn EventQueue>,
    incidents: Arc<dyn IncidentStore>,
}

impl IngestService {
    pub fn new(config: Arc<dyn ConfigStore>, queue: Arc<dyn EventQueue>, incidents: Arc<dyn IncidentStore>) -> Self {
        Self {
            config,
            queue,
            incidents,
        }
    }

    /// Handles one request and always answers: success or a JSON error.
    pub async fn handle(&self, request: IngestRequest<'_>) -> Answer {
        match self.ingest(request).await {
            Ok(answer) => answer,
            Err(error) => {
                tracing::info!(provider = %request.provider, status = error.status().as_u16(), %error, "request refused");
                error.answer()
            }
        }
    }

    pub async fn ingest(&self, request: IngestRequest<'_>) -> Result<Answer, IngestError> {
        let provider = provider(request.provider);
        let limit = provider.max_body_bytes();
        if request.body.len() > limit {
            return Err(IngestError::TooLarge {
                size: request.body.len(),
                limit,
            });
        }
        let inbound = Inbound {
            headers: request.headers,
            query: request.query,
            body: request.body,
            received_at: request.received_at,
        };

        let integration = self.authenticate(&inbound, request.provider).await?;
        provider.verify(&inbound, &integration)?;
        let alerts = provider.normalize(&inbound, &integration)?;

        let events: Vec<Event> = alerts
            .into_iter()
            .map(|alert| Event {
                id: EventId::generate(),
                service: integration.service.clone(),
                origin: Origin::Integration {
                    integration: integration.id.clone(),
                    provider: request.provider,
                },
                received_at: request.received_at,
                alert,
            })
            .collect();

        // An event must fit one queue message whole: refused here, in every
        // runtime alike, rather than truncated or failed by the queue.
        for (index, event) in events.iter().enumerate() {
            let size = serde_json::to_vec(event).map(|bytes| bytes.len()).unwrap_or(usize::MAX);
            if size > MAX_EVENT_BYTES {
                return Err(IngestError::EventTooLarge {
                    index,
                    size,
                    limit: MAX_EVENT_BYTES,
                });
            }
        }

        // Read before enqueueing: afterwards the processor may already have
        // opened the incident, and the caller would be told it was not new.
        let hint = match (provider.wants_incident_hint(&inbound), events.first()) {
            (true, Some(event)) => Some(self.incident_hint(event).await?),
            _ => None,
        };

        self.queue.enqueue(&events).await.map_err(IngestError::Unavailable)?;
        tracing::info!(
            provider = %request.provider,
            integration = %integration.id,
            service = %integration.service,
            events = events.len(),
            "events accepted"
        );
        Ok(provider.accepted(
            &inbound,
            &Accepted {
                events: &events,
                integration: &integration,
                hint,
            },
        ))
    }

    async fn authenticate(&self, inbound: &Inbound<'_>, kind: ProviderKind) -> Result<Integration, IngestError> {
        let key = key_from_request(inbound.headers, inbound.query)
            .or_else(|| provider(kind).key_in_body(inbound))
            .ok_or(IngestError::MissingKey)?;
        let key = IntegrationKey::parse(&key).map_err(|_| IngestError::MalformedKey)?;
        let integration = self
            .config
            .integration_by_key(&KeyHash::of(key.reveal()))
            .await
            .map_err(IngestError::Unavailable)?
            .ok_or(IngestError::UnknownIntegration)?;
        if integration.provider != kind {
            return Err(IngestError::WrongProvider {
                actual: integration.provider,
                path: integration.provider.path(),
            });
        }
        if !integration.enabled {
            return Err(IngestError::Disabled(integration.id));
        }
        Ok(integration)
    }

    async fn incident_hint(&self, event: &Event) -> Result<IncidentHint, IngestError> {
        let latest = self
            .incidents
            .latest(&event.service, event.dedup_key())
            .await
            .map_err(IngestError::Unavailable)?;
        let predicted = || IncidentId::for_opening(&event.service, event.dedup_key(), &event.id);
        Ok(match (latest, event.action()) {
            (Some(incident), _) if !incident.status.is_closed() => IncidentHint {
                incident: incident.id,
                is_new: false,
            },
            (_, Action::Trigger) => IncidentHint {
                incident: predicted(),
                is_new: true,
            },
            (Some(resolved), _) => IncidentHint {
                incident: resolved.id,
                is_new: false,
            },
            (None, _) => IncidentHint {
                incident: predicted(),
                is_new: false,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Catalog;
    use crate::memory::MemoryStore;

    const CONFIG: &str = r#"
services:
  - id: checkout
    integrations:
      - {id: pd, type: events-v2, key: 22222222222222222222222222222222}
"#;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    fn post(body: &serde_json::Value) -> (Answer, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::new());
        let catalog = Catalog::from_yaml(CONFIG, "test.yaml").unwrap();
        let ingest = IngestService::new(Arc::new(catalog), store.clone(), store.clone());
        let body = serde_json::to_vec(body).unwrap();
        let headers = HeaderMap::new();
        let answer = block_on(ingest.handle(IngestRequest {
            provider: ProviderKind::EventsV2,
            headers: &headers,
            query: None,
            body: &body,
            received_at: Utc::now(),
        }));
        (answer, store)
    }

    fn trigger(details_bytes: usize) -> serde_json::Value {
        serde_json::json!({
            "routing_key": "22222222222222222222222222222222",
            "event_action": "trigger",
            "payload": {"summary": "s", "source": "x", "severity": "info",
                        "custom_details": {"blob": "x".repeat(details_bytes)}},
        })
    }

    #[test]
    fn an_event_that_fits_a_queue_message_is_queued() {
        let (answer, store) = post(&trigger(200 * 1024));
        assert_eq!(answer.status(), StatusCode::ACCEPTED);
        assert_eq!(store.queued_events().len(), 1);
    }

    #[test]
    fn an_event_too_large_for_one_queue_message_is_refused_whole() {
        // Under the 512 KB body limit, over SQS's 256 KiB message limit.
        let (answer, store) = post(&trigger(300 * 1024));
        assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body: serde_json::Value = serde_json::from_slice(answer.body()).unwrap();
        assert_eq!(body["status"], "payload too large");
        assert!(body["message"].as_str().unwrap().contains("262144"), "{body}");
        assert!(store.queued_events().is_empty());
    }
}
