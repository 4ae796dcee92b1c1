//! What the gateway is measured against, on the same machine and with the same load: a bare hyper
//! server answering a constant JSON body (the ceiling of HTTP itself), and `redis-benchmark`
//! running the purchase script from C clients (the ceiling of the hot path's one Redis round trip).

use crate::oha::{self, Body, Load, LoadStats};
use anyhow::{Context, ensure};
use bytes::Bytes;
use fred::prelude::*;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use seckill_infra::scripts::{ItemState, PURCHASE, Scripts};
use seckill_schema::entity::items;
use seckill_schema::keys::gene_of_item;
use seckill_schema::snowflake::{Snowflake, now_ms};
use seckill_schema::{ItemId, Keys, OrderId};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use tokio::net::TcpListener;

/// What the bare server answers: the shape of the gateway's `202`.
pub const CONSTANT_BODY: &str = r#"{"order_id":"1","status":"PENDING"}"#;
/// What oha sends to the bare server: the shape of a `POST /seckill` body.
const REQUEST_BODY: &str =
    r#"{"item_id":1,"ticket":"1.1.4102444800.c2lnbmF0dXJlLXBsYWNlaG9sZGVyLXNpZ25hdHVyZQ"}"#;
/// The scratch item's stock: never sold out, whatever the run.
const HUGE_STOCK: i64 = 1_000_000_000;
/// `__rand_int__` ranges over this many buyers.
const BUYERS: u64 = 100_000_000_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    pub requests: u64,
    pub connections: u64,
    /// oha against a bare hyper server.
    pub http: LoadStats,
    /// redis-benchmark running the purchase script.
    pub redis: RedisBench,
    /// The sale's path with the workers paused, without the pipeline behind the gateway
    /// competing for the same cores. The sold-out path (an item of no stock), whose ceiling is
    /// `http`; or, with `--profile in-stock`, the in-stock path (the purchase, its answer and the
    /// relay to RabbitMQ), whose ceiling is `redis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_alone: Option<LoadStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RedisBench {
    pub requests_per_sec: f64,
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Purchases the script accepted (the scratch stock sold), to show that the calls were real.
    pub purchases: i64,
}

/// `bodies`: what oha sends the bare server, one line per request (the sale's own bodies, so
/// that oha does the same work against both); a body of the same shape when `None`.
pub async fn run(
    redis_url: &str,
    requests: u64,
    connections: u64,
    bodies: Option<&Path>,
    out: &Path,
) -> anyhow::Result<Baseline> {
    let body = match bodies {
        Some(path) => Body::Lines(path),
        None => Body::Fixed(REQUEST_BODY),
    };
    let http = bare_http(requests, connections, body, &out.join("baseline-oha.json")).await?;
    let redis = redis_purchase(redis_url, requests, connections).await?;
    Ok(Baseline {
        requests,
        connections,
        http,
        redis,
        gateway_alone: None,
    })
}

