//! The outbox relay: moves `ORDER_CREATED` events from the Redis outbox streams (one per shard
//! gene) to the durable exchange, as batches, with publisher confirms.
//!
//! One relay at a time moves a gene's stream: it holds the gene's relay lease (a key with a
//! time to live, renewed while it relays; `lua/relay_lease.lua`), reads the stream with plain
//! `XREAD` from where it is, and deletes entries (`XTRIM MINID`) only once the broker confirmed
//! the message that carries them. So whatever is in a stream is not yet known to be on the
//! broker: a relay that takes a lease (at start, or after another relay died and its lease ran
//! out) reads its stream from the beginning and publishes everything again; workers deduplicate
//! by order id. A consumer group would do the same bookkeeping inside Redis at a cost the hot
//! path pays: every entry read through a group was written to the append-only file again as an
//! `XCLAIM`, then acknowledged (5 µs of Redis's time per order, against 1 µs for `XREAD` and the
//! trim).

use anyhow::Context;
use fred::prelude::*;
use seckill_infra::broker::Publisher;
use seckill_infra::lifecycle::Shutdown;
use seckill_schema::outbox;
use seckill_schema::{Message, OrderEvent};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events per AMQP message, at most.
pub const BATCH: u64 = 2000;
/// A relay that read less than a full batch waits until this long after that read began before
/// it reads again, so a message carries this long's orders. Each message costs the broker, the
/// workers and the database about as much whatever its size (measured on the in-stock sale:
/// 90-100 messages of ~200 orders cost 185-220 CPU-µs per order over every process; 28-42
/// messages, at a window of 50-100 ms, 135-156), so under load fewer, fuller messages are most of
/// what the pipeline's cost per order is; an order waits at most this long more to be `CREATED`.
pub const WINDOW: Duration = Duration::from_millis(100);

/// A relay's lease outlives it by this much: a stream whose relay died waits this long for
/// another.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// How often a relay renews its lease, and how often one without a lease asks for it.
const RENEW_EVERY: Duration = Duration::from_secs(1);

pub struct Relay {
    /// A connection of its own: `XREAD … BLOCK` holds it.
    pub redis: Client,
    pub control: Pool,
    pub publisher: Arc<Publisher>,
    pub scripts: seckill_infra::scripts::Scripts,
    pub gene: u8,
    pub stream: String,
    /// This relay's lease token.
    pub token: String,
}

/// A stream entry: its id and its field-value pairs.
type Entry = (String, Vec<(String, String)>);

