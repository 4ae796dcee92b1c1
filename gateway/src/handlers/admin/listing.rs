//! `GET /admin/items`: every item by id, a page at a time, with its database stock.

use super::query::{Params, read_page};
use crate::api::{AdminItemSummary, AdminItemsPage};
use crate::error::{Answer, json};
use crate::request::require_admin;
use crate::state::State;
use crate::views::{db_stock, item_view};
use http::{HeaderMap, StatusCode, Uri};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use seckill_schema::entity::items;
use std::sync::Arc;

#[utoipa::path(get, path = "/admin/items", tag = "operators",
    summary = "Every item by id, a page at a time, with its database stock",
    params(
        crate::api::PageParams,
    ),
    responses(
        (status = 200, description = "A page of items, lowest ids first", body = crate::api::AdminItemsPage),
        (status = 400, description = "bad_request: a bad limit or cursor, or an unknown parameter", body = crate::api::ErrorBody),
        crate::api::OperatorErrors,
    ))]
pub async fn list_items(state: &Arc<State>, uri: &Uri, headers: &HeaderMap) -> Answer {
    require_admin(state, headers)?;
    let params = Params::parse(uri, &["limit", "cursor"])?;
    let limit = params.limit()?;
    let after = params.cursor()?;
    let db = state.db().await?;
    let mut find = items::Entity::find();
    if let Some(after) = after {
        // Past the last possible id, nothing follows.
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        find = find.filter(items::Column::Id.gt(after));
    }
    let find = find.order_by_asc(items::Column::Id);
    let (rows, next_cursor) = read_page(find, limit, db, |m| m.id).await?;
    let items = rows
        .iter()
        .map(|m| AdminItemSummary {
            item: item_view(m),
            db: db_stock(m),
        })
        .collect();
    Ok(json(StatusCode::OK, &AdminItemsPage { items, next_cursor }))
}
