//! Notification throttling per contact method: nobody gets an SMS storm
//! when a thousand alerts fire at once.
//!
//! Each (channel, recipient) may be sent at most `limit` messages in each of
//! its windows (fixed windows aligned to the Unix epoch: the minute, the
//! quarter hour, the hour). A job over a limit is not sent: its incident is
//! recorded in the recipient's bundle, and once every window has room again
//! the scheduler sends ONE message for the whole bundle ("9 more incidents
//! on Checkout (and 2 on Payments)"), which counts toward the limits too.
//!
//! SMS is throttled by default, locally and on AWS alike, with limits close
//! to GoAlert's per-number ones: [`DEFAULT_SMS_PER_MINUTE`],
//! [`DEFAULT_SMS_PER_15_MINUTES`], [`DEFAULT_SMS_PER_HOUR`]. It is turned
//! off with `settings.throttle.sms.enabled: false` locally and
//! `TOCSIN_THROTTLE_SMS=off` on AWS. With `critical_bypass`, a critical
//! incident's message is always sent (and still counted).
//!
//! As with the ingest rate limit (crate::ratelimit), a failing store lets
//! the message through: a bookkeeping failure must never cost a page.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::Severity;
use crate::incident::IncidentId;
use crate::notify::{Channel, NotificationJob};
use crate::ports::BackendError;

pub const DEFAULT_SMS_PER_MINUTE: u32 = 1;
pub const DEFAULT_SMS_PER_15_MINUTES: u32 = 3;
pub const DEFAULT_SMS_PER_HOUR: u32 = 5;

/// At most `limit` messages per `seconds`-long window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub seconds: u32,
    pub limit: u32,
}

/// The throttle of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelLimits {
    pub windows: Vec<Window>,
    /// Critical incidents are always sent (still counted).
    pub critical_bypass: bool,
}

impl ChannelLimits {
    pub fn sms_defaults() -> Self {
        ChannelLimits {
            windows: vec![
                Window {
                    seconds: 60,
                    limit: DEFAULT_SMS_PER_MINUTE,
                },
                Window {
                    seconds: 900,
                    limit: DEFAULT_SMS_PER_15_MINUTES,
                },
                Window {
                    seconds: 3600,
                    limit: DEFAULT_SMS_PER_HOUR,
                },
            ],
            critical_bypass: false,
        }
    }

    /// The windows that hold `at`.
    pub fn slots(&self, at: DateTime<Utc>) -> Vec<Slot> {
        self.windows
            .iter()
            .map(|w| Slot {
                seconds: w.seconds,
                index: at.timestamp().div_euclid(i64::from(w.seconds)),
                limit: w.limit,
            })
            .collect()
    }
}

/// The throttles of the config (`settings.throttle`); a channel without
/// one is never throttled. The default throttles SMS with the default
/// limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleSettings {
    pub sms: Option<ChannelLimits>,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            sms: Some(ChannelLimits::sms_defaults()),
        }
    }
}

impl ThrottleSettings {
    /// No channel throttled.
    pub fn off() -> Self {
        ThrottleSettings { sms: None }
    }

