//! Snowflake node leases against real Redis and PostgreSQL: two live processes never share a node
//! id, a successor starts past its predecessor's ids and past the database's, a holder that cannot
//! renew stops minting, and after Redis forgets every lease, a new holder of the same node mints
//! only once the old one has stopped.

use fred::prelude::*;
use sea_orm::{ActiveModelTrait, DatabaseConnection, Set};
use seckill_infra::lease::{self, FENCE, GRACE};
use seckill_infra::lifecycle::{Shutdown, Stopper};
use seckill_infra::scripts::Scripts;
use seckill_schema::entity::orders;
use seckill_schema::snowflake::{EPOCH_MS, MAX_NODE, Snowflake, millis_of, node_of, now_ms};
use seckill_schema::{Keys, OrderStatus};
use seckill_testkit::{Backend, RedisOptions, RedisServer, TestEnv, wait_for};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The test's database, as a lease's floor.
fn db_floor(env: &TestEnv) -> impl lease::Floor + use<> {
    let url = env.config.database_url.clone();
    move || {
        let url = url.clone();
        async move { seckill_infra::db::connect(&url, 1).await }
    }
}

/// A pool of the Redis at `url`, and the scripts of the test's namespace.
async fn leasing(env: &TestEnv, url: &str) -> (Pool, Scripts) {
    let redis = seckill_infra::redis::pool(url, 1).await.unwrap();
    (redis, Scripts::new(Keys::new(&env.config.namespace)))
}

/// [`leasing`] on a Redis server of the test's own, to pause or flush.
async fn own_redis(env: &TestEnv) -> (RedisServer, Pool, Scripts) {
    let server = RedisServer::start_ready(RedisOptions::volatile()).await;
    let (redis, scripts) = leasing(env, &server.url()).await;
    (server, redis, scripts)
}

/// `holder`'s lease of `ids` renewed, as a process does, until the stopper stops.
fn keep_renewed(
    env: &TestEnv,
    (scripts, redis): (&Scripts, &Pool),
    holder: &str,
    ids: &Arc<Snowflake>,
) -> Stopper {
    let (stopper, shutdown) = Shutdown::new();
    tokio::spawn(lease::renew(
        scripts.clone(),
        redis.clone(),
        holder.into(),
        ids.clone(),
        db_floor(env),
        shutdown,
    ));
    stopper
}

/// An order id of `node` minted at `ms` (since the Unix epoch).
fn id_at(ms: u64, node: u16) -> i64 {
    (((ms - EPOCH_MS) << 22) | ((node as u64) << 12)) as i64
}

async fn store_order(db: &DatabaseConnection, id: i64) {
    orders::ActiveModel {
        id: Set(id),
        user_id: Set(1),
        item_id: Set(1),
        quantity: Set(1),
        amount_cents: Set(100),
        status: Set(OrderStatus::Created.as_str().to_owned()),
        close_reason: Set(None),
        created_at_ms: Set(millis_of(id as u64) as i64),
        updated_at_ms: Set(millis_of(id as u64) as i64),
    }
    .insert(db)
    .await
    .unwrap();
}

