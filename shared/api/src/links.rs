//! The pages of one-click action links (tocsin_core::links).
//! `GET /act/{token}` shows the incident and asks to confirm, and changes
//! nothing: mail scanners and link previews fetch every link they see.
//! `POST /act/{token}`, the page's button, acknowledges or resolves. Both
//! answer small HTML pages that work without JavaScript, unlike the rest
//! of the API: people open them from their mail and phones.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use chrono::Utc;
use tocsin_core::incident::{Incident, IncidentStatus};
use tocsin_core::links::{ActionClaim, ActionSigner, LinkAction, LinkError};
use tocsin_core::metrics::{ActionVia, Metrics};
use tocsin_core::process::{act_on_incident, ActionError};
use tocsin_core::render::escape_html as escape;

use crate::ApiState;

/// The signer `/act/{token}` verifies links with; without it the routes
/// answer 404.
#[derive(Clone)]
pub struct ActionLinks(pub ActionSigner);

/// `router` with `/act/{token}` verifying links with `signer`.
pub fn with_action_links(router: Router, signer: ActionSigner) -> Router {
    router.layer(Extension(ActionLinks(signer)))
}

/// Where the actions links carry out are counted (IncidentActions, Via
/// `link`); without it they are not.
#[derive(Clone)]
pub struct LinkMetrics(pub Metrics);

/// `router` counting the actions of `/act/{token}` in `metrics`.
pub fn with_link_metrics(router: Router, metrics: Metrics) -> Router {
    router.layer(Extension(LinkMetrics(metrics)))
}

/// What the link would do, and a button to do it.
pub(crate) async fn page(
    State(state): State<ApiState>,
    Path(token): Path<String>,
    links: Option<Extension<ActionLinks>>,
) -> Response {
    let (claim, incident) = match open(&state, &token, links).await {
        Ok(found) => found,
        Err(refused) => return refused,
    };
    let service = service_name(&state, &incident).await;
    let facts = facts(&incident, &service);
    if !applies(claim.action, incident.status) {
        return html(
            StatusCode::OK,
            &format!("Already {}", incident.status),
            &format!(
                "<p>This incident is already <strong>{}</strong>: the link has nothing left to do.</p>\n{facts}",
                incident.status
            ),
        );
    }
    html(
        StatusCode::OK,
        &format!("{} this incident?", claim.action.title()),
        &format!(
            "{facts}<form method=\"post\">\n<button type=\"submit\" style=\"padding:10px 18px;font-size:16px;\
             font-weight:bold;color:#ffffff;background:#1f2328;border:0;border-radius:4px\">{}</button>\n</form>\n\
             <p class=\"note\">Nothing changes until you press the button. The link works until {}.</p>\n",
            claim.action.title(),
            claim.expires_at.format("%Y-%m-%d %H:%M UTC"),
        ),
    )
}

/// The button: the action, on behalf of the link's recipient.
pub(crate) async fn confirm(
    State(state): State<ApiState>,
    Path(token): Path<String>,
    links: Option<Extension<ActionLinks>>,
    metrics: Option<Extension<LinkMetrics>>,
) -> Response {
    let (claim, incident) = match open(&state, &token, links).await {
        Ok(found) => found,
        Err(refused) => return refused,
    };
    let actor = claim.actor();
    let service = service_name(&state, &incident).await;
    let result = act_on_incident(
        state.incidents.as_ref(),
        &state.process,
        &incident.id,
        claim.action.action(),
        &actor,
        Utc::now(),
    )
    .await;
    match result {
        Ok(updated) => {
            tracing::info!(incident = %updated.id, action = %claim.action, %actor, "action link used");
            if let Some(Extension(LinkMetrics(metrics))) = metrics {
                metrics.incident_action_via(Utc::now(), claim.action.action(), ActionVia::Link, updated.id.as_str());
            }
            html(
                StatusCode::OK,
                claim.action.done(),
                &format!(
                    "<p>The incident is now <strong>{}</strong>.</p>\n{}",
                    updated.status,
                    facts(&updated, &service)
                ),
            )
        }
        Err(ActionError::AlreadyDone(status)) => html(
            StatusCode::CONFLICT,
            &format!("Already {status}"),
            &format!(
                "<p>This incident was already <strong>{status}</strong>: nothing changed.</p>\n{}",
                facts(&incident, &service)
            ),
        ),
        Err(ActionError::NotFound) => no_incident(),
        Err(ActionError::Process(error)) => unavailable(&error),
    }
}

