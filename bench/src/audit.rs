//! The audit of the contract's invariants once the pipeline is drained, read from the sources
//! themselves rather than from the admin API (an audit must not trust the code it audits): Redis
//! (the item's `remaining`, its buyers, the orders' read model), the database (items, orders,
//! payments, inventory history), the broker (the dead-letter queue), and the count of
//! `202`s the load generator received.
//!
//! [`Snapshot::checks`] is a pure function of what was read, so each check can be tested alone.

use crate::provider::{Intent, PayReport};
use anyhow::Context;
use fred::prelude::*;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use sea_orm::sea_query::Query;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use seckill_infra::Config;
use seckill_infra::broker::Topology;
use seckill_schema::entity::{inventory_history, items, orders, payments};
use seckill_schema::snowflake::now_ms;
use seckill_schema::{ItemId, Keys, OrderId, OrderStatus, PaymentStatus};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::time::Duration;

/// How long past its payment window an order may still await its timeout (delivery, retries).
pub const TIMEOUT_GRACE: Duration = Duration::from_secs(30);
/// Offenders named in a check's detail; the rest are counted.
const NAMED: usize = 5;

/// One invariant, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The number of the invariant in CONTRACT.md.
    pub invariant: u8,
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

impl Check {
    /// Passed when there are no problems (its detail then `ok`); else its detail names the
    /// first few problems and counts the rest.
    pub fn new(invariant: u8, name: &'static str, problems: Vec<String>, ok: String) -> Check {
        let passed = problems.is_empty();
        let detail = if passed {
            ok
        } else {
            let mut d = problems[..problems.len().min(NAMED)].join("; ");
            if problems.len() > NAMED {
                let _ = write!(d, "; and {} more", problems.len() - NAMED);
            }
            d
        };
        Check {
            invariant,
            name,
            passed,
            detail,
        }
    }
}

/// The `202`s the load generator received, and the requests it got no answer to (each of which
/// may or may not have become an order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub answered: u64,
    pub cut_off: u64,
}

impl Accepted {
    pub fn exactly(answered: u64) -> Accepted {
        Accepted {
            answered,
            cut_off: 0,
        }
    }
}

/// Audits one item after a run.
pub async fn audit(
    config: &Config,
    item: ItemId,
    accepted: Accepted,
) -> anyhow::Result<Vec<Check>> {
    let snapshot = Snapshot::load(config, item).await?;
    Ok(snapshot.checks(accepted, config.payment_timeout, now_ms() as i64))
}

/// Everything the audit reads, read once.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub item: items::Model,
    pub orders: Vec<orders::Model>,
    pub payments: Vec<payments::Model>,
    pub history: Vec<inventory_history::Model>,
    /// The item's `remaining` in Redis, every shard's and its units in transfer summed (`None`:
    /// no hash of shard 0).
    pub redis_remaining: Option<i64>,
    /// The buyers hashes of every shard: `<user>` = units held, `<user>:o` = latest order.
    pub redis_buyers: HashMap<String, String>,
    /// Each shard as read at one moment, with the users of its buyers hash.
    pub redis_shards: Vec<(seckill_infra::scripts::ShardState, Vec<String>)>,
    /// The read model's status of each order of the database (`None`: no record).
    pub read_model: HashMap<i64, Option<String>>,
    /// Messages in `{ns}.dead` (`None`: the queue does not exist).
    pub dead_letters: Option<u32>,
}

