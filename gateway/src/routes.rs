//! The router: each request to its handler by method and path, with a span carrying the path's
//! order or item id, and one line of metrics per answer. The handlers live in `handlers/`.

use crate::error::{Answer, ApiError, Body};
use crate::handlers::{admin, items, ops, orders, payment, purchase};
use crate::route_metrics::{record, status_label};
use crate::state::State;
use http::{Method, Request, Response, header};
use http_body_util::Either;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;
use tracing::field::Empty;

/// Every answer's body: JSON whole, or an order's event stream. An enum, not a box: the hot path's
/// answer stays a `Full` moved once.
pub type ResponseBody = Either<Body, crate::streams::SseBody>;

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
    record(
        route,
        resp.status(),
        outcome,
        started.elapsed().as_secs_f64(),
    );
    Ok(resp)
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
        let answer = whole(purchase::seckill(state, req).instrument(span.clone()).await);
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
        return ("item", whole(items::catalog_item(state, id).await));
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
            let answer = orders::events::stream(state, req.headers(), id).await;
            return ("order_events", answer.map(|resp| resp.map(Either::Right)));
        }
        (["seckill"], &Method::POST) => ("seckill", purchase::seckill(state, req).await),
        (["items", id, "ticket"], &Method::POST) => {
            ("ticket", purchase::ticket(state, req, id).await)
        }
        (["items"], &Method::GET) => ("items", items::catalog_items(state).await),
        (["items", id], &Method::GET) => ("item", items::catalog_item(state, id).await),
        (["orders"], &Method::GET) => (
            "my_orders",
            orders::list::list(state, req.headers(), req.uri().query()).await,
        ),
        (["orders", id], &Method::GET) => ("order", orders::get(state, req.headers(), id).await),
        (["orders", id, "cancel"], &Method::POST) => {
            ("cancel", orders::cancel(state, req.headers(), id).await)
        }
        (["orders", id, "confirm"], &Method::POST) => {
            ("confirm", orders::confirm(state, req.headers(), id).await)
        }
        (["orders", id, "refund"], &Method::POST) => {
            ("refund", orders::refund(state, req.headers(), id).await)
        }
        (["admin", "orders", id, "ship"], &Method::POST) => (
            "admin_ship",
            admin::orders::ship(state, req.headers(), id).await,
        ),
        (["payment", "callback"], &Method::POST) => {
            ("payment_callback", payment::callback(state, req).await)
        }
        (["admin", "items"], &Method::POST) => {
            ("admin_items", admin::create_item(state, req).await)
        }
        (["admin", "items", id], &Method::GET) => (
            "admin_item",
            admin::get_item(state, req.headers(), id).await,
        ),
        (["admin", "items"], &Method::GET) => (
            "admin_items_list",
            admin::listing::list_items(state, req.uri(), req.headers()).await,
        ),
        (["admin", "items", id], &Method::PATCH) => (
            "admin_item_patch",
            admin::adjust::patch_item(state, req, id).await,
        ),
        (["admin", "items", id, "end"], &Method::POST) => (
            "admin_item_end",
            admin::adjust::end_item(state, req.headers(), id).await,
        ),
        (["admin", "items", id, "history"], &Method::GET) => (
            "admin_item_history",
            admin::history::item_history(state, req.uri(), req.headers(), id).await,
        ),
        (["admin", "orders", id], &Method::GET) => (
            "admin_order",
            admin::orders::admin_order(state, req.headers(), id).await,
        ),
        (["healthz"], &Method::GET) => ("healthz", Ok(ops::healthz())),
        (["readyz"], &Method::GET) => ("readyz", Ok(ops::readyz(state).await)),
        (["metrics"], &Method::GET) => ("metrics", Ok(ops::metrics_text(state).await)),
        (["openapi.json"], &Method::GET) => ("openapi", Ok(crate::openapi::serve())),
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