    pub fn for_channel(&self, channel: Channel) -> Option<&ChannelLimits> {
        match channel {
            Channel::Sms => self.sms.as_ref(),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sms.is_none()
    }

    /// Parses `settings.throttle`; the error names the field and the reason.
    /// Absent (or without `sms`): SMS throttled with the default limits.
    pub fn parse(entry: Option<ThrottleEntry>) -> Result<Self, (String, String)> {
        let Some(entry) = entry else {
            return Ok(ThrottleSettings::default());
        };
        let sms = match entry.sms {
            None => Some(ChannelLimits::sms_defaults()),
            Some(sms) if sms.enabled == Some(false) => None,
            Some(sms) => {
                let pick = |value: Option<u32>, default: u32| value.filter(|v| *v > 0).unwrap_or(default);
                let (minute, quarter, hour) = (
                    pick(sms.per_minute, DEFAULT_SMS_PER_MINUTE),
                    pick(sms.per_15_minutes, DEFAULT_SMS_PER_15_MINUTES),
                    pick(sms.per_hour, DEFAULT_SMS_PER_HOUR),
                );
                if minute > quarter || quarter > hour {
                    return Err((
                        "settings.throttle.sms".to_owned(),
                        format!(
                            "limits must not shrink as the window grows \
                             (per_minute {minute}, per_15_minutes {quarter}, per_hour {hour})"
                        ),
                    ));
                }
                let mut limits = ChannelLimits::sms_defaults();
                limits.windows[0].limit = minute;
                limits.windows[1].limit = quarter;
                limits.windows[2].limit = hour;
                limits.critical_bypass = sms.critical_bypass.unwrap_or(false);
                Some(limits)
            }
        };
        Ok(ThrottleSettings { sms })
    }
}

/// The AWS functions' form of the same settings, from their environment:
/// `TOCSIN_THROTTLE_SMS` is `off`, or `<per minute>/<per 15 minutes>/<per
/// hour>` (0 takes the default), absent or empty meaning the defaults, as
/// locally; `TOCSIN_THROTTLE_SMS_CRITICAL_BYPASS` is `true` or `false`.
pub fn settings_from_env(
    sms: Option<&str>,
    critical_bypass: Option<&str>,
) -> Result<ThrottleSettings, (String, String)> {
    let sms = sms.map(str::trim).filter(|v| !v.is_empty()).unwrap_or("0/0/0");
    if sms.eq_ignore_ascii_case("off") {
        return Ok(ThrottleSettings::off());
    }
    let bad = |reason: &str| ("TOCSIN_THROTTLE_SMS".to_owned(), format!("{reason} (got {sms:?})"));
    let limits: Vec<u32> = sms
        .split('/')
        .map(|part| part.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("expected off or three whole numbers: per minute/per 15 minutes/per hour"))?;
    let [per_minute, per_15_minutes, per_hour] = limits[..] else {
        return Err(bad(
            "expected off or three whole numbers: per minute/per 15 minutes/per hour",
        ));
    };
    let critical_bypass = match critical_bypass.map(str::trim) {
        None | Some("") | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err((
                "TOCSIN_THROTTLE_SMS_CRITICAL_BYPASS".to_owned(),
                format!("expected true or false (got {other:?})"),
            ))
        }
    };
    ThrottleSettings::parse(Some(ThrottleEntry {
        sms: Some(ChannelEntry {
            enabled: Some(true),
            per_minute: Some(per_minute),
            per_15_minutes: Some(per_15_minutes),
            per_hour: Some(per_hour),
            critical_bypass: Some(critical_bypass),
        }),
    }))
}

/// `settings.throttle` as people write it.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ThrottleEntry {
    #[serde(default)]
    pub sms: Option<ChannelEntry>,
}

/// One channel's throttle; an absent or 0 limit takes its default.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ChannelEntry {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub per_minute: Option<u32>,
    #[serde(default)]
    pub per_15_minutes: Option<u32>,
    #[serde(default)]
    pub per_hour: Option<u32>,
    #[serde(default)]
    pub critical_bypass: Option<bool>,
}

/// One window of one recipient's count: `index` windows of `seconds` since
/// the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub seconds: u32,
    pub index: i64,
    pub limit: u32,
}

impl Slot {
    /// When the window ends, in seconds since the Unix epoch (stores expire
    /// the counter after it).
    pub fn ends_at(&self) -> i64 {
        (self.index + 1) * i64::from(self.seconds)
    }
}

/// A job held back by the throttle, waiting in its recipient's bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suppressed {
    pub channel: Channel,
    pub to: String,
    pub incident: IncidentId,
    pub service_name: String,
    pub at: DateTime<Utc>,
    /// The job held back; the bundle is sent as a copy of its newest one.
    pub job: NotificationJob,
}

/// The throttle's state, shared by every process that notifies: on AWS
/// DynamoDB (atomic counters, `THROTTLE#` items), locally SQLite.
#[async_trait]
pub trait ThrottleStore: Send + Sync {
    /// Counts one message to `to` on `channel` in every slot, atomically
    /// and only if each is under its limit, or in any case with `force`.
    /// Returns whether it was counted.
    async fn take(&self, channel: Channel, to: &str, slots: &[Slot], force: bool) -> Result<bool, BackendError>;

    /// Adds a held-back job to its recipient's bundle; one entry per
    /// (channel, recipient, incident), so a redelivered job counts once.
    async fn suppress(&self, item: &Suppressed) -> Result<(), BackendError>;

