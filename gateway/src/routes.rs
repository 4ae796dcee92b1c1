//! The HTTP API of the contract: routing, parsing at the edge, and one handler per route.

use crate::api::{Accepted, DurabilityView, Health, PurchaseBody, Readiness, TicketView};
use crate::api::{ItemList, PublicItem, SaleState};
use crate::catalog::{Listing, Looked, Snapshot};
use crate::error::{Answer, ApiError, Body, SOLD_OUT, json};
use crate::request::{parse_id, parse_json, rate_limit, read_body, user_from_jwt};
use crate::state::State;
use bytes::Bytes;
use fred::prelude::*;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use seckill_domain::scripts::{Purchase, PurchaseFailure, PurchaseRequest};
use seckill_domain::snowflake::now_ms;
use seckill_domain::{ItemId, OrderId, OrderStatus, Quantity};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;
use tracing::field::Empty;

const MAX_IDEMPOTENCY_KEY: usize = 128;
/// A `HeaderName`, not a `&str`: looked up without parsing and lowercasing the name each time.
static IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// Every answer's body: JSON whole, or an order's event stream. An enum, not a box: the hot path's
/// answer stays a `Full` moved once.
pub type ResponseBody = Either<Body, crate::events::SseBody>;

/// What the router answers: [`Answer`] with either body.
type Routed = Result<Response<ResponseBody>, ApiError>;

fn whole(answer: Answer) -> Routed {
    answer.map(|resp| resp.map(Either::Left))
}

pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let (route, result) = if req.headers().contains_key(header::TRANSFER_ENCODING) {
        ("other", Err(ApiError::TransferEncoding))
    } else {
        route(&state, req).await
    };
    let outcome = match &result {
        Ok(_) => None,
        Err(e) => Some(e.code()),
    };
    let resp = result.unwrap_or_else(|e| e.into_response().map(Either::Left));
    let status = resp.status();
    let elapsed = started.elapsed().as_secs_f64();
    if route == "seckill" {
        // The hot routes' handles, registered once: no registry lookup per request.
        let m = SECKILL_METRICS.get_or_init(|| RouteMetrics::new("seckill"));
        m.count(status);
        m.latency.record(elapsed);
        m.outcomes.count(outcome.unwrap_or("accepted"));
    } else if route == "item" {
        let m = ITEM_METRICS.get_or_init(|| RouteMetrics::new("item"));
        m.count(status);
        m.latency.record(elapsed);
    } else {
        if route == "payment_callback" {
            let outcome = match outcome {
                None => "recorded",
                Some("unauthorized") => "invalid_signature",
                Some("internal" | "unavailable") => "error",
                Some(code) => code,
            };
            metrics::counter!("seckill_payment_callbacks_total", "outcome" => outcome).increment(1);
        }
        metrics::counter!("seckill_http_requests_total", "route" => route, "status" => status_label(status))
            .increment(1);
        metrics::histogram!("seckill_http_request_duration_seconds", "route" => route)
            .record(elapsed);
    }
    Ok(resp)
}

static SECKILL_METRICS: std::sync::OnceLock<RouteMetrics> = std::sync::OnceLock::new();
static ITEM_METRICS: std::sync::OnceLock<RouteMetrics> = std::sync::OnceLock::new();

