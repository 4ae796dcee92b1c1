//! Snowflake node ids: from `SECKILL_NODE_ID`, or leased in Redis so that no two live processes
//! mint on one node id at once, and no process repeats an id another minted before.
//!
//! Three guards, because Redis may lose the leases themselves (a restart without persistence, a
//! failover to a stale replica, a flushed key):
//!
//! - **Fencing.** A leased generator mints only for [`FENCE`] after its last confirmed renewal
//!   (on the process's monotonic clock): a process that cannot renew, paused or cut off from
//!   Redis, stops minting by itself.
//! - **Grace.** A lease that was free when taken (expired, never taken, or forgotten by Redis) may
//!   still be believed held by a live process that has not tried to renew since. The new holder
//!   mints only after [`GRACE`], longer than [`FENCE`], and a renewal that confirms the lease is
//!   still its own: by then the old holder has either stopped minting or found the lease taken.
//! - **The database's floor.** A node's high-water mark lives in Redis and is gone with the
//!   lease; a free lease therefore starts above the newest id of that node that the database
//!   holds, so a holder whose clock is behind never repeats an id stored before.

use crate::lifecycle::{Every, Shutdown};
use crate::scripts::{NodeLease, Scripts};
use anyhow::{Context, bail};
use fred::prelude::*;
use sea_orm::DatabaseConnection;
use seckill_schema::snowflake::{MAX_NODE, Snowflake, monotonic_ms, now_ms};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// A lease not renewed for this long is free.
const TTL: Duration = Duration::from_secs(5);
/// How often the holder renews.
const RENEW_EVERY: Duration = Duration::from_millis(500);
/// How long after a confirmed renewal a holder may mint (several renewals' worth, so that a slow
/// round trip does not stop a sale).
pub const FENCE: Duration = Duration::from_millis(1_500);
/// How long a new holder of a free lease waits before minting: past any earlier holder's fence.
pub const GRACE: Duration = Duration::from_millis(1_750);
/// How far back the database is searched for the node's newest order id. A holder whose clock is
/// further behind than this could still meet an older id; a day of orders is one index range.
const DB_LOOKBACK: Duration = Duration::from_secs(24 * 3600);
/// How long a new holder waits for the database to answer before it gives up the start.
const DB_DEADLINE: Duration = Duration::from_secs(30);

/// Where a free lease's floor comes from: the newest millisecond of the node's ids that the
/// database holds (0 for none).
pub trait Floor: Send + Sync {
    fn newest_ms(&self, node: u16) -> impl Future<Output = anyhow::Result<u64>> + Send;
}

/// The database's orders, through a connection made on first use.
impl<F, Fut> Floor for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = anyhow::Result<DatabaseConnection>> + Send,
{
    async fn newest_ms(&self, node: u16) -> anyhow::Result<u64> {
        let db = self().await?;
        let since = now_ms().saturating_sub(DB_LOOKBACK.as_millis() as u64);
        Ok(crate::db::newest_order_ms_of_node(&db, node, since)
            .await
            .context("reading the node's newest order id")?
            .unwrap_or(0))
    }
}

/// Takes a free node id and returns a generator on it, minting once the lease is confirmed.
pub async fn acquire(
    scripts: &Scripts,
    redis: &Pool,
    token: &str,
    floor: &impl Floor,
) -> anyhow::Result<Arc<Snowflake>> {
    acquire_from(
        scripts,
        redis,
        token,
        floor,
        rand::random::<u16>() % (MAX_NODE + 1),
    )
    .await
}

/// [`acquire`], trying node ids from `start` on (tests aim at one node this way).
pub async fn acquire_from(
    scripts: &Scripts,
    redis: &Pool,
    token: &str,
    floor: &impl Floor,
    start: u16,
) -> anyhow::Result<Arc<Snowflake>> {
    let ids = Arc::new(Snowflake::fenced(0));
    // Boxed: its future nests the database's connection, and callers' futures stay shallow.
    Box::pin(take_free(scripts, redis, token, &ids, floor, start)).await?;
    Ok(ids)
}

/// The high water a holder records: ahead of every id it minted by more than a lease's life, so
/// that a successor with a slower clock starts past them.
fn high_water(ids: &Snowflake) -> u64 {
    ids.high_water_ms().max(now_ms()) + 2 * TTL.as_millis() as u64
}

async fn take_free(
    scripts: &Scripts,
    redis: &Pool,
    token: &str,
    ids: &Snowflake,
    floor: &impl Floor,
    start: u16,
) -> anyhow::Result<()> {
    ids.fence_now();
    for i in 0..=MAX_NODE {
        let node = (start + i) % (MAX_NODE + 1);
        let ttl = TTL.as_millis() as u64;
        let asked_at = monotonic_ms();
        let Some(lease) = scripts
            .lease(redis.next(), node, token, ttl, high_water(ids))
            .await?
        else {
            continue;
        };
        ids.set_node(node);
        ids.start_after(lease.high_water_ms);
        if !lease.fresh {
            ids.confirm_until(asked_at, FENCE);
            return Ok(());
        }
        let newest = tokio::time::timeout(DB_DEADLINE, floor.newest_ms(node))
            .await
            .map_err(|_| anyhow::anyhow!("the database did not answer within {DB_DEADLINE:?}"))
            .and_then(|r| r)
            .with_context(|| format!("finding where node {node}'s ids start"))?;
        ids.start_after(newest);
        tokio::time::sleep(GRACE).await;
        let asked_at = monotonic_ms();
        match scripts
            .lease(redis.next(), node, token, ttl, high_water(ids))
            .await?
        {
            Some(NodeLease { .. }) => {
                ids.confirm_until(asked_at, FENCE);
                tracing::info!(node, "leased snowflake node id");
                return Ok(());
            }
            // Another process renewed it meanwhile: it was alive after all.
            None => continue,
        }
    }
    bail!("all {} snowflake node ids are leased", MAX_NODE as u32 + 1)
}

/// Renews the lease until `shutdown`, moving the generator's fence forward at each confirmed
/// renewal. A lease found taken stops minting at once and takes another.
pub async fn renew(
    scripts: Scripts,
    redis: Pool,
    token: String,
    ids: Arc<Snowflake>,
    floor: impl Floor,
    shutdown: Shutdown,
) {
    let mut ticks = Every::new(RENEW_EVERY, shutdown);
    let mut failing = false;
    while ticks.tick().await {
        let asked_at = monotonic_ms();
        match scripts
            .lease(
                redis.next(),
                ids.node(),
                &token,
                TTL.as_millis() as u64,
                high_water(&ids),
            )
            .await
        {
            Ok(Some(_)) => {
                ids.confirm_until(asked_at, FENCE);
                if failing {
                    failing = false;
                    tracing::info!(node = ids.node(), "the node lease is renewed again");
                }
            }
            Ok(None) => {
                tracing::error!(
                    node = ids.node(),
                    "snowflake node lease taken by another process; minting stopped, leasing a new one"
                );
                metrics::counter!("seckill_node_lease_lost_total").increment(1);
                let start = rand::random::<u16>() % (MAX_NODE + 1);
                let taken = Box::pin(take_free(&scripts, &redis, &token, &ids, &floor, start));
                if let Err(e) = taken.await {
                    tracing::error!(error = %format!("{e:#}"), "could not lease a new node id; retrying");
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, fence = ?FENCE, "renewing the node lease failed; minting stops when the fence runs out, retrying");
            }
            Err(_) => {}
        }
    }
}
