//! The consumers: one per message type, each on a connection it supervises. A consumer takes what
//! the broker has ready (up to a batch), runs the handler in one transaction, applies the effects
//! that follow the commit, and only then acks. Malformed messages and messages that keep failing
//! go to `{ns}.dead` with a reason; the database being down makes messages wait, not die.

use crate::saga::{self, Batch, Effects};
use anyhow::Context;
use fred::prelude::*;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use sea_orm::DatabaseConnection;
use seckill_infra::Config;
use seckill_infra::broker::{self, Publisher, Topology};
use seckill_infra::lifecycle::Shutdown;
use seckill_infra::scripts::{Generations, Mirrored, Released, Scripts, StatusUpdate};
use seckill_schema::keys::gene_of_item;
use seckill_schema::record::OrderChange;
use seckill_schema::{Kind, Message, OrderEvent, OrderId};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Unacked messages the broker may push to one consumer.
pub const PREFETCH: u16 = 64;
/// Events handled in one transaction, at most.
pub const MAX_EVENTS: usize = 2000;
/// Attempts of a failing batch (not counting waits for the database) before it is split, and of a
/// single failing message before it is dead-lettered.
const ATTEMPTS: u32 = 3;

pub struct Runtime {
    pub config: Config,
    pub db: DatabaseConnection,
    pub redis: fred::prelude::Pool,
    pub scripts: Scripts,
    pub publisher: Arc<Publisher>,
    pub topology: Topology,
    /// Rebuilds what Redis lost from the database.
    pub recovery: Arc<seckill_infra::recovery::Recovery>,
    /// What Redis promises of an accepted order, re-read every few seconds and by `/readyz`.
    pub durability: seckill_infra::durability::DurabilityWatch,
    /// The connection the workers' Redis writes (read model, units back) go through, and in
    /// `replica` mode the `WAIT` on it that confirms them before a message is acked: the workers'
    /// writes are as durable as the mode promises, like a purchase.
    pub writer: fred::prelude::Client,
    pub group_commit: Option<Arc<seckill_infra::replication::GroupCommit>>,
}

enum Failure {
    /// A dependency is unreachable or a transaction lost a race: wait and run it again.
    Transient(anyhow::Error),
    /// The batch itself fails.
    Fatal(anyhow::Error),
}

