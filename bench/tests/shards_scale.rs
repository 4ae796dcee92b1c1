//! One hot item over K shards at scale: 100,000 purchases from 80,000 buyers for 30,000 units,
//! at K = 3 and K = 8, on a 3-master Redis Cluster of the test's own and on one Redis, through
//! the real gateway and workers in process over 128 keep-alive connections. Exactly the stock is
//! sold, nobody beyond the limit, `sold_out` never while a unit remained, and the bench's audit
//! (per shard and in total) passes once the workers stored every order.
//!
//! The four configurations run one after the other (a lock), each a test of its own, about 8–11 s
//! each (debug build, two shared cores): tickets, then the load at about 20,000 requests/s.
//!
//! K = 8 once failed this way: near the end of the sale about a hundred purchases got no answer
//! within 10 s, each buyer of a dry home shard waiting in turn to run a whole rebalance of its
//! own (each reading every buyer of every shard). Now a buyer who waited while another rebalance
//! of their home shard ran buys from what it brought, and a rebalance reads no buyers.

mod common;

use bytes::Bytes;
use fred::prelude::ClientLike;
use http::{Method, StatusCode};
use seckill_bench::audit::{Accepted, Snapshot};
use seckill_bench::http::HttpClient;
use seckill_infra::auth::Tickets;
use seckill_infra::scripts::{Held, Scripts};
use seckill_schema::{ItemId, Keys, OrderStatus, UserId};
use seckill_testkit::{Backend, RedisCluster, TestEnv, wait_for};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const REQUESTS: u64 = 100_000;
const BUYERS: u64 = 80_000;
const STOCK: i64 = 30_000;
const CONNECTIONS: usize = 128;

/// One configuration at a time: each alone fills both cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// What one purchase got, and when (from the load's start).
struct Answer {
    user: u64,
    sent: Duration,
    received: Duration,
    status: StatusCode,
    code: String,
}