/// Answers every request with `202` and [`CONSTANT_BODY`] until `shutdown` completes.
pub async fn serve_constant(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                // Read the body, as the gateway must.
                let _ = req.into_body().collect().await;
                let mut resp =
                    Response::new(Full::new(Bytes::from_static(CONSTANT_BODY.as_bytes())));
                *resp.status_mut() = StatusCode::ACCEPTED;
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// oha against the bare server, sending `body` (`Body::Empty`: a `GET`).
pub async fn bare_http(
    requests: u64,
    connections: u64,
    body: Body<'_>,
    output: &Path,
) -> anyhow::Result<LoadStats> {
    // The gateway's backlog, so the two are compared on their handlers alone.
    let listener = seckill_infra::net::listen(([127, 0, 0, 1], 0).into())
        .context("binding the bare server")?;
    let url = format!("http://{}/", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_constant(listener, async {
        let _ = stopped.await;
    }));
    let stats = oha::run(&Load {
        url: &url,
        requests,
        connections,
        body,
        tui: false,
        output,
    })
    .await;
    let _ = stop.send(());
    let _ = server.await;
    stats
}

/// Host, port and password of a Redis URL, for redis-benchmark's flags.
fn redis_server(url: &str) -> anyhow::Result<(String, u16, Option<String>)> {
    let config = fred::types::config::Config::from_url(url)
        .with_context(|| format!("SECKILL_REDIS_URL={url:?} is not a Redis URL"))?;
    let server = config
        .server
        .hosts()
        .into_iter()
        .next()
        .context("SECKILL_REDIS_URL names no server")?;
    Ok((server.host.to_string(), server.port, config.password))
}

/// Runs the purchase script from redis-benchmark's C clients against a scratch item of its own
/// namespace, each call a new buyer, and deletes the scratch keys afterwards.
pub async fn redis_purchase(
    redis_url: &str,
    requests: u64,
    connections: u64,
) -> anyhow::Result<RedisBench> {
    let redis = seckill_infra::redis::client(redis_url).await?;
    let keys = Keys::new(&format!(
        "bench_scratch_{}_{}",
        std::process::id(),
        now_ms()
    ));
    let item = ItemId(1);
    let gene = gene_of_item(item);
    let order = OrderId(Snowflake::new(0).next(gene)?);
    let scratch = vec![
        keys.item(item),
        keys.buyers(item),
        keys.order(order),
        keys.outbox(gene),
        keys.no_idempotency(gene),
        keys.state_of_item(item),
        keys.void(order),
    ];
    // A scratch namespace no rebuild ever watches: its gene is marked ready by hand.
    let _: i64 = redis
        .hset(keys.state_of_item(item), ("ready", "1"))
        .await
        .context("marking the scratch gene ready")?;
    Scripts::new(keys.clone())
        .warm_item(
            &redis,
            &ItemState::new(items::Model {
                id: item.0 as i64,
                name: "redis-benchmark".into(),
                price_cents: 990,
                stock: HUGE_STOCK,
                available: HUGE_STOCK,
                locked: 0,
                sold: 0,
                per_user_limit: 1,
                starts_at_ms: None,
                ends_at_ms: None,
                created_at_ms: 0,
                updated_at_ms: 0,
                shards: 1,
            }),
        )
        .await?;
    let sha: String = redis
        .script_load(PURCHASE)
        .await
        .context("SCRIPT LOAD purchase.lua")?;
    // KEYS as in `Scripts::purchase`; ARGV: order, buyer, quantity, item, no idempotency key, ttl,
    // the item's shards, and the allowed clock skew.
    let mut command = vec!["EVALSHA".to_owned(), sha, scratch.len().to_string()];
    command.extend(scratch.iter().cloned());
    command.extend([
        order.to_string(),
        "__rand_int__".to_owned(),
        "1".to_owned(),
        item.to_string(),
        "0".to_owned(),
        "0".to_owned(),
        "1".to_owned(),
        seckill_infra::scripts::MAX_CLOCK_SKEW_MS.to_string(),
    ]);
    let result = redis_benchmark(redis_url, requests, connections, &command).await;
    let remaining: Option<i64> = redis.hget(keys.item(item), "remaining").await?;
    let _: i64 = redis.del(scratch).await.context("deleting scratch keys")?;
    let _ = redis.quit().await;
    let mut bench = result?;
    bench.purchases = HUGE_STOCK - remaining.unwrap_or(HUGE_STOCK);
    ensure!(
        bench.purchases > 0,
        "redis-benchmark ran, but the purchase script accepted nothing"
    );
    Ok(bench)
}

async fn redis_benchmark(
    redis_url: &str,
    requests: u64,
    connections: u64,
    command: &[String],
) -> anyhow::Result<RedisBench> {
    let (host, port, password) = redis_server(redis_url)?;
    let mut cmd = tokio::process::Command::new("redis-benchmark");
    cmd.args(["-h", &host, "-p", &port.to_string()])
        .args(["-c", &connections.to_string(), "-n", &requests.to_string()])
        .args(["-r", &BUYERS.to_string(), "--csv"]);
    if let Some(password) = password {
        cmd.args(["-a", &password]);
    }
    let output = cmd
        .args(command)
        .output()
        .await
        .context("running redis-benchmark (it comes with redis-tools)")?;
    ensure!(
        output.status.success(),
        "redis-benchmark failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    parse_csv(&String::from_utf8_lossy(&output.stdout))
}

/// The last row of `redis-benchmark --csv`:
/// `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"`.
fn parse_csv(text: &str) -> anyhow::Result<RedisBench> {
    let row = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("redis-benchmark printed nothing")?;
    let fields: Vec<f64> = row
        .trim()
        .trim_matches('"')
        .split("\",\"")
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("unexpected redis-benchmark output: {row}"))?;
    let [rps, avg, _min, p50, p95, p99, _max] = fields[..] else {
        anyhow::bail!("unexpected redis-benchmark output: {row}");
    };
    Ok(RedisBench {
        requests_per_sec: rps,
        avg_ms: avg,
        p50_ms: p50,
        p95_ms: p95,
        p99_ms: p99,
        purchases: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_benchmark_csv() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"EVALSHA abc 5 a b\",\"83333.34\",\"0.031\",\"0.016\",\"0.030\",\"0.047\",\"0.063\",\"0.239\"\n";
        let b = parse_csv(out).unwrap();
        assert_eq!(b.requests_per_sec, 83333.34);
        assert_eq!((b.p50_ms, b.p95_ms, b.p99_ms), (0.030, 0.047, 0.063));
        assert!(parse_csv("").is_err());
        assert!(parse_csv("\"x\",\"1\"").is_err());
    }

    #[test]
    fn reads_redis_urls() {
        assert_eq!(
            redis_server("redis://127.0.0.1:6379").unwrap(),
            ("127.0.0.1".into(), 6379, None)
        );
        assert_eq!(
            redis_server("redis://:pw@10.0.0.1:7000").unwrap(),
            ("10.0.0.1".into(), 7000, Some("pw".into()))
        );
    }
}
