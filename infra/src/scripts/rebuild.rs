//! Loading items into Redis: a new item warmed (`lua/warm_item.lua`), and a gene that Redis lost
//! rebuilt from the database under a lock (`lua/rebuild_item.lua`, `lua/rebuild_orders.lua`,
//! `lua/rebuild_done.lua`, `lua/rebuild_abort.lua`).

use super::{ScriptError, Scripts};
use fred::prelude::*;
use seckill_schema::entity::items;
use seckill_schema::keys::{MAX_SHARDS, gene_of_item, shard_gene};
use seckill_schema::record::OrderRecord;
use seckill_schema::snowflake::now_ms;
use seckill_schema::{ItemId, OrderId, UserId};

pub const WARM_ITEM: &str = include_str!("../../../lua/warm_item.lua");
pub const REBUILD_ITEM: &str = include_str!("../../../lua/rebuild_item.lua");
pub const REBUILD_ORDERS: &str = concat!(
    include_str!("../../../lua/record.lua"),
    include_str!("../../../lua/rebuild_orders.lua")
);
pub const REBUILD_DONE: &str = include_str!("../../../lua/rebuild_done.lua");
pub const REBUILD_ABORT: &str = include_str!("../../../lua/rebuild_abort.lua");

/// What `warm_item` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warmed {
    Loaded,
    AlreadyThere,
    /// The gene is not ready (never built, or lost): rebuild it from the database.
    NeedsRebuild,
}

/// One shard of an item, as the database has it, for a warm-up or a rebuild.
#[derive(Debug, Clone)]
pub struct ItemState {
    /// The item's row, its `stock` with the stock adjustments the database does not have yet
    /// counted in.
    pub row: items::Model,
    /// The gene of the shard this is (the item's own gene for shard 0).
    pub gene: u8,
    /// The shard's remaining units.
    pub remaining: i64,
    /// (buyer homed at this shard, units held by live orders, latest held order)
    pub buyers: Vec<(UserId, i64, OrderId)>,
}

impl ItemState {
    /// A new unsharded item: all its stock remains, no buyer holds any.
    pub fn new(row: items::Model) -> ItemState {
        ItemState {
            gene: gene_of_item(ItemId(row.id as u64)),
            remaining: row.stock,
            row,
            buyers: Vec::new(),
        }
    }

    /// A new item's shards: its stock split evenly (the first shards take what does not divide).
    pub fn new_shards(row: &items::Model) -> Vec<ItemState> {
        let item = ItemId(row.id as u64);
        let k = shards_of(row);
        (0..k)
            .map(|s| ItemState {
                gene: shard_gene(item, s),
                remaining: row.stock / i64::from(k)
                    + i64::from(i64::from(s) < row.stock % i64::from(k)),
                row: row.clone(),
                buyers: Vec::new(),
            })
            .collect()
    }

    pub fn item(&self) -> ItemId {
        ItemId(self.row.id as u64)
    }
}

/// The item hash's fields after `remaining`, in the order `lua/warm_item.lua`,
/// `lua/rebuild_item.lua` and `lua/reshard.lua` take them: stock, per-user limit, price, starts
/// ms, ends ms (0 = open), name, shards.
pub(super) fn item_hash_args(row: &items::Model) -> [String; 7] {
    let [starts, ends] = row.window().in_hash();
    [
        row.stock.to_string(),
        row.per_user_limit.to_string(),
        row.price_cents.to_string(),
        starts.to_string(),
        ends.to_string(),
        row.name.clone(),
        shards_of(row).to_string(),
    ]
}

/// An item row's shards, within 1 and [`MAX_SHARDS`].
pub fn shards_of(row: &items::Model) -> u8 {
    row.shards.clamp(1, i16::from(MAX_SHARDS)) as u8
}

/// A live order's record, as the database has it, for a rebuild.
#[derive(Debug, Clone)]
pub struct RebuiltOrder {
    pub order_id: OrderId,
    pub record: OrderRecord,
}

impl Scripts {
    /// Loads a new item into Redis unless it is there already.
    pub async fn warm_item(
        &self,
        client: &Client,
        item: &ItemState,
    ) -> Result<Warmed, ScriptError> {
        let id = item.item();
        let mut args = vec![id.0.to_string(), item.remaining.to_string()];
        args.extend(item_hash_args(&item.row));
        let keys = vec![self.keys.item_in(id, item.gene), self.keys.state(item.gene)];
        let n: i64 = self
            .warm_item
            .evalsha_with_reload(client, keys, args)
            .await?;
        Ok(match n {
            1 => Warmed::Loaded,
            0 => Warmed::AlreadyThere,
            _ => Warmed::NeedsRebuild,
        })
    }

