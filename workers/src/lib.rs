//! The seckill workers: consume the order events from durable queues and drive each order through
//! its life (see `saga`), owning the database. Batches of events share one transaction, so one hot
//! item is not capped at the database's single-row commit rate.

pub mod ops;
pub mod reconcile;
pub mod runner;
pub mod saga;
pub mod sql;
pub mod store;

use anyhow::Context;
use runner::Runtime;
use seckill_infra::Config;
use seckill_infra::broker::{Publisher, Topology};
use seckill_infra::durability::{Durability, DurabilityWatch};
use seckill_infra::lifecycle::{Shutdown, Stopper};
use seckill_infra::recovery::Recovery;
use seckill_infra::replication::GroupCommit;
use seckill_infra::scripts::Scripts;
use seckill_schema::{Keys, Kind};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub struct Workers {
    runtime: Arc<Runtime>,
    listener: TcpListener,
    stopper: Stopper,
    shutdown: Shutdown,
    intervals: reconcile::Intervals,
}

impl Workers {
    /// Connects to the database (creating it and applying migrations; waits while it is down),
    /// Redis and RabbitMQ, and binds `SECKILL_WORKERS_ADDR`.
    pub async fn build(config: Config) -> anyhow::Result<Workers> {
        let mut wait = Duration::from_millis(200);
        let db = loop {
            match seckill_infra::db::connect(&config.database_url, 8).await {
                Ok(db) => break db,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "database unavailable; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        };
        let redis = seckill_infra::redis::pool(&config.redis_url, 2).await?;
        let topology = Topology::of(&config);
        let publisher = Arc::new(Publisher::new(
            &config.amqp_url,
            &format!("{}/seckill-workers", config.namespace),
            topology.clone(),
        ));
        anyhow::ensure!(
            publisher.ready().await,
            "RabbitMQ is not reachable at start"
        );
        let listener = seckill_infra::net::listen(config.workers_addr)
            .with_context(|| format!("binding SECKILL_WORKERS_ADDR={}", config.workers_addr))?;
        let scripts = Scripts::new(Keys::new(&config.namespace));
        let (stopper, shutdown) = Shutdown::new();
        let durability = DurabilityWatch::spawn(
            redis.next().clone(),
            config.redis_durability,
            seckill_infra::durability::WATCH_INTERVAL,
            shutdown.clone(),
        );
        let writer = redis.next().clone();
        let group_commit = (config.redis_durability == Durability::Replica)
            .then(|| GroupCommit::new(writer.clone(), seckill_infra::replication::DEFAULT_TIMEOUT));
        let recovery = Recovery::new(
            redis.clone(),
            scripts.clone(),
            &config.database_url,
            Some(db.clone()),
            group_commit.clone(),
        );
        Ok(Workers {
            runtime: Arc::new(Runtime {
                config,
                db,
                redis,
                scripts,
                publisher,
                topology,
                recovery,
                durability,
                writer,
                group_commit,
            }),
            stopper,
            shutdown,
            listener,
            intervals: reconcile::Intervals::default(),
        })
    }

    /// How often the reconciler and the sweeper run (production's by default; tests shorten them).
    pub fn with_intervals(mut self, intervals: reconcile::Intervals) -> Self {
        self.intervals = intervals;
        self
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Consumes every queue until `shutdown` completes; then stops consuming, finishes and acks
    /// the batches in flight, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let metrics = seckill_infra::telemetry::metrics();
        let (stopper, jobs) = (self.stopper, self.shutdown);
        // Redis's lost state first: nothing in a lost gene is mirrored or released until then.
        let recovery = tokio::spawn(self.runtime.recovery.clone().watch(jobs.clone()));
        let consumers: Vec<_> = Kind::ALL
            .iter()
            .map(|&kind| tokio::spawn(self.runtime.clone().consume(kind, jobs.clone())))
            .collect();
        let periodic = [
            tokio::spawn(reconcile::run_reconciler(
                self.runtime.clone(),
                self.intervals.reconcile,
                self.intervals.adjustment_age,
                jobs.clone(),
            )),
            tokio::spawn(reconcile::run_sweeper(
                self.runtime.clone(),
                self.intervals.sweep,
                jobs.clone(),
            )),
        ];
        let ops = tokio::spawn(ops::serve(
            self.listener,
            self.runtime.clone(),
            metrics,
            jobs,
        ));
        shutdown.await;
        tracing::info!("shutting down: finishing the batches in flight");
        stopper.stop();
        for c in consumers {
            let _ = tokio::time::timeout(Duration::from_secs(30), c).await;
        }
        for p in periodic {
            let _ = p.await;
        }
        let _ = ops.await;
        let _ = recovery.await;
        Ok(())
    }
}

impl seckill_infra::lifecycle::Service for Workers {
    const NAME: &'static str = "workers";
    const ABOUT: &'static str = "The seckill workers: consume ORDER_CREATED, LOCK_INVENTORY, \
        PREPARE_PAYMENT, PAYMENT_RESULT, ORDER_CANCEL, ORDER_TIMEOUT and INVENTORY_COMPENSATE \
        from RabbitMQ and drive every order to an end state in the database, keeping Redis in \
        step. Configuration comes from SECKILL_* environment variables (see the README): \
        SECKILL_WORKERS_ADDR, SECKILL_REDIS_URL, SECKILL_AMQP_URL, SECKILL_DATABASE_URL, \
        SECKILL_NAMESPACE, SECKILL_PAYMENT_TIMEOUT_SECS";

    fn build(config: Config) -> impl Future<Output = anyhow::Result<Self>> {
        Workers::build(config)
    }

    fn run(self, shutdown: impl Future<Output = ()>) -> impl Future<Output = anyhow::Result<()>> {
        Workers::run(self, shutdown)
    }
}
