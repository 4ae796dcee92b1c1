//! An item's stock over several shards (genes): reading every shard at one consistent moment,
//! and moving units from one shard to another by a transfer that is safe to repeat and survives a
//! crash at any step (`lua/transfer_out.lua`, `lua/transfer_in.lua`, `lua/transfer_done.lua`).
//!
//! A transfer's units are always somewhere the shards' sum counts: in the source's `remaining`,
//! then in its pending transfer (`x:<id>`), then in the target's `remaining` (and, for a moment,
//! also still pending, which only over-counts). A reader that needs the exact sum (is the item
//! sold out? how much does a lost shard hold?) reads every shard twice and takes the reading only
//! when no transfer step ran in between ([`ShardState::seq`]).

use super::{BadScriptReply, ScriptError, Scripts};
use fred::prelude::*;
use seckill_schema::ItemId;
use seckill_schema::keys::shard_gene;

pub const TRANSFER_OUT: &str = include_str!("../../../lua/transfer_out.lua");
pub const TRANSFER_IN: &str = include_str!("../../../lua/transfer_in.lua");
pub const TRANSFER_DONE: &str = include_str!("../../../lua/transfer_done.lua");
pub const SHARD_STATE: &str = include_str!("../../../lua/shard_state.lua");
pub const RESHARD: &str = include_str!("../../../lua/reshard.lua");

/// How many times a reader reads every shard before giving up on a consistent reading.
const CONSISTENT_READS: usize = 5;

/// A transfer out of a shard not ended yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTransfer {
    pub id: u64,
    pub units: i64,
    pub target: u8,
    pub at_ms: i64,
}

/// One shard of an item at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardState {
    pub gene: u8,
    /// Redis holds the shard (its hash exists).
    pub exists: bool,
    pub remaining: i64,
    /// Units held by the live orders of the buyers homed here.
    pub held: i64,
    /// Units of the transfers out of this shard not ended yet.
    pub pending: i64,
    /// Moved by every transfer step on this shard.
    pub seq: i64,
    pub transfers: Vec<PendingTransfer>,
}

impl ShardState {
    /// The stock this shard accounts for: what remains, what its buyers hold, what is on its way
    /// out.
    pub fn accounted(&self) -> i64 {
        self.remaining + self.held + self.pending
    }
}

/// Whether a shard's reading sums what its buyers hold: a read of every buyer of the shard, which
/// moving units (a rebalance, the progress of a sale) does without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Counted,
    /// `held` is 0.
    NotRead,
}

/// What a transfer's first step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakenOut {
    /// These units left the source (or had left before under this id).
    Taken(i64),
    /// The source has none left.
    NoneLeft,
    /// The source shard does not exist, is being rebuilt, or is frozen by a rebuild of another:
    /// nothing moved.
    Refused,
}

/// What a transfer's second step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditedIn {
    /// Credited now, or before under this id.
    Credited,
    /// The target is being rebuilt, frozen, or gone: nothing credited; the transfer stays pending
    /// on its source and is finished later.
    Refused,
}

impl Scripts {
    /// One shard of `item`, read in one script call.
    pub async fn shard_state(
        &self,
        client: &Client,
        item: ItemId,
        gene: u8,
        held: Held,
    ) -> Result<ShardState, ScriptError> {
        let keys = vec![
            self.keys.item_in(item, gene),
            self.keys.buyers_in(item, gene),
        ];
        let args = vec![if held == Held::Counted { "1" } else { "0" }];
        let reply: Vec<Value> = self
            .shard_state
            .evalsha_with_reload(client, keys, args)
            .await?;
        let bad = || BadScriptReply(format!("shard_state answered {reply:?}"));
        let int = |i: usize| super::int(reply.get(i)).ok_or_else(bad);
        let mut transfers = Vec::new();
        let mut i = 5;
        while i + 3 < reply.len() {
            transfers.push(PendingTransfer {
                id: u64::try_from(int(i)?).map_err(|_| bad())?,
                units: int(i + 1)?,
                target: u8::try_from(int(i + 2)?).map_err(|_| bad())?,
                at_ms: int(i + 3)?,
            });
            i += 4;
        }
        Ok(ShardState {
            gene,
            exists: int(0)? == 1,
            remaining: int(1)?,
            held: int(2)?,
            pending: int(3)?,
            seq: int(4)?,
            transfers,
        })
    }

