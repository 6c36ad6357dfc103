//! Bitbucket Cloud repository webhooks, build status events
//! (`X-Event-Key: repo:commit_status_created` and
//! `repo:commit_status_updated`): a FAILED build status opens an incident
//! for its repository, status key and branch; the next SUCCESSFUL status
//! with the same key resolves it. INPROGRESS and STOPPED say nothing.
//!
//! Webhooks with a secret are signed with `X-Hub-Signature: sha256=<hex>`,
//! the HMAC-SHA256 of the raw body. Other event keys (pushes, pull requests,
//! Bitbucket Data Center's `diagnostics:ping` test) are accepted without an
//! incident.
//!
//! <https://support.atlassian.com/bitbucket-cloud/docs/event-payloads/>
//! <https://support.atlassian.com/bitbucket-cloud/docs/manage-webhooks/>

use http::HeaderMap;
use serde::Deserialize;
use serde_json::json;

use crate::config::Integration;
use crate::event::{Action, Alert, Payload, Severity};
use crate::providers::forge;
use crate::providers::{Inbound, InvalidPayload, Provider, ProviderKind};
use crate::signature::{verify_sha256_header, SignatureError};

pub struct Bitbucket;

const EVENT_HEADER: &str = "x-event-key";
const REQUEST_HEADER: &str = "x-request-uuid";
const SIGNATURE_HEADER: &str = "x-hub-signature";
const SIGNATURE_EXPECTED: &str = "X-Hub-Signature: sha256=<hex>";

const INVALID: &str = "the Bitbucket build status event is invalid";

impl Bitbucket {
    /// The request's UUID. Bitbucket resends a request that got a 5xx up to
    /// twice, counting attempts in `X-Attempt-Number`.
    pub fn delivery_id(headers: &HeaderMap) -> Option<&str> {
        forge::header(headers, REQUEST_HEADER)
    }
}

