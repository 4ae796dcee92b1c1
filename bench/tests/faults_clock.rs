//! Clock skew: two real gateway binaries whose wall clocks are wrong, one 10 minutes ahead and
//! one 10 minutes behind (libfaketime, `LD_PRELOAD`ed into the child process with `FAKETIME`;
//! the monotonic clock is left alone, as a machine's wrong wall clock leaves it), and the real
//! workers binary with the right time, on a Redis of the test's own, the shared RabbitMQ and
//! PostgreSQL. The sale window and the accepted time are Redis's `TIME`, read inside the purchase
//! script, so neither gateway sells early or late:
//!
//! - before the start (by Redis's clock) both answer `409 not_started`, though the fast one's
//!   clock is long past the end;
//! - in the window both sell, though the slow one's clock is before the start, and each order's
//!   accepted time is Redis's (its id carries its gateway's clock, 10 minutes off);
//! - after the end both answer `409 ended`, though the slow one's clock is before the start;
//! - an id minted by the fast gateway ("from the future") whose purchase was lost with Redis
//!   (frozen, then killed): its owner's `GET /orders/{id}` answers `404`, and that `404` is final:
//!   the same purchase arriving afterwards (the script run with that id, as a purchase held up on
//!   the way would be) sells nothing (`void`), and `GET` still answers `404`;
//! - the history checker passes.
//!
//! Every purchase goes through the history checker's recording client.

mod common;

use fred::prelude::*;
use seckill_bench::history::{self, Client, History, Outcome};
use seckill_infra::Config;
use seckill_infra::auth::Jwt;
use seckill_infra::scripts::{Purchase, PurchaseRequest, Scripts};
use seckill_schema::entity::orders;
use seckill_schema::snowflake::millis_of;
use seckill_schema::{ItemId, Keys, OrderId, Quantity, UserId};
use seckill_testkit::{Backend, RedisOptions, RedisServer, TestEnv, env_vars, free_port, wait_for};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const ITEM: ItemId = ItemId(93);
const PRICE: i64 = 4_200;
const STOCK: u64 = 100;
/// The sale starts this long after the item is made, and ends this long after (Redis's clock).
const STARTS_IN: Duration = Duration::from_secs(30);
const ENDS_IN: Duration = Duration::from_secs(60);
/// How far the gateways' wall clocks are off.
const SKEW_MS: i64 = 10 * 60 * 1000;
const BUYERS_PER_PHASE: u64 = 5;

/// libfaketime's multithreaded library (Debian's `libfaketime` package, which
/// `scripts/services.sh` installs), or `SECKILL_LIBFAKETIME`.
fn libfaketime() -> PathBuf {
    let found = seckill_testkit::installed("SECKILL_LIBFAKETIME", "/usr/lib", |arch| {
        Some(((), arch.path().join("faketime/libfaketimeMT.so.1")))
    });
    found.unwrap_or_else(|| {
        panic!(
            "libfaketime is missing (/usr/lib/<arch>/faketime/libfaketimeMT.so.1): \
             scripts/services.sh installs it (apt-get install faketime), or set SECKILL_LIBFAKETIME"
        )
    })
}

