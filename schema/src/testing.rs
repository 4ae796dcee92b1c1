//! Test support for every crate: a namespace and a database of a test's own, against the real
//! servers, cleaned up when dropped; and waiting on a condition with a deadline instead of sleeping.

use crate::Config;
use crate::broker::Topology;
use crate::messages::Kind;
use std::future::Future;
use std::time::{Duration, Instant};

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
            crate::snowflake::now_ms() % 0xffff_ffff,
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
        let _ = crate::db::drop_database(&c.database_url).await;
        if let Ok(redis) = crate::redis::client(&c.redis_url).await {
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
        if let Ok(conn) = crate::broker::connect(&c.amqp_url, "test-cleanup").await {
            if let Ok(ch) = conn.create_channel().await {
                let t = Topology::new(&c.namespace, c.payment_timeout);
                let mut queues: Vec<String> = Kind::ALL.iter().map(|k| t.queue(*k)).collect();
                queues.push(t.dead());
                queues.push(t.delay_queue());
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

/// Polls `check` until it returns `Some`, or fails the test at the deadline with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
