//! How many shards each item's stock is spread over, as this gateway last read it: a buyer's
//! home shard, and so the lane and the keys of a purchase, follow from it. Read from the item's
//! shard 0 on first need and whenever the purchase script says the layout changed (the script
//! checks it on every purchase, so a stale entry costs one retry, never a wrong sale).

use arc_swap::ArcSwap;
use fred::prelude::*;
use seckill_schema::keys::MAX_SHARDS;
use seckill_schema::{ItemId, Keys};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Default)]
pub struct Layouts {
    shards: ArcSwap<HashMap<ItemId, u8>>,
}

impl Layouts {
    /// The item's shards as last read (1 for an item not read yet: the purchase script corrects
    /// it).
    pub fn shards(&self, item: ItemId) -> u8 {
        self.shards.load().get(&item).copied().unwrap_or(1)
    }

    /// Reads the item's shards from Redis anew, and remembers them.
    pub async fn refresh(
        &self,
        redis: &Client,
        keys: &Keys,
        item: ItemId,
    ) -> Result<u8, fred::error::Error> {
        let shards: Option<u8> = redis.hget(keys.item(item), "shards").await?;
        let shards = shards.unwrap_or(1).clamp(1, MAX_SHARDS);
        self.shards.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(item, shards);
            Arc::new(map)
        });
        Ok(shards)
    }
}
