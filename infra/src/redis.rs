//! Redis clients. `SECKILL_REDIS_URL` may name one server or a cluster (`redis-cluster://…`).

use anyhow::Context;
use fred::prelude::*;
use std::time::Duration;

/// Every command gives up after this; a Redis that does not answer is a 503, not a hang.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection with a command unanswered this long is dropped and made again.
const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(3);

fn builder(url: &str) -> anyhow::Result<Builder> {
    let config = Config::from_url(url)
        .with_context(|| format!("SECKILL_REDIS_URL={url:?} is not a Redis URL"))?;
    let mut b = Builder::from_config(config);
    b.with_performance_config(|p| {
        p.default_command_timeout = COMMAND_TIMEOUT;
    })
    .with_connection_config(|c| {
        c.connection_timeout = Duration::from_secs(2);
        c.internal_command_timeout = Duration::from_secs(2);
        c.max_command_attempts = 2;
        // A connection that answers nothing for this long (a hung or paused master, a
        // partition) is closed and made again, which also asks Sentinel for the master anew:
        // a command timeout alone would leave the client on the dead connection. Longer than
        // the relay's `XREAD … BLOCK`, which waits 1 s by design.
        c.unresponsive = fred::types::config::UnresponsiveConfig {
            max_timeout: Some(UNRESPONSIVE_AFTER),
            interval: Duration::from_millis(500),
        };
    })
    // Reconnect forever, quickly: Redis coming back must resume sales without a restart.
    .set_policy(ReconnectPolicy::new_constant(0, 200));
    Ok(b)
}

/// A pool of auto-pipelined clients, connected.
pub async fn pool(url: &str, size: usize) -> anyhow::Result<Pool> {
    let pool = builder(url)?.build_pool(size)?;
    pool.init().await.context("connecting to Redis")?;
    Ok(pool)
}

/// One client of its own, for blocking commands that would stall a shared connection.
pub async fn client(url: &str) -> anyhow::Result<Client> {
    let client = builder(url)?.build()?;
    client.init().await.context("connecting to Redis")?;
    Ok(client)
}

/// One client without a command timeout, for `XREAD … BLOCK`, whose wait is its own.
pub async fn blocking_client(url: &str) -> anyhow::Result<Client> {
    let mut b = builder(url)?;
    b.with_performance_config(|p| p.default_command_timeout = Duration::from_secs(0));
    let client = b.build()?;
    client.init().await.context("connecting to Redis")?;
    Ok(client)
}

/// A Pub/Sub client on a connection of its own (a subscribed connection serves nothing else),
/// connected. Its broadcast of messages holds `backlog` of them for a slow reader; past that the
/// reader is told it lagged.
pub async fn subscriber(
    url: &str,
    backlog: usize,
) -> anyhow::Result<fred::clients::SubscriberClient> {
    let mut b = builder(url)?;
    b.with_performance_config(|p| p.broadcast_channel_capacity = backlog);
    let client = b.build_subscriber_client()?;
    client.init().await.context("connecting to Redis")?;
    Ok(client)
}