#[tokio::test]
async fn live_processes_never_share_a_node_id() {
    let env = TestEnv::new(Backend::Postgres);
    let (redis, scripts) = leasing(&env, &env.config.redis_url).await;
    let floor = db_floor(&env);
    // Twenty processes starting at once, every one from the same node.
    let gens =
        futures_util::future::try_join_all(
            (0..20).map(|i| {
                let (scripts, redis, floor) = (&scripts, &redis, &floor);
                async move {
                    lease::acquire_from(scripts, redis, &format!("process-{i}"), floor, 3).await
                }
            }),
        )
        .await
        .unwrap();
    let nodes: std::collections::HashSet<u16> = gens.iter().map(|g| g.node()).collect();
    assert_eq!(nodes.len(), 20, "{nodes:?}");
    assert!(gens.iter().all(|g| g.next(0).is_ok()), "each mints at once");
    // Renewing by the holder keeps the lease; another token is refused.
    let held = gens[0].node();
    let renewed = scripts
        .lease(redis.next(), held, "process-0", 15_000, 0)
        .await
        .unwrap()
        .unwrap();
    assert!(!renewed.fresh);
    assert!(
        scripts
            .lease(redis.next(), held, "intruder", 15_000, 0)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_successor_starts_past_its_predecessors_ids_and_the_databases() {
    let env = TestEnv::new(Backend::Postgres);
    let (redis, scripts) = leasing(&env, &env.config.redis_url).await;
    // A predecessor on node 7 recorded a high-water mark a minute ahead of our clock.
    let ahead = now_ms() + 60_000;
    assert!(
        scripts
            .lease(redis.next(), 7, "old", 1, ahead)
            .await
            .unwrap()
            .is_some()
    );
    // Its lease (1 ms) has lapsed, its high water stays: a command in the same millisecond would
    // still find node 7 held and take node 8.
    let held = Keys::new(&env.config.namespace).node_lease(7);
    wait_for(
        "the predecessor's lease to lapse",
        Duration::from_secs(5),
        || async {
            let n: i64 = redis.next().exists(&held).await.unwrap();
            (n == 0).then_some(())
        },
    )
    .await;
    let floor = db_floor(&env);
    let g = lease::acquire_from(&scripts, &redis, "new", &floor, 7)
        .await
        .unwrap();
    assert_eq!(g.node(), 7);
    let id = g.next(0).unwrap();
    assert_eq!(node_of(id), 7);
    assert!(millis_of(id) > ahead);

    // Redis forgot node 8's high water, but the database holds an id of node 8 two minutes ahead
    // of our clock (one of a holder whose clock ran fast): the new holder starts past it.
    let db = seckill_infra::db::connect(&env.config.database_url, 1)
        .await
        .unwrap();
    let stored = id_at(now_ms() + 120_000, 8);
    store_order(&db, stored).await;
    let g = lease::acquire_from(&scripts, &redis, "newer", &floor, 8)
        .await
        .unwrap();
    assert_eq!(g.node(), 8);
    let id = g.next(0).unwrap();
    assert!(id as i64 > stored, "{id} after {stored}");
    assert!(millis_of(id) > millis_of(stored as u64));
}

/// Mints on `ids` until `until`, noting when each id of node `node` was minted.
fn mint_until(
    ids: Arc<Snowflake>,
    node: u16,
    until: Instant,
) -> tokio::task::JoinHandle<Vec<Instant>> {
    tokio::spawn(async move {
        let mut minted = Vec::new();
        while Instant::now() < until {
            if let Ok(id) = ids.next(0)
                && node_of(id) == node
            {
                minted.push(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        minted
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_cannot_renew_stops_minting_and_resumes_once_it_can() {
    let env = TestEnv::new(Backend::Postgres);
    let (server, redis, scripts) = own_redis(&env).await;
    let ids = lease::acquire(&scripts, &redis, "holder", &db_floor(&env))
        .await
        .unwrap();
    let stopper = keep_renewed(&env, (&scripts, &redis), "holder", &ids);
    assert!(ids.next(0).is_ok());
    // Redis paused: no renewal is confirmed, and within the fence the generator stops.
    server.pause();
    let paused = Instant::now();
    wait_for(
        "minting to stop",
        FENCE + Duration::from_secs(2),
        || async { ids.next(0).is_err().then_some(()) },
    )
    .await;
    assert!(paused.elapsed() <= FENCE + Duration::from_millis(600));
    server.resume();
    wait_for("minting to resume", Duration::from_secs(10), || async {
        ids.next(0).is_ok().then_some(())
    })
    .await;
    stopper.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_forgets_the_leases_a_new_holder_mints_only_once_the_old_one_stopped() {
    let env = TestEnv::new(Backend::Postgres);
    let (_server, redis, scripts) = own_redis(&env).await;
    let floor = db_floor(&env);
    let node = (rand::random::<u16>() % MAX_NODE) + 1;
    let old = lease::acquire_from(&scripts, &redis, "old", &floor, node)
        .await
        .unwrap();
    let stopper = keep_renewed(&env, (&scripts, &redis), "old", &old);
    let until = Instant::now() + 3 * GRACE + Duration::from_secs(2);
    let old_minting = mint_until(old.clone(), node, until);
    // Redis loses every key (a restart without persistence, a failover to an empty replica).
    let _: () = redis.next().flushall(false).await.unwrap();
    let new = lease::acquire_from(&scripts, &redis, "new", &floor, node)
        .await
        .unwrap();
    let new_minting = mint_until(new.clone(), node, until);
    let old_ids = old_minting.await.unwrap();
    let new_ids = new_minting.await.unwrap();
    stopper.stop();
    // The two never minted on the node at once: every id the old holder minted on it came
    // before the new holder's first, or after its last (the new one may also have found the
    // node renewed by the old one first and taken another).
    assert!(!old_ids.is_empty(), "the old holder minted before the loss");
    if let (Some(first_new), Some(last_new)) = (new_ids.first(), new_ids.last()) {
        assert!(
            old_ids.iter().all(|t| t < first_new || t > last_new),
            "the old holder minted on node {node} while the new one did ({} of {} old ids in the \
             new holder's span)",
            old_ids
                .iter()
                .filter(|t| *t >= first_new && *t <= last_new)
                .count(),
            old_ids.len()
        );
    }
    assert!(
        new.node() == node || old.node() == node,
        "one of them holds the node"
    );
}
