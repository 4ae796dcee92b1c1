//! The Lua scripts of `lua/`, loaded with `include_str!`, and the decoding of their answers into
//! Rust types at once: no magic numbers travel further than this module.

use crate::ids::{AdjustmentId, ItemId, OrderId, Quantity, UserId};
use crate::keys::{Keys, gene_of_item};
use crate::messages::OrderEvent;
use crate::record::{OrderRecord, ShownPayment};
use crate::snowflake::{gene_of, now_ms};
use crate::status::OrderStatus;
use fred::prelude::*;
use fred::types::scripts::Script;

pub const PURCHASE: &str = concat!(
    include_str!("../../lua/record.lua"),
    include_str!("../../lua/purchase.lua")
);
pub const RELEASE: &str = concat!(
    include_str!("../../lua/record.lua"),
    include_str!("../../lua/release.lua")
);
pub const MIRROR: &str = concat!(
    include_str!("../../lua/record.lua"),
    include_str!("../../lua/mirror.lua")
);
pub const WARM_ITEM: &str = include_str!("../../lua/warm_item.lua");
pub const LEASE: &str = include_str!("../../lua/lease.lua");
pub const RELAY_LEASE: &str = include_str!("../../lua/relay_lease.lua");
pub const LOOKUP_ORDER: &str = include_str!("../../lua/lookup_order.lua");
pub const REBUILD_ITEM: &str = include_str!("../../lua/rebuild_item.lua");
pub const REBUILD_ORDERS: &str = concat!(
    include_str!("../../lua/record.lua"),
    include_str!("../../lua/rebuild_orders.lua")
);
pub const REBUILD_DONE: &str = include_str!("../../lua/rebuild_done.lua");
pub const REBUILD_ABORT: &str = include_str!("../../lua/rebuild_abort.lua");
pub const ADJUST_STOCK: &str = include_str!("../../lua/adjust_stock.lua");
pub const UNDO_ADJUSTMENT: &str = include_str!("../../lua/undo_adjustment.lua");
pub const ITEM_SETTINGS: &str = include_str!("../../lua/item_settings.lua");

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;
/// How long a "no such order" answer fences a purchase of that id still in flight.
pub const VOID_TTL_SECS: u64 = 600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purchase {
    Accepted {
        order_id: OrderId,
        created_at_ms: i64,
    },
    Replayed {
        order_id: OrderId,
    },
    UnknownItem,
    NotStarted,
    Ended,
    LimitReached {
        order_id: Option<OrderId>,
    },
    SoldOut {
        remaining: i64,
    },
    /// Redis lost the gene's state; it is being rebuilt from the database. Nothing was sold.
    Recovering,
    /// The order id was declared unknown to its owner while this purchase was in flight.
    Void,
}

#[derive(Debug, thiserror::Error)]
#[error("unexpected answer from a Lua script: {0}")]
pub struct BadScriptReply(pub String);

