//! Leases held in Redis: a process's snowflake node id with its high-water mark (`lua/lease.lua`)
//! and a gene's outbox relay (`lua/relay_lease.lua`).

use super::{ScriptError, Scripts};
use fred::prelude::*;

pub const LEASE: &str = include_str!("../../../lua/lease.lua");
pub const RELAY_LEASE: &str = include_str!("../../../lua/relay_lease.lua");

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
    ) -> Result<Option<u64>, ScriptError> {
        let keys = vec![self.keys.node_lease(node), self.keys.node_high_water(node)];
        let args = vec![
            token.to_owned(),
            ttl_ms.to_string(),
            high_water_ms.to_string(),
        ];
        let n: i64 = self.lease.evalsha_with_reload(client, keys, args).await?;
        Ok((n >= 0).then_some(n as u64))
    }
}
