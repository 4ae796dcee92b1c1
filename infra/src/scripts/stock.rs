//! The operators' changes to an item in Redis: a stock adjustment's Redis half, pending until the
//! database has it (`lua/adjust_stock.lua`, `lua/undo_adjustment.lua`), and its sale window and
//! per-user limit (`lua/item_settings.lua`).

use super::{BadScriptReply, ScriptError, Scripts, int};
use fred::prelude::*;
use seckill_schema::keys::{gene_of_item, shard_gene};
use seckill_schema::{AdjustmentId, ItemId, SaleWindow};

pub const ADJUST_STOCK: &str = include_str!("../../../lua/adjust_stock.lua");
pub const UNDO_ADJUSTMENT: &str = include_str!("../../../lua/undo_adjustment.lua");
pub const ITEM_SETTINGS: &str = include_str!("../../../lua/item_settings.lua");

/// A stock adjustment whose Redis half is applied and whose database half is not known to be: the
/// value of its entry in `Keys::adjustments`, `<item> <delta> <ms> <reason>`, written by
/// `lua/adjust_stock.lua` from [`Scripts::adjust_stock`]'s arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAdjustment {
    pub item: ItemId,
    /// Units added to the stock (negative: taken out).
    pub delta: i64,
    /// When the gateway applied it to Redis.
    pub at_ms: i64,
    /// The operator's words, 1 to 200 characters, no control characters.
    pub reason: String,
}

impl PendingAdjustment {
    pub fn decode(entry: &str) -> Result<PendingAdjustment, BadScriptReply> {
        let bad = || BadScriptReply(format!("a pending adjustment reads {entry:?}"));
        let mut parts = entry.splitn(4, ' ');
        let mut next = || parts.next().ok_or_else(bad);
        let item = next()?.parse().map_err(|_| bad())?;
        let delta = next()?.parse().map_err(|_| bad())?;
        let at_ms = next()?.parse().map_err(|_| bad())?;
        let reason = next()?.to_owned();
        Ok(PendingAdjustment {
            item,
            delta,
            at_ms,
            reason,
        })
    }
}

/// What `lua/adjust_stock.lua` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjusted {
    /// Applied to Redis and pending: the item's `remaining` and `stock` now.
    Applied {
        remaining: i64,
        stock: i64,
    },
    /// This adjustment id is pending already: nothing changed.
    AlreadyPending,
    UnknownItem,
    /// Redis lost the gene's state; it is being rebuilt from the database. Nothing changed.
    Recovering,
    /// The shrink would take units that live orders hold: nothing changed.
    Insufficient {
        remaining: i64,
    },
}

/// What `lua/undo_adjustment.lua` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undone {
    Reversed,
    /// Not pending: reversed or settled before.
    NotPending,
    /// The gene is being rebuilt: the adjustment stays pending.
    Recovering,
}

/// What the purchase script reads of an item besides its stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemSettings {
    pub window: SaleWindow,
    pub per_user_limit: i32,
}

impl Scripts {
    /// The Redis half of a stock adjustment (see `lua/adjust_stock.lua`).
    pub async fn adjust_stock(
        &self,
        client: &Client,
        id: AdjustmentId,
        adj: &PendingAdjustment,
    ) -> Result<Adjusted, ScriptError> {
        let k = &self.keys;
        let keys = vec![
            k.item(adj.item),
            k.state_of_item(adj.item),
            k.adjustments(gene_of_item(adj.item)),
        ];
        let args = vec![
            id.to_string(),
            adj.item.to_string(),
            adj.delta.to_string(),
            adj.at_ms.to_string(),
            adj.reason.clone(),
        ];
        let reply: Vec<Value> = self
            .adjust_stock
            .evalsha_with_reload(client, keys, args)
            .await?;
        let bad = || BadScriptReply(format!("adjust_stock answered {reply:?}"));
        Ok(match int(reply.first()) {
            Some(0) => Adjusted::Applied {
                remaining: int(reply.get(1)).ok_or_else(bad)?,
                stock: int(reply.get(2)).ok_or_else(bad)?,
            },
            Some(1) => Adjusted::AlreadyPending,
            Some(2) => Adjusted::UnknownItem,
            Some(3) => Adjusted::Recovering,
            Some(4) => Adjusted::Insufficient {
                remaining: int(reply.get(1)).ok_or_else(bad)?,
            },
            _ => return Err(bad().into()),
        })
    }

