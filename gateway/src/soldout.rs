//! The local sold-out flag: once Redis said an item has nothing left, this process answers
//! `sold_out` for it without asking Redis, for a short while. The flag lapses on its own, so when
//! units come back (a timeout, a cancel, a compensation) the item sells again within
//! [`FLAG_TTL`] on every gateway, with no message to lose.

use seckill_domain::ItemId;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

pub const FLAG_TTL: Duration = Duration::from_millis(500);

#[derive(Default)]
pub struct SoldOut {
    until: RwLock<HashMap<ItemId, Instant>>,
}

impl SoldOut {
    pub fn is_sold_out(&self, item: ItemId) -> bool {
        let map = self.until.read().unwrap_or_else(|p| p.into_inner());
        map.get(&item).is_some_and(|until| Instant::now() < *until)
    }

    pub fn mark(&self, item: ItemId) {
        let mut map = self.until.write().unwrap_or_else(|p| p.into_inner());
        map.insert(item, Instant::now() + FLAG_TTL);
    }
}