impl Snapshot {
    pub async fn load(config: &Config, item: ItemId) -> anyhow::Result<Snapshot> {
        let db = crate::db::connect(&config.database_url).await?;
        let rows = load_rows(&db, item).await;
        let _ = db.close().await;
        let (item_row, orders, payments, history) = rows?;

        let redis = seckill_infra::redis::client(&config.redis_url).await?;
        let keys = Keys::new(&config.namespace);
        let shards = seckill_infra::scripts::shards_of(&item_row);
        let scripts = seckill_infra::scripts::Scripts::new(keys.clone());
        let redis_part = async {
            let read = scripts
                .shards_state(&redis, item, shards, seckill_infra::scripts::Held::Counted)
                .await
                .map_err(|e| {
                    fred::error::Error::new(fred::error::ErrorKind::Unknown, e.to_string())
                })?
                .ok_or_else(|| {
                    fred::error::Error::new(
                        fred::error::ErrorKind::Unknown,
                        "the item's shards kept changing while they were read",
                    )
                })?;
            let remaining: Option<i64> = read
                .first()
                .is_some_and(|s| s.exists)
                .then(|| read.iter().map(|s| s.remaining + s.pending).sum());
            let mut buyers: HashMap<String, String> = HashMap::new();
            let mut redis_shards = Vec::new();
            for shard in read {
                let here: HashMap<String, String> =
                    redis.hgetall(keys.buyers_in(item, shard.gene)).await?;
                let users = here.keys().filter(|k| !k.contains(':')).cloned().collect();
                buyers.extend(here);
                redis_shards.push((shard, users));
            }
            let statuses = orders.iter().map(|o| {
                let key = keys.order(OrderId(o.id as u64));
                let redis = &redis;
                async move {
                    let status: Option<String> = redis.hget(key, "status").await?;
                    Ok::<_, fred::error::Error>((o.id, status))
                }
            });
            let read_model = futures_util::future::try_join_all(statuses).await?;
            Ok::<_, fred::error::Error>((
                remaining,
                buyers,
                redis_shards,
                read_model.into_iter().collect(),
            ))
        };
        let redis_part = redis_part.await;
        let _ = redis.quit().await;
        let (redis_remaining, redis_buyers, redis_shards, read_model) =
            redis_part.context("reading the item from Redis")?;

        let dead = Topology::new(&config.namespace, config.payment_timeout).dead();
        let dead_letters = queue_depths(&config.amqp_url, std::slice::from_ref(&dead))
            .await?
            .remove(&dead)
            .flatten();
        Ok(Snapshot {
            item: item_row,
            orders,
            payments,
            history,
            redis_remaining,
            redis_buyers,
            redis_shards,
            read_model,
            dead_letters,
        })
    }

    /// Every invariant, in the contract's order. `now_ms` decides which awaiting orders are
    /// overdue for their timeout.
    pub fn checks(&self, accepted: Accepted, payment_timeout: Duration, now_ms: i64) -> Vec<Check> {
        vec![
            self.no_oversell(),
            self.per_user_limit(),
            self.redis_conservation(),
            self.db_conservation(),
            self.redis_matches_db(),
            self.redis_buyers(),
            self.shards_consistent(),
            self.db_matches_orders(),
            self.accepted_orders_stored(accepted),
            self.read_model(),
            self.payments_reflected(),
            self.one_payment_per_order(),
            self.inventory_history(),
            self.orders_settled(payment_timeout, now_ms),
            self.dead_letters_empty(),
        ]
    }

    fn status(o: &orders::Model) -> Option<OrderStatus> {
        o.status.parse().ok()
    }

    fn holding(&self) -> impl Iterator<Item = &orders::Model> {
        self.orders
            .iter()
            .filter(|o| Self::status(o).is_some_and(OrderStatus::holds_stock))
    }

    fn units_held(&self) -> i64 {
        self.holding().map(|o| i64::from(o.quantity)).sum()
    }

    fn held_by_user(&self) -> BTreeMap<i64, i64> {
        let mut by_user = BTreeMap::new();
        for o in self.holding() {
            *by_user.entry(o.user_id).or_default() += i64::from(o.quantity);
        }
        by_user
    }

