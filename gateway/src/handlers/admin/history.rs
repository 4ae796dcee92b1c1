//! What happened to the stock: an item's history (`GET /admin/items/{id}/history`), newest first.

use super::query::{Params, read_page};
use crate::api::HistoryPage;
use crate::error::{Answer, ApiError, json};
use crate::request::admin_item_id;
use crate::state::State;
use crate::views::history_entry;
use http::{HeaderMap, StatusCode, Uri};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use seckill_schema::entity::{inventory_history, items};
use std::sync::Arc;

/// The history cause that stands for every `release:<reason>`.
const RELEASE: &str = "release";

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
        ("cause" = Option<String>, Query, pattern = "^[a-z][a-z_:]{0,31}$", description = "Only rows of this cause; `release` stands for every `release:<reason>`"),
        crate::api::PageParams,
    ),
    responses(
        (status = 200, description = "A page of history rows, newest first", body = crate::api::HistoryPage),
        (status = 400, description = "bad_request: a bad cause, limit or cursor, or an unknown parameter", body = crate::api::ErrorBody),
        crate::api::OperatorItemErrors,
    ))]
pub async fn item_history(
    state: &Arc<State>,
    uri: &Uri,
    headers: &HeaderMap,
    raw_id: &str,
) -> Answer {
    let id = admin_item_id(state, headers, raw_id)?;
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
    let find = find.order_by_desc(inventory_history::Column::Id);
    let (rows, next_cursor) = read_page(find, limit, db, |h| h.id).await?;
    let history = rows.into_iter().map(history_entry).collect();
    Ok(json(
        StatusCode::OK,
        &HistoryPage {
            history,
            next_cursor,
        },
    ))
}
