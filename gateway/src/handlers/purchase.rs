//! Buying: `POST /seckill`, the hot path (one Redis script through the purchase lanes, answered
//! at once), and `POST /items/{item_id}/ticket`, the seckill ticket that lets a buyer in without a
//! token lookup.

use crate::api::{Accepted, PurchaseBody, TicketView};
use crate::error::{Answer, ApiError, Body, SOLD_OUT, json};
use crate::handlers::items::missing_item;
use crate::request::{parse_id, parse_json, rate_limit, read_body, user_from_jwt};
use crate::state::State;
use fred::prelude::*;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use seckill_infra::scripts::{Purchase, PurchaseFailure, PurchaseRequest};
use seckill_infra::shards::{Balancer, Rebalanced};
use seckill_schema::keys::{home_shard, shard_gene};
use seckill_schema::snowflake::gene_of;
use seckill_schema::{ItemId, OrderId, OrderStatus, Quantity};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const MAX_IDEMPOTENCY_KEY: usize = 128;
/// A `HeaderName`, not a `&str`: looked up without parsing and lowercasing the name each time.
static IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

#[utoipa::path(post, path = "/seckill", tag = "buyers",
    summary = "Buy: one atomic Redis script, answered at once",
    request_body = crate::api::PurchaseBody<'static>,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,128}$", description = "Up to 128 visible ASCII characters. Scoped to the user and the item: a retry with the same key by the same user for the same item gets the first answer back (never a second order); the same key for another item is another purchase.")),
    security((), ("user_jwt" = [])),
    responses(
        (status = 202, description = "Accepted; the order is on its way", body = crate::api::Accepted,
            headers(("Location" = String, description = "/orders/{order_id}"))),
        (status = 400, description = "bad_request: malformed JSON, wrong types, quantity 0", body = crate::api::ErrorBody),
        (status = 401, description = "unauthorized: missing, forged or expired ticket or token; ticket for another item", body = crate::api::ErrorBody),
        crate::api::UnknownItem,
        (status = 409, description = "sold_out, limit_reached (with the existing order_id), not_started or ended", body = crate::api::ErrorBody),
        (status = 413, description = "payload_too_large: body over 16 KiB", body = crate::api::ErrorBody),
        (status = 429, description = "rate_limited, with Retry-After", body = crate::api::ErrorBody),
        (status = 503, description = "unavailable (nothing sold), outcome_unknown (with the order_id; GET it once Redis answers) or recovering (with Retry-After)", body = crate::api::ErrorBody),
    ))]
