//! The gateways' one clock: Redis's. The sale window is judged inside the purchase script on
//! Redis's `TIME`; what a gateway decides by itself about time (a ticket's issue and expiry, a
//! webhook signature's age, an item's state on its product page) reads the same clock, as this
//! gateway's own clock plus the offset to Redis's measured every second. A gateway whose clock
//! runs fast or slow neither issues tickets early nor shows a live sale as ended.

use fred::prelude::*;
use seckill_infra::lifecycle::{Every, Shutdown};
use seckill_schema::snowflake::now_ms;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// How often the offset to Redis's clock is measured.
const MEASURE_EVERY: Duration = Duration::from_secs(1);

/// This gateway's clock, set to Redis's.
#[derive(Debug, Default)]
pub struct RedisClock {
    /// Redis's clock minus this gateway's, in milliseconds (0 until first measured).
    offset_ms: AtomicI64,
}

impl RedisClock {
    /// Milliseconds since the Unix epoch, by Redis's clock.
    pub fn now_ms(&self) -> i64 {
        now_ms() as i64 + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Seconds since the Unix epoch, by Redis's clock.
    pub fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Measures the offset once: Redis's `TIME` against the middle of the round trip.
    pub async fn measure(&self, redis: &Client) -> Result<(), fred::error::Error> {
        let sent = Instant::now();
        let before = now_ms() as i64;
        let time: Vec<String> = redis
            .custom(fred::cmd!("TIME"), Vec::<String>::new())
            .await?;
        let field = |i: usize| -> Result<i64, fred::error::Error> {
            time.get(i)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| fred::error::Error::new(fred::error::ErrorKind::Parse, "TIME"))
        };
        let (secs, micros) = (field(0)?, field(1)?);
        let round_trip = sent.elapsed().as_millis() as i64;
        let redis_ms = secs * 1000 + micros / 1000;
        self.offset_ms
            .store(redis_ms - (before + round_trip / 2), Ordering::Relaxed);
        Ok(())
    }

    /// Measures the offset every second until the stop is asked.
    pub async fn run(self: Arc<Self>, redis: Client, shutdown: Shutdown) {
        let mut ticks = Every::new(MEASURE_EVERY, shutdown);
        while ticks.tick().await {
            if let Err(e) = self.measure(&redis).await {
                tracing::debug!(error = %e, "measuring Redis's clock failed; the last offset stands");
            }
        }
    }
}
