//! Changing an item: its stock (`PATCH /admin/items/{id}` with a `stock_delta`: Redis and the
//! database together, once, see `seckill_infra::stock`), its sale window and per-user limit (the
//! database row, then Redis's hash under the row's lock), and ending its sale now
//! (`POST /admin/items/{id}/end`).

use super::{admin_view, check_text, exact_amounts, known_item, parse_time, warm};
use crate::api::ItemPatch;
use crate::error::{Answer, ApiError, json};
use crate::request::{admin_item_id, parse_json, read_body};
use crate::state::State;
use fred::interfaces::ClientLike;
use http::{HeaderMap, Request, StatusCode};
use hyper::body::Incoming;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect, TransactionTrait};
use seckill_infra::scripts::{Adjusted, Held, ItemSettings, PendingAdjustment, shards_of};
use seckill_infra::shards::Balancer;
use seckill_infra::stock::{self, Settled};
use seckill_schema::entity::items;
use seckill_schema::keys::{MAX_SHARDS, gene_of_item};
use seckill_schema::snowflake::now_ms;
use seckill_schema::{AdjustmentId, ItemId};
use std::sync::Arc;

/// The largest stock change one request makes, either way (the largest stock an item is created
/// with).
const MAX_DELTA: i64 = 1_000_000_000;

fn insufficient() -> ApiError {
    ApiError::Conflict(
        "insufficient_stock",
        "stock may shrink only down to the units live orders hold; GET /admin/items/{item_id} \
         shows what remains",
    )
}

#[utoipa::path(patch, path = "/admin/items/{item_id}", tag = "operators",
    summary = "Change an item's stock, sale window or per-user limit",
    description = "A `stock_delta` applies to Redis and the database together and becomes a row of \
        the item's history (`restock` or `shrink`, with the reason). Stock may grow during a sale, \
        and shrink down to the units held by live orders, never below (`409 insufficient_stock`, \
        nothing changed). The stock change comes first: when it is refused, nothing is changed. \
        `starts_at` and `ends_at` take `null` for an open start or end.",
    request_body = crate::api::ItemPatch,
    responses(
        (status = 200, description = "The item as it is now", body = crate::api::AdminItemView),
        (status = 400, description = "bad_request: malformed, nothing to change, a bad reason, time or limit, or ends_at not after starts_at", body = crate::api::ErrorBody),
        crate::api::UnauthorizedOrUnknownItem,
        (status = 409, description = "insufficient_stock: the shrink would take units live orders hold", body = crate::api::ErrorBody),
        (status = 413, description = "payload_too_large", body = crate::api::ErrorBody),
        (status = 503, description = "unavailable or recovering (nothing changed), or adjustment_pending (the stock change is finished by the workers within a minute: do not send it again)", body = crate::api::ErrorBody),
    ))]
pub async fn patch_item(state: &Arc<State>, req: Request<Incoming>, raw_id: &str) -> Answer {
    let id = admin_item_id(state, req.headers(), raw_id)?;
    let (_, body) = read_body(req).await?;
    let patch: ItemPatch = parse_json(&body)?;
    let reason = check_text("reason", &patch.reason)?;
    let delta = patch.stock_delta.filter(|d| *d != 0);
    if delta.is_some_and(|d| d.abs() > MAX_DELTA) {
        return Err(ApiError::BadRequest(
            "stock_delta must be between -10^9 and 10^9".into(),
        ));
    }
    let starts = patch
        .starts_at
        .map(|t| parse_time("starts_at", &t))
        .transpose()?;
    let ends = patch
        .ends_at
        .map(|t| parse_time("ends_at", &t))
        .transpose()?;
    if patch.per_user_limit.is_some_and(|l| l < 1) {
        return Err(ApiError::BadRequest(
            "per_user_limit must be at least 1".into(),
        ));
    }
    let settings = starts.is_some() || ends.is_some() || patch.per_user_limit.is_some();
    if patch.shards.is_some_and(|k| !(1..=MAX_SHARDS).contains(&k)) {
        return Err(ApiError::BadRequest(
            "shards must be between 1 and 16".into(),
        ));
    }
    if delta.is_none() && !settings && patch.shards.is_none() {
        return Err(ApiError::BadRequest(
            "nothing to change: send a stock_delta other than 0, starts_at, ends_at, \
             per_user_limit or shards"
                .into(),
        ));
    }
    let change = |s: &mut ItemSettings| {
        if let Some(t) = starts {
            s.window.starts_at_ms = t;
        }
        if let Some(t) = ends {
            s.window.ends_at_ms = t;
        }
        if let Some(l) = patch.per_user_limit {
            s.per_user_limit = l;
        }
        check_window(s)
    };
    let db = state.db().await?;
    let item = known_item(items::Entity::find_by_id(id), db).await?;
    // The window against the item as it is, before anything changes, so that a `400` changes
    // nothing (checked again under the row's lock; the price never changes).
    change(&mut settings_of(&item))?;
    if let Some(limit) = patch.per_user_limit {
        exact_amounts(item.price_cents, limit)?;
    }
    if let Some(delta) = delta {
        adjust(state, &item, delta, reason).await?;
    }
    if settings {
        change_settings(state, id, change).await?;
    }
    if let Some(k) = patch.shards {
        reshard(state, id, k).await?;
    }
    Ok(json(StatusCode::OK, &admin_view(state, id).await?))
}

