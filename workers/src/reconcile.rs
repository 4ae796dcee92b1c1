//! The safety nets under the saga, two periodic jobs over the workers' [`Runtime`]:
//!
//! - the reconciler compares each item's stock in Redis with the database once the item's
//!   pipeline is quiet, and reports drift (contract invariant 2) as a metric and one log line. It
//!   also repairs what a crash between a Redis write and a database write of the admin API leaves:
//!   it settles stock adjustments left pending in Redis (`seckill_infra::stock`), and copies an
//!   item's sale window and per-user limit from the database into Redis when they differ;
//! - the sweeper closes orders still `AWAITING_PAYMENT` well past their deadline whose
//!   `ORDER_TIMEOUT` never came (a delay queue deleted by hand, a message lost), so no stock stays
//!   locked forever.
//!
//! A failing pass (the database, Redis or the broker down) is logged once per streak of failures
//! and tried again at the next tick; neither job ever stops the workers.

use crate::runner::Runtime;
use crate::sql::{self, Query};
use crate::store::{self, OrderRow};
use anyhow::Context;
use fred::prelude::*;
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};
use lapin::types::FieldTable;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr};
use seckill_infra::broker;
use seckill_infra::lifecycle::{Every, Shutdown};
use seckill_infra::scripts::{Held, ItemSettings};
use seckill_infra::stock::{self, Settled};
use seckill_schema::entity::{items, orders};
use seckill_schema::snowflake::GENES;
use seckill_schema::{AdjustmentId, ItemId, Kind, Message, OrderId, OrderStatus, SaleWindow};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the reconciler compares Redis with the database, in production.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(10);
/// How old a pending stock adjustment must be before the reconciler settles it, in production:
/// far longer than the gateway takes to settle its own, so the two rarely meet (and agree when
/// they do).
pub const ADJUSTMENT_AGE: Duration = Duration::from_secs(30);
/// How often the sweeper looks for orders whose timeout never came, in production.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Items reconciled per pass, at most: those whose sale is upcoming, live, or ended within
/// [`RECENTLY_ENDED`], lowest ids first.
pub const MAX_ITEMS: usize = 2000;
/// How long after its sale ended an item is still reconciled.
pub const RECENTLY_ENDED: Duration = Duration::from_secs(3600);
/// Orders the sweeper sends per pass, at most.
pub const SWEEP_LIMIT: usize = 1000;
/// A regular sweep looks only at the orders of recent sales (through the index on `item_id`); a
/// full one, at start and this often, at every order.
const FULL_SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// A pass taking longer than this is abandoned and counts as failed.
const PASS_TIMEOUT: Duration = Duration::from_secs(60);
/// Redis reads in flight at once during a reconciliation pass.
const REDIS_IN_FLIGHT: usize = 256;
/// The sweeper declares the broker topology again at most this often.
const REDECLARE_EVERY: Duration = Duration::from_secs(60);

/// How often each periodic job runs, and how long the reconciler leaves a stock adjustment to the
/// gateway that started it. `Default` is production's; tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intervals {
    pub reconcile: Duration,
    pub sweep: Duration,
    pub adjustment_age: Duration,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            reconcile: RECONCILE_EVERY,
            sweep: SWEEP_EVERY,
            adjustment_age: ADJUSTMENT_AGE,
        }
    }
}

/// How far past its deadline an unpaid order must be before the sweeper closes it: the payment
/// timeout itself, kept within 5 s..60 s, so the delayed message always gets its chance first.
pub fn grace(payment_timeout: Duration) -> Duration {
    payment_timeout.clamp(Duration::from_secs(5), Duration::from_secs(60))
}

/// Compares Redis with the database every `every` until `stop`, settling the stock adjustments
/// pending for longer than `adjustment_age`.
pub async fn run_reconciler(
    rt: Arc<Runtime>,
    every: Duration,
    adjustment_age: Duration,
    stop: Shutdown,
) {
    let mut reconciler = Reconciler {
        adjustment_age,
        ..Reconciler::default()
    };
    periodically(rt, every, stop, &mut reconciler).await
}

/// Closes orders whose payment timeout never came, every `every` until `stop`.
pub async fn run_sweeper(rt: Arc<Runtime>, every: Duration, stop: Shutdown) {
    periodically(rt, every, stop, &mut Sweeper::default()).await
}

