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
            IngestError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
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
            IngestError::TooLarge { .. } => ("payload too large", Vec::new()),
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