pub async fn seckill(state: &Arc<State>, req: Request<Incoming>) -> Answer {
    let (parts, body) = read_body(req).await?;
    let body: PurchaseBody<'_> = parse_json(&body)?;
    let quantity = Quantity::new(body.quantity)
        .ok_or_else(|| ApiError::BadRequest("quantity must be at least 1".into()))?;
    if body.item_id > i64::MAX as u64 {
        return Err(ApiError::NotFound("unknown_item", "no such item"));
    }
    let item = ItemId(body.item_id);
    let idempotency_key = match parts.headers.get(&IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => {
            let key = v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY && k.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or_else(|| ApiError::BadRequest(format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters")))?;
            Some(key)
        }
    };
    // Sold out, the commonest answer of a sale, before the ticket's HMAC: whether an item is sold
    // out is public (its page says so), and nothing can be bought with or without a good ticket.
    // A retry with its key goes on: it may be owed the order it bought before the sale sold out.
    if idempotency_key.is_none() && state.sold_out.is_sold_out(item) {
        return Err(ApiError::Conflict("sold_out", SOLD_OUT));
    }
    let user = match &body.ticket {
        Some(ticket) => state
            .tickets
            .verify(ticket, item, state.clock.now_secs())
            .ok_or(ApiError::Unauthorized(
                "the ticket is invalid, expired or for another item",
            ))?,
        None => user_from_jwt(state, &parts.headers)?,
    };
    rate_limit(state, user)?;
    if !state.parts.durability.is_ok() {
        // Redis cannot keep a sale as SECKILL_REDIS_DURABILITY promises (no fsync, no replica,
        // an evicting policy), as of its latest check (every second): refuse before selling
        // rather than answer a `202` that a crash or a failover may take back.
        return Err(ApiError::Unavailable(
            "a Redis that keeps what SECKILL_REDIS_DURABILITY promises",
        ));
    }
    let mut shards = state.layouts.shards(item);
    let mut relaid = false;
    let mut rebalanced = 0;
    loop {
        let home = shard_gene(item, home_shard(user, shards));
        let order_id = OrderId(state.parts.ids.next(home).map_err(|_| {
            ApiError::Unavailable("a confirmed snowflake node id (its lease in Redis)")
        })?);
        // A static level check first: looking up the current span costs more than nothing.
        if tracing::enabled!(tracing::Level::DEBUG) {
            let span = tracing::Span::current();
            span.record("item.id", item.0);
            // A string, as in the API: a log viewer's JSON numbers lose a snowflake's low bits.
            span.record("order.id", tracing::field::display(order_id));
        }
        let outcome = state
            .lanes
            .purchase(&PurchaseRequest {
                order_id,
                user,
                item,
                quantity,
                idempotency_key,
                shards,
            })
            .await
            .map_err(|e| match e {
                PurchaseFailure::NotRun(e) => {
                    // Logged once, as a 503, by the error mapping; the cause only here.
                    tracing::debug!(error = %e, "purchase not run");
                    ApiError::Unavailable("Redis")
                }
                PurchaseFailure::MaybeRan(e) => {
                    tracing::debug!(error = %e, order.id = %order_id, "purchase sent, answer lost");
                    ApiError::OutcomeUnknown(order_id)
                }
                PurchaseFailure::Reply(e) => ApiError::Internal(e.into()),
            })?;
        return match outcome {
            // A purchase that ran twice (a retry of a lost answer) finds its own order held.
            Purchase::LimitReached {
                order_id: Some(held),
            } if held == order_id => accepted(state, item, order_id).await,
            Purchase::Accepted { order_id, .. } => accepted(state, item, order_id).await,
            // A replay is answered `202` under the same durability as a new sale: its first
            // answer may have been `503 outcome_unknown` because no replica confirmed it.
            Purchase::Replayed { order_id } => accepted(state, item, order_id).await,
            Purchase::UnknownItem => Err(ApiError::NotFound("unknown_item", "no such item")),
            Purchase::NotStarted => Err(ApiError::Conflict(
                "not_started",
                "the sale has not started",
            )),
            Purchase::Ended => Err(ApiError::Conflict("ended", "the sale has ended")),
            Purchase::LimitReached { order_id } => Err(ApiError::LimitReached(order_id)),
            // The home shard is dry: units may move to it from the item's other shards. A dry
            // home shard says nothing of the others: only a rebalance that read every shard
            // answers `sold_out`.
            Purchase::SoldOut { .. } if shards > 1 => {
                if rebalanced == REBALANCES {
                    // Units brought here each time and taken each time by the home shard's other
                    // buyers: a retryable answer, never a `sold_out` judged on one shard.
                    return Err(ApiError::Rebalancing);
                }
                rebalanced += 1;
                let fresh = if rebalanced == REBALANCES {
                    Fresh::Always
                } else {
                    Fresh::UnlessOneRan
                };
                match rebalance(state, item, shards, home, quantity, fresh).await? {
                    Rebalanced::Ready => continue,
                    Rebalanced::SoldOut { remaining } => sold_out(state, item, remaining),
                    // A transfer is on its way, or a shard is being rebuilt: nothing is wrong,
                    // and a moment later it is settled either way.
                    Rebalanced::Busy => Err(ApiError::Rebalancing),
                }
            }
            Purchase::SoldOut { remaining } => sold_out(state, item, remaining),
            Purchase::Recovering => Err(ApiError::Recovering),
            Purchase::Void => Err(ApiError::Unavailable("Redis")),
            // PATCH changed the item's shards since this gateway read them.
            Purchase::Relayout if !relaid => {
                relaid = true;
                shards = state
                    .layouts
                    .refresh(state.redis.next(), &state.keys, item)
                    .await
                    .map_err(|_| ApiError::Unavailable("Redis"))?;
                continue;
            }
            Purchase::Relayout => Err(ApiError::Rebalancing),
        };
    }
}

/// `409 sold_out`; once the item holds nothing at all, this gateway says so itself for a while.
fn sold_out(state: &State, item: ItemId, remaining: i64) -> Answer {
    if remaining <= 0 {
        state.sold_out.mark(item);
    }
    Err(ApiError::Conflict("sold_out", SOLD_OUT))
}

/// How many rebalances one purchase of a dry home shard may go through before a retryable `503`.
const REBALANCES: u8 = 3;

/// Whether a buyer who waited for a rebalance of their home shard runs one of their own.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fresh {
    /// Not if another ran while they waited: they buy from what it brought. Without this, a crowd
    /// queued on a dry home shard at the end of a sale ran one full rebalance each, in turn, for
    /// seconds.
    UnlessOneRan,
    /// Always: the last attempt reads every shard itself, so its `sold_out` is its own finding.
    Always,
}

/// Moves units to a buyer's dry home shard from the item's others, one rebalance at a time per
/// home shard on this gateway: the buyers who wait for it then buy from what it brought.
async fn rebalance(
    state: &State,
    item: ItemId,
    shards: u8,
    home: u8,
    quantity: Quantity,
    fresh: Fresh,
) -> Result<Rebalanced, ApiError> {
    let lane = {
        let mut map = state
            .rebalancing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry((item, home)).or_default().clone()
    };
    let seen = lane.done.load(Ordering::Acquire);
    let _one_at_a_time = lane.lock.lock().await;
    // The rebalance this buyer waited for found every shard empty: the buyers queued behind it
    // (a crowd, at the end of a sale) are answered at once instead of each reading every shard
    // again, one at a time, for seconds.
    if state.sold_out.is_sold_out(item) {
        return Ok(Rebalanced::SoldOut { remaining: 0 });
    }
    if fresh == Fresh::UnlessOneRan && lane.done.load(Ordering::Acquire) != seen {
        return Ok(Rebalanced::Ready);
    }
    let _counted = DoneOnDrop(&lane.done);
    let balancer = Balancer {
        scripts: &state.scripts,
        client: state.redis.next(),
        commit: state.parts.group_commit.as_ref(),
    };
    balancer
        .rebalance(item, shards, home, i64::from(quantity.get()), |gene| {
            state.parts.ids.next(gene).ok()
        })
        .await
        .map_err(|e| {
            tracing::warn!(item.id = %item, error = %e, "moving units between an item's shards failed");
            ApiError::Unavailable("Redis")
        })
}

/// Counts a rebalance as run when it ends, however it ends (an error, or the buyer gone).
struct DoneOnDrop<'a>(&'a AtomicU64);