    /// Reverses a pending adjustment's Redis half, once (see `lua/undo_adjustment.lua`).
    pub async fn undo_adjustment(
        &self,
        client: &Client,
        id: AdjustmentId,
        item: ItemId,
    ) -> Result<Undone, ScriptError> {
        let k = &self.keys;
        let keys = vec![
            k.item(item),
            k.state_of_item(item),
            k.adjustments(gene_of_item(item)),
        ];
        let n: i64 = self
            .undo_adjustment
            .evalsha_with_reload(client, keys, vec![id.to_string()])
            .await?;
        Ok(match n {
            1 => Undone::Reversed,
            0 => Undone::NotPending,
            -1 => Undone::Recovering,
            _ => return Err(BadScriptReply(format!("undo_adjustment answered {n}")).into()),
        })
    }

    /// One pending adjustment of `item`'s gene, if it is pending.
    pub async fn pending_adjustment(
        &self,
        client: &Client,
        id: AdjustmentId,
        item: ItemId,
    ) -> Result<Option<PendingAdjustment>, ScriptError> {
        let entry: Option<String> = client
            .hget(self.keys.adjustments(gene_of_item(item)), id.to_string())
            .await?;
        Ok(entry
            .as_deref()
            .map(PendingAdjustment::decode)
            .transpose()?)
    }

    /// Every pending adjustment of a gene; an entry that does not decode comes back as its error.
    pub async fn pending_adjustments(
        &self,
        client: &Client,
        gene: u8,
    ) -> Result<Vec<(AdjustmentId, Result<PendingAdjustment, BadScriptReply>)>, ScriptError> {
        let entries: std::collections::HashMap<String, String> =
            client.hgetall(self.keys.adjustments(gene)).await?;
        let mut out: Vec<_> = entries
            .into_iter()
            .map(|(id, entry)| {
                let decoded = PendingAdjustment::decode(&entry);
                match id.parse() {
                    Ok(id) => (AdjustmentId(id), decoded),
                    Err(_) => (
                        AdjustmentId(0),
                        Err(BadScriptReply(format!(
                            "a pending adjustment has the id {id:?}"
                        ))),
                    ),
                }
            })
            .collect();
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }

    /// Forgets a pending adjustment the database has (or that was undone).
    pub async fn settle_adjustment(
        &self,
        client: &Client,
        id: AdjustmentId,
        item: ItemId,
    ) -> Result<(), ScriptError> {
        let _: i64 = client
            .hdel(self.keys.adjustments(gene_of_item(item)), id.to_string())
            .await?;
        Ok(())
    }

    /// Writes an item's sale window and per-user limit into the hash of each of its `shards`
    /// (each purchase reads its home shard's), if Redis holds them (see `lua/item_settings.lua`).
    /// False when Redis does not hold shard 0.
    pub async fn item_settings(
        &self,
        client: &Client,
        item: ItemId,
        shards: u8,
        settings: &ItemSettings,
    ) -> Result<bool, ScriptError> {
        let [starts, ends] = settings.window.in_hash();
        let args = vec![
            starts.to_string(),
            ends.to_string(),
            settings.per_user_limit.to_string(),
        ];
        let mut held = true;
        for s in 0..shards.max(1) {
            let key = self.keys.item_in(item, shard_gene(item, s));
            let n: i64 = self
                .item_settings
                .evalsha_with_reload(client, vec![key], args.clone())
                .await?;
            held &= s != 0 || n == 1;
        }
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_adjustment_keeps_the_spaces_of_its_reason() {
        let a = PendingAdjustment::decode("42 -7 1700000000000 found 3 broken, returned").unwrap();
        assert_eq!(
            a,
            PendingAdjustment {
                item: ItemId(42),
                delta: -7,
                at_ms: 1_700_000_000_000,
                reason: "found 3 broken, returned".into(),
            }
        );
        assert!(PendingAdjustment::decode("42 x 1 r").is_err());
        assert!(PendingAdjustment::decode("42 1 1").is_err());
    }
}