    /// Writes one item of a gene being rebuilt (its hash and buyers), under the rebuild lock.
    /// False when the lock is no longer `token`'s.
    pub async fn rebuild_item(
        &self,
        client: &Client,
        token: &str,
        item: &ItemState,
    ) -> Result<bool, ScriptError> {
        let id = item.item();
        let keys = vec![
            self.keys.rebuild_lock(item.gene),
            self.keys.item_in(id, item.gene),
            self.keys.buyers_in(id, item.gene),
        ];
        let mut chunks = item.buyers.chunks(1000);
        let mut first = true;
        loop {
            let chunk = chunks.next();
            if chunk.is_none() && !first {
                return Ok(true);
            }
            let mut args = vec![
                token.to_owned(),
                if first { "1" } else { "0" }.to_owned(),
                item.remaining.to_string(),
            ];
            args.extend(item_hash_args(&item.row));
            for (user, units, order) in chunk.unwrap_or_default() {
                args.push(user.0.to_string());
                args.push(units.to_string());
                args.push(order.0.to_string());
            }
            let n: i64 = self
                .rebuild_item
                .evalsha_with_reload(client, keys.clone(), args)
                .await?;
            if n != 1 {
                return Ok(false);
            }
            first = false;
        }
    }

    /// Writes live orders' records of a gene being rebuilt, counted by `epoch`, under the lock.
    pub async fn rebuild_orders(
        &self,
        client: &Client,
        gene: u8,
        token: &str,
        epoch: u64,
        orders: &[RebuiltOrder],
    ) -> Result<bool, ScriptError> {
        let now = now_ms().to_string();
        for chunk in orders.chunks(500) {
            let mut keys = Vec::with_capacity(1 + chunk.len());
            keys.push(self.keys.rebuild_lock(gene));
            let mut args = Vec::with_capacity(3 + chunk.len() * 11);
            args.extend([token.to_owned(), epoch.to_string(), now.clone()]);
            for o in chunk {
                let r = &o.record;
                keys.push(self.keys.order(o.order_id));
                args.extend([
                    r.user.0.to_string(),
                    r.item.0.to_string(),
                    r.quantity.get().to_string(),
                    r.amount_cents.to_string(),
                    r.status.as_str().to_owned(),
                    r.status.rank().to_string(),
                    r.created_at_ms.to_string(),
                    r.updated_at_ms.to_string(),
                ]);
                match &r.payment {
                    Some(p) => args.extend([
                        p.payment_id.clone(),
                        p.amount_cents.to_string(),
                        p.status.as_str().to_owned(),
                    ]),
                    None => args.extend([String::new(), String::new(), String::new()]),
                }
            }
            let n: i64 = self
                .rebuild_orders
                .evalsha_with_reload(client, keys, args)
                .await?;
            if n != 1 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Marks a rebuilt gene ready at `epoch` with its items and the database's write generation,
    /// and releases the lock.
    pub async fn rebuild_done(
        &self,
        client: &Client,
        gene: u8,
        token: &str,
        epoch: u64,
        generation: u64,
        items: &[ItemId],
    ) -> Result<bool, ScriptError> {
        let keys = vec![self.keys.rebuild_lock(gene), self.keys.state(gene)];
        let mut args = vec![token.to_owned(), epoch.to_string(), generation.to_string()];
        args.extend(items.iter().map(|i| i.0.to_string()));
        let n: i64 = self
            .rebuild_done
            .evalsha_with_reload(client, keys, args)
            .await?;
        Ok(n == 1)
    }

    /// Releases a gene's rebuild lock after a failed rebuild, if it is still `token`'s.
    pub async fn rebuild_abort(
        &self,
        client: &Client,
        gene: u8,
        token: &str,
    ) -> Result<(), ScriptError> {
        let _: i64 = self
            .rebuild_abort
            .evalsha_with_reload(
                client,
                vec![self.keys.rebuild_lock(gene)],
                vec![token.to_owned()],
            )
            .await?;
        Ok(())
    }
}
