//! Redis processes of a test's own.
//!
//! Tests that kill, pause, wipe or fail over Redis must never do it to a shared server (the
//! machine's on 6379, the project's durable one on 6390). These helpers run real `redis-server`
//! processes owned by the test, alone, as a [`Sentinel`](crate::Sentinel)'s master or as a
//! [`RedisCluster`](crate::RedisCluster)'s nodes: each on a free port, in a temporary directory
//! of its own, killed and removed when dropped (set `SECKILL_KEEP_TEST_DATA` to keep the
//! directory). On 127.0.0.1, or on a [`Host`]'s address inside its network namespace
//! ([`RedisServer::start_in`]), for the tests that partition the network.

use crate::netns::Host;
use crate::process::{
    exited, kill_child, lock, log_tail, own_temp_dir, remove_own_dir, signal,
    try_spawn_command_logged,
};
use crate::resp::{Resp, command_at, ping_at};
use crate::wait::wait_for;
use fred::interfaces::ClientLike;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// How long [`RedisServer::wait_ready`] and [`Sentinel::wait_ready`](crate::Sentinel::wait_ready)
/// wait for `+PONG`.
pub(crate) const READY_DEADLINE: Duration = Duration::from_secs(20);

/// Ports no test helper ever hands out: the shared Redis, the project's Redis, Sentinel's default.
const RESERVED_PORTS: [u16; 3] = [6379, 6390, 26379];

