//! Recovery from a Redis that lost its data (a restart without persistence, a failover to a stale
//! replica, a flushed key): what Redis must hold is rebuilt from the database, which owns the
//! truth, one shard gene at a time.
//!
//! Every gene's state hash (`Keys::state`) carries `ready` = the epoch of the state Redis holds. It
//! is written last by a rebuild, so its absence means the gene's data is missing or incomplete:
//! then nothing in the gene is sold (`503 recovering`), released or mirrored until a rebuild wrote
//! it again. A rebuild, under a lock in the gene's slot, writes every item of the gene (remaining =
//! stock minus the units of its live orders), each buyer's holdings and latest live order, and the
//! live orders' records, all counted by a new epoch; orders that were on their way to the database
//! meanwhile are adopted when the workers mirror them (`lua/mirror.lua`).
//!
//! Stock adjustments pending in the gene (applied to Redis, not yet known to be in the database:
//! see `crate::stock`) are counted on top of what the database has, read with the rest in one
//! snapshot: an adjustment the database commits after that snapshot is then in Redis already.
//!
//! Any process may rebuild (the lock makes one win); the workers watch every gene, and the gateway
//! rebuilds a gene when an operator creates an item in one that was never built.

use crate::lifecycle::{Every, Shutdown};
use crate::replication::GroupCommit;
use crate::scripts::{Held, ItemState, RebuiltOrder, Scripts, shards_of};
use anyhow::Context;
use fred::prelude::*;
use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, IsolationLevel,
    QueryFilter, TransactionTrait,
};
use seckill_schema::entity::{items, orders, payments};
use seckill_schema::ids::{ItemId, OrderId, Quantity, UserId};
use seckill_schema::keys::{shard_gene, shard_of_gene};
use seckill_schema::record::OrderRecord;
use seckill_schema::snowflake::{GENES, gene_of, now_ms};
use seckill_schema::status::OrderStatus;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// How often the watcher looks at every gene's marker.
pub const WATCH_EVERY: Duration = Duration::from_millis(250);
/// How often the watcher compares Redis's write generations with the database's.
const STALE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// A rebuild lock outlives a crashed rebuilder by this much.
const LOCK_TTL: Duration = Duration::from_secs(60);
/// Ids per `IN (…)` list.
const CHUNK: usize = 1000;

/// What a rebuild attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebuilt {
    Done {
        items: usize,
        orders: usize,
    },
    /// The gene was ready already.
    AlreadyReady,
    /// Another process holds the lock.
    Busy,
    /// Redis lost the lock mid-way (it lost its data again): try again.
    LostLock,
}

pub struct Recovery {
    redis: Pool,
    scripts: Scripts,
    database_url: String,
    db: OnceCell<DatabaseConnection>,
    /// In `replica` mode: what confirms the transfers it finishes (on its own client's writes).
    group_commit: Option<Arc<GroupCommit>>,
}

impl Recovery {
    /// `db`: a connection to use, or `None` to connect on first need (the gateway's case).
    pub fn new(
        redis: Pool,
        scripts: Scripts,
        database_url: &str,
        db: Option<DatabaseConnection>,
        group_commit: Option<Arc<GroupCommit>>,
    ) -> Arc<Recovery> {
        Arc::new(Recovery {
            redis,
            scripts,
            database_url: database_url.to_owned(),
            db: db.map(|d| OnceCell::new_with(Some(d))).unwrap_or_default(),
            group_commit,
        })
    }

    /// The database, connected (created and migrated if need be) on first use; shared with the
    /// process that owns this `Recovery`, so that only one connection creates the database.
    pub async fn db(&self) -> anyhow::Result<&DatabaseConnection> {
        self.db
            .get_or_try_init(|| crate::db::connect(&self.database_url, 4))
            .await
    }

