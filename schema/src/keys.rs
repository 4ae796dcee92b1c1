//! Every Redis key of the system, built in one place.
//!
//! All keys of one item, the records of its orders and its outbox stream share one hash tag,
//! `{g<gene>}`, where the gene is [`gene_of_item`]. Scripts therefore touch one slot on Redis
//! Cluster, and an order's record is found from its id alone (its gene is in its low bits).
//!
//! A hot item may spread its stock over K shards, each in a gene of its own ([`shard_gene`]:
//! shard 0 is the item's gene, the others follow a fixed order of genes that alternates between
//! the three thirds of the hash-slot space), so one item is served by up to K Redis cores. A buyer always buys from one home shard ([`home_shard`]): their holdings, latest
//! order and idempotency keys live there, and their order ids carry its gene. With K = 1 every key
//! is the item's gene's, as before shards existed.

use crate::ids::{ItemId, OrderId, UserId};
use crate::snowflake::{GENES, gene_of};

pub fn gene_of_item(item: ItemId) -> u8 {
    (item.0 % GENES) as u8
}

/// The most shards an item may have: one per gene.
pub const MAX_SHARDS: u8 = GENES as u8;

/// The genes in the order an item's shards take them, read as a ring. The tag `{g<n>}` of gene n
/// hashes to a fixed slot, and consecutive genes here lie in the first, second and last third of
/// the 16,384 slots in turn: 2 0 1 | 3 4 5 | 6 8 9 | 7 10 12 | 11 14 13. So on a Redis Cluster of
/// three masters splitting the slots evenly (as `redis-cli --cluster create` makes it), an item's
/// K shards spread over the masters as evenly as K allows, wherever its own gene is (other
/// cluster sizes get a fixed spread, not an even one). Counting up from the item's gene instead
/// put 3 shards on 3 masters for only half the item ids. Sixteen genes do not fall in three equal parts: the one left out,
/// [`SPARE`], takes the place of its twin in the ring (both lie in the first third).
const RING: [u8; GENES as usize - 1] = [2, 0, 1, 3, 4, 5, 6, 8, 9, 7, 10, 12, 11, 14, 13];
const SPARE: u8 = 15;
const SPARE_TWIN: u8 = 11;

/// Per gene of an item, the genes of its shards 0, 1, … : the item's own gene, then the ring from
/// the place after it, then the gene the ring has no place for (the spare, or the spare's twin).
const SEQUENCES: [[u8; GENES as usize]; GENES as usize] = {
    let mut out = [[0u8; GENES as usize]; GENES as usize];
    let n = RING.len();
    let mut start = 0;
    while start < GENES as usize {
        let (stands_for, last) = if start as u8 == SPARE {
            (SPARE_TWIN, SPARE_TWIN)
        } else {
            (start as u8, SPARE)
        };
        let mut at = 0;
        while RING[at] != stands_for {
            at += 1;
        }
        out[start][0] = start as u8;
        let mut s = 1;
        while s < n {
            out[start][s] = RING[(at + s) % n];
            s += 1;
        }
        out[start][n] = last;
        start += 1;
    }
    out
};

/// The gene of an item's shard `shard` (0 is the item's own gene).
pub fn shard_gene(item: ItemId, shard: u8) -> u8 {
    SEQUENCES[gene_of_item(item) as usize][shard as usize % GENES as usize]
}

/// The shard whose gene is `gene`, if the item has one there.
pub fn shard_of_gene(item: ItemId, shards: u8, gene: u8) -> Option<u8> {
    let sequence = &SEQUENCES[gene_of_item(item) as usize];
    let shard = sequence.iter().position(|g| *g == gene)? as u8;
    (shard < shards).then_some(shard)
}

/// A buyer's home shard among `shards`: a stable hash of the user id (SplitMix64's finalizer),
/// the same in every process and version.
pub fn home_shard(user: UserId, shards: u8) -> u8 {
    if shards <= 1 {
        return 0;
    }
    let mut z = user.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % shards as u64) as u8
}

