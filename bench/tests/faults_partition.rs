//! Network partitions between the real processes, each in a host of its own
//! (`common/faults.rs`): a paced sale runs through the history checker's recording client while
//! two parts of the system cannot hear each other, the partition heals, and the history and the
//! bench's audit must hold against the database: no `202` lost, nothing applied twice, every
//! `outcome_unknown` settled truthfully, no oversell, no buyer over the limit, the dead-letter
//! queue empty.
//!
//! - the gateway cut from Redis: `503 unavailable` / `outcome_unknown` meanwhile, sales resume;
//! - the relay (the gateway's host) cut from RabbitMQ, and Redis SIGKILLed and restarted from its
//!   append-only file during the cut: sales go on into the outbox, everything is relayed after;
//! - the workers cut from RabbitMQ, and cut from PostgreSQL: batches wait, nothing lost or twice;
//! - a Redis master cut from one of its two replicas under Sentinel (`replica` mode), then the
//!   up-to-date replica hidden from the Sentinel and the master killed, so that the stale replica
//!   is promoted: it is noticed by its write generation and rebuilt from the database, and no
//!   `202` is lost but those the lost replica alone held unrelayed.

#[path = "common/faults.rs"]
mod faults;

use faults::{Final, Options, Plan, Stack, accepted_between, hold, outbox_orders};
use fred::prelude::*;
use http::StatusCode;
use seckill_bench::history::{Outcome, Stored};
use seckill_schema::{ItemId, OrderId};
use seckill_testkit::wait_for;
use std::collections::BTreeSet;
use std::time::Duration;

