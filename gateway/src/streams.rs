//! The Pub/Sub plumbing of order event streams: which streams watch which order
//! ([`OrderStreams`]), and the gateway's one subscription to the order changes the workers announce
//! on `Keys::order_changes()` ([`Changes`]), which wakes them. `handlers::orders::events` reads and
//! sends the order when a stream is woken.
//!
//! Pub/Sub forgets what it sends while the connection is down, so after a reconnection (or if this
//! gateway fell behind the messages) every stream is woken to re-read. An idle stream costs Redis
//! nothing: an entry in the registry and a permit of the bound (`SECKILL_MAX_ORDER_STREAMS`).

use crate::error::ApiError;
use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use futures_util::stream::BoxStream;
use http_body_util::StreamBody;
use hyper::body::Frame;
use seckill_infra::lifecycle::{Shutdown, Stopper};
use seckill_schema::OrderId;
use seckill_schema::record::OrderChange;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

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
    closing: Stopper,
}

impl OrderStreams {
    pub fn new(max: u32) -> OrderStreams {
        let max = (max as usize).min(Semaphore::MAX_PERMITS);
        OrderStreams {
            watchers: Mutex::default(),
            permits: Arc::new(Semaphore::new(max)),
            max,
            closing: Shutdown::new().0,
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
        self.closing.stop();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OrderId, watch::Sender<()>>> {
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A stream's place: a permit of the bound and a receiver of the order's changes, both given
    /// back when it is dropped.
    pub fn watch(self: &Arc<Self>, order_id: OrderId) -> Result<Watch, ApiError> {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::AtCapacity("order event streams"))?;
        // Subscribed before the check, so a shutdown after it is seen as a change.
        let closing = self.closing.shutdown();
        if closing.is_asked() {
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
pub struct Watch {
    streams: Arc<OrderStreams>,
    order_id: OrderId,
    /// Changed at every change of the order. `None` only while dropping.
    pub changes: Option<watch::Receiver<()>>,
    /// Changed when the gateway shuts down.
    pub closing: Shutdown,
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
        mut stop: Shutdown,
    ) -> impl Future<Output = ()> + Send + 'static {
        let mut messages = self.subscriber.message_rx();
        let mut reconnects = self.subscriber.reconnect_rx();
        async move {
            loop {
                tokio::select! {
                    _ = stop.asked() => break,
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
    async fn resubscribe(&self, stop: &mut Shutdown) -> bool {
        loop {
            match self.subscriber.resubscribe_all().await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, "subscribing to order changes again failed; retrying");
                }
            }
            tokio::select! {
                _ = stop.asked() => return false,
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
        assert!(open.closing.is_asked());
        assert_eq!(streams.watch(b).err().unwrap().code(), "unavailable");
        drop(open);
        assert_eq!((streams.open(), streams.watched()), (0, 0));
    }
}