trait Job: Send {
    const NAME: &'static str;
    fn pass<'a>(&'a mut self, rt: &'a Runtime) -> BoxFuture<'a, anyhow::Result<()>>;
}

async fn periodically<J: Job>(rt: Arc<Runtime>, every: Duration, stop: Shutdown, job: &mut J) {
    let mut ticks = Every::now(every.max(Duration::from_millis(10)), stop);
    let mut failing = false;
    while ticks.tick().await {
        // Nothing a pass does needs finishing on shutdown: it reads, or it sends what the next
        // pass (of this process or its successor) would send again.
        let pass = tokio::time::timeout(PASS_TIMEOUT, job.pass(&rt));
        let Some(result) = ticks.shutdown().unless_asked(pass).await else {
            return;
        };
        let result = result.unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "the pass took longer than {PASS_TIMEOUT:?}"
            ))
        });
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(job = J::NAME, "passes succeed again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(job = J::NAME, error = %format!("{e:#}"), every = ?every, "a pass failed; retrying at every tick (logged once until one succeeds)");
            }
            Err(_) => {}
        }
    }
}

/// One item as the database has it, with the units its stock-holding orders hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ItemRow {
    id: ItemId,
    stock: i64,
    available: i64,
    locked: i64,
    sold: i64,
    held: i64,
    settings: ItemSettings,
    /// Redis shards the stock is spread over.
    shards: u8,
}

/// What Redis's item hash says of the settings, as the purchase script reads them.
type RedisSettings = (Option<i64>, Option<i64>, Option<i64>);

fn as_in_redis(s: &ItemSettings) -> RedisSettings {
    let [starts, ends] = s.window.in_hash();
    (Some(starts), Some(ends), Some(i64::from(s.per_user_limit)))
}

/// What the last pass saw of an item, and the drift currently reported for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    remaining: i64,
    stock: i64,
    held: i64,
    reported: i64,
}

#[derive(Default)]
struct Reconciler {
    seen: HashMap<ItemId, Seen>,
    /// `available + locked + sold - stock` of the items whose database row is off.
    db_off: HashMap<ItemId, i64>,
    truncated: bool,
    /// Pending adjustments younger than this are the gateway's.
    adjustment_age: Duration,
    /// Pending adjustments that could not be settled, already logged.
    unsettled: HashSet<AdjustmentId>,
    /// Items whose settings differ between the database and Redis, as last seen.
    settings_off: HashMap<ItemId, (ItemSettings, RedisSettings, u8)>,
}

impl Job for Reconciler {
    const NAME: &'static str = "reconciler";
    fn pass<'a>(&'a mut self, rt: &'a Runtime) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.reconcile(rt))
    }
}

