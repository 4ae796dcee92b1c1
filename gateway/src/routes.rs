//! The HTTP API of the contract: routing, parsing at the edge, and one handler per route.

use crate::error::{ApiError, Body, json};
use crate::state::State;
use bytes::Bytes;
use fred::prelude::*;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use seckill_schema::scripts::{Purchase, PurchaseRequest};
use seckill_schema::snowflake::now_ms;
use seckill_schema::{ItemId, Message, OrderEvent, OrderId, OrderStatus, Quantity, UserId};
use serde::Deserialize;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

pub const MAX_BODY: usize = 16 * 1024;
const MAX_IDEMPOTENCY_KEY: usize = 128;

pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let (route, result) = route(&state, req).await;
    let resp = result.unwrap_or_else(ApiError::into_response);
    let status = resp.status();
    let elapsed = started.elapsed().as_secs_f64();
    if route == "seckill" {
        // The hot route's handles, registered once: no registry lookup per purchase.
        let m = SECKILL_METRICS.get_or_init(|| RouteMetrics::new("seckill"));
        m.count(status);
        m.latency.record(elapsed);
    } else {
        metrics::counter!("seckill_http_requests_total", "route" => route, "status" => status_label(status))
            .increment(1);
        metrics::histogram!("seckill_http_request_duration_seconds", "route" => route)
            .record(elapsed);
    }
    Ok(resp)
}

static SECKILL_METRICS: std::sync::OnceLock<RouteMetrics> = std::sync::OnceLock::new();

const STATUS_LABELS: [&str; 13] = [
    "200", "201", "202", "400", "401", "404", "405", "409", "413", "429", "503", "500", "other",
];

struct RouteMetrics {
    by_status: Vec<metrics::Counter>,
    latency: metrics::Histogram,
}

impl RouteMetrics {
    fn new(route: &'static str) -> Self {
        RouteMetrics {
            by_status: STATUS_LABELS
                .iter()
                .map(|s| metrics::counter!("seckill_http_requests_total", "route" => route, "status" => *s))
                .collect(),
            latency: metrics::histogram!("seckill_http_request_duration_seconds", "route" => route),
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

type Answer = Result<Response<Body>, ApiError>;

async fn route(state: &Arc<State>, req: Request<Incoming>) -> (&'static str, Answer) {
    // The hot path first, matched without allocating. Every other route runs in a boxed future
    // of its own: the admin and payment handlers' futures are large, and inlining them would make
    // every purchase allocate and move their state.
    if req.method() == Method::POST && req.uri().path() == "/seckill" {
        return ("seckill", seckill(state, req).await);
    }
    Box::pin(other_route(state, req)).await
}

async fn other_route(state: &Arc<State>, req: Request<Incoming>) -> (&'static str, Answer) {
    let path = req.uri().path().to_owned();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (segs.as_slice(), &method) {
        (["seckill"], &Method::POST) => ("seckill", seckill(state, req).await),
        (["items", id, "ticket"], &Method::POST) => ("ticket", ticket(state, req, id).await),
        (["orders", id], &Method::GET) => ("order", get_order(state, req.headers(), id).await),
        (["orders", id, "cancel"], &Method::POST) => {
            ("cancel", cancel(state, req.headers(), id).await)
        }
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
        (["healthz"], &Method::GET) => (
            "healthz",
            Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        ),
        (["readyz"], &Method::GET) => ("readyz", Ok(readyz(state).await)),
        (["metrics"], &Method::GET) => ("metrics", Ok(metrics_text(state).await)),
        (
            ["seckill"]
            | ["items", _, "ticket"]
            | ["orders", _]
            | ["orders", _, "cancel"]
            | ["payment", "callback"]
            | ["admin", "items"]
            | ["admin", "items", _]
            | ["healthz"]
            | ["readyz"]
            | ["metrics"],
            _,
        ) => ("other", Err(ApiError::MethodNotAllowed)),
        _ => (
            "other",
            Err(ApiError::NotFound("not_found", "no such route")),
        ),
    }
}

/// Reads the whole body, at most 16 KiB.
pub async fn read_body(req: Request<Incoming>) -> Result<(http::request::Parts, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(ApiError::PayloadTooLarge);
    }
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::PayloadTooLarge)
        }
        Err(_) => Err(ApiError::BadRequest("the body could not be read".into())),
    }
}

pub fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        // serde's message names the field and the expectation, never our internals.
        ApiError::BadRequest(format!("invalid JSON body: {msg}"))
    })
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub fn user_from_jwt(state: &State, headers: &HeaderMap) -> Result<UserId, ApiError> {
    let token = bearer(headers).ok_or(ApiError::Unauthorized("a bearer token is required"))?;
    state
        .jwt
        .verify(token)
        .ok_or(ApiError::Unauthorized("the token is invalid or expired"))
}

fn parse_id<T: std::str::FromStr>(raw: &str, what: &'static str) -> Result<T, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(what, "no such resource"))
}

fn rate_limit(state: &State, user: UserId) -> Result<(), ApiError> {
    state
        .limiter
        .check(user)
        .map_err(|retry_after_secs| ApiError::RateLimited { retry_after_secs })
}

#[derive(Deserialize)]
struct SeckillBody {
    item_id: u64,
    #[serde(default = "one")]
    quantity: u32,
    ticket: Option<String>,
}

#[derive(serde::Serialize)]
struct Accepted {
    order_id: OrderId,
    status: &'static str,
}

fn one() -> u32 {
    1
}

