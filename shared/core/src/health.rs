//! Ingest health: per-integration request counters, kept by the
//! [`IngestStats`](crate::ports::IngestStats) port, and the document that
//! `GET /integrations/health` answers with.
//!
//! Counting rules (README, "Health"):
//! - a request is counted once it names an integration (its key was found,
//!   the integration is enabled and of the provider posted to); requests
//!   with a missing or unknown key are not counted at all, so a stranger
//!   cannot skew an integration's figures nor cost a write per junk request;
//! - 2xx answers are successes, everything else an error with its status
//!   and a short message that never carries a key, secret, signature or
//!   payload value;
//! - latency runs from the start of handling until the answer is decided
//!   (for accepted requests: until the events are handed to the queue, with
//!   which the recording runs concurrently).
//!
//! `successRate` is a fraction from 0 to 1 (1 when nothing was received).
//! Status: an integration is `degraded` when its last error is less than
//! [`RECENT_MINUTES`] old, `idle` when it never received a request, `healthy`
//! otherwise. The whole is `failing` when every integration with a request
//! in the last [`RECENT_MINUTES`] saw its latest one fail, `degraded` when
//! any integration is degraded, `healthy` otherwise.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::task::Poll;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{IntegrationId, ServiceId};
use crate::providers::ProviderKind;

/// How far back an error makes an integration degraded.
pub const RECENT_MINUTES: i64 = 15;

/// The longest message kept with an error.
pub const MAX_MESSAGE_CHARS: usize = 200;

/// What one request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestOutcome {
    /// When the request was received.
    pub at: DateTime<Utc>,
    pub latency_ms: u64,
    pub kind: OutcomeKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeKind {
    Success,
    Error(IngestFailure),
    /// The request was recorded a success while its events were being
    /// enqueued, and the enqueue then failed: that success becomes this
    /// error, without counting the request (or its latency) twice.
    FailedAfterSuccess(IngestFailure),
}

/// Why a request was refused: safe to show to anyone with read access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestFailure {
    pub status: u16,
    pub message: String,
}

impl IngestFailure {
    /// `message` cut to [`MAX_MESSAGE_CHARS`].
    pub fn new(status: u16, message: &str) -> Self {
        Self {
            status,
            message: message.chars().take(MAX_MESSAGE_CHARS).collect(),
        }
    }
}

/// The last error of an integration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub at: DateTime<Utc>,
    pub status: u16,
    pub message: String,
}

/// An integration's counters, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrationStats {
    pub integration: IntegrationId,
    pub service: ServiceId,
    pub provider: ProviderKind,
    pub received: u64,
    pub success: u64,
    pub errors: u64,
    /// The sum of every counted request's latency.
    pub latency_ms_total: u64,
    pub last_event_at: Option<DateTime<Utc>>,
    pub last_error: Option<LastError>,
}

impl IntegrationStats {
    pub fn new(integration: IntegrationId, service: ServiceId, provider: ProviderKind) -> Self {
        Self {
            integration,
            service,
            provider,
            received: 0,
            success: 0,
            errors: 0,
            latency_ms_total: 0,
            last_event_at: None,
            last_error: None,
        }
    }

    /// Counts `outcome`: the reference the stores' upserts follow.
    pub fn apply(&mut self, outcome: &IngestOutcome) {
        let failure = match &outcome.kind {
            OutcomeKind::Success => {
                self.received += 1;
                self.success += 1;
                self.latency_ms_total += outcome.latency_ms;
                None
            }
            OutcomeKind::Error(failure) => {
                self.received += 1;
                self.errors += 1;
                self.latency_ms_total += outcome.latency_ms;
                Some(failure)
            }
            OutcomeKind::FailedAfterSuccess(failure) => {
                self.success = self.success.saturating_sub(1);
                self.errors += 1;
                Some(failure)
            }
        };
        self.last_event_at = Some(outcome.at);
        if let Some(failure) = failure {
            self.last_error = Some(LastError {
                at: outcome.at,
                status: failure.status,
                message: failure.message.clone(),
            });
        }
    }
}

/// The five figures of every level of the document.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub total_received: u64,
    pub total_success: u64,
    pub total_errors: u64,
    /// From 0 to 1; 1 when nothing was received.
    pub success_rate: f64,
    /// Rounded to a tenth of a millisecond; 0 when nothing was received.
    pub average_latency_ms: f64,
    #[serde(skip)]
    latency_ms_total: u64,
}

impl Totals {
    fn add(&mut self, stats: &IntegrationStats) {
        self.total_received += stats.received;
        self.total_success += stats.success;
        self.total_errors += stats.errors;
        self.latency_ms_total += stats.latency_ms_total;
        self.finish();
    }

