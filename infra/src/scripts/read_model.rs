//! The order's read model in Redis: statuses mirrored into it by the workers (`lua/mirror.lua`,
//! which adopts orders a rebuilt Redis did not count), closed orders' units given back once
//! (`lua/release.lua`), and an owner's lookup that makes a recent missing id void
//! (`lua/lookup_order.lua`).

use super::{BadScriptReply, MAX_CLOCK_SKEW_MS, ScriptError, Scripts};
use fred::prelude::*;
use seckill_schema::record::{OrderRecord, ShownPayment};
use seckill_schema::snowflake::{gene_of, millis_of, now_ms};
use seckill_schema::{OrderEvent, OrderId, OrderStatus, UserId};

pub const RELEASE: &str = concat!(
    include_str!("../../../lua/record.lua"),
    include_str!("../../../lua/release.lua")
);
pub const MIRROR: &str = concat!(
    include_str!("../../../lua/record.lua"),
    include_str!("../../../lua/mirror.lua")
);
pub const LOOKUP_ORDER: &str = concat!(
    include_str!("../../../lua/record.lua"),
    include_str!("../../../lua/lookup_order.lua")
);

/// How long a "no such order" answer fences a purchase of that id still in flight.
pub const VOID_TTL_SECS: u64 = 600;
/// A missing id whose time is within this of Redis's clock, either way, is made void for its
/// owner: wider than the skew a purchase allows ([`MAX_CLOCK_SKEW_MS`]) by the longest a purchase
/// can be in flight, so every id that could still sell is covered.
pub const IN_FLIGHT_WINDOW_MS: u64 = MAX_CLOCK_SKEW_MS + 60 * 1000;

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

/// What Redis knows of an order for its owner (`lua/lookup_order.lua`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(OrderRecord),
    /// No record; if the id was recent, it is now void for this user.
    Missing,
    Recovering,
}

/// The newest write generation of each gene's Redis state that a caller saw its own writes reach
/// (see `lua/mirror.lua`): what the workers record in the database.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Generations(pub std::collections::BTreeMap<u8, u64>);

impl Generations {
    pub fn saw(&mut self, gene: u8, generation: u64) {
        if generation > 0 {
            let g = self.0.entry(gene).or_default();
            *g = (*g).max(generation);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a mirror did: per order, what Redis made of it, and the generations its writes reached.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub orders: Vec<(OrderId, Mirrored)>,
    pub generations: Generations,
}

impl Scripts {
    /// Closes an order in the read model and gives its units back to Redis, once. Answers what it
    /// did and the gene's write generation its call reached (0 when it touched nothing).
    pub async fn release(
        &self,
        client: &Client,
        order: &OrderEvent,
        status: OrderStatus,
    ) -> Result<(Released, u64), ScriptError> {
        // The units go back to the order's home shard, whose gene its id carries.
        let k = &self.keys;
        let gene = gene_of(order.order_id.0);
        let keys = vec![
            k.item_in(order.item_id, gene),
            k.buyers_in(order.item_id, gene),
            k.order(order.order_id),
            k.state(gene),
        ];
        let args = vec![
            order.order_id.0.to_string(),
            order.user_id.0.to_string(),
            order.quantity.get().to_string(),
            status.as_str().to_owned(),
            status.rank().to_string(),
            now_ms().to_string(),
        ];
        let reply: Vec<i64> = self.release.evalsha_with_reload(client, keys, args).await?;
        let bad = || BadScriptReply(format!("release answered {reply:?}"));
        let (&[n, generation] | &[n, generation, ..]) = reply.as_slice() else {
            return Err(bad().into());
        };
        let released = match n {
            1 => Released::Returned,
            0 => Released::AlreadyReturned,
            -1 => Released::UnknownOrder,
            -2 => return Err(ScriptError::Recovering(gene)),
            _ => return Err(bad().into()),
        };
        Ok((released, u64::try_from(generation).map_err(|_| bad())?))
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
    ) -> Result<Mirror, ScriptError> {
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
        let mut generations = Generations::default();
        for ((gene, shape), group) in by_gene {
            for chunk in group.chunks(500) {
                let (first, generation) =
                    self.mirror_call(client, gene, &now, chunk, shape).await?;
                generations.saw(gene, generation);
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
                let (full, generation) = self
                    .mirror_call(client, gene, &now, &again, Shape::Full)
                    .await?;
                generations.saw(gene, generation);
                for (u, r) in again.iter().zip(full) {
                    let m = r.ok_or_else(|| {
                        BadScriptReply("mirror asked for the full shape of a full call".into())
                    })?;
                    out.push((u.order.order_id, m));
                }
            }
        }
        Ok(Mirror {
            orders: out,
            generations,
        })
    }

    /// One call of `lua/mirror.lua` for orders of one gene, in one of its shapes: per order, what
    /// Redis made of it, or `None` when it wants the order in the full shape; and the gene's write
    /// generation after the call.
    async fn mirror_call(
        &self,
        client: &Client,
        gene: u8,
        now: &str,
        chunk: &[&StatusUpdate],
        shape: Shape,
    ) -> Result<(Vec<Option<Mirrored>>, u64), ScriptError> {
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
                keys.push(self.keys.item_in(o.item_id, gene));
                keys.push(self.keys.buyers_in(o.item_id, gene));
                args.push(o.user_id.0.to_string());
                args.push(o.item_id.0.to_string());
                args.push(o.quantity.get().to_string());
                args.push(o.amount_cents.to_string());
                args.push(o.created_at_ms.to_string());
                args.push(Holding::of(u.status).code().to_owned());
            }
        }
        let mut reply: Vec<i64> = self.mirror.evalsha_with_reload(client, keys, args).await?;
        if reply.first() == Some(&-1) {
            return Err(ScriptError::Recovering(gene));
        }
        if reply.len() != chunk.len() + 1 {
            return Err(BadScriptReply(format!(
                "mirror answered {} values for {} orders and the generation",
                reply.len(),
                chunk.len()
            ))
            .into());
        }
        let generation = reply.pop().and_then(|g| u64::try_from(g).ok()).unwrap_or(0);
        let results = reply
            .into_iter()
            .map(|r| match r {
                0 => Ok(Some(Mirrored::Refused)),
                1 => Ok(Some(Mirrored::Counted)),
                2 if shape != Shape::Full => Ok(None),
                r => Err(BadScriptReply(format!("mirror answered {r} for an order")).into()),
            })
            .collect::<Result<Vec<_>, ScriptError>>()?;
        Ok((results, generation))
    }

    /// Reads an order's record for `user`; with `may_void`, a missing id whose time is within
    /// [`IN_FLIGHT_WINDOW_MS`] of Redis's clock, either way, is declared void for them.
    pub async fn lookup_order(
        &self,
        client: &Client,
        order_id: OrderId,
        user: UserId,
        may_void: bool,
    ) -> Result<Lookup, ScriptError> {
        let keys = vec![
            self.keys.order(order_id),
            self.keys.void(order_id),
            self.keys.state(gene_of(order_id.0)),
        ];
        let args = vec![
            user.0.to_string(),
            VOID_TTL_SECS.to_string(),
            if may_void {
                millis_of(order_id.0).to_string()
            } else {
                "0".to_owned()
            },
            IN_FLIGHT_WINDOW_MS.to_string(),
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
}
