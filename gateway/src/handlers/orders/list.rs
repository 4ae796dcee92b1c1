//! `GET /orders`: the buyer's own orders, newest first, a page at a time, from the database (which
//! keeps every order; Redis holds live ones only).
//!
//! One index range per page: `orders(user_id, id)`, walked backwards from the cursor (snowflake ids
//! grow with time, so by id is newest first), one row more than the page to know whether another
//! follows; then the page's payments in one query. The cursor is the last id shown, versioned and
//! base64url-encoded: opaque to clients, so its form may change with its version byte.

use crate::api::OrderList;
use crate::error::{Answer, ApiError, json};
use crate::reader::record_of;
use crate::request::user_from_jwt;
use crate::state::State;
use crate::views::order_view;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, StatusCode};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use seckill_schema::entity::{orders, payments};
use seckill_schema::{OrderId, OrderStatus};
use std::collections::HashMap;
use std::sync::Arc;

pub const DEFAULT_LIMIT: u64 = 20;
pub const MAX_LIMIT: u64 = 100;
/// The first byte of a cursor: its form, so a later form can tell an old cursor apart.
const CURSOR_V1: u8 = 1;

/// A page request, parsed at the edge.
#[derive(Debug, PartialEq, Eq)]
struct Page {
    status: Option<OrderStatus>,
    limit: u64,
    /// Orders below this id (the previous page's last).
    before: Option<i64>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(message.into())
}

