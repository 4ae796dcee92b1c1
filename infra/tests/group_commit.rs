//! Group commit in `replica` mode, against a Redis master and replica this test starts on free
//! ports of its own (never the shared Redis): a crowd of writes is confirmed by a handful of
//! `WAIT`s, and nothing is confirmed once the replica is gone or the connection was replaced.

use fred::prelude::*;
use seckill_infra::replication::{GroupCommit, Unconfirmed};
use seckill_testkit::{RedisCluster, RedisOptions, RedisServer, wait_for};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How this test's servers run: Redis's own defaults (no append-only file), and no 5 s pause
/// before a replica's first sync.
fn options() -> RedisOptions {
    RedisOptions::volatile().no_sync_delay()
}

/// A master and one replica that acknowledges what the master writes.
async fn master_and_replica() -> (RedisServer, RedisServer, Client) {
    let master = RedisServer::start_ready(options()).await;
    let replica = RedisServer::start_ready(options().replicaof(master.port())).await;
    // A first full sync on a loaded machine (the suite's other tests run beside this one) can take
    // a while.
    master.wait_replicated(Duration::from_secs(90)).await;
    let admin = seckill_infra::redis::client(&master.url()).await.unwrap();
    (master, replica, admin)
}

/// The hot path's client, as the gateway builds it: one auto-pipelined connection.
async fn hot_client(url: &str) -> Client {
    let pool = seckill_infra::redis::pool(url, 1).await.unwrap();
    pool.next().clone()
}

async fn wait_calls(admin: &Client) -> u64 {
    let stats: String = admin
        .custom(fred::cmd!("INFO"), vec!["commandstats"])
        .await
        .unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

async fn write_then_confirm(
    client: &Client,
    commit: &Arc<GroupCommit>,
    key: String,
) -> Result<(), Unconfirmed> {
    let _: () = client.set(key, "1", None, None, false).await.unwrap();
    commit.replicated().await
}

/// `count` tasks at once, each writing `k<i>` and asking for its confirmation: their answers.
async fn write_concurrently(
    client: &Client,
    commit: &Arc<GroupCommit>,
    count: usize,
) -> Vec<Result<(), Unconfirmed>> {
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let (client, commit) = (client.clone(), commit.clone());
            tokio::spawn(async move { write_then_confirm(&client, &commit, format!("k{i}")).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(count);
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

/// Writes `key` and asks for its confirmation until one comes (10 s at the most).
async fn wait_confirmed(what: &str, client: &Client, commit: &Arc<GroupCommit>, key: &str) {
    wait_for(what, Duration::from_secs(10), || async move {
        write_then_confirm(client, commit, key.into()).await.ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_few_waits_confirm_a_crowd_of_writes() {
    let (master, replica, admin) = master_and_replica().await;
    let client = hot_client(&master.url()).await;
    let commit = GroupCommit::new(client.clone(), Duration::from_secs(1));
    let waits_before = wait_calls(&admin).await;

    for answer in write_concurrently(&client, &commit, 200).await {
        assert_eq!(answer, Ok(()));
    }
    assert_eq!(commit.covered(), 200);
    assert!(commit.waits() >= 1);
    assert!(
        commit.waits() < 100,
        "{} WAITs for 200 writes",
        commit.waits()
    );
    // Redis agrees on the count, and the replica holds every confirmed write.
    assert_eq!(wait_calls(&admin).await - waits_before, commit.waits());
    let on_replica = seckill_infra::redis::client(&replica.url()).await.unwrap();
    let written: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
    let present: u64 = on_replica.exists(written).await.unwrap();
    assert_eq!(present, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_replica_nothing_is_confirmed() {
    let (master, mut replica, _admin) = master_and_replica().await;
    let client = hot_client(&master.url()).await;
    let timeout = Duration::from_millis(300);
    let commit = GroupCommit::new(client.clone(), timeout);
    // A replica busy elsewhere (other tests share the machine) may miss a short WAIT.
    wait_confirmed("a confirmation", &client, &commit, "before").await;

    // SIGKILL: the replica vanishes without a word to its master.
    replica.kill();
    let started = Instant::now();
    for answer in write_concurrently(&client, &commit, 20).await {
        assert_eq!(answer, Err(Unconfirmed));
    }
    let took = started.elapsed();
    // Each WAIT blocks for its timeout. A write may wait behind one WAIT, then for the one in
    // flight when it registers, then for its own: never more than three.
    assert!(took >= timeout, "answered after {took:?}");
    assert!(
        took < timeout * 3 + Duration::from_secs(1),
        "answered after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replaced_connection_confirms_nothing_until_it_settles() {
    let (master, _replica, admin) = master_and_replica().await;
    let client = hot_client(&master.url()).await;
    let commit = GroupCommit::new(client.clone(), Duration::from_secs(1));
    assert_eq!(
        write_then_confirm(&client, &commit, "before".into()).await,
        Ok(())
    );

    // Cut the hot connection after a write answered: a WAIT on its successor would cover nothing
    // the old one wrote.
    let _: () = client.set("cut", "1", None, None, false).await.unwrap();
    let _: u64 = admin
        .custom(
            fred::cmd!("CLIENT"),
            vec!["KILL", "TYPE", "normal", "SKIPME", "yes"],
        )
        .await
        .unwrap();
    wait_for(
        "the hot client to reconnect",
        Duration::from_secs(10),
        || {
            let client = client.clone();
            async move { client.ping::<String>(None).await.ok().map(|_| ()) }
        },
    )
    .await;
    assert_eq!(commit.replicated().await, Err(Unconfirmed));

    // Once the new connection has carried every write since, confirmations resume.
    wait_confirmed("confirmations to resume", &client, &commit, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_cluster_the_wait_goes_to_the_keys_primary() {
    // One primary holding every slot, and its replica.
    let cluster = RedisCluster::start_with(1, 1, |_| options()).await;
    let master = &cluster.primaries()[0];
    master.wait_replicated(Duration::from_secs(90)).await;
    let admin = seckill_infra::redis::client(&master.url()).await.unwrap();
    let waits_before = wait_calls(&admin).await;

    let client = hot_client(&cluster.url()).await;
    assert!(client.is_clustered());
    let commit = GroupCommit::new(client.clone(), Duration::from_secs(1));
    let _: () = client
        .set("{item:1}:k", "1", None, None, false)
        .await
        .unwrap();
    assert_eq!(commit.replicated_for("{item:1}:k").await, Ok(()));
    // Without a key there is no telling which primary to ask.
    assert_eq!(commit.replicated().await, Err(Unconfirmed));
    assert_eq!(wait_calls(&admin).await - waits_before, 1);
}
