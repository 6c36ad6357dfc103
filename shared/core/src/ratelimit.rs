//! The ingest rate limit: each integration may send at most N requests per
//! minute (default [`DEFAULT_PER_MINUTE`], `rate_limit_per_minute` in the
//! config, 0 for none), counted in fixed windows aligned to the minute by a
//! [`RateCounter`] that every process serving the integration shares.
//!
//! Two rules keep the limiter from ever costing a page it should not:
//! - A request that carries a resolve or an acknowledge is never refused
//!   (it is still counted). A flapping monitor that hits the limit must
//!   still be able to close what it opened; refusing the request whole
//!   would keep an incident open, and splitting it would half-process it.
//! - When the counter itself fails (DynamoDB throttled or unreachable), the
//!   request is let through, and the failure logged. The limit protects
//!   responders and the bill from a runaway sender; refusing alerts because
//!   of a bookkeeping failure would turn an AWS hiccup into missed
//!   incidents, the one outcome Tocsin exists to prevent. The events still
//!   go through the same queue, so nothing downstream is bypassed.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use http::{HeaderName, HeaderValue};

use crate::answer::Answer;
use crate::config::Integration;
use crate::ports::RateCounter;

/// What an integration may send per minute unless its config says otherwise.
pub const DEFAULT_PER_MINUTE: u32 = 120;

const WINDOW_SECONDS: i64 = 60;

pub static LIMIT_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub static REMAINING_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// When the window ends, in seconds since the Unix epoch (as GitHub's API).
pub static RESET_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Where an integration stands in the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub remaining: u32,
    /// The end of the window, in seconds since the Unix epoch.
    pub reset: i64,
    /// Whole seconds until then, at least 1.
    pub retry_after: u64,
}

impl Quota {
    /// Adds the X-RateLimit-* headers to an answer.
    pub fn apply(&self, answer: &mut Answer) {
        let headers = answer.headers_mut();
        headers.insert(LIMIT_HEADER.clone(), HeaderValue::from(self.limit));
        headers.insert(REMAINING_HEADER.clone(), HeaderValue::from(self.remaining));
        headers.insert(RESET_HEADER.clone(), HeaderValue::from(self.reset));
    }
}

/// The limiter's verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Under the limit, or over it with a resolve or acknowledge aboard.
    Allowed(Quota),
    /// Over the limit.
    Refused(Quota),
    /// No limit applies, or the counter failed (see the module comment).
    Unchecked,
}

#[derive(Clone)]
pub struct RateLimiter {
    counter: Arc<dyn RateCounter>,
}

impl RateLimiter {
    pub fn new(counter: Arc<dyn RateCounter>) -> Self {
        Self { counter }
    }

