//! RabbitMQ: the topology every process declares at start, and a supervised publisher.
//!
//! lapin's automatic recovery has an open report of hanging after a broker restart, so nothing
//! here relies on it: a connection that errors, or a call that passes its deadline, is dropped and
//! rebuilt on the next use.
//!
//! One node or a cluster: `SECKILL_AMQP_URL` may list a cluster's nodes, comma-separated. Each
//! connection a process makes starts at the next node of a rotation that begins at a random one,
//! and goes on to the others if that node does not answer; so a process's connections spread over
//! the cluster, and a rebuilt connection moves on from a node that went away.
//!
//! Every queue is a quorum queue, replicated over the cluster's nodes: the event queues, the delay
//! queues (message TTL and at-least-once dead-lettering, which RabbitMQ 3.10 has for quorum
//! queues) and `{ns}.dead`.

use anyhow::{Context, bail};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use seckill_schema::messages::{Kind, Message};
use std::time::Duration;
use tokio::sync::Mutex;

/// How long one broker call may take before the connection is presumed dead.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries of one message before its queue dead-letters it into `{ns}.dead`. A quorum queue
/// counts every return of an unacked message, and a consumer whose connection breaks returns all
/// it holds (up to its prefetch): the limit is a backstop for a message that crashes the workers
/// process each time, high enough that the reconnects of a node's loss never reach it. A message
/// that merely fails is dead-lettered by the workers themselves after a few attempts.
pub const DELIVERY_LIMIT: i64 = 100;
const PERSISTENT: u8 = 2;

/// Names of the exchange and queues of one namespace.
#[derive(Debug, Clone)]
pub struct Topology {
    ns: String,
    payment_timeout: Duration,
    auto_complete: Duration,
}

impl Topology {
    pub fn new(namespace: &str, payment_timeout: Duration) -> Self {
        Topology {
            ns: namespace.to_owned(),
            payment_timeout,
            auto_complete: Duration::from_secs(crate::config::DEFAULT_AUTO_COMPLETE_SECS),
        }
    }

    /// The topology a process of this configuration declares and publishes to.
    pub fn of(config: &crate::Config) -> Self {
        Topology {
            auto_complete: config.auto_complete,
            ..Topology::new(&config.namespace, config.payment_timeout)
        }
    }

    pub fn exchange(&self) -> String {
        format!("{}.events", self.ns)
    }

    pub fn queue(&self, kind: Kind) -> String {
        format!("{}.q.{}", self.ns, kind.routing_key())
    }

    pub fn dead(&self) -> String {
        format!("{}.dead", self.ns)
    }

    /// The delay of a kind published late (through a TTL queue), or `None`.
    pub fn delay(&self, kind: Kind) -> Option<Duration> {
        match kind {
            Kind::OrderTimeout => Some(self.payment_timeout),
            Kind::OrderAutoComplete => Some(self.auto_complete),
            _ => None,
        }
    }

    /// The TTL queue that holds a delayed kind's events (`ORDER_TIMEOUT` until the payment window
    /// has passed, `ORDER_AUTO_COMPLETE` until the buyer's time to confirm has); one per distinct
    /// delay, so processes configured differently never clash on its arguments.
    pub fn delay_queue_of(&self, kind: Kind, delay: Duration) -> String {
        format!(
            "{}.delay.{}.{}s",
            self.ns,
            kind.routing_key(),
            delay.as_secs()
        )
    }

    /// The payment timeout's delay queue.
    pub fn delay_queue(&self) -> String {
        self.delay_queue_of(Kind::OrderTimeout, self.payment_timeout)
    }

    /// Exchange and routing key a message of this kind is published with.
    pub fn route(&self, kind: Kind) -> (String, String) {
        match self.delay(kind) {
            Some(delay) => (String::new(), self.delay_queue_of(kind, delay)),
            None => (self.exchange(), kind.routing_key().to_owned()),
        }
    }

