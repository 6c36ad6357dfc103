//! Tocsin's HTTP API as one axum router over the ports: the provider
//! endpoints, the incidents API and the health check. The local stack serves
//! all of it from one process; on AWS the api function serves the incidents
//! and health routes (each provider endpoint has its own function, which
//! answers through the same ingest service). Every answer, errors included,
//! is JSON, but the HTML pages of one-click action links (links.rs).

mod links;
mod maintenance;
mod slack;

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use serde::Deserialize;
use tocsin_core::answer::{error_answer, json_answer, Answer};
use tocsin_core::auth::{bearer_token, KeyHash, Scope};
use tocsin_core::event::{Action, ServiceId};
use tocsin_core::incident::{IncidentId, IncidentStatus};
use tocsin_core::ingest::{IngestRequest, IngestService};
use tocsin_core::ports::{ConfigStore, IncidentFilter, IncidentStore, Timeline};
use tocsin_core::process::{act_on_incident, ActionError, ProcessService};
use tocsin_core::providers::{provider, ProviderKind};
use tocsin_core::timeline::TimelineEntry;

/// What the incidents API needs: the store, the service that applies an
/// acknowledge or resolve, and the config (API keys).
#[derive(Clone)]
pub struct ApiState {
    pub process: ProcessService,
    pub incidents: Arc<dyn IncidentStore>,
    pub timeline: Arc<dyn Timeline>,
    pub config: Arc<dyn ConfigStore>,
}

/// Every route: the provider endpoints and the incidents API.
pub fn router(ingest: IngestService, api: ApiState) -> Router {
    with_fallbacks(
        ingest_routes(ingest)
            .merge(incident_routes(api))
            .merge(slack::slack_routes()),
    )
}

/// The incidents API and the health check alone (the api function).
pub fn api_router(api: ApiState) -> Router {
    with_fallbacks(incident_routes(api))
}

fn ingest_routes(ingest: IngestService) -> Router {
    Router::new()
        .route("/v2/enqueue", post(enqueue_events_v2))
        .route("/api/v2/generic/incoming", post(generic_incoming))
        .route("/integrations/{provider}", post(integration).get(integration_by_get))
        .route("/integrations/{provider}/preview", post(preview))
        .route(
            "/integrations/{provider}/{key}/{route}",
            post(integration_with_path_key),
        )
        .with_state(ingest)
}

fn incident_routes(api: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        // Static: matched before the provider endpoints' "/integrations/{provider}".
        .route("/integrations/health", get(integrations_health))
        .route("/heartbeat/{id}", post(heartbeat))
        .route("/incidents", get(list_incidents))
        .route("/incidents/{id}", get(get_incident))
        .route("/incidents/{id}/timeline", get(get_timeline))
        .route("/incidents/{id}/acknowledge", post(acknowledge))
        .route("/incidents/{id}/resolve", post(resolve))
        .route("/maintenance", get(maintenance::list).post(maintenance::create))
        .route("/maintenance/{id}", axum::routing::delete(maintenance::delete))
        // One-click links of emails and SMS: HTML pages, not JSON.
        .route("/act/{token}", get(links::page).post(links::confirm))
        .with_state(api)
}

/// The ingest counters `GET /integrations/health` reports, given to a
/// router with [`with_ingest_health`]. Kept out of [`ApiState`] so that a
/// deployment that does not count (and every existing constructor) needs
/// no change: without it the route answers 404.
#[derive(Clone)]
pub struct IngestHealth(pub Arc<dyn tocsin_core::ports::IngestStats>);

/// The heartbeat service `POST /heartbeat/{id}` records beats with; without
/// it the route answers 404.
#[derive(Clone)]
pub struct Heartbeats(pub tocsin_core::heartbeat::HeartbeatService);

/// `router` with `POST /heartbeat/{id}` served by `heartbeats`.
pub fn with_heartbeats(router: Router, heartbeats: tocsin_core::heartbeat::HeartbeatService) -> Router {
    router.layer(axum::Extension(Heartbeats(heartbeats)))
}

