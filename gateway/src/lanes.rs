//! Purchases reach Redis through one lane per shard gene: the purchases that arrive while the
//! lane's previous call is in flight go together, as one call of `lua/purchase.lua`, which runs
//! each as if it were alone.
//!
//! Most of what a purchase costs is the call, not the purchase: Redis parses a command, sets up
//! the script and writes a reply; fred encodes a frame, wakes its connection task and writes to
//! the socket (one `writev` per command: it flushes whenever nothing else is queued, which is
//! nearly always); the kernel carries each write as a segment of its own. Measured on a scratch
//! Redis with `redis-benchmark`, the script cost 22 µs of Redis's time per purchase called one at
//! a time and 12 µs in calls of 16. A lane keeps one call in flight: under load the next call
//! carries whatever arrived during the last one's round trip (a group commit), and with one
//! purchase at a time it is one call each, as before. A gene is one hash slot, so each call
//! touches one slot on Redis Cluster.
//!
//! A purchase is sent at most once, as before (`max_attempts` 1, fail-fast): a call that failed
//! after it was written is `MaybeRan` for every purchase in it. A purchase whose client went away
//! before its call was written is not sent. One that waited in its lane longer than Redis's
//! command timeout is answered `NotRun` without being sent, so a stalled Redis never queues
//! purchases behind it for longer than one timeout.

use fred::prelude::*;
use seckill_infra::scripts::{Purchase, PurchaseFailure, PurchaseRequest, Scripts};
use seckill_schema::snowflake::GENES;
use seckill_schema::{ItemId, OrderId, Quantity, UserId};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Purchases in one call, at most.
pub const MAX_BATCH: usize = 256;

type Answer = Result<Purchase, PurchaseFailure>;

struct Pending {
    order_id: OrderId,
    user: UserId,
    item: ItemId,
    quantity: Quantity,
    idempotency_key: Option<String>,
    shards: u8,
    queued: Instant,
    answer: oneshot::Sender<Answer>,
}

impl Pending {
    fn request(&self) -> PurchaseRequest<'_> {
        PurchaseRequest {
            order_id: self.order_id,
            user: self.user,
            item: self.item,
            quantity: self.quantity,
            idempotency_key: self.idempotency_key.as_deref(),
            shards: self.shards,
        }
    }
}

/// One lane per gene; each lane's task ends when the lanes are dropped.
pub struct Lanes {
    lanes: Vec<mpsc::UnboundedSender<Pending>>,
}

impl Lanes {
    pub fn start(redis: Pool, scripts: Scripts) -> Lanes {
        let lanes = (0..GENES)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(run(rx, redis.clone(), scripts.clone()));
                tx
            })
            .collect();
        Lanes { lanes }
    }

    /// Runs one purchase in its home shard's lane (the gene its order id carries).
    pub async fn purchase(&self, req: &PurchaseRequest<'_>) -> Answer {
        let (answer, answered) = oneshot::channel();
        let lane = &self.lanes[usize::from(seckill_schema::snowflake::gene_of(req.order_id.0))];
        let pending = Pending {
            order_id: req.order_id,
            user: req.user,
            item: req.item,
            quantity: req.quantity,
            idempotency_key: req.idempotency_key.map(str::to_owned),
            shards: req.shards,
            queued: Instant::now(),
            answer,
        };
        if lane.send(pending).is_err() {
            return Err(PurchaseFailure::NotRun(lane_closed()));
        }
        // The lane answers every purchase it takes; without an answer it may have been sent.
        answered
            .await
            .unwrap_or_else(|_| Err(PurchaseFailure::MaybeRan(lane_closed())))
    }
}

fn lane_closed() -> fred::error::Error {
    fred::error::Error::new(
        fred::error::ErrorKind::Canceled,
        "the purchase lane stopped",
    )
}

async fn run(mut rx: mpsc::UnboundedReceiver<Pending>, redis: Pool, scripts: Scripts) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    let sizes = metrics::histogram!("seckill_purchase_batch_size");
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let timeout = seckill_infra::redis::COMMAND_TIMEOUT;
        let mut sending = Vec::with_capacity(batch.len());
        for p in batch.drain(..) {
            if p.answer.is_closed() {
                // Its client went away: nothing to sell it to.
                continue;
            }
            if p.queued.elapsed() >= timeout {
                let e = fred::error::Error::new(
                    fred::error::ErrorKind::Timeout,
                    "waited for Redis longer than a command may",
                );
                let _ = p.answer.send(Err(PurchaseFailure::NotRun(e)));
                continue;
            }
            sending.push(p);
        }
        if sending.is_empty() {
            continue;
        }
        let requests: Vec<PurchaseRequest<'_>> = sending.iter().map(Pending::request).collect();
        let answers = scripts.purchase_all(redis.next(), &requests).await;
        sizes.record(requests.len() as f64);
        drop(requests);
        for (p, a) in sending.into_iter().zip(answers) {
            let _ = p.answer.send(a);
        }
    }
}
