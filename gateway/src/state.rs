//! What every request handler shares.

use crate::error::ApiError;
use crate::ratelimit::RateLimiter;
use crate::soldout::SoldOut;
use fred::prelude::Pool;
use metrics_exporter_prometheus::PrometheusHandle;
use sea_orm::DatabaseConnection;
use seckill_schema::auth::{Jwt, Tickets, WebhookSigner};
use seckill_schema::broker::Publisher;
use seckill_schema::scripts::Scripts;
use seckill_schema::snowflake::Snowflake;
use seckill_schema::{Config, Keys};
use std::sync::Arc;
use tokio::sync::OnceCell;

pub struct State {
    pub config: Config,
    pub redis: Pool,
    pub keys: Keys,
    pub scripts: Scripts,
    pub ids: Arc<Snowflake>,
    pub publisher: Arc<Publisher>,
    pub jwt: Jwt,
    pub tickets: Tickets,
    pub webhook: WebhookSigner,
    pub limiter: RateLimiter,
    pub sold_out: SoldOut,
    pub metrics: PrometheusHandle,
    pub outboxes: Vec<String>,
    db: OnceCell<DatabaseConnection>,
}

impl State {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        redis: Pool,
        scripts: Scripts,
        ids: Arc<Snowflake>,
        publisher: Arc<Publisher>,
        metrics: PrometheusHandle,
    ) -> State {
        let keys = scripts.keys().clone();
        State {
            jwt: Jwt::new(&config.jwt_secret),
            tickets: Tickets::new(&config.ticket_secret),
            webhook: WebhookSigner::new(&config.webhook_secret),
            limiter: RateLimiter::new(config.rate_per_user),
            sold_out: SoldOut::default(),
            outboxes: keys.outboxes().map(|(_, k)| k).collect(),
            keys,
            config,
            redis,
            scripts,
            ids,
            publisher,
            metrics,
            db: OnceCell::new(),
        }
    }

    /// The database, connected on first use: only the admin routes need it, and the hot path must
    /// not wait for it at start either.
    pub async fn db(&self) -> Result<&DatabaseConnection, ApiError> {
        self.db
            .get_or_try_init(|| seckill_schema::db::connect(&self.config.database_url, 4))
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::Unavailable("the database")
            })
    }
}