impl Purchase {
    /// One purchase's three values of `lua/purchase.lua`'s answer: code, value, accepted ms.
    fn decode(reply: &[Value]) -> Result<Purchase, BadScriptReply> {
        let bad = || BadScriptReply(format!("{reply:?}"));
        let code = reply.first().and_then(|v| v.as_i64()).ok_or_else(bad)?;
        let text = reply.get(1).and_then(|v| v.as_string()).unwrap_or_default();
        let id = || text.parse::<u64>().ok().map(OrderId);
        Ok(match code {
            0 => Purchase::Accepted {
                order_id: id().ok_or_else(bad)?,
                created_at_ms: reply
                    .get(2)
                    .and_then(|v| v.as_string())
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(bad)?,
            },
            1 => Purchase::UnknownItem,
            2 => Purchase::NotStarted,
            3 => Purchase::Ended,
            4 => Purchase::Replayed {
                order_id: id().ok_or_else(bad)?,
            },
            5 => Purchase::LimitReached { order_id: id() },
            6 => Purchase::SoldOut {
                remaining: text.parse().map_err(|_| bad())?,
            },
            7 => Purchase::Recovering,
            8 => Purchase::Void,
            _ => return Err(bad()),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error(transparent)]
    Redis(#[from] fred::error::Error),
    #[error(transparent)]
    Reply(#[from] BadScriptReply),
    /// The gene's state is being rebuilt from the database: try again shortly.
    #[error("Redis is rebuilding the state of hash tag {{g{0}}} from the database")]
    Recovering(u8),
}

/// What a release did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    Returned,
    /// Returned before, or never held by the state Redis holds now.
    AlreadyReturned,
    UnknownOrder,
}

/// How an order's units relate to the Redis state it is mirrored into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// Holds stock, not yet locked in the database: may be refused if Redis has no room for it.
    Refusable,
    /// Holds stock the database already counts.
    Held,
    /// Holds none.
    None,
}

impl Holding {
    pub fn of(status: OrderStatus) -> Holding {
        match status {
            OrderStatus::Pending | OrderStatus::Created => Holding::Refusable,
            s if s.holds_stock() => Holding::Held,
            _ => Holding::None,
        }
    }

    fn code(self) -> &'static str {
        match self {
            Holding::Refusable => "r",
            Holding::Held => "h",
            Holding::None => "n",
        }
    }
}

/// A status change of the read model, with the order itself (to write its record again if Redis
/// lost it) and the payment to show, if any.
#[derive(Debug, Clone)]
pub struct StatusUpdate {
    pub order: OrderEvent,
    pub status: OrderStatus,
    pub payment: Option<ShownPayment>,
}

impl StatusUpdate {
    /// Does this update write the read model when Redis counted the order already? Not for
    /// `CREATED` with no payment to show: `AWAITING_PAYMENT` follows within milliseconds, so the
    /// buyer sees `PENDING` a moment longer and the record is written once on its way to payment
    /// instead of twice. Such an update is only verified (counted, or to adopt, or refused).
    pub fn writes(&self) -> bool {
        self.status != OrderStatus::Created || self.payment.is_some()
    }
}

/// The shapes of a `lua/mirror.lua` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Shape {
    /// Was the order counted by this epoch? Writes nothing.
    Verify,
    /// A move of an order counted by this epoch.
    Short,
    /// A move that adopts an order Redis did not count.
    Full,
}

impl Shape {
    fn code(self) -> &'static str {
        match self {
            Shape::Verify => "v",
            Shape::Short => "s",
            Shape::Full => "f",
        }
    }
}

/// What Redis made of an order mirrored into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mirrored {
    Counted,
    /// Adopted after a rebuild, there was no room for it (stock or the buyer's limit): the
    /// workers compensate it.
    Refused,
}

/// What `warm_item` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warmed {
    Loaded,
    AlreadyThere,
    /// The gene is not ready (never built, or lost): rebuild it from the database.
    NeedsRebuild,
}

/// What Redis knows of an order for its owner (`lua/lookup_order.lua`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(OrderRecord),
    /// No record; if the id was recent, it is now void for this user.
    Missing,
    Recovering,
}

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
    pub starts_at_ms: Option<i64>,
    pub ends_at_ms: Option<i64>,
    pub per_user_limit: i32,
}

/// An integer of a script's answer, sent as a Redis integer or as a string.
fn int(v: Option<&Value>) -> Option<i64> {
    let v = v?;
    v.as_i64().or_else(|| v.as_string()?.parse().ok())
}

/// One item of a gene, as the database has it, for a rebuild.
#[derive(Debug, Clone)]
pub struct ItemState {
    pub item: ItemId,
    pub remaining: i64,
    pub stock: i64,
    pub per_user_limit: i32,
    pub price_cents: i64,
    pub starts_at_ms: Option<i64>,
    pub ends_at_ms: Option<i64>,
    pub name: String,
    /// (buyer, units held by live orders, latest held order)
    pub buyers: Vec<(UserId, i64, OrderId)>,
}

impl ItemState {
    /// The item hash's fields after `remaining`, in the order `lua/warm_item.lua` and
    /// `lua/rebuild_item.lua` take them: stock, per-user limit, price, starts ms, ends ms (0 =
    /// open), name.
    fn hash_args(&self) -> [String; 6] {
        [
            self.stock.to_string(),
            self.per_user_limit.to_string(),
            self.price_cents.to_string(),
            self.starts_at_ms.unwrap_or(0).to_string(),
            self.ends_at_ms.unwrap_or(0).to_string(),
            self.name.clone(),
        ]
    }
}