/// `status`, `limit` and `cursor`, each at most once; anything else is a mistake worth a `400`
/// rather than a page that silently ignores it.
fn parse_query(query: Option<&str>) -> Result<Page, ApiError> {
    let mut page = Page {
        status: None,
        limit: DEFAULT_LIMIT,
        before: None,
    };
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if seen.iter().any(|n| *n == name) {
            return Err(bad(format!("the query parameter {name:?} is given twice")));
        }
        match name.as_ref() {
            "status" => {
                page.status = Some(value.parse().map_err(|_| {
                    bad(format!(
                        "status must be one of {}",
                        OrderStatus::ALL
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?);
            }
            "limit" => {
                page.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        bad(format!("limit must be an integer from 1 to {MAX_LIMIT}"))
                    })?;
            }
            "cursor" => {
                page.before = Some(decode_cursor(&value).ok_or_else(|| {
                    bad("cursor is not one this server gave out; start again without it")
                })?);
            }
            _ => {
                return Err(bad(format!(
                    "unknown query parameter {name:?}; this route takes status, limit and cursor"
                )));
            }
        }
        seen.push(name.into_owned());
    }
    Ok(page)
}

fn encode_cursor(last_id: i64) -> String {
    let mut raw = [0u8; 9];
    raw[0] = CURSOR_V1;
    raw[1..].copy_from_slice(&last_id.to_be_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(cursor: &str) -> Option<i64> {
    let raw = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let (&version, id) = raw.split_first()?;
    if version != CURSOR_V1 {
        return None;
    }
    // Any id: one this server never gave (below every order) only makes an empty page.
    Some(i64::from_be_bytes(id.try_into().ok()?))
}

#[utoipa::path(get, path = "/orders", tag = "buyers", operation_id = "list_orders",
    summary = "The buyer's own orders, newest first",
    description = "From the database: a just-accepted order shows here once the workers stored it \
        (GET /orders/{order_id} shows it at once).",
    params(
        ("status" = Option<OrderStatus>, Query, description = "Only orders in this status"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Orders per page; 20 when absent"),
        ("cursor" = Option<String>, Query, pattern = "^A[Q-Za-f][A-Za-z0-9_-]{10}$", description = "The `next_cursor` of the previous page; opaque (its pattern is the current form's)"),
    ),
    security(("user_jwt" = [])),
    responses(
        (status = 200, description = "A page of orders", body = crate::api::OrderList),
        (status = 400, description = "bad_request: an unknown status or parameter, a limit out of range, a cursor this server did not give", body = crate::api::ErrorBody),
        crate::api::Unauthorized,
        (status = 503, description = "unavailable: the database", body = crate::api::ErrorBody),
    ))]
pub async fn list(state: &Arc<State>, headers: &HeaderMap, query: Option<&str>) -> Answer {
    let user = user_from_jwt(state, headers)?;
    let page = parse_query(query)?;
    // The database keeps ids as signed 64-bit integers: a user beyond them has no orders.
    let Ok(user_id) = i64::try_from(user.0) else {
        return Ok(json(StatusCode::OK, &empty()));
    };
    let db = state.db().await?;
    let mut select = orders::Entity::find().filter(orders::Column::UserId.eq(user_id));
    if let Some(status) = page.status {
        select = select.filter(orders::Column::Status.eq(status.as_str()));
    }
    if let Some(before) = page.before {
        select = select.filter(orders::Column::Id.lt(before));
    }
    let mut rows = select
        .order_by_desc(orders::Column::Id)
        .limit(page.limit + 1)
        .all(db)
        .await
        .map_err(ApiError::from_db)?;
    let next_cursor = if rows.len() as u64 > page.limit {
        rows.truncate(page.limit as usize);
        rows.last().map(|o| encode_cursor(o.id))
    } else {
        None
    };
    let mut pays: HashMap<i64, Vec<payments::Model>> = HashMap::new();
    if !rows.is_empty() {
        let found = payments::Entity::find()
            .filter(payments::Column::OrderId.is_in(rows.iter().map(|o| o.id)))
            .all(db)
            .await
            .map_err(ApiError::from_db)?;
        for p in found {
            pays.entry(p.order_id).or_default().push(p);
        }
    }
    let orders = rows
        .into_iter()
        .map(|o| {
            let id = OrderId(o.id as u64);
            let of_order = pays.remove(&o.id).unwrap_or_default();
            record_of(o, &of_order).map(|r| order_view(id, r))
        })
        .collect::<Result<_, _>>()?;
    Ok(json(
        StatusCode::OK,
        &OrderList {
            orders,
            next_cursor,
        },
    ))
}

fn empty() -> OrderList {
    OrderList {
        orders: Vec::new(),
        next_cursor: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_a_forged_one_is_refused() {
        // The documented pattern is the v1 form: every cursor matches it, and what matches it
        // decodes.
        for id in [i64::MIN, -5, 0, 1, 7_299_016_574_922_244_096, i64::MAX] {
            let cursor = encode_cursor(id);
            assert_eq!(decode_cursor(&cursor), Some(id));
            assert_eq!(cursor.len(), 12);
            assert!(cursor.starts_with('A'));
            assert!(
                ('Q'..='Z')
                    .chain('a'..='f')
                    .any(|c| cursor[1..].starts_with(c))
            );
        }
        assert_eq!(decode_cursor("AQ__________"), Some(0x0fff_ffff_ffff_ffff));
        assert_eq!(decode_cursor("Af__________"), Some(-1));
        let good = encode_cursor(42);
        for bad in [
            "",
            "!!!",
            &good[..good.len() - 1],
            &format!("{good}A"),
            &URL_SAFE_NO_PAD.encode([2u8, 0, 0, 0, 0, 0, 0, 0, 42]),
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_query_is_parsed_strictly() {
        assert_eq!(
            parse_query(None).unwrap(),
            Page {
                status: None,
                limit: DEFAULT_LIMIT,
                before: None
            }
        );
        let cursor = encode_cursor(99);
        assert_eq!(
            parse_query(Some(&format!("status=PAID&limit=100&cursor={cursor}"))).unwrap(),
            Page {
                status: Some(OrderStatus::Paid),
                limit: 100,
                before: Some(99)
            }
        );
        for bad in [
            "status=paid",
            "status=",
            "limit=0",
            "limit=101",
            "limit=-1",
            "limit=1.5",
            "limit=",
            "cursor=",
            "cursor=zzz",
            "limit=5&limit=6",
            "page=2",
        ] {
            let e = parse_query(Some(bad)).unwrap_err();
            assert_eq!(e.code(), "bad_request", "{bad}");
        }
    }
}