impl Provider for Bitbucket {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Bitbucket
    }

    fn delivery_id<'a>(&self, inbound: &Inbound<'a>) -> Option<&'a str> {
        Bitbucket::delivery_id(inbound.headers)
    }

    fn verify(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<(), SignatureError> {
        match &integration.secret {
            Some(secret) => verify_sha256_header(
                inbound.headers,
                SIGNATURE_HEADER,
                SIGNATURE_EXPECTED,
                inbound.body,
                &[secret],
            ),
            None => Ok(()),
        }
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let event = forge::header(inbound.headers, EVENT_HEADER).ok_or_else(|| {
            InvalidPayload::field(
                "X-Event-Key",
                "is missing: Bitbucket names the event of every request in this header",
            )
        })?;
        if !matches!(event, "repo:commit_status_created" | "repo:commit_status_updated") {
            tracing::debug!(event, "Bitbucket event without incidents");
            return Ok(Vec::new());
        }
        let delivery: CommitStatusDelivery = forge::parse_object(inbound.body)?;
        Ok(commit_status(event, delivery)?.into_iter().collect())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CommitStatusDelivery {
    actor: Option<Actor>,
    repository: Option<Repository>,
    commit_status: Option<CommitStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Actor {
    display_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Repository {
    full_name: Option<String>,
    links: Option<Links>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Links {
    html: Option<Href>,
    commit: Option<Href>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Href {
    href: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CommitStatus {
    key: Option<String>,
    name: Option<String>,
    description: Option<String>,
    /// SUCCESSFUL, FAILED, INPROGRESS or STOPPED.
    state: Option<String>,
    url: Option<String>,
    #[serde(rename = "type")]
    status_type: Option<String>,
    /// The branch the build ran for, when the reporting tool gave one.
    refname: Option<String>,
    updated_on: Option<String>,
    links: Option<Links>,
}

fn commit_status(event: &str, delivery: CommitStatusDelivery) -> Result<Option<Alert>, InvalidPayload> {
    let status = delivery.commit_status.unwrap_or_default();
    let (event_action, outcome) = match status.state.as_deref() {
        Some("FAILED") => (Action::Trigger, "failed"),
        Some("SUCCESSFUL") => (Action::Resolve, "passed"),
        _ => return Ok(None),
    };
    let repository = delivery.repository.unwrap_or_default();

    let mut errors = Vec::new();
    let repo = forge::required(repository.full_name.as_deref(), "repository.full_name", &mut errors);
    let key = forge::required(status.key.as_deref(), "commit_status.key", &mut errors);
    forge::check(errors, INVALID)?;

    let refname = forge::non_blank(status.refname.as_deref());
    let name = forge::non_blank(status.name.as_deref()).unwrap_or(key);
    let description = forge::non_blank(status.description.as_deref());
    let mut summary = format!("Build '{name}' {outcome}");
    if let Some(refname) = refname {
        summary.push_str(&format!(" on {refname}"));
    }
    summary.push_str(&format!(" in {repo}"));
    if let (Action::Trigger, Some(description)) = (event_action, description) {
        summary.push_str(&format!(": {description}"));
    }
    let build_url = forge::non_blank(status.url.as_deref());
    let commit = status
        .links
        .as_ref()
        .and_then(|l| l.commit.as_ref())
        .and_then(|c| forge::non_blank(c.href.as_deref()));
    let repository_url = repository
        .links
        .as_ref()
        .and_then(|l| l.html.as_ref())
        .and_then(|h| h.href.as_deref());

    Ok(Some(Alert {
        event_action,
        // The status key is free text: last, after the branch (empty when
        // the tool gave none), so that no two statuses share a key.
        dedup_key: forge::key(&["bitbucket", repo, refname.unwrap_or(""), key]),
        payload: Some(Payload {
            summary: Payload::truncate_summary(&summary),
            source: repo.to_owned(),
            // Bitbucket does not say which branch is the main one.
            severity: Severity::Error,
            timestamp: forge::parse_time(status.updated_on.as_deref()),
            component: Some(name.to_owned()),
            group: refname.map(str::to_owned),
            class: Some("commit_status".to_owned()),
            custom_details: Some(json!({
                "event_key": event,
                "state": status.state,
                "key": key,
                "name": status.name,
                "description": description,
                "type": status.status_type,
                "refname": refname,
                "url": build_url,
                "commit": commit,
                "actor": delivery.actor.and_then(|a| a.display_name),
            })),
        }),
        links: forge::link(build_url, "Build")
            .into_iter()
            .chain(forge::link(repository_url, "Repository"))
            .collect(),
        images: Vec::new(),
        client: Some("Bitbucket".to_owned()),
        client_url: build_url.map(str::to_owned),
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
    use crate::signature::hmac_sha256_hex;

    const IN_PROGRESS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/bitbucket/commit_status_created-inprogress.json"
    ));
    const FAILED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/bitbucket/commit_status_updated-failed.json"
    ));
    const PASSED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/bitbucket/commit_status_updated-successful.json"
    ));

    const UPDATED: &str = "repo:commit_status_updated";
    const SECRET: &str = "a-bitbucket-webhook-secret";

    fn integration(secret: Option<&str>) -> Integration {
        crate::providers::test_support::integration(
            "repo-bitbucket",
            "checkout",
            ProviderKind::Bitbucket,
            "77777777777777777777777777777777",
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

    fn normalize(event: &str, body: &str) -> Result<Vec<Alert>, InvalidPayload> {
        let headers = headers(&[("x-event-key", event)]);
        Bitbucket.normalize(&inbound(&headers, body.as_bytes()), &integration(None))
    }

    fn one(body: &str) -> Alert {
        let mut alerts = normalize(UPDATED, body).unwrap();
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
    fn a_failed_build_status_triggers_on_repository_and_key() {
        let alert = one(FAILED);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), "bitbucket:team_name/repo_name::mybuildtool");
        let p = payload(&alert);
        assert_eq!(
            p.summary,
            "Build 'Unit Tests (Python)' failed in team_name/repo_name: Tests failed"
        );
        assert_eq!(p.severity, Severity::Error);
        assert_eq!(p.source, "team_name/repo_name");
        assert_eq!(p.component.as_deref(), Some("Unit Tests (Python)"));
        assert_eq!(
            p.timestamp,
            Some(Utc.with_ymd_and_hms(2015, 11, 19, 20, 37, 35).unwrap() + chrono::Duration::microseconds(547563))
        );
        let details = p.custom_details.as_ref().unwrap();
        assert_eq!(details["state"], "FAILED");
        assert_eq!(details["actor"], "Emma");
        assert_eq!(
            details["commit"],
            "http://api.bitbucket.org/2.0/repositories/tk/test/commit/9fec847784abb10b2fa567ee63b85bd238955d0e"
        );
        let build = "https://my-build-tool.com/builds/MY-PROJECT/BUILD-777";
        assert_eq!(alert.links[0].href, build);
        assert_eq!(alert.links[1].href, "https://api.bitbucket.org/bitbucket/bitbucket");
        assert_eq!(alert.client_url.as_deref(), Some(build));
    }

    #[test]
    fn the_next_successful_status_resolves_the_same_key() {
        let failed = one(FAILED);
        let passed = one(PASSED);
        assert_eq!(passed.event_action, Action::Resolve);
        assert_eq!(passed.dedup_key, failed.dedup_key);
        assert_eq!(
            payload(&passed).summary,
            "Build 'Unit Tests (Python)' passed in team_name/repo_name"
        );
        assert!(payload(&passed).timestamp > payload(&failed).timestamp);
    }

    #[test]
    fn the_branch_joins_the_key_when_given() {
        let on_main = with(FAILED, |v| v["commit_status"]["refname"] = json!("main"));
        let alert = one(&on_main);
        assert_eq!(
            alert.dedup_key.as_str(),
            "bitbucket:team_name/repo_name:main:mybuildtool"
        );
        assert_eq!(
            payload(&alert).summary,
            "Build 'Unit Tests (Python)' failed on main in team_name/repo_name: Tests failed"
        );
        let passed_elsewhere = with(PASSED, |v| v["commit_status"]["refname"] = json!("feature"));
        assert_ne!(one(&passed_elsewhere).dedup_key, alert.dedup_key);
    }

    #[test]
    fn in_progress_and_stopped_builds_are_nothing() {
        assert!(normalize("repo:commit_status_created", IN_PROGRESS).unwrap().is_empty());
        let stopped = with(IN_PROGRESS, |v| v["commit_status"]["state"] = json!("STOPPED"));
        assert!(normalize(UPDATED, &stopped).unwrap().is_empty());
        // A status created already failed triggers like an update.
        let created_failed = normalize("repo:commit_status_created", FAILED).unwrap();
        assert_eq!(created_failed[0].event_action, Action::Trigger);
    }

    #[test]
    fn pings_and_other_events_are_accepted_without_alerts() {
        for event in ["diagnostics:ping", "repo:push", "pullrequest:created"] {
            assert_eq!(normalize(event, "{}").unwrap(), Vec::new(), "{event}");
        }
    }

    #[test]
    fn broken_events_name_what_is_wrong() {
        let fields = |event: &str, body: &str| -> Vec<String> {
            normalize(event, body)
                .unwrap_err()
                .errors
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(fields(UPDATED, "{\"commit_status\":"), ["body"]);
        assert_eq!(fields(UPDATED, "[]"), ["body"]);
        let missing = with(FAILED, |v| {
            v["repository"].as_object_mut().unwrap().remove("full_name");
            v["commit_status"]["key"] = json!("  ");
        });
        assert_eq!(fields(UPDATED, &missing), ["repository.full_name", "commit_status.key"]);
        let wrong_type = with(FAILED, |v| v["commit_status"]["state"] = json!(3));
        assert_eq!(fields(UPDATED, &wrong_type), ["commit_status.state"]);

        let error = Bitbucket
            .normalize(&inbound(&HeaderMap::new(), FAILED.as_bytes()), &integration(None))
            .unwrap_err();
        assert_eq!(error.errors[0].field, "X-Event-Key");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = with(FAILED, |v| {
            v["new_field"] = json!({"a": 1});
            v["commit_status"]["commit"] = json!({"hash": "9fec847784ab"});
        });
        assert_eq!(one(&body), one(FAILED));
    }

    fn verify(secret: Option<&str>, signature: Option<&str>, body: &[u8]) -> Result<(), SignatureError> {
        let mut pairs = vec![("x-event-key", UPDATED)];
        if let Some(signature) = signature {
            pairs.push(("x-hub-signature", signature));
        }
        let headers = headers(&pairs);
        Bitbucket.verify(&inbound(&headers, body), &integration(secret))
    }

    #[test]
    fn signatures_are_required_once_a_secret_is_set() {
        let body = FAILED.as_bytes();
        let good = format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), body));
        assert_eq!(verify(Some(SECRET), Some(&good), body), Ok(()));
        assert_eq!(
            verify(Some(SECRET), Some(&good), PASSED.as_bytes()),
            Err(SignatureError::Mismatch)
        );
        let other_secret = format!("sha256={}", hmac_sha256_hex(b"another-secret-entirely", body));
        assert_eq!(
            verify(Some(SECRET), Some(&other_secret), body),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(SECRET), Some("sha1=abcdef"), body),
            Err(SignatureError::Malformed)
        );
        assert!(matches!(
            verify(Some(SECRET), None, body),
            Err(SignatureError::Missing {
                expected: SIGNATURE_EXPECTED
            })
        ));
        assert_eq!(verify(None, None, body), Ok(()));
    }

    #[test]
    fn the_request_uuid_is_the_delivery_id() {
        let headers = headers(&[("x-request-uuid", "d2bd6f4e-6c1a-4f51-9b0b-0c4b1c3e2f1a")]);
        assert_eq!(
            Bitbucket::delivery_id(&headers),
            Some("d2bd6f4e-6c1a-4f51-9b0b-0c4b1c3e2f1a")
        );
        assert_eq!(Bitbucket::delivery_id(&HeaderMap::new()), None);
    }

    const CONFIG: &str = r#"
services:
  - id: checkout
    integrations:
      - {id: repo-bitbucket, type: bitbucket, key: 77777777777777777777777777777777, secret: a-bitbucket-webhook-secret}
"#;

    fn post(event: &str, body: &str, signature: Option<&str>) -> (StatusCode, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::new());
        let catalog = Catalog::from_yaml(CONFIG, "test.yaml").unwrap();
        let ingest = IngestService::new(Arc::new(catalog), store.clone(), store.clone());
        let mut pairs = vec![
            ("x-event-key", event),
            ("x-integration-key", "77777777777777777777777777777777"),
        ];
        if let Some(signature) = signature {
            pairs.push(("x-hub-signature", signature));
        }
        let headers = headers(&pairs);
        let answer = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(ingest.handle(IngestRequest {
                provider: ProviderKind::Bitbucket,
                headers: &headers,
                query: None,
                body: body.as_bytes(),
                received_at: Utc::now(),
            }));
        (answer.status(), store)
    }

    fn sign(body: &str) -> String {
        format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), body.as_bytes()))
    }

    #[test]
    fn through_ingest_signatures_and_bodies_get_the_right_answers() {
        let (status, store) = post(UPDATED, FAILED, Some(&sign(FAILED)));
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(store.queued_events().len(), 1);
        let (status, store) = post("diagnostics:ping", "{}", Some(&sign("{}")));
        assert_eq!(status, StatusCode::ACCEPTED);
        assert!(store.queued_events().is_empty());
        assert_eq!(post(UPDATED, FAILED, Some(&sign(PASSED))).0, StatusCode::UNAUTHORIZED);
        assert_eq!(post(UPDATED, FAILED, None).0, StatusCode::UNAUTHORIZED);
        assert_eq!(post(UPDATED, "nope", Some(&sign("nope"))).0, StatusCode::BAD_REQUEST);
    }
}