impl Reconciler {
    async fn reconcile(&mut self, rt: &Runtime) -> anyhow::Result<()> {
        // First, so that the stock compared below has them.
        self.settle_adjustments(rt).await?;
        let mut rows = items_with_held(&rt.db)
            .await
            .context("reading the items and the units their orders hold")?;
        let truncated = rows.len() > MAX_ITEMS;
        rows.truncate(MAX_ITEMS);
        if truncated && !self.truncated {
            tracing::warn!(
                max = MAX_ITEMS,
                "more items are on sale than one reconciliation pass covers; the lowest ids only"
            );
        }
        self.truncated = truncated;

        let client = rt.redis.next();
        let keys: Vec<String> = rows.iter().map(|r| rt.scripts.keys().item(r.id)).collect();
        let in_redis: Vec<Vec<Option<i64>>> =
            futures_util::stream::iter(keys.into_iter().map(|key| {
                client.hmget::<Vec<Option<i64>>, _, _>(
                    key,
                    vec!["remaining", "starts", "ends", "limit"],
                )
            }))
            .buffered(REDIS_IN_FLIGHT)
            .try_collect()
            .await
            .context("reading the items' remaining stock and settings from Redis")?;

        let mut missing = 0u64;
        let mut present = HashSet::with_capacity(rows.len());
        let mut settings_off = HashMap::new();
        for (row, fields) in rows.iter().zip(in_redis) {
            self.check_database(row);
            // No hash: Redis lost the item, and its recovery is another job's.
            let Some(mut remaining) = fields.first().copied().flatten() else {
                missing += 1;
                continue;
            };
            if row.shards > 1 {
                // Every shard's remaining and units in transfer, read at one moment; a reading
                // that transfers kept changing is left to the next pass.
                match rt
                    .scripts
                    .shards_state(client, row.id, row.shards, Held::NotRead)
                    .await?
                {
                    Some(read) => remaining = read.iter().map(|s| s.remaining + s.pending).sum(),
                    None => continue,
                }
            }
            present.insert(row.id);
            let redis_settings = (
                fields.get(1).copied().flatten(),
                fields.get(2).copied().flatten(),
                fields.get(3).copied().flatten(),
            );
            if redis_settings != as_in_redis(&row.settings) {
                settings_off.insert(row.id, (row.settings, redis_settings, row.shards));
            }
            metrics::gauge!("seckill_item_remaining", "item" => row.id.to_string())
                .set(remaining as f64);
            if let Some(drift) = self.observe(row.id, row.stock, row.held, remaining) {
                metrics::gauge!("seckill_reconcile_drift", "item" => row.id.to_string())
                    .set(drift as f64);
                if drift != 0 {
                    tracing::warn!(
                        item.id = %row.id,
                        redis.remaining = remaining,
                        db.stock = row.stock,
                        db.held = row.held,
                        drift,
                        "stock drift: Redis's remaining + the units held by live orders != stock"
                    );
                } else {
                    tracing::info!(
                        item.id = %row.id,
                        redis.remaining = remaining,
                        db.stock = row.stock,
                        db.held = row.held,
                        "stock drift gone"
                    );
                }
            }
        }
        for id in self.forget_all_but(&present) {
            metrics::gauge!("seckill_reconcile_drift", "item" => id.to_string()).set(0.0);
            tracing::info!(
                item.id = %id,
                "drift no longer tracked (the item left Redis or the reconciled sales)"
            );
        }
        self.copy_settings(rt, settings_off).await?;
        let in_window: HashSet<ItemId> = rows.iter().map(|r| r.id).collect();
        self.db_off.retain(|id, _| in_window.contains(id));
        metrics::gauge!("seckill_reconcile_items_missing_in_redis").set(missing as f64);
        for (status, n) in orders_by_status(&rt.db)
            .await
            .context("counting the orders by status")?
        {
            metrics::gauge!("seckill_orders", "status" => status.as_str()).set(n as f64);
        }
        metrics::counter!("seckill_reconcile_runs_total").increment(1);
        Ok(())
    }