/// A beat: the heartbeat's key as for an integration (header or `?token=`);
/// the body, whatever it is (Alertmanager's webhook JSON, nothing), is not
/// read. An unknown id and a wrong key get the same 404, so the answer does
/// not tell which heartbeats exist.
async fn heartbeat(
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    heartbeats: Option<axum::Extension<Heartbeats>>,
) -> Response {
    use tocsin_core::heartbeat::HeartbeatError;
    let not_found = || {
        send(error_answer(
            StatusCode::NOT_FOUND,
            "not found",
            "no heartbeat has this id and key".to_owned(),
            Vec::new(),
        ))
    };
    let Some(axum::Extension(Heartbeats(service))) = heartbeats else {
        return not_found();
    };
    let Ok(id) = tocsin_core::event::HeartbeatId::parse(&id) else {
        return not_found();
    };
    let key = tocsin_core::auth::key_from_request(&headers, uri.query());
    match service.beat(&id, key.as_deref(), Utc::now()).await {
        Ok(accepted) => send(json_answer(
            StatusCode::OK,
            &serde_json::json!({
                "status": "ok",
                "heartbeat": accepted.heartbeat,
                "next_beat_before": accepted.next_beat_before,
                "recovered": accepted.recovered,
            }),
        )),
        Err(HeartbeatError::NotFound | HeartbeatError::WrongKey) => not_found(),
        Err(error @ HeartbeatError::MissingKey) => send(error_answer(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            error.to_string(),
            Vec::new(),
        )),
        Err(HeartbeatError::Backend(error)) => send(unavailable(&error)),
    }
}

/// `router` with `GET /integrations/health` reading `stats`.
pub fn with_ingest_health(router: Router, stats: Arc<dyn tocsin_core::ports::IngestStats>) -> Router {
    router.layer(axum::Extension(IngestHealth(stats)))
}

/// The ingest health document (tocsin_core::health), for API keys that may
/// read incidents.
async fn integrations_health(
    State(state): State<ApiState>,
    headers: HeaderMap,
    health: Option<axum::Extension<IngestHealth>>,
) -> Result<Response, Refused> {
    authorize(&state, &headers, Scope::IncidentsRead).await?;
    let Some(axum::Extension(IngestHealth(stats))) = health else {
        return Err(Refused::from(error_answer(
            StatusCode::NOT_FOUND,
            "not found",
            "this deployment does not count ingest requests".to_owned(),
            Vec::new(),
        )));
    };
    let snapshot = stats.snapshot().await.map_err(|e| Refused::from(unavailable(&e)))?;
    Ok(send(json_answer(
        StatusCode::OK,
        &tocsin_core::health::HealthDocument::build(snapshot, Utc::now()),
    )))
}

pub use links::{with_action_links, with_link_metrics, ActionLinks, LinkMetrics};
pub use maintenance::MaintenanceWindows;
pub use slack::{slack_router, with_slack, Slack};

/// `router` with the maintenance window routes on `store`
/// (`GET`/`POST /maintenance`, `DELETE /maintenance/{id}`); without it
/// they answer 404.
pub fn with_maintenance(router: Router, store: Arc<dyn tocsin_core::ports::MaintenanceStore>) -> Router {
    router.layer(axum::Extension(MaintenanceWindows(store)))
}

fn with_fallbacks(router: Router) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

fn send(answer: Answer) -> Response {
    let (parts, body) = answer.into_parts();
    Response::from_parts(parts, Body::from(body))
}

async fn healthz() -> Response {
    send(json_answer(StatusCode::OK, &serde_json::json!({"status": "ok"})))
}

async fn not_found(method: Method, uri: Uri) -> Response {
    send(error_answer(
        StatusCode::NOT_FOUND,
        "not found",
        format!("no endpoint {method} {}", uri.path()),
        Vec::new(),
    ))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    send(error_answer(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed",
        format!("{} does not answer {method}", uri.path()),
        Vec::new(),
    ))
}

async fn enqueue_events_v2(State(state): State<IngestService>, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    ingest(state, ProviderKind::EventsV2, uri, headers, body).await
}

async fn generic_incoming(State(state): State<IngestService>, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    ingest(state, ProviderKind::Generic, uri, headers, body).await
}