/// A binary of the workspace beside the test executable (`target/<profile>/deps/<test>` →
/// `target/<profile>/<name>`), which `cargo build --workspace --bins` (scripts/test.sh) builds.
fn binary(name: &str) -> PathBuf {
    let path = seckill_testkit::workspace_binary(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --workspace --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A child process, killed when dropped; its output in a log file.
struct Running {
    name: String,
    child: Child,
    log: PathBuf,
    base: String,
}

impl Running {
    fn spawn(
        name: &str,
        binary: &Path,
        vars: Vec<(&str, String)>,
        log_dir: &Path,
        port: u16,
    ) -> Running {
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("creating a log");
        let child = Command::new(binary)
            .envs(vars)
            .env_remove("SECKILL_NODE_ID")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("cloning the log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        Running {
            name: name.to_owned(),
            child,
            log,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits until `/readyz` answers 200.
    async fn wait_ready(&mut self, http: &reqwest::Client) {
        let what = format!("{} to be ready", self.name);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{}/readyz", self.base)).send().await
                && r.status() == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}):\n{}", self.name, self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; its log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway binary whose wall clock is `skew_ms` off (libfaketime's `FAKETIME`).
fn skewed_gateway(name: &str, config: &Config, skew_ms: i64, logs: &Path) -> Running {
    let port = free_port();
    let mut vars = env_vars(config);
    vars.push(("SECKILL_HTTP_ADDR", format!("127.0.0.1:{port}")));
    vars.push(("SECKILL_REDIS_DURABILITY", "fsync".into()));
    vars.push(("LD_PRELOAD", libfaketime().to_string_lossy().into_owned()));
    // Seconds, with a sign: "+600" or "-600".
    vars.push(("FAKETIME", format!("{:+}", skew_ms / 1000)));
    // The monotonic clock (tokio's timers, the node lease's fence) is a machine's own; only the
    // wall clock is wrong.
    vars.push(("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()));
    Running::spawn(name, &binary("seckill-gateway"), vars, logs, port)
}

/// Redis's `TIME`, in ms since the Unix epoch: the clock the sale window is judged on.
async fn redis_now(redis: &fred::prelude::Client) -> i64 {
    let time: Vec<String> = redis
        .custom(fred::cmd!("TIME"), Vec::<String>::new())
        .await
        .expect("TIME");
    let secs: i64 = time[0].parse().expect("seconds");
    let micros: i64 = time[1].parse().expect("microseconds");
    secs * 1000 + micros / 1000
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("a time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One purchase for each of `count` new users, through `client`, at once.
async fn buy_each(client: &Client, users: &AtomicU64, count: u64) -> Vec<Outcome> {
    let buys = (0..count).map(|_| {
        let user = UserId(users.fetch_add(1, Ordering::Relaxed));
        async move { client.buy(user, ITEM, 1, None).await }
    });
    futures_util::future::join_all(buys).await
}

/// `GET /items/{id}`'s `state` and `server_time` on a gateway, and `POST /items/{id}/ticket`'s
/// answer: what the gateway tells a buyer about time by itself (by Redis's clock, measured every
/// second, not its own).
async fn shown(http: &reqwest::Client, base: &str, jwt: &Jwt) -> String {
    let page: serde_json::Value = match http.get(format!("{base}/items/{}", ITEM.0)).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    };
    let ticket = http
        .post(format!("{base}/items/{}/ticket", ITEM.0))
        .bearer_auth(jwt.mint(UserId(999_999), 3600))
        .send()
        .await;
    let ticket = match ticket {
        Ok(r) => {
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            format!("{status} {}", body["error"].as_str().unwrap_or("ok"))
        }
        Err(e) => format!("{e}"),
    };
    format!(
        "page state {} (server_time {}), ticket {ticket}",
        page["state"], page["server_time"]
    )
}

/// A purchase of `buyer` through `via.0` that Redis never runs (frozen with the script in its
/// socket: `503 outcome_unknown`, then killed; its append-only file has all it ran), settled
/// through `via.1`: `GET /orders/{id}` answers 404, which must be final: the id is made void for
/// its owner, and the same purchase arriving afterwards (the script run with that id, as a
/// purchase held up on the way would be), before `ends`, sells nothing. Returns the id and how far
/// from Redis's clock it was minted (ms).
async fn lost_purchase_404_stays_final(
    redis_server: &mut RedisServer,
    config: &Config,
    history: &History,
    via: (&Client, &Client),
    buyer: UserId,
    ends: i64,
) -> (OrderId, i64) {
    redis_server.pause();
    let lost = via.0.buy(buyer, ITEM, 1, None).await;
    redis_server.kill();
    redis_server.restart();
    redis_server.wait_ready().await;
    let Outcome::OutcomeUnknown(id) = lost else {
        panic!("expected 503 outcome_unknown from the frozen Redis, got {lost}");
    };
    let redis = seckill_infra::redis::client(&config.redis_url)
        .await
        .expect("Redis after the restart");
    let minted = millis_of(id.0) as i64 - redis_now(&redis).await;
    let settle = via.1.settle(Duration::from_secs(30)).await;
    assert_eq!((settle.settled, settle.unsettled), (1, 0), "{settle:?}");
    let op = history
        .ops()
        .into_iter()
        .find(|op| op.outcome == Outcome::OutcomeUnknown(id))
        .expect("the op");
    assert_eq!(
        op.settled.map(|s| s.found),
        Some(false),
        "order {id} exists, though Redis never ran its purchase"
    );
    let keys = Keys::new(&config.namespace);
    let void: Option<String> = redis.get(keys.void(id)).await.expect("GET void");
    let late = Scripts::new(keys)
        .purchase(
            &redis,
            &PurchaseRequest {
                order_id: id,
                user: buyer,
                item: ITEM,
                quantity: Quantity::ONE,
                idempotency_key: None,
                shards: 1,
            },
        )
        .await
        .expect("the script runs");
    let now = redis_now(&redis).await;
    let _ = redis.quit().await;
    eprintln!(
        "order {id}, minted {:+} s from Redis's clock through {}, lost with Redis: 404 for its \
         owner through {}; its void key {void:?}; its late purchase: {late:?}",
        minted / 1000,
        via.0.gateway(),
        via.1.gateway()
    );
    assert!(
        now < ends,
        "too slow: the sale ended before the late purchase"
    );
    assert_eq!(
        void,
        Some(buyer.0.to_string()),
        "order {id} (minted {minted} ms from Redis's clock) was not made void by its owner's 404"
    );
    assert_eq!(late, Purchase::Void, "a late purchase of a 404'd id sold");
    (id, minted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_ten_minutes_ahead_and_behind_sell_only_in_the_window_by_redis_clock() {
    let started = Instant::now();
    let mut redis_server = RedisServer::start_ready(RedisOptions::default()).await;
    let mut env = TestEnv::new(Backend::Postgres);
    env.config.redis_url = redis_server.url();
    env.config.payment_timeout = Duration::from_secs(600);
    env.config.workers_addr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("an address");
    let config = env.config.clone();
    let logs = std::env::temp_dir().join(format!("seckill-clock-{}", config.namespace));
    std::fs::create_dir_all(&logs).expect("a log directory");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("an HTTP client");

    let mut fast = skewed_gateway("fast-gateway", &config, SKEW_MS, &logs);
    let mut slow = skewed_gateway("slow-gateway", &config, -SKEW_MS, &logs);
    fast.wait_ready(&http).await;
    slow.wait_ready(&http).await;
    let mut vars = env_vars(&config);
    vars.push(("SECKILL_REDIS_DURABILITY", "fsync".into()));
    let mut workers = Running::spawn(
        "workers",
        &binary("seckill-workers"),
        vars,
        &logs,
        config.workers_addr.port(),
    );
    workers.wait_ready(&http).await;

    let redis = seckill_infra::redis::client(&config.redis_url)
        .await
        .expect("Redis");
    let created_at = redis_now(&redis).await;
    let starts = created_at + STARTS_IN.as_millis() as i64;
    let ends = created_at + ENDS_IN.as_millis() as i64;
    let mut item = common::new_item(ITEM, "clock skew", PRICE, STOCK, 1);
    item["starts_at"] = rfc3339(starts).into();
    item["ends_at"] = rfc3339(ends).into();
    common::create_item(&fast.base, &config, item).await;

    let history = History::new();
    let via_fast = Client::new(&history, &config, &fast.base);
    let via_slow = Client::new(&history, &config, &slow.base);
    let users = AtomicU64::new(1);
    let jwt = Jwt::new(&config.jwt_secret);

    // Before the start: the fast gateway's clock says the sale ended 9.5 minutes ago.
    for (name, client, gateway) in [("fast", &via_fast, &fast), ("slow", &via_slow, &slow)] {
        let answers = buy_each(client, &users, BUYERS_PER_PHASE).await;
        let now = redis_now(&redis).await;
        assert!(
            now < starts,
            "too slow: the sale started before the first phase was over"
        );
        assert!(
            answers.iter().all(|o| *o == Outcome::NotStarted),
            "the {name} gateway, {} s before the start by Redis's clock: {answers:?}",
            (starts - now) / 1000
        );
        eprintln!(
            "before the start, {name} gateway: {} x 409 not_started; it shows: {}",
            answers.len(),
            shown(&http, &gateway.base, &jwt).await
        );
    }

    wait_for(
        "the sale to start by Redis's clock",
        STARTS_IN + Duration::from_secs(30),
        || async { (redis_now(&redis).await >= starts).then_some(()) },
    )
    .await;

    // In the window: the slow gateway's clock says the sale starts in 9.5 minutes.
    let mut sold: BTreeMap<&str, Vec<OrderId>> = BTreeMap::new();
    for (name, client, gateway, skew) in [
        ("fast", &via_fast, &fast, SKEW_MS),
        ("slow", &via_slow, &slow, -SKEW_MS),
    ] {
        let answers = buy_each(client, &users, BUYERS_PER_PHASE).await;
        let now = redis_now(&redis).await;
        assert!(
            now < ends,
            "too slow: the sale ended during the second phase"
        );
        let ids: Vec<OrderId> = answers
            .iter()
            .map(|o| match o {
                Outcome::Accepted(id) => *id,
                other => panic!("the {name} gateway in the window: {other} ({answers:?})"),
            })
            .collect();
        // Its ids carry its own clock: proof that the skew is real.
        for id in &ids {
            let off = millis_of(id.0) as i64 - now;
            assert!(
                (off - skew).abs() < 30_000,
                "the {name} gateway's order {id} was minted {off} ms from Redis's clock, not \
                 about {skew}: is libfaketime working?"
            );
        }
        // What the gateway decides about time by itself reads Redis's clock too: its product
        // page shows the sale live and it issues tickets, whatever its own clock says.
        let seen = shown(&http, &gateway.base, &jwt).await;
        assert!(
            seen.contains("page state \"live\"") && seen.contains("ticket 200"),
            "the {name} gateway in the window shows: {seen}"
        );
        eprintln!(
            "in the window, {name} gateway: {} x 202, ids minted {:+} s from Redis's clock; it \
             shows: {seen}",
            ids.len(),
            (millis_of(ids[0].0) as i64 - now) / 1000,
        );
        sold.insert(name, ids);
    }

    // An id from the future whose purchase Redis never ran; its owner asks the slow gateway, to
    // whose clock the id is 20 minutes ahead.
    let buyer = UserId(users.fetch_add(1, Ordering::Relaxed));
    let (future, ahead) = lost_purchase_404_stays_final(
        &mut redis_server,
        &config,
        &history,
        (&via_fast, &via_slow),
        buyer,
        ends,
    )
    .await;
    assert!(
        ahead > SKEW_MS / 2,
        "order {future} was minted {ahead} ms from Redis's clock"
    );
    for gateway in [&fast, &slow] {
        let status = http
            .get(format!("{}/orders/{future}", gateway.base))
            .bearer_auth(jwt.mint(buyer, 3600))
            .send()
            .await
            .expect("GET /orders/{id}")
            .status();
        assert_eq!(status, 404, "{}: the 404 did not stay final", gateway.name);
    }
    let redis = seckill_infra::redis::client(&config.redis_url)
        .await
        .expect("Redis after the restart");
    fast.wait_ready(&http).await;
    slow.wait_ready(&http).await;

    wait_for(
        "the sale to end by Redis's clock",
        ENDS_IN + Duration::from_secs(30),
        || async { (redis_now(&redis).await >= ends).then_some(()) },
    )
    .await;

    // After the end: the slow gateway's clock says the sale starts in 9.5 minutes.
    for (name, client, gateway) in [("fast", &via_fast, &fast), ("slow", &via_slow, &slow)] {
        let answers = buy_each(client, &users, BUYERS_PER_PHASE).await;
        assert!(
            answers.iter().all(|o| *o == Outcome::Ended),
            "the {name} gateway after the end by Redis's clock: {answers:?}"
        );
        eprintln!(
            "after the end, {name} gateway: {} x 409 ended; it shows: {}",
            answers.len(),
            shown(&http, &gateway.base, &jwt).await
        );
    }

    history::wait_for_orders(&history, &config, ITEM, Duration::from_secs(60))
        .await
        .expect("the orders stored");
    let checks = history::check(&history, &config, ITEM)
        .await
        .expect("the checker runs");
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
    assert!(failed.is_empty(), "{failed:#?}\n{}", history.to_json());
    // Each stored order's accepted time is Redis's, inside the window, whichever gateway sold it.
    let db = seckill_infra::db::connect(&config.database_url, 1)
        .await
        .expect("the database");
    let stored = <orders::Entity as sea_orm::EntityTrait>::find()
        .all(&db)
        .await
        .expect("reading orders");
    let _ = db.close().await;
    assert_eq!(stored.len(), 2 * BUYERS_PER_PHASE as usize);
    for o in &stored {
        assert!(
            (starts..ends).contains(&o.created_at_ms),
            "order {} accepted at {} outside the window {starts}..{ends}",
            o.id,
            o.created_at_ms
        );
    }
    eprintln!(
        "{} ops checked ({} checks passed); orders {:?}; {:?}",
        history.len(),
        checks.len(),
        sold,
        started.elapsed()
    );
    let _ = redis.quit().await;
    drop(workers);
    drop(fast);
    drop(slow);
    env.cleanup().await;
    let _ = std::fs::remove_dir_all(&logs);
}

/// A gateway whose wall clock is 11 minutes behind mints ids that are older, by Redis's clock,
/// than a one-sided window of ten minutes would have made void: the owner's `GET /orders/{id}`
/// answered 404, made nothing void, and the purchase of that id arriving afterwards sold. Now a
/// purchase sells only ids within `MAX_CLOCK_SKEW_MS` of Redis's clock and a lookup makes void
/// every missing id within a wider window, both ways: the 404 stays final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_for_an_id_minted_by_a_gateway_eleven_minutes_behind_stays_final() {
    let mut redis_server = RedisServer::start_ready(RedisOptions::default()).await;
    let mut env = TestEnv::new(Backend::Postgres);
    env.config.redis_url = redis_server.url();
    let config = env.config.clone();
    let logs = std::env::temp_dir().join(format!("seckill-clock-{}", config.namespace));
    std::fs::create_dir_all(&logs).expect("a log directory");
    let http = reqwest::Client::new();
    let mut slow = skewed_gateway("slow-gateway", &config, -11 * 60 * 1000, &logs);
    slow.wait_ready(&http).await;
    let item = common::new_item(ITEM, "clock skew", PRICE, STOCK, 1);
    common::create_item(&slow.base, &config, item).await;
    let history = History::new();
    let via_slow = Client::new(&history, &config, &slow.base);
    let (id, minted) = lost_purchase_404_stays_final(
        &mut redis_server,
        &config,
        &history,
        (&via_slow, &via_slow),
        UserId(1),
        i64::MAX,
    )
    .await;
    eprintln!("order {id}, minted {minted} ms from Redis's clock: its 404 stayed final");
    drop(slow);
    env.cleanup().await;
    let _ = std::fs::remove_dir_all(&logs);
}