    /// The genes whose state Redis does not hold completely.
    pub async fn genes_not_ready(&self) -> Result<Vec<u8>, fred::error::Error> {
        let client = self.redis.next();
        let reads = self.scripts.keys().states().map(|(gene, key)| async move {
            let ready: Option<String> = client.hget(key, "ready").await?;
            Ok::<_, fred::error::Error>((gene, ready.is_some()))
        });
        let states = futures_util::future::try_join_all(reads).await?;
        Ok(states
            .into_iter()
            .filter(|(_, ready)| !ready)
            .map(|(g, _)| g)
            .collect())
    }

    /// Watches every gene and rebuilds the ones Redis lost, until `stop`.
    pub async fn watch(self: Arc<Self>, stop: Shutdown) {
        let mut ticks = Every::now(WATCH_EVERY, stop);
        let mut failing = false;
        let mut lost: BTreeMap<u8, Instant> = BTreeMap::new();
        let mut stale_checked = Instant::now() - STALE_CHECK_EVERY;
        while ticks.tick().await {
            if stale_checked.elapsed() >= STALE_CHECK_EVERY {
                stale_checked = Instant::now();
                self.mark_stale_genes().await;
                self.finish_stale_transfers().await;
            }
            let genes = match self.genes_not_ready().await {
                Ok(g) => g,
                // Redis unreachable: nothing to rebuild into; the clients report it.
                Err(_) => continue,
            };
            metrics::gauge!("seckill_redis_recovering_genes").set(genes.len() as f64);
            lost.retain(|g, _| genes.contains(g));
            let noticed: Vec<u8> = genes
                .iter()
                .copied()
                .filter(|g| !lost.contains_key(g))
                .collect();
            if !noticed.is_empty() {
                tracing::warn!(
                    genes = ?noticed,
                    "Redis does not hold these hash tags' state (lost, flushed or never built): \
                     rebuilding them from the database; they sell again after that"
                );
            }
            let (mut rebuilt, mut items_total, mut orders_total) = (Vec::new(), 0, 0);
            for gene in genes {
                let since = *lost.entry(gene).or_insert_with(Instant::now);
                match self.rebuild_gene(gene).await {
                    Ok(Rebuilt::Done { items, orders }) => {
                        failing = false;
                        rebuilt.push((gene, since.elapsed().as_millis() as u64));
                        items_total += items;
                        orders_total += orders;
                    }
                    Ok(Rebuilt::AlreadyReady | Rebuilt::Busy | Rebuilt::LostLock) => {}
                    Err(e) => {
                        if !failing {
                            tracing::warn!(gene, error = %format!("{e:#}"), "rebuilding a gene failed; retrying");
                        }
                        failing = true;
                    }
                }
            }
            if !rebuilt.is_empty() {
                tracing::info!(
                    genes = ?rebuilt.iter().map(|(g, _)| *g).collect::<Vec<_>>(),
                    items = items_total,
                    orders = orders_total,
                    slowest_ms = rebuilt.iter().map(|(_, ms)| *ms).max().unwrap_or(0),
                    "rebuilt Redis's state from the database"
                );
            }
        }
    }

    /// Finds genes whose Redis state is older than what the database recorded of it (a failover
    /// to a replica that missed writes, or a restore of an old file) and marks them not ready, so
    /// that they are rebuilt from the database like a gene Redis lost. The database is read first:
    /// Redis's generation only grows (the workers record a generation after Redis reached it), so
    /// a Redis below the database's reading is stale, never merely ahead of the reading.
    async fn mark_stale_genes(&self) {
        // The gateway connects on first need; a database not there yet has recorded nothing.
        let Ok(db) = self.db().await else { return };
        let Ok(recorded) = crate::db::redis_generations(db).await else {
            return;
        };
        if recorded.is_empty() {
            return;
        }
        let client = self.redis.next();
        for (gene, db_generation) in recorded {
            let key = self.scripts.keys().state(gene);
            let Ok((ready, generation)) = client
                .hmget::<(Option<String>, Option<u64>), _, _>(&key, vec!["ready", "gen"])
                .await
            else {
                return;
            };
            let redis_generation = generation.unwrap_or(0);
            if ready.is_some() && redis_generation < db_generation {
                tracing::error!(
                    gene,
                    redis_generation,
                    db_generation,
                    "Redis holds an older state of this hash tag than the database saw it reach \
                     (a failover to a replica that missed writes): rebuilding it from the database"
                );
                metrics::counter!("seckill_redis_stale_total").increment(1);
                let _: Result<i64, _> = client.hdel(&key, "ready").await;
            }
        }
    }