async fn integration(
    State(state): State<IngestService>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match ProviderKind::parse(&name) {
        Some(kind) => ingest(state, kind, uri, headers, body).await,
        None => unknown_provider(&name),
    }
}

/// The tools that deliver with GET (the alert in the query string).
async fn integration_by_get(
    State(state): State<IngestService>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match ProviderKind::parse(&name) {
        Some(kind) if kind.accepts_get() => ingest(state, kind, uri, headers, body).await,
        Some(_) => method_not_allowed(Method::GET, uri).await,
        None => unknown_provider(&name),
    }
}

/// Splunk On-Call senders put the key in the path; no other provider does.
async fn integration_with_path_key(
    State(state): State<IngestService>,
    Path((name, _, _)): Path<(String, String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match ProviderKind::parse(&name) {
        Some(kind) if kind.query_with_path_key(uri.path(), None).is_some() => {
            ingest(state, kind, uri, headers, body).await
        }
        _ => not_found(Method::POST, uri).await,
    }
}

/// What a payload would become, enqueueing nothing.
async fn preview(
    State(state): State<IngestService>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match ProviderKind::parse(&name) {
        Some(kind) => run_ingest(state, kind, uri, headers, body, Mode::Preview).await,
        None => unknown_provider(&name),
    }
}

fn unknown_provider(name: &str) -> Response {
    send(error_answer(
        StatusCode::NOT_FOUND,
        "not found",
        format!(
            "no provider '{name}'; known providers: {}",
            ProviderKind::ALL
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Vec::new(),
    ))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Enqueue,
    Preview,
}

async fn ingest(state: IngestService, kind: ProviderKind, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    run_ingest(state, kind, uri, headers, body, Mode::Enqueue).await
}

async fn run_ingest(
    state: IngestService,
    kind: ProviderKind,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
    mode: Mode,
) -> Response {
    let received_at = Utc::now();
    let limit = provider(kind).max_body_bytes();
    // Read one byte past the limit, so that the ingest service (not the HTTP
    // stack) answers a body too large, with the same JSON as on AWS.
    let body = match to_bytes(body, limit + 1).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return send(error_answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload too large",
                format!("the request body is over the limit of {limit} bytes"),
                Vec::new(),
            ))
        }
    };
    let query = kind.query_with_path_key(uri.path(), uri.query());
    let request = IngestRequest {
        provider: kind,
        headers: &headers,
        query: query.as_deref(),
        body: &body,
        received_at,
    };
    send(match mode {
        Mode::Enqueue => state.handle(request).await,
        Mode::Preview => state.preview(request).await,
    })
}

/// An API request that may not go on, already answered. Boxed: it travels
/// in every handler's `Result`, and the answer is large.
struct Refused(Box<Answer>);

impl From<Answer> for Refused {
    fn from(answer: Answer) -> Self {
        Refused(Box::new(answer))
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        send(*self.0)
    }
}

async fn authorize(state: &ApiState, headers: &HeaderMap, scope: Scope) -> Result<String, Refused> {
    let Some(token) = bearer_token(headers) else {
        return Err(Refused::from(error_answer(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send an API key as Authorization: Bearer KEY",
            Vec::new(),
        )));
    };
    let key = state
        .config
        .api_key(&KeyHash::of(token))
        .await
        .map_err(|e| Refused::from(unavailable(&e)))?
        .ok_or_else(|| {
            Refused::from(error_answer(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the API key is not valid",
                Vec::new(),
            ))
        })?;
    if !key.allows(scope) {
        return Err(Refused::from(error_answer(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("API key '{}' lacks the scope {}", key.name, scope.as_str()),
            Vec::new(),
        )));
    }
    Ok(key.name)
}

fn unavailable(error: &dyn std::error::Error) -> Answer {
    tracing::error!(%error, "store unavailable");
    error_answer(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the incident store is unavailable; retry",
        Vec::new(),
    )
}

fn bad_request(message: String) -> Refused {
    Refused::from(error_answer(
        StatusCode::BAD_REQUEST,
        "invalid request",
        message.clone(),
        vec![message],
    ))
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    service: Option<String>,
    limit: Option<String>,
}

