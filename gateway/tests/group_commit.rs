//! Group commit in `replica` mode, against a Redis master and replica this test starts on free
//! ports of its own (never the shared Redis): a crowd of writes is confirmed by a handful of
//! `WAIT`s, and nothing is confirmed once the replica is gone or the connection was replaced.

use fred::prelude::*;
use seckill_gateway::replication::{GroupCommit, Unconfirmed};
use seckill_schema::testing::wait_for;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
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
            "seckill-group-commit-{port}-{:08x}",
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

    /// SIGKILL: the replica vanishes without a word to its master.
    async fn kill(&mut self) {
        self.child.start_kill().expect("killing redis-server");
        self.child.wait().await.expect("reaping redis-server");
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

/// A master and one replica that acknowledges what the master writes.
async fn master_and_replica() -> (RedisServer, RedisServer, Client) {
    let master = RedisServer::start(&[]).await;
    let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]).await;
    let admin = seckill_schema::redis::client(&master.url()).await.unwrap();
    // `state=online` is not enough: a replica still loading its first copy acknowledges nothing.
    wait_for(
        "the replica to acknowledge",
        Duration::from_secs(20),
        || {
            let admin = admin.clone();
            async move {
                let _: () = admin.set("ready", "1", None, None, false).await.ok()?;
                let acked: i64 = admin.wait(1, 100).await.ok()?;
                (acked == 1).then_some(())
            }
        },
    )
    .await;
    (master, replica, admin)
}

/// The hot path's client, as the gateway builds it: one auto-pipelined connection.
async fn hot_client(url: &str) -> Client {
    let pool = seckill_schema::redis::pool(url, 1).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_few_waits_confirm_a_crowd_of_writes() {
    let (master, replica, admin) = master_and_replica().await;
    let client = hot_client(&master.url()).await;
    let commit = GroupCommit::new(client.clone(), Duration::from_secs(1));
    let waits_before = wait_calls(&admin).await;

    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (client, commit) = (client.clone(), commit.clone());
            tokio::spawn(async move { write_then_confirm(&client, &commit, format!("k{i}")).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok(()));
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
    let on_replica = seckill_schema::redis::client(&replica.url()).await.unwrap();
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
    wait_for("a confirmation", Duration::from_secs(10), || {
        let (client, commit) = (client.clone(), commit.clone());
        async move {
            write_then_confirm(&client, &commit, "before".into())
                .await
                .ok()
        }
    })
    .await;

    replica.kill().await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (client, commit) = (client.clone(), commit.clone());
            tokio::spawn(async move { write_then_confirm(&client, &commit, format!("k{i}")).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Err(Unconfirmed));
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
    wait_for("confirmations to resume", Duration::from_secs(10), || {
        let (client, commit) = (client.clone(), commit.clone());
        async move {
            write_then_confirm(&client, &commit, "after".into())
                .await
                .ok()
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_cluster_the_wait_goes_to_the_keys_primary() {
    let cluster = ["--cluster-enabled", "yes"];
    let master = RedisServer::start(&cluster).await;
    let replica = RedisServer::start(&cluster).await;
    let admin = seckill_schema::redis::client(&master.url()).await.unwrap();
    let _: () = admin
        .custom(fred::cmd!("CLUSTER"), vec!["ADDSLOTSRANGE", "0", "16383"])
        .await
        .unwrap();
    let _: () = admin
        .custom(
            fred::cmd!("CLUSTER"),
            vec![
                "MEET".to_owned(),
                "127.0.0.1".into(),
                replica.port.to_string(),
                replica.bus_port.to_string(),
            ],
        )
        .await
        .unwrap();
    let master_id: String = admin
        .custom(fred::cmd!("CLUSTER"), vec!["MYID"])
        .await
        .unwrap();
    let on_replica = seckill_schema::redis::client(&replica.url()).await.unwrap();
    // The replica may only follow the master once it has heard of it.
    wait_for("the replica to follow", Duration::from_secs(20), || {
        let (on_replica, id) = (on_replica.clone(), master_id.clone());
        async move {
            on_replica
                .custom::<(), _>(fred::cmd!("CLUSTER"), vec!["REPLICATE".to_owned(), id])
                .await
                .ok()
        }
    })
    .await;
    wait_for("the cluster to be ok", Duration::from_secs(20), || {
        let admin = admin.clone();
        async move {
            let cluster: String = admin
                .custom(fred::cmd!("CLUSTER"), vec!["INFO"])
                .await
                .ok()?;
            cluster.contains("cluster_state:ok").then_some(())
        }
    })
    .await;
    wait_for(
        "the replica to acknowledge",
        Duration::from_secs(20),
        || {
            let admin = admin.clone();
            async move {
                let _: () = admin.set("ready", "1", None, None, false).await.ok()?;
                let acked: i64 = admin.wait(1, 100).await.ok()?;
                (acked == 1).then_some(())
            }
        },
    )
    .await;
    let waits_before = wait_calls(&admin).await;

    let url = format!("redis-cluster://127.0.0.1:{}", master.port);
    let client = hot_client(&url).await;
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
