//! Per-user token buckets (`SECKILL_RATE_PER_USER` a second, bursts of twice that), in process.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use seckill_infra::lifecycle::{Every, Shutdown};
use seckill_schema::UserId;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct RateLimiter {
    inner: Option<Arc<DefaultKeyedRateLimiter<UserId>>>,
}

impl RateLimiter {
    /// `0` turns the limit off.
    pub fn new(per_second: u32) -> Self {
        let inner = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(per_second.saturating_mul(2)).unwrap_or(rate);
            Arc::new(DefaultKeyedRateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        RateLimiter { inner }
    }

    /// `Err(seconds to wait)` when the user is over the limit.
    pub fn check(&self, user: UserId) -> Result<(), u64> {
        let Some(limiter) = &self.inner else {
            return Ok(());
        };
        limiter.check_key(&user).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }

    /// Forgets users whose buckets are full again, so a crowd of a million does not stay in memory.
    pub async fn run_cleanup(self, shutdown: Shutdown) {
        let Some(limiter) = self.inner else { return };
        let mut ticks = Every::new(Duration::from_secs(1), shutdown);
        while ticks.tick().await {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}
