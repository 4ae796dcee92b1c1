//! Redis going away under a running gateway: purchases answer `503 unavailable` and sell nothing;
//! when Redis is back, sales resume without restarting the gateway. Runs a Redis server of its
//! own, never the shared one.

mod common;

use common::{Events, TestApp, wait_for_empty_outbox};
use fred::prelude::*;
use http::StatusCode;
use seckill_schema::{ItemId, OrderId};
use seckill_testkit::{Backend, TestEnv, wait_for};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const ITEM: u64 = 61;
const STOCK: i64 = 10;

/// A Redis server on `port`, keeping its data in `dir` across restarts when `persistent` (an
/// append-only file synced on every write), or starting empty.
fn start_redis(port: u16, dir: &Path, persistent: bool) -> Child {
    std::fs::create_dir_all(dir).expect("creating the Redis directory");
    let port = port.to_string();
    let dir = dir.to_str().expect("a UTF-8 path");
    let appendonly = if persistent { "yes" } else { "no" };
    Command::new("redis-server")
        .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", appendonly, "--appendfsync", "always"])
        .args(["--dir", dir])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting redis-server")
}

/// Waits until the server answers `PING` with `PONG` (not `LOADING`).
async fn wait_for_redis(port: u16) {
    wait_for(
        "redis-server to answer PING",
        Duration::from_secs(20),
        || async {
            let mut conn = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
            conn.write_all(b"PING\r\n").await.ok()?;
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf))
                .await
                .ok()?
                .ok()?;
            buf[..n].starts_with(b"+PONG").then_some(())
        },
    )
    .await;
}

/// Buys for one new user each call.
struct Buyers {
    next: AtomicU64,
}

impl Buyers {
    async fn buy(&self, app: &TestApp) -> (u64, common::Resp) {
        let user = self.next.fetch_add(1, Ordering::Relaxed);
        (user, app.http.seckill(&app.purchase(user, ITEM)).await)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchases_answer_503_while_redis_is_down_and_resume_when_it_is_back() {
    let port = seckill_testkit::free_port();
    let mut env = TestEnv::new(Backend::Postgres);
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-redis", env.config.namespace));
    let _ = std::fs::remove_dir_all(&dir);
    let mut redis = start_redis(port, &dir, true);
    wait_for_redis(port).await;
    env.config.redis_url = format!("redis://127.0.0.1:{port}");
    let app = TestApp::spawn_env(env).await;
    app.create_item(ITEM, STOCK, 1).await;
    let events = Events::bind(&app.config).await;
    let buyers = Buyers {
        next: AtomicU64::new(1),
    };
    let mut accepted: BTreeSet<OrderId> = BTreeSet::new();
    accepted.insert(buyers.buy(&app).await.1.accepted());

    // Down. Once the gateway knows it (a purchase sent just before that may or may not have run,
    // and is answered `503 outcome_unknown`: see bench/tests/redis_failures.rs), nothing is sent.
    redis.kill().await.expect("killing redis-server");
    wait_for("the gateway to notice", Duration::from_secs(20), || async {
        let ready = app.http.get("/readyz", None).await;
        (ready.json()["redis"] == false).then_some(())
    })
    .await;
    let refused_users = std::sync::Mutex::new(Vec::new());
    let attempts = futures_util::future::join_all((0..3).map(|_| buyers.buy(&app))).await;
    for (user, resp) in attempts {
        resp.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        assert!(
            !resp.text().to_lowercase().contains("redis error"),
            "no internal error text: {}",
            resp.text()
        );
        refused_users.lock().unwrap().push(user);
    }
    app.http
        .post_json(
            &format!("/items/{ITEM}/ticket"),
            Some(&app.jwt(500)),
            &json!({}),
        )
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let ready = app.http.get("/readyz", None).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.text()
    );
    assert_eq!(ready.json()["redis"], false);
    assert_eq!(app.http.get("/healthz", None).await.status, StatusCode::OK);

    // Back, with its data.
    let mut redis = start_redis(port, &dir, true);
    wait_for_redis(port).await;
    let resumed = wait_for("sales to resume", Duration::from_secs(20), || async {
        let (user, resp) = buyers.buy(&app).await;
        if resp.status == StatusCode::SERVICE_UNAVAILABLE {
            refused_users.lock().unwrap().push(user);
            return None;
        }
        Some(resp.accepted())
    })
    .await;
    accepted.insert(resumed);
    // Enough purchases to pass through every connection of the gateway's pool.
    for _ in 0..4 {
        accepted.insert(buyers.buy(&app).await.1.accepted());
    }
    assert_eq!(
        app.remaining(ITEM).await,
        Some(STOCK - accepted.len() as i64),
        "only the 202s sold"
    );
    assert_eq!(
        common::recorded_orders(&app.redis, &app.keys).await,
        accepted,
        "no order was recorded for a 503"
    );
    let refused_users = refused_users.into_inner().unwrap();
    assert!(refused_users.len() >= 3);
    for user in &refused_users {
        let held: Option<i64> = app
            .redis
            .hget(app.keys.buyers(ItemId(ITEM)), user.to_string())
            .await
            .expect("HGET");
        assert_eq!(held, None, "user {user} was answered 503 and holds nothing");
    }
    let ready = app.http.get("/readyz", None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    events.wait_for_ids(&accepted, common::RELAY_DEADLINE).await;
    wait_for_empty_outbox(&app.redis, &app.keys).await;
    events.drain().await;
    assert_eq!(events.ids(), accepted, "events for the 202s, and only them");

    // Down again, and back empty: never `404` for the item the database knows; `503 recovering`
    // until the gene is rebuilt from the database (here by the gateway itself: no workers run in
    // this test, so the orders above are still in the broker and hold nothing in the database yet).
    redis.kill().await.expect("killing redis-server");
    std::fs::remove_dir_all(&dir).expect("removing Redis's data");
    let _redis = start_redis(port, &dir, false);
    wait_for_redis(port).await;
    let after = wait_for(
        "sales to resume by themselves",
        Duration::from_secs(30),
        || async {
            let (_, resp) = buyers.buy(&app).await;
            match (resp.status, resp.error_code_or_none().as_deref()) {
                (StatusCode::ACCEPTED, _) => Some(resp.accepted()),
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("recovering" | "unavailable" | "outcome_unknown"),
                ) => None,
                _ => panic!(
                    "only 503 until the item is rebuilt, then 202: {}",
                    resp.text()
                ),
            }
        },
    )
    .await;
    assert_eq!(
        app.remaining(ITEM).await,
        Some(STOCK - 1),
        "rebuilt from the database"
    );
    // Re-posting the item changes nothing of its state.
    app.http
        .create_item(&app.config.admin_token, &common::item_body(ITEM, STOCK, 1))
        .await
        .assert_error(StatusCode::CONFLICT, "item_exists");
    assert_eq!(app.remaining(ITEM).await, Some(STOCK - 1));
    events
        .wait_for_ids(&BTreeSet::from([after]), common::RELAY_DEADLINE)
        .await;

    events.close().await;
    // Stopped while its Redis still runs, so that the test's keys are cleaned up.
    app.stop().await.expect("run() returns Ok");
    let _ = std::fs::remove_dir_all(&dir);
}