/// `seckill_purchases_total{outcome}`: `accepted` or the error code, each counter registered once
/// (and so exported at 0 before its first purchase, which a rate over it needs).
struct Outcomes(Vec<(&'static str, metrics::Counter)>);

impl Outcomes {
    fn purchases() -> Self {
        const CODES: [&str; 16] = [
            "accepted",
            "sold_out",
            "limit_reached",
            "not_started",
            "ended",
            "bad_request",
            "unauthorized",
            "unknown_item",
            "payload_too_large",
            "rate_limited",
            "unavailable",
            "outcome_unknown",
            "recovering",
            "internal",
            "request_timeout",
            "other",
        ];
        Outcomes(
            CODES
                .iter()
                .map(|c| {
                    (
                        *c,
                        metrics::counter!("seckill_purchases_total", "outcome" => *c),
                    )
                })
                .collect(),
        )
    }

    fn count(&self, outcome: &str) {
        let i = self
            .0
            .iter()
            .position(|(c, _)| *c == outcome)
            .unwrap_or(self.0.len() - 1);
        self.0[i].1.increment(1);
    }
}

const STATUS_LABELS: [&str; 13] = [
    "200", "201", "202", "400", "401", "404", "405", "409", "413", "429", "503", "500", "other",
];

struct RouteMetrics {
    by_status: Vec<metrics::Counter>,
    latency: metrics::Histogram,
    outcomes: Outcomes,
}

impl RouteMetrics {
    fn new(route: &'static str) -> Self {
        RouteMetrics {
            by_status: STATUS_LABELS
                .iter()
                .map(|s| metrics::counter!("seckill_http_requests_total", "route" => route, "status" => *s))
                .collect(),
            latency: metrics::histogram!("seckill_http_request_duration_seconds", "route" => route),
            outcomes: Outcomes::purchases(),
        }
    }

    fn count(&self, status: StatusCode) {
        let label = status_label(status);
        if let Some(i) = STATUS_LABELS.iter().position(|l| *l == label) {
            self.by_status[i].increment(1);
        }
    }
}

fn status_label(s: StatusCode) -> &'static str {
    match s.as_u16() {
        200 => "200",
        201 => "201",
        202 => "202",
        400 => "400",
        401 => "401",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        429 => "429",
        503 => "503",
        500 => "500",
        _ => "other",
    }
}

async fn route(state: &Arc<State>, req: Request<Incoming>) -> (&'static str, Routed) {
    // The hot path first, matched without allocating. Every other route runs in a boxed future
    // of its own: the admin and payment handlers' futures are large, and inlining them would make
    // every purchase allocate and move their state.
    if req.method() == Method::POST && req.uri().path() == "/seckill" {
        // The hot route's span is at debug level: disabled by default, it costs one level check
        // per purchase; `RUST_LOG=seckill_gateway=debug` turns it on.
        let span = tracing::debug_span!(
            "purchase",
            item.id = Empty,
            order.id = Empty,
            outcome = Empty
        );
        let answer = whole(seckill(state, req).instrument(span.clone()).await);
        if !span.is_disabled() {
            span.record("outcome", outcome_of(&answer));
        }
        return ("seckill", answer);
    }
    // The product page, the most requested URL of a sale: served from the catalog's cache
    // without the general router's allocations and span, so a crowd refreshing it costs about
    // what the sold-out path costs.
    if req.method() == Method::GET
        && let Some(id) = req.uri().path().strip_prefix("/items/")
        && !id.contains('/')
    {
        return ("item", whole(catalog_item(state, id).await));
    }
    // Every other route: a span with the order or item id of its path and its outcome.
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        item.id = Empty,
        order.id = Empty,
        outcome = Empty,
    );
    let (route, answer) = Box::pin(other_route(state, req).instrument(span.clone())).await;
    span.record("outcome", outcome_of(&answer));
    (route, answer)
}

/// `ok` with the status, or the error's code.
fn outcome_of(answer: &Routed) -> &'static str {
    match answer {
        Ok(resp) => status_label(resp.status()),
        Err(e) => e.code(),
    }
}

async fn other_route(state: &Arc<State>, req: Request<Incoming>) -> (&'static str, Routed) {
    let path = req.uri().path().to_owned();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let span = tracing::Span::current();
    match segs.as_slice() {
        ["orders", id, ..] | ["admin", "orders", id, ..] => {
            span.record("order.id", *id);
        }
        ["items", id, ..] | ["admin", "items", id, ..] => {
            span.record("item.id", *id);
        }
        _ => {}
    }
    let (route, answer) = match (segs.as_slice(), &method) {
        (["orders", id, "events"], &Method::GET) => {
            let answer = crate::events::stream(state, req.headers(), id).await;
            return ("order_events", answer.map(|resp| resp.map(Either::Right)));
        }
        (["seckill"], &Method::POST) => ("seckill", seckill(state, req).await),
        (["items", id, "ticket"], &Method::POST) => ("ticket", ticket(state, req, id).await),
        (["items"], &Method::GET) => ("items", catalog_items(state).await),
        (["items", id], &Method::GET) => ("item", catalog_item(state, id).await),
        (["orders"], &Method::GET) => (
            "my_orders",
            crate::my_orders::list(state, req.headers(), req.uri().query()).await,
        ),
        (["orders", id], &Method::GET) => {
            ("order", crate::orders::get(state, req.headers(), id).await)
        }
        (["orders", id, "cancel"], &Method::POST) => (
            "cancel",
            crate::orders::cancel(state, req.headers(), id).await,
        ),
        (["orders", id, "confirm"], &Method::POST) => (
            "confirm",
            crate::orders::confirm(state, req.headers(), id).await,
        ),
        (["orders", id, "refund"], &Method::POST) => (
            "refund",
            crate::orders::refund(state, req.headers(), id).await,
        ),
        (["admin", "orders", id, "ship"], &Method::POST) => (
            "admin_ship",
            crate::orders::ship(state, req.headers(), id).await,
        ),
        (["payment", "callback"], &Method::POST) => (
            "payment_callback",
            crate::payment::callback(state, req).await,
        ),
        (["admin", "items"], &Method::POST) => {
            ("admin_items", crate::admin::create_item(state, req).await)
        }
        (["admin", "items", id], &Method::GET) => (
            "admin_item",
            crate::admin::get_item(state, req.headers(), id).await,
        ),
        (["admin", "items"], &Method::GET) => (
            "admin_items_list",
            crate::admin::listing::list_items(state, req.uri(), req.headers()).await,
        ),
        (["admin", "items", id], &Method::PATCH) => (
            "admin_item_patch",
            crate::admin::adjust::patch_item(state, req, id).await,
        ),
        (["admin", "items", id, "end"], &Method::POST) => (
            "admin_item_end",
            crate::admin::adjust::end_item(state, req.headers(), id).await,
        ),
        (["admin", "items", id, "history"], &Method::GET) => (
            "admin_item_history",
            crate::admin::history::item_history(state, req.uri(), req.headers(), id).await,
        ),
        (["admin", "orders", id], &Method::GET) => (
            "admin_order",
            crate::admin::history::admin_order(state, req.headers(), id).await,
        ),
        (["healthz"], &Method::GET) => ("healthz", Ok(healthz())),
        (["readyz"], &Method::GET) => ("readyz", Ok(readyz(state).await)),
        (["metrics"], &Method::GET) => ("metrics", Ok(metrics_text(state).await)),
        (["openapi.json"], &Method::GET) => ("openapi", Ok(openapi_json())),
        (segs, _) => match allowed_methods(segs) {
            Some(allow) => ("other", Err(ApiError::MethodNotAllowed(allow))),
            None => (
                "other",
                Err(ApiError::NotFound("not_found", "no such route")),
            ),
        },
    };
    (route, whole(answer))
}

