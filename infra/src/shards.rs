//! Keeping a sharded item's units where its buyers are: when a buyer's home shard runs dry while
//! other shards hold stock, units move to it by a transfer (see `crate::scripts::shards`), and
//! the item is sold out only once every shard is empty and no transfer is on its way.
//!
//! Every step of a transfer is as durable as `SECKILL_REDIS_DURABILITY` promises before the next
//! one runs (in `replica` mode a replica confirms it), so a failover never undoes a step whose
//! successor already ran. A transfer left pending by a crash is finished by whoever sees it next:
//! the next rebalance of the item, or the recovery watch of any process ([`finish_stale`]).

use crate::replication::GroupCommit;
use crate::scripts::{
    CreditedIn, Held, PendingTransfer, ScriptError, Scripts, ShardState, TakenOut,
};
use fred::prelude::*;
use seckill_schema::ItemId;
use seckill_schema::snowflake::now_ms;
use std::sync::Arc;
use std::time::Duration;

/// Rounds of reading the shards and moving units before a rebalance gives up for now.
const ROUNDS: usize = 4;
/// A pending transfer older than this was left by a crash: anyone may finish it.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// What a rebalance found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebalanced {
    /// The home shard holds enough for the purchase now: buy again.
    Ready,
    /// Every shard together holds less than the purchase wants, and nothing is on its way: the
    /// units the item has left (0: sold out).
    SoldOut { remaining: i64 },
    /// Transfers kept running, or a shard is being rebuilt: retry shortly.
    Busy,
}

/// What moves units between one item's shards, on one Redis client.
pub struct Balancer<'a> {
    pub scripts: &'a Scripts,
    pub client: &'a Client,
    /// In `replica` mode: every transfer step is confirmed by a replica before the next.
    pub commit: Option<&'a Arc<GroupCommit>>,
}

impl Balancer<'_> {
    /// Makes the shard in `home` hold at least `wanted` units if the item's shards together do:
    /// moves units from the shard that holds the most, enough to bring `home` to its share of
    /// what remains (and never less than `wanted`). `new_id` mints a transfer id in a gene.
    pub async fn rebalance(
        &self,
        item: ItemId,
        shards: u8,
        home: u8,
        wanted: i64,
        mut new_id: impl FnMut(u8) -> Option<u64>,
    ) -> Result<Rebalanced, ScriptError> {
        for _ in 0..ROUNDS {
            let Some(state) = self
                .scripts
                .shards_state(self.client, item, shards, Held::NotRead)
                .await?
            else {
                return Ok(Rebalanced::Busy);
            };
            let Some(here) = state.iter().find(|s| s.gene == home) else {
                return Ok(Rebalanced::Busy);
            };
            if !here.exists {
                return Ok(Rebalanced::Busy);
            }
            if here.remaining >= wanted {
                return Ok(Rebalanced::Ready);
            }
            let remaining: i64 = state.iter().map(|s| s.remaining.max(0)).sum();
            let pending: i64 = state.iter().map(|s| s.pending).sum();
            let richest = state
                .iter()
                .filter(|s| s.gene != home && s.remaining > 0)
                .max_by_key(|s| s.remaining);
            match richest {
                Some(source) => {
                    let share = (remaining + i64::from(shards) - 1) / i64::from(shards);
                    let want = (wanted - here.remaining).max(share).min(source.remaining);
                    let Some(id) = new_id(source.gene) else {
                        return Ok(Rebalanced::Busy);
                    };
                    self.transfer(item, source.gene, home, id, want).await?;
                }
                None if pending > 0 => self.finish_all(item, &state, Duration::ZERO).await?,
                None => return Ok(Rebalanced::SoldOut { remaining }),
            }
        }
        Ok(Rebalanced::Busy)
    }

    /// One transfer of up to `want` units from `source` to `target`, all three steps.
    async fn transfer(
        &self,
        item: ItemId,
        source: u8,
        target: u8,
        id: u64,
        want: i64,
    ) -> Result<(), ScriptError> {
        let taken = self
            .scripts
            .transfer_out(self.client, item, source, target, id, want)
            .await?;
        let TakenOut::Taken(units) = taken else {
            return Ok(());
        };
        self.confirm(item, source).await?;
        metrics::counter!("seckill_shard_transfers_total").increment(1);
        metrics::counter!("seckill_shard_transfer_units_total").increment(units as u64);
        self.finish(
            item,
            source,
            &PendingTransfer {
                id,
                units,
                target,
                at_ms: 0,
            },
        )
        .await
    }

    /// A transfer's last two steps: its units credited to the target, then its pending record
    /// gone from the source. A target that refuses (being rebuilt) leaves it pending.
    async fn finish(
        &self,
        item: ItemId,
        source: u8,
        t: &PendingTransfer,
    ) -> Result<(), ScriptError> {
        let credited = self
            .scripts
            .transfer_in(self.client, item, t.target, t.id, t.units)
            .await?;
        if credited != CreditedIn::Credited {
            return Ok(());
        }
        self.confirm(item, t.target).await?;
        self.scripts
            .transfer_done(self.client, item, source, t.id)
            .await?;
        self.confirm(item, source).await
    }

    /// Finishes every transfer of the item pending for longer than `older_than`.
    pub async fn finish_all(
        &self,
        item: ItemId,
        state: &[ShardState],
        older_than: Duration,
    ) -> Result<(), ScriptError> {
        let cutoff = now_ms() as i64 - older_than.as_millis() as i64;
        for shard in state {
            for t in shard.transfers.iter().filter(|t| t.at_ms <= cutoff) {
                self.finish(item, shard.gene, t).await?;
            }
        }
        Ok(())
    }

    /// In `replica` mode, waits for a replica of the shard's server to have its writes.
    async fn confirm(&self, item: ItemId, gene: u8) -> Result<(), ScriptError> {
        if let Some(commit) = self.commit {
            commit
                .replicated_for(&self.scripts.keys().item_in(item, gene))
                .await
                .map_err(|_| {
                    ScriptError::Redis(fred::error::Error::new(
                        fred::error::ErrorKind::Timeout,
                        "no replica confirmed a transfer step",
                    ))
                })?;
        }
        Ok(())
    }
}

/// Finishes the transfers of `item` that a crash left pending (older than [`STALE_AFTER`]).
pub async fn finish_stale(
    balancer: &Balancer<'_>,
    item: ItemId,
    shards: u8,
) -> Result<(), ScriptError> {
    let state = futures_util::future::try_join_all((0..shards).map(|s| {
        balancer.scripts.shard_state(
            balancer.client,
            item,
            seckill_schema::keys::shard_gene(item, s),
            Held::NotRead,
        )
    }))
    .await?;
    balancer.finish_all(item, &state, STALE_AFTER).await
}
