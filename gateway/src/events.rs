//! `GET /orders/{order_id}/events`: an order's status as a server-sent event stream, from its
//! current state until a terminal status.
//!
//! Changes arrive without polling: the workers announce every status they mirror into Redis on
//! the Pub/Sub channel `Keys::order_changes()`, and each gateway listens once, on a connection of
//! its own ([`Changes`]), and wakes the streams watching the changed orders ([`OrderStreams`]).
//! A woken stream re-reads its order through the same path as `GET /orders/{id}` and sends it if
//! its status or payment moved. Pub/Sub forgets what it sends while the connection is down, so
//! after a reconnection (or if this gateway fell behind the messages) every stream re-reads.
//!
//! An idle stream costs Redis nothing: a timer for its keep-alive comment, an entry in the
//! registry, a permit of the bound (`SECKILL_MAX_ORDER_STREAMS`). Nothing is queued for a slow
//! client: a change only marks the stream woken, and the body reads the order when hyper asks it
//! for the next frame, so a client that does not read falls behind and then gets the latest state.

use crate::api::OrderEventFrame;
use crate::error::ApiError;
use crate::orders::{order_view, owned};
use crate::request::{parse_id, user_from_jwt};
use crate::state::State;
use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use futures_util::stream::BoxStream;
use http::{HeaderMap, HeaderValue, Response, header};
use http_body_util::StreamBody;
use hyper::body::Frame;
use seckill_domain::record::{OrderChange, OrderRecord, ShownPayment};
use seckill_domain::{OrderId, OrderStatus, UserId};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// An idle stream sends a comment line this often, so proxies and clients do not take it for dead.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
const KEEP_ALIVE_LINE: &[u8] = b": keep-alive\n\n";
/// Pub/Sub messages the change router may fall behind by before it re-reads every stream.
const CHANGES_BACKLOG: usize = 1024;
/// Between attempts to subscribe again after a reconnection.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(200);

/// The body of an event stream: boxed once per stream; every other answer stays a `Full`.
pub type SseBody = StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

/// The streams one gateway holds open, and which order each watches.
pub struct OrderStreams {
    /// One sender per watched order; each stream of it holds a receiver. A change bumps the
    /// sender's version, which every receiver then sees as changed, however often it was bumped.
    watchers: Mutex<HashMap<OrderId, watch::Sender<()>>>,
    permits: Arc<Semaphore>,
    max: usize,
    /// `true` once the gateway shuts down: every stream ends, no new one opens.
    closing: watch::Sender<bool>,
}

impl OrderStreams {
    pub fn new(max: u32) -> OrderStreams {
        let max = (max as usize).min(Semaphore::MAX_PERMITS);
        OrderStreams {
            watchers: Mutex::default(),
            permits: Arc::new(Semaphore::new(max)),
            max,
            closing: watch::Sender::new(false),
        }
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// Orders watched by at least one stream now.
    pub fn watched(&self) -> usize {
        self.lock().len()
    }

    /// Ends every stream (they finish their current frame) and refuses new ones: hyper's graceful
    /// shutdown waits for each response to end, and a stream would not by itself.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OrderId, watch::Sender<()>>> {
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A stream's place: a permit of the bound and a receiver of the order's changes, both given
    /// back when it is dropped.
    fn watch(self: &Arc<Self>, order_id: OrderId) -> Result<Watch, ApiError> {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::AtCapacity("order event streams"))?;
        // Subscribed before the check, so a shutdown after it is seen as a change.
        let mut closing = self.closing.subscribe();
        if *closing.borrow_and_update() {
            return Err(ApiError::Unavailable("this gateway (shutting down)"));
        }
        let changes = self
            .lock()
            .entry(order_id)
            .or_insert_with(|| watch::Sender::new(()))
            .subscribe();
        metrics::gauge!("seckill_order_streams").increment(1.0);
        Ok(Watch {
            streams: self.clone(),
            order_id,
            changes: Some(changes),
            closing,
            _permit: permit,
        })
    }

    /// Wakes the streams watching `order_id`, if any.
    fn wake(&self, order_id: OrderId) {
        if let Some(tx) = self.lock().get(&order_id) {
            tx.send_replace(());
        }
    }

    /// Wakes every stream: changes may have been missed.
    fn wake_all(&self) {
        for tx in self.lock().values() {
            tx.send_replace(());
        }
    }
}

