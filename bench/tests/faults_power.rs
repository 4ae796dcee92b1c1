//! Power cuts, not just crashes: Redis's and PostgreSQL's data directories on a [`LazyFs`] mount,
//! which keeps only what was fsynced when [`LazyFs::power_cut`] drops the rest (a SIGKILL alone
//! leaves the page cache, which a power cut does not). The real gateway and workers run in process
//! against them (the other servers are the shared ones); every purchase goes through the history
//! checker's recording client, and each test ends with [`history::check`] (the history's rules and
//! the bench's audit).
//!
//! - Redis (`appendonly yes`, `appendfsync always`, `SECKILL_REDIS_DURABILITY=fsync`) SIGKILLed
//!   and power-cut mid-burst, restarted on the same mount: every `202` is stored once.
//! - The same with `appendfsync no`: in `fsync` mode the gateway refuses to sell (every purchase
//!   `503 unavailable`, nothing sold); in `none` mode it sells, and the power cut takes the `202`s
//!   with it: the check fails on `accepted_stored`. So the fault and the checker can catch a loss.
//! - The workers' PostgreSQL (its own cluster, `fsync` and `synchronous_commit` on) SIGKILLed and
//!   power-cut mid-drain, restarted: every committed order is still there, the workers reconnect,
//!   the pipeline completes, and the check passes. With `fsync=off`, committed and acked orders
//!   are lost and the check fails.
//!
//! In the Redis tests, a stuck relay holds the item's gene's relay lease from the start until the
//! power cut (a gateway whose broker is unreachable: it renews its lease and publishes nothing),
//! so every order accepted before the cut is in Redis's outbox only, never yet on the broker: the
//! cut's outcome depends on what Redis fsynced and nothing else. It dies with the power; its
//! lease runs out after the restart and the gateway's own relay takes the stream over.

mod common;

use common::InProcess;
use fred::prelude::*;
use sea_orm::sea_query::IntoCondition;
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter};
use seckill_bench::audit::Check;
use seckill_bench::history::{self, Client, History, Outcome};
use seckill_infra::Config;
use seckill_infra::broker::Topology;
use seckill_infra::durability::Durability;
use seckill_infra::scripts::Scripts;
use seckill_schema::entity::orders;
use seckill_schema::keys::gene_of_item;
use seckill_schema::messages::Kind;
use seckill_schema::{ItemId, Keys, OrderId, UserId};
use seckill_testkit::{
    Backend, LazyFs, LocalPostgres, RedisOptions, RedisServer, Stores, TestEnv, queue_depth,
    wait_for,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const ITEM: ItemId = ItemId(91);
const PRICE: i64 = 1299;
/// More than every buyer wants: nothing sells out, every refusal is the fault's.
const STOCK: u64 = 100_000;
const CONCURRENCY: usize = 24;
/// How long the client waits for an answer before recording the request as cut off.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
const SETTLE: Duration = Duration::from_secs(30);
const DRAIN: Duration = Duration::from_secs(120);

/// A gateway and workers in process on a test namespace, with the item on sale.
struct Stack {
    env: TestEnv,
    procs: Option<InProcess>,
}

impl Stack {
    /// Starts the processes and puts the item on sale.
    async fn start(env: TestEnv) -> Stack {
        seckill_infra::telemetry::init_tracing();
        let mut stack = Stack { env, procs: None };
        stack.start_processes().await;
        stack.create_item().await;
        stack
    }

    /// The gateway, then the workers, on the environment's configuration as it is now.
    async fn start_processes(&mut self) {
        assert!(self.procs.is_none(), "the processes run already");
        self.procs = Some(InProcess::start(&self.env.config).await);
    }

    fn config(&self) -> &Config {
        &self.env.config
    }

    fn gateway(&self) -> &str {
        &self.procs.as_ref().expect("running").gateway
    }

    /// `POST /admin/items`: the item, on sale now, one unit per buyer.
    async fn create_item(&self) {
        let item = common::new_item(ITEM, "power cut", PRICE, STOCK, 1);
        common::create_item(self.gateway(), self.config(), item).await;
    }

    /// Stops the gateway (its relay empties what it can and gives its leases up) and the workers.
    async fn stop_processes(&mut self) {
        if let Some(p) = self.procs.take() {
            for t in [p.gateway_task.stop_later(), p.workers_task.stop_later()] {
                let _ = tokio::time::timeout(Duration::from_secs(40), t).await;
            }
        }
    }

    async fn stop(mut self) {
        self.stop_processes().await;
        self.env.cleanup().await;
    }
}

/// A Redis of the test's own, its data directory on the mount `fs`, with `appendonly yes` and
/// `appendfsync` `policy`.
async fn redis_on(fs: &LazyFs, policy: &str) -> RedisServer {
    RedisServer::start_ready(
        RedisOptions::default()
            .appendfsync(policy)
            // After the kit's own --dir: this one wins.
            .arg("dir", &fs.path_str()),
    )
    .await
}

/// A test environment whose processes use `redis_url` in `durability` mode.
fn env_on(redis_url: &str, durability: Durability) -> TestEnv {
    let mut env = TestEnv::new(Backend::Postgres);
    env.config.redis_url = redis_url.to_owned();
    env.config.redis_durability = durability;
    env.config.payment_timeout = Duration::from_secs(600);
    env
}

/// Counts the `202`s of a burst as they come, for the fault to strike at a chosen point.
#[derive(Default)]
struct Progress {
    accepted: AtomicUsize,
    tick: Notify,
}

impl Progress {
    fn record(&self, outcome: &Outcome) {
        if matches!(outcome, Outcome::Accepted(_)) {
            self.accepted.fetch_add(1, Ordering::Relaxed);
        }
        self.tick.notify_waiters();
    }

    async fn until_accepted(&self, n: usize, history: &History) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let notified = self.tick.notified();
            if self.accepted.load(Ordering::Relaxed) >= n {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero() && tokio::time::timeout(left, notified).await.is_ok(),
                "the burst did not reach {n} 202s within 60 s: {}",
                outcomes(history)
            );
        }
    }
}

