//! `POST /slack/interactions` (the Slack app's Interactivity Request URL)
//! and `POST /slack/commands` (its `/tocsin` slash command), answered by
//! tocsin-core's Slack service over the raw body.

use axum::body::{to_bytes, Body};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use chrono::Utc;
use tocsin_core::answer::error_answer;
use tocsin_core::slack::{SlackInteractions, MAX_BODY_BYTES};

use super::{send, with_fallbacks};

/// The Slack service the routes answer with; without it they answer 404.
#[derive(Clone)]
pub struct Slack(pub SlackInteractions);

/// The Slack routes, which read their service from the request's
/// extensions ([`with_slack`]).
pub(crate) fn slack_routes() -> Router {
    Router::new()
        .route("/slack/interactions", post(interactions))
        .route("/slack/commands", post(commands))
}

/// `router` with the Slack routes answered by `slack`.
pub fn with_slack(router: Router, slack: SlackInteractions) -> Router {
    router.layer(Extension(Slack(slack)))
}

/// The Slack routes alone (the slack-interactions function).
pub fn slack_router(slack: SlackInteractions) -> Router {
    with_slack(with_fallbacks(slack_routes()), slack)
}

#[derive(Clone, Copy)]
enum Endpoint {
    Interactions,
    Commands,
}

async fn interactions(slack: Option<Extension<Slack>>, headers: HeaderMap, body: Body) -> Response {
    answer(slack, Endpoint::Interactions, headers, body).await
}

async fn commands(slack: Option<Extension<Slack>>, headers: HeaderMap, body: Body) -> Response {
    answer(slack, Endpoint::Commands, headers, body).await
}

async fn answer(slack: Option<Extension<Slack>>, endpoint: Endpoint, headers: HeaderMap, body: Body) -> Response {
    let Some(Extension(Slack(slack))) = slack else {
        return send(error_answer(
            StatusCode::NOT_FOUND,
            "not found",
            "Slack is not set up here: give settings.slack_signing_secret",
            Vec::new(),
        ));
    };
    let Ok(body) = to_bytes(body, MAX_BODY_BYTES).await else {
        return send(error_answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload too large",
            format!("the request body is over the limit of {MAX_BODY_BYTES} bytes"),
            Vec::new(),
        ));
    };
    let now = Utc::now();
    send(match endpoint {
        Endpoint::Interactions => slack.interaction(&headers, &body, now).await,
        Endpoint::Commands => slack.command(&headers, &body, now).await,
    })
}