/// The verified claim and its incident, or the page that says why not.
async fn open(
    state: &ApiState,
    token: &str,
    links: Option<Extension<ActionLinks>>,
) -> Result<(ActionClaim, Incident), Response> {
    let Some(Extension(ActionLinks(signer))) = links else {
        return Err(html(
            StatusCode::NOT_FOUND,
            "Not found",
            "<p>Action links are not enabled on this deployment.</p>\n",
        ));
    };
    let claim = signer.verify(token, Utc::now()).map_err(|error| {
        tracing::info!(%error, "an action link was refused");
        match error {
            LinkError::Expired => html(
                StatusCode::GONE,
                "This link has expired",
                "<p>Action links work for a limited time. Open the incident in Tocsin, or use a newer \
                 notification.</p>\n",
            ),
            LinkError::Malformed | LinkError::BadSignature => html(
                StatusCode::BAD_REQUEST,
                "This link is not valid",
                "<p>The link is incomplete or was changed. Open it from the notification again, all of it.</p>\n",
            ),
        }
    })?;
    match state.incidents.get(&claim.incident).await {
        Ok(Some(incident)) => Ok((claim, incident)),
        Ok(None) => Err(no_incident()),
        Err(error) => Err(unavailable(&error)),
    }
}

/// Whether the action still changes something (as act_on_incident decides).
fn applies(action: LinkAction, status: IncidentStatus) -> bool {
    match action {
        LinkAction::Acknowledge => status == IncidentStatus::Open,
        LinkAction::Resolve => status != IncidentStatus::Resolved,
    }
}

async fn service_name(state: &ApiState, incident: &Incident) -> String {
    match state.config.service(&incident.service).await {
        Ok(Some(service)) => service.name,
        _ => incident.service.to_string(),
    }
}

/// The incident in a few lines.
fn facts(incident: &Incident, service: &str) -> String {
    let rows = [
        ("Service", service.to_owned()),
        ("Severity", incident.severity.as_str().to_owned()),
        ("Status", incident.status.to_string()),
        ("Opened", incident.created_at.format("%Y-%m-%d %H:%M UTC").to_string()),
        ("Incident", incident.id.to_string()),
    ];
    let mut out = format!("<h2>{}</h2>\n<table>\n", escape(&incident.summary));
    for (key, value) in rows {
        out.push_str(&format!("<tr><th>{key}</th><td>{}</td></tr>\n", escape(&value)));
    }
    out.push_str("</table>\n");
    out
}

fn no_incident() -> Response {
    html(
        StatusCode::NOT_FOUND,
        "No such incident",
        "<p>The incident of this link no longer exists.</p>\n",
    )
}

fn unavailable(error: &dyn std::error::Error) -> Response {
    tracing::error!(%error, "store unavailable");
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again",
        "<p>The incident store is unavailable. Nothing changed; try again in a moment.</p>\n",
    )
}