    fn finish(&mut self) {
        let counted = self.total_success + self.total_errors;
        self.success_rate = if counted == 0 {
            1.0
        } else {
            self.total_success as f64 / counted as f64
        };
        self.average_latency_ms = if self.total_received == 0 {
            0.0
        } else {
            (self.latency_ms_total as f64 / self.total_received as f64 * 10.0).round() / 10.0
        };
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Failing,
    Idle,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationHealth {
    pub id: IntegrationId,
    pub service: ServiceId,
    pub provider: ProviderKind,
    pub status: HealthStatus,
    #[serde(flatten)]
    pub totals: Totals,
    pub last_event_at: Option<DateTime<Utc>>,
    pub last_error: Option<LastError>,
}

/// The answer of `GET /integrations/health`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthDocument {
    pub status: HealthStatus,
    pub global: Totals,
    /// By provider slug, as in the ingest URLs.
    pub by_type: BTreeMap<String, Totals>,
    /// By id.
    pub integrations: Vec<IntegrationHealth>,
}

impl HealthDocument {
    pub fn build(mut stats: Vec<IntegrationStats>, now: DateTime<Utc>) -> Self {
        stats.sort_by(|a, b| a.integration.cmp(&b.integration));
        let recent = now - TimeDelta::minutes(RECENT_MINUTES);
        let mut global = Totals::default();
        global.finish();
        let mut by_type: BTreeMap<String, Totals> = BTreeMap::new();
        let mut integrations = Vec::with_capacity(stats.len());
        let (mut active, mut active_failing) = (0usize, 0usize);
        for entry in stats {
            global.add(&entry);
            by_type
                .entry(entry.provider.as_str().to_owned())
                .or_default()
                .add(&entry);
            let mut totals = Totals::default();
            totals.add(&entry);
            let last_failed = matches!(
                (&entry.last_error, entry.last_event_at),
                (Some(error), Some(last)) if error.at >= last
            );
            if entry.last_event_at.is_some_and(|at| at >= recent) {
                active += 1;
                active_failing += usize::from(last_failed);
            }
            let status = if entry.received == 0 {
                HealthStatus::Idle
            } else if entry.last_error.as_ref().is_some_and(|e| e.at >= recent) {
                HealthStatus::Degraded
            } else {
                HealthStatus::Healthy
            };
            integrations.push(IntegrationHealth {
                id: entry.integration,
                service: entry.service,
                provider: entry.provider,
                status,
                totals,
                last_event_at: entry.last_event_at,
                last_error: entry.last_error,
            });
        }
        let status = if active > 0 && active == active_failing {
            HealthStatus::Failing
        } else if integrations.iter().any(|i| i.status == HealthStatus::Degraded) {
            HealthStatus::Degraded
        } else {
            HealthStatus::Healthy
        };
        Self {
            status,
            global,
            by_type,
            integrations,
        }
    }
}

/// Runs both futures at once and answers both outputs: the recording of a
/// request beside its enqueue, without a runtime dependency in the core.
pub async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut out_a, mut out_b) = (None, None);
    std::future::poll_fn(move |cx| {
        if out_a.is_none() {
            if let Poll::Ready(value) = a.as_mut().poll(cx) {
                out_a = Some(value);
            }
        }
        if out_b.is_none() {
            if let Poll::Ready(value) = b.as_mut().poll(cx) {
                out_b = Some(value);
            }
        }
        match (out_a.take(), out_b.take()) {
            (Some(a), Some(b)) => Poll::Ready((a, b)),
            (a, b) => {
                out_a = a;
                out_b = b;
                Poll::Pending
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    /// When, how long, and the error status and message if it failed.
    type Request<'a> = (&'a str, u64, Option<(u16, &'a str)>);

    fn stats(id: &str, provider: ProviderKind, outcomes: &[Request<'_>]) -> IntegrationStats {
        let mut stats = IntegrationStats::new(
            IntegrationId::parse(id).unwrap(),
            ServiceId::parse("checkout").unwrap(),
            provider,
        );
        for (when, latency_ms, error) in outcomes {
            stats.apply(&IngestOutcome {
                at: at(when),
                latency_ms: *latency_ms,
                kind: match error {
                    None => OutcomeKind::Success,
                    Some((status, message)) => OutcomeKind::Error(IngestFailure::new(*status, message)),
                },
            });
        }
        stats
    }

    const NOW: &str = "2027-01-01T12:00:00Z";

    #[test]
    fn the_document_sums_by_integration_type_and_overall() {
        let document = HealthDocument::build(
            vec![
                stats(
                    "prom-b",
                    ProviderKind::Prometheus,
                    &[("2027-01-01T10:00:00Z", 10, None), ("2027-01-01T10:01:00Z", 20, None)],
                ),
                stats(
                    "grafana",
                    ProviderKind::Grafana,
                    &[
                        ("2027-01-01T09:00:00Z", 5, None),
                        ("2027-01-01T09:30:00Z", 1, Some((401, "signature check failed"))),
                    ],
                ),
                stats(
                    "prom-a",
                    ProviderKind::Prometheus,
                    &[("2027-01-01T10:02:00Z", 30, None)],
                ),
            ],
            at(NOW),
        );
        let value = serde_json::to_value(&document).unwrap();
        assert_eq!(value["status"], json!("healthy"), "errors two hours old do not count");
        assert_eq!(
            value["global"],
            json!({"totalReceived": 5, "totalSuccess": 4, "totalErrors": 1, "successRate": 0.8, "averageLatencyMs": 13.2})
        );
        assert_eq!(
            value["byType"],
            json!({
                "grafana": {"totalReceived": 2, "totalSuccess": 1, "totalErrors": 1, "successRate": 0.5, "averageLatencyMs": 3.0},
                "prometheus": {"totalReceived": 3, "totalSuccess": 3, "totalErrors": 0, "successRate": 1.0, "averageLatencyMs": 20.0},
            })
        );
        let ids: Vec<&str> = document.integrations.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["grafana", "prom-a", "prom-b"]);
        assert_eq!(
            value["integrations"][0],
            json!({
                "id": "grafana", "service": "checkout", "provider": "grafana", "status": "healthy",
                "totalReceived": 2, "totalSuccess": 1, "totalErrors": 1, "successRate": 0.5, "averageLatencyMs": 3.0,
                "lastEventAt": "2027-01-01T09:30:00Z",
                "lastError": {"at": "2027-01-01T09:30:00Z", "status": 401, "message": "signature check failed"},
            })
        );
        assert_eq!(value["integrations"][1]["lastError"], json!(null));
    }

    #[test]
    fn a_recent_error_degrades_and_only_failures_lately_is_failing() {
        let ok = stats("ok", ProviderKind::Grafana, &[("2027-01-01T11:58:00Z", 1, None)]);
        let recovered = stats(
            "recovered",
            ProviderKind::Grafana,
            &[
                ("2027-01-01T11:50:00Z", 1, Some((400, "bad"))),
                ("2027-01-01T11:55:00Z", 1, None),
            ],
        );
        let failing = stats(
            "failing",
            ProviderKind::Prometheus,
            &[
                ("2027-01-01T11:55:00Z", 1, None),
                ("2027-01-01T11:59:00Z", 1, Some((401, "bad"))),
            ],
        );

        let document = HealthDocument::build(vec![ok.clone(), recovered.clone()], at(NOW));
        assert_eq!(document.status, HealthStatus::Degraded);
        assert_eq!(document.integrations[0].status, HealthStatus::Healthy);
        assert_eq!(document.integrations[1].status, HealthStatus::Degraded);

        let document = HealthDocument::build(vec![ok.clone(), failing.clone()], at(NOW));
        assert_eq!(
            document.status,
            HealthStatus::Degraded,
            "one integration still gets through"
        );
        let document = HealthDocument::build(vec![failing], at(NOW));
        assert_eq!(document.status, HealthStatus::Failing);
        let document = HealthDocument::build(vec![ok], at("2027-01-02T00:00:00Z"));
        assert_eq!(document.status, HealthStatus::Healthy);
    }

    #[test]
    fn no_requests_is_healthy_with_a_rate_of_one() {
        let document = HealthDocument::build(Vec::new(), at(NOW));
        assert_eq!(
            serde_json::to_value(&document).unwrap(),
            json!({
                "status": "healthy",
                "global": {"totalReceived": 0, "totalSuccess": 0, "totalErrors": 0, "successRate": 1.0, "averageLatencyMs": 0.0},
                "byType": {},
                "integrations": [],
            })
        );
        let idle = IntegrationStats::new(
            IntegrationId::parse("idle").unwrap(),
            ServiceId::parse("checkout").unwrap(),
            ProviderKind::Webhook,
        );
        assert_eq!(
            HealthDocument::build(vec![idle], at(NOW)).integrations[0].status,
            HealthStatus::Idle
        );
    }

    #[test]
    fn a_failed_enqueue_turns_its_success_into_an_error_counted_once() {
        let mut stats = stats("prom", ProviderKind::Prometheus, &[("2027-01-01T11:00:00Z", 8, None)]);
        stats.apply(&IngestOutcome {
            at: at("2027-01-01T11:00:00Z"),
            latency_ms: 100,
            kind: OutcomeKind::FailedAfterSuccess(IngestFailure::new(503, "the events could not be queued")),
        });
        assert_eq!((stats.received, stats.success, stats.errors), (1, 0, 1));
        assert_eq!(stats.latency_ms_total, 8);
        assert_eq!(stats.last_error.as_ref().map(|e| e.status), Some(503));
    }

    #[test]
    fn a_long_message_is_cut() {
        let failure = IngestFailure::new(400, &"é".repeat(500));
        assert_eq!(failure.message.chars().count(), MAX_MESSAGE_CHARS);
    }

    #[test]
    fn join_answers_both() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (a, b) = runtime.block_on(join(async { 1 }, async {
            tokio::task::yield_now().await;
            "two"
        }));
        assert_eq!((a, b), (1, "two"));
    }
}
