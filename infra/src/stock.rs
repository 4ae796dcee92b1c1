//! Stock adjustments by an operator (`PATCH /admin/items/{id}` with a `stock_delta`), applied to
//! Redis and to the database together, once, whoever finishes them.
//!
//! Redis and the database cannot share a transaction, so an adjustment is applied in three steps:
//!
//! 1. Redis first (`lua/adjust_stock.lua`): the floor is checked where the live orders are counted
//!    (`remaining`), `remaining` and `stock` move, and the adjustment is recorded as pending in its
//!    gene's hash (`Keys::adjustments`) under an id the gateway minted.
//! 2. The database ([`settle`]): under the item row's lock, the stock columns move and the
//!    adjustment becomes a row of the item's history, keyed by its id (unique). If the database
//!    would go negative (it should not: its `available` never falls below Redis's `remaining`),
//!    the Redis half is undone instead (`lua/undo_adjustment.lua`).
//! 3. The pending entry is removed.
//!
//! A crash between the steps leaves the entry pending; the workers' reconciler settles entries
//! older than a threshold with the same [`settle`]. Every settler of one id takes the item row's
//! lock and then decides from what it sees under it: a history row (applied: just forget the
//! entry), no entry (undone, or lost with Redis's data: apply nothing), or neither (apply, or undo
//! if the database refuses). So two settlers racing, the gateway and a reconciler or two
//! reconcilers, reach one outcome, and an adjustment is never both applied and undone.
//!
//! A rebuild of Redis from the database (`crate::recovery`) counts the pending adjustments the
//! database does not have yet, so that the ones settled after it are not lost from Redis.

use crate::scripts::{PendingAdjustment, ScriptError, Scripts, Undone};
use fred::prelude::Client;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QuerySelect,
    Set, SqlErr, TransactionTrait,
};
use seckill_schema::entity::{inventory_history, items};
use seckill_schema::snowflake::now_ms;
use seckill_schema::{AdjustmentId, ItemId};
use std::collections::HashMap;

/// History causes of an adjustment: stock added, or taken out.
pub const RESTOCK: &str = "restock";
pub const SHRINK: &str = "shrink";

pub fn cause_of(delta: i64) -> &'static str {
    if delta >= 0 { RESTOCK } else { SHRINK }
}

/// How an adjustment ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Applied to the database now: the item's row after it.
    Applied(items::Model),
    /// The database had it already.
    AlreadyApplied,
    /// The database would have gone negative: the Redis half was undone.
    Refused { available: i64 },
    /// Nothing pending in Redis (undone before, or lost with Redis's data): nothing applied.
    Abandoned,
    /// The database refused it, but its gene is being rebuilt, so the Redis half cannot be undone
    /// yet: it stays pending, for the reconciler.
    Recovering,
    /// The database has no such item: nothing applied.
    UnknownItem,
}

