//! What every request handler shares.

use crate::error::ApiError;
use crate::ratelimit::RateLimiter;
use crate::soldout::SoldOut;
use fred::prelude::Pool;
use metrics_exporter_prometheus::PrometheusHandle;
use sea_orm::DatabaseConnection;
use seckill_infra::Config;
use seckill_infra::auth::{Jwt, Tickets, WebhookSigner};
use seckill_infra::broker::Publisher;
use seckill_infra::durability::DurabilityWatch;
use seckill_infra::recovery::Recovery;
use seckill_infra::scripts::Scripts;
use seckill_schema::Keys;
use seckill_schema::snowflake::Snowflake;
use std::collections::HashMap;
use std::sync::Arc;

pub struct State {
    pub config: Config,
    pub redis: Pool,
    pub keys: Keys,
    pub scripts: Scripts,
    pub jwt: Jwt,
    pub tickets: Tickets,
    pub webhook: WebhookSigner,
    pub limiter: RateLimiter,
    pub sold_out: SoldOut,
    pub outboxes: Vec<String>,
    pub parts: Parts,
    /// The public catalog (`GET /items`), read from Redis and the database once a second at most.
    pub catalog: crate::catalog::Catalog,
    /// The order event streams open on this gateway (`GET /orders/{id}/events`).
    pub order_streams: Arc<crate::streams::OrderStreams>,
    /// Purchases on their way to Redis, one lane per gene.
    pub lanes: crate::lanes::Lanes,
    /// Redis's clock, for what the gateway decides about time by itself.
    pub clock: Arc<crate::clock::RedisClock>,
    /// Each item's shards, as last read.
    pub layouts: crate::layout::Layouts,
    /// One rebalance at a time per (item, home shard): buyers of a dry shard wait for it, then buy.
    pub rebalancing: Rebalancing,
}

/// One lane per (item, home shard gene) that a rebalance holds.
pub type Rebalancing = std::sync::Mutex<HashMap<(seckill_schema::ItemId, u8), Arc<RebalanceLane>>>;

/// One rebalance at a time for a home shard, and how many have run: a buyer who waited while
/// another ran buys from what it brought instead of running one more.
#[derive(Default)]
pub struct RebalanceLane {
    pub lock: tokio::sync::Mutex<()>,
    pub done: std::sync::atomic::AtomicU64,
}

/// What a gateway runs on besides its configuration and clients.
pub struct Parts {
    pub ids: Arc<Snowflake>,
    pub publisher: Arc<Publisher>,
    pub metrics: PrometheusHandle,
    /// What Redis promises of an accepted order, re-read every few seconds and by `/readyz`.
    pub durability: DurabilityWatch,
    /// Rebuilds what Redis lost from the database.
    pub recovery: Arc<Recovery>,
    /// In `replica` mode: a `202` waits for a replica to take the purchase.
    pub group_commit: Option<Arc<seckill_infra::replication::GroupCommit>>,
}

impl State {
    pub fn new(config: Config, redis: Pool, scripts: Scripts, parts: Parts) -> State {
        let keys = scripts.keys().clone();
        State {
            jwt: Jwt::new(&config.jwt_secret),
            tickets: Tickets::new(&config.ticket_secret),
            webhook: WebhookSigner::new(&config.webhook_secret),
            limiter: RateLimiter::new(config.rate_per_user),
            sold_out: SoldOut::default(),
            order_streams: Arc::new(crate::streams::OrderStreams::new(config.max_order_streams)),
            outboxes: keys.outboxes().map(|(_, k)| k).collect(),
            lanes: crate::lanes::Lanes::start(redis.clone(), scripts.clone()),
            keys,
            config,
            redis,
            scripts,
            parts,
            catalog: crate::catalog::Catalog::default(),
            clock: Arc::default(),
            layouts: crate::layout::Layouts::default(),
            rebalancing: Default::default(),
        }
    }

    /// The database, connected on first use: only the admin routes need it, and the hot path must
    /// not wait for it at start either.
    pub async fn db(&self) -> Result<&DatabaseConnection, ApiError> {
        self.parts.recovery.db().await.map_err(|e| {
            tracing::warn!(error = %e, "database unavailable");
            ApiError::Unavailable("the database")
        })
    }
}
