//! The network-partition kit ([`Network`]) against real processes: what a cut, a partition and an
//! isolation do to a client and a server in different hosts and how they heal, the servers the
//! kit starts inside hosts answering from the test's namespace, and nothing left behind by a
//! panicking test or a killed one.
//!
//! Needs root (network namespaces), as the whole suite does on this machine.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use seckill_testkit::{
    Host, Network, PostgresServer, RabbitMqNode, RedisOptions, RedisServer, Sentinel, wait_for,
};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// What `redis-cli PING` run in a host got.
#[derive(Debug, PartialEq, Eq)]
enum Ping {
    Pong,
    /// No answer within the limit: killed by `timeout` (exit 124).
    TimedOut,
    /// Anything else: refused, no route to host, …
    Failed(String),
}

/// `PING` from inside `client` to `server`'s address, given one second (redis-cli 7.0 has no
/// timeout of its own, hence `timeout`).
async fn ping_from(client: &Host, server: &RedisServer) -> Ping {
    let out = client
        .tokio_command("timeout")
        .args(["1", "redis-cli", "-h", &server.ip().to_string()])
        .args(["-p", &server.port().to_string(), "PING"])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("running redis-cli in a host");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match out.status.code() {
        Some(0) if stdout == "PONG" => Ping::Pong,
        Some(124) => Ping::TimedOut,
        _ => Ping::Failed(format!(
            "{}: {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

#[tokio::test]
async fn a_cut_silences_two_hosts_only_and_a_heal_restores_them() {
    let net = Network::new();
    let (server, client, bystander) = (net.host("redis"), net.host("client"), net.host("other"));
    let redis = RedisServer::start_ready_in(&server, RedisOptions::volatile()).await;
    assert!(
        redis
            .url()
            .starts_with(&format!("redis://{}:", server.ip()))
    );
    assert_eq!(ping_from(&client, &redis).await, Ping::Pong);

    net.cut(&server, &client);
    // Silence, not an error: what a partition looks like to a client.
    assert_eq!(ping_from(&client, &redis).await, Ping::TimedOut);
    assert!(redis.ping().await, "the test process reaches a cut host");
    assert_eq!(ping_from(&bystander, &redis).await, Ping::Pong);
    net.cut(&client, &server); // idempotent, either order

    net.heal(&server, &client);
    assert_eq!(ping_from(&client, &redis).await, Ping::Pong);
}

#[tokio::test]
async fn a_connection_open_across_a_cut_hangs_and_resumes_after_the_heal() {
    let net = Network::new();
    let (server, client) = (net.host("redis"), net.host("client"));
    let redis = RedisServer::start_ready_in(&server, RedisOptions::volatile()).await;
    // One connection, two PINGs 1.5 s apart; the cut falls between them.
    let script = format!(
        "(echo PING; sleep 1.5; echo PING) | redis-cli -h {} -p {}",
        redis.ip(),
        redis.port()
    );
    let started = Instant::now();
    let session = client
        .tokio_command("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output();
    let faults = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        net.cut(&server, &client);
        tokio::time::sleep(Duration::from_millis(2300)).await;
        net.heal(&server, &client);
    };
    let (out, ()) = tokio::join!(session, faults);
    let out = out.expect("running redis-cli in a host");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["PONG", "PONG"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The second answer waited for the heal (3 s in), not for the 1.5 s pause alone.
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_isolated_host_hears_no_one_not_even_the_test_until_it_rejoins() {
    let net = Network::new();
    let (server, client) = (net.host("redis"), net.host("client"));
    let redis = RedisServer::start_ready_in(&server, RedisOptions::volatile()).await;

    server.isolate();
    let (from_client, from_test) = tokio::join!(ping_from(&client, &redis), redis.ping());
    // Silence, or "No route to host" once ARP gives up on it.
    assert_ne!(from_client, Ping::Pong);
    assert!(!from_test, "isolation cuts the test process off too");
    // The server runs on, and answers inside its host.
    let inside = server
        .command("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &redis.port().to_string(), "PING"])
        .output()
        .expect("running redis-cli in the isolated host");
    assert_eq!(String::from_utf8_lossy(&inside.stdout).trim(), "PONG");

    server.rejoin();
    wait_for(
        "the rejoined host to answer",
        Duration::from_secs(10),
        || async {
            (ping_from(&client, &redis).await == Ping::Pong && redis.ping().await).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_sentinel_fails_over_a_master_partitioned_from_it_and_its_replica() {
    let net = Network::new();
    let (a, b, s) = (
        net.host("master"),
        net.host("replica"),
        net.host("sentinel"),
    );
    let master = RedisServer::start_ready_in(&a, RedisOptions::volatile().no_sync_delay()).await;
    let replica_opts = RedisOptions::volatile().replicaof_at(master.ip(), master.port());
    let replica = RedisServer::start_ready_in(&b, replica_opts).await;
    master.wait_replicas_online(1).await;
    let sentinel = Sentinel::start_in(&s, "netns", master.ip(), master.port());
    sentinel.wait_ready().await;
    assert_eq!(sentinel.master_addr().await, Some(master.addr()));
    wait_for(
        "the sentinel to know the replica",
        Duration::from_secs(20),
        || async {
            sentinel
                .replica_ports()
                .await
                .contains(&replica.port())
                .then_some(())
        },
    )
    .await;

    net.partition(&[&a], &[&b, &s]);
    wait_for(
        "the sentinel to promote the replica",
        Duration::from_secs(30),
        || async { (sentinel.master_addr().await == Some(replica.addr())).then_some(()) },
    )
    .await;
    // Split brain: the test still reaches the old master, which never heard of the failover.
    let old = master
        .info("replication")
        .await
        .expect("the old master answers the test");
    assert!(old.contains("role:master"), "{old}");

    net.heal_all();
    // Both sides hear it again. (Sentinel then makes it the new master's replica at its next
    // INFO, up to 10 s later: Sentinel's business, not this kit's.)
    assert_eq!(ping_from(&b, &master).await, Ping::Pong);
    assert_eq!(ping_from(&s, &master).await, Ping::Pong);
}

#[tokio::test]
async fn postgres_in_a_host_answers_the_test_and_other_hosts_until_cut() {
    let net = Network::new();
    let (db, client) = (net.host("postgres"), net.host("client"));
    let started = Instant::now();
    let pg = PostgresServer::start(&db).await;
    eprintln!(
        "PostgreSQL (initdb and start) ready in {:?}",
        started.elapsed()
    );

    // From the test's namespace, through the crates' own client: created and migrated.
    let conn = seckill_infra::db::connect(&pg.database_url("seckill_netns"), 2)
        .await
        .expect("connecting to the host's PostgreSQL");
    conn.ping().await.expect("ping");

    let psql = |url: String| {
        client
            .tokio_command("psql")
            .args([&format!("{url}?connect_timeout=2"), "-tAc", "SELECT 1"])
            .stdin(Stdio::null())
            .output()
    };
    let out = psql(pg.url()).await.expect("running psql in a host");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    net.cut(&db, &client);
    let out = psql(pg.url()).await.expect("running psql in a host");
    assert!(!out.status.success(), "psql across a cut succeeded");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timeout"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    conn.ping()
        .await
        .expect("the test still reaches a cut host");
    conn.close().await.expect("closing");
}

#[tokio::test]
async fn rabbitmq_in_a_host_answers_the_test() {
    let net = Network::new();
    let host = net.host("rabbitmq");
    let started = Instant::now();
    let mq = RabbitMqNode::start(&host).await;
    eprintln!("RabbitMQ ready in {:?}", started.elapsed());

    let conn = seckill_infra::broker::connect(&mq.url(), "netns-test")
        .await
        .expect("connecting to the host's RabbitMQ as guest from another address");
    let channel = conn.create_channel().await.expect("a channel");
    channel
        .queue_declare(
            "netns-probe".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declaring a queue");
    let queues = mq
        .ctl()
        .args(["list_queues", "name"])
        .output()
        .expect("running rabbitmqctl in the host");
    assert!(
        String::from_utf8_lossy(&queues.stdout).contains("netns-probe"),
        "{}{}",
        String::from_utf8_lossy(&queues.stdout),
        String::from_utf8_lossy(&queues.stderr)
    );
    let _ = conn.close(200, "done".into()).await;
}

/// What a network left behind would show: `(namespaces, links)` of these names still present.
fn still_present(namespaces: &[String], links: &[String]) -> (Vec<String>, Vec<String>) {
    let listed = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("running ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ns_list = listed(&["netns", "list"]);
    let link_list = listed(&["-o", "link", "show"]);
    let ns_names: Vec<&str> = ns_list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let link_names: Vec<&str> = link_list
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .collect();
    (
        namespaces
            .iter()
            .filter(|n| ns_names.contains(&n.as_str()))
            .cloned()
            .collect(),
        links
            .iter()
            .filter(|n| link_names.contains(&n.as_str()))
            .cloned()
            .collect(),
    )
}

/// Whether a process runs (a zombie, killed and waiting for its parent, does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|s| !s.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn dropping_the_network_in_a_panic_kills_its_processes_and_removes_everything() {
    let left = std::sync::Mutex::new(None);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let net = Network::new();
        let host = net.host("sleeper");
        // Two processes no one waits for, one of them in a session of its own (daemonized).
        let status = host
            .command("sh")
            .args([
                "-c",
                "sleep 600 >/dev/null 2>&1 & setsid sleep 600 >/dev/null 2>&1 &",
            ])
            .status()
            .expect("sh");
        assert!(status.success());
        let pids = std::iter::repeat_with(|| host.pids())
            .take(100)
            .find(|p| p.len() == 2)
            .expect("both sleeps in the host");
        *left.lock().unwrap() = Some((host.netns().to_owned(), net.bridge().to_owned(), pids));
        panic!("a test failing with processes running in its hosts");
    }));
    assert!(outcome.is_err());
    let (netns, bridge, pids) = left.lock().unwrap().take().expect("the network was made");
    assert_eq!(still_present(&[netns], &[bridge]), (vec![], vec![]));
    for pid in pids {
        assert!(!running(pid), "process {pid} survived the network");
    }
}

/// Run only by the test below, as a child process: makes a network with a process inside, prints
/// the names, and is killed without dropping anything.
#[test]
#[ignore = "a helper: run by sweep_removes_what_a_killed_test_process_left"]
fn killed_test_process() {
    if std::env::var_os("SECKILL_NETNS_KILLED_RUN").is_none() {
        return;
    }
    let net = Network::new();
    let host = net.host("orphan");
    // Its output not ours: the parent reads ours to the end, which an orphan holding it would
    // postpone by ten minutes.
    let started = host
        .command("sh")
        .args(["-c", "sleep 600 >/dev/null 2>&1 & echo $!"])
        .output()
        .expect("sh");
    let orphan = String::from_utf8_lossy(&started.stdout).trim().to_owned();
    println!(
        "LEFT {} {} {orphan} {}",
        host.netns(),
        net.bridge(),
        std::process::id()
    );
    // SIGKILL, as the OOM killer or a CI timeout would: no unwinding, no drop.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &std::process::id().to_string()])
        .status();
    std::thread::sleep(Duration::from_secs(60));
    unreachable!("SIGKILLed");
}

#[test]
fn sweep_removes_what_a_killed_test_process_left() {
    let out = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", "killed_test_process", "--ignored", "--nocapture"])
        .env("SECKILL_NETNS_KILLED_RUN", "1")
        .stdin(Stdio::null())
        .output()
        .expect("running the killed run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("LEFT "))
        .unwrap_or_else(|| panic!("the killed run printed no names: {stdout}"));
    let [netns, bridge, orphan, owner]: [&str; 4] = line
        .split_whitespace()
        .collect::<Vec<_>>()
        .try_into()
        .expect("four fields");
    let (orphan, owner): (u32, u32) = (orphan.parse().unwrap(), owner.parse().unwrap());
    assert!(!running(owner), "the killed run is dead");

    Network::sweep_stale();
    assert_eq!(
        still_present(&[netns.to_owned()], &[bridge.to_owned()]),
        (vec![], vec![])
    );
    // Reparented to init, which reaps it.
    let end = Instant::now() + Duration::from_secs(5);
    while running(orphan) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !running(orphan),
        "the orphan in the killed run's host survived the sweep"
    );
}
