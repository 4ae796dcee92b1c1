//! Leases held in Redis: a process's snowflake node id with its high-water mark (`lua/lease.lua`)
//! and a gene's outbox relay (`lua/relay_lease.lua`).

use super::{BadScriptReply, ScriptError, Scripts};
use fred::prelude::*;

pub const LEASE: &str = include_str!("../../../lua/lease.lua");
pub const RELAY_LEASE: &str = include_str!("../../../lua/relay_lease.lua");

/// A node id's lease, held by the caller now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLease {
    /// The newest millisecond any holder of the node recorded.
    pub high_water_ms: u64,
    /// The lease was free (expired, never taken, or forgotten by a Redis that lost its state) and
    /// is the caller's from now: another process may still believe it holds it.
    pub fresh: bool,
}

impl Scripts {
    /// Takes or renews (`hold`), or gives up, the lease of a gene's outbox relay (see
    /// `lua/relay_lease.lua`); true when the lease is `token`'s.
    pub async fn relay_lease(
        &self,
        client: &Client,
        gene: u8,
        token: &str,
        ttl_ms: u64,
        hold: bool,
    ) -> Result<bool, ScriptError> {
        let args = vec![
            token.to_owned(),
            ttl_ms.to_string(),
            if hold { "hold" } else { "release" }.to_owned(),
        ];
        let n: i64 = self
            .relay_lease
            .evalsha_with_reload(client, vec![self.keys.relay_lease(gene)], args)
            .await?;
        Ok(n == 1)
    }

    /// Takes or renews a node lease; `Some(high water ms)` when it is ours.
    pub async fn lease(
        &self,
        client: &Client,
        node: u16,
        token: &str,
        ttl_ms: u64,
        high_water_ms: u64,
    ) -> Result<Option<NodeLease>, ScriptError> {
        let keys = vec![self.keys.node_lease(node), self.keys.node_high_water(node)];
        let args = vec![
            token.to_owned(),
            ttl_ms.to_string(),
            high_water_ms.to_string(),
        ];
        let reply: Vec<i64> = self.lease.evalsha_with_reload(client, keys, args).await?;
        match reply.as_slice() {
            [-1, _] => Ok(None),
            [hwm, fresh] if *hwm >= 0 => Ok(Some(NodeLease {
                high_water_ms: *hwm as u64,
                fresh: *fresh == 1,
            })),
            _ => Err(BadScriptReply(format!("lease answered {reply:?}")).into()),
        }
    }
}