/// A live order's record, as the database has it, for a rebuild.
#[derive(Debug, Clone)]
pub struct RebuiltOrder {
    pub order_id: OrderId,
    pub record: OrderRecord,
}

#[derive(Clone)]
pub struct Scripts {
    keys: Keys,
    purchase: Script,
    release: Script,
    mirror: Script,
    warm_item: Script,
    lease: Script,
    relay_lease: Script,
    lookup_order: Script,
    rebuild_item: Script,
    rebuild_orders: Script,
    rebuild_done: Script,
    rebuild_abort: Script,
    adjust_stock: Script,
    undo_adjustment: Script,
    item_settings: Script,
}

pub struct PurchaseRequest<'a> {
    pub order_id: OrderId,
    pub user: UserId,
    pub item: ItemId,
    pub quantity: Quantity,
    pub idempotency_key: Option<&'a str>,
}

/// What the purchases of one item share in a batch: its keys and its id, built once.
struct ItemArgs {
    item: ItemId,
    item_key: Key,
    buyers: Key,
    outbox: Key,
    no_idempotency: Key,
    state: Key,
    id: Value,
}

impl ItemArgs {
    fn new(k: &Keys, item: ItemId) -> ItemArgs {
        ItemArgs {
            item,
            item_key: k.item(item).into(),
            buyers: k.buyers(item).into(),
            outbox: k.outbox(gene_of_item(item)).into(),
            no_idempotency: k.no_idempotency(item).into(),
            state: k.state_of_item(item).into(),
            id: Value::from(item.0.to_string()),
        }
    }
}

