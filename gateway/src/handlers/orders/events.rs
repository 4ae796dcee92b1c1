//! `GET /orders/{order_id}/events`: an order's status as a server-sent event stream, from its
//! current state until a terminal status.
//!
//! Changes arrive without polling: a stream registers with `streams::OrderStreams`, which wakes it
//! when the workers announce a change of its order. A woken stream re-reads its order as `GET
//! /orders/{id}` does and sends it if its status or payment moved. Nothing is queued for a slow
//! client: a change only marks the stream woken, and the body reads the order when hyper asks it
//! for the next frame, so a client that does not read falls behind and then gets the latest state.

use crate::api::OrderEventFrame;
use crate::error::ApiError;
use crate::reader::{self, Prefer, Reader};
use crate::request::{parse_id, user_from_jwt};
use crate::state::State;
use crate::streams::{SseBody, Watch};
use crate::views::order_view;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use http::{HeaderMap, HeaderValue, Response, header};
use http_body_util::StreamBody;
use hyper::body::Frame;
use seckill_schema::record::{OrderRecord, ShownPayment};
use seckill_schema::{OrderId, OrderStatus, UserId};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// An idle stream sends a comment line this often, so proxies and clients do not take it for dead.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
const KEEP_ALIVE_LINE: &[u8] = b": keep-alive\n\n";

/// What a stream last sent of the order: a change of either is worth an event.
type Shown = (OrderStatus, Option<ShownPayment>);

fn shown(r: &OrderRecord) -> Shown {
    (r.status, r.payment.clone())
}

/// One `order` event: the order as `GET /orders/{id}` answers it.
fn event(order_id: OrderId, r: OrderRecord) -> Bytes {
    OrderEventFrame::order(&order_view(order_id, r)).to_bytes()
}

/// A stream between two frames.
struct Follow {
    state: Arc<State>,
    order_id: OrderId,
    user: UserId,
    watch: Watch,
    shown: Shown,
    /// The event read when the stream opened, not sent yet.
    first: Option<Bytes>,
    /// The last event sent was terminal: the stream ends.
    ended: bool,
    /// The last read failed (Redis or the database unreachable): read again at the next tick.
    stale: bool,
    keep_alive: tokio::time::Interval,
}

enum Reread {
    Event(Bytes),
    Unchanged,
    Gone,
}

impl Follow {
    /// The next frame, produced when hyper asks for it; `None` ends the stream.
    async fn next(mut self) -> Option<(Result<Frame<Bytes>, Infallible>, Follow)> {
        if let Some(first) = self.first.take() {
            return Some((Ok(Frame::data(first)), self));
        }
        if self.ended {
            return None;
        }
        loop {
            let changes = self.watch.changes.as_mut()?;
            let woken = tokio::select! {
                _ = self.watch.closing.asked() => return None,
                changed = changes.changed() => {
                    // The sender lives as long as a receiver does; an error cannot happen.
                    changed.ok()?;
                    true
                }
                _ = self.keep_alive.tick() => false,
            };
            if woken || self.stale {
                match self.reread().await {
                    Reread::Event(bytes) => {
                        self.keep_alive.reset();
                        return Some((Ok(Frame::data(bytes)), self));
                    }
                    Reread::Gone => return None,
                    Reread::Unchanged => {}
                }
            }
            if !woken {
                let line = Bytes::from_static(KEEP_ALIVE_LINE);
                return Some((Ok(Frame::data(line)), self));
            }
        }
    }

    async fn reread(&mut self) -> Reread {
        match reader::read(
            &self.state,
            self.order_id,
            Reader::Owner(self.user),
            Prefer::ReadModel,
        )
        .await
        {
            Ok(Some(r)) => {
                self.stale = false;
                if shown(&r) == self.shown {
                    return Reread::Unchanged;
                }
                self.shown = shown(&r);
                self.ended = r.status.is_terminal();
                Reread::Event(event(self.order_id, r))
            }
            // The lookup's "no such order" is final; an order seen once cannot become one, but
            // if it did, there is nothing left to follow.
            Ok(None) => Reread::Gone,
            Err(e) => {
                tracing::debug!(order.id = %self.order_id, error = ?e, "re-reading a followed order failed");
                self.stale = true;
                Reread::Unchanged
            }
        }
    }
}

#[utoipa::path(get, path = "/orders/{order_id}/events", tag = "buyers", operation_id = "order_events",
    summary = "Follow an order: server-sent events until a terminal status",
    description = "`text/event-stream`. An `order` event carrying the order's JSON (as `GET \
        /orders/{order_id}` answers it) at once and at every change of its status or payment, \
        until a terminal status (COMPLETED, REFUNDED, FAILED, CANCELLED, TIMED_OUT), after which \
        the stream ends: a client should not reconnect then. An idle stream carries a comment \
        line (`: keep-alive`) every 15 s. A client that reconnects gets the current state at once.",
    security(("user_jwt" = [])),
    responses(
        (status = 200, description = "The event stream; each event an `order`", content_type = "text/event-stream", body = crate::api::OrderEventFrame),
        crate::api::Unauthorized,
        (status = 404, description = "not_found: unknown, or another user's", body = crate::api::ErrorBody),
        (status = 503, description = "unavailable (with Retry-After when this gateway holds as many streams as it may) or recovering", body = crate::api::ErrorBody),
    ))]
pub async fn stream(
    state: &Arc<State>,
    headers: &HeaderMap,
    raw_id: &str,
) -> Result<Response<SseBody>, ApiError> {
    let user = user_from_jwt(state, headers)?;
    let order_id: OrderId = parse_id(raw_id, "not_found")?;
    // Watching before the first read: a change after it wakes the stream, one before is in it.
    let watch = state.order_streams.watch(order_id)?;
    let record = reader::read(state, order_id, Reader::Owner(user), Prefer::ReadModel)
        .await?
        .ok_or(ApiError::NotFound("not_found", "no such order"))?;
    let follow = Follow {
        state: state.clone(),
        order_id,
        user,
        watch,
        shown: shown(&record),
        ended: record.status.is_terminal(),
        first: Some(event(order_id, record)),
        stale: false,
        keep_alive: {
            let start = tokio::time::Instant::now() + KEEP_ALIVE;
            let mut t = tokio::time::interval_at(start, KEEP_ALIVE);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        },
    };
    let frames = futures_util::stream::unfold(follow, Follow::next);
    let mut resp = Response::new(StreamBody::new(
        Box::pin(frames) as BoxStream<'static, Result<Frame<Bytes>, Infallible>>
    ));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx buffers a proxied response unless told not to, which would hold events back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}