/// One stream's registration; dropping it (the client went away, or the stream ended) removes
/// the order from the registry once no stream watches it.
struct Watch {
    streams: Arc<OrderStreams>,
    order_id: OrderId,
    /// `None` only while dropping.
    changes: Option<watch::Receiver<()>>,
    closing: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watchers = self.streams.lock();
        // Under the lock, so that no stream subscribes between the count and the removal.
        self.changes = None;
        if watchers
            .get(&self.order_id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            watchers.remove(&self.order_id);
        }
        drop(watchers);
        metrics::gauge!("seckill_order_streams").decrement(1.0);
    }
}

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
                _ = self.watch.closing.changed() => return None,
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
        match owned(&self.state, self.order_id, self.user).await {
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
    params(("order_id" = String, Path, description = "The snowflake id, decimal")),
    security(("user_jwt" = [])),
    responses(
        (status = 200, description = "The event stream; each event an `order`", content_type = "text/event-stream", body = crate::api::OrderEventFrame),
        (status = 401, description = "unauthorized", body = crate::api::ErrorBody),
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
    let record = owned(state, order_id, user)
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

/// The gateway's one subscription to the order changes, on a connection of its own.
pub struct Changes {
    subscriber: SubscriberClient,
    channel: String,
}

impl Changes {
    pub async fn subscribe(redis_url: &str, channel: String) -> anyhow::Result<Changes> {
        let subscriber = seckill_infra::redis::subscriber(redis_url, CHANGES_BACKLOG).await?;
        subscriber
            .subscribe(channel.as_str())
            .await
            .map_err(|e| anyhow::anyhow!("subscribing to {channel}: {e}"))?;
        Ok(Changes {
            subscriber,
            channel,
        })
    }

    /// Routes each change to the streams watching its order until `stop`; after a reconnection,
    /// subscribes again and then wakes every stream. The receivers exist from this call on, so
    /// nothing published after it is missed for lack of a listener.
    pub fn follow(
        self,
        streams: Arc<OrderStreams>,
        mut stop: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let mut messages = self.subscriber.message_rx();
        let mut reconnects = self.subscriber.reconnect_rx();
        async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    message = messages.recv() => match message {
                        Ok(m) if *m.channel == *self.channel => {
                            if let Some(text) = m.value.as_str() {
                                for change in OrderChange::decode(&text) {
                                    streams.wake(change.order_id);
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "order changes came faster than routed; every stream re-reads");
                            streams.wake_all();
                        }
                        Err(RecvError::Closed) => break,
                    },
                    reconnected = reconnects.recv() => match reconnected {
                        Ok(_) | Err(RecvError::Lagged(_)) => {
                            if !self.resubscribe(&mut stop).await {
                                break;
                            }
                            tracing::info!(streams = streams.open(), "subscribed to order changes again; every stream re-reads");
                            streams.wake_all();
                        }
                        Err(RecvError::Closed) => break,
                    },
                }
            }
            let _ = self.subscriber.quit().await;
        }
    }

    /// Subscribes again until it holds or `stop`; `false` on stop.
    async fn resubscribe(&self, stop: &mut watch::Receiver<bool>) -> bool {
        loop {
            match self.subscriber.resubscribe_all().await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, "subscribing to order changes again failed; retrying");
                }
            }
            tokio::select! {
                _ = stop.changed() => return false,
                _ = tokio::time::sleep(RESUBSCRIBE_PAUSE) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_holds_a_place_until_dropped_and_none_opens_past_the_bound_or_the_shutdown() {
        let streams = Arc::new(OrderStreams::new(2));
        let (a, b) = (OrderId(1), OrderId(2));
        let first = streams.watch(a).unwrap();
        let mut second = streams.watch(a).unwrap();
        assert_eq!((streams.open(), streams.watched()), (2, 1));
        let refused = streams.watch(b).err().unwrap();
        assert_eq!(
            (refused.status().as_u16(), refused.code()),
            (503, "unavailable")
        );

        // A change wakes the order's streams, however often it was announced; another's, none.
        streams.wake(b);
        assert!(!second.changes.as_mut().unwrap().has_changed().unwrap());
        streams.wake(a);
        streams.wake(a);
        assert!(second.changes.as_mut().unwrap().has_changed().unwrap());
        second.changes.as_mut().unwrap().mark_unchanged();
        streams.wake_all();
        assert!(second.changes.as_mut().unwrap().has_changed().unwrap());

        drop(first);
        assert_eq!((streams.open(), streams.watched()), (1, 1));
        let other = streams.watch(b).unwrap();
        assert_eq!((streams.open(), streams.watched()), (2, 2));
        drop((second, other));
        assert_eq!((streams.open(), streams.watched()), (0, 0));

        let open = streams.watch(a).unwrap();
        streams.close();
        assert!(open.closing.has_changed().unwrap());
        assert_eq!(streams.watch(b).err().unwrap().code(), "unavailable");
        drop(open);
        assert_eq!((streams.open(), streams.watched()), (0, 0));
    }
}