    /// For each item of several shards among `items` (this gene's shard of it, as the database
    /// has it): freezes its other shards (no transfer in or out while they are counted), reads
    /// them at one consistent moment, and sets this shard's remaining to what the item's stock
    /// leaves once the others' remaining, held and in-transfer units and this shard's buyers'
    /// holdings are counted. A transfer this shard had started is lost with it: its units were in
    /// no other shard yet, so they are counted back here. The caller thaws the shards.
    async fn shard_remaining(&self, items: &mut [ItemState], token: &str) -> anyhow::Result<()> {
        let client = self.redis.next();
        for state in items.iter_mut() {
            let shards = shards_of(&state.row);
            if shards <= 1 {
                continue;
            }
            let item = state.item();
            let others: Vec<u8> = (0..shards)
                .map(|s| shard_gene(item, s))
                .filter(|g| *g != state.gene)
                .collect();
            for gene in &others {
                self.scripts
                    .freeze(client, item, *gene, token, LOCK_TTL.as_millis() as u64)
                    .await
                    .context("freezing an item's other shards")?;
            }
            let read = self
                .scripts
                .shards_state(client, item, shards, Held::Counted)
                .await
                .context("reading an item's other shards")?
                .context("the item's shards kept changing while they were read")?;
            let elsewhere: i64 = read
                .iter()
                .filter(|s| s.gene != state.gene)
                .map(|s| s.accounted())
                .sum();
            let held_here: i64 = state.buyers.iter().map(|(_, units, _)| units).sum();
            let remaining = state.row.stock - held_here - elsewhere;
            if remaining < 0 {
                tracing::warn!(
                    item.id = %item,
                    gene = state.gene,
                    remaining,
                    "an item's other shards account for more than its stock; this shard starts empty"
                );
            }
            state.remaining = remaining.max(0);
        }
        Ok(())
    }

    async fn thaw_all(&self, frozen: &[(ItemId, u8)], gene: u8) {
        let client = self.redis.next();
        for (item, shards) in frozen {
            for s in 0..*shards {
                let other = shard_gene(*item, s);
                if other != gene {
                    let _ = self.scripts.thaw(client, *item, other).await;
                }
            }
        }
    }

    /// Finishes the transfers between sharded items' shards that a crash left pending (a gateway
    /// killed between a transfer's steps), whoever started them.
    async fn finish_stale_transfers(&self) {
        let Ok(db) = self.db().await else { return };
        let Ok(sharded) = items::Entity::find()
            .filter(items::Column::Shards.gt(1))
            .all(db)
            .await
        else {
            return;
        };
        let balancer = crate::shards::Balancer {
            scripts: &self.scripts,
            client: match &self.group_commit {
                Some(commit) => commit.client(),
                None => self.redis.next(),
            },
            commit: self.group_commit.as_ref(),
        };
        for row in sharded {
            let item = ItemId(row.id as u64);
            if let Err(e) = crate::shards::finish_stale(&balancer, item, shards_of(&row)).await {
                tracing::debug!(item.id = %item, error = %e, "finishing an item's pending transfers failed; retrying");
            }
        }
    }