fn shards_in_use(why: &'static str) -> ApiError {
    ApiError::Conflict("shards_in_use", why)
}

/// Spreads the item's stock over `k` shards anew: only while its sale is not live (by Redis's
/// clock) and no live order holds units, so that no buyer's holdings sit in a shard that stops
/// being their home. The database first, under the item's row lock, then every shard of the old
/// and new layouts.
async fn reshard(state: &State, id: i64, k: u8) -> Result<(), ApiError> {
    let db = state.db().await?;
    let txn = db.begin().await.map_err(ApiError::from_db)?;
    let mut row = known_item(items::Entity::find_by_id(id).lock_exclusive(), &txn).await?;
    let old = shards_of(&row);
    if old == k {
        return Ok(());
    }
    let now = state.clock.now_ms();
    if row.window().live(now) {
        return Err(shards_in_use(
            "shards change only while the sale is not live: before it starts or after it ends",
        ));
    }
    if row.locked + row.sold > 0 {
        return Err(shards_in_use(
            "shards change only while no live order holds units of the item",
        ));
    }
    let item = ItemId(row.id as u64);
    let client = state.redis.next();
    let read = state
        .scripts
        .shards_state(client, item, old, Held::Counted)
        .await
        .map_err(|_| ApiError::Unavailable("Redis"))?
        .ok_or(ApiError::Rebalancing)?;
    if read.iter().any(|s| s.held > 0 || s.pending > 0) {
        return Err(shards_in_use(
            "shards change only while no live order holds units of the item",
        ));
    }
    if read.iter().any(|s| !s.exists) {
        return Err(ApiError::Recovering);
    }
    let total: i64 = read.iter().map(|s| s.remaining).sum();
    items::Entity::update_many()
        .col_expr(items::Column::Shards, Expr::value(i16::from(k)))
        .col_expr(items::Column::UpdatedAtMs, Expr::value(now_ms() as i64))
        .filter(items::Column::Id.eq(id))
        .exec(&txn)
        .await
        .map_err(ApiError::from_db)?;
    row.shards = i16::from(k);
    for s in 0..old.max(k) {
        let units =
            (s < k).then(|| total / i64::from(k) + i64::from(i64::from(s) < total % i64::from(k)));
        let written = state
            .scripts
            .reshard(client, &row, s, units)
            .await
            .map_err(|_| ApiError::Unavailable("Redis"))?;
        if !written {
            return Err(ApiError::Recovering);
        }
    }
    txn.commit().await.map_err(ApiError::from_db)?;
    state
        .layouts
        .refresh(client, &state.keys, item)
        .await
        .map_err(|_| ApiError::Unavailable("Redis"))?;
    tracing::info!(
        item.id = id,
        from = old,
        to = k,
        units = total,
        "item's shards changed"
    );
    Ok(())
}

#[utoipa::path(post, path = "/admin/items/{item_id}/end", tag = "operators",
    summary = "End the sale now",
    description = "`ends_at` becomes now (an upcoming sale's `starts_at` too); purchases answer \
        `409 ended` from here on. A sale that ended already keeps its end.",
    responses(
        (status = 200, description = "The item as it is now", body = crate::api::AdminItemView),
        crate::api::UnauthorizedOrUnknownItem,
        (status = 503, description = "unavailable: nothing changed", body = crate::api::ErrorBody),
    ))]
pub async fn end_item(state: &Arc<State>, headers: &HeaderMap, raw_id: &str) -> Answer {
    let id = admin_item_id(state, headers, raw_id)?;
    let now = now_ms() as i64;
    change_settings(state, id, |s| {
        s.window.end_at(now);
        Ok(())
    })
    .await?;
    Ok(json(StatusCode::OK, &admin_view(state, id).await?))
}

fn settings_of(m: &items::Model) -> ItemSettings {
    ItemSettings {
        window: m.window(),
        per_user_limit: m.per_user_limit,
    }
}

fn check_window(s: &ItemSettings) -> Result<(), ApiError> {
    if s.window.ends_after_start() {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "ends_at must be after starts_at".into(),
        ))
    }
}

