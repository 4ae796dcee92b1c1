//! The gateway binary SIGKILLed in the middle of a burst and started again: every order Redis
//! recorded still reaches the broker, and every `202` a client received is among them.

mod common;

use common::{Events, Http, concurrently, wait_for_empty_outbox};
use fred::prelude::ClientLike;
use http::{Method, StatusCode};
use seckill_infra::Config;
use seckill_schema::{Keys, OrderId};
use seckill_testkit::{Backend, TestEnv, wait_for};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::Notify;

const ITEM: u64 = 77;
const STOCK: i64 = 3_000;
/// Buyers of the first burst, and how many 202s it gets before the kill.
const FIRST_BURST: u64 = 2_000;
const KILL_AFTER: usize = 100;
const SECOND_BURST: u64 = 200;
const CONNECTIONS: usize = 50;
/// A dead relay's stream is taken over once its lease runs out (`relay::LEASE_TTL`, 5 s); leave
/// room for a slow box.
const CLAIM_DEADLINE: Duration = Duration::from_secs(60);

fn log_path(config: &Config) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-gateway.log", config.namespace))
}

/// Starts the real binary with the test's configuration, its output appended to [`log_path`].
fn start_gateway(config: &Config, port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(config))
        .expect("opening the gateway's log");
    Command::new(env!("CARGO_BIN_EXE_seckill-gateway"))
        .envs(seckill_testkit::env_vars(config))
        .env("SECKILL_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env_remove("SECKILL_NODE_ID")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("cloning the log handle"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("starting the seckill-gateway binary")
}

async fn wait_healthy(http: &Http, config: &Config) {
    let what = format!("/healthz (log: {})", log_path(config).display());
    wait_for(&what, Duration::from_secs(30), || async {
        let r = http
            .try_send(http.request(Method::GET, "/healthz", &[], ""))
            .await
            .ok()?;
        (r.status == StatusCode::OK).then_some(())
    })
    .await;
}

/// What the clients of a burst saw.
#[derive(Default)]
struct Seen {
    accepted: Mutex<Vec<OrderId>>,
    refused: Mutex<BTreeMap<(u16, String), usize>>,
    cut_off: AtomicUsize,
}

async fn burst(http: Http, config: Config, users: Vec<u64>, seen: Arc<Seen>, kill: Arc<Notify>) {
    concurrently(users, CONNECTIONS, |user| {
        let (http, seen, kill) = (http.clone(), seen.clone(), kill.clone());
        let body = common::purchase(&config, user, ITEM).to_string();
        async move {
            match http
                .try_send(http.request(Method::POST, "/seckill", &[], body))
                .await
            {
                Ok(r) if r.status == StatusCode::ACCEPTED => {
                    let mut accepted = seen.accepted.lock().unwrap();
                    accepted.push(r.accepted());
                    if accepted.len() == KILL_AFTER {
                        kill.notify_one();
                    }
                }
                Ok(r) => {
                    let key = (r.status.as_u16(), r.error_code());
                    *seen.refused.lock().unwrap().entry(key).or_default() += 1;
                }
                Err(_) => {
                    seen.cut_off.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_gateway_loses_no_accepted_order() {
    let env = TestEnv::new(Backend::Postgres);
    let config = env.config.clone();
    let port = seckill_testkit::free_port();
    let http = Http::new(port);
    let keys = Keys::new(&config.namespace);
    let redis = seckill_infra::redis::client(&config.redis_url)
        .await
        .expect("connecting to Redis");
    let events = Events::bind(&config).await;

    let mut gateway = start_gateway(&config, port);
    wait_healthy(&http, &config).await;
    let created = http
        .create_item(&config.admin_token, &common::item_body(ITEM, STOCK, 1))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());

    let first = Arc::new(Seen::default());
    let kill = Arc::new(Notify::new());
    let running = tokio::spawn(burst(
        http.clone(),
        config.clone(),
        (1..=FIRST_BURST).collect(),
        first.clone(),
        kill.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(30), kill.notified())
        .await
        .expect("the first burst gets its first 202s");
    gateway.kill().await.expect("SIGKILL");

    let mut gateway = start_gateway(&config, port);
    wait_healthy(&http, &config).await;
    tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("the first burst ends")
        .expect("the first burst does not panic");
    let second = Arc::new(Seen::default());
    burst(
        http.clone(),
        config.clone(),
        (FIRST_BURST + 1..=FIRST_BURST + SECOND_BURST).collect(),
        second.clone(),
        Arc::new(Notify::new()),
    )
    .await;

    let first_accepted = first.accepted.lock().unwrap().clone();
    let second_accepted = second.accepted.lock().unwrap().clone();
    assert!(first_accepted.len() >= KILL_AFTER);
    assert_eq!(
        second_accepted.len(),
        SECOND_BURST as usize,
        "the restarted gateway sells (refused: {:?}, cut off: {})",
        second.refused.lock().unwrap(),
        second.cut_off.load(Ordering::Relaxed)
    );
    let refused = first.refused.lock().unwrap().clone();
    assert!(
        refused.is_empty(),
        "the stock never ran out, yet: {refused:?}"
    );
    let accepted: BTreeSet<OrderId> = first_accepted
        .iter()
        .chain(&second_accepted)
        .copied()
        .collect();
    assert_eq!(
        accepted.len(),
        first_accepted.len() + second_accepted.len(),
        "no order id was given twice, across the restart"
    );

    // What Redis holds is the truth the relay must deliver.
    let recorded = common::recorded_orders(&redis, &keys).await;
    let remaining = common::remaining(&redis, &keys, ITEM)
        .await
        .expect("the item is in Redis");
    assert_eq!(
        recorded.len() as i64,
        STOCK - remaining,
        "one record per unit sold"
    );
    let missing: Vec<_> = accepted.difference(&recorded).collect();
    assert!(missing.is_empty(), "202s Redis did not record: {missing:?}");

    events.wait_for_ids(&recorded, CLAIM_DEADLINE).await;
    wait_for_empty_outbox(&redis, &keys).await;
    events.drain().await;
    let published = events.ids();
    let phantom: Vec<_> = published.difference(&recorded).collect();
    assert!(
        phantom.is_empty(),
        "events for orders Redis never recorded: {phantom:?}"
    );
    assert!(
        accepted.is_subset(&published),
        "every 202 reached the broker"
    );
    println!(
        "accepted {} (cut off {}), recorded {}, events {} ({} duplicates after the crash)",
        accepted.len(),
        first.cut_off.load(Ordering::Relaxed),
        recorded.len(),
        events.events().len(),
        events.events().len() - published.len(),
    );

    gateway.kill().await.expect("stopping the gateway");
    events.close().await;
    let _ = redis.quit().await;
    drop(env);
    // Kept only when the test fails, for its story.
    let _ = std::fs::remove_file(log_path(&config));
}
