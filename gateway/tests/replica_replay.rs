//! `SECKILL_REDIS_DURABILITY=replica` for a retried purchase: a retry with the same
//! `Idempotency-Key` finds the first attempt's order in the script's idempotency record, and is
//! answered `202` only once a replica has it, as a new purchase is. Runs a Redis master and
//! replica of its own, never the shared ones, and freezes the replica.

mod common;

use common::TestApp;
use http::StatusCode;
use seckill_infra::durability::Durability;
use seckill_testkit::{Backend, RedisOptions, RedisServer, TestEnv, wait_for};
use std::time::Duration;

const ITEM: u64 = 73;
const STOCK: i64 = 10;

/// A master and its replica as replica mode asks: the master refuses writes without a replica
/// (`min-replicas-to-write 1`, or no process is ready), no append-only file (the replica is the
/// copy), and no 5 s pause before the replica's first sync.
///
/// The master counts a replica towards `min-replicas-to-write` until its last acknowledgement is
/// `min-replicas-max-lag` old, 10 s by default; then it refuses the purchase script itself
/// (`NOREPLICAS`) and the gateway answers `503 unavailable`, not the `WAIT` this test is about.
/// 60 s keeps the frozen replica counted for the whole test however loaded the machine is; it
/// needs well under 10 s.
async fn master_and_replica() -> (RedisServer, RedisServer) {
    let options = || {
        RedisOptions::volatile()
            .no_sync_delay()
            .arg("min-replicas-to-write", "1")
            .arg("min-replicas-max-lag", "60")
    };
    let master = RedisServer::start_ready(options()).await;
    let replica = RedisServer::start_ready(options().replicaof(master.port())).await;
    // A first full sync on a loaded machine (the suite's other tests run beside this one) can
    // take a while.
    master.wait_replicated(Duration::from_secs(60)).await;
    (master, replica)
}

/// A purchase's first answer was `503 outcome_unknown` because its `WAIT` saw no replica take it;
/// the buyer retries with the same `Idempotency-Key`. While the replica still acknowledges
/// nothing, the retry must not be `202`: a failover now would lose the order the buyer was told
/// is safe. Once the replica is back, the retry is `202` with the same order, and one unit is
/// sold for it.
///
/// The replica is frozen with SIGSTOP: its connection to the master stays up and it still counts
/// as `state=online` (the gateway stays ready, the master accepts the script), but it
/// acknowledges nothing, so every `WAIT 1` times out.
///
/// Against the old behaviour (a replay answered `202` at once, without the `WAIT`) this failed at
/// the retry while the replica was frozen:
///
/// ```text
/// thread 'a_replayed_purchase_is_accepted_only_once_a_replica_has_it' panicked at
/// gateway/tests/replica_replay.rs:84:5:
/// assertion `left == right` failed: a replay is answered `202` only once a replica has the
/// order: {"order_id":"…","status":"PENDING"}
///   left: 202
///  right: 503
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_purchase_is_accepted_only_once_a_replica_has_it() {
    let (master, replica) = master_and_replica().await;
    let mut env = TestEnv::new(Backend::Postgres);
    env.config.redis_url = master.url();
    env.config.redis_durability = Durability::Replica;
    let app = TestApp::spawn_env(env).await;
    app.create_item(ITEM, STOCK, 1).await;
    // While the replica acknowledges, a purchase is confirmed and accepted: the answers below
    // come from the frozen replica, not from a gateway that can confirm nothing.
    let other = app.http.seckill(&app.purchase(1, ITEM)).await.accepted();

    let key = "checkout-replica-1";
    let body = app.purchase(2, ITEM);
    replica.pause();
    let first = app.http.seckill_with_key(key, &body).await;
    first.assert_error(StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown");
    let order = first.order_id();
    assert_ne!(order, other);

    // The retry finds the order in the idempotency record; no replica has it yet.
    let replay = app.http.seckill_with_key(key, &body).await;
    assert_eq!(
        replay.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a replay is answered `202` only once a replica has the order: {}",
        replay.text()
    );
    replay.assert_error(StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown");
    assert_eq!(replay.order_id(), order, "the replay names the first order");

    replica.resume();
    // The replica catches up within a WAIT or two; until then a retry is still outcome_unknown.
    let accepted = wait_for(
        "a retry to be accepted once the replica acknowledges",
        Duration::from_secs(20),
        || {
            let (http, body) = (app.http.clone(), body.clone());
            async move {
                let r = http.seckill_with_key(key, &body).await;
                if r.status == StatusCode::ACCEPTED {
                    return Some(r.accepted());
                }
                r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown");
                assert_eq!(r.order_id(), order, "every retry names the first order");
                None
            }
        },
    )
    .await;
    assert_eq!(
        accepted, order,
        "the retry is accepted with the first order"
    );
    assert_eq!(
        app.remaining(ITEM).await,
        Some(STOCK - 2),
        "the retries sold nothing more"
    );
    app.stop().await.expect("the gateway stops cleanly");
}