/// Why a purchase has no answer, told apart by whether it may have run.
#[derive(Debug, thiserror::Error)]
pub enum PurchaseFailure {
    /// Nothing reached Redis, or Redis refused the script before it could sell: nothing was sold.
    #[error("the purchase was not run: {0}")]
    NotRun(fred::error::Error),
    /// The purchase was sent and no answer came back: it may have sold.
    #[error("the purchase may have run: {0}")]
    MaybeRan(fred::error::Error),
    #[error(transparent)]
    Reply(#[from] BadScriptReply),
}

/// Did Redis itself answer with an error (`ERR`, `NOSCRIPT`, `READONLY`, `LOADING`, `BUSY`, `OOM`,
/// …)? Then the script did not sell: its first write comes after every check.
fn refused_by_server(e: &fred::error::Error) -> bool {
    let first = e.details().split_whitespace().next().unwrap_or("");
    first.len() >= 3 && first.bytes().all(|b| b.is_ascii_uppercase())
}

/// Per-command options of the purchase: never queued while disconnected and never written twice,
/// so that a purchase the gateway gave up on cannot run later behind its back.
fn once() -> fred::types::config::Options {
    fred::types::config::Options {
        max_attempts: Some(1),
        fail_fast: true,
        ..Default::default()
    }
}

impl Scripts {
    pub fn new(keys: Keys) -> Self {
        Scripts {
            keys,
            purchase: Script::from_lua(PURCHASE),
            release: Script::from_lua(RELEASE),
            mirror: Script::from_lua(MIRROR),
            warm_item: Script::from_lua(WARM_ITEM),
            lease: Script::from_lua(LEASE),
            relay_lease: Script::from_lua(RELAY_LEASE),
            lookup_order: Script::from_lua(LOOKUP_ORDER),
            rebuild_item: Script::from_lua(REBUILD_ITEM),
            rebuild_orders: Script::from_lua(REBUILD_ORDERS),
            rebuild_done: Script::from_lua(REBUILD_DONE),
            rebuild_abort: Script::from_lua(REBUILD_ABORT),
            adjust_stock: Script::from_lua(ADJUST_STOCK),
            undo_adjustment: Script::from_lua(UNDO_ADJUSTMENT),
            item_settings: Script::from_lua(ITEM_SETTINGS),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The hot path's one round trip, for one purchase.
    pub async fn purchase(
        &self,
        client: &Client,
        req: &PurchaseRequest<'_>,
    ) -> Result<Purchase, PurchaseFailure> {
        self.purchase_all(client, std::slice::from_ref(req))
            .await
            .pop()
            .unwrap_or_else(|| Err(BadScriptReply("no answer for a purchase".into()).into()))
    }

    /// Purchases of one gene (one hash slot) in one call of `lua/purchase.lua`, each run as if it
    /// were alone, in order: the answer of each. A failure of the call itself is every
    /// purchase's.
    pub async fn purchase_all(
        &self,
        client: &Client,
        reqs: &[PurchaseRequest<'_>],
    ) -> Vec<Result<Purchase, PurchaseFailure>> {
        let every = |failure: fn(fred::error::Error) -> PurchaseFailure, e: fred::error::Error| {
            reqs.iter().map(|_| Err(failure(e.clone()))).collect()
        };
        if !client.is_connected() {
            let e = fred::error::Error::new(fred::error::ErrorKind::IO, "not connected to Redis");
            return every(PurchaseFailure::NotRun, e);
        }
        let now = now_ms().to_string();
        let call = |(keys, args): (Vec<Key>, Vec<Value>)| async move {
            client
                .with_options(&once())
                .evalsha::<Vec<Value>, _, _, _>(self.purchase.sha1().clone(), keys, args)
                .await
        };
        let mut reply = call(self.purchase_args(reqs, &now)).await;
        if let Err(e) = &reply
            && e.details().starts_with("NOSCRIPT")
        {
            // Only after a Redis restart or SCRIPT FLUSH: load it and go again. (fred's
            // `evalsha_with_reload` copies every key and argument up front for this case, whatever
            // happens; here only the rare case builds them twice.)
            if let Err(e) = self.purchase.load(client).await {
                return every(PurchaseFailure::NotRun, e);
            }
            reply = call(self.purchase_args(reqs, &now)).await;
        }
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) if refused_by_server(&e) => return every(PurchaseFailure::NotRun, e),
            Err(e) => return every(PurchaseFailure::MaybeRan, e),
        };
        if reply.len() != 3 * reqs.len() {
            let bad = format!(
                "{} values for {} purchases: {reply:?}",
                reply.len(),
                reqs.len()
            );
            return reqs
                .iter()
                .map(|_| Err(BadScriptReply(bad.clone()).into()))
                .collect();
        }
        reply
            .chunks(3)
            .map(|answer| match answer.first().and_then(Value::as_i64) {
                // Redis refused this purchase's first write (or a read failed): nothing sold.
                Some(9) => Err(PurchaseFailure::NotRun(fred::error::Error::new(
                    fred::error::ErrorKind::Unknown,
                    answer[1].as_string().unwrap_or_default(),
                ))),
                _ => Purchase::decode(answer).map_err(Into::into),
            })
            .collect()
    }

    /// The purchases' keys and arguments, seven each, in `lua/purchase.lua`'s order. A sale's
    /// batch is mostly one hot item: its five keys and its id are built once per run of
    /// purchases of the same item and shared (fred's keys and values are reference-counted
    /// bytes), so a purchase costs four strings of its own instead of fourteen.
    fn purchase_args(&self, reqs: &[PurchaseRequest<'_>], now: &str) -> (Vec<Key>, Vec<Value>) {
        let mut keys: Vec<Key> = Vec::with_capacity(7 * reqs.len());
        let mut args: Vec<Value> = Vec::with_capacity(7 * reqs.len());
        let now = Value::from(now);
        let ttl = Value::from(IDEMPOTENCY_TTL_SECS.to_string());
        let (with_key, without_key) = (Value::from_static_str("1"), Value::from_static_str("0"));
        let k = &self.keys;
        let mut shared: Option<ItemArgs> = None;
        for req in reqs {
            let item = match &shared {
                Some(s) if s.item == req.item => s,
                _ => shared.insert(ItemArgs::new(k, req.item)),
            };
            keys.extend([
                item.item_key.clone(),
                item.buyers.clone(),
                Key::from(k.order(req.order_id)),
                item.outbox.clone(),
                match req.idempotency_key {
                    Some(key) => Key::from(k.idempotency(req.item, req.user, key)),
                    None => item.no_idempotency.clone(),
                },
                item.state.clone(),
                Key::from(k.void(req.order_id)),
            ]);
            args.extend([
                Value::from(req.order_id.0.to_string()),
                Value::from(req.user.0.to_string()),
                Value::from(req.quantity.get().to_string()),
                item.id.clone(),
                if req.idempotency_key.is_some() {
                    with_key.clone()
                } else {
                    without_key.clone()
                },
                ttl.clone(),
                now.clone(),
            ]);
        }
        (keys, args)
    }

    /// Closes an order in the read model and gives its units back to Redis, once.
    pub async fn release(
        &self,
        client: &Client,
        order: &OrderEvent,
        status: OrderStatus,
    ) -> Result<Released, ScriptError> {
        let k = &self.keys;
        let keys = vec![
            k.item(order.item_id),
            k.buyers(order.item_id),
            k.order(order.order_id),
            k.state_of_item(order.item_id),
        ];
        let args = vec![
            order.order_id.0.to_string(),
            order.user_id.0.to_string(),
            order.quantity.get().to_string(),
            status.as_str().to_owned(),
            status.rank().to_string(),
            now_ms().to_string(),
        ];
        let n: i64 = self.release.evalsha_with_reload(client, keys, args).await?;
        Ok(match n {
            1 => Released::Returned,
            0 => Released::AlreadyReturned,
            -1 => Released::UnknownOrder,
            -2 => return Err(ScriptError::Recovering(gene_of_item(order.item_id))),
            _ => return Err(BadScriptReply(format!("release answered {n}")).into()),
        })
    }

    /// Mirrors orders' statuses into the read model, one script call per hash slot, adopting the
    /// orders that Redis lost (see `lua/mirror.lua`). Answers, per order, what Redis made of it.
    /// Every order goes in the script's short shape first (a `CREATED` one in its verify shape,
    /// which writes nothing: see [`StatusUpdate::writes`]); the few whose record another epoch
    /// wrote (Redis was rebuilt meanwhile) go again in the full shape, which adopts them.
    pub async fn mirror(
        &self,
        client: &Client,
        updates: &[StatusUpdate],
    ) -> Result<Vec<(OrderId, Mirrored)>, ScriptError> {
        let mut by_gene: std::collections::BTreeMap<(u8, Shape), Vec<&StatusUpdate>> =
            Default::default();
        for u in updates {
            let shape = if u.writes() {
                Shape::Short
            } else {
                Shape::Verify
            };
            by_gene
                .entry((gene_of(u.order.order_id.0), shape))
                .or_default()
                .push(u);
        }
        let now = now_ms().to_string();
        let mut out = Vec::with_capacity(updates.len());
        for ((gene, shape), group) in by_gene {
            for chunk in group.chunks(500) {
                let first = self.mirror_call(client, gene, &now, chunk, shape).await?;
                let mut again = Vec::new();
                for (u, r) in chunk.iter().zip(first) {
                    match r {
                        Some(m) => out.push((u.order.order_id, m)),
                        None => again.push(*u),
                    }
                }
                if again.is_empty() {
                    continue;
                }
                let full = self
                    .mirror_call(client, gene, &now, &again, Shape::Full)
                    .await?;
                for (u, r) in again.iter().zip(full) {
                    let m = r.ok_or_else(|| {
                        BadScriptReply("mirror asked for the full shape of a full call".into())
                    })?;
                    out.push((u.order.order_id, m));
                }
            }
        }
        Ok(out)
    }

    /// One call of `lua/mirror.lua` for orders of one gene, in one of its shapes: per order, what
    /// Redis made of it, or `None` when it wants the order in the full shape.
    async fn mirror_call(
        &self,
        client: &Client,
        gene: u8,
        now: &str,
        chunk: &[&StatusUpdate],
        shape: Shape,
    ) -> Result<Vec<Option<Mirrored>>, ScriptError> {
        let (stride, width) = match shape {
            Shape::Verify => (1, 0),
            Shape::Short => (1, 6),
            Shape::Full => (3, 12),
        };
        let mut keys: Vec<String> = Vec::with_capacity(1 + chunk.len() * stride);
        keys.push(self.keys.state(gene));
        let mut args = Vec::with_capacity(2 + chunk.len() * width);
        args.push(now.to_owned());
        args.push(shape.code().to_owned());
        for u in chunk {
            let o = &u.order;
            keys.push(self.keys.order(o.order_id));
            if shape == Shape::Verify {
                continue;
            }
            args.push(o.order_id.0.to_string());
            args.push(u.status.as_str().to_owned());
            args.push(u.status.rank().to_string());
            match &u.payment {
                Some(p) => {
                    args.push(p.payment_id.clone());
                    args.push(p.amount_cents.to_string());
                    args.push(p.status.as_str().to_owned());
                }
                None => args.extend([String::new(), String::new(), String::new()]),
            }
            if shape == Shape::Full {
                keys.push(self.keys.item(o.item_id));
                keys.push(self.keys.buyers(o.item_id));
                args.push(o.user_id.0.to_string());
                args.push(o.item_id.0.to_string());
                args.push(o.quantity.get().to_string());
                args.push(o.amount_cents.to_string());
                args.push(o.created_at_ms.to_string());
                args.push(Holding::of(u.status).code().to_owned());
            }
        }
        let reply: Vec<i64> = self.mirror.evalsha_with_reload(client, keys, args).await?;
        if reply.first() == Some(&-1) {
            return Err(ScriptError::Recovering(gene));
        }
        if reply.len() != chunk.len() {
            return Err(BadScriptReply(format!(
                "mirror answered {} results for {} orders",
                reply.len(),
                chunk.len()
            ))
            .into());
        }
        reply
            .into_iter()
            .map(|r| match r {
                0 => Ok(Some(Mirrored::Refused)),
                1 => Ok(Some(Mirrored::Counted)),
                2 if shape != Shape::Full => Ok(None),
                r => Err(BadScriptReply(format!("mirror answered {r} for an order")).into()),
            })
            .collect()
    }

    /// Loads a new item into Redis unless it is there already.
    pub async fn warm_item(
        &self,
        client: &Client,
        item: &ItemState,
    ) -> Result<Warmed, ScriptError> {
        let mut args = vec![item.item.0.to_string()];
        args.extend(item.hash_args());
        let keys = vec![
            self.keys.item(item.item),
            self.keys.state_of_item(item.item),
        ];
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

    /// Reads an order's record for `user`, declaring a recent missing id void for them.
    pub async fn lookup_order(
        &self,
        client: &Client,
        order_id: OrderId,
        user: UserId,
        recent: bool,
    ) -> Result<Lookup, ScriptError> {
        let keys = vec![
            self.keys.order(order_id),
            self.keys.void(order_id),
            self.keys.state(gene_of(order_id.0)),
        ];
        let args = vec![
            user.0.to_string(),
            VOID_TTL_SECS.to_string(),
            if recent { "1" } else { "0" }.to_owned(),
        ];
        let reply: Vec<Value> = self
            .lookup_order
            .evalsha_with_reload(client, keys, args)
            .await?;
        let shown = format!("{reply:?}");
        let bad = || BadScriptReply(format!("lookup_order answered {shown}"));
        match reply.first().and_then(|v| v.as_i64()) {
            Some(0) => {
                let fields = match reply.into_iter().nth(1) {
                    Some(Value::Array(kv)) => kv
                        .chunks(2)
                        .filter_map(|c| Some((c.first()?.as_string()?, c.get(1)?.as_string()?)))
                        .collect::<Vec<_>>(),
                    Some(Value::Map(map)) => map
                        .inner()
                        .into_iter()
                        .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_string()?)))
                        .collect(),
                    _ => return Err(bad().into()),
                };
                OrderRecord::from_pairs(order_id, fields)
                    .map(Lookup::Found)
                    .map_err(|e| BadScriptReply(format!("order {order_id}: {e}")).into())
            }
            Some(1) => Ok(Lookup::Missing),
            Some(2) => Ok(Lookup::Recovering),
            _ => Err(bad().into()),
        }
    }

