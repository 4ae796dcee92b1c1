//! The local sold-out flag: once Redis said an item has nothing left, this process answers
//! `sold_out` for it without asking Redis, for a short while. The flag lapses on its own, so when
//! units come back (a timeout, a cancel, a compensation) the item sells again within
//! [`FLAG_TTL`] on every gateway, with no message to lose.

use arc_swap::ArcSwap;
use seckill_schema::ItemId;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const FLAG_TTL: Duration = Duration::from_millis(500);

type Flags = HashMap<ItemId, Instant, foldhash::fast::FixedState>;

/// Read by every request of a sale from both cores, written a few times a second: an
/// [`ArcSwap`] of the whole map, so a read takes no lock and writes to no shared cache line
/// (a `RwLock`'s reader count bounced between the cores on every sold-out answer).
#[derive(Default)]
pub struct SoldOut {
    until: ArcSwap<Flags>,
}

impl SoldOut {
    pub fn is_sold_out(&self, item: ItemId) -> bool {
        self.until
            .load()
            .get(&item)
            .is_some_and(|until| Instant::now() < *until)
    }

    pub fn mark(&self, item: ItemId) {
        let now = Instant::now();
        self.until.rcu(|flags| {
            let mut flags: Flags = flags
                .iter()
                .filter(|(_, until)| **until > now)
                .map(|(i, u)| (*i, *u))
                .collect();
            flags.insert(item, now + FLAG_TTL);
            Arc::new(flags)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_holds_for_its_item_only_and_lapses() {
        let flags = SoldOut::default();
        assert!(!flags.is_sold_out(ItemId(1)));
        flags.mark(ItemId(1));
        assert!(flags.is_sold_out(ItemId(1)));
        assert!(!flags.is_sold_out(ItemId(2)));
        // A lapsed flag is dropped at the next mark.
        flags.until.store(Arc::new(
            [(ItemId(1), Instant::now() - Duration::from_millis(1))]
                .into_iter()
                .collect(),
        ));
        assert!(!flags.is_sold_out(ItemId(1)));
        flags.mark(ItemId(2));
        assert!(!flags.until.load().contains_key(&ItemId(1)));
        assert!(flags.is_sold_out(ItemId(2)));
    }
}
