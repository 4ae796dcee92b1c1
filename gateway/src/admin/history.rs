//! What happened to the stock: an item's history (`GET /admin/items/{id}/history`), newest first,
//! and any order with all its payments and its history rows (`GET /admin/orders/{id}`).

use super::query::{Params, page};
use super::{item_id, require_admin};
use crate::api::{AdminOrderView, DbStock, HistoryEntry, HistoryPage, PaymentRecord};
use crate::error::{Answer, ApiError, json};
use crate::orders::rfc3339_ms;
use crate::request::parse_id;
use crate::state::State;
use http::{HeaderMap, StatusCode, Uri};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use seckill_domain::OrderId;
use seckill_infra::entity::{inventory_history, items, payments};
use std::sync::Arc;

/// The history cause that stands for every `release:<reason>`.
const RELEASE: &str = "release";

fn entry(h: inventory_history::Model) -> HistoryEntry {
    HistoryEntry {
        at: rfc3339_ms(h.created_at_ms),
        cause: h.cause,
        order_id: h.order_id.map(|id| OrderId(id as u64)),
        delta: h.available_after - h.available_before,
        before: DbStock {
            available: h.available_before,
            locked: h.locked_before,
            sold: h.sold_before,
        },
        after: DbStock {
            available: h.available_after,
            locked: h.locked_after,
            sold: h.sold_after,
        },
        reason: h.reason,
        adjustment_id: h.adjustment_id.map(|id| id.to_string()),
    }
}

/// A cause to filter by: what causes are made of, and no longer than the column.
fn cause_filter(raw: &str) -> Result<Condition, ApiError> {
    let well_formed = (1..=32).contains(&raw.len())
        && raw.starts_with(|c: char| c.is_ascii_lowercase())
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b':');
    if !well_formed {
        return Err(ApiError::BadRequest(
            "cause must be a history cause: 1 to 32 of a-z, _ and :, such as lock, sold, \
             release, release:payment_timeout, refund, restock or shrink"
                .into(),
        ));
    }
    let column = inventory_history::Column::Cause;
    Ok(if raw == RELEASE {
        Condition::any()
            .add(column.eq(RELEASE))
            .add(column.starts_with(format!("{RELEASE}:")))
    } else {
        Condition::all().add(column.eq(raw))
    })
}

#[utoipa::path(get, path = "/admin/items/{item_id}/history", tag = "operators",
    summary = "Every change of an item's database stock, newest first",
    params(
        ("item_id" = u64, Path),
        ("cause" = Option<String>, Query, pattern = "^[a-z][a-z_:]{0,31}$", description = "Only rows of this cause; `release` stands for every `release:<reason>`"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Rows per page, 20 by default"),
        ("cursor" = Option<String>, Query, pattern = "^[0-9]{1,19}$", description = "The `next_cursor` of the previous page"),
    ),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A page of history rows, newest first", body = crate::api::HistoryPage),
        (status = 400, description = "bad_request: a bad cause, limit or cursor, or an unknown parameter", body = crate::api::ErrorBody),
        (status = 401, description = "unauthorized", body = crate::api::ErrorBody),
        (status = 404, description = "unknown_item", body = crate::api::ErrorBody),
        (status = 503, description = "unavailable", body = crate::api::ErrorBody),
    ))]
pub async fn item_history(
    state: &Arc<State>,
    uri: &Uri,
    headers: &HeaderMap,
    raw_id: &str,
) -> Answer {
    require_admin(state, headers)?;
    let id = item_id(raw_id)?;
    let params = Params::parse(uri, &["cause", "limit", "cursor"])?;
    let limit = params.limit()?;
    let before = params.cursor()?;
    let cause = params.get("cause").map(cause_filter).transpose()?;
    let db = state.db().await?;
    let known = items::Entity::find_by_id(id)
        .select_only()
        .column(items::Column::Id)
        .into_tuple::<i64>()
        .one(db)
        .await
        .map_err(ApiError::from_db)?;
    if known.is_none() {
        return Err(ApiError::NotFound("unknown_item", "no such item"));
    }
    // One range of the `(item_id, id)` index, newest first.
    let mut find =
        inventory_history::Entity::find().filter(inventory_history::Column::ItemId.eq(id));
    if let Some(before) = before {
        let before = i64::try_from(before).unwrap_or(i64::MAX);
        find = find.filter(inventory_history::Column::Id.lt(before));
    }
    if let Some(cause) = cause {
        find = find.filter(cause);
    }
    let rows = find
        .order_by_desc(inventory_history::Column::Id)
        .limit(limit + 1)
        .all(db)
        .await
        .map_err(ApiError::from_db)?;
    let (rows, next_cursor) = page(rows, limit, |h| h.id);
    let history = rows.into_iter().map(entry).collect();
    Ok(json(
        StatusCode::OK,
        &HistoryPage {
            history,
            next_cursor,
        },
    ))
}

#[utoipa::path(get, path = "/admin/orders/{order_id}", tag = "operators",
    summary = "Any order, with all its payments and its stock history",
    params(("order_id" = String, Path, description = "The snowflake id, decimal")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The order as its owner sees it (from the database, or Redis's read model while it is only there), its payments oldest first, its history rows newest first", body = crate::api::AdminOrderView),
        (status = 401, description = "unauthorized", body = crate::api::ErrorBody),
        (status = 404, description = "not_found", body = crate::api::ErrorBody),
        (status = 503, description = "unavailable", body = crate::api::ErrorBody),
    ))]
pub async fn admin_order(state: &Arc<State>, headers: &HeaderMap, raw_id: &str) -> Answer {
    require_admin(state, headers)?;
    let order_id: OrderId = parse_id(raw_id, "not_found")?;
    let not_found = ApiError::NotFound("not_found", "no such order");
    let Ok(id) = i64::try_from(order_id.0) else {
        return Err(not_found);
    };
    // The database is the record; a just-accepted order is only in Redis's read model.
    let record = match crate::orders::from_database(state, order_id).await? {
        Some(r) => r,
        None => crate::orders::find(state, order_id)
            .await?
            .ok_or(not_found)?,
    };
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
        .map(entry)
        .collect();
    Ok(json(
        StatusCode::OK,
        &AdminOrderView {
            order: crate::orders::order_view(order_id, record),
            payments,
            history,
        },
    ))
}