async fn list_incidents(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Refused> {
    authorize(&state, &headers, Scope::IncidentsRead).await?;
    let Query(query) = query.map_err(|rejection| bad_request(rejection.body_text()))?;
    let status = match query.status.as_deref() {
        None => None,
        Some(value) => Some(
            IncidentStatus::parse(value)
                .ok_or_else(|| bad_request(format!("status: '{value}' is not one of open, acknowledged, resolved")))?,
        ),
    };
    let service = match query.service.as_deref() {
        None => None,
        Some(value) => Some(ServiceId::parse(value).map_err(|e| bad_request(e.to_string()))?),
    };
    let limit = match query.limit.as_deref() {
        None => None,
        Some(value) => match value.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => Some(n),
            _ => return Err(bad_request(format!("limit: '{value}' is not a number from 1 to 1000"))),
        },
    };
    let incidents = state
        .incidents
        .list(&IncidentFilter { status, service, limit })
        .await
        .map_err(|e| Refused::from(unavailable(&e)))?;
    Ok(send(json_answer(
        StatusCode::OK,
        &serde_json::json!({ "incidents": incidents }),
    )))
}

fn no_incident(id: &str) -> Refused {
    Refused::from(error_answer(
        StatusCode::NOT_FOUND,
        "not found",
        format!("no incident '{id}'"),
        Vec::new(),
    ))
}

fn incident_id(value: &str) -> Result<IncidentId, Refused> {
    IncidentId::parse(value).ok_or_else(|| no_incident(value))
}

async fn get_incident(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    authorize(&state, &headers, Scope::IncidentsRead).await?;
    let id = incident_id(&id)?;
    match state
        .incidents
        .get(&id)
        .await
        .map_err(|e| Refused::from(unavailable(&e)))?
    {
        Some(incident) => Ok(send(json_answer(StatusCode::OK, &incident))),
        None => Err(no_incident(id.as_str())),
    }
}

/// What happened to an incident, oldest first: `{"incident", "entries"}`.
async fn get_timeline(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    #[derive(serde::Serialize)]
    struct TimelineAnswer<'a> {
        incident: &'a IncidentId,
        entries: Vec<TimelineEntry>,
    }
    authorize(&state, &headers, Scope::IncidentsRead).await?;
    let id = incident_id(&id)?;
    let down = |e: tocsin_core::ports::BackendError| Refused::from(unavailable(&e));
    // An unknown id is a 404, not an empty timeline: a typo must not look
    // like an incident nothing happened to.
    if state.incidents.get(&id).await.map_err(down)?.is_none() {
        return Err(no_incident(id.as_str()));
    }
    let entries = state.timeline.timeline(&id).await.map_err(down)?;
    Ok(send(json_answer(
        StatusCode::OK,
        &TimelineAnswer { incident: &id, entries },
    )))
}

async fn acknowledge(state: State<ApiState>, id: Path<String>, headers: HeaderMap) -> Result<Response, Refused> {
    act(state, id, headers, Action::Acknowledge).await
}

async fn resolve(state: State<ApiState>, id: Path<String>, headers: HeaderMap) -> Result<Response, Refused> {
    act(state, id, headers, Action::Resolve).await
}

async fn act(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    action: Action,
) -> Result<Response, Refused> {
    let actor = authorize(&state, &headers, Scope::IncidentsWrite).await?;
    let id = incident_id(&id)?;
    match act_on_incident(
        state.incidents.as_ref(),
        &state.process,
        &id,
        action,
        &format!("api-key:{actor}"),
        Utc::now(),
    )
    .await
    {
        Ok(incident) => Ok(send(json_answer(StatusCode::OK, &incident))),
        Err(ActionError::NotFound) => Err(no_incident(id.as_str())),
        Err(error @ ActionError::AlreadyDone(_)) => Err(Refused::from(error_answer(
            StatusCode::CONFLICT,
            "conflict",
            error.to_string(),
            Vec::new(),
        ))),
        Err(ActionError::Process(error)) => Err(Refused::from(unavailable(&error))),
    }
}
