//! The one way the gateway reads an order: from Redis's read model (where a just-accepted order is
//! before it reaches the database) or the database (which keeps every order), in the order the
//! caller prefers, each source read at most once.
//!
//! An owner's "no such order" is final: the read-model lookup declares a recent missing id void for
//! its owner (`lua/lookup_order.lua`), so a purchase of that id still in flight after a `503
//! outcome_unknown` cannot sell afterwards.

use crate::error::ApiError;
use crate::state::State;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use seckill_infra::scripts::Lookup;
use seckill_schema::entity::{orders, payments};
use seckill_schema::record::OrderRecord;
use seckill_schema::{ItemId, OrderId, OrderStatus, Quantity, UserId};

/// Who reads the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// Its buyer: another user's order is no order, and a recent missing id is made void.
    Owner(UserId),
    /// An operator or the payment provider: any order, and nothing is made void.
    Anyone,
}

/// Which source answers first; the other is asked only when the first has no such order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefer {
    /// Redis's read model: fresh within milliseconds of every step, and the only source of a
    /// just-accepted order.
    ReadModel,
    /// The database: the record of what the workers applied.
    Database,
}

/// The order, if it exists for `reader`. For an owner, `None` is final (see the module's comment).
pub async fn read(
    state: &State,
    order_id: OrderId,
    reader: Reader,
    prefer: Prefer,
) -> Result<Option<OrderRecord>, ApiError> {
    let record = match prefer {
        Prefer::ReadModel => match from_read_model(state, order_id, reader).await? {
            Lookup::Found(r) => Some(r),
            Lookup::Missing => from_database(state, order_id).await?,
            // Redis is being rebuilt: the database may know it; if not, it may be in flight.
            Lookup::Recovering => match from_database(state, order_id).await? {
                Some(r) => Some(r),
                None => return Err(ApiError::Recovering),
            },
        },
        Prefer::Database => match from_database(state, order_id).await? {
            Some(r) => Some(r),
            None => match from_read_model(state, order_id, reader).await? {
                Lookup::Found(r) => Some(r),
                Lookup::Missing => None,
                Lookup::Recovering => return Err(ApiError::Recovering),
            },
        },
    };
    Ok(match reader {
        Reader::Owner(user) => record.filter(|r| r.user == user),
        Reader::Anyone => record,
    })
}

async fn from_read_model(
    state: &State,
    order_id: OrderId,
    reader: Reader,
) -> Result<Lookup, ApiError> {
    // An owner's "no such order" makes a recent id void (judged on Redis's clock, in the script).
    let (user, may_void) = match reader {
        Reader::Owner(user) => (user, true),
        Reader::Anyone => (UserId(0), false),
    };
    state
        .scripts
        .lookup_order(state.redis.next(), order_id, user, may_void)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "reading an order from Redis failed");
            ApiError::Unavailable("Redis")
        })
}

/// The order from the database, with the payment it shows.
async fn from_database(state: &State, order_id: OrderId) -> Result<Option<OrderRecord>, ApiError> {
    let db = state.db().await?;
    let Some(id) = i64::try_from(order_id.0).ok() else {
        return Ok(None);
    };
    let Some(o) = orders::Entity::find_by_id(id)
        .one(db)
        .await
        .map_err(ApiError::from_db)?
    else {
        return Ok(None);
    };
    let pays = payments::Entity::find()
        .filter(payments::Column::OrderId.eq(id))
        .all(db)
        .await
        .map_err(ApiError::from_db)?;
    record_of(o, &pays).map(Some)
}

/// An order's row and its payments' rows as the API shows the order (`GET /orders` shares it).
pub fn record_of(o: orders::Model, pays: &[payments::Model]) -> Result<OrderRecord, ApiError> {
    let bad = |what: &str| ApiError::Internal(anyhow::anyhow!("order {} has {what}", o.id));
    let status: OrderStatus = o.status.parse().map_err(|_| bad("an unknown status"))?;
    let payment = payments::shown(OrderId(o.id as u64), status, o.amount_cents, pays)
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(OrderRecord {
        user: UserId(o.user_id as u64),
        item: ItemId(o.item_id as u64),
        quantity: u32::try_from(o.quantity)
            .ok()
            .and_then(Quantity::new)
            .ok_or_else(|| bad("a bad quantity"))?,
        amount_cents: o.amount_cents,
        status,
        created_at_ms: o.created_at_ms,
        updated_at_ms: o.updated_at_ms,
        payment,
    })
}
