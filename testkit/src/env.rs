//! A test's own namespace and database against the real servers, cleaned up when dropped, and
//! waiting until Redis holds what a running gateway or workers process rebuilds at start.

use crate::wait::wait_for;
use seckill_infra::Config;
use seckill_infra::broker::Topology;
use seckill_schema::Keys;
use seckill_schema::messages::Kind;
use std::time::Duration;

/// A test's way into the stores of its namespace: the database (a pool of its own), Redis and the
/// namespace's keys.
pub struct Stores {
    pub db: sea_orm::DatabaseConnection,
    pub redis: fred::prelude::Client,
    pub keys: Keys,
}

impl Stores {
    /// Connects to the stores `config` names, with up to `pool` database connections.
    pub async fn connect(config: &Config, pool: u32) -> Stores {
        Stores {
            db: seckill_infra::db::connect(&config.database_url, pool)
                .await
                .expect("the test's database"),
            redis: seckill_infra::redis::client(&config.redis_url)
                .await
                .expect("the test's Redis"),
            keys: Keys::new(&config.namespace),
        }
    }
}

/// Which database server a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    MySql,
}

pub const TEST_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
pub const TEST_MYSQL: &str = "mysql://root@127.0.0.1:3306";

/// A namespace and database of one test's own.
pub struct TestEnv {
    pub config: Config,
    cleaned: bool,
}

impl TestEnv {
    pub fn new(backend: Backend) -> TestEnv {
        let tag: String = format!(
            "t{:x}{:04x}",
            seckill_schema::snowflake::now_ms() % 0xffff_ffff,
            rand::random::<u16>()
        );
        let mut config =
            Config::from_env().expect("the test environment's SECKILL_* variables parse");
        config.namespace = format!("test_{tag}");
        config.database_url = match backend {
            Backend::Postgres => format!("{TEST_POSTGRES}/seckill_{tag}"),
            Backend::MySql => format!("{TEST_MYSQL}/seckill_{tag}"),
        };
        config.http_addr = "127.0.0.1:0".parse().expect("valid");
        config.workers_addr = "127.0.0.1:0".parse().expect("valid");
        config.jwt_secret = "test-jwt".into();
        config.ticket_secret = "test-ticket".into();
        config.admin_token = "test-admin".into();
        config.webhook_secret = "test-webhook".into();
        config.rate_per_user = 0;
        TestEnv {
            config,
            cleaned: false,
        }
    }

    /// Removes the test's Redis keys, queues and database.
    pub async fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        let c = self.config.clone();
        let _ = seckill_infra::db::drop_database(&c.database_url).await;
        if let Ok(redis) = seckill_infra::redis::client(&c.redis_url).await {
            use fred::prelude::*;
            let mut cursor = "0".to_owned();
            loop {
                let res: Result<(String, Vec<String>), _> = redis
                    .custom(
                        fred::cmd!("SCAN"),
                        vec![
                            cursor.clone(),
                            "MATCH".into(),
                            format!("{}:*", c.namespace),
                            "COUNT".into(),
                            "1000".into(),
                        ],
                    )
                    .await;
                let Ok((next, keys)) = res else { break };
                if !keys.is_empty() {
                    let _: Result<i64, _> = redis.del(keys).await;
                }
                if next == "0" {
                    break;
                }
                cursor = next;
            }
            let _ = redis.quit().await;
        }
        if let Ok(conn) = seckill_infra::broker::connect(&c.amqp_url, "test-cleanup").await {
            if let Ok(ch) = conn.create_channel().await {
                let t = Topology::of(&c);
                let mut queues: Vec<String> = Kind::ALL.iter().map(|k| t.queue(*k)).collect();
                queues.push(t.dead());
                for &k in Kind::ALL {
                    if let Some(delay) = t.delay(k) {
                        queues.push(t.delay_queue_of(k, delay));
                    }
                }
                for q in queues {
                    let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
                }
                let _ = ch
                    .exchange_delete(t.exchange().into(), Default::default())
                    .await;
            }
            let _ = conn.close(200, "done".into()).await;
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.cleaned || std::env::var_os("SECKILL_KEEP_TEST_DATA").is_some() {
            return;
        }
        let mut env = TestEnv {
            config: self.config.clone(),
            cleaned: false,
        };
        self.cleaned = true;
        // Drop cannot await; clean up on a runtime of its own.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(env.cleanup());
            }
        })
        .join();
    }
}

/// The `SECKILL_*` variables under which a child process (the gateway's or the workers' binary)
/// reads `config` back; add them to its environment with `Command::envs`.
pub fn env_vars(config: &Config) -> Vec<(&'static str, String)> {
    let c = config;
    vec![
        ("SECKILL_HTTP_ADDR", c.http_addr.to_string()),
        ("SECKILL_WORKERS_ADDR", c.workers_addr.to_string()),
        ("SECKILL_REDIS_URL", c.redis_url.clone()),
        ("SECKILL_AMQP_URL", c.amqp_url.clone()),
        ("SECKILL_DATABASE_URL", c.database_url.clone()),
        ("SECKILL_NAMESPACE", c.namespace.clone()),
        ("SECKILL_JWT_SECRET", c.jwt_secret.clone()),
        ("SECKILL_TICKET_SECRET", c.ticket_secret.clone()),
        ("SECKILL_ADMIN_TOKEN", c.admin_token.clone()),
        ("SECKILL_WEBHOOK_SECRET", c.webhook_secret.clone()),
        (
            "SECKILL_PAYMENT_TIMEOUT_SECS",
            c.payment_timeout.as_secs().to_string(),
        ),
        (
            "SECKILL_AUTO_COMPLETE_SECS",
            c.auto_complete.as_secs().to_string(),
        ),
        ("SECKILL_RATE_PER_USER", c.rate_per_user.to_string()),
        ("SECKILL_MAX_ORDER_STREAMS", c.max_order_streams.to_string()),
    ]
}

/// Waits until Redis holds every shard gene's state for `config`'s namespace (a running gateway
/// or workers process builds them from the database at start; see `seckill_infra::recovery`).
pub async fn wait_for_redis_state(config: &Config) {
    use fred::prelude::*;
    let redis = seckill_infra::redis::client(&config.redis_url)
        .await
        .expect("connecting to Redis");
    let keys = seckill_schema::Keys::new(&config.namespace);
    wait_for(
        "Redis to hold every gene's state",
        Duration::from_secs(30),
        || async {
            for (_, key) in keys.states() {
                let ready: Option<String> = redis.hget(key, "ready").await.ok()?;
                ready?;
            }
            Some(())
        },
    )
    .await;
    let _ = redis.quit().await;
}