    /// Rebuilds one gene from the database, unless it is ready or another process is at it.
    pub async fn rebuild_gene(&self, gene: u8) -> anyhow::Result<Rebuilt> {
        // Connected before the lock is taken: a database that is not there yet holds up nobody.
        let db = self.db().await.context("connecting to the database")?;
        let client = self.redis.next();
        let keys = self.scripts.keys();
        let token = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        let locked: Option<String> = client
            .set(
                keys.rebuild_lock(gene),
                token.as_str(),
                Some(Expiration::PX(LOCK_TTL.as_millis() as i64)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .context("taking the rebuild lock")?;
        if locked.is_none() {
            return Ok(Rebuilt::Busy);
        }
        let result = self.rebuild_locked(db, gene, &token).await;
        if !matches!(result, Ok(Rebuilt::Done { .. })) {
            // Failed, or nothing to do: let the next attempt in at once.
            let _ = self.scripts.rebuild_abort(client, gene, &token).await;
        }
        result
    }

    async fn rebuild_locked(
        &self,
        db: &DatabaseConnection,
        gene: u8,
        token: &str,
    ) -> anyhow::Result<Rebuilt> {
        let client = self.redis.next();
        let ready: Option<String> = client
            .hget(self.scripts.keys().state(gene), "ready")
            .await?;
        if ready.is_some() {
            return Ok(Rebuilt::AlreadyReady);
        }
        let started = Instant::now();
        // Read after the lock: anything the database commits from here on is mirrored (and
        // adopted if need be) once the gene is ready, never lost between the read and the write.
        let epoch = now_ms();
        // Nothing new is pending while the gene is not ready (`lua/adjust_stock.lua` refuses).
        let pending: Vec<_> = self
            .scripts
            .pending_adjustments(client, gene)
            .await
            .context("reading the pending stock adjustments")?
            .into_iter()
            .filter_map(|(id, adj)| match adj {
                Ok(adj) => Some((id, adj)),
                Err(e) => {
                    tracing::warn!(gene, adjustment.id = %id, error = %e, "a pending stock adjustment does not decode; left out of the rebuild");
                    None
                }
            })
            .collect();
        let generation = crate::db::redis_generations(db)
            .await
            .context("reading the recorded write generations")?
            .get(&gene)
            .copied()
            .unwrap_or(0);
        let (mut items, orders) = read_gene(db, gene, &pending).await?;
        // An item of several shards: its other shards keep selling; this one's remaining is
        // what they do not account for, counted while no transfer moves units between them.
        let frozen: Vec<(ItemId, u8)> = items
            .iter()
            .filter(|i| shards_of(&i.row) > 1)
            .map(|i| (i.item(), shards_of(&i.row)))
            .collect();
        let counted = self.shard_remaining(&mut items, token).await;
        if let Err(e) = counted {
            self.thaw_all(&frozen, gene).await;
            return Err(e);
        }
        for item in &items {
            if !self.scripts.rebuild_item(client, token, item).await? {
                self.thaw_all(&frozen, gene).await;
                return Ok(Rebuilt::LostLock);
            }
        }
        if !self
            .scripts
            .rebuild_orders(client, gene, token, epoch, &orders)
            .await?
        {
            return Ok(Rebuilt::LostLock);
        }
        let ids: Vec<ItemId> = items.iter().map(ItemState::item).collect();
        let done = self
            .scripts
            .rebuild_done(client, gene, token, epoch, generation, &ids)
            .await;
        self.thaw_all(&frozen, gene).await;
        if !done? {
            return Ok(Rebuilt::LostLock);
        }
        metrics::counter!("seckill_redis_rebuilds_total").increment(1);
        metrics::histogram!("seckill_redis_rebuild_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(Rebuilt::Done {
            items: items.len(),
            orders: orders.len(),
        })
    }
}

fn holding_statuses() -> Vec<&'static str> {
    OrderStatus::ALL
        .iter()
        .copied()
        .filter(|s| s.holds_stock() && *s != OrderStatus::Pending)
        .map(|s| s.as_str())
        .collect()
}

/// The gene's items and their live orders, as the database has them in one snapshot, with the
/// `pending` stock adjustments it does not have yet counted in.
async fn read_gene(
    db: &DatabaseConnection,
    gene: u8,
    pending: &[(
        seckill_schema::AdjustmentId,
        crate::scripts::PendingAdjustment,
    )],
) -> anyhow::Result<(Vec<ItemState>, Vec<RebuiltOrder>)> {
    let txn = db
        .begin_with_config(
            Some(IsolationLevel::RepeatableRead),
            Some(AccessMode::ReadOnly),
        )
        .await
        .context("starting a snapshot of the database")?;
    let read = read_gene_in(&txn, gene, pending).await;
    // Read only: nothing to keep either way.
    let _ = txn.rollback().await;
    read
}