    /// Every bundled entry of `channel`, oldest first.
    async fn bundled(&self, channel: Channel) -> Result<Vec<Suppressed>, BackendError>;

    /// Removes these entries (after their bundle was sent); entries added
    /// since stay for the next bundle.
    async fn clear(&self, items: &[Suppressed]) -> Result<(), BackendError>;
}

/// What the throttle says about one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not throttled, under the limits, or the store failed.
    Send,
    /// Over a limit, but critical with bypass on: sent, and counted.
    Bypass,
    /// Over a limit: bundled.
    Suppress,
}

/// The messages of one recipient's bundle: incidents per service.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    pub channel: Channel,
    pub to: String,
    pub items: Vec<Suppressed>,
}

impl Bundle {
    /// (service name, distinct incidents), most incidents first, then by name.
    pub fn counts(&self) -> Vec<(String, usize)> {
        let mut per_service: BTreeMap<&str, std::collections::BTreeSet<&IncidentId>> = BTreeMap::new();
        for item in &self.items {
            per_service
                .entry(&item.service_name)
                .or_default()
                .insert(&item.incident);
        }
        let mut counts: Vec<(String, usize)> = per_service
            .into_iter()
            .map(|(service, incidents)| (service.to_owned(), incidents.len()))
            .collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counts
    }

    /// The job the bundle is delivered as: a copy of its newest held job,
    /// with an id of its own.
    pub fn job(&self, now: DateTime<Utc>) -> Option<NotificationJob> {
        let newest = self.items.iter().max_by_key(|i| i.at)?;
        let mut job = newest.job.clone();
        job.id = format!("bundle:{}:{}:{}", self.channel, self.to, now.timestamp());
        job.planned_at = now;
        Some(job)
    }
}

/// The in-memory throttle store: the contract suite's reference and the
/// core's tests.
#[derive(Default)]
pub struct MemoryThrottle {
    state: std::sync::Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    counts: BTreeMap<(Channel, String, u32, i64), u64>,
    bundled: Vec<Suppressed>,
}

impl MemoryThrottle {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, MemoryState>, BackendError> {
        self.state
            .lock()
            .map_err(|_| BackendError::new("memory throttle lock", "a writer panicked"))
    }
}

#[async_trait]
impl ThrottleStore for MemoryThrottle {
    async fn take(&self, channel: Channel, to: &str, slots: &[Slot], force: bool) -> Result<bool, BackendError> {
        let mut state = self.state()?;
        let key = |slot: &Slot| (channel, to.to_owned(), slot.seconds, slot.index);
        let room = slots
            .iter()
            .all(|slot| state.counts.get(&key(slot)).copied().unwrap_or(0) < u64::from(slot.limit));
        if !room && !force {
            return Ok(false);
        }
        for slot in slots {
            *state.counts.entry(key(slot)).or_insert(0) += 1;
        }
        Ok(true)
    }

    async fn suppress(&self, item: &Suppressed) -> Result<(), BackendError> {
        let mut state = self.state()?;
        let same = |i: &Suppressed| i.channel == item.channel && i.to == item.to && i.incident == item.incident;
        if !state.bundled.iter().any(same) {
            state.bundled.push(item.clone());
        }
        Ok(())
    }

    async fn bundled(&self, channel: Channel) -> Result<Vec<Suppressed>, BackendError> {
        let mut items: Vec<Suppressed> = self
            .state()?
            .bundled
            .iter()
            .filter(|i| i.channel == channel)
            .cloned()
            .collect();
        items.sort_by_key(|i| i.at);
        Ok(items)
    }

    async fn clear(&self, items: &[Suppressed]) -> Result<(), BackendError> {
        let mut state = self.state()?;
        state.bundled.retain(|kept| {
            !items
                .iter()
                .any(|i| i.channel == kept.channel && i.to == kept.to && i.incident == kept.incident)
        });
        Ok(())
    }
}

/// Decides, with the caller's clock, whether a job is sent or bundled.
#[derive(Clone)]
pub struct Throttle {
    store: Arc<dyn ThrottleStore>,
    settings: ThrottleSettings,
}

impl Throttle {
    pub fn new(store: Arc<dyn ThrottleStore>, settings: ThrottleSettings) -> Self {
        Self { store, settings }
    }

    pub fn settings(&self) -> &ThrottleSettings {
        &self.settings
    }

