//! Configuration from the environment: every variable of the contract, each with a working local
//! default, parsed once at start. An unparsable value is an error that names its variable.

use crate::durability::Durability;
use std::net::SocketAddr;
use std::time::Duration;

pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_WORKERS_ADDR: &str = "127.0.0.1:9091";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_REDIS_DURABILITY: Durability = Durability::Fsync;
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/seckill";
pub const DEFAULT_NAMESPACE: &str = "seckill";
pub const DEFAULT_PAYMENT_TIMEOUT_SECS: u64 = 900;
/// A shipped order completes on its own a week after shipping.
pub const DEFAULT_AUTO_COMPLETE_SECS: u64 = 7 * 24 * 3600;
pub const DEFAULT_RATE_PER_USER: u32 = 5;
/// Order event streams (`GET /orders/{id}/events`) one gateway holds open at once.
pub const DEFAULT_MAX_ORDER_STREAMS: u32 = 10_000;
const DEV_JWT_SECRET: &str = "dev-jwt-secret-change-me";
const DEV_TICKET_SECRET: &str = "dev-ticket-secret-change-me";
const DEV_ADMIN_TOKEN: &str = "dev-admin-token";
const DEV_WEBHOOK_SECRET: &str = "dev-webhook-secret-change-me";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}={value:?} is not valid: {reason}")]
    Invalid {
        var: &'static str,
        value: String,
        reason: String,
    },
}

#[derive(Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub workers_addr: SocketAddr,
    pub redis_url: String,
    pub redis_durability: Durability,
    pub amqp_url: String,
    pub database_url: String,
    pub namespace: String,
    pub jwt_secret: String,
    pub ticket_secret: String,
    pub admin_token: String,
    pub webhook_secret: String,
    pub payment_timeout: Duration,
    /// A shipped order the buyer has not confirmed completes after this.
    pub auto_complete: Duration,
    pub rate_per_user: u32,
    pub node_id: Option<u16>,
    /// Order event streams one gateway holds open; past it, a new one is `503` with `Retry-After`.
    pub max_order_streams: u32,
}

impl std::fmt::Debug for Config {
    // Secrets stay out of logs: the four secrets are left out, and the URLs' passwords masked.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("http_addr", &self.http_addr)
            .field("workers_addr", &self.workers_addr)
            .field("redis_url", &masked(&self.redis_url))
            .field("redis_durability", &self.redis_durability)
            .field("amqp_url", &masked(&self.amqp_url))
            .field("database_url", &masked(&self.database_url))
            .field("namespace", &self.namespace)
            .field("payment_timeout", &self.payment_timeout)
            .field("auto_complete", &self.auto_complete)
            .field("rate_per_user", &self.rate_per_user)
            .field("node_id", &self.node_id)
            .field("max_order_streams", &self.max_order_streams)
            .finish_non_exhaustive()
    }
}

/// `url` with its passwords shown as `***`: the one after the user (`scheme://user:password@…`)
/// and the values of query parameters named like one (`password=`, `sentinelPassword=`). What
/// does not parse as a URL is shown as it is.
fn masked(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    if parsed.password().is_some() {
        // Only a URL that cannot have a password refuses one, and this one has one.
        let _ = parsed.set_password(Some("***"));
    }
    let secret = |key: &str| key.to_ascii_lowercase().contains("password");
    if parsed.query_pairs().any(|(key, _)| secret(&key)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if secret(&key) { "***".into() } else { value };
                (key.into_owned(), value.into_owned())
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.into()
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parsed<T>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
            var: name,
            value: v.clone(),
            reason: e.to_string(),
        }),
    }
}