async fn read_gene_in(
    db: &impl ConnectionTrait,
    gene: u8,
    pending: &[(
        seckill_schema::AdjustmentId,
        crate::scripts::PendingAdjustment,
    )],
) -> anyhow::Result<(Vec<ItemState>, Vec<RebuiltOrder>)> {
    let all = items::Entity::find()
        .all(db)
        .await
        .context("reading items")?;
    // The items with a shard in this gene (an unsharded item's only shard is its own gene's).
    let mine: Vec<items::Model> = all
        .into_iter()
        .filter(|m| shard_of_gene(ItemId(m.id as u64), shards_of(m), gene).is_some())
        .collect();
    debug_assert!((gene as u64) < GENES);
    let ids: Vec<i64> = mine.iter().map(|m| m.id).collect();
    let mut live = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        live.extend(
            orders::Entity::find()
                .filter(orders::Column::ItemId.is_in(chunk.iter().copied()))
                .filter(orders::Column::Status.is_in(holding_statuses()))
                .all(db)
                .await
                .context("reading live orders")?,
        );
    }
    let order_ids: Vec<i64> = live.iter().map(|o| o.id).collect();
    let mut pays: HashMap<i64, Vec<payments::Model>> = HashMap::new();
    for chunk in order_ids.chunks(CHUNK) {
        for p in payments::Entity::find()
            .filter(payments::Column::OrderId.is_in(chunk.iter().copied()))
            .all(db)
            .await
            .context("reading payments")?
        {
            pays.entry(p.order_id).or_default().push(p);
        }
    }

    let mut held: HashMap<i64, i64> = HashMap::new();
    let mut buyers: HashMap<i64, BTreeMap<i64, (i64, i64)>> = HashMap::new();
    let mut rebuilt = Vec::with_capacity(live.len());
    // An order belongs to its buyer's home shard, whose gene its id carries.
    for o in live.into_iter().filter(|o| gene_of(o.id as u64) == gene) {
        let status: OrderStatus = o
            .status
            .parse()
            .with_context(|| format!("order {} has status {:?}", o.id, o.status))?;
        let quantity = u32::try_from(o.quantity)
            .ok()
            .and_then(Quantity::new)
            .with_context(|| format!("order {} has quantity {}", o.id, o.quantity))?;
        *held.entry(o.item_id).or_default() += o.quantity as i64;
        let entry = buyers
            .entry(o.item_id)
            .or_default()
            .entry(o.user_id)
            .or_insert((0, 0));
        entry.0 += o.quantity as i64;
        entry.1 = entry.1.max(o.id);
        // What the provider reported; the read model derives an intent itself.
        let payment = payments::reported(pays.get(&o.id).map_or(&[], Vec::as_slice))?;
        rebuilt.push(RebuiltOrder {
            order_id: OrderId(o.id as u64),
            record: OrderRecord {
                user: UserId(o.user_id as u64),
                item: ItemId(o.item_id as u64),
                quantity,
                amount_cents: o.amount_cents,
                status,
                created_at_ms: o.created_at_ms,
                updated_at_ms: o.updated_at_ms,
                payment,
            },
        });
    }
    let unapplied = crate::stock::unapplied(db, pending)
        .await
        .context("reading which pending stock adjustments the database has")?;
    let items = mine
        .into_iter()
        .map(|mut m| {
            m.stock += unapplied.get(&ItemId(m.id as u64)).copied().unwrap_or(0);
            m
        })
        .map(|m| ItemState {
            gene,
            // For an item of several shards, what this shard holds is counted against the others
            // in Redis by the rebuild itself (`shard_remaining`).
            remaining: m.stock - held.get(&m.id).copied().unwrap_or(0),
            buyers: buyers
                .remove(&m.id)
                .unwrap_or_default()
                .into_iter()
                .map(|(user, (units, order))| (UserId(user as u64), units, OrderId(order as u64)))
                .collect(),
            row: m,
        })
        .collect();
    Ok((items, rebuilt))
}