    /// Counts `job` against its recipient's limits and says what to do
    /// with it. A [`Verdict::Suppress`] job is already in the bundle.
    pub async fn admit(&self, job: &NotificationJob, now: DateTime<Utc>) -> Verdict {
        let Some(limits) = self.settings.for_channel(job.channel) else {
            return Verdict::Send;
        };
        let slots = limits.slots(now);
        let critical = limits.critical_bypass && job.incident.severity == Severity::Critical;
        let counted = match self.store.take(job.channel, &job.to, &slots, false).await {
            Ok(counted) => counted,
            Err(error) => {
                tracing::warn!(channel = %job.channel, error = %error, "the throttle failed; the message is sent");
                return Verdict::Send;
            }
        };
        if counted {
            return Verdict::Send;
        }
        if critical {
            if let Err(error) = self.store.take(job.channel, &job.to, &slots, true).await {
                tracing::warn!(error = %error, "a bypassing message was not counted");
            }
            return Verdict::Bypass;
        }
        let item = Suppressed {
            channel: job.channel,
            to: job.to.clone(),
            incident: job.incident.id.clone(),
            service_name: job.service_name.clone(),
            at: now,
            job: job.clone(),
        };
        match self.store.suppress(&item).await {
            Ok(()) => Verdict::Suppress,
            Err(error) => {
                tracing::warn!(error = %error, "the throttled message could not be bundled; it is sent");
                Verdict::Send
            }
        }
    }

    /// The bundles that may be sent at `now`: for every recipient with held
    /// jobs whose windows all have room, one bundle, already counted. Send
    /// each, then [`Throttle::sent`] it.
    pub async fn due_bundles(&self, now: DateTime<Utc>) -> Result<Vec<Bundle>, BackendError> {
        let mut due = Vec::new();
        for channel in Channel::ALL {
            let Some(limits) = self.settings.for_channel(channel) else {
                continue;
            };
            let mut per_recipient: BTreeMap<String, Vec<Suppressed>> = BTreeMap::new();
            for item in self.store.bundled(channel).await? {
                per_recipient.entry(item.to.clone()).or_default().push(item);
            }
            for (to, items) in per_recipient {
                if self.store.take(channel, &to, &limits.slots(now), false).await? {
                    due.push(Bundle { channel, to, items });
                }
            }
        }
        Ok(due)
    }

    /// Clears a bundle that was delivered.
    pub async fn sent(&self, bundle: &Bundle) -> Result<(), BackendError> {
        self.store.clear(&bundle.items).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::TransitionKind;
    use crate::memory::MemoryStore;
    use crate::render::fixtures;
    use chrono::TimeZone;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    /// `seconds` after the start of an hour (so of its minute and quarter).
    fn at(seconds: i64) -> DateTime<Utc> {
        // 1_800_000_000 is a multiple of 3600: the start of an hour.
        Utc.timestamp_opt(1_800_000_000 + seconds, 0)
            .single()
            .expect("a valid time")
    }

    fn sms_job(to: &str, incident: &str, service: &str, severity: Severity) -> NotificationJob {
        let mut job = fixtures::job(Channel::Sms, TransitionKind::Triggered);
        job.to = to.to_owned();
        job.incident.id = serde_json::from_value(serde_json::Value::from(incident)).expect("an id");
        job.incident.severity = severity;
        job.service_name = service.to_owned();
        job.id = format!("{incident}:sms:{to}");
        job
    }

    fn throttle(critical_bypass: bool) -> Throttle {
        let mut limits = ChannelLimits::sms_defaults();
        limits.critical_bypass = critical_bypass;
        Throttle::new(Arc::new(MemoryThrottle::new()), ThrottleSettings { sms: Some(limits) })
    }

    const ALICE: &str = "+15555550100";
    const BOB: &str = "+15555550199";

    #[test]
    fn a_burst_sends_the_allowed_ones_and_bundles_the_rest_until_the_window_has_room() {
        let throttle = throttle(false);
        let verdicts: Vec<Verdict> = (0..10)
            .map(|i| {
                let job = sms_job(ALICE, &format!("inc_{i}"), "Checkout", Severity::Error);
                block_on(throttle.admit(&job, at(i)))
            })
            .collect();
        assert_eq!(verdicts[0], Verdict::Send);
        assert!(verdicts[1..].iter().all(|v| *v == Verdict::Suppress), "{verdicts:?}");

        // Same minute: no room yet.
        assert!(block_on(throttle.due_bundles(at(30))).unwrap().is_empty());
        // Next minute: one bundle with the nine held incidents.
        let due = block_on(throttle.due_bundles(at(60))).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].to, ALICE);
        assert_eq!(due[0].counts(), vec![("Checkout".to_owned(), 9)]);
        block_on(throttle.sent(&due[0])).unwrap();
        assert!(block_on(throttle.due_bundles(at(120))).unwrap().is_empty());