    /// Settles the stock adjustments pending in Redis for longer than the gateway takes (a crash
    /// between their Redis and database halves, see `seckill_infra::stock`). One that fails is
    /// logged once and tried again at the next pass; it holds up no other.
    async fn settle_adjustments(&mut self, rt: &Runtime) -> anyhow::Result<()> {
        let client = rt.redis.next();
        let now = store::now();
        let age = self.adjustment_age.as_millis() as i64;
        let mut pending_ids = HashSet::new();
        for gene in 0..GENES as u8 {
            let pending = rt
                .scripts
                .pending_adjustments(client, gene)
                .await
                .context("reading the pending stock adjustments")?;
            for (id, adj) in pending {
                pending_ids.insert(id);
                let adj = match adj {
                    Ok(adj) => adj,
                    Err(e) => {
                        if self.unsettled.insert(id) {
                            tracing::error!(adjustment.id = %id, error = %e, "a pending stock adjustment does not decode; left for an operator");
                        }
                        continue;
                    }
                };
                if now - adj.at_ms < age {
                    continue;
                }
                let outcome = match stock::settle(&rt.db, client, &rt.scripts, id, &adj).await {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        if self.unsettled.insert(id) {
                            tracing::warn!(adjustment.id = %id, item.id = %adj.item, error = %e, "settling a pending stock adjustment failed; retrying at every pass");
                        }
                        continue;
                    }
                };
                self.unsettled.remove(&id);
                let label = match &outcome {
                    Settled::Applied(after) => {
                        tracing::warn!(adjustment.id = %id, item.id = %adj.item, delta = adj.delta, db.stock = after.stock, "applied a stock adjustment to the database that its gateway left pending");
                        "applied"
                    }
                    Settled::AlreadyApplied => "already_applied",
                    Settled::Refused { available } => {
                        tracing::warn!(adjustment.id = %id, item.id = %adj.item, delta = adj.delta, db.available = available, "the database refused a pending stock adjustment; undone in Redis");
                        "refused"
                    }
                    Settled::Abandoned => "abandoned",
                    // The next pass, once the gene is rebuilt.
                    Settled::Recovering => continue,
                    Settled::UnknownItem => {
                        let undone = rt.scripts.undo_adjustment(client, id, adj.item).await;
                        tracing::error!(adjustment.id = %id, item.id = %adj.item, ?undone, "a pending stock adjustment names an item the database does not have; undone in Redis");
                        "unknown_item"
                    }
                };
                metrics::counter!("seckill_stock_adjustments_settled_total", "outcome" => label)
                    .increment(1);
            }
        }
        self.unsettled.retain(|id| pending_ids.contains(id));
        Ok(())
    }

    /// Copies the database's settings into Redis for the items whose two differ the same way on
    /// two passes in a row: a difference that lasts is a crash between the admin API's two writes,
    /// one that passes is a change in flight.
    async fn copy_settings(
        &mut self,
        rt: &Runtime,
        now_off: HashMap<ItemId, (ItemSettings, RedisSettings, u8)>,
    ) -> anyhow::Result<()> {
        let before = std::mem::replace(&mut self.settings_off, now_off);
        for (item, seen) in &self.settings_off {
            if before.get(item) != Some(seen) {
                continue;
            }
            let (settings, redis, shards) = seen;
            rt.scripts
                .item_settings(rt.redis.next(), *item, *shards, settings)
                .await
                .context("copying an item's settings into Redis")?;
            tracing::warn!(item.id = %item, db = ?settings, redis = ?redis, "copied an item's sale window and per-user limit from the database into Redis");
        }
        Ok(())
    }

    /// Records this pass's view of an item. The drift counts only when the item is quiet: Redis's
    /// remaining, the database's held units and the stock all unchanged since the last pass (an
    /// order accepted by Redis but not yet stored, or closed in the database but not yet returned
    /// to Redis, is a passing difference). `Some(d)` when the reported drift becomes `d`.
    fn observe(&mut self, item: ItemId, stock: i64, held: i64, remaining: i64) -> Option<i64> {
        let drift = remaining - (stock - held);
        let before = self.seen.get(&item).copied();
        let reported_before = before.map_or(0, |s| s.reported);
        let quiet =
            before.is_some_and(|s| (s.remaining, s.stock, s.held) == (remaining, stock, held));
        let reported = if quiet { drift } else { reported_before };
        self.seen.insert(
            item,
            Seen {
                remaining,
                stock,
                held,
                reported,
            },
        );
        (reported != reported_before).then_some(reported)
    }

    /// Forgets the items not seen this pass; those with a drift reported, to be set back to 0.
    fn forget_all_but(&mut self, present: &HashSet<ItemId>) -> Vec<ItemId> {
        let mut cleared = Vec::new();
        self.seen.retain(|id, s| {
            let keep = present.contains(id);
            if !keep && s.reported != 0 {
                cleared.push(*id);
            }
            keep
        });
        cleared
    }

    /// `available + locked + sold = stock` in the database: one row, so no passing difference;
    /// logged when it breaks or changes, and when it is whole again.
    fn check_database(&mut self, row: &ItemRow) {
        let off = row.available + row.locked + row.sold - row.stock;
        let before = self.db_off.get(&row.id).copied().unwrap_or(0);
        if off == before {
            return;
        }
        if off == 0 {
            self.db_off.remove(&row.id);
            tracing::info!(item.id = %row.id, "database stock whole again");
        } else {
            self.db_off.insert(row.id, off);
            tracing::warn!(
                item.id = %row.id,
                db.stock = row.stock,
                db.available = row.available,
                db.locked = row.locked,
                db.sold = row.sold,
                off,
                "database stock broken: available + locked + sold != stock"
            );
        }
    }
}

/// Statuses of stored orders that hold stock (`PENDING` lives only in Redis).
fn stored_holding_statuses() -> impl Iterator<Item = &'static str> {
    OrderStatus::ALL
        .iter()
        .copied()
        .filter(|s| s.holds_stock() && *s != OrderStatus::Pending)
        .map(OrderStatus::as_str)
}