/// The methods a known path answers, for `405`'s `Allow` header.
fn allowed_methods(segs: &[&str]) -> Option<&'static str> {
    Some(match segs {
        ["seckill"]
        | ["items", _, "ticket"]
        | ["orders", _, "cancel" | "confirm" | "refund"]
        | ["admin", "orders", _, "ship"]
        | ["payment", "callback"]
        | ["admin", "items", _, "end"] => "POST",
        ["admin", "items"] => "GET, POST",
        ["admin", "items", _] => "GET, PATCH",
        ["orders"]
        | ["orders", _]
        | ["orders", _, "events"]
        | ["admin", "items", _, "history"]
        | ["admin", "orders", _]
        | ["items"]
        | ["items", _]
        | ["healthz"]
        | ["readyz"]
        | ["metrics"]
        | ["openapi.json"] => "GET",
        _ => return None,
    })
}

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
        (status = 404, description = "unknown_item", body = crate::api::ErrorBody),
        (status = 409, description = "sold_out, limit_reached (with the existing order_id), not_started or ended", body = crate::api::ErrorBody),
        (status = 413, description = "payload_too_large: body over 16 KiB", body = crate::api::ErrorBody),
        (status = 429, description = "rate_limited, with Retry-After", body = crate::api::ErrorBody),
        (status = 503, description = "unavailable (nothing sold), outcome_unknown (with the order_id; GET it once Redis answers) or recovering (with Retry-After)", body = crate::api::ErrorBody),
    ))]
async fn seckill(state: &Arc<State>, req: Request<Incoming>) -> Answer {
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
            .verify(ticket, item, chrono::Utc::now().timestamp())
            .ok_or(ApiError::Unauthorized(
                "the ticket is invalid, expired or for another item",
            ))?,
        None => user_from_jwt(state, &parts.headers)?,
    };
    rate_limit(state, user)?;
    if state.group_commit.is_some() && !state.durability.is_ok() {
        // No replica to confirm a sale: refuse before selling rather than sell and answer
        // `outcome_unknown`.
        return Err(ApiError::Unavailable("a Redis replica"));
    }
    let order_id = OrderId(state.ids.next(seckill_domain::keys::gene_of_item(item)));
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
    match outcome {
        // A purchase that ran twice (a retry of a lost answer) finds its own order held.
        Purchase::LimitReached {
            order_id: Some(held),
        } if held == order_id => accepted(state, item, order_id).await,
        Purchase::Accepted { order_id, .. } => accepted(state, item, order_id).await,
        Purchase::Replayed { order_id } => Ok(accepted_response(order_id)),
        Purchase::UnknownItem => Err(ApiError::NotFound("unknown_item", "no such item")),
        Purchase::NotStarted => Err(ApiError::Conflict(
            "not_started",
            "the sale has not started",
        )),
        Purchase::Ended => Err(ApiError::Conflict("ended", "the sale has ended")),
        Purchase::LimitReached { order_id } => Err(ApiError::LimitReached(order_id)),
        Purchase::SoldOut { remaining } => {
            if remaining <= 0 {
                state.sold_out.mark(item);
            }
            Err(ApiError::Conflict("sold_out", SOLD_OUT))
        }
        Purchase::Recovering => Err(ApiError::Recovering),
        Purchase::Void => Err(ApiError::Unavailable("Redis")),
    }
}