        // The bundle counted: a job in the same minute is held.
        let late = sms_job(ALICE, "inc_late", "Checkout", Severity::Error);
        assert_eq!(block_on(throttle.admit(&late, at(65))), Verdict::Suppress);
    }

    #[test]
    fn longer_windows_hold_bundles_until_they_roll_over() {
        let throttle = throttle(false);
        // One a minute for three minutes uses the quarter hour's 3.
        for minute in 0..3 {
            let job = sms_job(ALICE, &format!("inc_{minute}"), "Checkout", Severity::Error);
            assert_eq!(block_on(throttle.admit(&job, at(minute * 60))), Verdict::Send);
        }
        let held = sms_job(ALICE, "inc_held", "Checkout", Severity::Error);
        assert_eq!(block_on(throttle.admit(&held, at(240))), Verdict::Suppress);
        // Minutes later the minute has room but the quarter hour not.
        assert!(block_on(throttle.due_bundles(at(600))).unwrap().is_empty());
        // The next quarter hour rolls over.
        let due = block_on(throttle.due_bundles(at(900))).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].counts(), vec![("Checkout".to_owned(), 1)]);
    }

    #[test]
    fn critical_bypasses_when_configured_and_still_counts() {
        let throttle = throttle(true);
        let first = sms_job(ALICE, "inc_1", "Checkout", Severity::Error);
        assert_eq!(block_on(throttle.admit(&first, at(0))), Verdict::Send);
        let critical = sms_job(ALICE, "inc_2", "Checkout", Severity::Critical);
        assert_eq!(block_on(throttle.admit(&critical, at(1))), Verdict::Bypass);
        let error = sms_job(ALICE, "inc_3", "Checkout", Severity::Error);
        assert_eq!(block_on(throttle.admit(&error, at(2))), Verdict::Suppress);
        // Counted: two of the quarter hour's three are used, so minute 1
        // sends the bundle and minute 2 finds the quarter full.
        let due = block_on(throttle.due_bundles(at(60))).unwrap();
        assert_eq!(due.len(), 1);
        block_on(throttle.sent(&due[0])).unwrap();
        let next = sms_job(ALICE, "inc_4", "Checkout", Severity::Error);
        assert_eq!(block_on(throttle.admit(&next, at(120))), Verdict::Suppress);

        // Without bypass, critical is bundled like the rest.
        let strict = self::throttle(false);
        block_on(strict.admit(&first, at(0)));
        assert_eq!(block_on(strict.admit(&critical, at(1))), Verdict::Suppress);
    }

    #[test]
    fn recipients_are_limited_independently() {
        let throttle = throttle(false);
        let a = sms_job(ALICE, "inc_1", "Checkout", Severity::Error);
        let b = sms_job(BOB, "inc_1", "Checkout", Severity::Error);
        assert_eq!(block_on(throttle.admit(&a, at(0))), Verdict::Send);
        assert_eq!(block_on(throttle.admit(&b, at(0))), Verdict::Send);
        let a2 = sms_job(ALICE, "inc_2", "Checkout", Severity::Error);
        assert_eq!(block_on(throttle.admit(&a2, at(1))), Verdict::Suppress);
        let due = block_on(throttle.due_bundles(at(60))).unwrap();
        assert_eq!(due.iter().map(|b| b.to.as_str()).collect::<Vec<_>>(), vec![ALICE]);
    }

    #[test]
    fn bundles_count_distinct_incidents_per_service_and_other_channels_pass() {
        let throttle = throttle(false);
        block_on(throttle.admit(&sms_job(ALICE, "inc_0", "Checkout", Severity::Error), at(0)));
        for (incident, service) in [("inc_1", "Checkout"), ("inc_2", "Payments"), ("inc_3", "Payments")] {
            let job = sms_job(ALICE, incident, service, Severity::Error);
            assert_eq!(block_on(throttle.admit(&job, at(1))), Verdict::Suppress);
            // A redelivered job is one entry.
            assert_eq!(block_on(throttle.admit(&job, at(2))), Verdict::Suppress);
        }
        let due = block_on(throttle.due_bundles(at(60))).unwrap();
        assert_eq!(
            due[0].counts(),
            vec![("Payments".to_owned(), 2), ("Checkout".to_owned(), 1)]
        );
        let job = due[0].job(at(60)).expect("a job");
        assert!(job.id.starts_with("bundle:sms:"), "{}", job.id);

        let mut email = sms_job(ALICE, "inc_9", "Checkout", Severity::Error);
        email.channel = Channel::Email;
        for second in 0..5 {
            assert_eq!(block_on(throttle.admit(&email, at(second))), Verdict::Send);
        }
    }

    /// Records what it was given to send.
    #[derive(Default)]
    struct Recording {
        sent: std::sync::Mutex<Vec<(String, crate::notify::Message)>>,
    }

    #[async_trait]
    impl crate::notify::Notifier for Recording {
        fn channel(&self) -> Channel {
            Channel::Sms
        }
        async fn deliver(
            &self,
            job: &NotificationJob,
            message: &crate::notify::Message,
        ) -> Result<crate::notify::Receipt, crate::notify::NotifyError> {
            self.sent.lock().expect("lock").push((job.to.clone(), message.clone()));
            Ok(crate::notify::Receipt::sent(None))
        }
    }

    #[test]
    fn the_notify_service_sends_the_allowed_bundles_the_rest_and_explains_it_in_the_timeline() {
        use crate::ports::Timeline;
        let notifier = Arc::new(Recording::default());
        let timeline = Arc::new(MemoryStore::new());
        let metrics = Arc::new(crate::metrics::CollectingSink::default());
        let notify = crate::dispatch::NotifyService::new(vec![notifier.clone()], Default::default())
            .with_timeline(timeline.clone())
            .with_metrics(crate::metrics::Metrics::new("notify", metrics.clone()))
            .with_throttle(throttle(false));
        let jobs: Vec<NotificationJob> = (0..10)
            .map(|i| sms_job(ALICE, &format!("inc_{i}"), "Checkout", Severity::Error))
            .collect();
        for (i, job) in jobs.iter().enumerate() {
            block_on(notify.deliver_at(job, 1, at(i as i64 * 5))).expect("handled");
        }
        assert_eq!(notifier.sent.lock().expect("lock").len(), 1);
        let held = block_on(timeline.timeline(&jobs[4].incident.id)).expect("a timeline");
        assert_eq!(held.len(), 1);
        assert_eq!(
            held[0].describe(),
            "throttled (bundled): triggered by sms to +•••••••0100"
        );
        let throttled = metrics
            .documents()
            .iter()
            .filter(|d| d.get("NotificationsThrottled").is_some())
            .count();
        assert_eq!(throttled, 9);

        // Same minute: nothing yet; the next: one SMS counting nine.
        assert_eq!(block_on(notify.send_bundles(at(59))).expect("ran"), 0);
        assert_eq!(block_on(notify.send_bundles(at(60))).expect("ran"), 1);
        assert_eq!(block_on(notify.send_bundles(at(120))).expect("ran"), 0);
        let sent = notifier.sent.lock().expect("lock").clone();
        assert_eq!(sent.len(), 2);
        let crate::notify::Message::Sms { text, segments, .. } = &sent[1].1 else {
            panic!("not an SMS: {:?}", sent[1])
        };
        assert_eq!((sent[1].0.as_str(), *segments), (ALICE, 1));
        assert!(text.starts_with("Tocsin: 9 more incidents on Checkout"), "{text}");
        let after = block_on(timeline.timeline(&jobs[4].incident.id)).expect("a timeline");
        assert_eq!(after.len(), 2, "{after:?}");
        assert!(
            after[1].describe().starts_with("notified: triggered by sms"),
            "{}",
            after[1].describe()
        );
    }

    #[test]
    fn the_functions_read_the_same_settings_from_their_environment() {
        assert_eq!(settings_from_env(None, None).unwrap(), ThrottleSettings::default());
        assert_eq!(settings_from_env(Some(" "), None).unwrap(), ThrottleSettings::default());
        assert_eq!(
            ThrottleSettings::default().sms,
            Some(ChannelLimits::sms_defaults()),
            "throttled unless turned off, as locally"
        );
        let bypass = settings_from_env(None, Some("true")).unwrap().sms.expect("on");
        assert_eq!(bypass.windows, ChannelLimits::sms_defaults().windows);
        assert!(bypass.critical_bypass);
        for off in ["off", "OFF"] {
            assert_eq!(
                settings_from_env(Some(off), Some("true")).unwrap(),
                ThrottleSettings::off()
            );
        }
        let on = settings_from_env(Some("1/3/5"), Some("true")).unwrap().sms.expect("on");
        assert_eq!(on.windows, ChannelLimits::sms_defaults().windows);
        assert!(on.critical_bypass);
        let zero = settings_from_env(Some("0/0/12"), None).unwrap().sms.expect("on");
        assert_eq!(zero.windows.iter().map(|w| w.limit).collect::<Vec<_>>(), vec![1, 3, 12]);
        assert!(!zero.critical_bypass);
        for bad in ["1/3", "a/b/c", "1/3/5/7"] {
            let (variable, _) = settings_from_env(Some(bad), None).unwrap_err();
            assert_eq!(variable, "TOCSIN_THROTTLE_SMS");
        }
        assert_eq!(
            settings_from_env(Some("5/3/1"), None).unwrap_err().0,
            "settings.throttle.sms"
        );
        assert_eq!(
            settings_from_env(Some("1/3/5"), Some("yes")).unwrap_err().0,
            "TOCSIN_THROTTLE_SMS_CRITICAL_BYPASS"
        );
    }

    struct Broken;

    #[async_trait]
    impl ThrottleStore for Broken {
        async fn take(&self, _: Channel, _: &str, _: &[Slot], _: bool) -> Result<bool, BackendError> {
            Err(BackendError::new("dynamodb UpdateItem", "throttled"))
        }
        async fn suppress(&self, _: &Suppressed) -> Result<(), BackendError> {
            Err(BackendError::new("dynamodb PutItem", "throttled"))
        }
        async fn bundled(&self, _: Channel) -> Result<Vec<Suppressed>, BackendError> {
            Err(BackendError::new("dynamodb Query", "throttled"))
        }
        async fn clear(&self, _: &[Suppressed]) -> Result<(), BackendError> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_store_lets_messages_through() {
        let throttle = Throttle::new(
            Arc::new(Broken),
            ThrottleSettings {
                sms: Some(ChannelLimits::sms_defaults()),
            },
        );
        let job = sms_job(ALICE, "inc_1", "Checkout", Severity::Error);
        assert_eq!(block_on(throttle.admit(&job, at(0))), Verdict::Send);
    }

    #[test]
    fn settings_take_defaults_for_absent_or_zero_limits_and_refuse_shrinking_ones() {
        let defaults = ThrottleSettings::parse(None).unwrap();
        assert_eq!(
            defaults.sms,
            Some(ChannelLimits::sms_defaults()),
            "throttled by default"
        );
        let entry = |yaml: &str| serde_yaml::from_str::<ThrottleEntry>(yaml).expect("an entry");
        assert_eq!(ThrottleSettings::parse(Some(entry("{}"))).unwrap(), defaults);
        assert_eq!(ThrottleSettings::parse(Some(entry("sms: {}"))).unwrap(), defaults);
        let parsed = ThrottleSettings::parse(Some(entry("sms: {per_minute: 0, per_hour: 10, critical_bypass: true}")))
            .unwrap()
            .sms
            .expect("sms throttled");
        let limits: Vec<u32> = parsed.windows.iter().map(|w| w.limit).collect();
        assert_eq!(limits, vec![1, 3, 10]);
        assert!(parsed.critical_bypass);
        assert_eq!(
            ThrottleSettings::parse(Some(entry("sms: {enabled: false}")))
                .unwrap()
                .sms,
            None
        );
        let (field, reason) =
            ThrottleSettings::parse(Some(entry("sms: {per_minute: 5, per_15_minutes: 2}"))).unwrap_err();
        assert_eq!(field, "settings.throttle.sms");
        assert!(reason.contains("per_minute 5"), "{reason}");
        assert!(serde_yaml::from_str::<ThrottleEntry>("sms: {per_day: 3}").is_err());
    }
}