    /// Declares everything, idempotently, on a channel of its own. Every process calls it at start
    /// and after a reconnect.
    pub async fn declare(&self, conn: &Connection) -> anyhow::Result<()> {
        let ch = &mut conn.create_channel().await.context("opening a channel")?;
        ch.exchange_declare(
            self.exchange().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .context("declaring the events exchange")?;
        declare_quorum(conn, ch, &self.dead(), FieldTable::default())
            .await
            .context("declaring the dead-letter queue")?;
        for &kind in Kind::ALL {
            let mut args = FieldTable::default();
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(DELIVERY_LIMIT),
            );
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(self.dead().into()),
            );
            let queue = self.queue(kind);
            declare_quorum(conn, ch, &queue, args)
                .await
                .with_context(|| format!("declaring queue {queue}"))?;
            ch.queue_bind(
                queue.as_str().into(),
                self.exchange().into(),
                kind.routing_key().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("binding queue {queue}"))?;
        }
        for &kind in Kind::ALL {
            let Some(delay) = self.delay(kind) else {
                continue;
            };
            let mut args = FieldTable::default();
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(delay.as_millis() as i64),
            );
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(self.exchange().into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(kind.routing_key().into()),
            );
            // An expired message is dead-lettered into the events exchange at least once: the
            // queue keeps it until the exchange's queues confirm it (which needs the queue to
            // refuse publishes past a limit rather than drop its oldest messages).
            args.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString("at-least-once".into()),
            );
            args.insert(
                "x-overflow".into(),
                AMQPValue::LongString("reject-publish".into()),
            );
            let queue = self.delay_queue_of(kind, delay);
            declare_quorum(conn, ch, &queue, args)
                .await
                .with_context(|| format!("declaring the delay queue {queue}"))?;
        }
        let _ = ch.close(200, "declared".into()).await;
        Ok(())
    }
}

/// Declares a durable quorum queue with `args`. A queue of that name declared before as a classic
/// queue (by an earlier version) is moved over when it is empty; one that still holds messages is
/// used as it is, with a warning, until it is drained.
/// A refusal closes the channel: `ch` is then replaced by a fresh one, for the caller to go on with.
async fn declare_quorum(
    conn: &Connection,
    ch: &mut Channel,
    queue: &str,
    mut args: FieldTable,
) -> anyhow::Result<()> {
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let refused = match ch.queue_declare(queue.into(), durable, args.clone()).await {
        Ok(_) => return Ok(()),
        Err(e) if e.to_string().contains("PRECONDITION_FAILED") => e,
        Err(e) => return Err(e.into()),
    };
    tracing::debug!(queue, error = %refused, "the queue exists with other arguments");
    *ch = conn.create_channel().await.context("opening a channel")?;
    let look = &*ch;
    let old = look
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .context("looking at the existing queue")?;
    if old.message_count() > 0 {
        tracing::warn!(
            queue,
            messages = old.message_count(),
            "the queue exists as a classic queue with messages in it: used as it is until it is \
             empty, then made a quorum queue at a later start"
        );
        return Ok(());
    }
    look.queue_delete(
        queue.into(),
        lapin::options::QueueDeleteOptions {
            if_empty: true,
            ..Default::default()
        },
    )
    .await
    .context("deleting the empty classic queue")?;
    look.queue_declare(queue.into(), durable, args)
        .await
        .context("declaring the quorum queue")?;
    tracing::info!(
        queue,
        "an empty classic queue of an earlier version is a quorum queue now"
    );
    Ok(())
}

/// The nodes `SECKILL_AMQP_URL` lists (one, or a cluster's, comma-separated).
pub fn nodes(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Connects to the next node of this process's rotation (which starts at a random node), or, if
/// it does not answer, to the ones after it.
pub async fn connect(urls: &str, name: &str) -> anyhow::Result<Connection> {
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicUsize> = std::sync::OnceLock::new();
    let nodes = nodes(urls);
    anyhow::ensure!(!nodes.is_empty(), "SECKILL_AMQP_URL names no node");
    let start = NEXT
        .get_or_init(|| std::sync::atomic::AtomicUsize::new(rand::random::<u32>() as usize))
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut failures = Vec::new();
    for i in 0..nodes.len() {
        let url = nodes[(start + i) % nodes.len()];
        let props = ConnectionProperties::default().with_connection_name(name.into());
        match tokio::time::timeout(CALL_TIMEOUT, Connection::connect(url, props)).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => failures.push(format!("{}: {e}", redact(url))),
            Err(_) => failures.push(format!("{}: timed out", redact(url))),
        }
    }
    bail!("connecting to RabbitMQ: {}", failures.join("; "))
}

