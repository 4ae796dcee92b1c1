//! Test support for every crate: a namespace and a database of a test's own, against the real
//! servers, cleaned up when dropped; and waiting on a condition with a deadline instead of sleeping.

use crate::Config;
use crate::broker::Topology;
use crate::messages::Kind;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Which database server a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    MySql,
}

pub const TEST_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
pub const TEST_MYSQL: &str = "mysql://root@127.0.0.1:3306";

/// A namespace and database of one test's own.
pub struct TestEnv {
    pub config: Config,
    cleaned: bool,
}

impl TestEnv {
    pub fn new(backend: Backend) -> TestEnv {
        let tag: String = format!(
            "t{:x}{:04x}",
            crate::snowflake::now_ms() % 0xffff_ffff,
            rand::random::<u16>()
        );
        let mut config =
            Config::from_env().expect("the test environment's SECKILL_* variables parse");
        config.namespace = format!("test_{tag}");
        config.database_url = match backend {
            Backend::Postgres => format!("{TEST_POSTGRES}/seckill_{tag}"),
            Backend::MySql => format!("{TEST_MYSQL}/seckill_{tag}"),
        };
        config.http_addr = "127.0.0.1:0".parse().expect("valid");
        config.workers_addr = "127.0.0.1:0".parse().expect("valid");
        config.jwt_secret = "test-jwt".into();
        config.ticket_secret = "test-ticket".into();
        config.admin_token = "test-admin".into();
        config.webhook_secret = "test-webhook".into();
        config.rate_per_user = 0;
        TestEnv {
            config,
            cleaned: false,
        }
    }

    /// Removes the test's Redis keys, queues and database.
    pub async fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        let c = self.config.clone();
        let _ = crate::db::drop_database(&c.database_url).await;
        if let Ok(redis) = crate::redis::client(&c.redis_url).await {
            use fred::prelude::*;
            let mut cursor = "0".to_owned();
            loop {
                let res: Result<(String, Vec<String>), _> = redis
                    .custom(
                        fred::cmd!("SCAN"),
                        vec![
                            cursor.clone(),
                            "MATCH".into(),
                            format!("{}:*", c.namespace),
                            "COUNT".into(),
                            "1000".into(),
                        ],
                    )
                    .await;
                let Ok((next, keys)) = res else { break };
                if !keys.is_empty() {
                    let _: Result<i64, _> = redis.del(keys).await;
                }
                if next == "0" {
                    break;
                }
                cursor = next;
            }
            let _ = redis.quit().await;
        }
        if let Ok(conn) = crate::broker::connect(&c.amqp_url, "test-cleanup").await {
            if let Ok(ch) = conn.create_channel().await {
                let t = Topology::new(&c.namespace, c.payment_timeout);
                let mut queues: Vec<String> = Kind::ALL.iter().map(|k| t.queue(*k)).collect();
                queues.push(t.dead());
                queues.push(t.delay_queue());
                for q in queues {
                    let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
                }
                let _ = ch
                    .exchange_delete(t.exchange().into(), Default::default())
                    .await;
            }
            let _ = conn.close(200, "done".into()).await;
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.cleaned || std::env::var_os("SECKILL_KEEP_TEST_DATA").is_some() {
            return;
        }
        let mut env = TestEnv {
            config: self.config.clone(),
            cleaned: false,
        };
        self.cleaned = true;
        // Drop cannot await; clean up on a runtime of its own.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(env.cleanup());
            }
        })
        .join();
    }
}

/// Polls `check` until it returns `Some`, or fails the test at the deadline with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// Redis processes of a test's own
//
// Tests that kill, pause, wipe or fail over Redis must never do it to a shared server (the
// machine's on 6379, the project's durable one on 6390). These helpers run real `redis-server`
// and Sentinel processes owned by the test: each on a free port, in a temporary directory of its
// own, killed and removed when dropped (set `SECKILL_KEEP_TEST_DATA` to keep the directory).

/// How long [`RedisServer::wait_ready`] and [`Sentinel::wait_ready`] wait for `+PONG`.
const READY_DEADLINE: Duration = Duration::from_secs(20);

/// Ports no test helper ever hands out: the shared Redis, the project's Redis, Sentinel's default.
const RESERVED_PORTS: [u16; 3] = [6379, 6390, 26379];