/// The reconciled items (one more than [`MAX_ITEMS`] when there are more), each with the units
/// held by its stock-holding orders: one statement.
/// Every stored status with its count of orders (0 for none), for `seckill_orders{status}`.
async fn orders_by_status(db: &DatabaseConnection) -> Result<Vec<(OrderStatus, i64)>, DbErr> {
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            backend,
            format!(
                "SELECT status, COUNT(*) AS n FROM {} GROUP BY status",
                orders::TABLE
            ),
        ))
        .await?;
    let mut counts: Vec<(OrderStatus, i64)> = OrderStatus::ALL
        .iter()
        .filter(|s| **s != OrderStatus::Pending)
        .map(|s| (*s, 0))
        .collect();
    for row in rows {
        let status: String = row.try_get("", "status")?;
        let n: i64 = row.try_get("", "n")?;
        if let Some(c) = counts.iter_mut().find(|(s, _)| s.as_str() == status) {
            c.1 = n;
        }
    }
    Ok(counts)
}

async fn items_with_held(db: &DatabaseConnection) -> Result<Vec<ItemRow>, DbErr> {
    let backend = db.get_database_backend();
    // `SUM` of an integer is a `DECIMAL` on MySQL.
    let int = if backend == DbBackend::Postgres {
        "BIGINT"
    } else {
        "SIGNED"
    };
    let since = store::now() - RECENTLY_ENDED.as_millis() as i64;
    let mut q = Query::new(backend).sql(&format!(
        "SELECT i.id, i.stock, i.available, i.locked, i.sold, \
         i.starts_at_ms, i.ends_at_ms, i.per_user_limit, i.shards, \
         (SELECT CAST(COALESCE(SUM(o.quantity), 0) AS {int}) FROM {orders} o \
         WHERE o.item_id = i.id AND o.status IN ",
        orders = orders::TABLE,
    ));
    q.list(stored_holding_statuses())
        .push(&format!(
            ") AS held FROM {} i WHERE i.ends_at_ms IS NULL OR i.ends_at_ms >= ",
            items::TABLE
        ))
        .bind(since)
        .push(&format!(" ORDER BY i.id LIMIT {}", MAX_ITEMS + 1));
    let mut out = Vec::new();
    for row in db.query_all_raw(q.build()).await? {
        out.push(ItemRow {
            id: sql::id(&row, "id")?,
            stock: row.try_get("", "stock")?,
            available: row.try_get("", "available")?,
            locked: row.try_get("", "locked")?,
            sold: row.try_get("", "sold")?,
            held: row.try_get("", "held")?,
            settings: ItemSettings {
                window: SaleWindow {
                    starts_at_ms: row.try_get("", "starts_at_ms")?,
                    ends_at_ms: row.try_get("", "ends_at_ms")?,
                },
                per_user_limit: row.try_get("", "per_user_limit")?,
            },
            shards: row
                .try_get::<i16>("", "shards")?
                .clamp(1, i16::from(seckill_schema::keys::MAX_SHARDS)) as u8,
        });
    }
    Ok(out)
}

#[derive(Default)]
struct Sweeper {
    /// Orders sent recently, and when: none is sent again within `grace`.
    sent: HashMap<OrderId, Instant>,
    last_full: Option<Instant>,
    last_declare: Option<Instant>,
}

impl Job for Sweeper {
    const NAME: &'static str = "sweeper";
    fn pass<'a>(&'a mut self, rt: &'a Runtime) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.sweep(rt))
    }
}

impl Sweeper {
    async fn sweep(&mut self, rt: &Runtime) -> anyhow::Result<()> {
        let timeout = rt.config.payment_timeout;
        let grace = grace(timeout);
        let now = store::now();
        let cutoff = now - (timeout + grace).as_millis() as i64;
        let full = self
            .last_full
            .is_none_or(|t| t.elapsed() >= FULL_SWEEP_EVERY);
        // An order is created before its sale ends, so an item that ended long before the cutoff
        // has no order that became overdue lately; older ones are the full sweep's.
        let window = (!full).then(|| cutoff - FULL_SWEEP_EVERY.as_millis() as i64);
        self.sent.retain(|_, at| at.elapsed() < grace);
        let mut overdue = overdue_orders(&rt.db, cutoff, window)
            .await
            .context("reading the orders past their payment deadline")?;
        if full {
            self.last_full = Some(Instant::now());
            // Shipped orders whose automatic completion never came: rare and in no hurry, so
            // only the full sweep looks for them.
            let shipped_cutoff = now - (rt.config.auto_complete + grace).as_millis() as i64;
            let unconfirmed = shipped_unconfirmed(&rt.db, shipped_cutoff)
                .await
                .context("reading shipped orders past their completion")?;
            self.send(rt, Kind::OrderAutoComplete, unconfirmed).await?;
        }
        overdue.retain(|o| !self.sent.contains_key(&o.id));
        let Some(oldest) = overdue.first().cloned() else {
            return Ok(());
        };
        let count = overdue.len();
        self.send(rt, Kind::OrderTimeout, overdue).await?;
        tracing::info!(
            orders = count,
            oldest.order_id = %oldest.id,
            oldest.overdue_ms = now - (oldest.created_at_ms + timeout.as_millis() as i64),
            "sent ORDER_TIMEOUT for orders whose payment timeout never came"
        );
        self.redeclare(rt).await;
        Ok(())
    }

