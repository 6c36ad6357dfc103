//! Maintenance windows: while one of a service's windows is active, its
//! incidents are still recorded (processing and the timeline are
//! unchanged) but nobody is notified; the dispatcher holds the jobs
//! (crate::dispatch). Windows that overlap or abut make one maintenance
//! period. When the period ends, each incident opened during it that is
//! still open or acknowledged is notified once, as triggered
//! ([`MaintenanceService::release_ended`]); what was resolved during the
//! period stays quiet, and an incident opened before it (already notified)
//! is not notified again.
//!
//! Releasing is at least once: the jobs of a release have ids derived from
//! the window and the incident, so a release run again before the window is
//! marked released enqueues the same jobs, which the queues keep once.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dispatch::DispatchService;
use crate::event::ServiceId;
use crate::incident::{Incident, IncidentStatus, Transition, TransitionKind};
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

    /// This window ending at `end` instead (to the microsecond), same id:
    /// only for an unreleased window that `end` cuts short (after its start,
    /// before its end). What [`MaintenanceStore::end_window`] writes.
    pub fn ended_at(&self, end: DateTime<Utc>) -> Option<MaintenanceWindow> {
        let end = to_micros(end);
        (self.released_at.is_none() && self.start < end && end < self.end)
            .then(|| MaintenanceWindow { end, ..self.clone() })
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

/// Whether `window` belongs to the maintenance period of its service that
/// ends at `end`: it ends by then and is not released, or was released by
/// that period's own release (one cut short before its last window was
/// marked). A window released earlier had its own release.
fn of_period_ending(window: &MaintenanceWindow, end: DateTime<Utc>) -> bool {
    window.end <= end && window.released_at.is_none_or(|at| at >= end)
}

/// When the maintenance period of `service` that ends at `end` began: from
/// `start` back over each of its windows that overlaps or abuts the period.
fn period_start(
    windows: &[MaintenanceWindow],
    service: &ServiceId,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> DateTime<Utc> {
    let mut from = start;
    while let Some(earlier) = windows
        .iter()
        .filter(|w| &w.service == service && of_period_ending(w, end) && w.start < from && from <= w.end)
        .map(|w| w.start)
        .min()
    {
        from = earlier;
    }
    from
}

/// The maintenance period `service` is in at `now`: since when, and the
/// active window that ends last (until when).
pub fn active_period<'a>(
    windows: &'a [MaintenanceWindow],
    service: &ServiceId,
    now: DateTime<Utc>,
) -> Option<(DateTime<Utc>, &'a MaintenanceWindow)> {
    let last = active_window(windows, service, now)?;
    let start = windows
        .iter()
        .filter(|w| &w.service == service && w.is_active(now))
        .map(|w| w.start)
        .min()
        .unwrap_or(last.start);
    Some((period_start(windows, service, start, last.end), last))
}

/// When `transition` happened by Tocsin's clock: an opening when the
/// incident was created, any other when its change was written.
pub fn transition_time(transition: &Transition) -> DateTime<Utc> {
    match transition.kind {
        TransitionKind::Triggered => transition.incident.created_at,
        _ => transition.incident.updated_at,
    }
}

/// The window that holds the notifications of `transition`, dispatched at
/// `now`: its service is in a maintenance period at `now` and the
/// transition happened during that period, so the period's release covers
/// it. A transition from before the period (dispatched late) is sent: the
/// release would not send it. One dispatched after its period ended is
/// sent too, and may be sent again by the release: twice, never not at all.
pub async fn holding_window(
    store: &dyn MaintenanceStore,
    transition: &Transition,
    now: DateTime<Utc>,
) -> Result<Option<MaintenanceWindow>, BackendError> {
    let service = &transition.incident.service;
    let windows = store.windows(Some(service)).await?;
    let Some((since, until)) = active_period(&windows, service, now) else {
        return Ok(None);
    };
    let at = transition_time(transition);
    Ok((since <= at && at < until.end).then(|| until.clone()))
}

/// Writes a window from config. A window seen for the first time that is
/// already over is marked released at once: it held nothing, and releasing
/// it would page for incidents people have long seen. A known window keeps
/// its released mark, so applying a config again never notifies twice, and
/// one ended early through the API keeps its end: the config's would open
/// it again, maybe after its release.
pub async fn apply_window(
    store: &dyn MaintenanceStore,
    window: &MaintenanceWindow,
    now: DateTime<Utc>,
) -> Result<(), BackendError> {
    let known = store
        .windows(Some(&window.service))
        .await?
        .into_iter()
        .find(|w| w.id == window.id);
    if known.as_ref().is_some_and(|w| w.end != window.end) {
        return Ok(());
    }
    store.put_window(window).await?;
    if known.is_none() && window.has_ended(now) {
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
    /// Incidents notified (once each per maintenance period).
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

    /// For each maintenance period that ended by `now` and is not released:
    /// one triggered notification per incident opened during it (from the
    /// start of its first window to the end of its last) that is still open
    /// or acknowledged, named after its last window; then its windows are
    /// marked released, the last one last. A window that ended while the
    /// period goes on (another window of the service active now overlaps or
    /// abuts it) is left unreleased: the period's release takes it. A
    /// failure stops the run before the period's last window is marked, so
    /// the next run does it again, with the same job ids.
    #[tracing::instrument(skip_all)]
    pub async fn release_ended(&self, now: DateTime<Utc>) -> Result<Released, BackendError> {
        let windows = self.store.windows(None).await?;
        let mut ended: Vec<&MaintenanceWindow> = windows
            .iter()
            .filter(|w| w.released_at.is_none() && w.has_ended(now))
            .collect();
        // The window ending last first: the earlier windows of its period go with it.
        ended.sort_by_key(|w| std::cmp::Reverse(w.end));
        let mut seen = HashSet::new();
        let mut released = Released::default();
        for last in ended {
            if seen.contains(&last.id) {
                continue;
            }
            let (start, period) = period_ending_with(&windows, last);
            seen.extend(period.iter().map(|w| &w.id));
            let goes_on = windows
                .iter()
                .any(|w| w.service == last.service && w.is_active(now) && w.start <= last.end);
            if goes_on {
                continue;
            }
            for status in [IncidentStatus::Open, IncidentStatus::Acknowledged] {
                let filter = IncidentFilter {
                    status: Some(status),
                    service: Some(last.service.clone()),
                    limit: Some(RELEASE_LIST_LIMIT),
                };
                for incident in self.incidents.list(&filter).await? {
                    if start <= incident.created_at && incident.created_at < last.end {
                        released.jobs += self.dispatch.dispatch_release(&incident, last, now).await?;
                        released.incidents += 1;
                    }
                }
            }
            for window in &period {
                self.store.mark_released(&window.id, now).await?;
                released.windows += 1;
            }
            tracing::info!(
                window = %last.id,
                service = %last.service,
                since = %start,
                windows = period.len(),
                "maintenance period released"
            );
        }
        Ok(released)
    }
}

/// The maintenance period that ends with `last`: when it started, and its
/// unreleased windows, `last` at the end (marked released last).
fn period_ending_with<'a>(
    windows: &'a [MaintenanceWindow],
    last: &'a MaintenanceWindow,
) -> (DateTime<Utc>, Vec<&'a MaintenanceWindow>) {
    let start = period_start(windows, &last.service, last.start, last.end);
    let mut period: Vec<&MaintenanceWindow> = windows
        .iter()
        .filter(|w| {
            w.id != last.id
                && w.service == last.service
                && w.released_at.is_none()
                && of_period_ending(w, last.end)
                && start <= w.end
        })
        .collect();
    period.push(last);
    (start, period)
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

            /// An incident of checkout opened at `opened` (by Tocsin's clock).
            async fn incident(&self, dedup: &str, status: IncidentStatus, opened: DateTime<Utc>) -> Incident {
                let mut incident = crate::render::fixtures::incident(TransitionKind::Triggered);
                let key = DedupKey::parse(dedup).expect("a key");
                incident.id = IncidentId::for_opening(&incident.service, &key, &EventId::new(dedup));
                incident.dedup_key = key;
                incident.status = status;
                (incident.created_at, incident.updated_at) = (opened, opened);
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
                let during = window.start + TimeDelta::minutes(5);
                let incident = setup.incident("disk", IncidentStatus::Open, during).await;
                let transition = Transition {
                    kind: TransitionKind::Triggered,
                    incident: incident.clone(),
                    event_id: EventId::new("disk"),
                };
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
                let during = window.start + TimeDelta::minutes(5);
                let open = setup.incident("disk", IncidentStatus::Open, during).await;
                let acknowledged = setup.incident("cpu", IncidentStatus::Acknowledged, during).await;
                setup.incident("net", IncidentStatus::Resolved, during).await;
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
                let disk = setup
                    .incident("disk", IncidentStatus::Open, first.start + TimeDelta::minutes(1))
                    .await;
                let service = setup.service();
                let released = service.release_ended(first.end).await.expect("release");
                assert_eq!(released, Released::default(), "the period goes on");
                let stored = setup.store.windows(None).await.expect("windows");
                assert!(stored.iter().all(|w| w.released_at.is_none()), "{stored:?}");
                let released = service.release_ended(second.end).await.expect("release");
                assert_eq!(
                    released,
                    Released {
                        windows: 2,
                        incidents: 1,
                        jobs: 2
                    }
                );
                let jobs = setup.store.queued_jobs();
                assert!(jobs
                    .iter()
                    .all(|j| j.incident.id == disk.id && j.id.contains(second.id.as_str())));
            });
        }

        /// The pages of each incident, by channel: `[email, slack]` once each
        /// is `2`.
        fn pages_of(setup: &Setup, incident: &Incident) -> usize {
            setup
                .store
                .queued_jobs()
                .iter()
                .filter(|j| j.incident.id == incident.id)
                .count()
        }

        fn checkout_window(start: DateTime<Utc>, end: DateTime<Utc>) -> MaintenanceWindow {
            MaintenanceWindow::new(service("checkout"), start, end, None, "api-key:ops").expect("valid")
        }

        #[test]
        fn only_what_was_held_is_paged_at_the_release_and_only_once() {
            let setup = Setup::new();
            block_on(async {
                let window = setup.catalog.maintenance[0].clone();
                let dispatch = setup.dispatch().with_maintenance(setup.store.clone());
                let trigger = |incident: &Incident| Transition {
                    kind: TransitionKind::Triggered,
                    incident: incident.clone(),
                    event_id: EventId::new(incident.dedup_key.as_str()),
                };
                let opened = window.start - TimeDelta::minutes(10);
                apply_window(setup.store.as_ref(), &window, opened)
                    .await
                    .expect("apply");
                let before = setup.incident("before", IncidentStatus::Open, opened).await;
                assert_eq!(dispatch.dispatch(&trigger(&before), opened).await.expect("dispatch"), 2);
                let during = window.start + TimeDelta::minutes(10);
                let held = setup.incident("during", IncidentStatus::Open, during).await;
                assert_eq!(dispatch.dispatch(&trigger(&held), during).await.expect("dispatch"), 0);
                assert_eq!((pages_of(&setup, &before), pages_of(&setup, &held)), (2, 0));

                let service = setup.service();
                let released = service.release_ended(window.end).await.expect("release");
                assert_eq!(
                    released,
                    Released {
                        windows: 1,
                        incidents: 1,
                        jobs: 2
                    }
                );
                assert_eq!(
                    (pages_of(&setup, &before), pages_of(&setup, &held)),
                    (2, 2),
                    "the one opened before is not paged again"
                );
                let again = service
                    .release_ended(window.end + TimeDelta::minutes(1))
                    .await
                    .expect("release");
                assert_eq!(again, Released::default());
                assert_eq!(setup.store.queued_jobs().len(), 4);
            });
        }

        #[test]
        fn a_transition_is_held_only_if_it_happened_during_the_period() {
            let setup = Setup::new();
            block_on(async {
                let window = setup.catalog.maintenance[0].clone();
                apply_window(setup.store.as_ref(), &window, window.start)
                    .await
                    .expect("apply");
                let dispatch = setup.dispatch().with_maintenance(setup.store.clone());
                let during = window.start + TimeDelta::minutes(10);
                // Opened before the window, dispatched late, during it: the
                // release would not send it, so it is sent now.
                let early = setup
                    .incident("early", IncidentStatus::Open, window.start - TimeDelta::seconds(1))
                    .await;
                let transition = Transition {
                    kind: TransitionKind::Triggered,
                    incident: early.clone(),
                    event_id: EventId::new("early"),
                };
                assert_eq!(dispatch.dispatch(&transition, during).await.expect("dispatch"), 2);
                // Acknowledged during the window: held, like the opening would be.
                let mut acknowledged = early.clone();
                acknowledged.status = IncidentStatus::Acknowledged;
                acknowledged.updated_at = during;
                acknowledged.version += 1;
                let transition = Transition {
                    kind: TransitionKind::Acknowledged,
                    incident: acknowledged,
                    event_id: EventId::new("early-ack"),
                };
                assert_eq!(dispatch.dispatch(&transition, during).await.expect("dispatch"), 0);
                let released = setup.service().release_ended(window.end).await.expect("release");
                assert_eq!(released.incidents, 0, "opened before the window: {released:?}");
                assert_eq!(pages_of(&setup, &early), 2, "paged once, at its opening");
            });
        }

        #[test]
        fn chained_windows_are_one_period_released_once_at_the_end_of_the_last() {
            let setup = Setup::new();
            block_on(async {
                let base = setup.catalog.maintenance[0].start;
                let minutes = |m: i64| base + TimeDelta::minutes(m);
                // [0, 60) and [30, 120) overlap; [120, 150) abuts the second.
                let windows = [
                    checkout_window(minutes(0), minutes(60)),
                    checkout_window(minutes(30), minutes(120)),
                    checkout_window(minutes(120), minutes(150)),
                ];
                for w in &windows {
                    apply_window(setup.store.as_ref(), w, minutes(-5)).await.expect("apply");
                }
                let before = setup.incident("before", IncidentStatus::Open, minutes(-1)).await;
                let first = setup.incident("first", IncidentStatus::Open, minutes(10)).await;
                let second = setup
                    .incident("second", IncidentStatus::Acknowledged, minutes(90))
                    .await;
                let third = setup.incident("third", IncidentStatus::Open, minutes(130)).await;
                let after = setup.incident("after", IncidentStatus::Open, minutes(150)).await;

                // Held at any time of the period, whichever window opened it.
                let dispatch = setup.dispatch().with_maintenance(setup.store.clone());
                let transition = Transition {
                    kind: TransitionKind::Triggered,
                    incident: first.clone(),
                    event_id: EventId::new("first"),
                };
                assert_eq!(dispatch.dispatch(&transition, minutes(125)).await.expect("dispatch"), 0);

                let service = setup.service();
                for at in [minutes(60), minutes(120), minutes(149)] {
                    assert_eq!(
                        service.release_ended(at).await.expect("release"),
                        Released::default(),
                        "the period goes on at {at}"
                    );
                }
                let released = service.release_ended(minutes(150)).await.expect("release");
                assert_eq!(
                    released,
                    Released {
                        windows: 3,
                        incidents: 3,
                        jobs: 6
                    }
                );
                for incident in [&first, &second, &third] {
                    assert_eq!(pages_of(&setup, incident), 2, "{} once", incident.dedup_key.as_str());
                }
                assert_eq!((pages_of(&setup, &before), pages_of(&setup, &after)), (0, 0));
                let last = &windows[2];
                assert!(setup
                    .store
                    .queued_jobs()
                    .iter()
                    .all(|j| j.id.contains(last.id.as_str())));
                let stored = setup.store.windows(None).await.expect("windows");
                assert!(stored.iter().all(|w| w.released_at == Some(minutes(150))), "{stored:?}");
                assert_eq!(
                    service.release_ended(minutes(200)).await.expect("release"),
                    Released::default()
                );
                assert_eq!(setup.store.queued_jobs().len(), 6);
            });
        }

        #[test]
        fn a_release_cut_short_is_done_again_with_its_whole_period() {
            let setup = Setup::new();
            block_on(async {
                let base = setup.catalog.maintenance[0].start;
                let minutes = |m: i64| base + TimeDelta::minutes(m);
                let (first, last) = (
                    checkout_window(minutes(0), minutes(60)),
                    checkout_window(minutes(30), minutes(90)),
                );
                for w in [&first, &last] {
                    apply_window(setup.store.as_ref(), w, minutes(-5)).await.expect("apply");
                }
                let early = setup.incident("early", IncidentStatus::Open, minutes(10)).await;
                // The run marked the period's first window, then stopped.
                setup.store.mark_released(&first.id, minutes(91)).await.expect("mark");
                let released = setup.service().release_ended(minutes(92)).await.expect("release");
                assert_eq!(
                    released,
                    Released {
                        windows: 1,
                        incidents: 1,
                        jobs: 2
                    }
                );
                assert_eq!(pages_of(&setup, &early), 2);
            });
        }

        #[test]
        fn a_window_released_before_another_began_is_not_part_of_its_period() {
            let setup = Setup::new();
            block_on(async {
                let base = setup.catalog.maintenance[0].start;
                let minutes = |m: i64| base + TimeDelta::minutes(m);
                let first = checkout_window(minutes(0), minutes(60));
                apply_window(setup.store.as_ref(), &first, minutes(-5))
                    .await
                    .expect("apply");
                let early = setup.incident("early", IncidentStatus::Open, minutes(10)).await;
                let service = setup.service();
                assert_eq!(service.release_ended(minutes(60)).await.expect("release").incidents, 1);
                // Written after the first was released, abutting it.
                let next = checkout_window(minutes(60), minutes(90));
                apply_window(setup.store.as_ref(), &next, minutes(61))
                    .await
                    .expect("apply");
                let late = setup.incident("late", IncidentStatus::Open, minutes(70)).await;
                let released = service.release_ended(minutes(90)).await.expect("release");
                assert_eq!((released.windows, released.incidents), (1, 1));
                assert_eq!((pages_of(&setup, &early), pages_of(&setup, &late)), (2, 2));
            });
        }

        #[test]
        fn a_window_ended_early_releases_what_it_held_and_keeps_its_end() {
            let setup = Setup::new();
            block_on(async {
                let window = setup.catalog.maintenance[0].clone();
                apply_window(setup.store.as_ref(), &window, window.start)
                    .await
                    .expect("apply");
                let held = setup
                    .incident("held", IncidentStatus::Open, window.start + TimeDelta::minutes(5))
                    .await;
                let now = window.start + TimeDelta::minutes(10);
                assert!(setup.store.end_window(&window.id, now).await.expect("end"));
                assert!(
                    !setup
                        .store
                        .end_window(&window.id, now + TimeDelta::minutes(1))
                        .await
                        .expect("end"),
                    "it already ends by then"
                );
                let stored = setup.store.windows(None).await.expect("windows");
                assert_eq!((&stored[0].id, stored[0].end), (&window.id, now), "ended in place");
                // Applying the config again keeps the early end.
                apply_window(setup.store.as_ref(), &window, now).await.expect("apply");
                assert_eq!(setup.store.windows(None).await.expect("windows")[0].end, now);

                let released = setup.service().release_ended(now).await.expect("release");
                assert_eq!((released.windows, released.incidents), (1, 1));
                assert_eq!(pages_of(&setup, &held), 2);
                assert!(
                    !setup
                        .store
                        .end_window(&window.id, now - TimeDelta::minutes(1))
                        .await
                        .expect("end"),
                    "a released window stays as it is"
                );
                apply_window(setup.store.as_ref(), &window, now).await.expect("apply");
                assert_eq!(
                    setup.service().release_ended(window.end).await.expect("release"),
                    Released::default(),
                    "not opened again by the config"
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