#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("the database: {0}")]
    Database(#[from] DbErr),
    #[error("Redis: {0}")]
    Redis(#[from] ScriptError),
    #[error("adjustment {id}: {detail}")]
    Broken { id: AdjustmentId, detail: String },
}

/// The database half of a pending adjustment, and the removal of its entry (see the module's
/// comment). `adj` is the pending entry as its Redis half recorded it.
pub async fn settle(
    db: &DatabaseConnection,
    redis: &Client,
    scripts: &Scripts,
    id: AdjustmentId,
    adj: &PendingAdjustment,
) -> Result<Settled, SettleError> {
    let txn = db.begin().await?;
    // The lock first: what this transaction reads after it includes what the previous holder
    // committed (PostgreSQL reads each statement afresh; MySQL takes its snapshot at the first
    // plain read, which comes after).
    let Some(item) = items::Entity::find_by_id(adj.item.0 as i64)
        .lock_exclusive()
        .one(&txn)
        .await?
    else {
        txn.rollback().await?;
        return Ok(Settled::UnknownItem);
    };
    if recorded(&txn, id).await? {
        txn.rollback().await?;
        forget(redis, scripts, id, adj.item).await;
        return Ok(Settled::AlreadyApplied);
    }
    match scripts.pending_adjustment(redis, id, adj.item).await? {
        None => {
            txn.rollback().await?;
            return Ok(Settled::Abandoned);
        }
        Some(p) if p != *adj => {
            return Err(SettleError::Broken {
                id,
                detail: format!("pending as {p:?} in Redis, settled as {adj:?}"),
            });
        }
        Some(_) => {}
    }
    let available = item.available + adj.delta;
    if available < 0 {
        // Still under the lock: no other settler can apply it meanwhile.
        let undone = scripts.undo_adjustment(redis, id, adj.item).await?;
        txn.rollback().await?;
        return Ok(match undone {
            Undone::Reversed | Undone::NotPending => Settled::Refused {
                available: item.available,
            },
            Undone::Recovering => Settled::Recovering,
        });
    }
    let now = now_ms() as i64;
    let after = items::Model {
        stock: item.stock + adj.delta,
        available,
        updated_at_ms: now,
        ..item.clone()
    };
    items::Entity::update_many()
        .col_expr(items::Column::Stock, Expr::value(after.stock))
        .col_expr(items::Column::Available, Expr::value(after.available))
        .col_expr(items::Column::UpdatedAtMs, Expr::value(now))
        .filter(items::Column::Id.eq(item.id))
        .exec(&txn)
        .await?;
    let row = inventory_history::ActiveModel {
        item_id: Set(item.id),
        order_id: Set(None),
        cause: Set(cause_of(adj.delta).to_owned()),
        quantity: Set(adj.delta.abs()),
        available_before: Set(item.available),
        available_after: Set(after.available),
        locked_before: Set(item.locked),
        locked_after: Set(item.locked),
        sold_before: Set(item.sold),
        sold_after: Set(item.sold),
        created_at_ms: Set(now),
        reason: Set(Some(adj.reason.clone())),
        adjustment_id: Set(Some(id.0 as i64)),
        ..Default::default()
    };
    match inventory_history::Entity::insert(row)
        .exec_without_returning(&txn)
        .await
    {
        Ok(_) => {}
        // Applied by a settler that did not take the lock first (there is none today): done.
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            txn.rollback().await?;
            forget(redis, scripts, id, adj.item).await;
            return Ok(Settled::AlreadyApplied);
        }
        Err(e) => return Err(e.into()),
    }
    // Read back rather than trust the insert's result: MySQL can report an ignored row inserted.
    if !recorded(&txn, id).await? {
        return Err(SettleError::Broken {
            id,
            detail: "its history row is not there after its insert".into(),
        });
    }
    txn.commit().await?;
    forget(redis, scripts, id, adj.item).await;
    Ok(Settled::Applied(after))
}

/// Whether the database has the adjustment's history row.
async fn recorded(db: &impl ConnectionTrait, id: AdjustmentId) -> Result<bool, DbErr> {
    Ok(inventory_history::Entity::find()
        .select_only()
        .column(inventory_history::Column::Id)
        .filter(inventory_history::Column::AdjustmentId.eq(id.0 as i64))
        .into_tuple::<i64>()
        .one(db)
        .await?
        .is_some())
}

/// Removes a settled adjustment's entry. A failure is harmless: the database has the adjustment
/// (or it was undone), and the reconciler removes what is left.
async fn forget(redis: &Client, scripts: &Scripts, id: AdjustmentId, item: ItemId) {
    if let Err(e) = scripts.settle_adjustment(redis, id, item).await {
        tracing::warn!(adjustment.id = %id, item.id = %item, error = %e, "removing a settled adjustment's pending entry failed; the reconciler will");
    }
}

/// Of `pending`, the units per item the database does not have yet, as `db` reads them.
pub async fn unapplied(
    db: &impl ConnectionTrait,
    pending: &[(AdjustmentId, PendingAdjustment)],
) -> Result<HashMap<ItemId, i64>, DbErr> {
    let mut applied = std::collections::HashSet::new();
    for chunk in pending.chunks(1000) {
        let rows: Vec<Option<i64>> = inventory_history::Entity::find()
            .select_only()
            .column(inventory_history::Column::AdjustmentId)
            .filter(
                inventory_history::Column::AdjustmentId
                    .is_in(chunk.iter().map(|(id, _)| id.0 as i64)),
            )
            .into_tuple()
            .all(db)
            .await?;
        applied.extend(rows.into_iter().flatten());
    }
    let mut out = HashMap::new();
    for (id, adj) in pending {
        if !applied.contains(&(id.0 as i64)) {
            *out.entry(adj.item).or_default() += adj.delta;
        }
    }
    Ok(out)
}