    /// Every shard of `item` (`shards` of them) at one consistent moment: read twice, with no
    /// transfer step in between. `None` when transfers kept running through every reading.
    pub async fn shards_state(
        &self,
        client: &Client,
        item: ItemId,
        shards: u8,
        held: Held,
    ) -> Result<Option<Vec<ShardState>>, ScriptError> {
        let read = || async {
            futures_util::future::try_join_all(
                (0..shards).map(|s| self.shard_state(client, item, shard_gene(item, s), held)),
            )
            .await
        };
        let mut last = read().await?;
        for _ in 0..CONSISTENT_READS {
            let next = read().await?;
            if next.iter().zip(&last).all(|(a, b)| a.seq == b.seq) {
                return Ok(Some(next));
            }
            last = next;
        }
        Ok(None)
    }

    /// A transfer's first step: up to `want` units out of the shard in `source` for the one in
    /// `target`, under transfer `id`.
    pub async fn transfer_out(
        &self,
        client: &Client,
        item: ItemId,
        source: u8,
        target: u8,
        id: u64,
        want: i64,
    ) -> Result<TakenOut, ScriptError> {
        let keys = vec![
            self.keys.item_in(item, source),
            self.keys.state(source),
            self.keys.freeze(item, source),
        ];
        let args = vec![
            id.to_string(),
            want.to_string(),
            target.to_string(),
            seckill_schema::snowflake::now_ms().to_string(),
        ];
        let n: i64 = self
            .transfer_out
            .evalsha_with_reload(client, keys, args)
            .await?;
        Ok(match n {
            n if n > 0 => TakenOut::Taken(n),
            0 => TakenOut::NoneLeft,
            -3..=-1 => TakenOut::Refused,
            _ => return Err(BadScriptReply(format!("transfer_out answered {n}")).into()),
        })
    }

    /// A transfer's second step: its units credited to the shard in `target`, once.
    pub async fn transfer_in(
        &self,
        client: &Client,
        item: ItemId,
        target: u8,
        id: u64,
        units: i64,
    ) -> Result<CreditedIn, ScriptError> {
        let keys = vec![
            self.keys.item_in(item, target),
            self.keys.transfer_in(item, target, id),
            self.keys.state(target),
            self.keys.freeze(item, target),
        ];
        let n: i64 = self
            .transfer_in
            .evalsha_with_reload(client, keys, vec![id.to_string(), units.to_string()])
            .await?;
        Ok(match n {
            0 | 1 => CreditedIn::Credited,
            -3..=-1 => CreditedIn::Refused,
            _ => return Err(BadScriptReply(format!("transfer_in answered {n}")).into()),
        })
    }

    /// A transfer's last step: its pending record on the source goes.
    pub async fn transfer_done(
        &self,
        client: &Client,
        item: ItemId,
        source: u8,
        id: u64,
    ) -> Result<(), ScriptError> {
        let _: i64 = self
            .transfer_done
            .evalsha_with_reload(
                client,
                vec![self.keys.item_in(item, source)],
                vec![id.to_string()],
            )
            .await?;
        Ok(())
    }

    /// Lays the item's shard `shard` out anew for `row.shards` shards: `Some(units)` writes it
    /// whole with that share of the stock, `None` drops it. False while its gene is recovering.
    pub async fn reshard(
        &self,
        client: &Client,
        row: &seckill_schema::entity::items::Model,
        shard: u8,
        units: Option<i64>,
    ) -> Result<bool, ScriptError> {
        let item = ItemId(row.id as u64);
        let gene = shard_gene(item, shard);
        let keys = vec![
            self.keys.item_in(item, gene),
            self.keys.buyers_in(item, gene),
            self.keys.state(gene),
        ];
        let mut args = vec![
            if units.is_some() { "set" } else { "drop" }.to_owned(),
            item.0.to_string(),
            units.unwrap_or(0).to_string(),
        ];
        args.extend(super::rebuild::item_hash_args(row));
        let n: i64 = self.reshard.evalsha_with_reload(client, keys, args).await?;
        Ok(n == 1)
    }

    /// Freezes the item's shard in `gene` for a rebuild's count (no transfer in or out) for at
    /// most `ttl_ms`.
    pub async fn freeze(
        &self,
        client: &Client,
        item: ItemId,
        gene: u8,
        token: &str,
        ttl_ms: u64,
    ) -> Result<(), ScriptError> {
        let _: Option<String> = client
            .set(
                self.keys.freeze(item, gene),
                token,
                Some(fred::types::Expiration::PX(ttl_ms as i64)),
                None,
                false,
            )
            .await?;
        Ok(())
    }

    /// Lets transfers in and out of the item's shard in `gene` again.
    pub async fn thaw(&self, client: &Client, item: ItemId, gene: u8) -> Result<(), ScriptError> {
        let _: i64 = client.del(self.keys.freeze(item, gene)).await?;
        Ok(())
    }
}
