//! Redis failing mid-sale, with the real gateway and workers in process over Redis servers of the
//! test's own (never the shared one), RabbitMQ and PostgreSQL; the contract's invariants checked by
//! the bench's audit afterwards.
//!
//! - `fsync`: Redis SIGKILLed mid-burst and restarted from its append-only file, twice: every `202`
//!   reaches the database, and every order the database holds was answered `202` or `503
//!   outcome_unknown` naming it.
//! - `none`: Redis restarted empty mid-burst: never `404` for the item, `503 recovering`
//!   meanwhile, selling resumes by itself, no buyer over their limit, conservation holds.
//! - `replica` with Sentinel: the master SIGKILLed mid-burst, Sentinel promotes the replica, the
//!   gateway and workers follow, every `202` reaches the database.
//! - An `outcome_unknown` purchase (Redis frozen with the script in its socket) is settled by
//!   `GET /orders/{id}` once Redis answers.

mod common;

use common::InProcess;
use fred::prelude::*;
use reqwest::StatusCode;
use sea_orm::{DatabaseConnection, EntityTrait};
use seckill_bench::audit::{self, Accepted, Check};
use seckill_infra::Config;
use seckill_infra::auth::{Jwt, Tickets};
use seckill_infra::durability::Durability;
use seckill_infra::scripts::{Purchase, PurchaseRequest, Scripts};
use seckill_schema::entity::orders;
use seckill_schema::keys::gene_of_item;
use seckill_schema::snowflake::Snowflake;
use seckill_schema::{ItemId, Keys, OrderId, OrderStatus, Quantity, UserId};
use seckill_testkit::{
    Backend, RedisOptions, RedisServer, Sentinel, ServerTask, TestEnv, config_set, wait_for,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

const ITEM: u64 = 81;
const PRICE: i64 = 990;
const CONCURRENCY: usize = 24;
const DRAIN: Duration = Duration::from_secs(90);

/// A gateway and workers in process, on the test's own Redis.
struct Stack {
    env: TestEnv,
    base: String,
    workers_base: String,
    http: reqwest::Client,
    tickets: Tickets,
    jwt: Jwt,
    db: DatabaseConnection,
    gateway: ServerTask<anyhow::Result<()>>,
    workers: ServerTask<anyhow::Result<()>>,
}

impl Stack {
    async fn start(redis_url: String, durability: Durability) -> Stack {
        seckill_infra::telemetry::init_tracing();
        let mut env = TestEnv::new(Backend::Postgres);
        env.config.redis_url = redis_url;
        env.config.redis_durability = durability;
        env.config.payment_timeout = Duration::from_secs(600);
        let config = env.config.clone();
        let InProcess {
            gateway: base,
            workers: workers_base,
            gateway_task: gateway,
            workers_task: workers,
        } = InProcess::start(&config).await;
        let db = seckill_infra::db::connect(&config.database_url, 2)
            .await
            .expect("the test's database");
        let stack = Stack {
            tickets: Tickets::new(&config.ticket_secret),
            jwt: Jwt::new(&config.jwt_secret),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .timeout(Duration::from_secs(20))
                .build()
                .expect("an HTTP client"),
            base,
            workers_base,
            db,
            env,
            gateway,
            workers,
        };
        let item = common::new_item(ItemId(ITEM), "redis failures", PRICE, 100_000, 1);
        common::create_item(&stack.base, &config, item).await;
        stack
    }

    fn config(&self) -> &Config {
        &self.env.config
    }

    async fn buy(&self, user: u64) -> Outcome {
        let ticket = self.tickets.mint(
            UserId(user),
            ItemId(ITEM),
            chrono::Utc::now().timestamp() + 600,
        );
        let sent = self
            .http
            .post(format!("{}/seckill", self.base))
            .json(&json!({"item_id": ITEM, "ticket": ticket}))
            .send()
            .await;
        let Ok(resp) = sent else {
            return Outcome::CutOff;
        };
        let status = resp.status();
        let Ok(body) = resp.json::<Value>().await else {
            return Outcome::CutOff;
        };
        let order = || {
            body["order_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .map(OrderId)
                .unwrap_or_else(|| panic!("an order id in {body}"))
        };
        match (status, body["error"].as_str().unwrap_or_default()) {
            (StatusCode::ACCEPTED, _) => Outcome::Accepted(order()),
            (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown") => Outcome::Unknown(order()),
            (status, code) => Outcome::Refused(status.as_u16(), code.to_owned()),
        }
    }

    async fn get_order(&self, user: u64, id: OrderId) -> (StatusCode, Value) {
        let req = self
            .http
            .get(format!("{}/orders/{id}", self.base))
            .bearer_auth(self.jwt.mint(UserId(user), 600));
        let (status, body) = seckill_testkit::answer(req, "GET /orders/{id}").await;
        (StatusCode::from_u16(status).expect("a status code"), body)
    }

    /// `/readyz` of the gateway and of the workers.
    async fn readiness(&self) -> [(StatusCode, Value); 2] {
        let mut out = Vec::new();
        for base in [&self.base, &self.workers_base] {
            let resp = self
                .http
                .get(format!("{base}/readyz"))
                .send()
                .await
                .expect("GET /readyz");
            let status = resp.status();
            out.push((status, resp.json().await.unwrap_or(Value::Null)));
        }
        [out.remove(0), out.remove(0)]
    }

    async fn orders(&self) -> BTreeMap<OrderId, orders::Model> {
        orders::Entity::find()
            .all(&self.db)
            .await
            .expect("reading orders")
            .into_iter()
            .map(|o| (OrderId(o.id as u64), o))
            .collect()
    }

    /// Waits until every order the database holds awaits payment (or ended) and every `202` is
    /// among them, with the outbox empty: nothing more is on its way.
    async fn drained(&self, accepted: &BTreeSet<OrderId>) -> BTreeMap<OrderId, orders::Model> {
        let redis = seckill_infra::redis::client(&self.config().redis_url)
            .await
            .expect("Redis");
        let keys = Keys::new(&self.config().namespace);
        let deadline = std::time::Instant::now() + DRAIN;
        let stored = loop {
            let mut backlog = 0;
            for (_, stream) in keys.outboxes() {
                backlog += redis.xlen::<i64, _>(stream).await.unwrap_or(-1);
            }
            let stored = self.orders().await;
            let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
            for o in stored.values() {
                *by_status.entry(o.status.clone()).or_default() += 1;
            }
            let settled = stored.values().all(|o| {
                let s: OrderStatus = o.status.parse().expect("a status");
                s == OrderStatus::AwaitingPayment || s.is_final()
            });
            let missing = accepted
                .iter()
                .filter(|id| !stored.contains_key(id))
                .count();
            if backlog == 0 && settled && missing == 0 {
                break stored;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the pipeline did not drain within {DRAIN:?}: outbox backlog {backlog}, \
                 orders by status {by_status:?}, {missing} accepted orders not in the database"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let _ = redis.quit().await;
        stored
    }

    async fn audit(&self, accepted: Accepted) -> Vec<Check> {
        audit::audit(self.config(), ItemId(ITEM), accepted)
            .await
            .expect("the audit reads every source")
    }

    async fn stop(mut self) {
        for t in [self.gateway.stop_later(), self.workers.stop_later()] {
            let _ = tokio::time::timeout(Duration::from_secs(40), t).await;
        }
        self.env.cleanup().await;
    }
}

#[derive(Debug, Clone)]
enum Outcome {
    Accepted(OrderId),
    Unknown(OrderId),
    Refused(u16, String),
    CutOff,
}

/// What the buyers of a burst saw.
#[derive(Default)]
struct Seen {
    accepted: Mutex<BTreeMap<OrderId, u64>>,
    unknown: Mutex<BTreeMap<OrderId, u64>>,
    refused: Mutex<BTreeMap<(u16, String), usize>>,
    cut_off: AtomicU64,
}

impl Seen {
    fn record(&self, user: u64, outcome: Outcome) {
        match outcome {
            Outcome::Accepted(id) => {
                self.accepted.lock().unwrap().insert(id, user);
            }
            Outcome::Unknown(id) => {
                self.unknown.lock().unwrap().insert(id, user);
            }
            Outcome::Refused(status, code) => {
                *self
                    .refused
                    .lock()
                    .unwrap()
                    .entry((status, code))
                    .or_default() += 1;
            }
            Outcome::CutOff => {
                self.cut_off.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// What the audit is told: the `202`s, and the answers that may or may not have sold.
    fn as_accepted(&self) -> Accepted {
        Accepted {
            answered: self.accepted_count() as u64,
            cut_off: self.unknown.lock().unwrap().len() as u64
                + self.cut_off.load(Ordering::Relaxed),
        }
    }

    /// Every order the database holds was answered `202` or `503 outcome_unknown` naming it.
    fn assert_answered(&self, stored: &BTreeMap<OrderId, orders::Model>) {
        let accepted = self.accepted.lock().unwrap();
        let unknown = self.unknown.lock().unwrap();
        for id in stored.keys() {
            assert!(
                accepted.contains_key(id) || unknown.contains_key(id),
                "order {id} is in the database but its buyer was told neither 202 nor \
                 outcome_unknown"
            );
        }
    }

    fn accepted_ids(&self) -> BTreeSet<OrderId> {
        self.accepted.lock().unwrap().keys().copied().collect()
    }

    fn accepted_count(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    fn refused(&self) -> BTreeMap<(u16, String), usize> {
        self.refused.lock().unwrap().clone()
    }
}

/// Buys once for each of `users`, `CONCURRENCY` at a time; `tick` is told after each answer.
async fn burst(stack: &Stack, users: Vec<u64>, seen: &Seen, tick: &Notify) {
    use futures_util::StreamExt;
    futures_util::stream::iter(users)
        .map(|user| async move {
            let outcome = stack.buy(user).await;
            seen.record(user, outcome);
            tick.notify_one();
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
}

/// Waits until `seen` holds at least `n` accepted orders.
async fn until_accepted(seen: &Seen, tick: &Notify, n: usize) {
    while seen.accepted_count() < n {
        if tokio::time::timeout(Duration::from_secs(30), tick.notified())
            .await
            .is_err()
        {
            panic!(
                "the burst stopped answering at {} accepted; refused: {:?}, cut off: {}",
                seen.accepted_count(),
                seen.refused(),
                seen.cut_off.load(Ordering::Relaxed)
            );
        }
    }
}

/// Buys for new users until one is sold to (selling resumed by itself); every answer is seen.
async fn sell_again(stack: &Stack, seen: &Seen, first_user: u64) -> OrderId {
    let bought = |user| async move {
        let outcome = stack.buy(user).await;
        seen.record(user, outcome.clone());
        match outcome {
            Outcome::Accepted(id) => Some(id),
            _ => None,
        }
    };
    common::sells_again(first_user, bought).await.1
}

fn failed_invariants(checks: &[Check]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{} (invariant {}): {}", c.name, c.invariant, c.detail))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsync_redis_sigkilled_mid_burst_twice_loses_no_accepted_order() {
    let mut redis = RedisServer::start(RedisOptions::default());
    redis.wait_ready().await;
    let stack = Stack::start(redis.url(), Durability::Fsync).await;
    let seen = Seen::default();
    let tick = Notify::new();
    let users: Vec<u64> = (1..=1500).collect();
    let chaos = async {
        for after in [300, 800] {
            until_accepted(&seen, &tick, after).await;
            redis.kill();
            redis.restart();
            redis.wait_ready().await;
        }
    };
    tokio::join!(burst(&stack, users, &seen, &tick), chaos);

    let accepted = seen.accepted_ids();
    let unknown = seen.unknown.lock().unwrap().clone();
    let stored = stack.drained(&accepted).await;
    seen.assert_answered(&stored);
    // Each outcome_unknown is settled by GET /orders/{id}: 200 when it sold, 404 when not.
    for (id, user) in &unknown {
        let (status, body) = stack.get_order(*user, *id).await;
        if stored.contains_key(id) {
            assert_eq!(status, StatusCode::OK, "{id}: {body}");
        } else {
            assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {body}");
        }
    }
    let refused = seen.refused();
    assert!(
        refused.keys().all(|(status, code)| *status == 503
            && (code == "unavailable" || code == "recovering")),
        "only 503s while Redis was down: {refused:?}"
    );
    eprintln!(
        "fsync, two SIGKILLs: {} 202s, all stored; {} outcome_unknown settled; refused {refused:?}",
        accepted.len(),
        unknown.len()
    );
    let checks = stack.audit(seen.as_accepted()).await;
    assert_eq!(failed_invariants(&checks), Vec::<String>::new());
    assert!(
        accepted.len() > 800,
        "the sale went on after each restart: {} accepted",
        accepted.len()
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_empty_mid_burst_recovers_by_itself_within_every_limit() {
    let mut redis = RedisServer::start(RedisOptions::default().appendonly(false));
    redis.wait_ready().await;
    let stack = Stack::start(redis.url(), Durability::None).await;
    let seen = Seen::default();
    let tick = Notify::new();
    // Every buyer tries twice (a limit of one), so a Redis that forgot its buyers would sell twice.
    let users: Vec<u64> = (1..=600).chain(1..=600).collect();
    let chaos = async {
        until_accepted(&seen, &tick, 250).await;
        redis.wipe_and_restart();
        redis.wait_ready().await;
    };
    tokio::join!(burst(&stack, users, &seen, &tick), chaos);

    // Selling resumes with no manual step.
    let resumed = sell_again(&stack, &seen, 10_000).await;

    let refused = seen.refused();
    assert!(
        !refused.contains_key(&(404, "unknown_item".to_owned())),
        "never 404 for an item the database knows: {refused:?}"
    );
    assert!(
        refused
            .keys()
            .all(|(status, code)| (*status == 409 && code == "limit_reached")
                || (*status == 503 && (code == "recovering" || code == "unavailable"))),
        "{refused:?}"
    );
    // Orders relayed before the loss reach the database; the rest went with Redis (mode none).
    let stored = stack.drained(&BTreeSet::from([resumed])).await;
    let mut per_user: BTreeMap<i64, i64> = BTreeMap::new();
    for o in stored.values() {
        let s: OrderStatus = o.status.parse().expect("a status");
        if s.holds_stock() {
            *per_user.entry(o.user_id).or_default() += o.quantity as i64;
        }
    }
    assert!(
        per_user.values().all(|units| *units <= 1),
        "no buyer over their limit: {:?}",
        per_user.iter().filter(|(_, u)| **u > 1).collect::<Vec<_>>()
    );
    eprintln!(
        "none, restarted empty: {} 202s ({} stored, the rest went with Redis); refused {refused:?}",
        seen.accepted_count(),
        stored.len()
    );
    let checks = stack.audit(seen.as_accepted()).await;
    // Invariant 3 (nothing lost) is not promised without persistence; the others are.
    let broken: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed && c.invariant != 3)
        .map(|c| format!("{} (invariant {}): {}", c.name, c.invariant, c.detail))
        .collect();
    assert_eq!(broken, Vec::<String>::new());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_mode_follows_a_sentinel_failover_and_loses_no_accepted_order() {
    // Each refuses writes while it is a master without a replica, as replica mode asks.
    let replicated = || {
        RedisOptions::default()
            .appendonly(false)
            .arg("min-replicas-to-write", "1")
    };
    let mut master = RedisServer::start(replicated());
    master.wait_ready().await;
    let replica = RedisServer::start(replicated().replicaof(master.port()));
    replica.wait_ready().await;
    let sentinel = Sentinel::start("seckill", master.port());
    sentinel.wait_ready().await;
    wait_for("the replica to be online", Duration::from_secs(30), || {
        let sentinel = &sentinel;
        let port = replica.port();
        async move { sentinel.replica_ports().await.contains(&port).then_some(()) }
    })
    .await;
    master.wait_replicas_online(1).await;
    let stack = Stack::start(sentinel.url(), Durability::Replica).await;
    let seen = Seen::default();
    let tick = Notify::new();
    let users: Vec<u64> = (1..=1200).collect();
    let chaos = async {
        until_accepted(&seen, &tick, 300).await;
        master.kill();
        wait_for(
            "Sentinel to promote the replica",
            Duration::from_secs(60),
            || {
                let sentinel = &sentinel;
                let port = replica.port();
                async move { (sentinel.master_port().await == Some(port)).then_some(()) }
            },
        )
        .await;
        // The old master comes back; Sentinel makes it the new master's replica, so purchases
        // can be confirmed by a replica again.
        master.restart();
        master.wait_ready().await;
    };
    tokio::join!(burst(&stack, users, &seen, &tick), chaos);
    let accepted_before = seen.accepted_count();
    // Sales go on after the failover.
    sell_again(&stack, &seen, 20_000).await;

    let accepted = seen.accepted_ids();
    let stored = stack.drained(&accepted).await;
    seen.assert_answered(&stored);
    eprintln!(
        "replica, master SIGKILLed: {accepted_before} 202s before the failover was over, {} in all, \
         all stored; refused {:?}",
        accepted.len(),
        seen.refused()
    );
    let checks = stack.audit(seen.as_accepted()).await;
    assert_eq!(failed_invariants(&checks), Vec::<String>::new());
    assert!(accepted_before >= 300);
    stack.stop().await;
    drop(replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outcome_unknown_purchase_is_settled_by_get_once_redis_answers() {
    let redis = RedisServer::start(RedisOptions::default());
    redis.wait_ready().await;
    let stack = Arc::new(Stack::start(redis.url(), Durability::Fsync).await);
    let first = stack.buy(100).await;
    assert!(matches!(first, Outcome::Accepted(_)), "{first:?}");
    // Frozen: the connection stays up, the script waits in Redis's socket, no answer comes.
    redis.pause();
    let outcome = stack.buy(1).await;
    let Outcome::Unknown(id) = outcome else {
        redis.resume();
        panic!("expected 503 outcome_unknown, got {outcome:?}");
    };
    redis.resume();
    // Once Redis runs again, the purchase it had received runs too: the order exists, and its
    // owner's GET says so (never 404), then the pipeline carries it to the database.
    let (status, body) = wait_for(
        "GET /orders/{id} to answer",
        Duration::from_secs(20),
        || {
            let stack = stack.clone();
            async move {
                let (status, body) = stack.get_order(1, id).await;
                (status != StatusCode::SERVICE_UNAVAILABLE).then_some((status, body))
            }
        },
    )
    .await;
    let probe = seckill_infra::redis::client(&redis.url())
        .await
        .expect("Redis");
    let record: std::collections::HashMap<String, String> = probe
        .hgetall(Keys::new(&stack.config().namespace).order(id))
        .await
        .expect("HGETALL");
    let _ = probe.quit().await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{body}; the record in Redis: {record:?}"
    );
    let stored = stack.drained(&BTreeSet::from([id])).await;
    let Outcome::Accepted(first) = first else {
        unreachable!()
    };
    assert!(stored.contains_key(&first));
    assert!(stored.contains_key(&id));
    let checks = stack
        .audit(Accepted {
            answered: 1,
            cut_off: 1,
        })
        .await;
    assert_eq!(failed_invariants(&checks), Vec::<String>::new());
    // The other way round: the owner's GET comes first and answers 404; the purchase of that id,
    // still on its way, must then not sell, or the 404 would have been a lie.
    let client = seckill_infra::redis::client(&redis.url())
        .await
        .expect("Redis");
    let scripts = Scripts::new(Keys::new(&stack.config().namespace));
    let late = OrderId(Snowflake::new(1).next(gene_of_item(ItemId(ITEM))).unwrap());
    let (status, body) = stack.get_order(3, late).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let request = PurchaseRequest {
        order_id: late,
        user: UserId(3),
        item: ItemId(ITEM),
        quantity: Quantity::ONE,
        idempotency_key: None,
        shards: 1,
    };
    let sold = scripts
        .purchase(&client, &request)
        .await
        .expect("the script runs");
    assert_eq!(sold, Purchase::Void);
    // Someone else's GET of that id fences nothing of user 3's.
    let other = OrderId(Snowflake::new(2).next(gene_of_item(ItemId(ITEM))).unwrap());
    assert_eq!(stack.get_order(4, other).await.0, StatusCode::NOT_FOUND);
    let request = PurchaseRequest {
        order_id: other,
        ..request
    };
    assert!(matches!(
        scripts
            .purchase(&client, &request)
            .await
            .expect("the script runs"),
        Purchase::Accepted { .. }
    ));
    let _ = client.quit().await;
    Arc::try_unwrap(stack)
        .unwrap_or_else(|_| panic!("the stack is ours again"))
        .stop()
        .await;
}

/// Waits until the gateway and the workers both answer `/readyz` 503 with a durability reason that
/// names `word`.
async fn not_ready_because(stack: &Stack, word: &str) {
    wait_for(
        &format!("both processes not ready, naming {word}"),
        Duration::from_secs(20),
        || async {
            let both = stack.readiness().await;
            both.iter()
                .all(|(status, body)| {
                    *status == StatusCode::SERVICE_UNAVAILABLE
                        && body["redis_durability"]["ok"] == false
                        && body["redis_durability"]["reasons"]
                            .to_string()
                            .contains(word)
                })
                .then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_are_not_ready_while_redis_cannot_keep_the_modes_promise() {
    let redis = RedisServer::start(RedisOptions::default().appendonly(false));
    redis.wait_ready().await;
    let stack = Stack::start(redis.url(), Durability::Fsync).await;
    let admin = seckill_infra::redis::client(&redis.url())
        .await
        .expect("Redis");
    // No append-only file: an accepted order would not survive a Redis crash.
    not_ready_because(&stack, "appendonly").await;
    config_set(&admin, "appendfsync", "always").await;
    config_set(&admin, "appendonly", "yes").await;
    wait_for("both processes ready", Duration::from_secs(20), || async {
        let both = stack.readiness().await;
        both.iter()
            .all(|(status, _)| *status == StatusCode::OK)
            .then_some(())
    })
    .await;
    // Durability weakened at run time: within about a second (the watch reads Redis once a
    // second) purchases are refused, and every one after that sells nothing.
    let users = AtomicU64::new(1);
    assert!(matches!(
        stack.buy(users.fetch_add(1, Ordering::Relaxed)).await,
        Outcome::Accepted(_)
    ));
    config_set(&admin, "appendfsync", "everysec").await;
    refused_within_seconds(&stack, &users, "appendfsync everysec").await;
    not_ready_because(&stack, "appendfsync").await;
    config_set(&admin, "appendfsync", "always").await;
    wait_for(
        "a purchase accepted again",
        Duration::from_secs(20),
        || async {
            matches!(
                stack.buy(users.fetch_add(1, Ordering::Relaxed)).await,
                Outcome::Accepted(_)
            )
            .then_some(())
        },
    )
    .await;
    // An evicting policy may drop stock or a buyer's holdings under memory pressure.
    config_set(&admin, "maxmemory-policy", "allkeys-lru").await;
    refused_within_seconds(&stack, &users, "an evicting policy").await;
    not_ready_because(&stack, "noeviction").await;
    let _ = admin.quit().await;
    stack.stop().await;
}

/// Purchases by new buyers are refused `503 unavailable` within a few seconds of `what` (the
/// durability watch reads Redis once a second), and the next twenty sell nothing.
async fn refused_within_seconds(stack: &Stack, users: &AtomicU64, what: &str) {
    let since = std::time::Instant::now();
    let accepted_meanwhile = AtomicU64::new(0);
    // Five seconds leaves room for a machine loaded by the rest of the suite; the figure printed
    // is what it took.
    wait_for(
        &format!("purchases refused after {what}"),
        Duration::from_secs(5),
        || async {
            match stack.buy(users.fetch_add(1, Ordering::Relaxed)).await {
                Outcome::Refused(503, code) if code == "unavailable" => Some(()),
                Outcome::Accepted(_) => {
                    accepted_meanwhile.fetch_add(1, Ordering::Relaxed);
                    None
                }
                other => panic!("after {what}: {other:?}"),
            }
        },
    )
    .await;
    eprintln!(
        "{what}: refused after {:?} ({} accepted meanwhile)",
        since.elapsed(),
        accepted_meanwhile.into_inner()
    );
    for _ in 0..20 {
        let outcome = stack.buy(users.fetch_add(1, Ordering::Relaxed)).await;
        assert!(
            matches!(&outcome, Outcome::Refused(503, code) if code == "unavailable"),
            "after {what} every purchase is refused: {outcome:?}"
        );
    }
}