    /// The buyers hash's units per user (its `<user>:o` fields aside).
    fn redis_held_by_user(&self) -> BTreeMap<i64, i64> {
        self.redis_buyers
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().unwrap_or(i64::MAX))))
            .collect()
    }

    /// Per shard: nothing below zero, its buyers homed there, and every live order's id in its
    /// buyer's home shard's gene (for an unsharded item, trivially its own).
    fn shards_consistent(&self) -> Check {
        use seckill_schema::keys::{home_shard, shard_gene};
        use seckill_schema::snowflake::gene_of;
        let item = ItemId(self.item.id as u64);
        let shards = seckill_infra::scripts::shards_of(&self.item);
        let mut problems = Vec::new();
        for (i, (shard, users)) in self.redis_shards.iter().enumerate() {
            if shard.remaining < 0 || shard.pending < 0 {
                problems.push(format!(
                    "shard {i} (gene {}) holds remaining {} and in transfer {}",
                    shard.gene, shard.remaining, shard.pending
                ));
            }
            for user in users {
                let Ok(user) = user.parse::<u64>() else {
                    continue;
                };
                let home = shard_gene(item, home_shard(seckill_schema::UserId(user), shards));
                if home != shard.gene {
                    problems.push(format!(
                        "user {user} holds units in shard {i} (gene {}), not their home gene {home}",
                        shard.gene
                    ));
                }
            }
        }
        // Live orders only: a closed one may be of a layout the item had before a reshard.
        for o in self.holding() {
            let home = shard_gene(
                item,
                home_shard(seckill_schema::UserId(o.user_id as u64), shards),
            );
            if gene_of(o.id as u64) != home {
                problems.push(format!(
                    "order {} of user {} is in gene {}, not the buyer's home gene {home}",
                    o.id,
                    o.user_id,
                    gene_of(o.id as u64)
                ));
            }
        }
        let per_shard: Vec<String> = self
            .redis_shards
            .iter()
            .map(|(s, users)| {
                format!(
                    "{}:{}+{}({} buyers)",
                    s.gene,
                    s.remaining,
                    s.held,
                    users.len()
                )
            })
            .collect();
        Check::new(
            1,
            "shards_consistent",
            problems,
            format!(
                "{shards} shard(s), each buyer and order in its home shard: {}",
                per_shard.join(" ")
            ),
        )
    }

    fn no_oversell(&self) -> Check {
        let (held, stock) = (self.units_held(), self.item.stock);
        let problems = (held > stock)
            .then(|| format!("orders hold {held} units of a stock of {stock}"))
            .into_iter()
            .collect();
        Check::new(
            1,
            "no_oversell",
            problems,
            format!("orders hold {held} of {stock} units"),
        )
    }

    fn per_user_limit(&self) -> Check {
        let limit = i64::from(self.item.per_user_limit);
        let mut problems: Vec<String> = self
            .held_by_user()
            .into_iter()
            .filter(|(_, n)| *n > limit)
            .map(|(user, n)| format!("user {user} holds {n} units in the database"))
            .collect();
        problems.extend(
            self.redis_held_by_user()
                .into_iter()
                .filter(|(_, n)| *n > limit)
                .map(|(user, n)| format!("user {user} holds {n} units in Redis")),
        );
        Check::new(
            1,
            "per_user_limit",
            problems,
            format!("no user holds more than {limit}"),
        )
    }

    fn redis_conservation(&self) -> Check {
        let held = self.units_held();
        let (problems, ok) = match self.redis_remaining {
            None => (
                vec!["the item has no hash in Redis".to_owned()],
                String::new(),
            ),
            Some(r) if r + held != self.item.stock => (
                vec![format!(
                    "redis.remaining {r} + {held} units held = {} ≠ stock {}",
                    r + held,
                    self.item.stock
                )],
                String::new(),
            ),
            Some(r) => (
                vec![],
                format!("redis.remaining {r} + {held} held = {}", self.item.stock),
            ),
        };
        Check::new(2, "redis_conservation", problems, ok)
    }

    fn db_conservation(&self) -> Check {
        let i = &self.item;
        let sum = i.available + i.locked + i.sold;
        let mut problems = vec![];
        if sum != i.stock {
            problems.push(format!(
                "available {} + locked {} + sold {} = {sum} ≠ stock {}",
                i.available, i.locked, i.sold, i.stock
            ));
        }
        if i.available < 0 || i.locked < 0 || i.sold < 0 {
            problems.push("a stock column is negative".to_owned());
        }
        Check::new(
            2,
            "db_conservation",
            problems,
            format!(
                "available {} + locked {} + sold {} = {}",
                i.available, i.locked, i.sold, i.stock
            ),
        )
    }

    /// Once drained, Redis and the database agree on what is left. Orders the database has not
    /// locked stock for yet (`CREATED`) are already taken in Redis, so they are allowed for.
    fn redis_matches_db(&self) -> Check {
        let unlocked: i64 = self
            .orders
            .iter()
            .filter(|o| Self::status(o) == Some(OrderStatus::Created))
            .map(|o| i64::from(o.quantity))
            .sum();
        let expected = self.item.available - unlocked;
        let problems = match self.redis_remaining {
            Some(r) if r == expected => vec![],
            r => vec![format!(
                "redis.remaining {} ≠ db.available {}{}",
                r.map_or("missing".to_owned(), |r| r.to_string()),
                self.item.available,
                match unlocked {
                    0 => String::new(),
                    n => format!(" - {n} units not locked yet"),
                }
            )],
        };
        Check::new(
            2,
            "redis_matches_db",
            problems,
            format!("redis.remaining = db.available = {}", self.item.available),
        )
    }

    fn redis_buyers(&self) -> Check {
        let db = self.held_by_user();
        let redis = self.redis_held_by_user();
        let mut users: Vec<&i64> = db.keys().chain(redis.keys()).collect();
        users.sort();
        users.dedup();
        let problems = users
            .into_iter()
            .filter_map(|u| {
                let (d, r) = (db.get(u).copied(), redis.get(u).copied());
                (d.unwrap_or(0) != r.unwrap_or(0)).then(|| {
                    format!(
                        "user {u}: {} units held in the database, {} in Redis",
                        d.unwrap_or(0),
                        r.unwrap_or(0)
                    )
                })
            })
            .collect();
        Check::new(
            2,
            "redis_buyers",
            problems,
            format!("Redis agrees on {} buyers' holdings", db.len()),
        )
    }

    /// The database's stock columns agree with its orders: `locked` is what the orders whose stock
    /// the database locked hold (`STOCK_LOCKED`, `AWAITING_PAYMENT`), `sold` what the sold ones hold.
    fn db_matches_orders(&self) -> Check {
        let sum = |counted: fn(OrderStatus) -> bool| -> i64 {
            self.orders
                .iter()
                .filter(|o| Self::status(o).is_some_and(counted))
                .map(|o| i64::from(o.quantity))
                .sum()
        };
        let locked = sum(|s| matches!(s, OrderStatus::StockLocked | OrderStatus::AwaitingPayment));
        let sold = sum(OrderStatus::is_sold);
        let mut problems = vec![];
        if locked != self.item.locked {
            problems.push(format!(
                "items.locked {} ≠ {locked} units of orders whose stock is locked",
                self.item.locked
            ));
        }
        if sold != self.item.sold {
            problems.push(format!(
                "items.sold {} ≠ {sold} units of sold orders",
                self.item.sold
            ));
        }
        Check::new(
            2,
            "db_matches_orders",
            problems,
            format!("locked {locked} and sold {sold} match the orders"),
        )
    }

    fn accepted_orders_stored(&self, accepted: Accepted) -> Check {
        let stored = self.orders.len() as u64;
        let (low, high) = (accepted.answered, accepted.answered + accepted.cut_off);
        let problems = if stored < low {
            vec![format!(
                "{low} orders were answered 202 but the database holds {stored}"
            )]
        } else if stored > high {
            vec![format!(
                "the database holds {stored} orders but only {low} were answered 202 \
                 (and {} requests were cut off)",
                accepted.cut_off
            )]
        } else {
            vec![]
        };
        let ok = if accepted.cut_off > 0 {
            format!(
                "{stored} orders stored for {low} answers 202 and {} cut off",
                accepted.cut_off
            )
        } else {
            format!("{stored} orders stored, {low} answered 202")
        };
        Check::new(3, "accepted_orders_stored", problems, ok)
    }

    fn read_model(&self) -> Check {
        let problems = self
            .orders
            .iter()
            .filter_map(|o| match self.read_model.get(&o.id).cloned().flatten() {
                None => Some(format!("order {} has no record in Redis", o.id)),
                Some(s) if s != o.status => Some(format!(
                    "order {} is {} in the database but {s} in Redis",
                    o.id, o.status
                )),
                Some(_) => None,
            })
            .collect();
        Check::new(
            3,
            "read_model",
            problems,
            format!(
                "Redis shows all {} orders as the database does",
                self.orders.len()
            ),
        )
    }

    /// A successful payment shows on its order, and a paid order has a payment of its amount.
    fn payments_reflected(&self) -> Check {
        let by_id: HashMap<i64, &orders::Model> = self.orders.iter().map(|o| (o.id, o)).collect();
        let succeeded = |p: &&payments::Model| {
            p.status == "SUCCEEDED" || p.status == OrderStatus::RefundRequired.as_str()
        };
        // Paid for, or owed back, or given back: what a success leaves its order in.
        let after_success = |s: Option<OrderStatus>| {
            s.is_some_and(|s| {
                s.is_sold() || matches!(s, OrderStatus::RefundRequired | OrderStatus::Refunded)
            })
        };
        let mut problems = vec![];
        for p in self.payments.iter().filter(succeeded) {
            let status = by_id.get(&p.order_id).and_then(|o| Self::status(o));
            if !after_success(status) {
                problems.push(format!(
                    "payment {} {} but order {} is {}",
                    p.payment_id,
                    p.status,
                    p.order_id,
                    status.map_or("missing", OrderStatus::as_str)
                ));
            }
            if !p.applied {
                problems.push(format!("payment {} was never applied", p.payment_id));
            }
        }
        for o in &self.orders {
            let status = Self::status(o);
            if !after_success(status) {
                continue;
            }
            // A refunded order's success is recorded as the refund of it.
            let refunded = status == Some(OrderStatus::Refunded);
            let paid = self.payments.iter().any(|p| {
                p.order_id == o.id
                    && if refunded {
                        p.status == PaymentStatus::Refunded.as_str()
                    } else {
                        succeeded(&p)
                            && (status == Some(OrderStatus::RefundRequired)
                                || p.amount_cents == o.amount_cents)
                    }
            });
            if !paid {
                problems.push(format!(
                    "order {} is {} without a successful payment of {} cents",
                    o.id, o.status, o.amount_cents
                ));
            }
        }
        let n = self.payments.iter().filter(succeeded).count();
        Check::new(
            3,
            "payments_reflected",
            problems,
            format!("{n} successful payments, each on a paid or refunded order"),
        )
    }

    fn one_payment_per_order(&self) -> Check {
        let mut per_order: BTreeMap<i64, usize> = BTreeMap::new();
        for p in self.payments.iter().filter(|p| p.status == "SUCCEEDED") {
            *per_order.entry(p.order_id).or_default() += 1;
        }
        let problems = per_order
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(o, n)| format!("order {o} has {n} successful payments"))
            .collect();
        Check::new(
            4,
            "one_payment_per_order",
            problems,
            format!("{} orders paid once each", per_order.len()),
        )
    }

    /// The history replays from the untouched stock to the item's row, each step starting where
    /// the previous ended, and no order's step is recorded twice.
    fn inventory_history(&self) -> Check {
        let i = &self.item;
        // Stock adjustments (an operator's restock or shrink) change the total; nothing else does.
        let adjusted: i64 = self
            .history
            .iter()
            .filter(|h| h.adjustment_id.is_some())
            .map(|h| h.available_after - h.available_before)
            .sum();
        let mut stock = i.stock - adjusted;
        let mut state = (stock, 0, 0);
        let mut problems = vec![];
        let mut steps: HashMap<(i64, &str), usize> = HashMap::new();
        for h in &self.history {
            let before = (h.available_before, h.locked_before, h.sold_before);
            let after = (h.available_after, h.locked_after, h.sold_after);
            if before != state {
                problems.push(format!(
                    "history row {} starts from {before:?}, not {state:?}",
                    h.id
                ));
            }
            if h.adjustment_id.is_some() {
                stock += after.0 - before.0;
                if (after.1, after.2) != (before.1, before.2) || after.0 < 0 {
                    problems.push(format!(
                        "adjustment row {} moves {before:?} to {after:?}",
                        h.id
                    ));
                }
            }
            if after.0 + after.1 + after.2 != stock {
                problems.push(format!("history row {} ends at {after:?}", h.id));
            }
            if let Some(order) = h.order_id {
                *steps.entry((order, h.cause.as_str())).or_default() += 1;
            }
            state = after;
        }
        if state != (i.available, i.locked, i.sold) {
            problems.push(format!(
                "the history ends at {state:?} but the item is at {:?}",
                (i.available, i.locked, i.sold)
            ));
        }
        let mut twice: Vec<_> = steps.into_iter().filter(|(_, n)| *n > 1).collect();
        twice.sort();
        problems.extend(
            twice
                .into_iter()
                .map(|((o, cause), n)| format!("{cause} of order {o} recorded {n} times")),
        );
        Check::new(
            4,
            "inventory_history",
            problems,
            format!(
                "{} history rows replay to the item's row",
                self.history.len()
            ),
        )
    }

    fn orders_settled(&self, payment_timeout: Duration, now_ms: i64) -> Check {
        let overdue = (payment_timeout + TIMEOUT_GRACE).as_millis() as i64;
        let problems = self
            .orders
            .iter()
            .filter_map(|o| match Self::status(o) {
                Some(s) if s.is_final() => None,
                Some(OrderStatus::AwaitingPayment) if now_ms - o.updated_at_ms < overdue => None,
                Some(OrderStatus::AwaitingPayment) => Some(format!(
                    "order {} still awaits payment {} s after its window closed",
                    o.id,
                    (now_ms - o.updated_at_ms - payment_timeout.as_millis() as i64) / 1000
                )),
                _ => Some(format!("order {} is stuck in {}", o.id, o.status)),
            })
            .collect();
        Check::new(
            5,
            "orders_settled",
            problems,
            format!(
                "all {} orders final or awaiting payment in time",
                self.orders.len()
            ),
        )
    }

    fn dead_letters_empty(&self) -> Check {
        let problems = match self.dead_letters {
            Some(n) if n > 0 => vec![format!("{n} messages in the dead-letter queue")],
            _ => vec![],
        };
        let ok = match self.dead_letters {
            None => "no dead-letter queue declared".to_owned(),
            Some(_) => "the dead-letter queue is empty".to_owned(),
        };
        Check::new(5, "dead_letters_empty", problems, ok)
    }
}