async fn sale(k: u8, on_cluster: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let cluster = if on_cluster {
        Some(RedisCluster::start(3, 0).await)
    } else {
        None
    };
    let mut env = TestEnv::new(Backend::Postgres);
    if let Some(c) = &cluster {
        env.config.redis_url = c.url();
    }
    let config = env.config.clone();
    let system = common::InProcess::start(&config).await;
    let item = ItemId(9_000 + u64::from(k));
    common::create_item(
        &system.gateway,
        &config,
        serde_json::json!({
            "item_id": item.0, "name": "hot", "price_cents": 990, "stock": STOCK,
            "per_user_limit": 1, "shards": k,
        }),
    )
    .await;

    // 80,000 buyers, then 20,000 repeat attempts by buyers who tried already, shuffled.
    let tickets = Tickets::new(&config.ticket_secret);
    let expires = chrono::Utc::now().timestamp() + 3600;
    let mut users: Vec<u64> = (1..=BUYERS).collect();
    users.extend((0..REQUESTS - BUYERS).map(|i| 1 + (i * 7_919) % BUYERS));
    rand::seq::SliceRandom::shuffle(&mut users[..], &mut rand::rng());
    let bodies: Vec<(u64, Bytes)> = users
        .into_iter()
        .map(|u| {
            let body = serde_json::json!({"item_id": item.0, "ticket": tickets.mint(UserId(u), item, expires)});
            (u, Bytes::from(body.to_string()))
        })
        .collect();
    let prepared = started.elapsed();

    let http = HttpClient::default();
    let url = format!("{}/seckill", system.gateway);
    let load = Instant::now();
    let queue = Arc::new(std::sync::Mutex::new(bodies.into_iter()));
    let clients = (0..CONNECTIONS).map(|_| {
        let (queue, http, url) = (queue.clone(), http.clone(), url.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            loop {
                let next = queue.lock().unwrap().next();
                let Some((user, body)) = next else {
                    return answers;
                };
                let sent = load.elapsed();
                let headers = [("content-type", "application/json")];
                let (status, answer) = match http.send(Method::POST, &url, &headers, body).await {
                    Ok(answer) => answer,
                    // No answer within the client's 10 s: counted (as a 408 of the client's own),
                    // so that a failure shows how many and when.
                    Err(e) => (
                        StatusCode::REQUEST_TIMEOUT,
                        Bytes::from(serde_json::json!({"error": format!("{e:#}")}).to_string()),
                    ),
                };
                let code = serde_json::from_slice::<serde_json::Value>(&answer)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                answers.push(Answer {
                    user,
                    sent,
                    received: load.elapsed(),
                    status,
                    code,
                });
            }
        })
    });
    let mut answers = Vec::with_capacity(REQUESTS as usize);
    for c in futures_util::future::join_all(clients).await {
        answers.extend(c.expect("a client task"));
    }
    let load_took = load.elapsed();

    let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
    for a in &answers {
        *by_code
            .entry(format!("{} {}", a.status.as_u16(), a.code))
            .or_default() += 1;
    }
    let mut slowest: Vec<&Answer> = answers.iter().collect();
    slowest.sort_by_key(|a| std::cmp::Reverse(a.received - a.sent));
    for a in slowest.iter().take(8) {
        println!(
            "slow: user {} sent {:?} took {:?}: {} {}",
            a.user,
            a.sent,
            a.received - a.sent,
            a.status,
            a.code
        );
    }
    let accepted: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::ACCEPTED)
        .collect();
    assert_eq!(
        accepted.len(),
        STOCK as usize,
        "exactly the stock: {by_code:?}"
    );
    let mut per_user: BTreeMap<u64, usize> = BTreeMap::new();
    for a in &accepted {
        *per_user.entry(a.user).or_default() += 1;
    }
    assert!(per_user.values().all(|n| *n == 1), "nobody over the limit");
    // Refusals: sold out, the limit (a repeat buyer), or a retry while units moved.
    assert!(
        answers.iter().all(|a| a.status == StatusCode::ACCEPTED
            || ["sold_out", "limit_reached", "unavailable"].contains(&a.code.as_str())),
        "{by_code:?}"
    );
    // Sold out exactly when the last unit sold: no unit is sold by a request sent after some
    // buyer was already told sold_out (nothing comes back to stock during the sale).
    let first_sold_out = answers
        .iter()
        .filter(|a| a.code == "sold_out")
        .map(|a| a.received)
        .min()
        .expect("the item sold out");
    let last_sale = accepted.iter().map(|a| a.sent).max().unwrap();
    assert!(
        last_sale <= first_sold_out,
        "a unit sold (request sent at {last_sale:?}) after sold_out was answered at \
         {first_sold_out:?}"
    );
    let redis = seckill_infra::redis::client(&config.redis_url)
        .await
        .unwrap();
    let state = Scripts::new(Keys::new(&config.namespace))
        .shards_state(&redis, item, k, Held::Counted)
        .await
        .unwrap()
        .expect("a consistent reading");
    assert!(
        state.iter().all(|s| s.remaining == 0 && s.pending == 0),
        "every shard empty, nothing in transfer: {state:?}"
    );

    // The workers store every order; then the bench's audit, per shard and in total.
    let db = seckill_bench::db::connect(&config.database_url)
        .await
        .unwrap();
    let drain = Instant::now();
    wait_for(
        "the workers to take every order to AWAITING_PAYMENT",
        Duration::from_secs(180),
        || async {
            let counts = seckill_bench::db::status_counts(&db, item).await.ok()?;
            let awaiting = counts
                .get(OrderStatus::AwaitingPayment.as_str())
                .copied()
                .unwrap_or(0);
            (awaiting == STOCK as u64).then_some(())
        },
    )
    .await;
    let drained = drain.elapsed();
    let snapshot = Snapshot::load(&config, item).await.unwrap();
    let checks = snapshot.checks(
        Accepted::exactly(STOCK as u64),
        config.payment_timeout,
        seckill_schema::snowflake::now_ms() as i64,
    );
    common::print_checks(&checks);
    assert!(checks.iter().all(|c| c.passed), "the audit");
    assert!(
        checks.iter().any(|c| c.name == "shards_consistent"),
        "the audit looked at every shard"
    );
    println!(
        "K = {k} on {}: tickets {prepared:.1?}, load {load_took:.1?} ({:.0} requests/s), \
         drain {drained:.1?}, whole test {:.1?}; answers {by_code:?}",
        if on_cluster {
            "a 3-master cluster"
        } else {
            "one Redis"
        },
        REQUESTS as f64 / load_took.as_secs_f64(),
        started.elapsed()
    );
    let _ = redis.quit().await;
    let _ = db.close().await;
    system.gateway_task.stop().await.unwrap();
    system.workers_task.stop().await.unwrap();
    env.cleanup().await;
}

/// One test a configuration, so that each is reported, and can be run, on its own.
macro_rules! sales {
    ($($name:ident: $shards:literal shards, on_cluster: $cluster:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            sale($shards, $cluster).await;
        }
    )*};
}

sales! {
    k3_on_one_redis_sells_exactly_the_stock_to_100k_buyers: 3 shards, on_cluster: false;
    k8_on_one_redis_sells_exactly_the_stock_to_100k_buyers: 8 shards, on_cluster: false;
    k3_on_a_cluster_sells_exactly_the_stock_to_100k_buyers: 3 shards, on_cluster: true;
    k8_on_a_cluster_sells_exactly_the_stock_to_100k_buyers: 8 shards, on_cluster: true;
}
