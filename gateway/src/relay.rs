//! The outbox relay: moves `ORDER_CREATED` events from the Redis outbox streams (one per shard
//! gene) to the durable exchange, as batches, with publisher confirms. A stream entry is acked and
//! deleted only after the broker confirmed the message that carries it, so a relay killed mid-way
//! loses nothing: its pending entries go idle, and any relay (another gateway, or this one after a
//! restart) claims them with `XAUTOCLAIM` and publishes them again. Workers deduplicate by order id.

use anyhow::Context;
use fred::prelude::*;
use seckill_domain::outbox;
use seckill_domain::{Message, OrderEvent};
use seckill_infra::broker::Publisher;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub const GROUP: &str = "relay";
/// Events per AMQP message.
pub const BATCH: u64 = 500;
/// A pending entry idle this long belongs to a relay presumed dead.
pub const CLAIM_IDLE: Duration = Duration::from_secs(5);
const CLAIM_EVERY: Duration = Duration::from_secs(1);

pub struct Relay {
    pub redis: Client,
    pub control: Pool,
    pub publisher: Arc<Publisher>,
    pub scripts: seckill_domain::scripts::Scripts,
    pub stream: String,
    pub consumer: String,
}

type Entry = (String, HashMap<String, String>);

impl Relay {
    /// Relays until `draining` turns true and the stream has nothing new, then returns.
    pub async fn run(self, mut draining: watch::Receiver<bool>) {
        if let Err(e) = self.ensure_group().await {
            tracing::warn!(stream = %self.stream, error = %e, "creating the relay group failed; will retry");
        }
        let mut last_claim = Instant::now() - CLAIM_EVERY;
        let mut backoff = Duration::from_millis(50);
        loop {
            let stopping = *draining.borrow();
            let step = async {
                if last_claim.elapsed() >= CLAIM_EVERY {
                    last_claim = Instant::now();
                    self.claim_idle().await?;
                }
                let block = if stopping { 50 } else { 1000 };
                self.read_new(block).await
            };
            match step.await {
                Ok(0) if stopping => return,
                Ok(_) => backoff = Duration::from_millis(50),
                Err(e) => {
                    metrics::counter!("seckill_relay_failures_total").increment(1);
                    if stopping {
                        // What is left stays in the stream for the next relay to claim.
                        tracing::warn!(stream = %self.stream, error = %format!("{e:#}"), "relay stopped before the stream was empty");
                        return;
                    }
                    tracing::warn!(stream = %self.stream, error = %format!("{e:#}"), "relay step failed; retrying");
                    // The server's text is in the cause; `to_string` shows only the context.
                    if format!("{e:#}").contains("NOGROUP") {
                        let _ = self.ensure_group().await;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = draining.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn ensure_group(&self) -> anyhow::Result<()> {
        // `0`, not `$`: entries written before any relay existed are relayed too.
        let res: Result<(), _> = self
            .control
            .xgroup_create(&self.stream, GROUP, "0", true)
            .await;
        match res {
            Err(e) if !e.to_string().contains("BUSYGROUP") => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn read_new(&self, block_ms: u64) -> anyhow::Result<usize> {
        // Read raw: an empty read is a nil reply, which fred's map conversion rejects.
        let reply: Value = self
            .redis
            .xreadgroup(
                GROUP,
                self.consumer.as_str(),
                Some(BATCH),
                Some(block_ms),
                false,
                &self.stream,
                ">",
            )
            .await
            .context("XREADGROUP")?;
        let entries: Vec<Entry> = match reply {
            Value::Null => Vec::new(),
            Value::Array(streams) => streams
                .into_iter()
                .filter_map(|s| match s {
                    Value::Array(mut pair) if pair.len() == 2 => {
                        Some(parse_entries(pair.remove(1)))
                    }
                    _ => None,
                })
                .flatten()
                .collect(),
            Value::Map(map) => map.inner().into_values().flat_map(parse_entries).collect(),
            other => anyhow::bail!("unexpected XREADGROUP reply {other:?}"),
        };
        let n = entries.len();
        self.forward(entries).await?;
        Ok(n)
    }

    async fn claim_idle(&self) -> anyhow::Result<()> {
        let mut cursor = "0-0".to_owned();
        loop {
            let reply: Value = self
                .control
                .next()
                .custom(
                    fred::cmd!("XAUTOCLAIM"),
                    vec![
                        self.stream.clone(),
                        GROUP.to_owned(),
                        self.consumer.clone(),
                        CLAIM_IDLE.as_millis().to_string(),
                        cursor.clone(),
                        "COUNT".into(),
                        BATCH.to_string(),
                    ],
                )
                .await
                .context("XAUTOCLAIM")?;
            let (next, entries) = parse_autoclaim(reply)?;
            if !entries.is_empty() {
                tracing::info!(stream = %self.stream, n = entries.len(), "claimed entries of a dead relay");
                self.forward(entries).await?;
            }
            if next == "0-0" {
                return Ok(());
            }
            cursor = next;
        }
    }

    async fn forward(&self, entries: Vec<Entry>) -> anyhow::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
        let mut events: Vec<OrderEvent> = Vec::with_capacity(entries.len());
        for (id, fields) in &entries {
            match fields
                .get(outbox::FIELD)
                .map(|e| outbox::decode(e))
                .and_then(Result::ok)
            {
                Some(ev) => events.push(ev),
                // Kept, not dropped: an operator can read it in `{ns}.dead` and act.
                None => self.dead_letter(id, fields).await?,
            }
        }
        let n = events.len();
        if n > 0 {
            self.publisher
                .publish(&Message::OrderCreated { events })
                .await
                .context("publishing ORDER_CREATED")?;
        }
        let _: i64 = self
            .control
            .xack(&self.stream, GROUP, ids)
            .await
            .context("XACK")?;
        // A relay killed here leaves acked entries that the next trim, by any relay, drops.
        self.scripts
            .trim_outbox(self.control.next(), &self.stream, GROUP)
            .await
            .context("trimming the outbox")?;
        metrics::counter!("seckill_relay_published_total").increment(n as u64);
        metrics::counter!("seckill_relay_messages_total").increment(1);
        Ok(())
    }
}

impl Relay {
    /// An entry the relay cannot read goes to `{ns}.dead`, confirmed, before it is acked.
    async fn dead_letter(&self, id: &str, fields: &HashMap<String, String>) -> anyhow::Result<()> {
        tracing::error!(stream = %self.stream, entry = %id, "an undecodable outbox entry; dead-lettering it");
        let body = serde_json::json!({"stream": self.stream, "entry": id, "fields": fields});
        let mut headers = lapin::types::FieldTable::default();
        let (k, v) = seckill_infra::broker::string_header(
            "x-seckill-reason",
            "an outbox entry that is not an ORDER_CREATED event",
        );
        headers.insert(k, v);
        self.publisher
            .publish_raw(
                &self.publisher.topology().dead(),
                body.to_string().as_bytes(),
                headers,
            )
            .await
            .context("dead-lettering an undecodable outbox entry")?;
        metrics::counter!("seckill_relay_dead_lettered_total").increment(1);
        Ok(())
    }
}

/// `XAUTOCLAIM` answers `[next cursor, [[id, [field, value, …]] | nil, …], deleted ids]`.
fn parse_autoclaim(reply: Value) -> anyhow::Result<(String, Vec<Entry>)> {
    let Value::Array(mut parts) = reply else {
        anyhow::bail!("unexpected XAUTOCLAIM reply");
    };
    anyhow::ensure!(parts.len() >= 2, "short XAUTOCLAIM reply");
    let entries_v = parts.remove(1);
    let next = parts.remove(0).as_string().unwrap_or_else(|| "0-0".into());
    Ok((next, parse_entries(entries_v)))
}

/// `[[id, [field, value, …]] | nil, …]` (RESP2) or with field maps (RESP3).
fn parse_entries(v: Value) -> Vec<Entry> {
    let mut entries = Vec::new();
    if let Value::Array(items) = v {
        for item in items {
            let Value::Array(mut pair) = item else {
                continue;
            };
            if pair.len() != 2 {
                continue;
            }
            let fields_v = pair.remove(1);
            let Some(id) = pair.remove(0).as_string() else {
                continue;
            };
            let mut fields = HashMap::new();
            match fields_v {
                Value::Array(kv) => {
                    for chunk in kv.chunks(2) {
                        if let [k, v] = chunk
                            && let (Some(k), Some(v)) = (k.as_string(), v.as_string())
                        {
                            fields.insert(k, v);
                        }
                    }
                }
                Value::Map(map) => {
                    for (k, v) in map.inner() {
                        if let (Some(k), Some(v)) =
                            (k.as_str().map(|s| s.to_string()), v.as_string())
                        {
                            fields.insert(k, v);
                        }
                    }
                }
                _ => {}
            }
            entries.push((id, fields));
        }
    }
    entries
}

/// Entries waiting in the outbox streams (not yet confirmed by the broker), for `/metrics`.
pub async fn backlog(redis: &Pool, streams: &[String]) -> anyhow::Result<i64> {
    let mut total = 0;
    for s in streams {
        let n: i64 = redis.xlen(s).await?;
        total += n;
    }
    Ok(total)
}