/// A port that was free a moment ago, never one of the shared servers' ports.
pub fn free_port() -> u16 {
    let local: Option<u16> = std::env::var("SECKILL_LOCAL_REDIS_PORT")
        .ok()
        .and_then(|p| p.parse().ok());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("binding an ephemeral port");
        if !RESERVED_PORTS.contains(&port) && Some(port) != local {
            return port;
        }
    }
}

/// How a [`RedisServer`] runs. The default is what `SECKILL_REDIS_DURABILITY=fsync` needs
/// (append-only file, `appendfsync always`, `noeviction`), as in `deploy/redis.conf`.
///
/// ```ignore
/// let volatile = RedisOptions::default().appendonly(false);
/// let replica = RedisOptions::default().replicaof(master.port());
/// let evicting = RedisOptions::default().maxmemory_policy("allkeys-lru").arg("maxmemory", "1mb");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// `--appendonly yes|no`: with `no`, a restart comes back empty.
    pub appendonly: bool,
    /// `--appendfsync`: `always`, `everysec` or `no`.
    pub appendfsync: String,
    /// `--maxmemory-policy`: `noeviction`, `allkeys-lru`, …
    pub maxmemory_policy: String,
    /// `--replicaof 127.0.0.1 <port>`: a replica of the server on that port.
    pub replicaof: Option<u16>,
    /// Further `--<name> <value>` pairs, e.g. `("maxmemory", "1mb")`.
    pub extra: Vec<(String, String)>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            appendonly: true,
            appendfsync: "always".into(),
            maxmemory_policy: "noeviction".into(),
            replicaof: None,
            extra: Vec::new(),
        }
    }
}

impl RedisOptions {
    pub fn appendonly(mut self, on: bool) -> Self {
        self.appendonly = on;
        self
    }

    pub fn appendfsync(mut self, policy: &str) -> Self {
        self.appendfsync = policy.into();
        self
    }

    pub fn maxmemory_policy(mut self, policy: &str) -> Self {
        self.maxmemory_policy = policy.into();
        self
    }

    pub fn replicaof(mut self, master_port: u16) -> Self {
        self.replicaof = Some(master_port);
        self
    }

    /// One more `--<name> <value>` on the command line.
    pub fn arg(mut self, name: &str, value: &str) -> Self {
        self.extra.push((name.into(), value.into()));
        self
    }

    /// What a `redis-server` without a config file does: no append-only file (`appendfsync
    /// everysec`, `noeviction`). A restart comes back empty.
    pub fn volatile() -> Self {
        RedisOptions::default()
            .appendonly(false)
            .appendfsync("everysec")
    }

    /// `--repl-diskless-sync-delay 0`: a master sends a new replica its first copy at once,
    /// instead of after Redis's 5 s wait for more replicas to share it.
    pub fn no_sync_delay(self) -> Self {
        self.arg("repl-diskless-sync-delay", "0")
    }

    /// `--cluster-enabled yes`: a Redis Cluster node. [`RedisServer::start`] gives it a cluster
    /// bus port of its own (free, rather than port + 10000, which may be taken or past 65535)
    /// and its cluster config file (`nodes.conf`) in its data directory. [`RedisCluster`] makes
    /// a cluster of such nodes.
    pub fn cluster(self) -> Self {
        if self.is_cluster() {
            self
        } else {
            self.arg("cluster-enabled", "yes")
        }
    }

    /// Whether these options run a cluster node: `cluster-enabled yes`, as
    /// [`cluster`](Self::cluster) sets.
    pub fn is_cluster(&self) -> bool {
        self.extra
            .iter()
            .any(|(name, value)| name == "cluster-enabled" && value.eq_ignore_ascii_case("yes"))
    }
}

/// A `redis-server` process owned by a test, on a free port of 127.0.0.1, with its data in a
/// temporary directory of its own. Killed (SIGKILL) and its directory removed when dropped.
///
/// [`start`](Self::start), [`restart`](Self::restart) and
/// [`wipe_and_restart`](Self::wipe_and_restart) only spawn the process: await
/// [`wait_ready`](Self::wait_ready) before using it.
pub struct RedisServer {
    port: u16,
    /// The cluster bus's port, for a cluster node ([`RedisOptions::cluster`]).
    bus_port: Option<u16>,
    /// The temporary directory: `data/` (Redis's `--dir`) and `redis.log`.
    root: PathBuf,
    opts: RedisOptions,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// Spawns `redis-server --port <free> --bind 127.0.0.1 --save "" --dir <own dir>` with `opts`.
    pub fn start(opts: RedisOptions) -> RedisServer {
        let root = own_temp_dir("redis");
        std::fs::create_dir_all(root.join("data")).expect("creating the Redis data directory");
        let port = free_port();
        let bus_port = opts.is_cluster().then(|| {
            std::iter::repeat_with(free_port)
                .find(|bus| *bus != port)
                .expect("an endless supply of ports")
        });
        let server = RedisServer {
            port,
            bus_port,
            root,
            opts,
            child: Mutex::new(None),
        };
        server.spawn();
        server
    }

