//! A buyer's orders: `GET /orders/{order_id}`, cancel, confirm receipt and ask for a refund; the
//! list of their orders (`list`) and an order's event stream (`events`).

pub mod events;
pub mod list;

use crate::api::CancelRequested;
use crate::error::{Answer, ApiError, json};
use crate::reader::{self, Prefer, Reader};
use crate::request::{parse_id, user_from_jwt};
use crate::state::State;
use crate::views::order_view;
use http::{HeaderMap, StatusCode};
use seckill_schema::record::OrderRecord;
use seckill_schema::{Message, OrderEvent, OrderId, OrderStatus};
use std::sync::Arc;

async fn owned_order(
    state: &State,
    headers: &HeaderMap,
    raw_id: &str,
) -> Result<(OrderId, OrderRecord), ApiError> {
    let user = user_from_jwt(state, headers)?;
    let order_id: OrderId = parse_id(raw_id, "not_found")?;
    let record = reader::read(state, order_id, Reader::Owner(user), Prefer::ReadModel)
        .await?
        .ok_or(ApiError::NotFound("not_found", "no such order"))?;
    Ok((order_id, record))
}

#[utoipa::path(get, path = "/orders/{order_id}", tag = "buyers",
    security(("user_jwt" = [])),
    responses(
        (status = 200, description = "The order; a just-accepted one is PENDING, never 404, to its owner", body = crate::api::OrderView),
        crate::api::OwnOrderErrors,
    ))]
pub async fn get(state: &Arc<State>, headers: &HeaderMap, raw_id: &str) -> Answer {
    let (order_id, r) = owned_order(state, headers, raw_id).await?;
    Ok(json(StatusCode::OK, &order_view(order_id, r)))
}

/// One step of the order's life after payment, asked for by a person: checked against the order's
/// current status here (`409 invalid_transition`), published durably, and applied by the workers
/// with a conditional move, so that of two racing steps (a refund and the shipment) exactly one
/// takes effect. `202` with the order as it is now.
pub(crate) async fn step(
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
    state.parts.publisher.publish(&m).await.map_err(|e| {
        tracing::warn!(error = %e, kind = m.kind().type_name(), "publishing a step failed");
        ApiError::Unavailable("RabbitMQ")
    })?;
    Ok(json(StatusCode::ACCEPTED, &order_view(order_id, r)))
}

#[utoipa::path(post, path = "/orders/{order_id}/confirm", tag = "buyers",
    summary = "Confirm receipt: SHIPPED → COMPLETED",
    security(("user_jwt" = [])),
    responses(
        (status = 202, description = "Requested; the order as it is now", body = crate::api::OrderView),
        crate::api::OwnOrderErrors,
        (status = 409, description = "invalid_transition: the order is not SHIPPED", body = crate::api::ErrorBody),
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
    security(("user_jwt" = [])),
    responses(
        (status = 202, description = "Requested; the order as it is now. It ends REFUNDED once the provider confirms the refund", body = crate::api::OrderView),
        crate::api::OwnOrderErrors,
        (status = 409, description = "invalid_transition: the order is not PAID", body = crate::api::ErrorBody),
    ))]
pub async fn refund(state: &Arc<State>, headers: &HeaderMap, raw_id: &str) -> Answer {
    let (order_id, r) = owned_order(state, headers, raw_id).await?;
    step(state, order_id, r, OrderStatus::Paid, |events| {
        Message::RefundRequest { events }
    })
    .await
}

#[utoipa::path(post, path = "/orders/{order_id}/cancel", tag = "buyers",
    security(("user_jwt" = [])),
    responses(
        (status = 202, description = "Cancel requested", body = crate::api::CancelRequested),
        crate::api::OwnOrderErrors,
        (status = 409, description = "not_cancellable: paid or closed", body = crate::api::ErrorBody),
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
        .parts
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