/// A stock change: Redis's half, then the database's, then the pending entry goes (see
/// `seckill_infra::stock`).
async fn adjust(
    state: &State,
    item: &items::Model,
    delta: i64,
    reason: String,
) -> Result<(), ApiError> {
    let item_id = ItemId(item.id as u64);
    let id = AdjustmentId(state.parts.ids.next(gene_of_item(item_id)).map_err(|_| {
        ApiError::Unavailable("a confirmed snowflake node id (its lease in Redis)")
    })?);
    let adj = PendingAdjustment {
        item: item_id,
        delta,
        at_ms: now_ms() as i64,
        reason,
    };
    let client = state.redis.next();
    if !client.is_connected() {
        return Err(ApiError::Unavailable("Redis"));
    }
    let run = || async {
        state
            .scripts
            .adjust_stock(client, id, &adj)
            .await
            .map_err(|e| {
                // It may have run: then it is pending, and the reconciler finishes it.
                tracing::warn!(adjustment.id = %id, item.id = %item_id, error = %e, "a stock adjustment's Redis half got no answer");
                ApiError::AdjustmentPending(id)
            })
    };
    let mut outcome = run().await?;
    if outcome == Adjusted::UnknownItem {
        // In the database and not in Redis: its warm-up at creation failed. Warm it and go again.
        warm(state, item).await?;
        outcome = run().await?;
    }
    let shards = shards_of(item);
    if let Adjusted::Insufficient { .. } = outcome
        && shards > 1
    {
        // A stock change applies to shard 0: bring it the units the shrink takes from the
        // others, and go again (the shrink is still refused if the item lacks them).
        let balancer = Balancer {
            scripts: &state.scripts,
            client,
            commit: state.parts.group_commit.as_ref(),
        };
        let wanted = -delta;
        balancer
            .rebalance(item_id, shards, gene_of_item(item_id), wanted, |gene| {
                state.parts.ids.next(gene).ok()
            })
            .await
            .map_err(|_| ApiError::Unavailable("Redis"))?;
        outcome = run().await?;
    }
    match outcome {
        Adjusted::Applied { .. } | Adjusted::AlreadyPending => {}
        Adjusted::Insufficient { .. } => return Err(insufficient()),
        Adjusted::Recovering | Adjusted::UnknownItem => return Err(ApiError::Recovering),
    }
    if let Some(commit) = &state.parts.group_commit
        && commit
            .replicated_for(&state.keys.item(item_id))
            .await
            .is_err()
    {
        // Not known to be on a replica: a failover may lose it. If it survives, it is pending,
        // and the reconciler finishes it; if not, nothing happened.
        return Err(ApiError::AdjustmentPending(id));
    }
    let db = state
        .db()
        .await
        .map_err(|_| ApiError::AdjustmentPending(id))?;
    match stock::settle(db, client, &state.scripts, id, &adj).await {
        Ok(Settled::Applied(_) | Settled::AlreadyApplied) => {
            tracing::info!(adjustment.id = %id, item.id = %item_id, delta, "stock adjusted");
            Ok(())
        }
        Ok(Settled::Refused { available }) => {
            tracing::warn!(adjustment.id = %id, item.id = %item_id, delta, db.available = available, "the database refused a stock adjustment Redis allowed; undone");
            Err(insufficient())
        }
        // Redis lost its data between the two halves: it is rebuilt from the database, which
        // does not have the change.
        Ok(Settled::Abandoned) => Err(ApiError::Recovering),
        Ok(Settled::Recovering | Settled::UnknownItem) => Err(ApiError::AdjustmentPending(id)),
        Err(e) => {
            tracing::warn!(adjustment.id = %id, item.id = %item_id, error = %e, "a stock adjustment's database half failed; left to the reconciler");
            Err(ApiError::AdjustmentPending(id))
        }
    }
}

/// Changes an item's settings with `change` (which may refuse them): the database row under its
/// lock, and Redis's hash before the lock goes, so that two operators' changes reach Redis in the
/// database's order. A failure leaves the database as it was; a Redis write whose transaction then
/// failed is copied back from the database by the reconciler.
async fn change_settings(
    state: &State,
    id: i64,
    change: impl FnOnce(&mut ItemSettings) -> Result<(), ApiError>,
) -> Result<(), ApiError> {
    let db = state.db().await?;
    let txn = db.begin().await.map_err(ApiError::from_db)?;
    let item = known_item(items::Entity::find_by_id(id).lock_exclusive(), &txn).await?;
    let before = settings_of(&item);
    let mut after = before;
    change(&mut after)?;
    if after == before {
        return Ok(());
    }
    items::Entity::update_many()
        .col_expr(
            items::Column::StartsAtMs,
            Expr::value(after.window.starts_at_ms),
        )
        .col_expr(
            items::Column::EndsAtMs,
            Expr::value(after.window.ends_at_ms),
        )
        .col_expr(
            items::Column::PerUserLimit,
            Expr::value(after.per_user_limit),
        )
        .col_expr(items::Column::UpdatedAtMs, Expr::value(now_ms() as i64))
        .filter(items::Column::Id.eq(id))
        .exec(&txn)
        .await
        .map_err(ApiError::from_db)?;
    // False: Redis does not hold the item (lost, and rebuilt from the database, this included).
    state
        .scripts
        .item_settings(
            state.redis.next(),
            ItemId(id as u64),
            seckill_infra::scripts::shards_of(&item),
            &after,
        )
        .await
        .map_err(|e| {
            tracing::warn!(item.id = id, error = %e, "writing an item's settings to Redis failed");
            ApiError::Unavailable("Redis")
        })?;
    txn.commit().await.map_err(ApiError::from_db)?;
    tracing::info!(item.id = id, ?before, ?after, "item settings changed");
    Ok(())
}
