//! `GET /maintenance`, `POST /maintenance` and `DELETE /maintenance/{id}`:
//! the services' maintenance windows (tocsin_core::maintenance), with the
//! incidents API's keys and scopes.
//!
//! A window that has started may hold notifications until its release, so
//! it is never deleted before that: DELETE ends it now, in place, and the
//! next release (the scheduler) sends what it held.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tocsin_core::answer::{empty_answer, error_answer, json_answer};
use tocsin_core::auth::Scope;
use tocsin_core::event::ServiceId;
use tocsin_core::maintenance::{MaintenanceWindow, WindowId};
use tocsin_core::ports::MaintenanceStore;

use super::{authorize, bad_request, send, unavailable, ApiState, Refused};

/// A window is a few hundred bytes; anything much larger is not one.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// The store of the maintenance routes, given to a router with
/// [`crate::with_maintenance`]; without it the routes answer 404.
#[derive(Clone)]
pub struct MaintenanceWindows(pub Arc<dyn MaintenanceStore>);

fn store(windows: Option<Extension<MaintenanceWindows>>) -> Result<Arc<dyn MaintenanceStore>, Refused> {
    match windows {
        Some(Extension(MaintenanceWindows(store))) => Ok(store),
        None => Err(Refused::from(error_answer(
            StatusCode::NOT_FOUND,
            "not found",
            "this deployment has no maintenance windows",
            Vec::new(),
        ))),
    }
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    service: Option<String>,
}

/// `{"windows": [...]}`, by service then start; `?service=` for one.
pub(crate) async fn list(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
    windows: Option<Extension<MaintenanceWindows>>,
) -> Result<Response, Refused> {
    authorize(&state, &headers, Scope::IncidentsRead).await?;
    let store = store(windows)?;
    let Query(query) = query.map_err(|rejection| bad_request(rejection.body_text()))?;
    let service = match query.service.as_deref() {
        None => None,
        Some(value) => Some(ServiceId::parse(value).map_err(|e| bad_request(format!("service: {}", e.reason)))?),
    };
    let found = store
        .windows(service.as_ref())
        .await
        .map_err(|e| Refused::from(unavailable(&e)))?;
    Ok(send(json_answer(
        StatusCode::OK,
        &serde_json::json!({ "windows": found }),
    )))
}

#[derive(Deserialize)]
struct NewWindow {
    service: String,
    start: String,
    end: String,
    #[serde(default)]
    reason: Option<String>,
}

fn time(field: &str, value: &str) -> Result<DateTime<Utc>, Refused> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            bad_request(format!(
                "{field}: '{value}' is not an RFC 3339 time such as 2026-05-01T22:00:00Z"
            ))
        })
}

/// `{service, start, end, reason}` → 201 with the window. The same service
/// and times again name the same window, which is rewritten, not doubled.
pub(crate) async fn create(
    State(state): State<ApiState>,
    headers: HeaderMap,
    windows: Option<Extension<MaintenanceWindows>>,
    body: Body,
) -> Result<Response, Refused> {
    let actor = authorize(&state, &headers, Scope::IncidentsWrite).await?;
    let store = store(windows)?;
    let bytes = to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| {
        Refused::from(error_answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload too large",
            format!("a maintenance window is at most {MAX_BODY_BYTES} bytes"),
            Vec::new(),
        ))
    })?;
    let new: NewWindow = serde_json::from_slice(&bytes).map_err(|e| {
        bad_request(format!(
            "the body must be JSON {{\"service\", \"start\", \"end\", \"reason\"}}: {e}"
        ))
    })?;
    let service = ServiceId::parse(&new.service).map_err(|e| bad_request(format!("service: {}", e.reason)))?;
    let (start, end) = (time("start", &new.start)?, time("end", &new.end)?);
    let window = MaintenanceWindow::new(service, start, end, new.reason, format!("api-key:{actor}"))
        .map_err(|e| bad_request(format!("{}: {e}", e.field())))?;
    if window.has_ended(Utc::now()) {
        return Err(bad_request("end: the window is already over".to_owned()));
    }
    let known = state
        .config
        .service(&window.service)
        .await
        .map_err(|e| Refused::from(unavailable(&e)))?;
    if known.is_none() {
        return Err(Refused::from(error_answer(
            StatusCode::NOT_FOUND,
            "not found",
            format!("no service '{}'", window.service),
            Vec::new(),
        )));
    }
    let stored = store
        .windows(Some(&window.service))
        .await
        .map_err(|e| Refused::from(unavailable(&e)))?;
    if stored.iter().any(|w| w.id == window.id && w.end != window.end) {
        // Writing it again would open, maybe after its release, a window
        // that DELETE ended early.
        return Err(Refused::from(error_answer(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "maintenance window '{}' was ended early; a new window needs other times",
                window.id
            ),
            Vec::new(),
        )));
    }
    store
        .put_window(&window)
        .await
        .map_err(|e| Refused::from(unavailable(&e)))?;
    tracing::info!(window = %window.id, service = %window.service, %actor, "maintenance window created");
    Ok(send(json_answer(StatusCode::CREATED, &window)))
}

/// A window not started yet, or already released, is deleted: 204. One
/// that has started and is not released is kept, so that its release sends
/// what it held: ended now if it is still on, 200 with the window either
/// way. 404 for an id that names no window.
pub(crate) async fn delete(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    windows: Option<Extension<MaintenanceWindows>>,
) -> Result<Response, Refused> {
    let actor = authorize(&state, &headers, Scope::IncidentsWrite).await?;
    let store = store(windows)?;
    let no_window = || {
        Refused::from(error_answer(
            StatusCode::NOT_FOUND,
            "not found",
            format!("no maintenance window '{id}'"),
            Vec::new(),
        ))
    };
    let down = |e: tocsin_core::ports::BackendError| Refused::from(unavailable(&e));
    let id = WindowId::parse(&id).ok_or_else(no_window)?;
    let find = || async {
        store
            .windows(None)
            .await
            .map_err(down)?
            .into_iter()
            .find(|w| w.id == id)
            .ok_or_else(no_window)
    };
    let window = find().await?;
    let now = Utc::now();
    if window.released_at.is_some() || now <= window.start {
        if !store.delete_window(&id).await.map_err(down)? {
            return Err(no_window());
        }
        tracing::info!(window = %id, %actor, "maintenance window deleted");
        return Ok(send(empty_answer(StatusCode::NO_CONTENT)));
    }
    if window.is_active(now) && store.end_window(&id, now).await.map_err(down)? {
        tracing::info!(window = %id, %actor, end = %now, "maintenance window ended early");
    }
    // As stored now: ended by this call, by another, or over already.
    Ok(send(json_answer(StatusCode::OK, &find().await?)))
}
