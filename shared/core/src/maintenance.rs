//! Maintenance windows: while one of a service's windows is active, its
//! incidents are still recorded (processing and the timeline are
//! unchanged) but nobody is notified; the dispatcher holds the jobs
//! (crate::dispatch). When the window ends, each of the service's incidents
//! that is still open or acknowledged is notified once, as triggered
//! ([`MaintenanceService::release_ended`]); what was resolved during the
//! window stays quiet.
//!
//! Releasing is at least once: the jobs of a release have ids derived from
//! the window and the incident, so a release run again before the window is
//! marked released enqueues the same jobs, which the queues keep once.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dispatch::DispatchService;
use crate::event::ServiceId;
use crate::incident::{Incident, IncidentStatus, Transition};
use crate::ports::{BackendError, IncidentFilter, IncidentStore, MaintenanceStore};
use crate::timeline::{Happened, TimelineEntry};

/// The longest window accepted: a window is for planned work, and one left
/// behind by mistake must not silence a service for weeks.
pub const MAX_WINDOW: TimeDelta = TimeDelta::days(7);
/// The longest reason kept, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// Incidents notified per state and window at release (the stores' list
/// limit); a service with more open incidents than this has bigger problems.
pub const RELEASE_LIST_LIMIT: usize = 1000;

/// `mw_` and 20 lowercase hex digits, derived from the service and the
/// times, so the same window written twice (a config applied again) is one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WindowId(String);

impl WindowId {
    pub fn for_window(service: &ServiceId, start: DateTime<Utc>, end: DateTime<Utc>) -> Self {
        let mut hasher = Sha256::new();
        for part in [service.as_str(), &stamp(start), &stamp(end)] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        WindowId(format!("mw_{}", hex::encode(&hasher.finalize()[..10])))
    }

    /// Accepts what [`WindowId::for_window`] produces, and nothing else.
    pub fn parse(value: &str) -> Option<Self> {
        let hex = value.strip_prefix("mw_")?;
        (hex.len() == 20 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| WindowId(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for WindowId {
    type Error = WindowError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        WindowId::parse(&value).ok_or(WindowError::Id(value))
    }
}

impl From<WindowId> for String {
    fn from(value: WindowId) -> Self {
        value.0
    }
}

impl fmt::Display for WindowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whole microseconds in UTC: what every store keeps, and text that sorts.
fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

/// Why a window was refused. The field is the one a person wrote wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("end must be after start")]
    EndNotAfterStart,
    #[error("a window may last at most 7 days")]
    TooLong,
    #[error("reason must be at most 500 characters")]
    ReasonTooLong,
    #[error("'{0}' is not a maintenance window id")]
    Id(String),
}

impl WindowError {
    /// The field the error is about: `start`, `end`, `reason` or `id`.
    pub fn field(&self) -> &'static str {
        match self {
            WindowError::EndNotAfterStart | WindowError::TooLong => "end",
            WindowError::ReasonTooLong => "reason",
            WindowError::Id(_) => "id",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    pub id: WindowId,
    pub service: ServiceId,
    /// Active from `start` (included) to `end` (excluded).
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `config`, or `api-key:<name>`.
    pub created_by: String,
    /// When the end was released (its still-open incidents notified). Set
    /// only by [`MaintenanceStore::mark_released`]; a write of the window
    /// keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<DateTime<Utc>>,
}

impl MaintenanceWindow {
    /// A valid window; times are kept to the microsecond, as every store does.
    pub fn new(
        service: ServiceId,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        reason: Option<String>,
        created_by: impl Into<String>,
    ) -> Result<Self, WindowError> {
        let (start, end) = (to_micros(start), to_micros(end));
        if end <= start {
            return Err(WindowError::EndNotAfterStart);
        }
        if end - start > MAX_WINDOW {
            return Err(WindowError::TooLong);
        }
        let reason = reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty());
        if reason.as_ref().is_some_and(|r| r.chars().count() > MAX_REASON_CHARS) {
            return Err(WindowError::ReasonTooLong);
        }
        Ok(MaintenanceWindow {
            id: WindowId::for_window(&service, start, end),
            service,
            start,
            end,
            reason,
            created_by: created_by.into(),
            released_at: None,
        })
    }

    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.start <= now && now < self.end
    }

    pub fn has_ended(&self, now: DateTime<Utc>) -> bool {
        self.end <= now
    }
}

/// The window of `service` active at `now` that ends last, if any: the one
/// that says until when notifications are held.
pub fn active_window<'a>(
    windows: &'a [MaintenanceWindow],
    service: &ServiceId,
    now: DateTime<Utc>,
) -> Option<&'a MaintenanceWindow> {
    windows
        .iter()
        .filter(|w| &w.service == service && w.is_active(now))
        .max_by_key(|w| w.end)
}

