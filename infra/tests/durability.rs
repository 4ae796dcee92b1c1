//! `SECKILL_REDIS_DURABILITY` against real Redis servers this test starts on free ports of its own
//! (never the shared one): what each configuration lets a process promise.

use fred::prelude::*;
use seckill_infra::durability::{Durability, DurabilityStatus, DurabilityWatch, check};
use seckill_testkit::{RedisCluster, RedisOptions, RedisServer, config_set, wait_for};
use std::time::Duration;

/// A Redis of the test's own on `opts` (with no 5 s pause before a replica's first sync), and a
/// client of it.
async fn started(opts: RedisOptions) -> (RedisServer, Client) {
    let redis = RedisServer::start_ready(opts.no_sync_delay()).await;
    let client = seckill_infra::redis::client(&redis.url())
        .await
        .expect("connecting to the test's Redis");
    (redis, client)
}

/// [`started`], and what `check` makes of it in `mode`.
async fn checked(opts: RedisOptions, mode: Durability) -> (RedisServer, Client, DurabilityStatus) {
    let (redis, client) = started(opts).await;
    let status = check(&client, mode).await.unwrap();
    (redis, client, status)
}

#[tokio::test]
async fn without_an_append_only_file_fsync_is_not_ready() {
    let (redis, client, status) = checked(RedisOptions::volatile(), Durability::Fsync).await;
    assert!(!status.ok);
    assert_eq!(status.nodes.len(), 1);
    assert_eq!(status.nodes[0].0, format!("127.0.0.1:{}", redis.port()));
    assert!(!status.nodes[0].1.appendonly);
    assert_eq!(status.reasons.len(), 1, "{:?}", status.reasons);
    assert!(
        status.reasons[0].contains("appendonly"),
        "{:?}",
        status.reasons
    );
    assert!(status.reasons[0].contains(&redis.port().to_string()));
    // Memory only is all `none` asks.
    assert!(check(&client, Durability::None).await.unwrap().ok);
}

#[tokio::test]
async fn an_append_only_file_synced_on_every_write_is_fsync() {
    let fsync = RedisOptions::default()
        .appendonly(true)
        .appendfsync("always")
        .maxmemory_policy("noeviction");
    let (_redis, client, status) = checked(fsync, Durability::Fsync).await;
    assert!(status.ok, "{:?}", status.reasons);
    let report = &status.nodes[0].1;
    assert!(report.appendonly);
    assert_eq!(report.appendfsync, "always");
    assert_eq!(report.maxmemory_policy, "noeviction");
    assert_eq!(report.role, "master");

    // Relaxed at run time: the next read sees it.
    config_set(&client, "appendfsync", "everysec").await;
    let status = check(&client, Durability::Fsync).await.unwrap();
    assert!(!status.ok);
    assert!(status.reasons[0].contains("appendfsync everysec"));
}

#[tokio::test]
async fn a_redis_that_may_evict_keys_is_never_ready() {
    let evicting = RedisOptions::default()
        .appendonly(true)
        .appendfsync("always")
        .maxmemory_policy("allkeys-lru");
    let (_redis, client) = started(evicting).await;
    for mode in Durability::ALL {
        let status = check(&client, mode).await.unwrap();
        assert!(!status.ok, "{mode}");
        assert!(
            status
                .reasons
                .iter()
                .any(|r| r.contains("evict") && r.contains("allkeys-lru")),
            "{mode}: {:?}",
            status.reasons
        );
    }
}

#[tokio::test]
async fn replica_mode_needs_an_online_replica() {
    let replicated = RedisOptions::volatile().arg("min-replicas-to-write", "1");
    let (master, client, status) = checked(replicated, Durability::Replica).await;
    assert!(!status.ok);
    assert!(
        status.reasons[0].contains("no online replica"),
        "{:?}",
        status.reasons
    );

    let _replica = started(RedisOptions::volatile().replicaof(master.port())).await;
    let status = wait_for("the replica to be online", Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            let s = check(&client, Durability::Replica).await.ok()?;
            s.ok.then_some(s)
        }
    })
    .await;
    assert_eq!(status.nodes[0].1.connected_replicas, 1);

    // A master that would write without its replicas (a deposed one coming back) is not enough.
    config_set(&client, "min-replicas-to-write", "0").await;
    let status = check(&client, Durability::Replica).await.unwrap();
    assert!(!status.ok);
    assert!(
        status.reasons[0].contains("min-replicas-to-write 0"),
        "{:?}",
        status.reasons
    );
}

#[tokio::test]
async fn the_watch_follows_redis_and_exports_what_it_read() {
    let metrics = seckill_infra::telemetry::metrics();
    let (redis, client) = started(RedisOptions::volatile()).await;
    let (stop, stopped) = seckill_infra::lifecycle::Shutdown::new();
    let watch = DurabilityWatch::spawn(
        client.clone(),
        Durability::None,
        Duration::from_millis(20),
        stopped,
    );
    wait_for("the first check", Duration::from_secs(5), || async {
        watch.current().filter(|s| s.ok).map(|_| ())
    })
    .await;

    config_set(&client, "maxmemory-policy", "allkeys-lru").await;
    // `/readyz` sees it at once; the watch on its next tick.
    let now = watch.check_now().await;
    assert!(!now.ok);
    assert!(
        now.reasons[0].contains("may evict keys"),
        "{:?}",
        now.reasons
    );
    wait_for("the watch to notice", Duration::from_secs(5), || async {
        watch.current().filter(|s| !s.ok).map(|_| ())
    })
    .await;
    let text = metrics.render();
    let server = format!("server=\"127.0.0.1:{}\"", redis.port());
    assert!(
        text.lines()
            .any(|l| l.starts_with("seckill_redis_noeviction{")
                && l.contains(&server)
                && l.ends_with(" 0")),
        "{text}"
    );
    assert!(
        text.contains("seckill_redis_durability_mode{mode=\"none\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("seckill_redis_durability_mode{mode=\"fsync\"} 0"),
        "{text}"
    );
    stop.stop();
}

#[tokio::test]
async fn every_primary_of_a_cluster_is_checked() {
    // Three primaries sharing the slots; the third may evict keys.
    let cluster = RedisCluster::start_with(3, 0, |i| {
        let volatile = RedisOptions::volatile().no_sync_delay();
        if i == 2 {
            volatile.maxmemory_policy("allkeys-lru")
        } else {
            volatile
        }
    })
    .await;
    let [a, b, c] = cluster.primaries() else {
        unreachable!("three primaries")
    };

    let client = seckill_infra::redis::client(&cluster.url()).await.unwrap();
    assert!(client.is_clustered());
    let status = check(&client, Durability::None).await.unwrap();
    let mut servers: Vec<&str> = status.nodes.iter().map(|(s, _)| s.as_str()).collect();
    servers.sort();
    let mut expected: Vec<String> = [a, b, c]
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port()))
        .collect();
    expected.sort();
    assert_eq!(servers, expected);
    assert!(!status.ok);
    assert_eq!(status.reasons.len(), 1, "{:?}", status.reasons);
    assert!(
        status.reasons[0].contains(&format!("127.0.0.1:{} may evict keys", c.port())),
        "{:?}",
        status.reasons
    );
}