/// 480 buyers over 15 s for 200 units, two per buyer: the sale lasts through a fault of a few
/// seconds and well past its heal.
const BUYERS: u64 = 480;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_cut_from_redis_mid_sale_answers_503_and_settles_truthfully() {
    let sale = Plan::new(ItemId(301), BUYERS);
    let stack = Stack::selling(Options::fsync(), &sale, 200).await;
    let gateway = &stack.hosts.gateways[0];
    let (mut cut_at, mut healed_at) = (0, 0);
    let fault = async {
        sale.progress.until_accepted(40).await;
        cut_at = stack.history.now_ms();
        stack.net.cut(gateway, &stack.hosts.redis);
        // Not ready while it cannot reach Redis (asked 2 s in, while the cut holds).
        let (ready, ()) = tokio::join!(
            async {
                hold(Duration::from_secs(2)).await;
                faults::status_of(&format!("{}/readyz", stack.gateways[0].url)).await
            },
            hold(Duration::from_secs(4))
        );
        stack.net.heal(gateway, &stack.hosts.redis);
        healed_at = stack.history.now_ms();
        ready
    };
    let ((), ready_during) = tokio::join!(stack.burst(&sale), fault);
    let verdict = stack.verify(sale.item, Final::AwaitingPayment).await;
    let ops = stack.history.ops();
    let s = &verdict.summary;
    let after = accepted_between(&ops, healed_at, u64::MAX);
    eprintln!(
        "cut at +{cut_at} ms for {} ms; /readyz during the cut: {ready_during:?}; 202s of \
         purchases sent after the heal: {after}",
        healed_at - cut_at
    );
    verdict.assert_passed(&stack.history);
    assert_ne!(ready_during, Some(StatusCode::OK), "ready while cut off");
    assert!(
        s.count("503 unavailable") + s.count("503 outcome_unknown") > 0,
        "the cut was felt: {s}"
    );
    assert!(after > 0, "sales resumed after the heal: {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_cut_from_rabbitmq_sells_into_the_outbox_and_relays_it_all_once_after() {
    let sale = Plan::new(ItemId(302), BUYERS);
    let mut stack = Stack::selling(Options::fsync(), &sale, 200).await;
    let (clients, history, net, hosts) = (&stack.clients, &stack.history, &stack.net, &stack.hosts);
    let redis = &mut stack.redis;
    let (config, gateway_url) = (&stack.config, stack.gateways[0].url.clone());
    let mut seen = (0u64, 0u64, None, 0usize);
    let fault = async {
        sale.progress.until_accepted(30).await;
        net.cut(&hosts.gateways[0], &hosts.mq);
        let cut_at = history.now_ms();
        // Sales go on: the outbox fills, since nothing can leave it.
        let backlog = wait_for(
            "the outbox to fill while the relay is cut off",
            Duration::from_secs(30),
            || async {
                let n = faults::outbox_len_at(config, &redis.url(), sale.item).await?;
                (n >= 25).then_some(n)
            },
        )
        .await;
        // Redis crashes with the backlog in it, and comes back from its append-only file.
        redis.kill();
        redis.restart();
        redis.wait_ready().await;
        let after_restart = faults::outbox_len_at(config, &redis.url(), sale.item).await;
        // Past the broker's call timeout (10 s): the relay's publish fails, it reconnects.
        hold(Duration::from_secs(11)).await;
        let backlog_at_heal = faults::outbox_len_at(config, &redis.url(), sale.item)
            .await
            .unwrap_or(0);
        let ready = faults::status_of(&format!("{gateway_url}/readyz")).await;
        net.heal(&hosts.gateways[0], &hosts.mq);
        seen = (
            backlog,
            backlog_at_heal,
            after_restart,
            accepted_between(&history.ops(), cut_at, history.now_ms()),
        );
        ready
    };
    let ((), ready_during) = tokio::join!(faults::burst(clients, &sale), fault);
    let verdict = stack.verify(sale.item, Final::AwaitingPayment).await;
    let (backlog, backlog_at_heal, after_restart, sold_during) = seen;
    eprintln!(
        "outbox during the cut: {backlog} entries before Redis's crash, {after_restart:?} after \
         its restart, {backlog_at_heal} at the heal; 202s of purchases sent during the cut: \
         {sold_during}; /readyz during the cut: {ready_during:?}; the relay failed {} times",
        stack.gateways[0].log_count("relay step failed")
    );
    verdict.assert_passed(&stack.history);
    assert!(
        after_restart >= Some(backlog),
        "the outbox lost entries in the crash: {backlog} before, {after_restart:?} after"
    );
    assert!(sold_during > 0, "sales went on during the cut");
    assert_ne!(ready_during, Some(StatusCode::OK), "ready without a broker");
    assert_eq!(
        stack.outbox_len(sale.item).await,
        Some(0),
        "everything relayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_cut_from_rabbitmq_then_from_postgres_lose_nothing_and_apply_nothing_twice() {
    // Unpaid orders time out after 3 s, so closes (units back to Redis) run through the cuts too.
    // 25 s of buyers: through both cuts.
    let sale = Plan::new(ItemId(303), 800);
    let stack = Stack::selling(Options::fsync().payment_timeout(3), &sale, 150).await;
    let (workers, mq, db) = (&stack.hosts.workers, &stack.hosts.mq, &stack.hosts.db);
    let mut stored_during = (0, 0);
    let fault = async {
        sale.progress.until_accepted(30).await;
        // The broker: deliveries, acks and the follow-ups' publishes all hang, past the
        // publisher's 10 s confirm timeout.
        stack.net.cut(workers, mq);
        let before = faults::stored_count(&stack.config, sale.item).await;
        hold(Duration::from_secs(11)).await;
        let after = faults::stored_count(&stack.config, sale.item).await;
        stack.net.heal(workers, mq);
        wait_for(
            "the workers to store orders again",
            Duration::from_secs(30),
            || async {
                (faults::stored_count(&stack.config, sale.item).await > after).then_some(())
            },
        )
        .await;
        // The database: batches wait, mid-transaction ones included.
        stack.net.cut(workers, db);
        hold(Duration::from_secs(8)).await;
        stack.net.heal(workers, db);
        stored_during = (before, after);
    };
    let ((), ()) = tokio::join!(stack.burst(&sale), fault);
    let verdict = stack.verify(sale.item, Final::All).await;
    eprintln!(
        "orders stored when the broker was cut off: {}, when it came back: {}; the workers \
         logged {} consumer reconnects and {} batch retries",
        stored_during.0,
        stored_during.1,
        stack.workers.log_count("reconnecting"),
        stack.workers.log_count("retry")
    );
    verdict.assert_passed(&stack.history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_replica_promoted_by_sentinel_is_rebuilt_and_loses_only_unrelayed_orders() {
    let sale = Plan::new(ItemId(304), BUYERS);
    let mut stack = Stack::selling(Options::replica(), &sale, 200).await;
    let (clients, history, net, hosts) = (&stack.clients, &stack.history, &stack.net, &stack.hosts);
    let (master, replicas) = (&mut stack.redis, &stack.replicas);
    let sentinel = stack
        .sentinel
        .as_ref()
        .expect("replica mode has a Sentinel");
    let namespace = stack.config.namespace.clone();
    let (fresh, stale) = (&replicas[0], &replicas[1]);
    let mut window: BTreeSet<OrderId> = BTreeSet::new();
    let mut times = Vec::new();
    let fault = async {
        sale.progress.until_accepted(40).await;
        let t0 = history.now_ms();
        // replica2 stops hearing the master: it misses every write from now on, while replica1
        // acknowledges them (WAIT 1).
        net.cut(&hosts.redis, &hosts.replicas[1]);
        sale.progress.until_more_accepted(30).await;
        times.push(("replica2 cut off (ms)", history.now_ms() - t0));
        // The Sentinel loses sight of replica1, the up-to-date one.
        net.cut(&hosts.replicas[0], hosts.sentinel.as_ref().unwrap());
        wait_for(
            "the Sentinel to count replica1 out",
            Duration::from_secs(30),
            || async { (!sentinel.replica_ports().await.contains(&fresh.port())).then_some(()) },
        )
        .await;
        times.push(("replica1 hidden (ms)", history.now_ms() - t0));
        // The master dies. What it had not relayed yet is on replica1 alone.
        master.kill();
        window = outbox_orders(fresh, &namespace).await;
        wait_for(
            "the Sentinel to promote replica2",
            Duration::from_secs(60),
            || async { (sentinel.master_addr().await == Some(stale.addr())).then_some(()) },
        )
        .await;
        times.push(("replica2 promoted (ms)", history.now_ms() - t0));
        net.heal_all();
        // The Sentinel makes replica1 a replica of replica2: it resyncs, and what it held alone
        // is gone. The Sentinel only notices a replica pointing at the old master on its periodic
        // INFO of that replica once its link is back (every 10 s), and under the whole suite's
        // load a clean-clone run once took over 60 s; what this test proves is the loss account
        // below, not how fast the Sentinel is.
        wait_for(
            "replica1 to resync from replica2",
            Duration::from_secs(180),
            || async {
                let info = stale.info("replication").await?;
                info.lines()
                    .any(|l| l.starts_with("slave") && l.contains("state=online"))
                    .then_some(())
            },
        )
        .await;
        times.push((
            "replica1 resynced from replica2 (ms)",
            history.now_ms() - t0,
        ));
    };
    let ((), ()) = tokio::join!(faults::burst(clients, &sale), fault);
    // The orders only replica1 held unrelayed may be gone: the pipeline is not waited for them.
    let verdict = stack
        .verify_except(sale.item, Final::AwaitingPayment, &window)
        .await;
    let ops = stack.history.ops();
    let stored = Stored::load(&stack.config, sale.item, &ops)
        .await
        .expect("reading the database");
    let in_db: BTreeSet<i64> = stored.orders.iter().map(|o| o.id).collect();
    let lost: BTreeSet<OrderId> = ops
        .iter()
        .filter_map(|op| match op.outcome {
            Outcome::Accepted(id) if !in_db.contains(&(id.0 as i64)) => Some(id),
            _ => None,
        })
        .collect();
    let stale_noticed = stack
        .gateways
        .iter()
        .chain([&stack.workers])
        .map(|p| p.log_count("older state of this hash tag"))
        .sum::<usize>();
    eprintln!(
        "{times:?}; unrelayed on replica1 when the master died: {} orders {window:?}; 202s lost: \
         {} {lost:?}; stale state noticed {stale_noticed} times",
        window.len(),
        lost.len()
    );
    let beyond: Vec<&OrderId> = lost.iter().filter(|id| !window.contains(id)).collect();
    assert!(
        beyond.is_empty(),
        "202s lost beyond the orders only the lost replica held unrelayed: {beyond:?}\n{}",
        stack.history.to_json()
    );
    // The only checks a loss inside that window may fail are the two that count 202s stored.
    let failed: Vec<&str> = verdict.failed().iter().map(|c| c.name).collect();
    let allowed = ["accepted_stored", "accepted_orders_stored"];
    assert!(
        failed.iter().all(|n| allowed.contains(n)) && (failed.is_empty() || !lost.is_empty()),
        "failed checks: {:#?}",
        verdict.failed()
    );
    assert!(verdict.drained && verdict.panics.is_empty());
    assert_eq!(verdict.settle_unsettled, 0);
    assert!(stale_noticed > 0, "the stale replica was noticed");
    let s = &verdict.summary;
    assert!(s.accepted > 0);
    // Sales resumed on the promoted replica once it had a replica again.
    let redis = stack.redis_client().await;
    let role: String = redis
        .info(Some(fred::types::InfoKind::Replication))
        .await
        .unwrap();
    let _ = redis.quit().await;
    assert!(role.contains("role:master"), "{role}");
}
