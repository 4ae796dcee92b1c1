//! The seckill gateway: a lean hyper server whose hot path (`POST /seckill`) is one Redis script,
//! and the outbox relay that carries accepted orders to RabbitMQ.

pub mod api;
pub mod catalog;
pub mod clock;
mod conn;
mod error;
pub mod handlers;
pub mod lanes;
pub mod layout;
pub mod openapi;
pub mod ratelimit;
pub mod reader;
pub mod relay;
pub mod request;
mod route_metrics;
pub mod routes;
pub mod soldout;
pub mod state;
pub mod streams;
pub mod timer;
pub mod views;

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use seckill_infra::Config;
use seckill_infra::broker::{Publisher, Topology};
use seckill_infra::durability::{Durability, DurabilityWatch};
use seckill_infra::lifecycle::{Shutdown, Stopper};
use seckill_infra::recovery::Recovery;
use seckill_infra::replication::{self, GroupCommit};
use seckill_infra::scripts::Scripts;
use seckill_schema::Keys;
use state::State;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long in-flight requests get to finish after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// One auto-pipelined connection carries the hot path: every command that queues while a write
/// is in flight joins the next write, so fewer connections mean fuller pipelines and fewer
/// syscalls (measured on 2 cores: 1 connection 16.1k purchases/s, 2: 14.8k, 8: 15.0k).
const REDIS_CONNECTIONS: usize = 1;

pub struct Application {
    listener: TcpListener,
    state: Arc<State>,
    lease_token: String,
    /// The order changes the workers announce, for the order event streams.
    changes: streams::Changes,
    stopper: Stopper,
    shutdown: Shutdown,
}