    /// Writes one item of a gene being rebuilt (its hash and buyers), under the rebuild lock.
    /// False when the lock is no longer `token`'s.
    pub async fn rebuild_item(
        &self,
        client: &Client,
        token: &str,
        item: &ItemState,
    ) -> Result<bool, ScriptError> {
        let gene = gene_of_item(item.item);
        let keys = vec![
            self.keys.rebuild_lock(gene),
            self.keys.item(item.item),
            self.keys.buyers(item.item),
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
            args.extend(item.hash_args());
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

    /// Marks a rebuilt gene ready at `epoch` with its items, and releases the lock.
    pub async fn rebuild_done(
        &self,
        client: &Client,
        gene: u8,
        token: &str,
        epoch: u64,
        items: &[ItemId],
    ) -> Result<bool, ScriptError> {
        let keys = vec![self.keys.rebuild_lock(gene), self.keys.state(gene)];
        let mut args = vec![token.to_owned(), epoch.to_string()];
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

    /// Writes an item's sale window and per-user limit into its hash, if Redis holds the item
    /// (see `lua/item_settings.lua`). False when it does not.
    pub async fn item_settings(
        &self,
        client: &Client,
        item: ItemId,
        settings: &ItemSettings,
    ) -> Result<bool, ScriptError> {
        let args = vec![
            settings.starts_at_ms.unwrap_or(0).to_string(),
            settings.ends_at_ms.unwrap_or(0).to_string(),
            settings.per_user_limit.to_string(),
        ];
        let n: i64 = self
            .item_settings
            .evalsha_with_reload(client, vec![self.keys.item(item)], args)
            .await?;
        Ok(n == 1)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purchase_args_are_seven_keys_and_seven_values_per_purchase_in_order() {
        let scripts = Scripts::new(Keys::new("t"));
        let k = &scripts.keys;
        let (a, b) = (ItemId(7), ItemId(8));
        let q = Quantity::new(2).unwrap();
        let req =
            |order: u64, user: u64, item: ItemId, idem: Option<&'static str>| PurchaseRequest {
                order_id: OrderId(order),
                user: UserId(user),
                item,
                quantity: q,
                idempotency_key: idem,
            };
        let reqs = [
            req(1, 10, a, None),
            req(2, 11, a, Some("key")),
            req(3, 12, b, None),
            req(4, 13, a, None),
        ];
        let (keys, args) = scripts.purchase_args(&reqs, "1000");
        let keys: Vec<String> = keys
            .iter()
            .map(|key| key.as_str().unwrap().to_owned())
            .collect();
        let args: Vec<String> = args.iter().map(|v| v.as_string().unwrap()).collect();
        let mut want_keys = Vec::new();
        let mut want_args = Vec::new();
        for r in &reqs {
            want_keys.extend([
                k.item(r.item),
                k.buyers(r.item),
                k.order(r.order_id),
                k.outbox(gene_of_item(r.item)),
                match r.idempotency_key {
                    Some(key) => k.idempotency(r.item, r.user, key),
                    None => k.no_idempotency(r.item),
                },
                k.state_of_item(r.item),
                k.void(r.order_id),
            ]);
            want_args.extend([
                r.order_id.0.to_string(),
                r.user.0.to_string(),
                "2".to_owned(),
                r.item.0.to_string(),
                if r.idempotency_key.is_some() {
                    "1"
                } else {
                    "0"
                }
                .to_owned(),
                IDEMPOTENCY_TTL_SECS.to_string(),
                "1000".to_owned(),
            ]);
        }
        assert_eq!(keys, want_keys);
        assert_eq!(args, want_args);
    }

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

    #[test]
    fn server_errors_are_told_from_lost_answers() {
        use fred::error::{Error, ErrorKind};
        assert!(refused_by_server(&Error::new(
            ErrorKind::Unknown,
            "READONLY You can't write against a read only replica."
        )));
        assert!(refused_by_server(&Error::new(
            ErrorKind::Unknown,
            "LOADING Redis is loading the dataset in memory"
        )));
        assert!(!refused_by_server(&Error::new(
            ErrorKind::IO,
            "Connection closed."
        )));
        assert!(!refused_by_server(&Error::new(
            ErrorKind::Timeout,
            "Request timed out."
        )));
        assert!(!refused_by_server(&Error::new(
            ErrorKind::Unknown,
            "Too many failed write attempts."
        )));
    }
}