/// `CONFIG SET <name> <value>` through `client`: a server's configuration changed at run time.
pub async fn config_set(client: &fred::prelude::Client, name: &str, value: &str) {
    let _: fred::types::Value = client
        .custom(fred::cmd!("CONFIG"), vec!["SET", name, value])
        .await
        .expect("CONFIG SET");
}

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
/// let across_the_network = RedisOptions::default().replicaof_at(master.ip(), master.port());
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
    /// The master's address for [`replicaof`](Self::replicaof) when it is not 127.0.0.1: a
    /// master in a [`Host`].
    pub replicaof_ip: Option<IpAddr>,
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
            replicaof_ip: None,
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

    /// `--replicaof <ip> <port>`: a replica of a master on another address, e.g. in a [`Host`].
    pub fn replicaof_at(mut self, master_ip: impl Into<IpAddr>, master_port: u16) -> Self {
        self.replicaof = Some(master_port);
        self.replicaof_ip = Some(master_ip.into());
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
    /// and its cluster config file (`nodes.conf`) in its data directory.
    /// [`RedisCluster`](crate::RedisCluster) makes a cluster of such nodes.
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

/// A `redis-server` process owned by a test, on a free port of 127.0.0.1 (or of a [`Host`]'s
/// address, see [`start_in`](Self::start_in)), with its data in a temporary directory of its own.
/// Killed (SIGKILL) and its directory removed when dropped.
///
/// [`start`](Self::start), [`restart`](Self::restart) and
/// [`wipe_and_restart`](Self::wipe_and_restart) only spawn the process: await
/// [`wait_ready`](Self::wait_ready) before using it.
pub struct RedisServer {
    port: u16,
    /// The cluster bus's port, for a cluster node ([`RedisOptions::cluster`]).
    bus_port: Option<u16>,
    /// The network namespace it runs in; `None`: the test's own, on 127.0.0.1.
    host: Option<Host>,
    /// The temporary directory: `data/` (Redis's `--dir`) and `redis.log`.
    root: PathBuf,
    opts: RedisOptions,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// Spawns `redis-server --port <free> --bind 127.0.0.1 --save "" --dir <own dir>` with `opts`.
    pub fn start(opts: RedisOptions) -> RedisServer {
        RedisServer::start_at(None, opts)
    }

    /// [`start`](Self::start) inside `host`'s namespace (through [`Host::command`]), listening on
    /// the host's address, where the test and the other hosts reach it, and on the host's own
    /// 127.0.0.1, where [`Host::command`] still reaches it while the host is isolated. Protected
    /// mode is off: clients come from other addresses.
    pub fn start_in(host: &Host, opts: RedisOptions) -> RedisServer {
        RedisServer::start_at(Some(host), opts)
    }

    fn start_at(host: Option<&Host>, opts: RedisOptions) -> RedisServer {
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
            host: host.cloned(),
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
        RedisServer::start_ready_at(None, opts).await
    }

    /// [`start_in`](Self::start_in), then [`wait_ready`](Self::wait_ready), as
    /// [`start_ready`](Self::start_ready) does.
    pub async fn start_ready_in(host: &Host, opts: RedisOptions) -> RedisServer {
        RedisServer::start_ready_at(Some(host), opts).await
    }

    async fn start_ready_at(host: Option<&Host>, opts: RedisOptions) -> RedisServer {
        const ATTEMPTS: usize = 5;
        for _ in 1..ATTEMPTS {
            let server = RedisServer::start_at(host, opts.clone());
            match server.answers().await {
                Ok(()) => return server,
                // Dropped: killed and its directory removed.
                Err(_) if log_tail(&server.log_path()).contains("Address already in use") => {}
                Err(status) => server.exited_before_answering(status),
            }
        }
        let server = RedisServer::start_at(host, opts);
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

    /// The address it listens on: 127.0.0.1, or its [`Host`]'s.
    pub fn ip(&self) -> IpAddr {
        match &self.host {
            Some(host) => host.ip().into(),
            None => Ipv4Addr::LOCALHOST.into(),
        }
    }

    /// [`ip`](Self::ip) and [`port`](Self::port).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip(), self.port)
    }

    /// The [`Host`] it runs in, if not in the test's own namespace.
    pub fn host(&self) -> Option<&Host> {
        self.host.as_ref()
    }

    /// `redis://<ip>:<port>`: `redis://127.0.0.1:<port>`, or on its host's address.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
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

    /// Waits until a replica acknowledges a write to this master: a `SET` then `WAIT 1` on one
    /// connection (`state=online` is not enough: a replica still loading its first copy
    /// acknowledges nothing), each `WAIT` half a second at most. Fails the test after `deadline`.
    pub async fn wait_replicated(&self, deadline: Duration) {
        use fred::prelude::*;
        let client = seckill_infra::redis::client(&self.url())
            .await
            .expect("a client of the master");
        wait_for("a replica to acknowledge a write", deadline, || {
            let client = client.clone();
            async move {
                let _: () = client
                    .set("testkit:replicated", "1", None, None, false)
                    .await
                    .ok()?;
                let acked: i64 = client.wait(1, 500).await.ok()?;
                (acked >= 1).then_some(())
            }
        })
        .await;
        let _ = client.quit().await;
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
        let what = format!("redis-server on {} to answer PONG", self.addr());
        wait_for(&what, READY_DEADLINE, || {
            let status = exited(&self.child);
            let addr = self.addr();
            async move {
                match status {
                    Some(status) => Some(Err(status)),
                    None => ping_at(addr).await.then_some(Ok(())),
                }
            }
        })
        .await
    }

    fn exited_before_answering(&self, status: std::process::ExitStatus) -> ! {
        panic!(
            "redis-server on {} exited ({status}) before answering; its log:\n{}",
            self.addr(),
            log_tail(&self.log_path())
        );
    }

    /// `INFO <section>`'s text, e.g. `"replication"`; `None` if the server does not answer
    /// within 2 s.
    pub async fn info(&self, section: &str) -> Option<String> {
        match command_at(self.addr(), &["INFO", section]).await? {
            Resp::Bulk(text) => text,
            _ => None,
        }
    }

    /// Waits until `INFO replication` lists at least `count` replicas `state=online` (their first
    /// copy loaded): a master's replicas, once started with [`RedisOptions::replicaof`] or
    /// `CLUSTER REPLICATE`. Fails the test after 20 s.
    pub async fn wait_replicas_online(&self, count: usize) {
        let what = format!(
            "{count} replica(s) of redis-server on {} to be online",
            self.addr()
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
        ping_at(self.addr()).await
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
        match &self.host {
            None => args.extend(["--bind".into(), "127.0.0.1".into()]),
            Some(host) => args.extend([
                "--bind".into(),
                host.ip().to_string(),
                "127.0.0.1".into(),
                "--protected-mode".into(),
                "no".into(),
            ]),
        }
        if let Some(master) = self.opts.replicaof {
            let master_ip = self.opts.replicaof_ip.unwrap_or(Ipv4Addr::LOCALHOST.into());
            args.extend([
                "--replicaof".into(),
                master_ip.to_string(),
                master.to_string(),
            ]);
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
        let mut command = match &self.host {
            Some(host) => host.command("redis-server"),
            None => Command::new("redis-server"),
        };
        command.args(&args);
        let child = try_spawn_command_logged(command, &self.log_path()).unwrap_or_else(|e| {
            panic!("starting redis-server (scripts/services.sh installs Redis): {e}")
        });
        *lock(&self.child) = Some(child);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        remove_own_dir(&self.root);
    }
}