fn secret(name: &'static str, dev: &str) -> String {
    var(name).unwrap_or_else(|| {
        tracing::warn!(
            "{name} is not set: using the development value, never do this in production"
        );
        dev.to_owned()
    })
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        let namespace = var("SECKILL_NAMESPACE").unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        if namespace.contains(['{', '}', ' ']) {
            return Err(ConfigError::Invalid {
                var: "SECKILL_NAMESPACE",
                value: namespace,
                reason: "braces and spaces would break Redis hash tags and queue names".into(),
            });
        }
        let node_id = match var("SECKILL_NODE_ID") {
            None => None,
            Some(_) => {
                let n: u16 = parsed("SECKILL_NODE_ID", 0)?;
                if n > seckill_schema::snowflake::MAX_NODE {
                    return Err(ConfigError::Invalid {
                        var: "SECKILL_NODE_ID",
                        value: n.to_string(),
                        reason: format!("must be at most {}", seckill_schema::snowflake::MAX_NODE),
                    });
                }
                Some(n)
            }
        };
        let at_least_one = |var: &'static str, default: u64| -> Result<u64, ConfigError> {
            let secs: u64 = parsed(var, default)?;
            if secs == 0 {
                return Err(ConfigError::Invalid {
                    var,
                    value: "0".into(),
                    reason: "must be at least 1".into(),
                });
            }
            Ok(secs)
        };
        let timeout_secs =
            at_least_one("SECKILL_PAYMENT_TIMEOUT_SECS", DEFAULT_PAYMENT_TIMEOUT_SECS)?;
        let auto_complete_secs =
            at_least_one("SECKILL_AUTO_COMPLETE_SECS", DEFAULT_AUTO_COMPLETE_SECS)?;
        let max_order_streams: u32 =
            parsed("SECKILL_MAX_ORDER_STREAMS", DEFAULT_MAX_ORDER_STREAMS)?;
        if max_order_streams == 0 {
            return Err(ConfigError::Invalid {
                var: "SECKILL_MAX_ORDER_STREAMS",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(Config {
            http_addr: parsed(
                "SECKILL_HTTP_ADDR",
                DEFAULT_HTTP_ADDR.parse().expect("valid default"),
            )?,
            workers_addr: parsed(
                "SECKILL_WORKERS_ADDR",
                DEFAULT_WORKERS_ADDR.parse().expect("valid default"),
            )?,
            redis_url: var("SECKILL_REDIS_URL").unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned()),
            redis_durability: parsed("SECKILL_REDIS_DURABILITY", DEFAULT_REDIS_DURABILITY)?,
            amqp_url: var("SECKILL_AMQP_URL").unwrap_or_else(|| DEFAULT_AMQP_URL.to_owned()),
            database_url: var("SECKILL_DATABASE_URL")
                .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned()),
            namespace,
            jwt_secret: secret("SECKILL_JWT_SECRET", DEV_JWT_SECRET),
            ticket_secret: secret("SECKILL_TICKET_SECRET", DEV_TICKET_SECRET),
            admin_token: secret("SECKILL_ADMIN_TOKEN", DEV_ADMIN_TOKEN),
            webhook_secret: secret("SECKILL_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET),
            payment_timeout: Duration::from_secs(timeout_secs),
            auto_complete: Duration::from_secs(auto_complete_secs),
            rate_per_user: parsed("SECKILL_RATE_PER_USER", DEFAULT_RATE_PER_USER)?,
            node_id,
            max_order_streams,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_masked() {
        for (url, shown) in [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            ("redis://:p@ss:w@rd@redis:6379", "redis://:***@redis:6379"),
            (
                "postgres://app:secret@db/seckill?sslmode=require",
                "postgres://app:***@db/seckill?sslmode=require",
            ),
            (
                "postgres://postgres@127.0.0.1/seckill",
                "postgres://postgres@127.0.0.1/seckill",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("not a url", "not a url"),
            (
                "amqp://u:pw@h:5672?heartbeat=10&x=a@b",
                "amqp://u:***@h:5672?heartbeat=10&x=a@b",
            ),
            (
                "postgres://db/seckill?user=app&password=secret",
                "postgres://db/seckill?user=app&password=***",
            ),
            (
                "redis-sentinel://:pw@s1:26379/0?sentinelPassword=spw&x=1",
                "redis-sentinel://:***@s1:26379/0?sentinelPassword=***&x=1",
            ),
            ("redis://[::1]:6379", "redis://[::1]:6379"),
            ("redis://:pw@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        ] {
            assert_eq!(masked(url), shown);
        }
    }

    #[test]
    fn the_logged_configuration_holds_no_secret() {
        let mut config = Config::from_env().unwrap();
        config.amqp_url = "amqp://app:amqp-password@mq/%2f".into();
        config.database_url = "postgres://app:db-password@db/seckill".into();
        config.redis_url = "redis://:redis-password@redis".into();
        let logged = format!("{config:?}");
        for secret in [
            "amqp-password",
            "db-password",
            "redis-password",
            &config.jwt_secret,
            &config.ticket_secret,
            &config.admin_token,
            &config.webhook_secret,
        ] {
            assert!(!logged.contains(secret), "{secret} in {logged}");
        }
    }
}