type Rows = (
    items::Model,
    Vec<orders::Model>,
    Vec<payments::Model>,
    Vec<inventory_history::Model>,
);

async fn load_rows(db: &DatabaseConnection, item: ItemId) -> anyhow::Result<Rows> {
    let id = item.0 as i64;
    let (item_row, orders) = crate::db::item_and_orders(db, item).await?;
    let payments = payments::Entity::find()
        .filter(
            payments::Column::OrderId.in_subquery(
                Query::select()
                    .column(orders::Column::Id)
                    .from(orders::Entity)
                    .and_where(orders::Column::ItemId.eq(id))
                    .to_owned(),
            ),
        )
        .all(db)
        .await
        .context("reading the payments")?;
    let history = crate::db::rows_of_item(
        db,
        item,
        inventory_history::Column::ItemId,
        inventory_history::Column::Id,
    )
    .await
    .context("reading the inventory history")?;
    Ok((item_row, orders, payments, history))
}

/// Messages ready in each queue, by a passive declare; `None` for a queue that does not exist.
pub async fn queue_depths(
    amqp_url: &str,
    queues: &[String],
) -> anyhow::Result<BTreeMap<String, Option<u32>>> {
    let conn = seckill_infra::broker::connect(amqp_url, "seckill-bench").await?;
    let mut depths = BTreeMap::new();
    for queue in queues {
        // A passive declare of a missing queue closes its channel: one channel per queue.
        let ch = conn.create_channel().await.context("opening a channel")?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let depth = match ch
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
        {
            Ok(q) => Some(q.message_count()),
            Err(e) if matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404) => {
                None
            }
            Err(e) => return Err(e).with_context(|| format!("inspecting queue {queue}")),
        };
        if ch.status().connected() {
            let _ = ch.close(200, "done".into()).await;
        }
        depths.insert(queue.clone(), depth);
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(depths)
}

