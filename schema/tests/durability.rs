//! `SECKILL_REDIS_DURABILITY` against real Redis servers this test starts on free ports of its own
//! (never the shared one): what each configuration lets a process promise.

use fred::prelude::*;
use seckill_schema::durability::{Durability, DurabilityWatch, check};
use seckill_schema::testing::wait_for;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A `redis-server` of the test's own, with its data in a temporary directory; killed and removed
/// when dropped.
struct RedisServer {
    port: u16,
    /// The cluster bus's port, for `CLUSTER MEET`.
    bus_port: u16,
    dir: PathBuf,
    child: Child,
}

impl RedisServer {
    async fn start(args: &[&str]) -> RedisServer {
        // A port found free may be taken again before redis-server binds it: then try another.
        for _ in 0..5 {
            if let Some(server) = RedisServer::try_start(args).await {
                return server;
            }
        }
        panic!("redis-server would not start with {args:?}");
    }

    async fn try_start(args: &[&str]) -> Option<RedisServer> {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "seckill-durability-{port}-{:08x}",
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("creating the server's directory");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            // No 5 s pause before a replica's first sync.
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--save", "", "--dir"])
            .arg(&dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        // Left alone, the bus port would be port + 10000: maybe taken, maybe past 65535.
        let bus_port = free_port();
        if args.contains(&"--cluster-enabled") {
            command.args(["--cluster-port", &bus_port.to_string()]);
        }
        let child = command.spawn().expect("redis-server is installed");
        let mut server = RedisServer {
            port,
            bus_port,
            dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if server
                .child
                .try_wait()
                .expect("polling redis-server")
                .is_some()
            {
                return None;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Some(server);
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port} within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn client(&self) -> Client {
        seckill_schema::redis::client(&self.url())
            .await
            .expect("connecting to the test's Redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Gone first, so that it writes nothing into the directory while it is removed.
        let _ = self.child.start_kill();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn without_an_append_only_file_fsync_is_not_ready() {
    let redis = RedisServer::start(&["--appendonly", "no"]).await;
    let client = redis.client().await;
    let status = check(&client, Durability::Fsync).await.unwrap();
    assert!(!status.ok);
    assert_eq!(status.nodes.len(), 1);
    assert_eq!(status.nodes[0].0, format!("127.0.0.1:{}", redis.port));
    assert!(!status.nodes[0].1.appendonly);
    assert_eq!(status.reasons.len(), 1, "{:?}", status.reasons);
    assert!(
        status.reasons[0].contains("appendonly"),
        "{:?}",
        status.reasons
    );
    assert!(status.reasons[0].contains(&redis.port.to_string()));
    // Memory only is all `none` asks.
    assert!(check(&client, Durability::None).await.unwrap().ok);
}

#[tokio::test]
async fn an_append_only_file_synced_on_every_write_is_fsync() {
    let redis = RedisServer::start(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--maxmemory-policy",
        "noeviction",
    ])
    .await;
    let client = redis.client().await;
    let status = check(&client, Durability::Fsync).await.unwrap();
    assert!(status.ok, "{:?}", status.reasons);
    let report = &status.nodes[0].1;
    assert!(report.appendonly);
    assert_eq!(report.appendfsync, "always");
    assert_eq!(report.maxmemory_policy, "noeviction");
    assert_eq!(report.role, "master");

    // Relaxed at run time: the next read sees it.
    let _: () = client
        .custom(fred::cmd!("CONFIG"), vec!["SET", "appendfsync", "everysec"])
        .await
        .unwrap();
    let status = check(&client, Durability::Fsync).await.unwrap();
    assert!(!status.ok);
    assert!(status.reasons[0].contains("appendfsync everysec"));
}

#[tokio::test]
async fn a_redis_that_may_evict_keys_is_never_ready() {
    let redis = RedisServer::start(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--maxmemory-policy",
        "allkeys-lru",
    ])
    .await;
    let client = redis.client().await;
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
    let master = RedisServer::start(&["--appendonly", "no"]).await;
    let client = master.client().await;
    let status = check(&client, Durability::Replica).await.unwrap();
    assert!(!status.ok);
    assert!(
        status.reasons[0].contains("no online replica"),
        "{:?}",
        status.reasons
    );

    let master_port = master.port.to_string();
    let _replica = RedisServer::start(&[
        "--appendonly",
        "no",
        "--replicaof",
        "127.0.0.1",
        &master_port,
    ])
    .await;
    let status = wait_for("the replica to be online", Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            let s = check(&client, Durability::Replica).await.ok()?;
            s.ok.then_some(s)
        }
    })
    .await;
    assert_eq!(status.nodes[0].1.connected_replicas, 1);
}

#[tokio::test]
async fn the_watch_follows_redis_and_exports_what_it_read() {
    let metrics = seckill_schema::telemetry::metrics();
    let redis = RedisServer::start(&["--appendonly", "no"]).await;
    let client = redis.client().await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
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

    let _: () = client
        .custom(
            fred::cmd!("CONFIG"),
            vec!["SET", "maxmemory-policy", "allkeys-lru"],
        )
        .await
        .unwrap();
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
    let server = format!("server=\"127.0.0.1:{}\"", redis.port);
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
    let _ = stop.send(true);
}

#[tokio::test]
async fn every_primary_of_a_cluster_is_checked() {
    let cluster = ["--cluster-enabled", "yes", "--appendonly", "no"];
    let a = RedisServer::start(&cluster).await;
    let b = RedisServer::start(&cluster).await;
    let c =
        RedisServer::start(&[&cluster[..], &["--maxmemory-policy", "allkeys-lru"]].concat()).await;
    let ranges = [(&a, 0, 5460), (&b, 5461, 10922), (&c, 10923, 16383)];
    for (node, from, to) in ranges {
        let client = node.client().await;
        let _: () = client
            .custom(
                fred::cmd!("CLUSTER"),
                vec!["ADDSLOTSRANGE".to_owned(), from.to_string(), to.to_string()],
            )
            .await
            .unwrap();
        for other in [&a, &b, &c] {
            let _: () = client
                .custom(
                    fred::cmd!("CLUSTER"),
                    vec![
                        "MEET".to_owned(),
                        "127.0.0.1".into(),
                        other.port.to_string(),
                        other.bus_port.to_string(),
                    ],
                )
                .await
                .unwrap();
        }
    }
    for node in [&a, &b, &c] {
        let client = node.client().await;
        wait_for("the cluster to be ok", Duration::from_secs(20), || {
            let client = client.clone();
            async move {
                let info: String = client
                    .custom(fred::cmd!("CLUSTER"), vec!["INFO"])
                    .await
                    .ok()?;
                info.contains("cluster_state:ok").then_some(())
            }
        })
        .await;
    }

    let url = format!("redis-cluster://127.0.0.1:{}", a.port);
    let client = seckill_schema::redis::client(&url).await.unwrap();
    assert!(client.is_clustered());
    let status = check(&client, Durability::None).await.unwrap();
    let mut servers: Vec<&str> = status.nodes.iter().map(|(s, _)| s.as_str()).collect();
    servers.sort();
    let mut expected: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    expected.sort();
    assert_eq!(servers, expected);
    assert!(!status.ok);
    assert_eq!(status.reasons.len(), 1, "{:?}", status.reasons);
    assert!(
        status.reasons[0].contains(&format!("127.0.0.1:{} may evict keys", c.port)),
        "{:?}",
        status.reasons
    );
}
