//! The test support for Redis processes of a test's own (`seckill_testkit::RedisServer`
//! and `Sentinel`), against real `redis-server` processes: an append-only server keeps its data
//! through a SIGKILL, a wiped one comes back empty, a paused one does not answer until resumed,
//! and a Sentinel promotes the replica when the master dies.

use fred::prelude::*;
use seckill_testkit::{RedisOptions, RedisServer, Sentinel, free_port, wait_for};
use std::time::Duration;

async fn get(url: &str, key: &str) -> Option<String> {
    let client = seckill_infra::redis::client(url).await.unwrap();
    let value: Option<String> = client.get(key).await.unwrap();
    let _ = client.quit().await;
    value
}

async fn set(url: &str, key: &str, value: &str) {
    let client = seckill_infra::redis::client(url).await.unwrap();
    let _: () = client.set(key, value, None, None, false).await.unwrap();
    let _ = client.quit().await;
}

async fn config_get(url: &str, name: &str) -> String {
    let client = seckill_infra::redis::client(url).await.unwrap();
    let (_, value): (String, String) = client
        .custom(fred::cmd!("CONFIG"), vec!["GET", name])
        .await
        .unwrap();
    let _ = client.quit().await;
    value
}

#[test]
fn free_ports_are_never_the_shared_servers() {
    for _ in 0..200 {
        let port = free_port();
        assert!(![6379, 6390, 26379].contains(&port), "{port}");
    }
}

#[tokio::test]
async fn an_aof_server_keeps_its_data_through_sigkill_and_a_wipe_empties_it() {
    let mut redis = RedisServer::start(RedisOptions::default());
    assert!(![6379, 6390].contains(&redis.port()));
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    redis.wait_ready().await;
    assert_eq!(config_get(&redis.url(), "appendonly").await, "yes");
    assert_eq!(config_get(&redis.url(), "appendfsync").await, "always");
    assert_eq!(
        config_get(&redis.url(), "maxmemory-policy").await,
        "noeviction"
    );
    assert_eq!(config_get(&redis.url(), "save").await, "");

    set(&redis.url(), "accepted-order", "42").await;
    let pid = redis.pid().unwrap();
    redis.kill();
    assert!(redis.pid().is_none());
    assert!(!redis.ping().await, "a killed server does not answer");

    redis.restart();
    assert_ne!(redis.pid(), Some(pid));
    redis.wait_ready().await;
    assert_eq!(
        get(&redis.url(), "accepted-order").await.as_deref(),
        Some("42"),
        "the append-only file (appendfsync always) kept the write through SIGKILL"
    );

    // Paused: the port is open but nothing answers, until resumed.
    redis.pause();
    assert!(!redis.ping().await, "a paused server does not answer");
    redis.resume();
    redis.wait_ready().await;

    redis.wipe_and_restart();
    redis.wait_ready().await;
    assert_eq!(get(&redis.url(), "accepted-order").await, None);
    let port = redis.port();
    let dir = redis.data_dir();
    drop(redis);
    assert!(
        !dir.exists(),
        "the server's directory is removed when dropped"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server is gone when dropped"
    );
}

#[tokio::test]
async fn without_aof_a_restart_comes_back_empty() {
    let mut redis = RedisServer::start(RedisOptions::default().appendonly(false));
    redis.wait_ready().await;
    assert_eq!(config_get(&redis.url(), "appendonly").await, "no");
    set(&redis.url(), "accepted-order", "42").await;
    redis.restart();
    redis.wait_ready().await;
    assert_eq!(get(&redis.url(), "accepted-order").await, None);
}

#[tokio::test]
async fn sentinel_promotes_the_replica_when_the_master_is_killed() {
    let mut master = RedisServer::start(RedisOptions::default());
    master.wait_ready().await;
    let replica = RedisServer::start(RedisOptions::default().replicaof(master.port()));
    replica.wait_ready().await;

    set(&master.url(), "accepted-order", "7").await;
    // The write has reached the replica (it acknowledged a later one).
    master.wait_replicated(Duration::from_secs(10)).await;

    let sentinel = Sentinel::start("seckill-test", master.port());
    sentinel.wait_ready().await;
    assert_eq!(sentinel.master_port().await, Some(master.port()));
    let (s, replica_port) = (&sentinel, replica.port());
    wait_for(
        "the sentinel to know the replica",
        Duration::from_secs(15),
        || async move {
            s.replica_ports()
                .await
                .contains(&replica_port)
                .then_some(())
        },
    )
    .await;

    master.kill();
    let promoted = wait_for(
        "the sentinel to promote the replica",
        Duration::from_secs(30),
        || async move { s.master_port().await.filter(|p| *p == replica_port) },
    )
    .await;
    assert_eq!(promoted, replica_port);

    // Through the Sentinel URL, clients reach the new master: the write is there, and new ones
    // are taken.
    wait_for(
        "the promoted replica to take writes through the sentinel URL",
        Duration::from_secs(15),
        || async move {
            let client = seckill_infra::redis::client(&s.url()).await.ok()?;
            let value: Option<String> = client.get("accepted-order").await.ok()?;
            let written: Result<(), _> = client.set("after-failover", "1", None, None, false).await;
            let _ = client.quit().await;
            (value.as_deref() == Some("7") && written.is_ok()).then_some(())
        },
    )
    .await;
}
