//! GitLab project and group webhooks, pipeline events (`X-Gitlab-Event:
//! Pipeline Hook`): a failed pipeline opens an incident for its project and
//! ref, and the next successful pipeline on that ref resolves it. Scheduled
//! pipelines keep their own incident, since they usually run other jobs than
//! the pipelines of pushes and merge requests.
//!
//! GitLab does not sign deliveries: it sends the webhook's secret token as
//! is in `X-Gitlab-Token`, compared here in constant time with the
//! integration's secret. Other events (push, job, the Test button's push
//! sample …) are accepted without an incident.
//!
//! <https://docs.gitlab.com/user/project/integrations/webhook_events/#pipeline-events>
//! <https://docs.gitlab.com/user/project/integrations/webhooks/>

use http::HeaderMap;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Integration;
use crate::event::{Action, Alert, Payload, Severity};
use crate::providers::forge;
use crate::providers::{Inbound, InvalidPayload, Provider, ProviderKind};
use crate::signature::SignatureError;

pub struct Gitlab;

const EVENT_HEADER: &str = "x-gitlab-event";
const TOKEN_HEADER: &str = "x-gitlab-token";
const TOKEN_EXPECTED: &str = "X-Gitlab-Token: <secret token>";
const PIPELINE_HOOK: &str = "Pipeline Hook";

const INVALID: &str = "the GitLab pipeline event is invalid";

impl Gitlab {
    /// The id of the delivery, kept by GitLab's retries and resends:
    /// `Idempotency-Key` (GitLab 17.4 and later), else `X-Gitlab-Event-UUID`.
    pub fn delivery_id(headers: &HeaderMap) -> Option<&str> {
        forge::header(headers, "idempotency-key").or_else(|| forge::header(headers, "x-gitlab-event-uuid"))
    }
}

impl Provider for Gitlab {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Gitlab
    }

    fn delivery_id<'a>(&self, inbound: &Inbound<'a>) -> Option<&'a str> {
        Gitlab::delivery_id(inbound.headers)
    }

    fn verify(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<(), SignatureError> {
        let Some(secret) = &integration.secret else {
            return Ok(());
        };
        let token = inbound.headers.get(TOKEN_HEADER).ok_or(SignatureError::Missing {
            expected: TOKEN_EXPECTED,
        })?;
        if tokens_match(token.as_bytes(), secret.expose().as_bytes()) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let event = forge::header(inbound.headers, EVENT_HEADER);
        if event.is_some_and(|e| e != PIPELINE_HOOK) {
            tracing::debug!(event, "GitLab event without incidents");
            return Ok(Vec::new());
        }
        let hook: PipelineHook = forge::parse_object(inbound.body)?;
        // Without the header (a proxy that drops it), the body says what it is.
        if event.is_none() && hook.object_kind.as_deref() != Some("pipeline") {
            return Ok(Vec::new());
        }
        Ok(pipeline(hook)?.into_iter().collect())
    }
}

