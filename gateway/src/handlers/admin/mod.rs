//! The operators' API (`Authorization: Bearer $SECKILL_ADMIN_TOKEN`): create a sale item
//! (database first, then warm Redis) and inspect one here; list them, change them and end their
//! sale (`adjust`, `listing`), read an item's stock history (`history`), and read or ship any
//! order (`orders`).

pub mod adjust;
pub mod history;
pub mod listing;
pub mod orders;
mod query;

use crate::api::{AdminItemView, NewItem, RedisStock, ShardStock};
use crate::error::{Answer, ApiError, json};
use crate::request::{admin_item_id, parse_json, read_body, require_admin};
use crate::state::State;
use crate::views::{db_stock, item_view};
use http::{HeaderMap, Request, StatusCode};
use hyper::body::Incoming;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, Select,
    Set, SqlErr,
};
use seckill_infra::recovery::Rebuilt;
use seckill_infra::scripts::{Held, ItemState, ScriptError, Warmed};
use seckill_schema::entity::{items, orders as order_rows};
use seckill_schema::keys::MAX_SHARDS;
use seckill_schema::snowflake::now_ms;
use seckill_schema::{ItemId, OrderStatus};
use std::collections::BTreeMap;
use std::sync::Arc;

/// An operator's text (an item's name, a reason), trimmed: 1 to 200 characters, not only blanks,
/// no control characters.
pub(crate) fn check_text(field: &str, text: &str) -> Result<String, ApiError> {
    // As the schema's pattern says it (ECMAScript's `\s` includes U+FEFF; Rust's whitespace not).
    let blank = |c: char| c.is_whitespace() || c == '\u{feff}';
    if text.chars().all(blank) || text.chars().count() > 200 {
        return Err(ApiError::BadRequest(format!(
            "{field} must be 1 to 200 characters, not only blanks"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(text.trim().to_owned())
}

/// The largest amount in cents a buyer's order may reach: the purchase script computes `price ×
/// quantity` in Lua, whose numbers are doubles, exact up to 2^53 − 1 (as are JSON clients').
pub const MAX_AMOUNT_CENTS: i64 = (1 << 53) - 1;

/// Every order of the item, up to the per-user limit, has an exact amount.
pub(crate) fn exact_amounts(price_cents: i64, per_user_limit: i32) -> Result<(), ApiError> {
    if i128::from(price_cents) * i128::from(per_user_limit) > i128::from(MAX_AMOUNT_CENTS) {
        return Err(ApiError::BadRequest(format!(
            "price_cents × per_user_limit must be at most {MAX_AMOUNT_CENTS} (2^53 - 1), so that \
             every order's amount is exact"
        )));
    }
    Ok(())
}

fn parse_time(field: &str, v: &Option<String>) -> Result<Option<i64>, ApiError> {
    v.as_deref()
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .map_err(|_| ApiError::BadRequest(format!("{field} must be an RFC 3339 time")))
        })
        .transpose()
}

/// Loads each of the item's shards into Redis unless it is there; in a gene Redis does not hold
/// (never built, or lost), the gene is rebuilt from the database instead, this item included.
pub(crate) async fn warm(state: &State, m: &items::Model) -> Result<(), ApiError> {
    for shard in ItemState::new_shards(m) {
        warm_shard(state, &shard).await?;
    }
    Ok(())
}

async fn warm_shard(state: &State, item: &ItemState) -> Result<(), ApiError> {
    let redis_err = |e: ScriptError| {
        tracing::warn!(error = %e, "warming an item failed");
        ApiError::Unavailable("Redis")
    };
    for _ in 0..3 {
        match state
            .scripts
            .warm_item(state.redis.next(), item)
            .await
            .map_err(redis_err)?
        {
            Warmed::Loaded | Warmed::AlreadyThere => return Ok(()),
            Warmed::NeedsRebuild => {
                let gene = item.gene;
                match state.parts.recovery.rebuild_gene(gene).await {
                    Ok(Rebuilt::Done { .. } | Rebuilt::AlreadyReady) => {}
                    // Someone else is at it: the item is in the database, the gene will have it.
                    Ok(Rebuilt::Busy | Rebuilt::LostLock) => return Err(ApiError::Recovering),
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), gene, "rebuilding a gene failed");
                        return Err(ApiError::Recovering);
                    }
                }
            }
        }
    }
    Err(ApiError::Recovering)
}

#[utoipa::path(post, path = "/admin/items", tag = "operators",
    request_body = crate::api::NewItem,
    responses(
        (status = 201, description = "Created, its stock warmed into Redis", body = crate::api::ItemView),
        crate::api::BodyErrors,
        crate::api::OperatorErrors,
        (status = 409, description = "exists", body = crate::api::ErrorBody),
    ))]