/// Every callback the gateway accepted shows on its order: a correct payment as `PAID` or a
/// status after it (or `REFUND_REQUIRED`, when the order had closed first), a wrong amount or a
/// failure never as `PAID`, a confirmed refund as an order no longer waiting for one.
pub fn callbacks_reflected(snapshot_orders: &[orders::Model], payments: &PayReport) -> Check {
    let status: HashMap<u64, &str> = snapshot_orders
        .iter()
        .map(|o| (o.id as u64, o.status.as_str()))
        .collect();
    let problems = payments
        .accepted
        .iter()
        .filter_map(|(order, intent)| {
            let s = status.get(&order.0).copied().unwrap_or("missing");
            let st = s.parse::<OrderStatus>().ok();
            let fine = match intent {
                Intent::Pay => st.is_some_and(|st| {
                    st.is_sold()
                        || matches!(st, OrderStatus::RefundRequired | OrderStatus::Refunded)
                }),
                Intent::WrongAmount | Intent::Fail => st != Some(OrderStatus::Paid),
                Intent::Refund => st.is_some_and(|st| {
                    !matches!(
                        st,
                        OrderStatus::RefundRequested | OrderStatus::RefundRequired
                    )
                }),
            };
            (!fine).then(|| format!("order {order} is {s} after an accepted {intent:?} callback"))
        })
        .collect();
    Check::new(
        3,
        "callbacks_reflected",
        problems,
        format!(
            "{} accepted callbacks all show on their orders",
            payments.accepted.len()
        ),
    )
}