/// One purchase of one unit for each of `users`, `CONCURRENCY` at a time, through `client`.
async fn burst(client: &Client, users: std::ops::RangeInclusive<u64>, progress: &Progress) {
    use futures_util::StreamExt;
    futures_util::stream::iter(users)
        .map(|user| async move {
            let outcome = client.buy(UserId(user), ITEM, 1, None).await;
            progress.record(&outcome);
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
}

/// The history's answers, counted by kind: `{"202": 812, "503 unavailable": 9, …}`.
fn outcomes(history: &History) -> String {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for op in history.ops() {
        let kind = match op.outcome {
            Outcome::Accepted(_) => "202".to_owned(),
            Outcome::OutcomeUnknown(_) => "503 outcome_unknown".to_owned(),
            Outcome::LimitReached(_) => "409 limit_reached".to_owned(),
            other => other.to_string(),
        };
        *by.entry(kind).or_default() += 1;
    }
    format!("{by:?}")
}

fn accepted_ids(history: &History) -> BTreeSet<OrderId> {
    history
        .ops()
        .iter()
        .filter_map(|op| match op.outcome {
            Outcome::Accepted(id) => Some(id),
            _ => None,
        })
        .collect()
}

/// How many problems a failed check's detail counts: those it names, and "and N more".
fn problems(detail: &str) -> usize {
    match detail.rsplit_once("; and ") {
        Some((named, more)) => {
            let more: usize = more
                .strip_suffix(" more")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a count at the end of {detail}"));
            named.matches("; ").count() + 1 + more
        }
        None => detail.matches("; ").count() + 1,
    }
}

fn failed(checks: &[Check]) -> Vec<&Check> {
    checks.iter().filter(|c| !c.passed).collect()
}

fn describe(checks: &[&Check]) -> String {
    checks
        .iter()
        .map(|c| format!("✗ {} (invariant {}): {}", c.name, c.invariant, c.detail))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The checker's checks of `history` (the history's rules and the bench's audit).
async fn checks_of(history: &History, config: &Config) -> Vec<Check> {
    history::check(history, config, ITEM)
        .await
        .expect("the checker reads every source")
}

/// Settles the `outcome_unknown`s, waits for the pipeline, and runs the checker: its checks must
/// all pass.
async fn check_passes(client: &Client, history: &History, config: &Config) -> Vec<Check> {
    let settle = client.settle(SETTLE).await;
    assert_eq!(settle.unsettled, 0, "{settle:?}");
    history::wait_for_orders(history, config, ITEM, DRAIN)
        .await
        .unwrap_or_else(|e| panic!("{e:#}; answers: {}", outcomes(history)));
    let checks = checks_of(history, config).await;
    let bad = failed(&checks);
    assert!(
        bad.is_empty(),
        "{}\nanswers: {}\n{}",
        describe(&bad),
        outcomes(history),
        history.to_json()
    );
    checks
}

/// The item's gene's relay lease held by a relay that publishes nothing (a gateway whose broker
/// is unreachable renews its lease and relays nothing), until [`StuckRelay::dies`].
struct StuckRelay {
    task: tokio::task::JoinHandle<()>,
}

impl StuckRelay {
    /// Takes the lease (before any gateway runs: a live relay keeps its lease) and renews it
    /// every second, with the relays' own script and time to live.
    async fn hold(config: &Config) -> StuckRelay {
        let redis = seckill_infra::redis::client(&config.redis_url)
            .await
            .expect("Redis");
        let scripts = Scripts::new(Keys::new(&config.namespace));
        let gene = gene_of_item(ITEM);
        const TTL_MS: u64 = 5_000;
        let taken = scripts
            .relay_lease(&redis, gene, "stuck-relay", TTL_MS, true)
            .await
            .expect("taking the relay lease");
        assert!(taken, "the relay lease was free");
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                let _ = scripts
                    .relay_lease(&redis, gene, "stuck-relay", TTL_MS, true)
                    .await;
            }
        });
        StuckRelay { task }
    }

    /// The power cut takes it too: it renews nothing more, and its lease runs out.
    async fn dies(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The order ids in the item's gene's outbox (entries `e` = `"<order> <user> …"`).
async fn outbox_ids(config: &Config) -> BTreeSet<OrderId> {
    let redis = seckill_infra::redis::client(&config.redis_url)
        .await
        .expect("Redis");
    let keys = Keys::new(&config.namespace);
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = redis
        .xrange(keys.outbox(gene_of_item(ITEM)), "-", "+", None)
        .await
        .expect("XRANGE");
    let _ = redis.quit().await;
    entries
        .iter()
        .filter_map(|(_, fields)| fields.get("e")?.split(' ').next()?.parse().ok())
        .map(OrderId)
        .collect()
}

async fn outbox_len(config: &Config) -> i64 {
    let redis = seckill_infra::redis::client(&config.redis_url)
        .await
        .expect("Redis");
    let keys = Keys::new(&config.namespace);
    let n: i64 = redis
        .xlen(keys.outbox(gene_of_item(ITEM)))
        .await
        .expect("XLEN");
    let _ = redis.quit().await;
    n
}

/// What a Redis power-cut run saw.
struct RedisRun {
    stack: Stack,
    client: Client,
    history: History,
    /// The `202`s answered before the cut.
    before_cut: BTreeSet<OrderId>,
    /// Orders in the outbox (nowhere else yet) at the cut.
    outbox_at_cut: usize,
    /// `202`s answered just before the outbox was read, not in it.
    answered_not_in_outbox: usize,
    /// When Redis answered again, on the history's clock (an op's `invoked_ms`): a purchase
    /// invoked later ran on the restarted Redis.
    restarted_ms: u64,
}

/// The Redis scenario on `redis` (on the mount `fs`), with `stack` running against it: a stuck
/// relay holds the gene's outbox, a burst of `buyers` purchases, and once `cut_after` of them are
/// answered `202`, Redis is SIGKILLed, the power cut, and Redis started again on the same mount;
/// then the burst's end, and a buyer more who must be sold to once the system has recovered by
/// itself.
async fn redis_power_cut(
    fs: &mut LazyFs,
    redis: &mut RedisServer,
    stack: Stack,
    stuck: StuckRelay,
    buyers: u64,
    cut_after: usize,
) -> RedisRun {
    let config = stack.config().clone();
    let history = History::new();
    let client = Client::new(&history, &config, stack.gateway()).with_timeout(CLIENT_TIMEOUT);
    let progress = Progress::default();
    let mut before_cut = BTreeSet::new();
    let mut outbox_at_cut = 0;
    let mut answered_not_in_outbox = 0;
    let mut restarted_ms = 0;
    let started = Instant::now();
    let chaos = async {
        progress.until_accepted(cut_after, &history).await;
        stuck.dies().await;
        let answered = accepted_ids(&history);
        let outbox = outbox_ids(&config).await;
        outbox_at_cut = outbox.len();
        answered_not_in_outbox = answered.difference(&outbox).count();
        let stats = fs.stats();
        redis.kill();
        // Every 202 answered so far was answered before the kill.
        before_cut = accepted_ids(&history);
        fs.power_cut();
        let cut_at = started.elapsed();
        redis.restart();
        redis.wait_ready().await;
        restarted_ms = history.now_ms();
        eprintln!(
            "power cut at {cut_at:?}: {} answered 202, {outbox_at_cut} orders in the outbox \
             only; the mount before the cut: {stats:?}; Redis answers again after {:?}",
            before_cut.len(),
            started.elapsed() - cut_at
        );
    };
    tokio::join!(burst(&client, 1..=buyers, &progress), chaos);
    let buyer = &client;
    let bought = |user| async move {
        match buyer.buy(UserId(user), ITEM, 1, None).await {
            Outcome::Accepted(id) => Some(id),
            _ => None,
        }
    };
    let (user, _) = common::sells_again(1_000_000, bought).await;
    eprintln!(
        "the burst ended after {:?}; sold again to user {user}; answers: {}",
        started.elapsed(),
        outcomes(&history)
    );
    RedisRun {
        stack,
        client,
        history,
        before_cut,
        outbox_at_cut,
        answered_not_in_outbox,
        restarted_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_power_cut_mid_burst_loses_no_accepted_order() {
    let started = Instant::now();
    let mut fs = LazyFs::temp();
    let mut redis = redis_on(&fs, "always").await;
    let env = env_on(&redis.url(), Durability::Fsync);
    let stuck = StuckRelay::hold(&env.config).await;
    let stack = Stack::start(env).await;

    let run = redis_power_cut(&mut fs, &mut redis, stack, stuck, 1_000, 300).await;
    assert!(run.before_cut.len() >= 300);
    assert_eq!(
        run.answered_not_in_outbox, 0,
        "every order answered 202 before the cut was in the outbox, unrelayed"
    );
    assert!(run.outbox_at_cut >= 300, "{}", run.outbox_at_cut);
    let config = run.stack.config().clone();
    let checks = check_passes(&run.client, &run.history, &config).await;
    for c in &checks {
        eprintln!("✓ {}: {}", c.name, c.detail);
    }
    eprintln!(
        "appendfsync always: {} 202s before the cut, all stored; {} in all; {:?}",
        run.before_cut.len(),
        accepted_ids(&run.history).len(),
        started.elapsed()
    );
    run.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_without_fsync_refuses_in_fsync_mode_and_loses_202s_to_a_power_cut_in_none_mode() {
    let started = Instant::now();
    let mut fs = LazyFs::temp();
    let mut redis = redis_on(&fs, "no").await;

    // fsync mode on a Redis that never fsyncs: nothing is sold, every purchase is refused.
    let mut stack = Stack::start(env_on(&redis.url(), Durability::Fsync)).await;
    let config = stack.config().clone();
    let refused = History::new();
    let client = Client::new(&refused, &config, stack.gateway()).with_timeout(CLIENT_TIMEOUT);
    burst(&client, 1..=50, &Progress::default()).await;
    let ops = refused.ops();
    assert!(
        ops.iter().all(|op| op.outcome == Outcome::Unavailable),
        "fsync mode sold on a Redis without fsync: {}",
        outcomes(&refused)
    );
    let db = database(&config).await;
    let stored = orders::Entity::find()
        .all(&db)
        .await
        .expect("reading orders");
    assert!(stored.is_empty(), "{stored:?}");
    let _ = db.close().await;
    assert_eq!(outbox_len(&config).await, 0, "nothing reached the outbox");
    let checks = checks_of(&refused, &config).await;
    assert!(failed(&checks).is_empty(), "{}", describe(&failed(&checks)));
    eprintln!(
        "fsync mode, appendfsync no: {} purchases, {}",
        ops.len(),
        outcomes(&refused)
    );
    stack.stop_processes().await;

    // none mode on the same Redis: it sells, and a power cut takes the 202s with it.
    stack.env.config.redis_durability = Durability::None;
    let stuck = StuckRelay::hold(stack.config()).await;
    stack.start_processes().await;
    let run = redis_power_cut(&mut fs, &mut redis, stack, stuck, 1_000, 300).await;
    assert_eq!(run.answered_not_in_outbox, 0);
    let config = run.stack.config().clone();
    let settle = run.client.settle(SETTLE).await;
    assert_eq!(settle.unsettled, 0, "{settle:?}");
    // What sold on the restarted Redis reaches the database; what was answered before the cut
    // is gone (and maybe a few more answered after the kill: sold before it, their 202s on the
    // way).
    let after_restart: BTreeSet<OrderId> = run
        .history
        .ops()
        .iter()
        .filter(|op| op.span.invoked_ms >= run.restarted_ms)
        .filter_map(|op| match op.outcome {
            Outcome::Accepted(id) => Some(id),
            _ => None,
        })
        .collect();
    assert!(!after_restart.is_empty());
    wait_until_idle(&config, &after_restart).await;
    let stored = stored_ids(&config).await;
    let lost: BTreeSet<OrderId> = accepted_ids(&run.history)
        .difference(&stored)
        .copied()
        .collect();
    let checks = checks_of(&run.history, &config).await;
    let bad = failed(&checks);
    eprintln!(
        "appendfsync no, none mode: {} 202s before the cut, {} of them lost; the checker:\n{}",
        run.before_cut.len(),
        lost.len(),
        describe(&bad)
    );
    assert!(
        bad.iter().any(|c| c.name == "accepted_stored"),
        "the power cut took {} accepted orders and the checker did not notice:\n{}",
        lost.len(),
        describe(&bad)
    );
    let named = &bad
        .iter()
        .find(|c| c.name == "accepted_stored")
        .expect("just found")
        .detail;
    assert!(named.contains("not in the database"), "{named}");
    assert_eq!(
        problems(named),
        lost.len(),
        "each lost 202 is named: {named}"
    );
    // The relay never had them: every order accepted before the cut was Redis's alone, and Redis
    // fsynced none of them.
    assert!(
        lost.is_superset(&run.before_cut),
        "only what was fsynced survives, and that is nothing: {} of the {} 202s answered before \
         the cut are stored",
        run.before_cut.difference(&lost).count(),
        run.before_cut.len()
    );
    eprintln!("{:?}", started.elapsed());
    run.stack.stop().await;
}

/// The item's stored order ids.
async fn stored_ids(config: &Config) -> BTreeSet<OrderId> {
    let db = database(config).await;
    let ids = order_ids(&db, orders::Column::ItemId.eq(ITEM.0 as i64)).await;
    let _ = db.close().await;
    ids
}

/// A connection to the test's database.
async fn database(config: &Config) -> DatabaseConnection {
    seckill_infra::db::connect(&config.database_url, 1)
        .await
        .expect("the test's database")
}

/// The ids of the orders `filter` selects.
async fn order_ids(db: &DatabaseConnection, filter: impl IntoCondition) -> BTreeSet<OrderId> {
    orders::Entity::find()
        .filter(filter)
        .all(db)
        .await
        .expect("reading orders")
        .into_iter()
        .map(|o| OrderId(o.id as u64))
        .collect()
}

/// Waits until the pipeline has nothing more to do for the item, when some orders will never
/// come (lost): every order of `expected` is stored, none is still on its way (`CREATED`,
/// `STOCK_LOCKED`) and each shows in Redis as stored, the outbox and the saga's first queues have
/// no ready message, and nothing stored changed for [`QUIET`] (longer than the workers' longest
/// retry pause, 2 s).
async fn wait_until_idle(config: &Config, expected: &BTreeSet<OrderId>) {
    const QUIET: Duration = Duration::from_secs(3);
    let Stores { db, redis, keys } = Stores::connect(config, 2).await;
    let topology = Topology::of(config);
    let deadline = Instant::now() + DRAIN;
    let mut last: Option<(Vec<(i64, String)>, Instant)> = None;
    loop {
        let read = orders::Entity::find()
            .filter(orders::Column::ItemId.eq(ITEM.0 as i64))
            .all(&db)
            .await;
        let unread = read.is_err();
        let rows = read.unwrap_or_default();
        let mut state: Vec<(i64, String)> = rows.iter().map(|o| (o.id, o.status.clone())).collect();
        state.sort();
        let have: BTreeSet<i64> = rows.iter().map(|o| o.id).collect();
        let missing = expected
            .iter()
            .filter(|id| !have.contains(&(id.0 as i64)))
            .count();
        let moving = history::on_their_way(&rows);
        let mut lagging = 0;
        for o in &rows {
            let shown: Option<String> = redis
                .hget(keys.order(OrderId(o.id as u64)), "status")
                .await
                .unwrap_or(None);
            lagging += usize::from(shown.as_deref() != Some(o.status.as_str()));
        }
        let outbox: i64 = redis
            .xlen(keys.outbox(gene_of_item(ITEM)))
            .await
            .unwrap_or(-1);
        let mut queued = 0;
        for kind in [
            Kind::OrderCreated,
            Kind::LockInventory,
            Kind::PreparePayment,
        ] {
            queued += queue_depth(&config.amqp_url, &topology.queue(kind))
                .await
                .unwrap_or(u32::MAX / 4);
        }
        let busy = unread || missing > 0 || moving > 0 || lagging > 0 || outbox != 0 || queued > 0;
        let now = Instant::now();
        match &last {
            Some((before, since)) if !busy && *before == state => {
                if now - *since >= QUIET {
                    break;
                }
            }
            _ => last = Some((state, now)),
        }
        if busy {
            last = None;
        }
        assert!(
            now < deadline,
            "the pipeline did not settle within {DRAIN:?}: {missing} expected orders not \
             stored, {moving} on their way, {lagging} not shown in Redis, outbox {outbox}, \
             {queued} messages ready"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = redis.quit().await;
    let _ = db.close().await;
}

/// The workers' database on a cluster of its own on a LazyFs mount: returns it with the test
/// environment pointing at it.
async fn env_on_own_postgres(fs: &LazyFs) -> (LocalPostgres, TestEnv) {
    let pg = LocalPostgres::init(&fs.path(), &[]).await;
    let mut env = TestEnv::new(Backend::Postgres);
    let name = env
        .config
        .database_url
        .rsplit('/')
        .next()
        .expect("a database name")
        .to_owned();
    env.config.database_url = pg.database_url(&name);
    env.config.payment_timeout = Duration::from_secs(600);
    (pg, env)
}

async fn show(db: &DatabaseConnection, setting: &str) -> String {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SHOW {setting}"),
        ))
        .await
        .expect("SHOW")
        .expect("a row");
    row.try_get_by_index::<String>(0).expect("a text")
}

/// What a PostgreSQL power-cut run saw.
struct PostgresRun {
    client: Client,
    history: History,
    /// The item's orders the database held just before the kill.
    stored_before: BTreeSet<OrderId>,
    /// Those of them still there after the restart.
    kept: BTreeSet<OrderId>,
}

/// A burst of `buyers` purchases; once the database holds `cut_at` of its orders (the workers
/// mid-drain, the burst still going), PostgreSQL is SIGKILLed, the power cut, and PostgreSQL
/// started again on the same mount; the workers must find it again by themselves.
async fn postgres_power_cut(
    fs: &mut LazyFs,
    pg: &mut LocalPostgres,
    stack: &Stack,
    buyers: u64,
    cut_at: usize,
) -> PostgresRun {
    let config = stack.config().clone();
    let history = History::new();
    let client = Client::new(&history, &config, stack.gateway()).with_timeout(CLIENT_TIMEOUT);
    let progress = Progress::default();
    let started = Instant::now();
    let mut stored_before = BTreeSet::new();
    let mut kept = BTreeSet::new();
    let chaos = async {
        let db = database(&config).await;
        let ids = || order_ids(&db, orders::Column::ItemId.eq(ITEM.0 as i64));
        wait_for(
            "the workers to store orders",
            Duration::from_secs(60),
            || async { (ids().await.len() >= cut_at).then_some(()) },
        )
        .await;
        stored_before = ids().await;
        let _ = db.close().await;
        let accepted = progress.accepted.load(Ordering::Relaxed);
        let stats = fs.stats();
        pg.kill();
        fs.power_cut();
        let cut_at = started.elapsed();
        pg.restart().await;
        eprintln!(
            "power cut at {cut_at:?}: {accepted} answered 202, {} stored; the mount before the \
             cut: {stats:?}; PostgreSQL accepts connections again after {:?}",
            stored_before.len(),
            started.elapsed() - cut_at
        );
        let db = database(&config).await;
        let stored = stored_before.iter().map(|id| id.0 as i64);
        kept = order_ids(&db, orders::Column::Id.is_in(stored)).await;
        let _ = db.close().await;
    };
    tokio::join!(burst(&client, 1..=buyers, &progress), chaos);
    eprintln!(
        "the burst ended after {:?}: {}",
        started.elapsed(),
        outcomes(&history)
    );
    PostgresRun {
        client,
        history,
        stored_before,
        kept,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_power_cut_mid_drain_loses_no_committed_order() {
    let started = Instant::now();
    let mut fs = LazyFs::temp();
    let (mut pg, env) = env_on_own_postgres(&fs).await;
    let stack = Stack::start(env).await;
    let config = stack.config().clone();
    let db = database(&config).await;
    assert_eq!(show(&db, "fsync").await, "on");
    assert_eq!(show(&db, "synchronous_commit").await, "on");
    let _ = db.close().await;

    let run = postgres_power_cut(&mut fs, &mut pg, &stack, 1_500, 300).await;
    assert_eq!(
        run.kept.len(),
        run.stored_before.len(),
        "committed orders lost to the power cut: {:?}",
        run.stored_before.difference(&run.kept).collect::<Vec<_>>()
    );
    let checks = check_passes(&run.client, &run.history, &config).await;
    for c in &checks {
        eprintln!("✓ {}: {}", c.name, c.detail);
    }
    eprintln!(
        "fsync on: {} orders stored before the cut, all kept; {} 202s stored; {:?}",
        run.stored_before.len(),
        accepted_ids(&run.history).len(),
        started.elapsed()
    );
    stack.stop().await;
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_without_fsync_loses_committed_orders_and_the_check_fails() {
    let started = Instant::now();
    let mut fs = LazyFs::temp();
    let (mut pg, env) = env_on_own_postgres(&fs).await;
    let stack = Stack::start(env).await;
    let config = stack.config().clone();
    // The database, its tables and the item are on disk; from here on, commits are not.
    let db = database(&config).await;
    db.execute_unprepared("ALTER SYSTEM SET fsync = off")
        .await
        .expect("ALTER SYSTEM");
    db.execute_unprepared("SELECT pg_reload_conf()")
        .await
        .expect("pg_reload_conf()");
    let _ = db.close().await;
    wait_for("fsync to be off", Duration::from_secs(20), || async {
        let db = seckill_infra::db::connect(&config.database_url, 1)
            .await
            .ok()?;
        let off = show(&db, "fsync").await == "off";
        let _ = db.close().await;
        off.then_some(())
    })
    .await;

    let run = postgres_power_cut(&mut fs, &mut pg, &stack, 1_500, 300).await;
    let lost: BTreeSet<OrderId> = run.stored_before.difference(&run.kept).copied().collect();
    assert!(
        !lost.is_empty(),
        "with fsync off, all {} committed orders survived the power cut",
        run.stored_before.len()
    );
    let settle = run.client.settle(SETTLE).await;
    assert_eq!(settle.unsettled, 0, "{settle:?}");
    wait_until_idle(&config, &BTreeSet::new()).await;
    let checks = checks_of(&run.history, &config).await;
    let bad = failed(&checks);
    eprintln!(
        "fsync off: {} orders stored before the cut, {} of them lost; the checker:\n{}",
        run.stored_before.len(),
        lost.len(),
        describe(&bad)
    );
    let accepted_stored = bad
        .iter()
        .find(|c| c.name == "accepted_stored")
        .unwrap_or_else(|| {
            panic!(
                "{} committed and acked orders lost, and the checker did not notice:\n{}",
                lost.len(),
                describe(&bad)
            )
        });
    // Each lost order is counted (and more may be: batches committed after the last look).
    assert!(
        problems(&accepted_stored.detail) >= lost.len(),
        "{} orders lost, fewer named: {}",
        lost.len(),
        accepted_stored.detail
    );
    eprintln!("{:?}", started.elapsed());
    stack.stop().await;
    drop(pg);
}
