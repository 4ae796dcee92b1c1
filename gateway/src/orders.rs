//! Reading orders: the Redis read model first (a just-accepted order is there before it reaches
//! the database), then the database, which keeps every order; and `GET /orders/{id}` and
//! `POST /orders/{id}/cancel` on top.
//!
//! A "no such order" answer is final: the lookup declares a recent missing id void for its owner
//! (`lua/lookup_order.lua`), so a purchase of that id still in flight after a `503
//! outcome_unknown` cannot sell afterwards.

use crate::api::{CancelRequested, OrderView, PaymentView};
use crate::error::Answer;
use crate::error::{ApiError, json};
use crate::request::{parse_id, user_from_jwt};
use crate::state::State;
use fred::prelude::*;
use http::{HeaderMap, StatusCode};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use seckill_domain::record::OrderRecord;
use seckill_domain::scripts::Lookup;
use seckill_domain::snowflake::{millis_of, now_ms};
use seckill_domain::{ItemId, Message, OrderEvent, OrderId, OrderStatus, Quantity, UserId};
use seckill_infra::entity::{orders, payments};
use std::sync::Arc;

/// An id minted this long ago or less may still have its purchase in flight.
const IN_FLIGHT_WINDOW_MS: u64 = 10 * 60 * 1000;

pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn redis_down(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "reading an order from Redis failed");
    ApiError::Unavailable("Redis")
}

/// The order from the database, with the payment it shows.
pub(crate) async fn from_database(
    state: &State,
    order_id: OrderId,
) -> Result<Option<OrderRecord>, ApiError> {
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
pub(crate) fn record_of(
    o: orders::Model,
    pays: &[payments::Model],
) -> Result<OrderRecord, ApiError> {
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

/// Any order, from Redis or else the database (the payment webhook's existence check).
pub async fn find(state: &State, order_id: OrderId) -> Result<Option<OrderRecord>, ApiError> {
    let pairs: Vec<(String, String)> = state
        .redis
        .hgetall::<std::collections::HashMap<String, String>, _>(state.keys.order(order_id))
        .await
        .map_err(redis_down)?
        .into_iter()
        .collect();
    if !pairs.is_empty() {
        return OrderRecord::from_pairs(order_id, pairs)
            .map(Some)
            .map_err(|e| ApiError::Internal(e.into()));
    }
    from_database(state, order_id).await
}

/// The order if it is `user`'s. `None` is final (see the module's comment).
pub(crate) async fn owned(
    state: &State,
    order_id: OrderId,
    user: UserId,
) -> Result<Option<OrderRecord>, ApiError> {
    let minted = millis_of(order_id.0);
    let now = now_ms();
    let recent = minted <= now + 1_000 && now.saturating_sub(minted) <= IN_FLIGHT_WINDOW_MS;
    let lookup = state
        .scripts
        .lookup_order(state.redis.next(), order_id, user, recent)
        .await
        .map_err(redis_down)?;
    let record = match lookup {
        Lookup::Found(r) => Some(r),
        Lookup::Missing => from_database(state, order_id).await?,
        // Redis is being rebuilt: the database may know it; if not, it may be in flight.
        Lookup::Recovering => match from_database(state, order_id).await? {
            Some(r) => Some(r),
            None => return Err(ApiError::Recovering),
        },
    };
    Ok(record.filter(|r| r.user == user))
}

async fn owned_order(
    state: &State,
    headers: &HeaderMap,
    raw_id: &str,
) -> Result<(OrderId, OrderRecord), ApiError> {
    let user = user_from_jwt(state, headers)?;
    let order_id: OrderId = parse_id(raw_id, "not_found")?;
    let record = owned(state, order_id, user)
        .await?
        .ok_or(ApiError::NotFound("not_found", "no such order"))?;
    Ok((order_id, record))
}

#[utoipa::path(get, path = "/orders/{order_id}", tag = "buyers",
    params(("order_id" = String, Path, description = "The snowflake id, decimal")),
    security(("user_jwt" = [])),
    responses(
        (status = 200, description = "The order; a just-accepted one is PENDING, never 404, to its owner", body = crate::api::OrderView),
        (status = 401, description = "unauthorized", body = crate::api::ErrorBody),
        (status = 404, description = "not_found: unknown, or another user's", body = crate::api::ErrorBody),
        (status = 503, description = "unavailable or recovering", body = crate::api::ErrorBody),
    ))]
pub async fn get(state: &Arc<State>, headers: &HeaderMap, raw_id: &str) -> Answer {
    let (order_id, r) = owned_order(state, headers, raw_id).await?;
    Ok(json(StatusCode::OK, &order_view(order_id, r)))
}

/// An order as the API shows it.
pub fn order_view(order_id: OrderId, r: OrderRecord) -> OrderView {
    OrderView {
        order_id,
        user_id: r.user.0,
        item_id: r.item.0,
        quantity: r.quantity.get(),
        amount_cents: r.amount_cents,
        status: r.status,
        created_at: rfc3339_ms(r.created_at_ms),
        updated_at: rfc3339_ms(r.updated_at_ms),
        payment: r.payment.map(|p| PaymentView {
            payment_id: p.payment_id,
            amount_cents: p.amount_cents,
            status: p.status,
        }),
    }
}

