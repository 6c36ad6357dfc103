//! GitHub webhooks (repository, organization or GitHub App): failed GitHub
//! Actions workflow runs and check runs, code scanning alerts and Dependabot
//! alerts open incidents; the next success of the same workflow (or check)
//! on the same branch, or the alert's fix or dismissal, resolves them.
//!
//! `X-GitHub-Event` names the payload. Deliveries are signed with
//! `X-Hub-Signature-256: sha256=<hex>`, the HMAC-SHA256 of the raw body under
//! the webhook's secret. Bodies are JSON, or a form whose `payload` field
//! holds the JSON when the webhook's content type is
//! `application/x-www-form-urlencoded`; the signature covers the body as sent.
//!
//! <https://docs.github.com/en/webhooks/webhook-events-and-payloads>
//! <https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries>

use std::borrow::Cow;

use http::HeaderMap;
use serde::Deserialize;
use serde_json::json;

use crate::config::Integration;
use crate::event::{Action, Alert, FieldError, Payload, Severity};
use crate::providers::forge;
use crate::providers::{Inbound, InvalidPayload, Provider, ProviderKind};
use crate::signature::{verify_sha256_header, SignatureError};

pub struct Github;

const EVENT_HEADER: &str = "x-github-event";
const DELIVERY_HEADER: &str = "x-github-delivery";
const SIGNATURE_HEADER: &str = "x-hub-signature-256";
const SIGNATURE_EXPECTED: &str = "X-Hub-Signature-256: sha256=<hex>";

const INVALID: &str = "the GitHub delivery is invalid";

impl Github {
    /// The delivery's GUID, which a redelivery keeps: the id to derive a
    /// deterministic event id from (`EventId::from_delivery`).
    pub fn delivery_id(headers: &HeaderMap) -> Option<&str> {
        forge::header(headers, DELIVERY_HEADER)
    }
}

impl Provider for Github {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Github
    }

    fn delivery_id<'a>(&self, inbound: &Inbound<'a>) -> Option<&'a str> {
        Github::delivery_id(inbound.headers)
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
                "X-GitHub-Event",
                "is missing: GitHub names the event of every delivery in this header",
            )
        })?;
        let read: fn(&[u8]) -> Result<Option<Alert>, InvalidPayload> = match event {
            "workflow_run" => workflow_run,
            "check_run" => check_run,
            "code_scanning_alert" => code_scanning_alert,
            "dependabot_alert" => dependabot_alert,
            // `ping` on creation, and every event Tocsin has no incident for:
            // accepted, so that GitHub shows the delivery as successful.
            _ => {
                tracing::debug!(event, "GitHub event without incidents");
                return Ok(Vec::new());
            }
        };
        let body = json_body(inbound.body)?;
        Ok(read(&body)?.into_iter().collect())
    }
}