impl Relay {
    /// Relays until `draining` turns true and the stream has nothing new, then gives its lease
    /// up and returns.
    pub async fn run(self, mut draining: Shutdown) {
        // Where this relay reads from, while it holds the lease.
        let mut cursor: Option<String> = None;
        let mut renewed = Instant::now() - RENEW_EVERY;
        let mut backoff = Duration::from_millis(50);
        loop {
            let stopping = draining.is_asked();
            let step = async {
                if cursor.is_none() || renewed.elapsed() >= RENEW_EVERY {
                    let held = self.hold().await?;
                    renewed = Instant::now();
                    match (held, &cursor) {
                        // Taken now: everything still in the stream may be unpublished.
                        (true, None) => cursor = Some("0-0".to_owned()),
                        (true, Some(_)) => {}
                        (false, _) => cursor = None,
                    }
                }
                match cursor.as_mut() {
                    None => Ok::<_, anyhow::Error>(None),
                    Some(cursor) => {
                        let block = if stopping { 50 } else { 1000 };
                        let started = Instant::now();
                        let n = self.read_new(cursor, block).await?;
                        if n > 0 && (n as u64) < BATCH && !stopping && started.elapsed() < WINDOW {
                            tokio::select! {
                                _ = tokio::time::sleep(WINDOW - started.elapsed()) => {}
                                _ = draining.asked() => {}
                            }
                        }
                        Ok(Some(n))
                    }
                }
            };
            match step.await {
                // Another relay has the stream: ask again in a while.
                Ok(None) => {
                    if stopping {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(RENEW_EVERY) => {}
                        _ = draining.asked() => {}
                    }
                }
                Ok(Some(0)) if stopping => {
                    if let Err(e) = self.release().await {
                        tracing::debug!(stream = %self.stream, error = %e, "giving up the relay lease failed; it runs out by itself");
                    }
                    return;
                }
                Ok(Some(_)) => backoff = Duration::from_millis(50),
                Err(e) => {
                    metrics::counter!("seckill_relay_failures_total").increment(1);
                    if stopping {
                        // What is left stays in the stream for the next relay.
                        tracing::warn!(stream = %self.stream, error = %format!("{e:#}"), "relay stopped before the stream was empty");
                        return;
                    }
                    tracing::warn!(stream = %self.stream, error = %format!("{e:#}"), "relay step failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = draining.asked() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Takes or renews the lease: true when this relay holds it.
    async fn hold(&self) -> anyhow::Result<bool> {
        self.lease(true).await.context("holding the relay lease")
    }

    async fn release(&self) -> anyhow::Result<()> {
        self.lease(false)
            .await
            .context("giving up the relay lease")?;
        Ok(())
    }

    async fn lease(&self, hold: bool) -> Result<bool, seckill_infra::scripts::ScriptError> {
        let ttl = LEASE_TTL.as_millis() as u64;
        self.scripts
            .relay_lease(self.control.next(), self.gene, &self.token, ttl, hold)
            .await
    }

    /// Reads what follows `cursor`, relays it, and moves `cursor` past it.
    async fn read_new(&self, cursor: &mut String, block_ms: u64) -> anyhow::Result<usize> {
        // Read raw: an empty read is a nil reply, which fred's map conversion rejects.
        let reply: Value = self
            .redis
            .xread(Some(BATCH), Some(block_ms), &self.stream, cursor.as_str())
            .await
            .context("XREAD")?;
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
            other => anyhow::bail!("unexpected XREAD reply {other:?}"),
        };
        let Some(last) = entries.last().map(|(id, _)| id.clone()) else {
            return Ok(0);
        };
        let n = entries.len();
        self.forward(entries).await?;
        // Confirmed: the entries up to `last` can go, whoever reads the stream next.
        let _: i64 = self
            .control
            .next()
            .xtrim(&self.stream, ("MINID", next_id(&last)?))
            .await
            .context("XTRIM")?;
        *cursor = last;
        Ok(n)
    }

    async fn forward(&self, entries: Vec<Entry>) -> anyhow::Result<()> {
        let mut events: Vec<OrderEvent> = Vec::with_capacity(entries.len());
        for (id, fields) in &entries {
            match fields
                .iter()
                .find(|(k, _)| k == outbox::FIELD)
                .map(|(_, e)| outbox::decode(e))
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
        metrics::counter!("seckill_relay_published_total").increment(n as u64);
        metrics::counter!("seckill_relay_messages_total").increment(1);
        Ok(())
    }
}

/// The smallest stream id after `id` (`ms-seq` → `ms-(seq+1)`), for `XTRIM MINID`.
fn next_id(id: &str) -> anyhow::Result<String> {
    let (ms, seq) = id
        .split_once('-')
        .and_then(|(ms, seq)| Some((ms.parse::<u64>().ok()?, seq.parse::<u64>().ok()?)))
        .with_context(|| format!("a stream id {id:?}"))?;
    Ok(match seq.checked_add(1) {
        Some(seq) => format!("{ms}-{seq}"),
        None => format!("{}-0", ms + 1),
    })
}

impl Relay {
    /// An entry the relay cannot read goes to `{ns}.dead`, confirmed, before it is acked.
    async fn dead_letter(&self, id: &str, fields: &[(String, String)]) -> anyhow::Result<()> {
        tracing::error!(stream = %self.stream, entry = %id, "an undecodable outbox entry; dead-lettering it");
        let fields: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
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

/// `[[id, [field, value, …]], …]` (RESP2) or with field maps (RESP3).
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
            let mut fields = Vec::with_capacity(1);
            match fields_v {
                Value::Array(kv) => {
                    for chunk in kv.chunks(2) {
                        if let [k, v] = chunk
                            && let (Some(k), Some(v)) = (k.as_string(), v.as_string())
                        {
                            fields.push((k, v));
                        }
                    }
                }
                Value::Map(map) => {
                    for (k, v) in map.inner() {
                        if let (Some(k), Some(v)) =
                            (k.as_str().map(|s| s.to_string()), v.as_string())
                        {
                            fields.push((k, v));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_id_is_the_smallest_after() {
        assert_eq!(next_id("1700000000000-0").unwrap(), "1700000000000-1");
        assert_eq!(next_id("5-41").unwrap(), "5-42");
        assert_eq!(next_id(&format!("5-{}", u64::MAX)).unwrap(), "6-0");
        for bad in ["", "5", "a-1", "5-b", "5-1-2"] {
            assert!(next_id(bad).is_err(), "{bad}");
        }
    }
}
