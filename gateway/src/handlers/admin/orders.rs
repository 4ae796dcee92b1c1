//! Any order, as the operators see it: `GET /admin/orders/{order_id}` with all its payments and its
//! history rows, and `POST /admin/orders/{order_id}/ship`.

use crate::api::{AdminOrderView, PaymentRecord};
use crate::error::{Answer, ApiError, json};
use crate::reader::{self, Prefer, Reader};
use crate::request::{parse_id, require_admin};
use crate::state::State;
use crate::views::{history_entry, order_view, rfc3339_ms};
use http::{HeaderMap, StatusCode};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use seckill_schema::entity::{inventory_history, payments};
use seckill_schema::{Message, OrderId, OrderStatus};
use std::sync::Arc;

#[utoipa::path(post, path = "/admin/orders/{order_id}/ship", tag = "operators",
    summary = "Ship a paid order: PAID → SHIPPED (completes on its own after SECKILL_AUTO_COMPLETE_SECS)",
    responses(
        (status = 202, description = "Requested; the order as it is now", body = crate::api::OrderView),
        crate::api::OperatorOrderErrors,
        (status = 409, description = "invalid_transition: the order is not PAID", body = crate::api::ErrorBody),
    ))]
pub async fn ship(state: &Arc<State>, headers: &HeaderMap, raw_id: &str) -> Answer {
    require_admin(state, headers)?;
    let order_id: OrderId = parse_id(raw_id, "not_found")?;
    let r = reader::read(state, order_id, Reader::Anyone, Prefer::ReadModel)
        .await?
        .ok_or(ApiError::NotFound("not_found", "no such order"))?;
    crate::handlers::orders::step(state, order_id, r, OrderStatus::Paid, |events| {
        Message::OrderShip { events }
    })
    .await
}

#[utoipa::path(get, path = "/admin/orders/{order_id}", tag = "operators",
    summary = "Any order, with all its payments and its stock history",
    responses(
        (status = 200, description = "The order as its owner sees it (from the database, or Redis's read model while it is only there), its payments oldest first, its history rows newest first", body = crate::api::AdminOrderView),
        crate::api::OperatorOrderErrors,
    ))]
pub async fn admin_order(state: &Arc<State>, headers: &HeaderMap, raw_id: &str) -> Answer {
    require_admin(state, headers)?;
    let order_id: OrderId = parse_id(raw_id, "not_found")?;
    let not_found = ApiError::NotFound("not_found", "no such order");
    let Ok(id) = i64::try_from(order_id.0) else {
        return Err(not_found);
    };
    // The database is the record; a just-accepted order is only in Redis's read model.
    let record = reader::read(state, order_id, Reader::Anyone, Prefer::Database)
        .await?
        .ok_or(not_found)?;
    let db = state.db().await?;
    let bad = |p: &payments::Model| {
        ApiError::Internal(anyhow::anyhow!(
            "payment {} has status {:?}",
            p.payment_id,
            p.status
        ))
    };
    let payments = payments::Entity::find()
        .filter(payments::Column::OrderId.eq(id))
        .order_by_asc(payments::Column::CreatedAtMs)
        .order_by_asc(payments::Column::PaymentId)
        .all(db)
        .await
        .map_err(ApiError::from_db)?
        .into_iter()
        .map(|p| {
            Ok(PaymentRecord {
                status: p.status.parse().map_err(|_| bad(&p))?,
                applied: p.applied,
                created_at: rfc3339_ms(p.created_at_ms),
                updated_at: rfc3339_ms(p.updated_at_ms),
                amount_cents: p.amount_cents,
                payment_id: p.payment_id,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let history = inventory_history::Entity::find()
        .filter(inventory_history::Column::OrderId.eq(id))
        .order_by_desc(inventory_history::Column::Id)
        .all(db)
        .await
        .map_err(ApiError::from_db)?
        .into_iter()
        .map(history_entry)
        .collect();
    Ok(json(
        StatusCode::OK,
        &AdminOrderView {
            order: order_view(order_id, record),
            payments,
            history,
        },
    ))
}