/// Compares digests, so that the time taken says nothing about how much of
/// the token matched, nor about the secret's length.
fn tokens_match(given: &[u8], secret: &[u8]) -> bool {
    Sha256::digest(given)
        .as_slice()
        .ct_eq(Sha256::digest(secret).as_slice())
        .into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PipelineHook {
    object_kind: Option<String>,
    object_attributes: Option<Pipeline>,
    merge_request: Option<MergeRequest>,
    user: Option<User>,
    project: Option<Project>,
    commit: Option<Commit>,
    builds: Option<Vec<Build>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Pipeline {
    id: Option<u64>,
    iid: Option<u64>,
    /// `workflow:name` of the pipeline (GitLab 16.1 and later).
    name: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    tag: Option<bool>,
    sha: Option<String>,
    /// Why the pipeline ran: push, web, schedule, merge_request_event …
    source: Option<String>,
    status: Option<String>,
    detailed_status: Option<String>,
    finished_at: Option<String>,
    duration: Option<f64>,
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MergeRequest {
    iid: Option<u64>,
    title: Option<String>,
    source_branch: Option<String>,
    target_branch: Option<String>,
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct User {
    username: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Project {
    id: Option<u64>,
    path_with_namespace: Option<String>,
    web_url: Option<String>,
    default_branch: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Commit {
    title: Option<String>,
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Build {
    id: Option<u64>,
    stage: Option<String>,
    name: Option<String>,
    status: Option<String>,
    failure_reason: Option<String>,
    allow_failure: Option<bool>,
}

fn pipeline(hook: PipelineHook) -> Result<Option<Alert>, InvalidPayload> {
    let attributes = hook.object_attributes.unwrap_or_default();
    // Running, pending, canceled, skipped and manual pipelines say nothing
    // about whether the last failure is fixed.
    let (event_action, outcome) = match attributes.status.as_deref() {
        Some("failed") => (Action::Trigger, "failed"),
        Some("success") => (Action::Resolve, "passed"),
        _ => return Ok(None),
    };
    let project = hook.project.unwrap_or_default();

    let mut errors = Vec::new();
    let path = forge::required(
        project.path_with_namespace.as_deref(),
        "project.path_with_namespace",
        &mut errors,
    );
    let git_ref = forge::required(attributes.git_ref.as_deref(), "object_attributes.ref", &mut errors);
    forge::check(errors, INVALID)?;

    let scheduled = attributes.source.as_deref() == Some("schedule");
    let kind = if scheduled { "schedule" } else { "pipeline" };
    let severity = if attributes.tag == Some(true) {
        // A tag's pipeline usually builds a release.
        Severity::Error
    } else {
        forge::build_severity(Some(git_ref), project.default_branch.as_deref())
    };

    // Jobs allowed to fail did not fail the pipeline.
    let failed_jobs: Vec<&Build> = hook
        .builds
        .iter()
        .flatten()
        .filter(|b| b.status.as_deref() == Some("failed") && b.allow_failure != Some(true))
        .collect();
    let failed_names: Vec<&str> = failed_jobs
        .iter()
        .filter_map(|b| forge::non_blank(b.name.as_deref()))
        .collect();

    let number = attributes.id.map(|id| format!(" #{id}")).unwrap_or_default();
    let what = if scheduled { "Scheduled pipeline" } else { "Pipeline" };
    let name = forge::non_blank(attributes.name.as_deref())
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    let mut summary = format!("{what}{number}{name} {outcome} on {git_ref} in {path}");
    if event_action == Action::Trigger && !failed_names.is_empty() {
        summary.push_str(&format!(": {} failed", failed_names.join(", ")));
    }

    let merge_request = hook.merge_request.unwrap_or_default();
    let pipeline_url = forge::non_blank(attributes.url.as_deref());
    let mr_text = merge_request.iid.map(|iid| format!("Merge request !{iid}"));
    let links = forge::link(pipeline_url.or(project.web_url.as_deref()), "Pipeline")
        .into_iter()
        .chain(forge::link(
            hook.commit.as_ref().and_then(|c| c.url.as_deref()),
            "Commit",
        ))
        .chain(forge::link(
            merge_request.url.as_deref(),
            mr_text.as_deref().unwrap_or("Merge request"),
        ))
        .collect();

    Ok(Some(Alert {
        event_action,
        dedup_key: forge::key(&["gitlab", path, kind, git_ref]),
        payload: Some(Payload {
            summary: Payload::truncate_summary(&summary),
            source: path.to_owned(),
            severity,
            timestamp: forge::parse_time(attributes.finished_at.as_deref()),
            component: forge::non_blank(attributes.name.as_deref()).map(str::to_owned),
            group: Some(git_ref.to_owned()),
            class: Some(kind.to_owned()),
            custom_details: Some(json!({
                "pipeline_id": attributes.id,
                "pipeline_iid": attributes.iid,
                "project_id": project.id,
                "ref": git_ref,
                "tag": attributes.tag,
                "sha": attributes.sha,
                "source": attributes.source,
                "status": attributes.status,
                "detailed_status": attributes.detailed_status,
                "duration": attributes.duration,
                "url": pipeline_url,
                "user": hook.user.and_then(|u| u.username),
                "commit_title": hook.commit.and_then(|c| c.title),
                "merge_request": merge_request.iid.map(|iid| json!({
                    "iid": iid,
                    "title": merge_request.title,
                    "source_branch": merge_request.source_branch,
                    "target_branch": merge_request.target_branch,
                    "url": merge_request.url,
                })),
                "failed_jobs": failed_jobs.iter().map(|b| json!({
                    "id": b.id,
                    "name": b.name,
                    "stage": b.stage,
                    "failure_reason": b.failure_reason,
                })).collect::<Vec<_>>(),
            })),
        }),
        links,
        images: Vec::new(),
        client: Some("GitLab CI/CD".to_owned()),
        client_url: pipeline_url.map(str::to_owned),
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};
    use http::{HeaderName, HeaderValue, StatusCode};
    use serde_json::Value;

    use super::*;

    use crate::config::Catalog;

    use crate::ingest::{IngestRequest, IngestService};
    use crate::memory::MemoryStore;

    const FAILED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/gitlab/pipeline-failed.json"
    ));
    const PASSED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/gitlab/pipeline-success.json"
    ));
    const DOCS_EXAMPLE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/gitlab/pipeline-docs-example.json"
    ));

    const TOKEN: &str = "a-gitlab-secret-token";

    fn integration(secret: Option<&str>) -> Integration {
        crate::providers::test_support::integration(
            "app-gitlab",
            "checkout",
            ProviderKind::Gitlab,
            "66666666666666666666666666666666",
            secret,
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(HeaderName::from_static(name), HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn inbound<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Inbound<'a> {
        Inbound {
            headers,
            query: None,
            body,
            received_at: Utc::now(),
        }
    }

    fn normalize_as(event: Option<&str>, body: &str) -> Result<Vec<Alert>, InvalidPayload> {
        let headers = match event {
            Some(event) => headers(&[("x-gitlab-event", event)]),
            None => HeaderMap::new(),
        };
        Gitlab.normalize(&inbound(&headers, body.as_bytes()), &integration(None))
    }

    fn one(body: &str) -> Alert {
        let mut alerts = normalize_as(Some(PIPELINE_HOOK), body).unwrap();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        alerts.remove(0)
    }

    fn payload(alert: &Alert) -> &Payload {
        alert.payload.as_ref().unwrap()
    }

    fn with(sample: &str, change: impl FnOnce(&mut Value)) -> String {
        let mut value: Value = serde_json::from_str(sample).unwrap();
        change(&mut value);
        value.to_string()
    }

    #[test]
    fn a_failed_pipeline_triggers_on_project_and_ref() {
        let alert = one(FAILED);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(
            alert.dedup_key.as_str(),
            "gitlab:android-team/customer-app:pipeline:main"
        );
        let p = payload(&alert);
        assert_eq!(
            p.summary,
            "Pipeline #53480 failed on main in android-team/customer-app: ktlint failed"
        );
        // main is the project's default branch.
        assert_eq!(p.severity, Severity::Error);
        assert_eq!(p.source, "android-team/customer-app");
        assert_eq!(p.group.as_deref(), Some("main"));
        assert_eq!(p.timestamp, Some(Utc.with_ymd_and_hms(2024, 6, 19, 3, 6, 41).unwrap()));
        let details = p.custom_details.as_ref().unwrap();
        assert_eq!(details["pipeline_id"], 53480);
        assert_eq!(details["source"], "push");
        assert_eq!(details["user"], "raquezha");
        assert_eq!(details["commit_title"], "Add new feature");
        assert_eq!(details["failed_jobs"][0]["name"], "ktlint");
        assert_eq!(details["failed_jobs"][0]["failure_reason"], "script_failure");
        assert_eq!(details["failed_jobs"].as_array().unwrap().len(), 1);
        let pipeline_url = "https://gitlab.com/android-team/customer-app/-/pipelines/53480";
        assert_eq!(alert.links[0].href, pipeline_url);
        assert_eq!(
            alert.links[1].href,
            "https://gitlab.com/android-team/customer-app/-/commit/e2b9fff8bb1f4a7c7036b348963358bd74457cc2"
        );
        assert_eq!(alert.client_url.as_deref(), Some(pipeline_url));
    }

    #[test]
    fn the_next_passing_pipeline_on_the_ref_resolves_it() {
        let failed = one(FAILED);
        let passed = one(PASSED);
        assert_eq!(passed.event_action, Action::Resolve);
        assert_eq!(passed.dedup_key, failed.dedup_key);
        assert_eq!(
            payload(&passed).summary,
            "Pipeline #53481 passed on main in android-team/customer-app"
        );
        assert!(payload(&passed).timestamp > payload(&failed).timestamp);
    }

    #[test]
    fn the_documented_example_is_a_merge_request_pipeline() {
        let alert = one(DOCS_EXAMPLE);
        assert_eq!(alert.event_action, Action::Resolve);
        assert_eq!(
            alert.dedup_key.as_str(),
            "gitlab:gitlab-org/gitlab-test:pipeline:master"
        );
        let p = payload(&alert);
        assert_eq!(
            p.summary,
            "Pipeline #31 (Pipeline for branch: master) passed on master in gitlab-org/gitlab-test"
        );
        assert_eq!(p.component.as_deref(), Some("Pipeline for branch: master"));
        assert_eq!(
            p.timestamp,
            Some(Utc.with_ymd_and_hms(2016, 8, 12, 15, 26, 29).unwrap())
        );
        assert_eq!(p.custom_details.as_ref().unwrap()["merge_request"]["iid"], 1);
        assert_eq!(alert.links[2].text.as_deref(), Some("Merge request !1"));
    }

    #[test]
    fn scheduled_pipelines_keep_their_own_incident() {
        let scheduled = with(FAILED, |v| v["object_attributes"]["source"] = json!("schedule"));
        let alert = one(&scheduled);
        assert_eq!(
            alert.dedup_key.as_str(),
            "gitlab:android-team/customer-app:schedule:main"
        );
        assert!(payload(&alert).summary.starts_with("Scheduled pipeline #53480 failed"));
        assert_ne!(alert.dedup_key, one(PASSED).dedup_key);
        // Manual runs and retries from the web share the branch's incident.
        let web = with(FAILED, |v| v["object_attributes"]["source"] = json!("web"));
        assert_eq!(one(&web).dedup_key, one(PASSED).dedup_key);
    }

    #[test]
    fn severity_follows_the_ref() {
        let branch = with(FAILED, |v| v["object_attributes"]["ref"] = json!("feature/login"));
        assert_eq!(payload(&one(&branch)).severity, Severity::Warning);
        let tag = with(FAILED, |v| {
            v["object_attributes"]["ref"] = json!("v1.2.0");
            v["object_attributes"]["tag"] = json!(true);
        });
        assert_eq!(payload(&one(&tag)).severity, Severity::Error);
    }

    #[test]
    fn jobs_allowed_to_fail_are_not_blamed() {
        let body = with(FAILED, |v| v["builds"][1]["allow_failure"] = json!(true));
        let alert = one(&body);
        assert_eq!(
            payload(&alert).summary,
            "Pipeline #53480 failed on main in android-team/customer-app"
        );
    }

    #[test]
    fn unfinished_and_canceled_pipelines_are_nothing() {
        for status in ["running", "pending", "canceled", "skipped", "manual", "created"] {
            let body = with(FAILED, |v| v["object_attributes"]["status"] = json!(status));
            assert!(normalize_as(Some(PIPELINE_HOOK), &body).unwrap().is_empty(), "{status}");
        }
    }

    #[test]
    fn other_hooks_and_test_deliveries_are_accepted_without_alerts() {
        for event in ["Push Hook", "Job Hook", "Merge Request Hook", "Test Hook"] {
            assert_eq!(normalize_as(Some(event), "{}").unwrap(), Vec::new(), "{event}");
        }
        // Without the header the body's object_kind decides.
        assert_eq!(normalize_as(None, FAILED).unwrap().len(), 1);
        assert!(normalize_as(None, r#"{"object_kind": "push"}"#).unwrap().is_empty());
    }

    #[test]
    fn broken_events_name_what_is_wrong() {
        let fields = |body: &str| -> Vec<String> {
            normalize_as(Some(PIPELINE_HOOK), body)
                .unwrap_err()
                .errors
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(fields("not json"), ["body"]);
        assert_eq!(fields(r#"{"object_attributes": "#), ["body"]);
        let missing = with(FAILED, |v| {
            v["project"].as_object_mut().unwrap().remove("path_with_namespace");
            v["object_attributes"]["ref"] = Value::Null;
        });
        assert_eq!(
            fields(&missing),
            ["project.path_with_namespace", "object_attributes.ref"]
        );
        let wrong_type = with(FAILED, |v| v["object_attributes"]["id"] = json!("53480"));
        assert_eq!(fields(&wrong_type), ["object_attributes.id"]);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = with(FAILED, |v| {
            v["new_in_gitlab_19"] = json!(true);
            v["object_attributes"]["protected_ref"] = json!(true);
        });
        assert_eq!(one(&body), one(FAILED));
    }

    fn verify(secret: Option<&str>, token: Option<&str>) -> Result<(), SignatureError> {
        let headers = match token {
            Some(token) => headers(&[("x-gitlab-token", token)]),
            None => HeaderMap::new(),
        };
        Gitlab.verify(&inbound(&headers, FAILED.as_bytes()), &integration(secret))
    }

    #[test]
    fn the_secret_token_must_match_once_set() {
        assert_eq!(verify(Some(TOKEN), Some(TOKEN)), Ok(()));
        assert_eq!(
            verify(Some(TOKEN), Some("a-gitlab-secret-tokem")),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify(Some(TOKEN), Some("a-gitlab")), Err(SignatureError::Mismatch));
        assert_eq!(verify(Some(TOKEN), Some("")), Err(SignatureError::Mismatch));
        assert!(matches!(
            verify(Some(TOKEN), None),
            Err(SignatureError::Missing {
                expected: TOKEN_EXPECTED
            })
        ));
        assert_eq!(verify(None, None), Ok(()));
        assert!(tokens_match(b"same", b"same"));
        assert!(!tokens_match(b"same", b"Same"));
    }

    #[test]
    fn the_idempotency_key_outranks_the_event_uuid() {
        let both = headers(&[
            ("idempotency-key", "9ec1b2f0-6f8d-4b3c-a5a0-1f1b1c2d3e4f"),
            ("x-gitlab-event-uuid", "04862d56-febc-4be8-8339-be10e5120f02"),
        ]);
        assert_eq!(Gitlab::delivery_id(&both), Some("9ec1b2f0-6f8d-4b3c-a5a0-1f1b1c2d3e4f"));
        let uuid_only = headers(&[("x-gitlab-event-uuid", "04862d56-febc-4be8-8339-be10e5120f02")]);
        assert_eq!(
            Gitlab::delivery_id(&uuid_only),
            Some("04862d56-febc-4be8-8339-be10e5120f02")
        );
        assert_eq!(Gitlab::delivery_id(&HeaderMap::new()), None);
    }

    const CONFIG: &str = r#"
services:
  - id: checkout
    integrations:
      - {id: app-gitlab, type: gitlab, key: 66666666666666666666666666666666, secret: a-gitlab-secret-token}
"#;

    fn post(event: &str, body: &str, token: Option<&str>) -> (StatusCode, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::new());
        let catalog = Catalog::from_yaml(CONFIG, "test.yaml").unwrap();
        let ingest = IngestService::new(Arc::new(catalog), store.clone(), store.clone());
        let mut pairs = vec![
            ("x-gitlab-event", event),
            ("x-integration-key", "66666666666666666666666666666666"),
        ];
        if let Some(token) = token {
            pairs.push(("x-gitlab-token", token));
        }
        let headers = headers(&pairs);
        let answer = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(ingest.handle(IngestRequest {
                provider: ProviderKind::Gitlab,
                headers: &headers,
                query: None,
                body: body.as_bytes(),
                received_at: Utc::now(),
            }));
        (answer.status(), store)
    }

    #[test]
    fn through_ingest_tokens_and_bodies_get_the_right_answers() {
        let (status, store) = post(PIPELINE_HOOK, FAILED, Some(TOKEN));
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(store.queued_events().len(), 1);
        let (status, store) = post("Push Hook", "{}", Some(TOKEN));
        assert_eq!(status, StatusCode::ACCEPTED);
        assert!(store.queued_events().is_empty());
        assert_eq!(
            post(PIPELINE_HOOK, FAILED, Some("wrong-token-value")).0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(post(PIPELINE_HOOK, FAILED, None).0, StatusCode::UNAUTHORIZED);
        assert_eq!(post(PIPELINE_HOOK, "[1, 2]", Some(TOKEN)).0, StatusCode::BAD_REQUEST);
    }
}