#[derive(Debug, Clone)]
pub struct Keys {
    ns: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Self {
        Keys {
            ns: namespace.to_owned(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    fn tagged(&self, gene: u8, rest: std::fmt::Arguments<'_>) -> String {
        format!("{}:{{g{gene}}}:{rest}", self.ns)
    }

    /// Hash of the item's shard 0 (its only one, unsharded): `remaining`, `limit`, `price`,
    /// `starts`, `ends` (ms; 0 = open), `stock`, `name`, `shards` (K, absent for 1).
    pub fn item(&self, item: ItemId) -> String {
        self.item_in(item, gene_of_item(item))
    }

    /// Hash of the item's shard in `gene`: the shard's `remaining`, the item's settings, and the
    /// transfers out of the shard not yet finished (`x:<transfer id>` = `<units> <target gene>
    /// <ms>`, `xpending` their count).
    pub fn item_in(&self, item: ItemId, gene: u8) -> String {
        self.tagged(gene, format_args!("item:{item}"))
    }

    /// Hash of the buyers of shard 0: `<user>` = units held by live orders, `<user>:o` = the
    /// user's latest order id.
    pub fn buyers(&self, item: ItemId) -> String {
        self.buyers_in(item, gene_of_item(item))
    }

    /// Hash of the buyers whose home is the item's shard in `gene`.
    pub fn buyers_in(&self, item: ItemId, gene: u8) -> String {
        self.tagged(gene, format_args!("buyers:{item}"))
    }

    /// String: the token of a rebuild counting the item's shards; while it is set, no transfer
    /// moves units in or out of the item's shard in `gene`.
    pub fn freeze(&self, item: ItemId, gene: u8) -> String {
        self.tagged(gene, format_args!("freeze:{item}"))
    }

    /// String: a transfer of units into the item's shard in `gene` was credited (its units), so a
    /// repeat of it credits nothing.
    pub fn transfer_in(&self, item: ItemId, gene: u8, transfer: u64) -> String {
        self.tagged(gene, format_args!("xin:{item}:{transfer}"))
    }

    /// Hash: the read model of one order (see `lua/purchase.lua`).
    pub fn order(&self, order: OrderId) -> String {
        self.tagged(gene_of(order.0), format_args!("order:{order}"))
    }

    /// Stream: `ORDER_CREATED` events waiting for the relay.
    pub fn outbox(&self, gene: u8) -> String {
        self.tagged(gene, format_args!("outbox"))
    }

    /// String: the token of the relay that moves a gene's outbox to the broker (one at a time).
    pub fn relay_lease(&self, gene: u8) -> String {
        self.tagged(gene, format_args!("relay"))
    }

    pub fn outboxes(&self) -> impl Iterator<Item = (u8, String)> + '_ {
        (0..GENES as u8).map(|g| (g, self.outbox(g)))
    }

    /// String: the order id a `(user, Idempotency-Key)` pair was first answered with, in the
    /// buyer's home gene.
    pub fn idempotency(&self, item: ItemId, gene: u8, user: UserId, key: &str) -> String {
        self.tagged(gene, format_args!("idem:{item}:{user}:{key}"))
    }

    /// Placeholder passed when a request has no idempotency key, so the script's key list keeps
    /// its shape and stays in the purchase's slot. Never read or written.
    pub fn no_idempotency(&self, gene: u8) -> String {
        self.tagged(gene, format_args!("idem:-"))
    }

    /// Hash: what Redis holds of one shard gene. `ready` = the epoch (ms) of the state it holds,
    /// written last by the rebuild from the database (`lua/rebuild_done.lua`); its absence means
    /// Redis lost (or never had) the gene's data, and nothing is sold or released in the gene until
    /// it is rebuilt. `i:<item>` = 1 for every item warmed in the gene, so a lost item hash is told
    /// apart from an unknown item.
    pub fn state(&self, gene: u8) -> String {
        self.tagged(gene, format_args!("state"))
    }

    pub fn state_of_item(&self, item: ItemId) -> String {
        self.state(gene_of_item(item))
    }

    pub fn states(&self) -> impl Iterator<Item = (u8, String)> + '_ {
        (0..GENES as u8).map(|g| (g, self.state(g)))
    }

    /// Hash: the stock adjustments of the gene's items applied to Redis and not yet known to be in
    /// the database: `<adjustment id>` = a `PendingAdjustment` (`seckill_infra::scripts::stock`). Written by
    /// `lua/adjust_stock.lua`, removed once the database has the adjustment (or it was undone);
    /// what a crash leaves here, the workers' reconciler settles.
    pub fn adjustments(&self, gene: u8) -> String {
        self.tagged(gene, format_args!("adjustments"))
    }

    /// String: the token of the process rebuilding a gene, in the gene's slot.
    pub fn rebuild_lock(&self, gene: u8) -> String {
        self.tagged(gene, format_args!("rebuild"))
    }

    /// String: the user who was told an order id does not exist (`GET /orders/{id}` answered
    /// `404`); a purchase of that id still in flight must then not sell (`lua/purchase.lua`).
    pub fn void(&self, order: OrderId) -> String {
        self.tagged(gene_of(order.0), format_args!("void:{order}"))
    }

    /// String: the token of the process that leases a snowflake node id.
    pub fn node_lease(&self, node: u16) -> String {
        format!("{}:{{node:{node}}}", self.ns)
    }

    /// String: the newest millisecond any holder of a node id has used.
    pub fn node_high_water(&self, node: u16) -> String {
        format!("{}:{{node:{node}}}:hwm", self.ns)
    }

    /// Pub/Sub channel: the workers announce the orders whose status they just mirrored, one
    /// message per batch ([`crate::record::OrderChange`] lines), so a gateway's order event
    /// streams learn of a change without polling.
    pub fn order_changes(&self) -> String {
        format!("{}:order-changes", self.ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_key_shares_its_item_tag() {
        let keys = Keys::new("t1");
        let item = ItemId(12345);
        let gene = gene_of_item(item);
        let order = OrderId(crate::snowflake::Snowflake::new(3).next(gene).unwrap());
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned();
        assert_eq!(tag(&keys.order(order)), tag(&keys.item(item)));
        assert_eq!(tag(&keys.buyers(item)), tag(&keys.item(item)));
        assert_eq!(tag(&keys.outbox(gene)), tag(&keys.item(item)));
        assert_eq!(tag(&keys.state_of_item(item)), tag(&keys.item(item)));
        assert_eq!(tag(&keys.void(order)), tag(&keys.item(item)));
        assert_eq!(tag(&keys.rebuild_lock(gene)), tag(&keys.item(item)));
        assert_eq!(tag(&keys.adjustments(gene)), tag(&keys.item(item)));
        assert!(keys.item(item).starts_with("t1:"));
    }

    #[test]
    fn a_shards_keys_are_in_its_gene_and_homes_spread_evenly() {
        let keys = Keys::new("t1");
        let item = ItemId(30);
        assert_eq!(shard_gene(item, 0), gene_of_item(item));
        assert_eq!(keys.item_in(item, shard_gene(item, 0)), keys.item(item));
        // Item 30 is in gene 14; its shards follow the ring from there, wrapping around.
        assert_eq!(shard_gene(item, 3), 0);
        assert_eq!(shard_of_gene(item, 4, 0), Some(3));
        assert_eq!(shard_of_gene(item, 3, 0), None);
        for item in (0..GENES).map(ItemId) {
            for s in 0..MAX_SHARDS {
                assert_eq!(
                    shard_of_gene(item, MAX_SHARDS, shard_gene(item, s)),
                    Some(s)
                );
            }
        }
        assert_eq!(home_shard(UserId(42), 1), 0);
        let mut per_shard = [0u32; 8];
        for user in 0..80_000 {
            per_shard[home_shard(UserId(user), 8) as usize] += 1;
        }
        assert!(
            per_shard.iter().all(|n| (9_000..11_000).contains(n)),
            "{per_shard:?}"
        );
    }

    /// CRC16/XMODEM, the hash of Redis Cluster's key slots: here only to check the ring.
    fn slot(tag: &str) -> u16 {
        let mut crc: u16 = 0;
        for byte in tag.bytes() {
            crc ^= u16::from(byte) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16_384
    }

    #[test]
    fn an_items_shards_spread_evenly_over_three_masters() {
        // Three masters splitting the slots evenly, as `redis-cli --cluster create` does.
        let master_of = |gene: u8| usize::from(slot(&format!("g{gene}"))) * 3 / 16_384;
        for item in (0..GENES).map(ItemId) {
            for shards in 1..=MAX_SHARDS {
                let mut per_master = [0u32; 3];
                for s in 0..shards {
                    per_master[master_of(shard_gene(item, s))] += 1;
                }
                let spread = per_master.iter().max().unwrap() - per_master.iter().min().unwrap();
                assert!(
                    spread <= 1 || shards == MAX_SHARDS,
                    "item {item:?}, {shards} shards: {per_master:?}"
                );
            }
        }
    }
}
