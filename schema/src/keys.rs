//! Every Redis key of the system, built in one place.
//!
//! All keys of one item, the records of its orders and its outbox stream share one hash tag,
//! `{g<gene>}`, where the gene is [`gene_of_item`]. Scripts therefore touch one slot on Redis
//! Cluster, and an order's record is found from its id alone (its gene is in its low bits).

use crate::ids::{ItemId, OrderId, UserId};
use crate::snowflake::{GENES, gene_of};

pub fn gene_of_item(item: ItemId) -> u8 {
    (item.0 % GENES) as u8
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

    /// Hash: `remaining`, `limit`, `price`, `starts`, `ends` (ms; 0 = open), `stock`, `name`.
    pub fn item(&self, item: ItemId) -> String {
        self.tagged(gene_of_item(item), format_args!("item:{item}"))
    }

    /// Hash: `<user>` = units held by live orders, `<user>:o` = the user's latest order id.
    pub fn buyers(&self, item: ItemId) -> String {
        self.tagged(gene_of_item(item), format_args!("buyers:{item}"))
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

    /// String: the order id a `(user, Idempotency-Key)` pair was first answered with.
    pub fn idempotency(&self, item: ItemId, user: UserId, key: &str) -> String {
        self.tagged(gene_of_item(item), format_args!("idem:{item}:{user}:{key}"))
    }

    /// Placeholder passed when a request has no idempotency key, so the script's key list keeps
    /// its shape and stays in the item's slot. Never read or written.
    pub fn no_idempotency(&self, item: ItemId) -> String {
        self.tagged(gene_of_item(item), format_args!("idem:-"))
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
}