    /// Sends a delayed kind's events for `orders` now, straight to the handler's queue, not
    /// through `publish_all`: that routes them through the delay queue, which would wait the
    /// whole delay again, and drops them when that queue is the one that is gone.
    async fn send(
        &mut self,
        rt: &Runtime,
        kind: Kind,
        orders: Vec<OrderRow>,
    ) -> anyhow::Result<()> {
        let orders: Vec<OrderRow> = orders
            .into_iter()
            .filter(|o| !self.sent.contains_key(&o.id))
            .collect();
        let queue = rt.topology.queue(kind);
        for chunk in orders.chunks(store::CHUNK) {
            let events = chunk.iter().map(|o| o.event()).collect();
            let message = match kind {
                Kind::OrderAutoComplete => Message::OrderAutoComplete { events },
                _ => Message::OrderTimeout { events },
            };
            let mut headers = FieldTable::default();
            let (k, v) = broker::string_header("x-seckill-source", "sweeper");
            headers.insert(k, v);
            rt.publisher
                .publish_raw(&queue, &message.to_json(), headers)
                .await
                .with_context(|| format!("publishing {} to its queue", kind.type_name()))?;
            let at = Instant::now();
            self.sent.extend(chunk.iter().map(|o| (o.id, at)));
            let counter = match kind {
                Kind::OrderAutoComplete => "seckill_sweeper_completed_total",
                _ => "seckill_sweeper_closed_total",
            };
            metrics::counter!(counter).increment(chunk.len() as u64);
        }
        Ok(())
    }

    /// Timeouts went missing, perhaps with their delay queue: declare the topology again
    /// (idempotent), so that the next orders' timeouts have somewhere to wait.
    async fn redeclare(&mut self, rt: &Runtime) {
        if self
            .last_declare
            .is_some_and(|t| t.elapsed() < REDECLARE_EVERY)
        {
            return;
        }
        self.last_declare = Some(Instant::now());
        let name = format!("{}/seckill-workers-sweeper", rt.config.namespace);
        let result = async {
            let conn = broker::connect(&rt.config.amqp_url, &name).await?;
            let declared = async {
                tokio::time::timeout(broker::CALL_TIMEOUT, rt.topology.declare(&conn))
                    .await
                    .context("declaring the topology timed out")??;
                anyhow::Ok(())
            }
            .await;
            let _ =
                tokio::time::timeout(Duration::from_secs(2), conn.close(200, "declared".into()))
                    .await;
            declared
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %format!("{e:#}"), "could not declare the broker topology again");
        }
    }
}

/// Shipped orders shipped before `cutoff`, oldest first, at most [`SWEEP_LIMIT`].
async fn shipped_unconfirmed(db: &DatabaseConnection, cutoff: i64) -> Result<Vec<OrderRow>, DbErr> {
    let mut q = Query::new(db.get_database_backend()).sql(&format!(
        "SELECT {} FROM {} WHERE status = ",
        OrderRow::COLUMNS,
        orders::TABLE
    ));
    q.bind(OrderStatus::Shipped.as_str())
        .push(" AND updated_at_ms < ")
        .bind(cutoff)
        .push(&format!(" ORDER BY updated_at_ms, id LIMIT {SWEEP_LIMIT}"));
    db.query_all_raw(q.build())
        .await?
        .iter()
        .map(OrderRow::read)
        .collect()
}