/// Whether `service` is in maintenance at `now`, and in which window.
pub async fn in_maintenance(
    store: &dyn MaintenanceStore,
    service: &ServiceId,
    now: DateTime<Utc>,
) -> Result<Option<MaintenanceWindow>, BackendError> {
    let windows = store.windows(Some(service)).await?;
    Ok(active_window(&windows, service, now).cloned())
}

/// Writes a window from config. A window seen for the first time that is
/// already over is marked released at once: it held nothing, and releasing
/// it would page for incidents people have long seen. A known window keeps
/// its released mark, so applying a config again never notifies twice.
pub async fn apply_window(
    store: &dyn MaintenanceStore,
    window: &MaintenanceWindow,
    now: DateTime<Utc>,
) -> Result<(), BackendError> {
    let known = store
        .windows(Some(&window.service))
        .await?
        .iter()
        .any(|w| w.id == window.id);
    store.put_window(window).await?;
    if !known && window.has_ended(now) {
        store.mark_released(&window.id, now).await?;
    }
    Ok(())
}

/// The timeline entry of a transition whose notifications `window` held;
/// one per transition, however often it is dispatched.
pub fn held_entry(transition: &Transition, window: &MaintenanceWindow, at: DateTime<Utc>) -> TimelineEntry {
    TimelineEntry {
        incident: transition.incident.id.clone(),
        id: format!("held:{}", transition.id()),
        at,
        what: Happened::Held {
            transition: transition.kind,
            window: window.id.clone(),
            until: window.end,
        },
    }
}

/// The timeline entry of an incident notified at the end of `window`.
pub fn released_entry(incident: &Incident, window: &MaintenanceWindow, at: DateTime<Utc>) -> TimelineEntry {
    TimelineEntry {
        incident: incident.id.clone(),
        id: format!("released:{}", window.id),
        at,
        what: Happened::Released {
            window: window.id.clone(),
        },
    }
}

/// What one [`MaintenanceService::release_ended`] run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Released {
    /// Windows marked released.
    pub windows: usize,
    /// Incidents notified (once each per window).
    pub incidents: usize,
    /// Notification jobs enqueued.
    pub jobs: usize,
}

/// Releases ended windows: call [`MaintenanceService::release_ended`]
/// periodically (the scheduler, locally and on AWS).
#[derive(Clone)]
pub struct MaintenanceService {
    store: Arc<dyn MaintenanceStore>,
    incidents: Arc<dyn IncidentStore>,
    dispatch: DispatchService,
}

impl MaintenanceService {
    /// `dispatch` should be built without maintenance: a release is never
    /// held (it checks overlapping windows itself).
    pub fn new(store: Arc<dyn MaintenanceStore>, incidents: Arc<dyn IncidentStore>, dispatch: DispatchService) -> Self {
        Self {
            store,
            incidents,
            dispatch,
        }
    }