impl Drop for DoneOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// A purchase that sold: answered once it is as durable as `SECKILL_REDIS_DURABILITY` asks.
async fn accepted(state: &State, item: ItemId, order_id: OrderId) -> Answer {
    if let Some(commit) = &state.parts.group_commit
        && commit
            .replicated_for(&state.keys.item_in(item, gene_of(order_id.0)))
            .await
            .is_err()
    {
        // Sold on the master, not known to be on a replica: a failover may lose it.
        return Err(ApiError::OutcomeUnknown(order_id));
    }
    Ok(accepted_response(order_id))
}

fn accepted_response(order_id: OrderId) -> Response<Body> {
    let mut resp = json(
        StatusCode::ACCEPTED,
        &Accepted {
            order_id,
            status: OrderStatus::Pending,
        },
    );
    if let Ok(loc) = HeaderValue::from_str(&format!("/orders/{order_id}")) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    resp
}

#[utoipa::path(post, path = "/items/{item_id}/ticket", tag = "buyers",
    summary = "A seckill ticket binding this user to this item",
    params(("item_id" = u64, Path)),
    security(("user_jwt" = [])),
    responses(
        (status = 200, description = "The ticket", body = crate::api::TicketView),
        crate::api::Unauthorized,
        crate::api::UnknownItem,
        (status = 409, description = "ended, or not_started (more than 60 s early)", body = crate::api::ErrorBody),
        (status = 429, description = "rate_limited", body = crate::api::ErrorBody),
        (status = 503, description = "unavailable or recovering", body = crate::api::ErrorBody),
    ))]
pub async fn ticket(state: &Arc<State>, req: Request<Incoming>, raw_id: &str) -> Answer {
    let user = user_from_jwt(state, req.headers())?;
    rate_limit(state, user)?;
    let item: ItemId = parse_id(raw_id, "unknown_item")?;
    let window: Vec<Option<i64>> = state
        .redis
        .hmget(state.keys.item(item), vec!["starts", "ends", "remaining"])
        .await
        .map_err(|_| ApiError::Unavailable("Redis"))?;
    if window.get(2).copied().flatten().is_none() {
        return Err(missing_item(state, item).await);
    }
    let starts = window[0].unwrap_or(0);
    let ends = window[1].unwrap_or(0);
    let now = state.clock.now_ms();
    if starts > 0 && now < starts - 60_000 {
        return Err(ApiError::Conflict(
            "not_started",
            "tickets are issued from 60 s before the sale starts",
        ));
    }
    if ends > 0 && now >= ends {
        return Err(ApiError::Conflict("ended", "the sale has ended"));
    }
    let mut expires = now / 1000 + seckill_infra::auth::TICKET_TTL_SECS;
    if starts > now {
        expires += (starts - now) / 1000;
    }
    let ticket = state.tickets.mint(user, item, expires);
    let expires_at = chrono::DateTime::from_timestamp(expires, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    Ok(json(StatusCode::OK, &TicketView { ticket, expires_at }))
}