impl Application {
    /// Connects to Redis and RabbitMQ, leases a node id, and binds `SECKILL_HTTP_ADDR` (port 0
    /// picks a free port; see [`Application::port`]).
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let metrics = seckill_infra::telemetry::metrics();
        let redis = seckill_infra::redis::pool(&config.redis_url, REDIS_CONNECTIONS).await?;
        let scripts = Scripts::new(Keys::new(&config.namespace));
        let lease_token = format!(
            "gateway-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let (stopper, shutdown) = Shutdown::new();
        let group_commit = (config.redis_durability == Durability::Replica)
            .then(|| GroupCommit::new(redis.next().clone(), replication::DEFAULT_TIMEOUT));
        let recovery = Recovery::new(
            redis.clone(),
            scripts.clone(),
            &config.database_url,
            None,
            group_commit.clone(),
        );
        // A free node lease starts above the node's newest id in the database.
        let floor = {
            let recovery = recovery.clone();
            move || {
                let recovery = recovery.clone();
                async move { recovery.db().await.cloned() }
            }
        };
        let ids = match config.node_id {
            Some(n) => Arc::new(seckill_schema::snowflake::Snowflake::new(n)),
            None => {
                let ids =
                    seckill_infra::lease::acquire(&scripts, &redis, &lease_token, &floor).await?;
                // Renewed from now on: the generator mints only while the lease is confirmed.
                tokio::spawn(seckill_infra::lease::renew(
                    scripts.clone(),
                    redis.clone(),
                    lease_token.clone(),
                    ids.clone(),
                    floor,
                    shutdown.clone(),
                ));
                ids
            }
        };
        let topology = Topology::of(&config);
        let publisher = Arc::new(Publisher::new(
            &config.amqp_url,
            &format!("{}/seckill-gateway", config.namespace),
            topology,
        ));
        // Declares the topology before the first order can be relayed.
        anyhow::ensure!(
            publisher.ready().await,
            "RabbitMQ is not reachable at start"
        );
        let listener = seckill_infra::net::listen(config.http_addr)
            .with_context(|| format!("binding SECKILL_HTTP_ADDR={}", config.http_addr))?;
        let durability = DurabilityWatch::spawn(
            redis.next().clone(),
            config.redis_durability,
            seckill_infra::durability::WATCH_INTERVAL,
            shutdown.clone(),
        );
        // Known before the first purchase: the gateway sells only while Redis keeps what the
        // mode promises.
        durability.check_now().await;
        let changes =
            streams::Changes::subscribe(&config.redis_url, scripts.keys().order_changes()).await?;
        let parts = state::Parts {
            ids,
            publisher,
            metrics,
            durability,
            recovery,
            group_commit,
        };
        let state = Arc::new(State::new(config, redis, scripts, parts));
        // Redis's clock before the first ticket or product page.
        if let Err(e) = state.clock.measure(state.redis.next()).await {
            tracing::warn!(error = %e, "measuring Redis's clock failed; this gateway's own clock stands until it is measured");
        }
        Ok(Application {
            listener,
            state,
            lease_token,
            changes,
            stopper,
            shutdown,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Serves until `shutdown` completes; then stops accepting, finishes in-flight requests,
    /// flushes the relay, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let state = self.state;
        let (stopper, jobs) = (self.stopper, self.shutdown);
        // The gateway rebuilds what Redis lost too, so it sells again even before a worker does.
        tokio::spawn(state.parts.recovery.clone().watch(jobs.clone()));
        let mut relays = Vec::new();
        for (gene, stream) in state.keys.outboxes() {
            let relay = relay::Relay {
                redis: seckill_infra::redis::blocking_client(&state.config.redis_url).await?,
                control: state.redis.clone(),
                publisher: state.parts.publisher.clone(),
                scripts: state.scripts.clone(),
                gene,
                stream,
                token: format!("{}-g{gene}", self.lease_token),
            };
            relays.push(tokio::spawn(relay.run(jobs.clone())));
        }
        tokio::spawn(state.limiter.clone().run_cleanup(jobs.clone()));
        tokio::spawn(
            state
                .clock
                .clone()
                .run(state.redis.next().clone(), jobs.clone()),
        );
        tokio::spawn(
            self.changes
                .follow(state.order_streams.clone(), jobs.clone()),
        );

        let deadlines = timer::Deadlines::new();
        tokio::spawn(deadlines.clone().run(jobs));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        tracing::info!(addr = ?self.listener.local_addr().ok(), node = state.parts.ids.node(), "gateway listening");
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, _) = match accepted {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let st = state.clone();
                    // Each connection its own timer: see `timer`.
                    let mut http = http.clone();
                    http.timer(deadlines.timer());
                    let conn = http.serve_connection(
                        TokioIo::new(conn::JsonErrors::new(stream)),
                        service_fn(move |req| routes::handle(st.clone(), req)),
                    );
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
                _ = &mut shutdown => break,
            }
        }
        drop(self.listener);
        // Event streams never end by themselves; the drain below waits for every response.
        state.order_streams.close();
        tracing::info!("shutting down: draining in-flight requests");
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not finish within {DRAIN_TIMEOUT:?}");
        }
        tracing::info!("flushing the outbox relay");
        stopper.stop();
        if tokio::time::timeout(DRAIN_TIMEOUT, futures_util::future::join_all(relays))
            .await
            .is_err()
        {
            tracing::warn!(
                "the relay did not flush within {DRAIN_TIMEOUT:?}; another relay takes the rest once the lease runs out"
            );
        }
        Ok(())
    }
}

impl seckill_infra::lifecycle::Service for Application {
    const NAME: &'static str = "gateway";
    const ABOUT: &'static str = "The seckill gateway: POST /seckill runs one Redis script and \
        answers; an outbox relay carries accepted orders to RabbitMQ. Configuration comes from \
        SECKILL_* environment variables (see the README): SECKILL_HTTP_ADDR, SECKILL_REDIS_URL, \
        SECKILL_AMQP_URL, SECKILL_DATABASE_URL, SECKILL_NAMESPACE, SECKILL_JWT_SECRET, \
        SECKILL_TICKET_SECRET, SECKILL_ADMIN_TOKEN, SECKILL_WEBHOOK_SECRET, \
        SECKILL_PAYMENT_TIMEOUT_SECS, SECKILL_RATE_PER_USER, SECKILL_NODE_ID, \
        SECKILL_MAX_ORDER_STREAMS";

    fn build(config: Config) -> impl Future<Output = anyhow::Result<Self>> {
        Application::build(config)
    }

    fn run(self, shutdown: impl Future<Output = ()>) -> impl Future<Output = anyhow::Result<()>> {
        Application::run(self, shutdown)
    }
}