pub async fn create_item(state: &Arc<State>, req: Request<Incoming>) -> Answer {
    require_admin(state, req.headers())?;
    let (_, body) = read_body(req).await?;
    let new: NewItem = parse_json(&body)?;
    let bad = |m: &str| Err(ApiError::BadRequest(m.to_owned()));
    if new.item_id == 0 || new.item_id > i64::MAX as u64 {
        return bad("item_id must be between 1 and 2^63-1");
    }
    let name = check_text("name", &new.name)?;
    if new.price_cents < 0 || new.price_cents > 1_000_000_000_000 {
        return bad("price_cents must be between 0 and 10^12");
    }
    if new.stock < 0 || new.stock > 1_000_000_000 {
        return bad("stock must be between 0 and 10^9");
    }
    if new.per_user_limit < 1 {
        return bad("per_user_limit must be at least 1");
    }
    exact_amounts(new.price_cents, new.per_user_limit)?;
    if !(1..=MAX_SHARDS).contains(&new.shards) {
        return bad("shards must be between 1 and 16");
    }
    let starts = parse_time("starts_at", &new.starts_at)?;
    let ends = parse_time("ends_at", &new.ends_at)?;
    if let (Some(s), Some(e)) = (starts, ends)
        && e <= s
    {
        return bad("ends_at must be after starts_at");
    }
    let db = state.db().await?;
    let now = now_ms() as i64;
    let model = items::ActiveModel {
        id: Set(new.item_id as i64),
        name: Set(name),
        price_cents: Set(new.price_cents),
        stock: Set(new.stock),
        available: Set(new.stock),
        locked: Set(0),
        sold: Set(0),
        per_user_limit: Set(new.per_user_limit),
        starts_at_ms: Set(starts),
        ends_at_ms: Set(ends),
        created_at_ms: Set(now),
        updated_at_ms: Set(now),
        shards: Set(i16::from(new.shards)),
    };
    match model.insert(db).await {
        Ok(m) => {
            warm(state, &m).await?;
            Ok(json(StatusCode::CREATED, &item_view(&m)))
        }
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            // A retry after a failed warm-up must still leave the item sellable.
            let existing = items::Entity::find_by_id(new.item_id as i64)
                .one(db)
                .await
                .map_err(ApiError::from_db)?;
            if let Some(m) = existing {
                warm(state, &m).await?;
            }
            Err(ApiError::Conflict(
                "item_exists",
                "an item with this id exists",
            ))
        }
        Err(e) => Err(ApiError::from_db(e)),
    }
}

#[utoipa::path(get, path = "/admin/items/{item_id}", tag = "operators",
    responses(
        (status = 200, description = "The item, its stock in Redis and the database, its orders by status", body = crate::api::AdminItemView),
        crate::api::OperatorItemErrors,
    ))]
pub async fn get_item(state: &Arc<State>, headers: &HeaderMap, raw_id: &str) -> Answer {
    let id = admin_item_id(state, headers, raw_id)?;
    Ok(json(StatusCode::OK, &admin_view(state, id).await?))
}

/// The item's row that `select` reads (plainly, or locking it): `404 unknown_item` when there is
/// none.
pub(crate) async fn known_item(
    select: Select<items::Entity>,
    db: &impl ConnectionTrait,
) -> Result<items::Model, ApiError> {
    select
        .one(db)
        .await
        .map_err(ApiError::from_db)?
        .ok_or(ApiError::NotFound("unknown_item", "no such item"))
}

/// What Redis holds of an item, every shard read at one moment.
async fn redis_stock(state: &State, m: &items::Model) -> Result<RedisStock, ApiError> {
    let item = ItemId(m.id as u64);
    let shards = seckill_infra::scripts::shards_of(m);
    let read = state
        .scripts
        .shards_state(state.redis.next(), item, shards, Held::Counted)
        .await
        .map_err(|_| ApiError::Unavailable("Redis"))?
        .ok_or(ApiError::Rebalancing)?;
    let held_by_redis = read.iter().any(|s| s.exists);
    Ok(RedisStock {
        remaining: held_by_redis.then(|| read.iter().map(|s| s.remaining + s.pending).sum()),
        shards: read
            .iter()
            .enumerate()
            .map(|(shard, s)| ShardStock {
                shard: shard as u8,
                gene: s.gene,
                remaining: s.exists.then_some(s.remaining),
                held: s.held,
                in_transfer: s.pending,
            })
            .collect(),
    })
}

/// An item with its stock in Redis and the database and its orders by status.
pub(crate) async fn admin_view(state: &State, id: i64) -> Result<AdminItemView, ApiError> {
    let db = state.db().await?;
    let m = known_item(items::Entity::find_by_id(id), db).await?;
    let redis = redis_stock(state, &m).await?;
    let counts: Vec<(String, i64)> = order_rows::Entity::find()
        .select_only()
        .column(order_rows::Column::Status)
        .column_as(order_rows::Column::Id.count(), "n")
        .filter(order_rows::Column::ItemId.eq(id))
        .group_by(order_rows::Column::Status)
        .into_tuple()
        .all(db)
        .await
        .map_err(ApiError::from_db)?;
    let mut by_status: BTreeMap<String, i64> = OrderStatus::ALL
        .iter()
        .filter(|s| **s != OrderStatus::Pending)
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    by_status.extend(counts);
    Ok(AdminItemView {
        item: item_view(&m),
        redis,
        db: db_stock(&m),
        orders: by_status,
    })
}
