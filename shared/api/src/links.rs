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

    #[test]
    fn an_action_applies_until_it_is_done() {
        assert!(applies(LinkAction::Acknowledge, IncidentStatus::Open));
        assert!(!applies(LinkAction::Acknowledge, IncidentStatus::Acknowledged));
        assert!(applies(LinkAction::Resolve, IncidentStatus::Acknowledged));
        assert!(!applies(LinkAction::Resolve, IncidentStatus::Resolved));
    }
}