    /// [`start`](Self::start), then [`wait_ready`](Self::wait_ready). A port found free may be
    /// taken by another process before redis-server binds it (the cluster bus's port too): then
    /// the server is started again, on other ports, up to 5 times in all.
    pub async fn start_ready(opts: RedisOptions) -> RedisServer {
        const ATTEMPTS: usize = 5;
        for _ in 1..ATTEMPTS {
            let server = RedisServer::start(opts.clone());
            match server.answers().await {
                Ok(()) => return server,
                // Dropped: killed and its directory removed.
                Err(_) if log_tail(&server.log_path()).contains("Address already in use") => {}
                Err(status) => server.exited_before_answering(status),
            }
        }
        let server = RedisServer::start(opts);
        server.wait_ready().await;
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster bus's port of a cluster node ([`RedisOptions::cluster`]), for `CLUSTER MEET`;
    /// `None` for a server that is no cluster node.
    pub fn cluster_bus_port(&self) -> Option<u16> {
        self.bus_port
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn options(&self) -> &RedisOptions {
        &self.opts
    }

    /// Redis's `--dir`: the append-only file lives in `appendonlydir/` under it.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The process's stdout and stderr (kept across restarts and wipes).
    pub fn log_path(&self) -> PathBuf {
        self.root.join("redis.log")
    }

    /// The running process's id; `None` after [`kill`](Self::kill).
    pub fn pid(&self) -> Option<u32> {
        lock(&self.child).as_ref().map(Child::id)
    }

    /// Waits until the server answers `PING` with `+PONG` (not `-LOADING`: an AOF replay is
    /// done), over a plain TCP connection. Fails the test after 20 s, or at once, with the
    /// server's log, if the process has exited.
    pub async fn wait_ready(&self) {
        if let Err(status) = self.answers().await {
            self.exited_before_answering(status);
        }
    }

    /// Waits until the server answers `PONG` (`Ok`) or its process has exited (`Err`); fails
    /// the test after 20 s.
    async fn answers(&self) -> Result<(), std::process::ExitStatus> {
        let what = format!("redis-server on port {} to answer PONG", self.port);
        wait_for(&what, READY_DEADLINE, || {
            let status = exited(&self.child);
            let port = self.port;
            async move {
                match status {
                    Some(status) => Some(Err(status)),
                    None => ping(port).await.then_some(Ok(())),
                }
            }
        })
        .await
    }

    fn exited_before_answering(&self, status: std::process::ExitStatus) -> ! {
        panic!(
            "redis-server on port {} exited ({status}) before answering; its log:\n{}",
            self.port,
            log_tail(&self.log_path())
        );
    }

    /// `INFO <section>`'s text, e.g. `"replication"`; `None` if the server does not answer
    /// within 2 s.
    pub async fn info(&self, section: &str) -> Option<String> {
        match command(self.port, &["INFO", section]).await? {
            Resp::Bulk(text) => text,
            _ => None,
        }
    }

    /// Waits until `INFO replication` lists at least `count` replicas `state=online` (their first
    /// copy loaded): a master's replicas, once started with [`RedisOptions::replicaof`] or
    /// `CLUSTER REPLICATE`. Fails the test after 20 s.
    pub async fn wait_replicas_online(&self, count: usize) {
        let what = format!(
            "{count} replica(s) of redis-server on port {} to be online",
            self.port
        );
        wait_for(&what, READY_DEADLINE, || async move {
            let info = self.info("replication").await?;
            let online = info
                .lines()
                .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                .count();
            (online >= count).then_some(())
        })
        .await
    }

    /// Whether the server answers `PING` with `+PONG` now (within 2 s).
    pub async fn ping(&self) -> bool {
        ping(self.port).await
    }

    /// SIGKILL, as a crash or an OOM kill would: no shutdown, no final fsync. Waits until the
    /// process has exited. A no-op when it is not running.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Kills the server if it runs, then starts it again on the same port with the same
    /// directory and options: with `appendonly`, it comes back with its data (after the replay;
    /// await [`wait_ready`](Self::wait_ready)); without, empty. A server started as a replica
    /// comes back a replica of the same master, even if a Sentinel promoted it meanwhile.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Kills the server, deletes everything in its data directory (the append-only file), and
    /// starts it again: an empty Redis on the same port, as after losing its disk.
    pub fn wipe_and_restart(&mut self) {
        self.kill();
        let data = self.data_dir();
        std::fs::remove_dir_all(&data).expect("wiping the Redis data directory");
        std::fs::create_dir_all(&data).expect("creating the Redis data directory");
        self.spawn();
    }

    /// SIGSTOP: the server hangs (connections open, no answers) until [`resume`](Self::resume).
    pub fn pause(&self) {
        signal(self.pid(), "STOP", "redis-server");
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        signal(self.pid(), "CONT", "redis-server");
    }

    fn spawn(&self) {
        let yes_no = |on: bool| if on { "yes" } else { "no" };
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "no",
            "--save",
            "",
            "--dir",
            &self.data_dir().to_string_lossy(),
            "--logfile",
            "",
            "--appendonly",
            yes_no(self.opts.appendonly),
            "--appendfsync",
            &self.opts.appendfsync,
            "--maxmemory-policy",
            &self.opts.maxmemory_policy,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(master) = self.opts.replicaof {
            args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
        }
        for (name, value) in &self.opts.extra {
            args.extend([format!("--{name}"), value.clone()]);
        }
        if let Some(bus) = self.bus_port {
            let conf = self.data_dir().join("nodes.conf");
            args.extend([
                "--cluster-port".into(),
                bus.to_string(),
                "--cluster-config-file".into(),
                conf.to_string_lossy().into_owned(),
            ]);
        }
        let child = spawn_logged("redis-server", &args, &self.log_path());
        *lock(&self.child) = Some(child);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        remove_own_dir(&self.root);
    }
}

/// A Redis Cluster owned by a test: `redis-server` nodes ([`RedisOptions::cluster`]) on free
/// ports of 127.0.0.1, the 16384 slots shared evenly by the primaries, each primary with its
/// replicas. Every node is killed and its directory removed when the cluster is dropped.
///
/// ```ignore
/// let cluster = RedisCluster::start(3, 1).await;
/// let client = seckill_schema::redis::client(&cluster.url()).await?;
/// let first = &cluster.primaries()[0];
/// let its_replica = &cluster.replicas_of(0)[0];
/// ```
pub struct RedisCluster {
    /// The primaries, then the replicas of the first primary, of the second, …
    nodes: Vec<RedisServer>,
    primaries: usize,
}

impl RedisCluster {
    /// [`start_with`](Self::start_with) every node on [`RedisOptions::default`].
    pub async fn start(primaries: usize, replicas_per_primary: usize) -> RedisCluster {
        RedisCluster::start_with(primaries, replicas_per_primary, |_| RedisOptions::default()).await
    }

    /// Starts `primaries` primaries and `replicas_per_primary` replicas of each, node `i` on
    /// `options(i).cluster()` (nodes `0..primaries` are the primaries, then come the replicas of
    /// primary 0, of primary 1, …), and makes them one cluster: `CLUSTER ADDSLOTSRANGE` on each
    /// primary, `CLUSTER MEET` from the first node, `CLUSTER REPLICATE` on each replica. (Not
    /// `redis-cli --cluster create`, which wants at least three primaries.) Returns once every
    /// node reports `cluster_state:ok` and every primary has its replicas online; fails the test
    /// if that takes more than 20 s a step.
    pub async fn start_with(
        primaries: usize,
        replicas_per_primary: usize,
        mut options: impl FnMut(usize) -> RedisOptions,
    ) -> RedisCluster {
        assert!(primaries > 0, "a cluster needs a primary");
        let count = primaries * (1 + replicas_per_primary);
        let mut nodes = Vec::with_capacity(count);
        for i in 0..count {
            nodes.push(RedisServer::start_ready(options(i).cluster()).await);
        }
        let cluster = RedisCluster { nodes, primaries };

        const SLOTS: usize = 16384;
        for (p, primary) in cluster.primaries().iter().enumerate() {
            let from = (p * SLOTS / primaries).to_string();
            let to = ((p + 1) * SLOTS / primaries - 1).to_string();
            cluster_ok(primary, &["CLUSTER", "ADDSLOTSRANGE", &from, &to]).await;
        }
        let first = &cluster.nodes[0];
        for node in &cluster.nodes[1..] {
            let port = node.port.to_string();
            let bus = node.bus_port.expect("a cluster node").to_string();
            cluster_ok(first, &["CLUSTER", "MEET", "127.0.0.1", &port, &bus]).await;
        }
        for (p, primary) in cluster.primaries().iter().enumerate() {
            let id = match command(primary.port, &["CLUSTER", "MYID"]).await {
                Some(Resp::Bulk(Some(id))) => id,
                other => panic!("CLUSTER MYID on port {}: {other:?}", primary.port),
            };
            for replica in cluster.replicas_of(p) {
                // A node may only follow a primary it has heard of (by gossip, after the MEETs).
                let what = format!("the node on port {} to follow its primary", replica.port);
                wait_for(&what, READY_DEADLINE, || {
                    let id = id.clone();
                    async move {
                        let reply = command(replica.port, &["CLUSTER", "REPLICATE", &id]).await;
                        matches!(reply, Some(Resp::Simple(ok)) if ok == "OK").then_some(())
                    }
                })
                .await;
            }
        }
        for node in &cluster.nodes {
            let what = format!("the node on port {} to report cluster_state:ok", node.port);
            wait_for(&what, READY_DEADLINE, || async move {
                let info = match command(node.port, &["CLUSTER", "INFO"]).await? {
                    Resp::Bulk(info) => info?,
                    _ => return None,
                };
                info.contains("cluster_state:ok").then_some(())
            })
            .await;
        }
        for primary in cluster.primaries() {
            primary.wait_replicas_online(replicas_per_primary).await;
        }
        cluster
    }

    /// `redis-cluster://127.0.0.1:<port>?node=127.0.0.1:<port>&…`, naming every primary: a
    /// `SECKILL_REDIS_URL` for the cluster.
    pub fn url(&self) -> String {
        let mut ports = self.primaries().iter().map(RedisServer::port);
        let first = ports.next().expect("a cluster has a primary");
        let nodes: Vec<String> = ports.map(|p| format!("node=127.0.0.1:{p}")).collect();
        if nodes.is_empty() {
            format!("redis-cluster://127.0.0.1:{first}")
        } else {
            format!("redis-cluster://127.0.0.1:{first}?{}", nodes.join("&"))
        }
    }

    /// Every node: the primaries, then the replicas of each in turn.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The primaries, in the order of the slots they serve.
    pub fn primaries(&self) -> &[RedisServer] {
        &self.nodes[..self.primaries]
    }

    /// The replicas of primary `p` (an index into [`primaries`](Self::primaries)).
    pub fn replicas_of(&self, p: usize) -> &[RedisServer] {
        assert!(p < self.primaries, "primary {p} of {}", self.primaries);
        let per = (self.nodes.len() - self.primaries) / self.primaries;
        let from = self.primaries + p * per;
        &self.nodes[from..from + per]
    }
}

/// Sends a command that must answer `+OK` to a cluster node; fails the test otherwise.
async fn cluster_ok(node: &RedisServer, args: &[&str]) {
    let reply = command(node.port, args).await;
    assert!(
        matches!(&reply, Some(Resp::Simple(ok)) if ok == "OK"),
        "{} on port {}: {reply:?}",
        args.join(" "),
        node.port
    );
}

/// A Redis Sentinel owned by a test, monitoring one master (quorum 1, down after 1 s, failover
/// timeout 5 s), on a free port of 127.0.0.1, with its config file in a temporary directory of its
/// own. Killed and its directory removed when dropped.
///
/// Sentinel learns a master's replicas from the master's `INFO`, which it asks at once and then
/// every 10 s: start the replicas (and let them sync) before the Sentinel, or wait for
/// [`replica_ports`](Self::replica_ports) to list them, before counting on a failover.
pub struct Sentinel {
    port: u16,
    root: PathBuf,
    master_name: String,
    child: Mutex<Option<Child>>,
}

impl Sentinel {
    /// Runs `redis-server <conf> --sentinel` (or `redis-sentinel <conf>` where only that exists),
    /// monitoring `127.0.0.1:<master_port>` as `master_name`.
    pub fn start(master_name: &str, master_port: u16) -> Sentinel {
        let root = own_temp_dir("sentinel");
        let port = free_port();
        let conf = root.join("sentinel.conf");
        let name = master_name;
        // Sentinel rewrites this file as it learns (replicas, other sentinels, failovers), so it
        // must be writable, which it is, in our own directory.
        std::fs::write(
            &conf,
            format!(
                "port {port}\n\
                 bind 127.0.0.1\n\
                 daemonize no\n\
                 logfile \"\"\n\
                 dir \"{dir}\"\n\
                 sentinel monitor {name} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 5000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir = root.display()
            ),
        )
        .expect("writing the sentinel config");
        let conf = conf.to_string_lossy().into_owned();
        let log = root.join("sentinel.log");
        // The redis-server binary is a Sentinel with `--sentinel`; Debian's `redis-sentinel`
        // package only adds a `redis-sentinel` name (and a system service) for the same binary.
        let child =
            match try_spawn_logged("redis-server", &[conf.clone(), "--sentinel".into()], &log) {
                Ok(child) => child,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    spawn_logged("redis-sentinel", &[conf], &log)
                }
                Err(e) => panic!("starting redis-server --sentinel: {e}"),
            };
        Sentinel {
            port,
            root,
            master_name: master_name.into(),
            child: Mutex::new(Some(child)),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// `redis-sentinel://127.0.0.1:<port>?sentinelServiceName=<master name>`: a
    /// `SECKILL_REDIS_URL` that follows the master through failovers.
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={}",
            self.port, self.master_name
        )
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("sentinel.log")
    }

    /// Waits until the Sentinel answers `PING` with `+PONG`; fails the test after 20 s, or at
    /// once, with its log, if the process has exited.
    pub async fn wait_ready(&self) {
        let what = format!("sentinel on port {} to answer PONG", self.port);
        wait_for(&what, READY_DEADLINE, || {
            if let Some(status) = exited(&self.child) {
                panic!(
                    "sentinel on port {} exited ({status}) before answering; its log:\n{}",
                    self.port,
                    log_tail(&self.log_path())
                );
            }
            let port = self.port;
            async move { ping(port).await.then_some(()) }
        })
        .await
    }

    /// The master's port as this Sentinel sees it now (`SENTINEL get-master-addr-by-name`); during
    /// a failover, the promoted replica's once it has been chosen. `None` if the Sentinel does not
    /// answer.
    pub async fn master_port(&self) -> Option<u16> {
        let reply = command(
            self.port,
            &["SENTINEL", "get-master-addr-by-name", &self.master_name],
        )
        .await?;
        match reply {
            Resp::Array(Some(items)) => match items.get(1) {
                Some(Resp::Bulk(Some(port))) => port.parse().ok(),
                _ => None,
            },
            _ => None,
        }
    }

    /// The ports of the replicas of the master that this Sentinel knows and does not consider
    /// down or disconnected (`SENTINEL replicas`): the candidates of a failover.
    pub async fn replica_ports(&self) -> Vec<u16> {
        let Some(Resp::Array(Some(replicas))) =
            command(self.port, &["SENTINEL", "replicas", &self.master_name]).await
        else {
            return Vec::new();
        };
        replicas
            .iter()
            .filter_map(|r| {
                let Resp::Array(Some(fields)) = r else {
                    return None;
                };
                let field = |name: &str| {
                    fields.chunks(2).find_map(|kv| match kv {
                        [Resp::Bulk(Some(k)), Resp::Bulk(Some(v))] if k == name => Some(v.clone()),
                        _ => None,
                    })
                };
                let flags = field("flags").unwrap_or_default();
                let down = flags
                    .split(',')
                    .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"));
                if down {
                    return None;
                }
                field("port")?.parse().ok()
            })
            .collect()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        kill_child(&mut self.child);
        remove_own_dir(&self.root);
    }
}

fn lock(child: &Mutex<Option<Child>>) -> std::sync::MutexGuard<'_, Option<Child>> {
    child
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The exit status if the process has exited; panics if there is no process (killed).
fn exited(child: &Mutex<Option<Child>>) -> Option<std::process::ExitStatus> {
    match lock(child).as_mut() {
        Some(c) => c.try_wait().ok().flatten(),
        None => panic!("waiting on a server that was killed and not restarted"),
    }
}

fn kill_child(child: &mut Mutex<Option<Child>>) {
    let slot = child
        .get_mut()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(mut c) = slot.take() {
        // SIGKILL (also ends a SIGSTOPped process), then reap it: once this returns, the port
        // is closed and the files are no longer written.
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Sends `SIG<sig>` with the `kill` command (the workspace forbids `unsafe`, so no `libc::kill`).
fn signal(pid: Option<u32>, sig: &str, what: &str) {
    let pid = pid.unwrap_or_else(|| panic!("SIG{sig} to a {what} that is not running"));
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap_or_else(|e| panic!("running kill -{sig} {pid}: {e}"));
    assert!(status.success(), "kill -{sig} {pid} failed: {status}");
}

/// A new, empty directory under the system's temporary directory.
fn own_temp_dir(kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "seckill-{kind}-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).expect("creating a temporary directory");
    dir
}

fn remove_own_dir(dir: &Path) {
    if std::env::var_os("SECKILL_KEEP_TEST_DATA").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn try_spawn_logged(program: &str, args: &[String], log: &Path) -> std::io::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
}

fn spawn_logged(program: &str, args: &[String], log: &Path) -> Child {
    try_spawn_logged(program, args, log)
        .unwrap_or_else(|e| panic!("starting {program} (scripts/services.sh installs Redis): {e}"))
}

/// The last few KiB of a log file, for a failure message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(4096);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

async fn ping(port: u16) -> bool {
    matches!(command(port, &["PING"]).await, Some(Resp::Simple(s)) if s == "PONG")
}

/// One reply of the Redis protocol (RESP2, what a connection speaks until `HELLO 3`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Resp>>),
}

/// Sends one command over a new TCP connection and reads its reply; `None` when the server does
/// not answer within 2 s (down, paused, or not Redis).
async fn command(port: u16, args: &[&str]) -> Option<Resp> {
    use std::fmt::Write as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        let _ = write!(request, "${}\r\n{a}\r\n", a.len());
    }
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((reply, _)) = parse_resp(&buf) {
                return Some(reply);
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

/// Parses one reply at the start of `buf`: the reply and its length in bytes, or `None` while it
/// is incomplete (or malformed).
fn parse_resp(buf: &[u8]) -> Option<(Resp, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(buf.get(1..end)?).ok()?;
    let after = end + 2;
    match buf[0] {
        b'+' => Some((Resp::Simple(line.into()), after)),
        b'-' => Some((Resp::Error(line.into()), after)),
        b':' => Some((Resp::Int(line.parse().ok()?), after)),
        b'$' => {
            let Ok(len) = usize::try_from(line.parse::<i64>().ok()?) else {
                return Some((Resp::Bulk(None), after));
            };
            let body = buf.get(after..after + len)?;
            if buf.get(after + len..after + len + 2)? != b"\r\n" {
                return None;
            }
            let text = String::from_utf8_lossy(body).into_owned();
            Some((Resp::Bulk(Some(text)), after + len + 2))
        }
        b'*' => {
            let Ok(count) = usize::try_from(line.parse::<i64>().ok()?) else {
                return Some((Resp::Array(None), after));
            };
            let mut items = Vec::with_capacity(count.min(1024));
            let mut at = after;
            for _ in 0..count {
                let (item, used) = parse_resp(buf.get(at..)?)?;
                items.push(item);
                at += used;
            }
            Some((Resp::Array(Some(items)), at))
        }
        _ => None,
    }
}

/// Waits until Redis holds every shard gene's state for `config`'s namespace (a running gateway
/// or workers process builds them from the database at start; see `crate::recovery`).
pub async fn wait_for_redis_state(config: &Config) {
    use fred::prelude::*;
    let redis = crate::redis::client(&config.redis_url)
        .await
        .expect("connecting to Redis");
    let keys = crate::Keys::new(&config.namespace);
    wait_for(
        "Redis to hold every gene's state",
        Duration::from_secs(30),
        || async {
            for (_, key) in keys.states() {
                let ready: Option<String> = redis.hget(key, "ready").await.ok()?;
                ready?;
            }
            Some(())
        },
    )
    .await;
    let _ = redis.quit().await;
}