/// Orders awaiting payment created before `cutoff`, oldest first, at most [`SWEEP_LIMIT`]; with
/// `window`, only those of items whose sale had not ended before it.
async fn overdue_orders(
    db: &DatabaseConnection,
    cutoff: i64,
    window: Option<i64>,
) -> Result<Vec<OrderRow>, DbErr> {
    let mut q = Query::new(db.get_database_backend()).sql(&format!(
        "SELECT {} FROM {} WHERE status = ",
        OrderRow::COLUMNS,
        orders::TABLE
    ));
    q.bind(OrderStatus::AwaitingPayment.as_str())
        .push(" AND created_at_ms < ")
        .bind(cutoff);
    if let Some(since) = window {
        q.push(&format!(
            " AND item_id IN (SELECT id FROM {} WHERE ends_at_ms IS NULL OR ends_at_ms >= ",
            items::TABLE
        ))
        .bind(since)
        .push(")");
    }
    q.push(&format!(" ORDER BY created_at_ms, id LIMIT {SWEEP_LIMIT}"));
    db.query_all_raw(q.build())
        .await?
        .iter()
        .map(OrderRow::read)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEM: ItemId = ItemId(1);
    const OTHER: ItemId = ItemId(2);

    #[test]
    fn a_passing_difference_is_not_reported() {
        let mut r = Reconciler::default();
        // An order accepted by Redis, not yet stored: remaining is 1 short of stock - held.
        assert_eq!(r.observe(ITEM, 10, 0, 9), None);
        // Stored on the next pass: consistent, nothing was ever reported.
        assert_eq!(r.observe(ITEM, 10, 1, 9), None);
        assert_eq!(r.observe(ITEM, 10, 1, 9), None);
    }

    #[test]
    fn a_quiet_drift_is_reported_once_then_changes_and_clears() {
        let mut r = Reconciler::default();
        assert_eq!(
            r.observe(ITEM, 10, 2, 11),
            None,
            "first sight: not yet quiet"
        );
        assert_eq!(r.observe(ITEM, 10, 2, 11), Some(3), "quiet and off by 3");
        assert_eq!(
            r.observe(ITEM, 10, 2, 11),
            None,
            "reported once, not every pass"
        );
        // A sale moves things: the report stands until the item is quiet again.
        assert_eq!(r.observe(ITEM, 10, 3, 10), None);
        assert_eq!(r.observe(ITEM, 10, 3, 10), None, "still off by 3");
        assert_eq!(r.observe(ITEM, 10, 3, 12), None);
        assert_eq!(r.observe(ITEM, 10, 3, 12), Some(5), "the drift changed");
        assert_eq!(r.observe(ITEM, 10, 3, 7), None);
        assert_eq!(r.observe(ITEM, 10, 3, 7), Some(0), "gone");
        assert_eq!(r.observe(ITEM, 10, 3, 7), None);
    }

    #[test]
    fn a_stock_change_is_not_quiet() {
        let mut r = Reconciler::default();
        assert_eq!(r.observe(ITEM, 10, 0, 10), None);
        // The admin added 5 units: Redis and the database move together, not in the same instant.
        assert_eq!(r.observe(ITEM, 15, 0, 10), None);
        assert_eq!(r.observe(ITEM, 15, 0, 15), None);
        assert_eq!(r.observe(ITEM, 15, 0, 15), None);
    }

    #[test]
    fn forgotten_items_with_a_drift_are_cleared() {
        let mut r = Reconciler::default();
        r.observe(ITEM, 10, 0, 12);
        r.observe(ITEM, 10, 0, 12);
        r.observe(OTHER, 10, 0, 10);
        r.observe(OTHER, 10, 0, 10);
        assert_eq!(r.forget_all_but(&HashSet::new()), vec![ITEM]);
        assert!(r.seen.is_empty());
        // Back in Redis: two quiet passes again before anything is reported.
        assert_eq!(r.observe(ITEM, 10, 0, 12), None);
        assert_eq!(r.observe(ITEM, 10, 0, 12), Some(2));
    }

    #[test]
    fn grace_is_the_timeout_within_bounds() {
        assert_eq!(grace(Duration::from_secs(2)), Duration::from_secs(5));
        assert_eq!(grace(Duration::from_secs(30)), Duration::from_secs(30));
        assert_eq!(grace(Duration::from_secs(900)), Duration::from_secs(60));
    }

    #[test]
    fn only_stored_orders_that_hold_stock_count() {
        let s: Vec<_> = stored_holding_statuses().collect();
        assert_eq!(
            s,
            [
                "CREATED",
                "STOCK_LOCKED",
                "AWAITING_PAYMENT",
                "PAID",
                "SHIPPED",
                "COMPLETED",
                "REFUND_REQUESTED"
            ]
        );
    }
}