/// A node's URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let auth = &url[scheme + 3..at];
            let user = auth.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

pub fn persistent() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type("application/json".into())
}

pub fn string_header(name: &str, value: &str) -> (ShortString, AMQPValue) {
    (name.into(), AMQPValue::LongString(value.into()))
}

/// A publisher with confirms over a connection it owns and rebuilds when it breaks.
pub struct Publisher {
    url: String,
    name: String,
    topology: Topology,
    link: Mutex<Option<(Connection, Channel)>>,
}

impl Publisher {
    pub fn new(url: &str, name: &str, topology: Topology) -> Self {
        Publisher {
            url: url.to_owned(),
            name: name.to_owned(),
            topology,
            link: Mutex::new(None),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
        let mut link = self.link.lock().await;
        if let Some((conn, ch)) = link.as_ref()
            && conn.status().connected()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        if let Some((conn, _)) = link.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                conn.close(200, "reconnecting".into()),
            )
            .await;
        }
        let conn = connect(&self.url, &self.name).await?;
        let ch = conn.create_channel().await.context("opening a channel")?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        tokio::time::timeout(CALL_TIMEOUT, self.topology.declare(&conn))
            .await
            .context("declaring the topology timed out")??;
        *link = Some((conn, ch.clone()));
        Ok(ch)
    }

    async fn invalidate(&self) {
        if let Some((conn, _)) = self.link.lock().await.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                conn.close(200, "publish failed".into()),
            )
            .await;
        }
    }

    /// Is the broker reachable right now (for `/readyz`)?
    pub async fn ready(&self) -> bool {
        tokio::time::timeout(CALL_TIMEOUT, self.channel())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Publishes every message, persistent, all in flight at once, and returns once the broker
    /// confirmed them all. Any nack, error or timeout fails the whole call: the caller retries,
    /// and the consumers deduplicate, so at-least-once is the right delivery.
    pub async fn publish_all(&self, messages: &[Message]) -> anyhow::Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let result = tokio::time::timeout(CALL_TIMEOUT, self.publish_inner(messages)).await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.invalidate().await;
                Err(e)
            }
            Err(_) => {
                self.invalidate().await;
                bail!("publisher confirm timed out")
            }
        }
    }

    pub async fn publish(&self, message: &Message) -> anyhow::Result<()> {
        self.publish_all(std::slice::from_ref(message)).await
    }

    /// Publishes raw bytes to a queue through the default exchange, confirmed (the dead-letter path).
    pub async fn publish_raw(
        &self,
        queue: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> anyhow::Result<()> {
        let ch = self.channel().await?;
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                persistent().with_headers(headers),
            )
            .await?;
        let confirmation = tokio::time::timeout(CALL_TIMEOUT, confirm)
            .await
            .context("confirm timed out")??;
        if !confirmation.is_ack() {
            bail!("broker nacked a message to {queue}");
        }
        Ok(())
    }

    async fn publish_inner(&self, messages: &[Message]) -> anyhow::Result<()> {
        let ch = self.channel().await?;
        let mut confirms = Vec::with_capacity(messages.len());
        for m in messages {
            let (exchange, key) = self.topology.route(m.kind());
            let confirm = ch
                .basic_publish(
                    exchange.into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    &m.to_json(),
                    persistent(),
                )
                .await
                .context("publishing")?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            let c = confirm.await.context("waiting for a publisher confirm")?;
            if !c.is_ack() {
                bail!("the broker nacked a message");
            }
        }
        Ok(())
    }
}