    /// For each window that ended by `now` and is not released: one
    /// triggered notification per incident of its service that is still
    /// open or acknowledged, then the window is marked released. A window
    /// whose service is still in another active window is marked released
    /// without notifying: that window's release will. A failure stops the
    /// run before the window is marked, so the next run does it again, with
    /// the same job ids.
    #[tracing::instrument(skip_all)]
    pub async fn release_ended(&self, now: DateTime<Utc>) -> Result<Released, BackendError> {
        let windows = self.store.windows(None).await?;
        let mut released = Released::default();
        for window in windows.iter().filter(|w| w.released_at.is_none() && w.has_ended(now)) {
            let still_held = windows
                .iter()
                .any(|other| other.id != window.id && other.service == window.service && other.is_active(now));
            if !still_held {
                for status in [IncidentStatus::Open, IncidentStatus::Acknowledged] {
                    let filter = IncidentFilter {
                        status: Some(status),
                        service: Some(window.service.clone()),
                        limit: Some(RELEASE_LIST_LIMIT),
                    };
                    for incident in self.incidents.list(&filter).await? {
                        released.jobs += self.dispatch.dispatch_release(&incident, window, now).await?;
                        released.incidents += 1;
                    }
                }
            }
            self.store.mark_released(&window.id, now).await?;
            released.windows += 1;
            tracing::info!(window = %window.id, service = %window.service, still_held, "maintenance window released");
        }
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + second, 0)
            .single()
            .expect("a valid time")
    }

    fn service(id: &str) -> ServiceId {
        ServiceId::parse(id).expect("a valid service")
    }

    fn window(start: i64, end: i64) -> MaintenanceWindow {
        MaintenanceWindow::new(
            service("checkout"),
            at(start),
            at(end),
            Some("db upgrade".into()),
            "config",
        )
        .expect("a valid window")
    }

    #[test]
    fn a_window_is_active_from_its_start_up_to_but_not_at_its_end() {
        let w = window(0, 60);
        assert!(!w.is_active(at(-1)));
        assert!(w.is_active(at(0)));
        assert!(w.is_active(at(59)));
        assert!(w.is_active(at(60) - TimeDelta::microseconds(1)));
        assert!(!w.is_active(at(60)));
        assert!(!w.has_ended(at(59)));
        assert!(w.has_ended(at(60)));
    }

    #[test]
    fn end_must_follow_start_and_a_window_lasts_at_most_seven_days() {
        let checkout = service("checkout");
        let new = |start, end| MaintenanceWindow::new(checkout.clone(), start, end, None, "t");
        assert_eq!(new(at(10), at(10)), Err(WindowError::EndNotAfterStart));
        assert_eq!(new(at(10), at(5)), Err(WindowError::EndNotAfterStart));
        assert!(new(at(0), at(0) + MAX_WINDOW).is_ok());
        let too_long = new(at(0), at(0) + MAX_WINDOW + TimeDelta::seconds(1));
        assert_eq!(too_long, Err(WindowError::TooLong));
        assert_eq!(WindowError::TooLong.field(), "end");
    }

    #[test]
    fn a_reason_is_trimmed_and_limited() {
        let checkout = service("checkout");
        let blank = MaintenanceWindow::new(checkout.clone(), at(0), at(1), Some("  ".into()), "t").expect("valid");
        assert_eq!(blank.reason, None);
        let long = "é".repeat(MAX_REASON_CHARS + 1);
        assert_eq!(
            MaintenanceWindow::new(checkout, at(0), at(1), Some(long), "t"),
            Err(WindowError::ReasonTooLong)
        );
    }

    #[test]
    fn the_id_is_derived_from_the_service_and_the_times() {
        let a = window(0, 60);
        assert_eq!(a.id, window(0, 60).id);
        assert_ne!(a.id, window(0, 61).id);
        let other = MaintenanceWindow::new(service("search"), at(0), at(60), None, "t").expect("valid");
        assert_ne!(a.id, other.id);
        assert_eq!(WindowId::parse(a.id.as_str()), Some(a.id.clone()));
        assert_eq!(WindowId::parse("mw_XYZ"), None);
        assert_eq!(WindowId::parse("inc_00000000000000000000"), None);
        // Sub-microsecond digits do not make another window.
        let fine = MaintenanceWindow::new(
            service("checkout"),
            at(0) + TimeDelta::nanoseconds(1),
            at(60),
            None,
            "t",
        )
        .expect("valid");
        assert_eq!(fine.id, a.id);
    }

    #[test]
    fn the_active_window_of_a_service_is_the_one_that_ends_last() {
        let windows = [window(0, 60), window(30, 120)];
        assert_eq!(
            active_window(&windows, &service("checkout"), at(40)).map(|w| w.end),
            Some(at(120))
        );
        assert_eq!(
            active_window(&windows, &service("checkout"), at(10)).map(|w| w.end),
            Some(at(60))
        );
        assert_eq!(active_window(&windows, &service("checkout"), at(120)), None);
        assert_eq!(active_window(&windows, &service("search"), at(40)), None);
    }

    #[test]
    fn a_window_reads_back_from_json() {
        let mut w = window(0, 60);
        w.released_at = Some(at(61));
        let json = serde_json::to_value(&w).expect("serializes");
        assert_eq!(json["id"], w.id.as_str());
        let back: MaintenanceWindow = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, w);
        let bad =
            serde_json::json!({"id": "nope", "service": "checkout", "start": at(0), "end": at(1), "created_by": "t"});
        assert!(serde_json::from_value::<MaintenanceWindow>(bad).is_err());
    }

    mod with_a_store {
        use super::*;
        use crate::config::Catalog;
        use crate::event::{DedupKey, EventId};
        use crate::incident::{IncidentId, TransitionKind};
        use crate::memory::MemoryStore;
        use crate::ports::{Commit, IncidentStore, MaintenanceStore, Timeline};

        const CONFIG: &str = r##"
services:
  - id: checkout
    notify:
      email: [oncall@example.com]
      slack: "#checkout"
    maintenance:
      - start: 2027-01-15T08:00:00Z
        end: 2027-01-15T09:00:00Z
        reason: database upgrade
"##;

        fn block_on<F: std::future::Future>(future: F) -> F::Output {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a current-thread runtime")
                .block_on(future)
        }

        fn time(text: &str) -> DateTime<Utc> {
            DateTime::parse_from_rfc3339(text).expect("a time").with_timezone(&Utc)
        }

        struct Setup {
            store: Arc<MemoryStore>,
            catalog: Catalog,
        }

        impl Setup {
            fn new() -> Self {
                Setup {
                    store: Arc::new(MemoryStore::new()),
                    catalog: Catalog::from_yaml(CONFIG, "tocsin.yaml").expect("a valid config"),
                }
            }

            fn dispatch(&self) -> DispatchService {
                DispatchService::new(Arc::new(self.catalog.clone()), self.store.clone())
                    .with_timeline(self.store.clone())
            }

            fn service(&self) -> MaintenanceService {
                MaintenanceService::new(self.store.clone(), self.store.clone(), self.dispatch())
            }

            async fn incident(&self, dedup: &str, status: IncidentStatus) -> Incident {
                let mut incident = crate::render::fixtures::incident(TransitionKind::Triggered);
                let key = DedupKey::parse(dedup).expect("a key");
                incident.id = IncidentId::for_opening(&incident.service, &key, &EventId::new(dedup));
                incident.dedup_key = key;
                incident.status = status;
                let commit = Commit::Incident {
                    event_id: EventId::new(dedup),
                    incident: incident.clone(),
                    expected_version: None,
                    transition: None,
                    timeline: None,
                };
                self.store.commit(&commit).await.expect("commit");
                incident
            }
        }

        #[test]
        fn config_windows_are_parsed_with_derived_ids() {
            let setup = Setup::new();
            let [w] = setup.catalog.maintenance.as_slice() else {
                panic!("one window: {:?}", setup.catalog.maintenance);
            };
            assert_eq!(w.service.as_str(), "checkout");
            assert_eq!(
                (w.start, w.end),
                (time("2027-01-15T08:00:00Z"), time("2027-01-15T09:00:00Z"))
            );
            assert_eq!(w.reason.as_deref(), Some("database upgrade"));
            assert_eq!(w.created_by, "config");
            assert_eq!(w.id, WindowId::for_window(&w.service, w.start, w.end));
        }

        #[test]
        fn bad_config_windows_are_refused_with_their_field() {
            let refused = |start: &str, end: &str| {
                let text = CONFIG
                    .replace("2027-01-15T08:00:00Z", start)
                    .replace("2027-01-15T09:00:00Z", end);
                Catalog::from_yaml(&text, "tocsin.yaml").expect_err("refused")
            };
            let error = refused("yesterday", "2027-01-15T09:00:00Z");
            assert_eq!(error.field, "services[0].maintenance[0].start");
            assert!(error.reason.contains("RFC 3339"), "{error}");
            let error = refused("2027-01-15T09:00:00Z", "2027-01-15T08:00:00Z");
            assert_eq!(
                (error.field.as_str(), error.reason.as_str()),
                ("services[0].maintenance[0].end", "end must be after start")
            );
            let error = refused("2027-01-01T00:00:00Z", "2027-01-15T09:00:00Z");
            assert_eq!(error.field, "services[0].maintenance[0].end");
            let unknown = CONFIG.replace("reason:", "why:");
            let error = Catalog::from_yaml(&unknown, "tocsin.yaml").expect_err("refused");
            assert!(error.field.starts_with("services[0].maintenance[0]"), "{error}");
        }

        #[test]
        fn a_transition_during_a_window_is_held_and_recorded_then_notified_after_it() {
            let setup = Setup::new();
            block_on(async {
                let window = setup.catalog.maintenance[0].clone();
                apply_window(setup.store.as_ref(), &window, window.start)
                    .await
                    .expect("apply");
                let dispatch = setup.dispatch().with_maintenance(setup.store.clone());
                let incident = setup.incident("disk", IncidentStatus::Open).await;
                let transition = Transition {
                    kind: TransitionKind::Triggered,
                    incident: incident.clone(),
                    event_id: EventId::new("disk"),
                };
                let during = window.start + TimeDelta::minutes(5);
                assert_eq!(dispatch.dispatch(&transition, during).await.expect("dispatch"), 0);
                assert!(setup.store.queued_jobs().is_empty());
                let entries = setup.store.timeline(&incident.id).await.expect("timeline");
                let described: Vec<String> = entries.iter().map(TimelineEntry::describe).collect();
                assert_eq!(
                    described,
                    [format!(
                        "notifications held: maintenance window {} until 2027-01-15T09:00:00Z",
                        window.id
                    )]
                );
                assert_eq!(dispatch.dispatch(&transition, window.end).await.expect("dispatch"), 2);
            });
        }

        #[test]
        fn an_ended_window_notifies_each_still_open_incident_once() {
            let setup = Setup::new();
            block_on(async {
                let window = setup.catalog.maintenance[0].clone();
                apply_window(setup.store.as_ref(), &window, window.start)
                    .await
                    .expect("apply");
                let open = setup.incident("disk", IncidentStatus::Open).await;
                let acknowledged = setup.incident("cpu", IncidentStatus::Acknowledged).await;
                setup.incident("net", IncidentStatus::Resolved).await;
                let service = setup.service();

                let before = service
                    .release_ended(window.end - TimeDelta::microseconds(1))
                    .await
                    .expect("release");
                assert_eq!(before, Released::default(), "nothing ends before the end");

                let released = service.release_ended(window.end).await.expect("release");
                assert_eq!(
                    released,
                    Released {
                        windows: 1,
                        incidents: 2,
                        jobs: 4
                    }
                );
                let jobs = setup.store.queued_jobs();
                let mut notified: Vec<_> = jobs.iter().map(|j| (j.incident.id.clone(), j.channel)).collect();
                notified.sort();
                let mut expected = vec![
                    (open.id.clone(), crate::notify::Channel::Email),
                    (open.id.clone(), crate::notify::Channel::Slack),
                    (acknowledged.id.clone(), crate::notify::Channel::Email),
                    (acknowledged.id.clone(), crate::notify::Channel::Slack),
                ];
                expected.sort();
                assert_eq!(notified, expected);
                assert!(jobs.iter().all(|j| j.transition == TransitionKind::Triggered));
                let stored = setup.store.windows(None).await.expect("windows");
                assert_eq!(stored[0].released_at, Some(window.end));

                let again = service
                    .release_ended(window.end + TimeDelta::hours(1))
                    .await
                    .expect("release");
                assert_eq!(again, Released::default(), "a released window is done");
                // A release cut short before the mark runs again with the same job ids.
                for incident in [&open, &acknowledged] {
                    setup
                        .dispatch()
                        .dispatch_release(incident, &window, window.end)
                        .await
                        .expect("again");
                }
                assert_eq!(setup.store.queued_jobs().len(), 4, "the same jobs, queued once");
                let entries = setup.store.timeline(&open.id).await.expect("timeline");
                assert_eq!(
                    entries.iter().map(TimelineEntry::describe).collect::<Vec<_>>(),
                    [format!(
                        "notifications released: maintenance window {} ended",
                        window.id
                    )]
                );
            });
        }

        #[test]
        fn a_window_ending_inside_another_leaves_the_release_to_it() {
            let setup = Setup::new();
            block_on(async {
                let first = setup.catalog.maintenance[0].clone();
                let second = MaintenanceWindow::new(
                    first.service.clone(),
                    first.start + TimeDelta::minutes(30),
                    first.end + TimeDelta::minutes(30),
                    None,
                    "api-key:ops",
                )
                .expect("valid");
                for w in [&first, &second] {
                    apply_window(setup.store.as_ref(), w, first.start).await.expect("apply");
                }
                setup.incident("disk", IncidentStatus::Open).await;
                let service = setup.service();
                let released = service.release_ended(first.end).await.expect("release");
                assert_eq!(
                    released,
                    Released {
                        windows: 1,
                        incidents: 0,
                        jobs: 0
                    }
                );
                let released = service.release_ended(second.end).await.expect("release");
                assert_eq!(
                    released,
                    Released {
                        windows: 1,
                        incidents: 1,
                        jobs: 2
                    }
                );
            });
        }

        #[test]
        fn applying_config_marks_a_new_past_window_released_and_keeps_a_known_one() {
            let setup = Setup::new();
            block_on(async {
                let window = setup.catalog.maintenance[0].clone();
                let later = window.end + TimeDelta::days(1);
                apply_window(setup.store.as_ref(), &window, later).await.expect("apply");
                let stored = setup.store.windows(None).await.expect("windows");
                assert_eq!(
                    stored[0].released_at,
                    Some(later),
                    "it held nothing: nothing to release"
                );

                let other = Setup::new();
                apply_window(other.store.as_ref(), &window, window.start)
                    .await
                    .expect("apply");
                apply_window(other.store.as_ref(), &window, later)
                    .await
                    .expect("apply again");
                let stored = other.store.windows(None).await.expect("windows");
                assert_eq!(stored[0].released_at, None, "a known window waits for its release");
            });
        }
    }
}
