//! Snowflake node ids: from `SECKILL_NODE_ID`, or leased in Redis so that no two live processes
//! share one. The lease is renewed while the process lives; if it is ever lost to another process,
//! this one takes a new id before issuing more.

use crate::lifecycle::{Every, Shutdown};
use crate::scripts::Scripts;
use anyhow::bail;
use fred::prelude::*;
use seckill_schema::snowflake::{MAX_NODE, Snowflake};
use std::sync::Arc;
use std::time::Duration;

const TTL: Duration = Duration::from_secs(15);
const RENEW_EVERY: Duration = Duration::from_secs(3);

/// Takes a free node id and returns a generator on it.
pub async fn acquire(
    scripts: &Scripts,
    redis: &Pool,
    token: &str,
) -> anyhow::Result<Arc<Snowflake>> {
    let ids = Arc::new(Snowflake::new(0));
    take_free(scripts, redis, token, &ids).await?;
    Ok(ids)
}

async fn take_free(
    scripts: &Scripts,
    redis: &Pool,
    token: &str,
    ids: &Snowflake,
) -> anyhow::Result<()> {
    let start: u16 = rand::random::<u16>() % (MAX_NODE + 1);
    for i in 0..=MAX_NODE {
        let node = (start + i) % (MAX_NODE + 1);
        if let Some(hwm) = scripts
            .lease(redis.next(), node, token, TTL.as_millis() as u64, 0)
            .await?
        {
            ids.set_node(node);
            ids.start_after(hwm);
            tracing::info!(node, "leased snowflake node id");
            return Ok(());
        }
    }
    bail!("all {} snowflake node ids are leased", MAX_NODE as u32 + 1)
}

/// Renews the lease until `shutdown` fires. The recorded high water runs ahead of what was used by
/// more than one renewal period, so a successor never repeats an id even with a slower clock.
pub async fn renew(
    scripts: Scripts,
    redis: Pool,
    token: String,
    ids: Arc<Snowflake>,
    shutdown: Shutdown,
) {
    let mut ticks = Every::new(RENEW_EVERY, shutdown);
    while ticks.tick().await {
        let hwm = ids.high_water_ms().max(seckill_schema::snowflake::now_ms())
            + 2 * TTL.as_millis() as u64;
        match scripts
            .lease(
                redis.next(),
                ids.node(),
                &token,
                TTL.as_millis() as u64,
                hwm,
            )
            .await
        {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::error!(
                    node = ids.node(),
                    "snowflake node lease taken by another process; leasing a new one"
                );
                if let Err(e) = take_free(&scripts, &redis, &token, &ids).await {
                    tracing::error!(error = %e, "could not lease a new node id");
                }
            }
            Err(e) => tracing::warn!(error = %e, "renewing the node lease failed; will retry"),
        }
    }
}