/// The JSON of a delivery: the body itself, or the `payload` field of a
/// form body.
fn json_body(body: &[u8]) -> Result<Cow<'_, [u8]>, InvalidPayload> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{' | b'[') | None => Ok(Cow::Borrowed(body)),
        Some(_) => form_urlencoded::parse(body)
            .find(|(name, _)| name == "payload")
            .map(|(_, json)| Cow::Owned(json.into_owned().into_bytes()))
            .ok_or_else(|| {
                InvalidPayload::field(
                    "payload",
                    "is missing: a form-encoded GitHub delivery carries its JSON in the payload field",
                )
            }),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Repository {
    full_name: Option<String>,
    html_url: Option<String>,
    default_branch: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Account {
    login: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WorkflowRunDelivery {
    action: Option<String>,
    workflow_run: Option<WorkflowRun>,
    workflow: Option<Workflow>,
    repository: Option<Repository>,
    sender: Option<Account>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WorkflowRun {
    id: Option<u64>,
    name: Option<String>,
    display_title: Option<String>,
    head_branch: Option<String>,
    head_sha: Option<String>,
    /// What started the run: push, pull_request, schedule …
    event: Option<String>,
    conclusion: Option<String>,
    workflow_id: Option<u64>,
    run_number: Option<u64>,
    run_attempt: Option<u64>,
    html_url: Option<String>,
    updated_at: Option<String>,
    head_repository: Option<Repository>,
    triggering_actor: Option<Account>,
    head_commit: Option<HeadCommit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Workflow {
    id: Option<u64>,
    name: Option<String>,
    path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HeadCommit {
    message: Option<String>,
}

/// Conclusions that mean the run or check failed, with how a summary says it.
fn failure_words(conclusion: &str) -> Option<&'static str> {
    match conclusion {
        "failure" => Some("failed"),
        "timed_out" => Some("timed out"),
        "startup_failure" => Some("failed to start"),
        _ => None,
    }
}

/// Trigger on a failed run, resolve on a successful one; cancelled, skipped,
/// neutral and unfinished runs say nothing about the last failure.
fn build_action(action: Option<&str>, conclusion: Option<&str>) -> Option<(Action, &'static str)> {
    if action != Some("completed") {
        return None;
    }
    match conclusion? {
        "success" => Some((Action::Resolve, "succeeded")),
        other => failure_words(other).map(|words| (Action::Trigger, words)),
    }
}

/// The branch as it appears in keys and summaries: a pull request's branch
/// from a fork is named with its repository, so that a fork's `main` is not
/// the base repository's `main`. The flag says whether it came from a fork.
fn branch_label(branch: &str, head_repository: Option<&Repository>, repository: &str) -> (String, bool) {
    match head_repository.and_then(|r| forge::non_blank(r.full_name.as_deref())) {
        Some(head) if head != repository => (format!("{head}:{branch}"), true),
        _ => (branch.to_owned(), false),
    }
}

fn workflow_run(body: &[u8]) -> Result<Option<Alert>, InvalidPayload> {
    let delivery: WorkflowRunDelivery = forge::parse_object(body)?;
    let run = delivery.workflow_run.unwrap_or_default();
    let Some((event_action, outcome)) = build_action(delivery.action.as_deref(), run.conclusion.as_deref()) else {
        return Ok(None);
    };
    let repository = delivery.repository.unwrap_or_default();
    let workflow = delivery.workflow.unwrap_or_default();

    let mut errors = Vec::new();
    let repo = forge::required(repository.full_name.as_deref(), "repository.full_name", &mut errors);
    let branch = forge::required(run.head_branch.as_deref(), "workflow_run.head_branch", &mut errors);
    // The id survives renaming the workflow; its name is the fallback.
    let name = forge::non_blank(run.name.as_deref())
        .or(forge::non_blank(workflow.name.as_deref()))
        .or(forge::non_blank(workflow.path.as_deref()));
    let workflow_key = match (run.workflow_id.or(workflow.id), name) {
        (Some(id), _) => id.to_string(),
        (None, Some(name)) => name.to_owned(),
        (None, None) => {
            errors.push(FieldError::new("workflow_run.workflow_id", "is missing"));
            String::new()
        }
    };
    forge::check(errors, INVALID)?;

    let name = name
        .map(str::to_owned)
        .unwrap_or_else(|| format!("workflow {workflow_key}"));
    let (branch_label, from_fork) = branch_label(branch, run.head_repository.as_ref(), repo);
    let severity = forge::build_severity((!from_fork).then_some(branch), repository.default_branch.as_deref());
    let actor = run
        .triggering_actor
        .and_then(|a| a.login)
        .or(delivery.sender.and_then(|a| a.login));

    Ok(Some(Alert {
        event_action,
        dedup_key: forge::key(&["github", repo, "workflow", &branch_label, &workflow_key]),
        payload: Some(Payload {
            summary: Payload::truncate_summary(&format!("Workflow '{name}' {outcome} on {branch_label} in {repo}")),
            source: repo.to_owned(),
            severity,
            timestamp: forge::parse_time(run.updated_at.as_deref()),
            component: Some(name.clone()),
            group: Some(branch_label.clone()),
            class: Some("workflow_run".to_owned()),
            custom_details: Some(json!({
                "event": "workflow_run",
                "conclusion": run.conclusion,
                "workflow": name,
                "workflow_id": run.workflow_id.or(workflow.id),
                "run_id": run.id,
                "run_number": run.run_number,
                "run_attempt": run.run_attempt,
                "display_title": run.display_title,
                "head_branch": branch,
                "head_sha": run.head_sha,
                "triggered_by": run.event,
                "actor": actor,
                "commit_message": run.head_commit.and_then(|c| c.message),
                "html_url": run.html_url,
            })),
        }),
        links: forge::link(run.html_url.as_deref(), "Workflow run")
            .into_iter()
            .chain(forge::link(repository.html_url.as_deref(), "Repository"))
            .collect(),
        images: Vec::new(),
        client: Some("GitHub Actions".to_owned()),
        client_url: forge::non_blank(run.html_url.as_deref()).map(str::to_owned),
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CheckRunDelivery {
    action: Option<String>,
    check_run: Option<CheckRun>,
    repository: Option<Repository>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CheckRun {
    id: Option<u64>,
    name: Option<String>,
    head_sha: Option<String>,
    conclusion: Option<String>,
    html_url: Option<String>,
    details_url: Option<String>,
    completed_at: Option<String>,
    output: Option<CheckOutput>,
    check_suite: Option<CheckSuite>,
    app: Option<App>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CheckOutput {
    title: Option<String>,
    summary: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CheckSuite {
    head_branch: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct App {
    name: Option<String>,
}

fn check_run(body: &[u8]) -> Result<Option<Alert>, InvalidPayload> {
    let delivery: CheckRunDelivery = forge::parse_object(body)?;
    let check = delivery.check_run.unwrap_or_default();
    let Some((event_action, outcome)) = build_action(delivery.action.as_deref(), check.conclusion.as_deref()) else {
        return Ok(None);
    };
    let repository = delivery.repository.unwrap_or_default();

    let mut errors = Vec::new();
    let repo = forge::required(repository.full_name.as_deref(), "repository.full_name", &mut errors);
    let name = forge::required(check.name.as_deref(), "check_run.name", &mut errors);
    let head_branch = forge::non_blank(check.check_suite.as_ref().and_then(|s| s.head_branch.as_deref()));
    // A check of a fork's pull request has no branch in this repository;
    // its commit is the best name left, resolved only by a later success
    // on the same commit.
    let branch = match head_branch {
        Some(branch) => branch.to_owned(),
        None => format!(
            "sha:{}",
            forge::required(check.head_sha.as_deref(), "check_run.head_sha", &mut errors)
        ),
    };
    forge::check(errors, INVALID)?;

    let output_title = check.output.as_ref().and_then(|o| forge::non_blank(o.title.as_deref()));
    let summary = match output_title {
        Some(title) => format!("Check '{name}' {outcome} on {branch} in {repo}: {title}"),
        None => format!("Check '{name}' {outcome} on {branch} in {repo}"),
    };
    let html_url = forge::non_blank(check.html_url.as_deref());

    Ok(Some(Alert {
        event_action,
        dedup_key: forge::key(&["github", repo, "check", &branch, name]),
        payload: Some(Payload {
            summary: Payload::truncate_summary(&summary),
            source: repo.to_owned(),
            severity: forge::build_severity(head_branch, repository.default_branch.as_deref()),
            timestamp: forge::parse_time(check.completed_at.as_deref()),
            component: Some(name.to_owned()),
            group: Some(branch.clone()),
            class: Some("check_run".to_owned()),
            custom_details: Some(json!({
                "event": "check_run",
                "conclusion": check.conclusion,
                "check": name,
                "check_run_id": check.id,
                "app": check.app.and_then(|a| a.name),
                "head_branch": head_branch,
                "head_sha": check.head_sha,
                "output_title": output_title,
                "output_summary": check.output.as_ref().and_then(|o| o.summary.as_deref()),
                "html_url": html_url,
                "details_url": check.details_url,
            })),
        }),
        links: forge::link(html_url, "Check run")
            .into_iter()
            .chain(forge::link(check.details_url.as_deref(), "Details"))
            .collect(),
        images: Vec::new(),
        client: Some("GitHub Checks".to_owned()),
        client_url: html_url.map(str::to_owned),
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CodeScanningDelivery {
    action: Option<String>,
    alert: Option<CodeScanningAlert>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    commit_oid: Option<String>,
    repository: Option<Repository>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CodeScanningAlert {
    number: Option<u64>,
    html_url: Option<String>,
    state: Option<String>,
    created_at: Option<String>,
    fixed_at: Option<String>,
    dismissed_at: Option<String>,
    dismissed_reason: Option<String>,
    rule: Option<Rule>,
    tool: Option<Tool>,
    most_recent_instance: Option<Instance>,
    instances: Option<Vec<Instance>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Rule {
    id: Option<String>,
    name: Option<String>,
    description: Option<String>,
    /// error, warning, note or none: how sure the tool is of a problem.
    severity: Option<String>,
    /// critical, high, medium or low, for security rules.
    security_severity_level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Tool {
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Instance {
    location: Option<Location>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Location {
    path: Option<String>,
    start_line: Option<u64>,
}

/// GitHub's advisory and security-rule levels.
fn security_severity(level: Option<&str>) -> Option<Severity> {
    match forge::non_blank(level)?.to_ascii_lowercase().as_str() {
        "critical" => Some(Severity::Critical),
        "high" => Some(Severity::Error),
        "medium" | "moderate" => Some(Severity::Warning),
        "low" => Some(Severity::Info),
        _ => None,
    }
}

fn code_scanning_alert(body: &[u8]) -> Result<Option<Alert>, InvalidPayload> {
    let delivery: CodeScanningDelivery = forge::parse_object(body)?;
    let alert = delivery.alert.unwrap_or_default();
    let event_action = match delivery.action.as_deref() {
        Some("created" | "reopened" | "reopened_by_user" | "appeared_in_branch") => Action::Trigger,
        Some("fixed" | "closed_by_user" | "dismissed") => Action::Resolve,
        _ => return Ok(None),
    };
    let repository = delivery.repository.unwrap_or_default();

    let mut errors = Vec::new();
    let repo = forge::required(repository.full_name.as_deref(), "repository.full_name", &mut errors);
    if alert.number.is_none() {
        errors.push(FieldError::new("alert.number", "is missing"));
    }
    forge::check(errors, INVALID)?;
    let number = alert.number.unwrap_or_default().to_string();

    let rule = alert.rule.unwrap_or_default();
    let rule_id = forge::non_blank(rule.id.as_deref());
    let title = forge::non_blank(rule.description.as_deref())
        .or(forge::non_blank(rule.name.as_deref()))
        .or(rule_id)
        .unwrap_or("code scanning finding");
    let summary = match event_action {
        Action::Resolve => format!("Code scanning alert #{number} in {repo} closed: {title}"),
        _ => format!("Code scanning alert #{number} in {repo}: {title}"),
    };
    // How serious the finding is, then how sure the tool is of it.
    let severity = security_severity(rule.security_severity_level.as_deref())
        .or(match forge::non_blank(rule.severity.as_deref()) {
            Some("error") => Some(Severity::Error),
            Some("warning") => Some(Severity::Warning),
            Some("note" | "none") => Some(Severity::Info),
            _ => None,
        })
        .unwrap_or(Severity::Warning);
    // Only the action's own time: a reopened alert's created_at would order
    // the reopening before the fix it undoes.
    let timestamp = forge::parse_time(match delivery.action.as_deref() {
        Some("created") => alert.created_at.as_deref(),
        Some("fixed") => alert.fixed_at.as_deref(),
        Some("closed_by_user" | "dismissed") => alert.dismissed_at.as_deref(),
        _ => None,
    });
    let instance = alert
        .most_recent_instance
        .or_else(|| alert.instances.and_then(|all| all.into_iter().next()));
    let location = instance.and_then(|i| i.location).map(|l| match l.start_line {
        Some(line) => format!("{}:{line}", l.path.unwrap_or_default()),
        None => l.path.unwrap_or_default(),
    });
    let tool = alert.tool.and_then(|t| t.name);

    Ok(Some(Alert {
        event_action,
        dedup_key: forge::key(&["github", repo, "code-scanning", &number]),
        payload: Some(Payload {
            summary: Payload::truncate_summary(&summary),
            source: repo.to_owned(),
            severity,
            timestamp,
            component: tool.clone(),
            group: None,
            class: rule_id.map(str::to_owned),
            custom_details: Some(json!({
                "event": "code_scanning_alert",
                "action": delivery.action,
                "alert_number": alert.number,
                "state": alert.state,
                "rule": rule_id,
                "rule_severity": rule.severity,
                "security_severity_level": rule.security_severity_level,
                "tool": tool,
                "location": location,
                "ref": delivery.git_ref,
                "commit_oid": delivery.commit_oid,
                "dismissed_reason": alert.dismissed_reason,
                "html_url": alert.html_url,
            })),
        }),
        links: forge::link(alert.html_url.as_deref(), "Code scanning alert")
            .into_iter()
            .collect(),
        images: Vec::new(),
        client: Some("GitHub code scanning".to_owned()),
        client_url: forge::non_blank(alert.html_url.as_deref()).map(str::to_owned),
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DependabotDelivery {
    action: Option<String>,
    alert: Option<DependabotAlert>,
    repository: Option<Repository>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DependabotAlert {
    number: Option<u64>,
    state: Option<String>,
    html_url: Option<String>,
    created_at: Option<String>,
    fixed_at: Option<String>,
    dismissed_at: Option<String>,
    auto_dismissed_at: Option<String>,
    dismissed_reason: Option<String>,
    dependency: Option<Dependency>,
    security_advisory: Option<Advisory>,
    security_vulnerability: Option<Vulnerability>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Dependency {
    package: Option<Package>,
    manifest_path: Option<String>,
    scope: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Package {
    ecosystem: Option<String>,
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Advisory {
    ghsa_id: Option<String>,
    cve_id: Option<String>,
    summary: Option<String>,
    severity: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Vulnerability {
    severity: Option<String>,
    vulnerable_version_range: Option<String>,
    first_patched_version: Option<PatchedVersion>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PatchedVersion {
    identifier: Option<String>,
}

fn dependabot_alert(body: &[u8]) -> Result<Option<Alert>, InvalidPayload> {
    let delivery: DependabotDelivery = forge::parse_object(body)?;
    let alert = delivery.alert.unwrap_or_default();
    let event_action = match delivery.action.as_deref() {
        Some("created" | "reopened" | "auto_reopened" | "reintroduced") => Action::Trigger,
        Some("fixed" | "dismissed" | "auto_dismissed") => Action::Resolve,
        _ => return Ok(None),
    };
    let repository = delivery.repository.unwrap_or_default();

    let mut errors = Vec::new();
    let repo = forge::required(repository.full_name.as_deref(), "repository.full_name", &mut errors);
    if alert.number.is_none() {
        errors.push(FieldError::new("alert.number", "is missing"));
    }
    forge::check(errors, INVALID)?;
    let number = alert.number.unwrap_or_default().to_string();

    let advisory = alert.security_advisory.unwrap_or_default();
    let vulnerability = alert.security_vulnerability.unwrap_or_default();
    let dependency = alert.dependency.unwrap_or_default();
    let package = dependency.package.unwrap_or_default();
    let package_name = forge::non_blank(package.name.as_deref());
    let title = forge::non_blank(advisory.summary.as_deref())
        .or(forge::non_blank(advisory.ghsa_id.as_deref()))
        .unwrap_or("vulnerable dependency");
    let what = match (forge::non_blank(package.ecosystem.as_deref()), package_name) {
        (Some(ecosystem), Some(name)) => format!(" ({ecosystem} {name})"),
        (None, Some(name)) => format!(" ({name})"),
        _ => String::new(),
    };
    let summary = match event_action {
        Action::Resolve => format!("Dependabot alert #{number} in {repo} closed: {title}{what}"),
        _ => format!("Dependabot alert #{number} in {repo}: {title}{what}"),
    };
    let severity = security_severity(advisory.severity.as_deref())
        .or(security_severity(vulnerability.severity.as_deref()))
        .unwrap_or(Severity::Warning);
    // Only the action's own time, as for code scanning.
    let timestamp = forge::parse_time(match delivery.action.as_deref() {
        Some("created") => alert.created_at.as_deref(),
        Some("fixed") => alert.fixed_at.as_deref(),
        Some("dismissed") => alert.dismissed_at.as_deref(),
        Some("auto_dismissed") => alert.auto_dismissed_at.as_deref(),
        _ => None,
    });

    Ok(Some(Alert {
        event_action,
        dedup_key: forge::key(&["github", repo, "dependabot", &number]),
        payload: Some(Payload {
            summary: Payload::truncate_summary(&summary),
            source: repo.to_owned(),
            severity,
            timestamp,
            component: package_name.map(str::to_owned),
            group: None,
            class: forge::non_blank(advisory.ghsa_id.as_deref()).map(str::to_owned),
            custom_details: Some(json!({
                "event": "dependabot_alert",
                "action": delivery.action,
                "alert_number": alert.number,
                "state": alert.state,
                "ghsa_id": advisory.ghsa_id,
                "cve_id": advisory.cve_id,
                "advisory_severity": advisory.severity,
                "ecosystem": package.ecosystem,
                "package": package.name,
                "manifest_path": dependency.manifest_path,
                "scope": dependency.scope,
                "vulnerable_version_range": vulnerability.vulnerable_version_range,
                "first_patched_version": vulnerability.first_patched_version.and_then(|v| v.identifier),
                "dismissed_reason": alert.dismissed_reason,
                "html_url": alert.html_url,
            })),
        }),
        links: forge::link(alert.html_url.as_deref(), "Dependabot alert")
            .into_iter()
            .collect(),
        images: Vec::new(),
        client: Some("GitHub Dependabot".to_owned()),
        client_url: forge::non_blank(alert.html_url.as_deref()).map(str::to_owned),
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

    macro_rules! sample {
        ($name:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../events/github/",
                $name
            ))
        };
    }

    const RUN_FAILED: &str = sample!("workflow_run-failure.json");
    const RUN_SUCCEEDED: &str = sample!("workflow_run-success.json");
    const CHECK_SUCCEEDED: &str = sample!("check_run-success.json");
    const SCAN_CREATED: &str = sample!("code_scanning_alert-created.json");
    const SCAN_FIXED: &str = sample!("code_scanning_alert-fixed.json");
    const DEPENDABOT_CREATED: &str = sample!("dependabot_alert-created.json");
    const DEPENDABOT_FIXED: &str = sample!("dependabot_alert-fixed.json");
    const PING: &str = sample!("ping.json");

    const SECRET: &str = "a-github-webhook-secret";

    fn integration(secret: Option<&str>) -> Integration {
        crate::providers::test_support::integration(
            "repo-github",
            "checkout",
            ProviderKind::Github,
            "55555555555555555555555555555555",
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
        let headers = headers(&[("x-github-event", event)]);
        Github.normalize(&inbound(&headers, body.as_bytes()), &integration(None))
    }

    fn one(event: &str, body: &str) -> Alert {
        let mut alerts = normalize(event, body).unwrap();
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

    fn fields(error: InvalidPayload) -> Vec<String> {
        error.errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_failed_workflow_run_triggers_on_repository_workflow_and_branch() {
        let alert = one("workflow_run", RUN_FAILED);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(
            alert.dedup_key.as_str(),
            "github:ideacrew/active-branch-tracker:workflow:trunk:8539638"
        );
        let p = payload(&alert);
        assert_eq!(
            p.summary,
            "Workflow 'test cloud functions' failed on trunk in ideacrew/active-branch-tracker"
        );
        // trunk is the repository's default branch.
        assert_eq!(p.severity, Severity::Error);
        assert_eq!(p.source, "ideacrew/active-branch-tracker");
        assert_eq!(p.component.as_deref(), Some("test cloud functions"));
        assert_eq!(p.group.as_deref(), Some("trunk"));
        assert_eq!(
            p.timestamp,
            Some(Utc.with_ymd_and_hms(2021, 10, 8, 18, 58, 53).unwrap())
        );
        let details = p.custom_details.as_ref().unwrap();
        assert_eq!(details["run_id"], 1321542128);
        assert_eq!(details["head_sha"], "b440c373712f27d84aa428703e55cdc95ef41ea3");
        assert_eq!(details["commit_message"], "add workflow run event to webhook handler");
        assert_eq!(details["triggered_by"], "push");
        assert_eq!(details["actor"], "markgoho");
        let run_url = "https://github.com/ideacrew/active-branch-tracker/actions/runs/1321542128";
        assert_eq!(alert.links[0].href, run_url);
        assert_eq!(alert.links[1].href, "https://github.com/ideacrew/active-branch-tracker");
        assert_eq!(alert.client.as_deref(), Some("GitHub Actions"));
        assert_eq!(alert.client_url.as_deref(), Some(run_url));
    }

    #[test]
    fn the_next_success_resolves_the_same_key() {
        let failed = one("workflow_run", RUN_FAILED);
        let succeeded = one("workflow_run", RUN_SUCCEEDED);
        assert_eq!(succeeded.event_action, Action::Resolve);
        assert_eq!(succeeded.dedup_key, failed.dedup_key);
        assert_eq!(
            payload(&succeeded).summary,
            "Workflow 'test cloud functions' succeeded on trunk in ideacrew/active-branch-tracker"
        );
    }

    #[test]
    fn timeouts_and_startup_failures_trigger_too() {
        for (conclusion, words) in [("timed_out", "timed out"), ("startup_failure", "failed to start")] {
            let body = with(RUN_FAILED, |v| v["workflow_run"]["conclusion"] = json!(conclusion));
            let alert = one("workflow_run", &body);
            assert_eq!(alert.event_action, Action::Trigger);
            assert!(payload(&alert).summary.contains(words), "{}", payload(&alert).summary);
        }
    }

    #[test]
    fn unfinished_cancelled_and_skipped_runs_are_nothing() {
        for conclusion in [json!("cancelled"), json!("skipped"), json!("neutral"), Value::Null] {
            let body = with(RUN_FAILED, |v| v["workflow_run"]["conclusion"] = conclusion.clone());
            assert!(normalize("workflow_run", &body).unwrap().is_empty(), "{conclusion}");
        }
        for action in ["requested", "in_progress"] {
            let body = with(RUN_FAILED, |v| v["action"] = json!(action));
            assert!(normalize("workflow_run", &body).unwrap().is_empty(), "{action}");
        }
    }

    #[test]
    fn other_branches_are_warnings_and_forks_are_keyed_apart() {
        let feature = with(RUN_FAILED, |v| v["workflow_run"]["head_branch"] = json!("feature/x"));
        let alert = one("workflow_run", &feature);
        assert_eq!(payload(&alert).severity, Severity::Warning);
        assert!(alert.dedup_key.as_str().ends_with(":workflow:feature/x:8539638"));

        let fork = with(RUN_FAILED, |v| {
            v["workflow_run"]["head_repository"]["full_name"] = json!("someone/active-branch-tracker")
        });
        let alert = one("workflow_run", &fork);
        assert_eq!(
            alert.dedup_key.as_str(),
            "github:ideacrew/active-branch-tracker:workflow:someone/active-branch-tracker:trunk:8539638"
        );
        // A fork's trunk is not the repository's default branch.
        assert_eq!(payload(&alert).severity, Severity::Warning);
    }

    #[test]
    fn an_unnamed_run_takes_the_workflows_name() {
        let body = with(RUN_FAILED, |v| v["workflow_run"]["name"] = json!(""));
        let alert = one("workflow_run", &body);
        assert_eq!(payload(&alert).component.as_deref(), Some("test cloud functions"));
        let no_ids = with(RUN_FAILED, |v| {
            v["workflow_run"].as_object_mut().unwrap().remove("workflow_id");
            v["workflow"].as_object_mut().unwrap().remove("id");
        });
        assert!(one("workflow_run", &no_ids)
            .dedup_key
            .as_str()
            .ends_with(":workflow:trunk:test cloud functions"));
    }

    #[test]
    fn check_runs_trigger_and_resolve_per_check_and_branch() {
        let succeeded = one("check_run", CHECK_SUCCEEDED);
        assert_eq!(succeeded.event_action, Action::Resolve);
        assert_eq!(
            succeeded.dedup_key.as_str(),
            "github:Codertocat/Hello-World:check:changes:Octocoders-linter"
        );

        let failed_body = with(CHECK_SUCCEEDED, |v| {
            v["check_run"]["conclusion"] = json!("failure");
            v["check_run"]["output"]["title"] = json!("3 offenses");
        });
        let failed = one("check_run", &failed_body);
        assert_eq!(failed.event_action, Action::Trigger);
        assert_eq!(failed.dedup_key, succeeded.dedup_key);
        let p = payload(&failed);
        assert_eq!(
            p.summary,
            "Check 'Octocoders-linter' failed on changes in Codertocat/Hello-World: 3 offenses"
        );
        // changes is not master, the default branch.
        assert_eq!(p.severity, Severity::Warning);
        assert_eq!(
            p.timestamp,
            Some(Utc.with_ymd_and_hms(2019, 5, 15, 15, 21, 12).unwrap())
        );
        assert_eq!(p.custom_details.as_ref().unwrap()["app"], "octocoders-linter");
        assert_eq!(
            failed.links[0].href,
            "https://github.com/Codertocat/Hello-World/runs/128620228"
        );
        assert_eq!(failed.links[1].href, "https://octocoders.io");

        let rerequested = with(CHECK_SUCCEEDED, |v| v["action"] = json!("rerequested"));
        assert!(normalize("check_run", &rerequested).unwrap().is_empty());
    }

    #[test]
    fn a_check_without_a_branch_is_keyed_by_its_commit() {
        let body = with(CHECK_SUCCEEDED, |v| {
            v["check_run"]["conclusion"] = json!("failure");
            v["check_run"]["check_suite"]["head_branch"] = Value::Null;
        });
        let alert = one("check_run", &body);
        assert_eq!(
            alert.dedup_key.as_str(),
            "github:Codertocat/Hello-World:check:sha:ec26c3e57ca3a959ca5aad62de7213c562f8c821:Octocoders-linter"
        );
        assert_eq!(payload(&alert).severity, Severity::Warning);
    }

    #[test]
    fn code_scanning_alerts_open_and_close_by_number() {
        let created = one("code_scanning_alert", SCAN_CREATED);
        assert_eq!(created.event_action, Action::Trigger);
        assert_eq!(
            created.dedup_key.as_str(),
            "github:Codertocat/Hello-World:code-scanning:10"
        );
        let p = payload(&created);
        assert_eq!(
            p.summary,
            "Code scanning alert #10 in Codertocat/Hello-World: Query built from user-controlled sources"
        );
        assert_eq!(p.severity, Severity::Error);
        assert_eq!(p.class.as_deref(), Some("java/sql-injection"));
        assert_eq!(p.component.as_deref(), Some("CodeQL"));
        assert_eq!(p.timestamp, Some(Utc.with_ymd_and_hms(2021, 2, 11, 3, 10, 43).unwrap()));
        assert_eq!(
            p.custom_details.as_ref().unwrap()["location"],
            "src/main/java/com/github/demo/service/BookService.java:84"
        );
        assert_eq!(
            created.links[0].href,
            "https://github.com/Codertocat/Hello-World/security/code-scanning/10"
        );

        let fixed = one("code_scanning_alert", SCAN_FIXED);
        assert_eq!(fixed.event_action, Action::Resolve);
        assert_eq!(fixed.dedup_key, created.dedup_key);
        // The sample has no fixed_at: the receive time orders it.
        assert_eq!(payload(&fixed).timestamp, None);

        for (action, expected) in [
            ("reopened", Action::Trigger),
            ("appeared_in_branch", Action::Trigger),
            ("closed_by_user", Action::Resolve),
        ] {
            let body = with(SCAN_CREATED, |v| v["action"] = json!(action));
            assert_eq!(one("code_scanning_alert", &body).event_action, expected, "{action}");
        }
        let assigned = with(SCAN_CREATED, |v| v["action"] = json!("updated_assignment"));
        assert!(normalize("code_scanning_alert", &assigned).unwrap().is_empty());
    }

    #[test]
    fn the_security_level_outranks_the_rule_severity() {
        for (level, expected) in [
            ("critical", Severity::Critical),
            ("high", Severity::Error),
            ("medium", Severity::Warning),
            ("low", Severity::Info),
        ] {
            let body = with(SCAN_CREATED, |v| {
                v["alert"]["rule"]["security_severity_level"] = json!(level)
            });
            assert_eq!(
                payload(&one("code_scanning_alert", &body)).severity,
                expected,
                "{level}"
            );
        }
        let note = with(SCAN_CREATED, |v| v["alert"]["rule"]["severity"] = json!("note"));
        assert_eq!(payload(&one("code_scanning_alert", &note)).severity, Severity::Info);
    }

    #[test]
    fn dependabot_alerts_open_and_close_by_number_with_the_advisory_severity() {
        let created = one("dependabot_alert", DEPENDABOT_CREATED);
        assert_eq!(created.event_action, Action::Trigger);
        assert_eq!(created.dedup_key.as_str(), "github:wolfy1339/pika-pack:dependabot:20");
        let p = payload(&created);
        assert_eq!(
            p.summary,
            "Dependabot alert #20 in wolfy1339/pika-pack: semver vulnerable to Regular Expression Denial of Service (npm semver)"
        );
        assert_eq!(p.severity, Severity::Warning);
        assert_eq!(p.class.as_deref(), Some("GHSA-c2qf-rxjj-qqgw"));
        assert_eq!(p.component.as_deref(), Some("semver"));
        let details = p.custom_details.as_ref().unwrap();
        assert_eq!(details["cve_id"], "CVE-2022-25883");
        assert_eq!(details["first_patched_version"], "7.5.2");

        let fixed = one("dependabot_alert", DEPENDABOT_FIXED);
        assert_eq!(fixed.event_action, Action::Resolve);
        assert_eq!(fixed.dedup_key.as_str(), "github:octocat/hello-world:dependabot:1");
        assert_eq!(
            payload(&fixed).timestamp,
            Some(Utc.with_ymd_and_hms(2022, 6, 15, 13, 55, 40).unwrap())
        );

        for (action, expected) in [
            ("dismissed", Action::Resolve),
            ("auto_dismissed", Action::Resolve),
            ("reopened", Action::Trigger),
        ] {
            let body = with(DEPENDABOT_CREATED, |v| v["action"] = json!(action));
            let alert = one("dependabot_alert", &body);
            assert_eq!(alert.event_action, expected, "{action}");
            assert_eq!(alert.dedup_key, created.dedup_key);
        }
        let critical = with(DEPENDABOT_CREATED, |v| {
            v["alert"]["security_advisory"]["severity"] = json!("critical")
        });
        assert_eq!(
            payload(&one("dependabot_alert", &critical)).severity,
            Severity::Critical
        );
    }

    #[test]
    fn pings_and_other_events_are_accepted_without_alerts() {
        assert_eq!(normalize("ping", PING).unwrap(), Vec::new());
        assert_eq!(normalize("push", "{}").unwrap(), Vec::new());
        // An event Tocsin ignores is not parsed, whatever it carries.
        assert_eq!(normalize("issues", "not json").unwrap(), Vec::new());
    }

    #[test]
    fn form_encoded_deliveries_carry_the_json_in_payload() {
        let form: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", RUN_FAILED)
            .finish();
        assert_eq!(
            normalize("workflow_run", &form).unwrap(),
            normalize("workflow_run", RUN_FAILED).unwrap()
        );
        assert_eq!(fields(normalize("workflow_run", "other=1").unwrap_err()), ["payload"]);
    }

    #[test]
    fn broken_deliveries_name_what_is_wrong() {
        assert_eq!(fields(normalize("workflow_run", "{").unwrap_err()), ["body"]);
        assert_eq!(fields(normalize("workflow_run", "[]").unwrap_err()), ["body"]);
        let wrong_type = with(RUN_FAILED, |v| v["workflow_run"]["workflow_id"] = json!("x"));
        assert_eq!(
            fields(normalize("workflow_run", &wrong_type).unwrap_err()),
            ["workflow_run.workflow_id"]
        );
        let missing = with(RUN_FAILED, |v| {
            v["repository"].as_object_mut().unwrap().remove("full_name");
            v["workflow_run"]["head_branch"] = Value::Null;
        });
        assert_eq!(
            fields(normalize("workflow_run", &missing).unwrap_err()),
            ["repository.full_name", "workflow_run.head_branch"]
        );
        let no_number = with(SCAN_CREATED, |v| {
            v["alert"].as_object_mut().unwrap().remove("number");
        });
        assert_eq!(
            fields(normalize("code_scanning_alert", &no_number).unwrap_err()),
            ["alert.number"]
        );

        let no_event = HeaderMap::new();
        let error = Github
            .normalize(&inbound(&no_event, RUN_FAILED.as_bytes()), &integration(None))
            .unwrap_err();
        assert_eq!(fields(error), ["X-GitHub-Event"]);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = with(RUN_FAILED, |v| {
            v["brand_new"] = json!({"x": 1});
            v["workflow_run"]["another"] = json!([1, 2]);
        });
        assert_eq!(one("workflow_run", &body), one("workflow_run", RUN_FAILED));
    }

    fn verify(secret: Option<&str>, signature: Option<&str>, body: &[u8]) -> Result<(), SignatureError> {
        let mut pairs = vec![("x-github-event", "workflow_run")];
        if let Some(signature) = signature {
            pairs.push(("x-hub-signature-256", signature));
        }
        let headers = headers(&pairs);
        Github.verify(&inbound(&headers, body), &integration(secret))
    }

    #[derive(serde::Deserialize)]
    struct PublishedVector {
        secret: String,
        body: String,
        header: String,
        expected: String,
    }

    #[test]
    fn githubs_published_signature_vector_verifies() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/signature-vectors.json"
        ))
        .expect("tests/fixtures/signature-vectors.json");
        let all: Value = serde_json::from_str(&text).unwrap();
        let v: PublishedVector = serde_json::from_value(all["github_x_hub_signature_256"].clone()).unwrap();
        assert_eq!(v.header, "X-Hub-Signature-256");
        assert_eq!(verify(Some(&v.secret), Some(&v.expected), v.body.as_bytes()), Ok(()));
        assert_eq!(
            verify(Some(&v.secret), Some(&v.expected), b"Hello, World?"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some("another secret"), Some(&v.expected), v.body.as_bytes()),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn signatures_are_required_once_a_secret_is_set() {
        let body = RUN_FAILED.as_bytes();
        let good = format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), body));
        assert_eq!(verify(Some(SECRET), Some(&good), body), Ok(()));
        assert!(matches!(
            verify(Some(SECRET), None, body),
            Err(SignatureError::Missing {
                expected: SIGNATURE_EXPECTED
            })
        ));
        assert_eq!(
            verify(Some(SECRET), Some("sha256=abc"), body),
            Err(SignatureError::Malformed)
        );
        // No secret configured: nothing to check.
        assert_eq!(verify(None, None, body), Ok(()));
        // Tocsin's own header is not GitHub's.
        let headers = headers(&[("x-signature", &good)]);
        assert!(matches!(
            Github.verify(&inbound(&headers, body), &integration(Some(SECRET))),
            Err(SignatureError::Missing { .. })
        ));
    }

    #[test]
    fn the_signature_covers_a_form_body_as_sent() {
        let form: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", RUN_FAILED)
            .finish();
        let over_form = format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), form.as_bytes()));
        let over_json = format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), RUN_FAILED.as_bytes()));
        assert_eq!(verify(Some(SECRET), Some(&over_form), form.as_bytes()), Ok(()));
        assert_eq!(
            verify(Some(SECRET), Some(&over_json), form.as_bytes()),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn the_delivery_guid_is_the_delivery_id() {
        let headers = headers(&[("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")]);
        assert_eq!(
            Github::delivery_id(&headers),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
        assert_eq!(Github::delivery_id(&HeaderMap::new()), None);
    }

    const CONFIG: &str = r#"
services:
  - id: checkout
    integrations:
      - {id: repo-github, type: github, key: 55555555555555555555555555555555, secret: a-github-webhook-secret}
"#;

    /// Posts through the ingest service, as the Lambda and the local router do.
    fn post(event: &str, body: &[u8], signature: Option<&str>) -> (StatusCode, Value, Arc<MemoryStore>) {
        post_delivery(event, body, signature, None)
    }

    fn post_delivery(
        event: &str,
        body: &[u8],
        signature: Option<&str>,
        delivery: Option<&str>,
    ) -> (StatusCode, Value, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::new());
        let catalog = Catalog::from_yaml(CONFIG, "test.yaml").unwrap();
        let ingest = IngestService::new(Arc::new(catalog), store.clone(), store.clone());
        let mut pairs = vec![
            ("x-github-event", event),
            ("x-integration-key", "55555555555555555555555555555555"),
        ];
        if let Some(signature) = signature {
            pairs.push(("x-hub-signature-256", signature));
        }
        if let Some(delivery) = delivery {
            pairs.push(("x-github-delivery", delivery));
        }
        let headers = headers(&pairs);
        let answer = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(ingest.handle(IngestRequest {
                provider: ProviderKind::Github,
                headers: &headers,
                query: None,
                body,
                received_at: Utc::now(),
            }));
        let json = serde_json::from_slice(answer.body()).unwrap_or(Value::Null);
        (answer.status(), json, store)
    }

    fn sign(body: &[u8]) -> String {
        format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), body))
    }

    #[test]
    fn through_ingest_signed_failures_are_queued_and_pings_answered() {
        let body = RUN_FAILED.as_bytes();
        let (status, _, store) = post("workflow_run", body, Some(&sign(body)));
        assert_eq!(status, StatusCode::ACCEPTED);
        let queued = store.queued_events();
        assert_eq!(queued.len(), 1);
        assert_eq!(
            queued[0].dedup_key().as_str(),
            "github:ideacrew/active-branch-tracker:workflow:trunk:8539638"
        );

        let (status, json, store) = post("ping", PING.as_bytes(), Some(&sign(PING.as_bytes())));
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(json["events"], 0);
        assert!(store.queued_events().is_empty());
    }

    #[test]
    fn a_redelivery_is_the_same_event_and_another_delivery_is_not() {
        let body = RUN_FAILED.as_bytes();
        let id = |delivery: Option<&str>| {
            let (status, _, store) = post_delivery("workflow_run", body, Some(&sign(body)), delivery);
            assert_eq!(status, StatusCode::ACCEPTED);
            store.queued_events()[0].id.clone()
        };
        let first = id(Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
        assert_eq!(first, id(Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")), "redelivered");
        assert_ne!(
            first,
            id(Some("0b9c5a34-cc79-11e3-8a1e-2a9d3f1c0001")),
            "a new delivery"
        );
        assert_ne!(id(None), id(None), "without a delivery id every request is new");
    }

    #[test]
    fn through_ingest_bad_signatures_are_401_and_bad_bodies_400() {
        let body = RUN_FAILED.as_bytes();
        let (status, _, store) = post("workflow_run", body, Some(&sign(b"something else")));
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(store.queued_events().is_empty());
        let (status, _, _) = post("workflow_run", body, None);
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        let broken = b"{\"action\": ";
        let (status, json, _) = post("workflow_run", broken, Some(&sign(broken)));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(json["errors"][0].as_str().unwrap().starts_with("body"), "{json}");
    }
}