/// One step of the order's life after payment, asked for by a person: checked against the order's
/// current status here (`409 invalid_transition`), published durably, and applied by the workers
/// with a conditional move, so that of two racing steps (a refund and the shipment) exactly one
/// takes effect. `202` with the order as it is now.
async fn step(
    state: &State,
    order_id: OrderId,
    r: OrderRecord,
    from: OrderStatus,
    message: fn(Vec<OrderEvent>) -> Message,
) -> Answer {
    if r.status != from {
        return Err(ApiError::Conflict(
            "invalid_transition",
            "the order's status does not allow this step",
        ));
    }
    let m = message(vec![r.event(order_id)]);
    state.publisher.publish(&m).await.map_err(|e| {
        tracing::warn!(error = %e, kind = m.kind().type_name(), "publishing a step failed");
        ApiError::Unavailable("RabbitMQ")
    })?;
    Ok(json(StatusCode::ACCEPTED, &order_view(order_id, r)))
}

#[utoipa::path(post, path = "/orders/{order_id}/confirm", tag = "buyers",
    summary = "Confirm receipt: SHIPPED → COMPLETED",
    params(("order_id" = String, Path, description = "The snowflake id, decimal")),
    security(("user_jwt" = [])),
    responses(
        (status = 202, description = "Requested; the order as it is now", body = crate::api::OrderView),
        (status = 401, description = "unauthorized", body = crate::api::ErrorBody),
        (status = 404, description = "not_found", body = crate::api::ErrorBody),
        (status = 409, description = "invalid_transition: the order is not SHIPPED", body = crate::api::ErrorBody),
        (status = 503, description = "unavailable or recovering", body = crate::api::ErrorBody),
    ))]
pub async fn confirm(state: &Arc<State>, headers: &HeaderMap, raw_id: &str) -> Answer {
    let (order_id, r) = owned_order(state, headers, raw_id).await?;
    step(state, order_id, r, OrderStatus::Shipped, |events| {
        Message::OrderComplete { events }
    })
    .await
}

#[utoipa::path(post, path = "/orders/{order_id}/refund", tag = "buyers",
    summary = "Ask for the money back: PAID (not shipped) → REFUND_REQUESTED",
    params(("order_id" = String, Path, description = "The snowflake id, decimal")),
    security(("user_jwt" = [])),
    responses(
        (status = 202, description = "Requested; the order as it is now. It ends REFUNDED once the provider confirms the refund", body = crate::api::OrderView),
        (status = 401, description = "unauthorized", body = crate::api::ErrorBody),
        (status = 404, description = "not_found", body = crate::api::ErrorBody),
        (status = 409, description = "invalid_transition: the order is not PAID", body = crate::api::ErrorBody),
        (status = 503, description = "unavailable or recovering", body = crate::api::ErrorBody),
    ))]
pub async fn refund(state: &Arc<State>, headers: &HeaderMap, raw_id: &str) -> Answer {
    let (order_id, r) = owned_order(state, headers, raw_id).await?;
    step(state, order_id, r, OrderStatus::Paid, |events| {
        Message::RefundRequest { events }
    })
    .await
}

#[utoipa::path(post, path = "/admin/orders/{order_id}/ship", tag = "operators",
    summary = "Ship a paid order: PAID → SHIPPED (completes on its own after SECKILL_AUTO_COMPLETE_SECS)",
    params(("order_id" = String, Path, description = "The snowflake id, decimal")),
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Requested; the order as it is now", body = crate::api::OrderView),
        (status = 401, description = "unauthorized", body = crate::api::ErrorBody),
        (status = 404, description = "not_found", body = crate::api::ErrorBody),
        (status = 409, description = "invalid_transition: the order is not PAID", body = crate::api::ErrorBody),
        (status = 503, description = "unavailable", body = crate::api::ErrorBody),
    ))]
pub async fn ship(state: &Arc<State>, headers: &HeaderMap, raw_id: &str) -> Answer {
    crate::admin::require_admin(state, headers)?;
    let order_id: OrderId = parse_id(raw_id, "not_found")?;
    let r = find(state, order_id)
        .await?
        .ok_or(ApiError::NotFound("not_found", "no such order"))?;
    step(state, order_id, r, OrderStatus::Paid, |events| {
        Message::OrderShip { events }
    })
    .await
}

#[utoipa::path(post, path = "/orders/{order_id}/cancel", tag = "buyers",
    params(("order_id" = String, Path, description = "The snowflake id, decimal")),
    security(("user_jwt" = [])),
    responses(
        (status = 202, description = "Cancel requested", body = crate::api::CancelRequested),
        (status = 401, description = "unauthorized", body = crate::api::ErrorBody),
        (status = 404, description = "not_found", body = crate::api::ErrorBody),
        (status = 409, description = "not_cancellable: paid or closed", body = crate::api::ErrorBody),
        (status = 503, description = "unavailable or recovering", body = crate::api::ErrorBody),
    ))]
pub async fn cancel(state: &Arc<State>, headers: &HeaderMap, raw_id: &str) -> Answer {
    let (order_id, r) = owned_order(state, headers, raw_id).await?;
    if !r.status.is_cancellable() {
        return Err(ApiError::Conflict(
            "not_cancellable",
            "the order is already paid or closed",
        ));
    }
    state
        .publisher
        .publish(&Message::OrderCancel {
            events: vec![r.event(order_id)],
        })
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "publishing ORDER_CANCEL failed");
            ApiError::Unavailable("RabbitMQ")
        })?;
    Ok(json(
        StatusCode::ACCEPTED,
        &CancelRequested {
            order_id,
            status: "CANCEL_REQUESTED",
        },
    ))
}
