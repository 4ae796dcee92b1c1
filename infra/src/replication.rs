//! Group commit for `SECKILL_REDIS_DURABILITY=replica`: an accepted purchase is answered `202`
//! only once a `WAIT 1 <timeout>`, sent on the hot path's own connection after the purchase
//! answered, saw a replica take it.
//!
//! `WAIT` covers every write sent before it on its connection, and Redis holds back what that
//! connection sends after it until it returns. So one `WAIT` at a time is enough: every purchase
//! that answered while one was in flight joins the next, and a crowd of purchases costs a handful
//! of `WAIT`s, never one blocking round trip each.
//!
//! Metrics: `seckill_redis_wait_total` (`WAIT`s sent), `seckill_redis_wait_batch_size` (purchases
//! each covered), `seckill_redis_wait_failures_total{reason}` (`WAIT`s that confirmed nothing:
//! `timeout` or `error`) and `seckill_redis_unconfirmed_total{reason}` (purchases answered
//! [`Unconfirmed`]: `timeout`, `error` or `reconnected`).

use fred::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot};

/// How long a `WAIT` may block for a replica in production. Purchases sent behind a `WAIT` wait
/// for it on the same connection, so this must stay well below
/// [`crate::redis::COMMAND_TIMEOUT`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

/// A reconnection this recent may have come between a purchase that has just answered and its
/// `WAIT`. A request calls [`GroupCommit::replicated`] at most a command timeout after it sent its
/// purchase (give or take scheduling); one older than that cannot matter.
const RECONNECT_GRACE: Duration = crate::redis::COMMAND_TIMEOUT;

/// No replica confirmed the write in time, or the connection was lost or replaced in between: the
/// purchase may or may not survive the loss of the master (`503 outcome_unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no replica confirmed the write")]
pub struct Unconfirmed;

/// How a `WAIT` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Acked,
    TimedOut,
    Failed,
}

/// One request waiting for a replica: its reply, and the client's connection count when it
/// registered, after its purchase answered.
struct Waiter {
    epoch: u64,
    reply: oneshot::Sender<Result<(), Unconfirmed>>,
}

/// Waiters of one server (`None`: the only one, for a client that is not a cluster's).
#[derive(Default)]
struct Queue {
    waiters: Vec<Waiter>,
    in_flight: bool,
}

struct Shared {
    queues: HashMap<Option<Server>, Queue>,
    /// The client's (re)connections: a `WAIT` on a new connection says nothing of what the old
    /// one wrote (a fresh connection has written nothing, so its `WAIT` returns at once).
    reconnects: broadcast::Receiver<Server>,
    epoch: u64,
    reconnected_at: Option<Instant>,
}

impl Shared {
    /// Counts the (re)connections announced so far. fred announces a connection before it sends
    /// anything on it, so a `WAIT` written on a new connection is counted here by the time the
    /// `WAIT` returns.
    fn epoch(&mut self, client: &Client) -> u64 {
        let before = self.epoch;
        loop {
            match self.reconnects.try_recv() {
                Ok(_) => self.epoch += 1,
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.epoch += n,
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Closed) => {
                    // The client's channels were replaced (it quit): listen to the new ones, and
                    // trust nothing in flight.
                    self.reconnects = client.reconnect_rx();
                    self.epoch += 1;
                    break;
                }
            }
        }
        if self.epoch != before {
            self.reconnected_at = Some(Instant::now());
        }
        self.epoch
    }

    fn reconnected_recently(&self) -> bool {
        self.reconnected_at
            .is_some_and(|at| at.elapsed() < RECONNECT_GRACE)
    }
}

/// Batches the replica confirmations of one hot-path client.
pub struct GroupCommit {
    client: Client,
    timeout: Duration,
    shared: Mutex<Shared>,
    waits: AtomicU64,
    covered: AtomicU64,
    warned_unrouted: AtomicBool,
}

impl GroupCommit {
    /// `client` must be the very client the purchases are sent on (the gateway's one
    /// auto-pipelined connection), already connected: `WAIT` only covers writes of its own
    /// connection. `timeout` bounds each `WAIT` (see [`DEFAULT_TIMEOUT`]).
    pub fn new(client: Client, timeout: Duration) -> Arc<GroupCommit> {
        let reconnects = client.reconnect_rx();
        Arc::new(GroupCommit {
            client,
            timeout,
            shared: Mutex::new(Shared {
                queues: HashMap::new(),
                reconnects,
                epoch: 0,
                reconnected_at: None,
            }),
            waits: AtomicU64::new(0),
            covered: AtomicU64::new(0),
            warned_unrouted: AtomicBool::new(false),
        })
    }