/// A whole page. `body` is HTML already escaped; `title` is text.
fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let title = escape(title);
    let page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex\">\n<title>{title} · Tocsin</title>\n<style>\n\
         body{{margin:0;padding:24px 16px;background:#f4f5f7;color:#1f2328;\
         font-family:-apple-system,BlinkMacSystemFont,'Segoe UI',Helvetica,Arial,sans-serif}}\n\
         main{{max-width:560px;margin:0 auto;padding:20px 24px;background:#fff;border:1px solid #d0d7de;border-radius:6px}}\n\
         h1{{font-size:22px;margin:0 0 12px}} h2{{font-size:17px;margin:16px 0 8px;word-break:break-word}}\n\
         th{{text-align:left;padding:2px 16px 2px 0;color:#57606a;font-weight:normal}} td{{word-break:break-word}}\n\
         form{{margin:20px 0 8px}} .note{{font-size:13px;color:#57606a}}\n</style>\n</head>\n\
         <body>\n<main>\n<h1>{title}</h1>\n{body}</main>\n</body>\n</html>\n"
    );
    let mut response = (status, page).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The token is a credential: not cached, not sent on as a Referer, the
    // page not framed nor running anything.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert("x-robots-tag", HeaderValue::from_static("noindex"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(escape("<a href='x'>\"&"), "&lt;a href=&#39;x&#39;&gt;&quot;&amp;");
    }

    /// A store with one open incident on the sample's `checkout`, its id,
    /// and the API state over them.
    async fn one_open_incident() -> (ApiState, tocsin_core::incident::IncidentId) {
        use std::sync::Arc;
        use tocsin_core::event::{Action, Alert, DedupKey, Event, EventId, IntegrationId, Origin, Payload, ServiceId};
        use tocsin_core::process::ProcessService;

        let store = Arc::new(tocsin_core::memory::MemoryStore::new());
        let catalog =
            tocsin_core::config::Catalog::from_yaml(include_str!("../../../cli/tocsin.sample.yaml"), "sample")
                .expect("the sample config");
        let process = ProcessService::new(store.clone());
        let trigger = Event {
            id: EventId::generate(),
            service: ServiceId::parse("checkout").expect("a service id"),
            origin: Origin::Integration {
                integration: IntegrationId::parse("checkout-prometheus").expect("an integration id"),
                provider: tocsin_core::providers::ProviderKind::Prometheus,
            },
            received_at: Utc::now(),
            alert: Alert {
                event_action: Action::Trigger,
                dedup_key: DedupKey::parse("disk-full").expect("a dedup key"),
                payload: Some(Payload {
                    summary: "Disk full".into(),
                    source: "db-1".into(),
                    severity: tocsin_core::event::Severity::Critical,
                    timestamp: None,
                    component: None,
                    group: None,
                    class: None,
                    custom_details: None,
                }),
                links: Vec::new(),
                images: Vec::new(),
                client: None,
                client_url: None,
            },
        };
        process.apply(&trigger, Utc::now()).await.expect("opened");
        let id = store.incidents()[0].id.clone();
        let state = ApiState {
            process,
            incidents: store.clone(),
            timeline: store,
            config: Arc::new(catalog),
        };
        (state, id)
    }

    #[tokio::test]
    async fn a_confirmed_link_counts_as_a_link_incident_action_once() {
        use std::sync::Arc;
        use tocsin_core::metrics::{function, CollectingSink};

        let (state, id) = one_open_incident().await;
        let signer = ActionSigner::new(tocsin_core::config::Secret::new("links-test-secret-0123456789abcdef"))
            .expect("a long enough secret");
        let token = signer.token(&id, LinkAction::Acknowledge, Some("oncall@example.com"), Utc::now());
        let sink = Arc::new(CollectingSink::default());
        let metrics = Metrics::new(function::API, sink.clone());
        let press = || {
            confirm(
                State(state.clone()),
                Path(token.clone()),
                Some(Extension(ActionLinks(signer.clone()))),
                Some(Extension(LinkMetrics(metrics.clone()))),
            )
        };

        assert_eq!(press().await.status(), StatusCode::OK);
        // Pressed again: already acknowledged, nothing done, nothing counted.
        assert_eq!(press().await.status(), StatusCode::CONFLICT);
        // Only shown the page: nothing counted either.
        let shown = page(
            State(state.clone()),
            Path(token.clone()),
            Some(Extension(ActionLinks(signer.clone()))),
        )
        .await;
        assert_eq!(shown.status(), StatusCode::OK);

        let documents = sink.documents();
        assert_eq!(documents.len(), 1, "{documents:?}");
        let document = &documents[0];
        assert_eq!(document["IncidentActions"], 1.0);
        assert_eq!(document["Function"], "api");
        assert_eq!(document["Action"], "acknowledge");
        assert_eq!(document["Via"], "link");
        assert_eq!(document["incident"], id.as_str());
        // And the incident says who.
        let incident = state.incidents.get(&id).await.expect("read").expect("the incident");
        assert_eq!(incident.acknowledged_by.as_deref(), Some("link:oncall@example.com"));
    }

    #[test]
    fn an_action_applies_until_it_is_done() {
        assert!(applies(LinkAction::Acknowledge, IncidentStatus::Open));
        assert!(!applies(LinkAction::Acknowledge, IncidentStatus::Acknowledged));
        assert!(applies(LinkAction::Resolve, IncidentStatus::Acknowledged));
        assert!(!applies(LinkAction::Resolve, IncidentStatus::Resolved));
    }
}