    /// Counts one request of `integration` at `now`. `exempt` requests
    /// (carrying a resolve or an acknowledge) are counted but never refused.
    pub async fn check(&self, integration: &Integration, exempt: bool, now: DateTime<Utc>) -> Decision {
        let Some(limit) = integration.rate_limit_per_minute else {
            return Decision::Unchecked;
        };
        let window = now.timestamp().div_euclid(WINDOW_SECONDS);
        let count = match self.counter.hit(&integration.id, window).await {
            Ok(count) => count,
            Err(error) => {
                tracing::warn!(
                    integration = %integration.id,
                    error = %error,
                    source = %error.source,
                    "the rate counter failed; the request is let through"
                );
                return Decision::Unchecked;
            }
        };
        let reset = (window + 1) * WINDOW_SECONDS;
        let quota = Quota {
            limit,
            remaining: u64::from(limit).saturating_sub(count).try_into().unwrap_or(0),
            reset,
            retry_after: u64::try_from(reset - now.timestamp()).unwrap_or(1).max(1),
        };
        if count > u64::from(limit) && !exempt {
            Decision::Refused(quota)
        } else {
            Decision::Allowed(quota)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use crate::ports::BackendError;
    use crate::providers::test_support::integration;
    use crate::providers::ProviderKind;
    use chrono::TimeZone;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    fn limited(limit: u32) -> Integration {
        let mut integration = integration(
            "pd",
            "checkout",
            ProviderKind::EventsV2,
            "22222222222222222222222222222222",
            None,
        );
        integration.rate_limit_per_minute = Some(limit);
        integration
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_020 + seconds, 0)
            .single()
            .expect("a valid time")
    }

    #[test]
    fn refuses_past_the_limit_until_the_window_ends() {
        let limiter = RateLimiter::new(Arc::new(MemoryStore::new()));
        let integration = limited(3);
        // at(0) is 20 s into its minute: the window ends 40 s later.
        let decisions: Vec<Decision> = (0..4)
            .map(|i| block_on(limiter.check(&integration, false, at(i))))
            .collect();
        let Decision::Allowed(first) = decisions[0] else {
            panic!("first request refused: {decisions:?}")
        };
        assert_eq!((first.limit, first.remaining, first.retry_after), (3, 2, 40));
        assert_eq!(first.reset, 1_800_000_060);
        assert!(matches!(decisions[2], Decision::Allowed(q) if q.remaining == 0));
        let Decision::Refused(refused) = decisions[3] else {
            panic!("fourth request allowed: {decisions:?}")
        };
        assert_eq!((refused.remaining, refused.retry_after), (0, 37));

        // The next window starts from zero.
        assert!(matches!(
            block_on(limiter.check(&integration, false, at(40))),
            Decision::Allowed(q) if q.remaining == 2 && q.reset == 1_800_000_120
        ));
    }

    #[test]
    fn resolves_and_acknowledges_are_never_refused() {
        let limiter = RateLimiter::new(Arc::new(MemoryStore::new()));
        let integration = limited(1);
        block_on(limiter.check(&integration, false, at(0)));
        assert!(matches!(
            block_on(limiter.check(&integration, false, at(1))),
            Decision::Refused(_)
        ));
        assert!(matches!(
            block_on(limiter.check(&integration, true, at(2))),
            Decision::Allowed(q) if q.remaining == 0
        ));
    }

    #[test]
    fn integrations_are_counted_apart_and_unlimited_ones_not_at_all() {
        let store = Arc::new(MemoryStore::new());
        let limiter = RateLimiter::new(store.clone());
        let a = limited(1);
        let mut b = limited(1);
        b.id = crate::event::IntegrationId::parse("other").expect("an id");
        assert!(matches!(
            block_on(limiter.check(&a, false, at(0))),
            Decision::Allowed(_)
        ));
        assert!(matches!(
            block_on(limiter.check(&b, false, at(0))),
            Decision::Allowed(_)
        ));
        let mut unlimited = limited(1);
        unlimited.rate_limit_per_minute = None;
        for _ in 0..5 {
            assert_eq!(block_on(limiter.check(&unlimited, false, at(0))), Decision::Unchecked);
        }
    }

    struct Broken;

    #[async_trait::async_trait]
    impl RateCounter for Broken {
        async fn hit(&self, _: &crate::event::IntegrationId, _: i64) -> Result<u64, BackendError> {
            Err(BackendError::new("dynamodb UpdateItem", "throttled"))
        }
    }

    #[test]
    fn a_failing_counter_lets_requests_through() {
        let limiter = RateLimiter::new(Arc::new(Broken));
        assert_eq!(block_on(limiter.check(&limited(1), false, at(0))), Decision::Unchecked);
    }

    #[test]
    fn headers_carry_the_quota() {
        let mut answer = crate::answer::empty_answer(http::StatusCode::ACCEPTED);
        Quota {
            limit: 120,
            remaining: 7,
            reset: 1_800_000_040,
            retry_after: 40,
        }
        .apply(&mut answer);
        let header = |name: &HeaderName| answer.headers()[name].to_str().expect("ascii").to_owned();
        assert_eq!(header(&LIMIT_HEADER), "120");
        assert_eq!(header(&REMAINING_HEADER), "7");
        assert_eq!(header(&RESET_HEADER), "1800000040");
    }
}
