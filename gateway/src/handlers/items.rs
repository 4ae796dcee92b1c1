//! The public catalog: `GET /items/{item_id}` (the product page, the most requested URL of a sale)
//! and `GET /items`, served from each gateway's cache (`catalog`).

use crate::api::{ItemList, SaleState};
use crate::catalog::{Listing, Looked, Snapshot};
use crate::error::{Answer, ApiError, Body, json};
use crate::state::State;
use crate::views::{public_item, rfc3339_ms};
use fred::prelude::*;
use http::{HeaderValue, Response, StatusCode, header};
use seckill_schema::ItemId;
use std::sync::Arc;

#[utoipa::path(get, path = "/items/{item_id}", tag = "buyers",
    summary = "A sale as its product page shows it",
    description = "Served from each gateway's cache: `remaining` may lag by up to one second, and a \
        crowd refreshing the page costs Redis at most one read of the item per second per gateway.",
    responses(
        (status = 200, description = "The sale", body = crate::api::PublicItem<'_>,
            headers(("Cache-Control" = String, description = "public, max-age=1"))),
        crate::api::UnknownItem,
        (status = 503, description = "unavailable, or recovering (with Retry-After)", body = crate::api::ErrorBody),
    ))]
pub async fn catalog_item(state: &Arc<State>, raw_id: &str) -> Answer {
    let item = raw_id
        .parse::<u64>()
        .ok()
        .filter(|id| *id <= i64::MAX as u64)
        .map(ItemId)
        .ok_or(ApiError::NotFound("unknown_item", "no such item"))?;
    let snapshot = match state
        .catalog
        .item(item, || fetch_item(state.clone(), item))
        .await
    {
        Looked::Item(s) => s,
        Looked::Unknown => return Err(ApiError::NotFound("unknown_item", "no such item")),
        Looked::Recovering => return Err(ApiError::Recovering),
        Looked::Unavailable => return Err(ApiError::Unavailable("Redis")),
    };
    let now = state.clock.now_ms();
    let server_time = rfc3339_ms(now);
    Ok(cacheable(json(
        StatusCode::OK,
        &public_item(&snapshot, now, &server_time),
    )))
}

#[utoipa::path(get, path = "/items", tag = "buyers",
    summary = "The sales not over yet: upcoming, live or sold out",
    description = "Listed from the database at most once a second per gateway; each sale as \
        `GET /items/{item_id}` shows it.",
    responses(
        (status = 200, description = "The sales, soonest first", body = crate::api::ItemList<'_>,
            headers(("Cache-Control" = String, description = "public, max-age=1"))),
        (status = 503, description = "unavailable: the database never answered this gateway yet", body = crate::api::ErrorBody),
    ))]
pub async fn catalog_items(state: &Arc<State>) -> Answer {
    let Listing::Items(listed) = state.catalog.listing(|| fetch_listing(state.clone())).await
    else {
        return Err(ApiError::Unavailable("the database"));
    };
    let looked = futures_util::future::join_all(listed.iter().map(|row| {
        state
            .catalog
            .item(row.item, || fetch_item(state.clone(), row.item))
    }))
    .await;
    let now = state.clock.now_ms();
    let server_time = rfc3339_ms(now);
    let items = listed
        .iter()
        .zip(&looked)
        .filter_map(|(row, looked)| {
            // Redis's view when it has one (its window may have been changed since the listing);
            // the database's row when Redis cannot say.
            let s: &Snapshot = match looked {
                Looked::Item(s) => s,
                _ => row,
            };
            (s.state(now) != SaleState::Ended).then(|| public_item(s, now, &server_time))
        })
        .collect();
    Ok(cacheable(json(StatusCode::OK, &ItemList { items })))
}

/// The catalog's answers may be kept a second by browsers and CDNs, as by the gateway itself.
fn cacheable(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=1"),
    );
    resp
}

/// Reads one item for the catalog: its hash, or why Redis has none.
async fn fetch_item(state: Arc<State>, item: ItemId) -> Looked {
    match crate::catalog::read_item(&state.redis, &state.keys, item).await {
        Ok(Some(s)) => Looked::Item(Arc::new(s)),
        Ok(None) => match missing_item(&state, item).await {
            ApiError::NotFound(..) => Looked::Unknown,
            ApiError::Recovering => Looked::Recovering,
            _ => Looked::Unavailable,
        },
        Err(e) => {
            // Answered as a 503 by the error mapping, which logs it; the cause only here.
            tracing::debug!(error = %e, item.id = item.0, "reading an item for the catalog failed");
            Looked::Unavailable
        }
    }
}

/// Lists the sales not over yet for the catalog.
async fn fetch_listing(state: Arc<State>) -> Listing {
    // `db()` logs why it has no connection.
    let Ok(db) = state.db().await else {
        return Listing::Unavailable;
    };
    match crate::catalog::read_listing(db, state.clock.now_ms()).await {
        Ok(listed) => Listing::Items(listed.into()),
        Err(e) => {
            tracing::warn!(error = %e, "listing the catalog failed; serving the last list");
            Listing::Unavailable
        }
    }
}

/// An item Redis has no hash for: unknown, or lost and being rebuilt (never `404` for an item the
/// database knows).
pub async fn missing_item(state: &State, item: ItemId) -> ApiError {
    let known: Result<Vec<Option<String>>, _> = state
        .redis
        .hmget(
            state.keys.state_of_item(item),
            vec!["ready".to_owned(), format!("i:{item}")],
        )
        .await;
    match known.as_deref() {
        Ok([Some(_), None]) => ApiError::NotFound("unknown_item", "no such item"),
        Ok(_) => ApiError::Recovering,
        Err(_) => ApiError::Unavailable("Redis"),
    }
}