    /// The client whose writes this confirms.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Resolves once a replica took every write the client sent before this call: call it right
    /// after the purchase script answered. On a cluster, use [`GroupCommit::replicated_for`].
    pub async fn replicated(self: &Arc<Self>) -> Result<(), Unconfirmed> {
        if self.client.is_clustered() {
            // A keyless WAIT would go to any primary and confirm nothing.
            if !self.warned_unrouted.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    "GroupCommit::replicated called on a cluster client: use replicated_for(key)"
                );
            }
            return Err(Unconfirmed);
        }
        self.enqueue(None).await
    }

    /// [`GroupCommit::replicated`] for a purchase that wrote `key` (or any key of its hash slot):
    /// on a cluster the `WAIT` goes to the primary that owns it.
    pub async fn replicated_for(self: &Arc<Self>, key: &str) -> Result<(), Unconfirmed> {
        if !self.client.is_clustered() {
            return self.enqueue(None).await;
        }
        let slot = fred::util::redis_keyslot(key.as_bytes());
        match self
            .client
            .cached_cluster_state()
            .and_then(|state| state.get_server(slot).cloned())
        {
            Some(server) => self.enqueue(Some(server)).await,
            None => Err(Unconfirmed),
        }
    }

    /// `WAIT`s sent so far.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Purchases a `WAIT` answered for (confirmed or not) so far.
    pub fn covered(&self) -> u64 {
        self.covered.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn enqueue(self: &Arc<Self>, server: Option<Server>) -> Result<(), Unconfirmed> {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut shared = self.lock();
            let epoch = shared.epoch(&self.client);
            if shared.reconnected_recently() {
                metrics::counter!("seckill_redis_unconfirmed_total", "reason" => "reconnected")
                    .increment(1);
                return Err(Unconfirmed);
            }
            let queue = shared.queues.entry(server.clone()).or_default();
            queue.waiters.push(Waiter { epoch, reply });
            !std::mem::replace(&mut queue.in_flight, true)
        };
        if lead {
            // A task of its own rather than this request: a client hanging up cancels its
            // request, and must not strand the others.
            tokio::spawn(Arc::clone(self).flush(server));
        }
        answer.await.unwrap_or(Err(Unconfirmed))
    }

    /// Sends one `WAIT` after another while anyone waits on `server`, each for the waiters that
    /// registered before it was sent.
    async fn flush(self: Arc<Self>, server: Option<Server>) {
        loop {
            let batch = {
                let mut shared = self.lock();
                let queue = shared.queues.entry(server.clone()).or_default();
                if queue.waiters.is_empty() {
                    queue.in_flight = false;
                    return;
                }
                std::mem::take(&mut queue.waiters)
            };
            let outcome = self.wait(server.clone()).await;
            let epoch = self.lock().epoch(&self.client);
            let n = batch.len() as u64;
            self.waits.fetch_add(1, Ordering::Relaxed);
            self.covered.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("seckill_redis_wait_total").increment(1);
            metrics::histogram!("seckill_redis_wait_batch_size").record(n as f64);
            let reason = match outcome {
                Outcome::Acked => None,
                Outcome::TimedOut => Some("timeout"),
                Outcome::Failed => Some("error"),
            };
            if let Some(reason) = reason {
                metrics::counter!("seckill_redis_wait_failures_total", "reason" => reason)
                    .increment(1);
                metrics::counter!("seckill_redis_unconfirmed_total", "reason" => reason)
                    .increment(n);
            }
            let mut reconnected = 0;
            for w in batch {
                // After a (re)connection since the purchase answered, the WAIT ran on a
                // connection that may not have carried it.
                let result = match reason {
                    None if w.epoch == epoch => Ok(()),
                    None => {
                        reconnected += 1;
                        Err(Unconfirmed)
                    }
                    Some(_) => Err(Unconfirmed),
                };
                let _ = w.reply.send(result);
            }
            if reconnected > 0 {
                metrics::counter!("seckill_redis_unconfirmed_total", "reason" => "reconnected")
                    .increment(reconnected);
            }
        }
    }

    /// One `WAIT 1 <timeout>` on the hot path's connection.
    async fn wait(&self, server: Option<Server>) -> Outcome {
        let timeout_ms = i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX);
        let client = self.client.with_options(&Options {
            // The WAIT ends by its own timeout; fred must not give up on it first.
            timeout: Some(self.timeout + Duration::from_secs(1)),
            // Never resent on a new connection, where it would confirm nothing.
            max_attempts: Some(1),
            cluster_node: server,
            ..Default::default()
        });
        match client.wait::<i64>(1, timeout_ms).await {
            Ok(n) if n >= 1 => Outcome::Acked,
            Ok(_) => Outcome::TimedOut,
            // Logged where it is handled: the request answers `503 outcome_unknown`.
            Err(e) => {
                tracing::debug!(error = %e, "WAIT failed");
                Outcome::Failed
            }
        }
    }
}