/// A purchase that sold: answered once it is as durable as `SECKILL_REDIS_DURABILITY` asks.
async fn accepted(state: &State, item: ItemId, order_id: OrderId) -> Answer {
    if let Some(commit) = &state.group_commit
        && commit.replicated_for(&state.keys.item(item)).await.is_err()
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
        (status = 401, description = "unauthorized", body = crate::api::ErrorBody),
        (status = 404, description = "unknown_item", body = crate::api::ErrorBody),
        (status = 409, description = "ended, or not_started (more than 60 s early)", body = crate::api::ErrorBody),
        (status = 429, description = "rate_limited", body = crate::api::ErrorBody),
        (status = 503, description = "unavailable or recovering", body = crate::api::ErrorBody),
    ))]
async fn ticket(state: &Arc<State>, req: Request<Incoming>, raw_id: &str) -> Answer {
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
    let now = now_ms() as i64;
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

#[utoipa::path(get, path = "/items/{item_id}", tag = "buyers",
    summary = "A sale as its product page shows it",
    description = "Served from each gateway's cache: `remaining` may lag by up to one second, and a \
        crowd refreshing the page costs Redis at most one read of the item per second per gateway.",
    params(("item_id" = u64, Path)),
    responses(
        (status = 200, description = "The sale", body = crate::api::PublicItem<'_>,
            headers(("Cache-Control" = String, description = "public, max-age=1"))),
        (status = 404, description = "unknown_item", body = crate::api::ErrorBody),
        (status = 503, description = "unavailable, or recovering (with Retry-After)", body = crate::api::ErrorBody),
    ))]
async fn catalog_item(state: &Arc<State>, raw_id: &str) -> Answer {
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
    let now = now_ms() as i64;
    let server_time = crate::orders::rfc3339_ms(now);
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
async fn catalog_items(state: &Arc<State>) -> Answer {
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
    let now = now_ms() as i64;
    let server_time = crate::orders::rfc3339_ms(now);
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

fn public_item<'a>(s: &'a Snapshot, now: i64, server_time: &'a str) -> PublicItem<'a> {
    let t = |ms: Option<i64>| ms.map(crate::orders::rfc3339_ms);
    PublicItem {
        item_id: s.item.0,
        name: &s.name,
        price_cents: s.price_cents,
        starts_at: t(s.starts_at_ms),
        ends_at: t(s.ends_at_ms),
        state: s.state(now),
        // Never below zero on a product page, whatever a compensation did meanwhile.
        remaining: s.remaining.max(0),
        server_time,
    }
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
    match crate::catalog::read_listing(db, now_ms() as i64).await {
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

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = crate::api::Health)))]
fn healthz() -> Response<Body> {
    json(StatusCode::OK, &Health { status: "ok" })
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json")))]
fn openapi_json() -> Response<Body> {
    let mut resp = Response::new(Full::new(crate::openapi::json()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = crate::api::Readiness),
        (status = 503, description = "Not ready, and why", body = crate::api::Readiness),
    ))]
async fn readyz(state: &Arc<State>) -> Response<Body> {
    let (ok, body) = readiness(state).await;
    json(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &body,
    )
}

/// Whether this gateway can sell, and why not.
async fn readiness(state: &Arc<State>) -> (bool, Readiness) {
    let redis_ok = state.redis.next().ping::<String>(None).await.is_ok();
    let broker_ok = state.publisher.ready().await;
    let durability = state.durability.check_now().await;
    let recovering = state.recovery.genes_not_ready().await.unwrap_or_default();
    let ok = redis_ok && broker_ok && durability.ok && recovering.is_empty();
    let body = Readiness {
        redis: redis_ok,
        rabbitmq: broker_ok,
        redis_durability: DurabilityView {
            mode: durability.mode.as_str(),
            ok: durability.ok,
            reasons: durability.reasons,
        },
        redis_recovering_genes: recovering,
    };
    (ok, body)
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
async fn metrics_text(state: &Arc<State>) -> Response<Body> {
    // Readiness as of the scrape, so an alert sees what `/readyz` would answer.
    let (ready, _) = readiness(state).await;
    metrics::gauge!("seckill_ready").set(if ready { 1.0 } else { 0.0 });
    if let Ok(n) = crate::relay::backlog(&state.redis, &state.outboxes).await {
        metrics::gauge!("seckill_outbox_backlog").set(n as f64);
    }
    let mut resp = Response::new(Full::new(Bytes::from(state.metrics.render())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}