async fn seckill(state: &Arc<State>, req: Request<Incoming>) -> Answer {
    let (parts, body) = read_body(req).await?;
    let body: SeckillBody = parse_json(&body)?;
    let quantity = Quantity::new(body.quantity)
        .ok_or_else(|| ApiError::BadRequest("quantity must be at least 1".into()))?;
    if body.item_id > i64::MAX as u64 {
        return Err(ApiError::NotFound("unknown_item", "no such item"));
    }
    let item = ItemId(body.item_id);
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
    let idempotency_key = match parts.headers.get("idempotency-key") {
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
    if idempotency_key.is_none() && state.sold_out.is_sold_out(item) {
        return Err(ApiError::Conflict("sold_out", "the item is sold out"));
    }
    let order_id = OrderId(state.ids.next(seckill_schema::keys::gene_of_item(item)));
    let outcome = state
        .scripts
        .purchase(
            state.redis.next(),
            &PurchaseRequest {
                order_id,
                user,
                item,
                quantity,
                idempotency_key,
            },
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "purchase script failed");
            ApiError::Unavailable("Redis")
        })?;
    match outcome {
        Purchase::Accepted { order_id, .. } | Purchase::Replayed { order_id } => {
            let mut resp = json(
                StatusCode::ACCEPTED,
                &Accepted {
                    order_id,
                    status: "PENDING",
                },
            );
            if let Ok(loc) = HeaderValue::from_str(&format!("/orders/{order_id}")) {
                resp.headers_mut().insert(header::LOCATION, loc);
            }
            Ok(resp)
        }
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
            Err(ApiError::Conflict("sold_out", "the item is sold out"))
        }
    }
}

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
        return Err(ApiError::NotFound("unknown_item", "no such item"));
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
    let mut expires = now / 1000 + seckill_schema::auth::TICKET_TTL_SECS;
    if starts > now {
        expires += (starts - now) / 1000;
    }
    let ticket = state.tickets.mint(user, item, expires);
    let expires_at = chrono::DateTime::from_timestamp(expires, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"ticket": ticket, "expires_at": expires_at}),
    ))
}

/// The order's read model in Redis, if it exists and belongs to `user`.
pub async fn read_order(
    state: &State,
    order_id: OrderId,
) -> Result<Option<HashMap<String, String>>, ApiError> {
    let fields: HashMap<String, String> = state
        .redis
        .hgetall(state.keys.order(order_id))
        .await
        .map_err(|_| ApiError::Unavailable("Redis"))?;
    Ok((!fields.is_empty()).then_some(fields))
}

pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

async fn owned_order(
    state: &State,
    headers: &HeaderMap,
    raw_id: &str,
) -> Result<(OrderId, UserId, HashMap<String, String>), ApiError> {
    let user = user_from_jwt(state, headers)?;
    let order_id: OrderId = parse_id(raw_id, "not_found")?;
    let fields = read_order(state, order_id)
        .await?
        .filter(|f| f.get("user").and_then(|u| u.parse().ok()) == Some(user.0))
        .ok_or(ApiError::NotFound("not_found", "no such order"))?;
    Ok((order_id, user, fields))
}

async fn get_order(state: &Arc<State>, headers: &HeaderMap, raw_id: &str) -> Answer {
    let (order_id, user, f) = owned_order(state, headers, raw_id).await?;
    let num = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let payment = match f.get("pay_id") {
        Some(id) => serde_json::json!({
            "payment_id": id,
            "amount_cents": num("pay_amount"),
            "status": f.get("pay_status").cloned().unwrap_or_default(),
        }),
        None => serde_json::Value::Null,
    };
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "order_id": order_id,
            "user_id": user.0,
            "item_id": num("item"),
            "quantity": num("qty"),
            "amount_cents": num("amount"),
            "status": f.get("status").cloned().unwrap_or_else(|| "PENDING".into()),
            "created_at": rfc3339_ms(num("created")),
            "updated_at": rfc3339_ms(num("updated")),
            "payment": payment,
        }),
    ))
}

pub fn order_event(order_id: OrderId, f: &HashMap<String, String>) -> Result<OrderEvent, ApiError> {
    let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
    let bad = || {
        ApiError::Internal(anyhow::anyhow!(
            "order {order_id} has a malformed record in Redis"
        ))
    };
    Ok(OrderEvent {
        order_id,
        user_id: UserId(num("user").ok_or_else(bad)?),
        item_id: ItemId(num("item").ok_or_else(bad)?),
        quantity: num("qty")
            .and_then(|q| Quantity::new(q as u32))
            .ok_or_else(bad)?,
        amount_cents: num("amount").ok_or_else(bad)? as i64,
        created_at_ms: num("created").ok_or_else(bad)? as i64,
    })
}

async fn cancel(state: &Arc<State>, headers: &HeaderMap, raw_id: &str) -> Answer {
    let (order_id, _user, f) = owned_order(state, headers, raw_id).await?;
    let status: OrderStatus = f
        .get("status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(OrderStatus::Pending);
    if !status.is_cancellable() {
        return Err(ApiError::Conflict(
            "not_cancellable",
            "the order is already paid or closed",
        ));
    }
    let event = order_event(order_id, &f)?;
    state
        .publisher
        .publish(&Message::OrderCancel {
            events: vec![event],
        })
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "publishing ORDER_CANCEL failed");
            ApiError::Unavailable("RabbitMQ")
        })?;
    Ok(json(
        StatusCode::ACCEPTED,
        &serde_json::json!({"order_id": order_id, "status": "CANCEL_REQUESTED"}),
    ))
}

async fn readyz(state: &Arc<State>) -> Response<Body> {
    let redis_ok = state.redis.next().ping::<String>(None).await.is_ok();
    let broker_ok = state.publisher.ready().await;
    let status = if redis_ok && broker_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        &serde_json::json!({"redis": redis_ok, "rabbitmq": broker_ok}),
    )
}

async fn metrics_text(state: &Arc<State>) -> Response<Body> {
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