impl Runtime {
    /// Runs one consumer until `shutdown`, rebuilding its connection whenever it breaks.
    pub async fn consume(self: Arc<Self>, kind: Kind, mut shutdown: Shutdown) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if shutdown.is_asked() {
                return;
            }
            let started = Instant::now();
            match self.consume_once(kind, &mut shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff = Duration::from_millis(100);
                    }
                    tracing::warn!(kind = kind.type_name(), error = %format!("{e:#}"), "consumer stopped; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.asked() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn consume_once(&self, kind: Kind, shutdown: &mut Shutdown) -> anyhow::Result<()> {
        let name = format!(
            "{}/seckill-workers-{}",
            self.config.namespace,
            kind.routing_key()
        );
        let conn = broker::connect(&self.config.amqp_url, &name).await?;
        let ch = conn.create_channel().await.context("opening a channel")?;
        ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
        tokio::time::timeout(broker::CALL_TIMEOUT, self.topology.declare(&conn))
            .await
            .context("declaring the topology timed out")??;
        let queue = self.topology.queue(kind);
        let mut consumer = ch
            .basic_consume(
                queue.as_str().into(),
                name.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("starting the consumer")?;
        tracing::info!(kind = kind.type_name(), queue = %queue, "consuming");
        loop {
            let next = tokio::select! {
                n = tokio::time::timeout(Duration::from_secs(5), consumer.next()) => n,
                _ = shutdown.asked() => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ch.basic_cancel(name.as_str().into(), BasicCancelOptions::default())).await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "shutting down".into())).await;
                    return Ok(());
                }
            };
            let first = match next {
                // Nothing for a while: make sure the connection is still alive.
                Err(_) => {
                    anyhow::ensure!(
                        conn.status().connected() && ch.status().connected(),
                        "the connection is gone"
                    );
                    continue;
                }
                Ok(None) => anyhow::bail!("the consumer was cancelled"),
                Ok(Some(d)) => d.context("receiving")?,
            };
            let mut deliveries = vec![first];
            while deliveries.len() < PREFETCH as usize {
                match consumer.next().now_or_never() {
                    Some(Some(Ok(d))) => deliveries.push(d),
                    _ => break,
                }
            }
            self.process(kind, deliveries, shutdown).await?;
        }
    }

    /// Handles deliveries, acking each once its effects are done. An error means the channel is
    /// unusable or we are shutting down: what was not acked is redelivered.
    async fn process(
        &self,
        kind: Kind,
        deliveries: Vec<Delivery>,
        shutdown: &Shutdown,
    ) -> anyhow::Result<()> {
        let mut good = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            match serde_json::from_slice::<Message>(&d.data) {
                Ok(m) if m.kind() == kind => good.push((d, m)),
                Ok(m) => {
                    self.dead_letter(
                        kind,
                        &d,
                        &format!(
                            "a {} message on the {} queue",
                            m.kind().type_name(),
                            kind.type_name()
                        ),
                    )
                    .await?
                }
                Err(e) => {
                    self.dead_letter(kind, &d, &format!("malformed message: {e}"))
                        .await?
                }
            }
        }
        // Keep each transaction bounded.
        let mut start = 0;
        while start < good.len() {
            let mut end = start;
            let mut events = 0;
            while end < good.len() && (end == start || events + good[end].1.len() <= MAX_EVENTS) {
                events += good[end].1.len();
                end += 1;
            }
            self.process_group(kind, &good[start..end], shutdown)
                .await?;
            start = end;
        }
        Ok(())
    }

    async fn process_group(
        &self,
        kind: Kind,
        group: &[(Delivery, Message)],
        shutdown: &Shutdown,
    ) -> anyhow::Result<()> {
        let batch = merge(group.iter().map(|(_, m)| m));
        let span = tracing::info_span!(
            "batch",
            kind = kind.type_name(),
            messages = group.len(),
            events = batch.len(),
            item.id = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        // A flash sale's batches are mostly of one item: name it.
        if let Batch::Orders(events) = &batch
            && let Some(first) = events.first()
            && events.iter().all(|e| e.item_id == first.item_id)
        {
            span.record("item.id", first.item_id.0);
        }
        let result = self
            .run_with_retries(kind, &batch, shutdown)
            .instrument(span.clone())
            .await?;
        span.record(
            "outcome",
            match &result {
                None => "ok",
                Some(_) if group.len() > 1 => "split",
                Some(_) => "dead_lettered",
            },
        );
        match result {
            None => {
                for (d, _) in group {
                    d.ack(BasicAckOptions::default()).await.context("acking")?;
                }
                metrics::counter!("seckill_worker_messages_total", "type" => kind.type_name(), "outcome" => "ok")
                    .increment(group.len() as u64);
                if let Batch::Orders(events) = &batch
                    && kind == Kind::PreparePayment
                {
                    // Accepted by the gateway → awaiting payment: the pipeline's drain lag.
                    let now = seckill_schema::snowflake::now_ms() as i64;
                    let lag = metrics::histogram!("seckill_order_drain_seconds");
                    for e in events {
                        lag.record((now - e.created_at_ms).max(0) as f64 / 1000.0);
                    }
                }
            }
            Some(e) if group.len() > 1 => {
                tracing::warn!(kind = kind.type_name(), error = %format!("{e:#}"), "a batch keeps failing; retrying its messages one by one");
                for one in group {
                    Box::pin(self.process_group(kind, std::slice::from_ref(one), shutdown)).await?;
                }
            }
            Some(e) => {
                let (d, _) = &group[0];
                self.dead_letter(kind, d, &format!("failed {ATTEMPTS} times: {e:#}"))
                    .await?;
            }
        }
        Ok(())
    }

    /// `Ok(None)` when the batch is done; `Ok(Some(e))` when it failed on its own `ATTEMPTS` times;
    /// `Err` when shutting down mid-wait.
    async fn run_with_retries(
        &self,
        kind: Kind,
        batch: &Batch,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Option<anyhow::Error>> {
        let mut fatal = 0;
        let mut wait = Duration::from_millis(50);
        loop {
            let started = Instant::now();
            match self.run(kind, batch).await {
                Ok(()) => {
                    metrics::histogram!("seckill_worker_handler_duration_seconds", "type" => kind.type_name())
                        .record(started.elapsed().as_secs_f64());
                    metrics::histogram!("seckill_worker_batch_size", "type" => kind.type_name())
                        .record(batch.len() as f64);
                    return Ok(None);
                }
                Err(Failure::Fatal(e)) => {
                    fatal += 1;
                    metrics::counter!("seckill_worker_messages_total", "type" => kind.type_name(), "outcome" => "error").increment(1);
                    if fatal >= ATTEMPTS {
                        return Ok(Some(e));
                    }
                    tracing::warn!(kind = kind.type_name(), error = %format!("{e:#}"), "batch failed; retrying");
                }
                Err(Failure::Transient(e)) => {
                    metrics::counter!("seckill_worker_messages_total", "type" => kind.type_name(), "outcome" => "retry").increment(1);
                    tracing::warn!(kind = kind.type_name(), error = %format!("{e:#}"), "a dependency is unavailable; the batch waits");
                    anyhow::ensure!(!shutdown.is_asked(), "shutting down while the batch waits");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn run(&self, kind: Kind, batch: &Batch) -> Result<(), Failure> {
        let effects = saga::handle(&self.db, kind, batch).await.map_err(|e| {
            if seckill_infra::db::is_connection_error(&e) || seckill_infra::db::is_retryable(&e) {
                Failure::Transient(e.into())
            } else {
                Failure::Fatal(e.into())
            }
        })?;
        self.apply(effects).await.map_err(Failure::Transient)
    }

    /// The effects of a committed batch: the Redis read model, units back in Redis, and the next
    /// messages, confirmed. Every step is idempotent, so a failure here re-runs the whole batch.
    async fn apply(&self, mut effects: Effects) -> anyhow::Result<()> {
        let client = &self.writer;
        let mut generations = Generations::default();
        // All at once: the client pipelines them, where awaiting each in turn made a batch of
        // 1,000 timeouts wait on 1,000 round trips in series.
        let closing: Vec<_> = effects
            .releases
            .iter()
            .map(|(o, status)| (o.event(), *status))
            .collect();
        let released = futures_util::future::try_join_all(
            closing
                .iter()
                .map(|(order, status)| self.scripts.release(client, order, *status)),
        )
        .await
        .context("returning units to Redis")?;
        for ((order, _), (outcome, generation)) in closing.iter().zip(released) {
            generations.saw(gene_of_item(order.item_id), generation);
            if outcome == Released::UnknownOrder {
                // Redis lost the order's record and its units with it (a rebuild counts the
                // database's live orders only): nothing to give back, but worth knowing.
                tracing::info!(order.id = %order.order_id, item.id = %order.item_id, "closed an order Redis has no record of; no units to return");
                metrics::counter!("seckill_worker_release_unknown_total").increment(1);
            }
        }
        let mirrored = self
            .scripts
            .mirror(client, &effects.statuses)
            .await
            .context("updating the read model")?;
        for (gene, generation) in &mirrored.generations.0 {
            generations.saw(*gene, *generation);
        }
        self.confirm(&generations).await?;
        let refused: HashSet<OrderId> = mirrored
            .orders
            .into_iter()
            .filter(|(_, m)| *m == Mirrored::Refused)
            .map(|(id, _)| id)
            .collect();
        if !refused.is_empty() {
            compensate_refused(&mut effects.publish, &refused);
        }
        if effects.statuses.iter().any(StatusUpdate::writes) {
            // For the gateways' order event streams. Pub/Sub forgets what no one hears, and a
            // stream re-reads the order when it (re)subscribes, so a lost message delays nothing
            // but a change no one was watching.
            let message =
                OrderChange::encode(effects.statuses.iter().filter(|u| u.writes()).map(|u| {
                    OrderChange {
                        order_id: u.order.order_id,
                        status: u.status,
                    }
                }));
            if let Err(e) = client
                .publish::<i64, _, _>(self.scripts.keys().order_changes(), message)
                .await
            {
                tracing::debug!(error = %e, "announcing order changes failed");
            }
        }
        if !effects.conflicts.is_empty() {
            self.order_id_conflicts(&effects.conflicts).await?;
        }
        self.publisher
            .publish_all(&effects.publish)
            .await
            .context("publishing follow-ups")?;
        Ok(())
    }

    /// Accepted orders whose id was stored as another order: an incident (two processes minted
    /// one id), logged once, counted, and dead-lettered with the events whole for a person.
    async fn order_id_conflicts(&self, conflicts: &[OrderEvent]) -> anyhow::Result<()> {
        let ids: Vec<String> = conflicts.iter().map(|e| e.order_id.to_string()).collect();
        tracing::error!(
            orders = %ids.join(","),
            "ORDER_CREATED for an order id stored as another order (two processes minted one id): \
             the stored order goes on; these events are dead-lettered for a person"
        );
        metrics::counter!("seckill_order_id_conflicts_total").increment(conflicts.len() as u64);
        let body = serde_json::to_vec(&Message::OrderCreated {
            events: conflicts.to_vec(),
        })
        .context("encoding the conflicting events")?;
        let mut headers = FieldTable::default();
        let (k, v) = broker::string_header(
            "x-seckill-reason",
            "order id conflict: the id is stored as another order",
        );
        headers.insert(k, v);
        let (k, v) =
            broker::string_header("x-seckill-queue", &self.topology.queue(Kind::OrderCreated));
        headers.insert(k, v);
        self.publisher
            .publish_raw(&self.topology.dead(), &body, headers)
            .await
            .context("dead-lettering conflicting orders")
    }

    /// Makes the batch's Redis writes as durable as the mode promises (in `replica` mode, a
    /// replica of each touched gene's server confirms them), then records the generations they
    /// reached in the database, which notices a Redis that later comes back without them.
    async fn confirm(&self, generations: &Generations) -> anyhow::Result<()> {
        if generations.is_empty() {
            return Ok(());
        }
        if let Some(commit) = &self.group_commit {
            let keys = self.scripts.keys();
            futures_util::future::try_join_all(
                generations
                    .0
                    .keys()
                    .map(|gene| async move { commit.replicated_for(&keys.state(*gene)).await }),
            )
            .await
            .context("no Redis replica confirmed the read model's writes")?;
        }
        seckill_infra::db::record_redis_generations(&self.db, &generations.0)
            .await
            .context("recording Redis's write generations")?;
        Ok(())
    }

    async fn dead_letter(&self, kind: Kind, d: &Delivery, reason: &str) -> anyhow::Result<()> {
        tracing::error!(kind = kind.type_name(), reason, "dead-lettering a message");
        let mut headers = FieldTable::default();
        let (k, v) = broker::string_header("x-seckill-reason", reason);
        headers.insert(k, v);
        let (k, v) = broker::string_header("x-seckill-queue", &self.topology.queue(kind));
        headers.insert(k, v);
        self.publisher
            .publish_raw(&self.topology.dead(), &d.data, headers)
            .await
            .context("publishing to the dead-letter queue")?;
        d.ack(BasicAckOptions::default()).await.context("acking")?;
        metrics::counter!("seckill_worker_dead_lettered_total", "type" => kind.type_name())
            .increment(1);
        Ok(())
    }
}

/// Orders Redis refused to adopt after a rebuild (no room left for them) do not go on: their
/// `LOCK_INVENTORY` and `PREPARE_PAYMENT` follow-ups become one `INVENTORY_COMPENSATE`, which closes
/// them `FAILED` while their stock is not locked in the database.
fn compensate_refused(publish: &mut Vec<Message>, refused: &HashSet<OrderId>) {
    let mut failed = Vec::new();
    for m in publish.iter_mut() {
        if let Message::LockInventory { events } | Message::PreparePayment { events } = m {
            let (out, keep): (Vec<_>, Vec<_>) = std::mem::take(events)
                .into_iter()
                .partition(|e| refused.contains(&e.order_id));
            *events = keep;
            failed.extend(out);
        }
    }
    publish.retain(|m| !m.is_empty());
    if !failed.is_empty() {
        tracing::warn!(
            orders = failed.len(),
            "orders accepted before Redis lost its data found no room after the rebuild; compensating them"
        );
        metrics::counter!("seckill_worker_refused_after_rebuild_total")
            .increment(failed.len() as u64);
        publish.push(Message::InventoryCompensate { events: failed });
    }
}

/// One batch from many messages of one type; an event repeated within it counts once (a payment
/// by its id and status: a refund carries the id of the success it gives back).
fn merge<'a>(messages: impl Iterator<Item = &'a Message>) -> Batch {
    let mut orders = Vec::new();
    let mut payments = Vec::new();
    let mut seen_orders = HashSet::new();
    let mut seen_created = HashSet::new();
    let mut seen_payments = HashSet::new();
    for m in messages {
        match m {
            Message::PaymentResult { events } => payments.extend(
                events
                    .iter()
                    .filter(|e| seen_payments.insert((e.payment_id.clone(), e.status)))
                    .cloned(),
            ),
            // An ORDER_CREATED is a repeat only when it is the same order to the letter: another
            // order under an id seen already stays in, for the saga to find the conflict.
            Message::OrderCreated { events } => orders.extend(
                events
                    .iter()
                    .filter(|e| seen_created.insert((*e).clone()))
                    .cloned(),
            ),
            other => orders.extend(
                other
                    .order_events()
                    .unwrap_or_default()
                    .iter()
                    .filter(|e| seen_orders.insert(e.order_id))
                    .cloned(),
            ),
        }
    }
    if payments.is_empty() {
        Batch::Orders(orders)
    } else {
        Batch::Payments(payments)
    }
}
