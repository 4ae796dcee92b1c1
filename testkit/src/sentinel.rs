//! A Redis Sentinel of a test's own, monitoring one master, on 127.0.0.1 or inside a [`Host`].

use crate::netns::Host;
use crate::process::{
    exited, kill_child, log_tail, own_temp_dir, remove_own_dir, spawn_logged,
    try_spawn_command_logged, try_spawn_logged,
};
use crate::redis::{READY_DEADLINE, free_port};
use crate::resp::{Resp, command_at, ping_at};
use crate::wait::wait_for;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Child;
use std::sync::Mutex;

/// A Redis Sentinel owned by a test, monitoring one master (quorum 1, down after 1 s, failover
/// timeout 5 s), on a free port of 127.0.0.1, with its config file in a temporary directory of its
/// own. Killed and its directory removed when dropped.
///
/// Sentinel learns a master's replicas from the master's `INFO`, which it asks at once and then
/// every 10 s: start the replicas (and let them sync) before the Sentinel, or wait for
/// [`replica_ports`](Self::replica_ports) to list them, before counting on a failover.
pub struct Sentinel {
    port: u16,
    /// The network namespace it runs in; `None`: the test's own, on 127.0.0.1.
    host: Option<Host>,
    root: PathBuf,
    master_name: String,
    child: Mutex<Option<Child>>,
}

impl Sentinel {
    /// Runs `redis-server <conf> --sentinel` (or `redis-sentinel <conf>` where only that exists),
    /// monitoring `127.0.0.1:<master_port>` as `master_name`.
    pub fn start(master_name: &str, master_port: u16) -> Sentinel {
        Sentinel::start_at(None, master_name, Ipv4Addr::LOCALHOST.into(), master_port)
    }

    /// [`start`](Self::start) inside `host`'s namespace, on the host's address (and its own
    /// 127.0.0.1), monitoring the master at `master_ip:master_port`, e.g. a
    /// [`RedisServer`](crate::RedisServer) in another host. Sentinel learns the replicas' and the
    /// other Sentinels' addresses as the master and they report them, so Sentinels and replicas
    /// in other hosts work too.
    pub fn start_in(
        host: &Host,
        master_name: &str,
        master_ip: impl Into<IpAddr>,
        master_port: u16,
    ) -> Sentinel {
        Sentinel::start_at(Some(host), master_name, master_ip.into(), master_port)
    }

    fn start_at(
        host: Option<&Host>,
        master_name: &str,
        master_ip: IpAddr,
        master_port: u16,
    ) -> Sentinel {
        let root = own_temp_dir("sentinel");
        let port = free_port();
        let conf = root.join("sentinel.conf");
        let name = master_name;
        let bind = match host {
            None => "bind 127.0.0.1\n".to_owned(),
            // Clients and the other Sentinels come from other addresses.
            Some(host) => format!("bind {} 127.0.0.1\nprotected-mode no\n", host.ip()),
        };
        // Sentinel rewrites this file as it learns (replicas, other sentinels, failovers), so it
        // must be writable, which it is, in our own directory.
        std::fs::write(
            &conf,
            format!(
                "port {port}\n\
                 {bind}\
                 daemonize no\n\
                 logfile \"\"\n\
                 dir \"{dir}\"\n\
                 sentinel monitor {name} {master_ip} {master_port} 1\n\
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
        let child = match host {
            // Debian's redis-tools always has the redis-server binary; `ip netns exec` would not
            // report a missing one as NotFound anyway.
            Some(host) => {
                let mut command = host.command("redis-server");
                command.args([conf.as_str(), "--sentinel"]);
                try_spawn_command_logged(command, &log)
                    .unwrap_or_else(|e| panic!("starting redis-server --sentinel: {e}"))
            }
            None => {
                match try_spawn_logged("redis-server", &[conf.clone(), "--sentinel".into()], &log) {
                    Ok(child) => child,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        spawn_logged("redis-sentinel", &[conf], &log)
                    }
                    Err(e) => panic!("starting redis-server --sentinel: {e}"),
                }
            }
        };
        Sentinel {
            port,
            host: host.cloned(),
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

    /// The address it listens on: 127.0.0.1, or its [`Host`]'s.
    pub fn ip(&self) -> IpAddr {
        match &self.host {
            Some(host) => host.ip().into(),
            None => Ipv4Addr::LOCALHOST.into(),
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip(), self.port)
    }

    /// `redis-sentinel://<ip>:<port>?sentinelServiceName=<master name>`: a
    /// `SECKILL_REDIS_URL` that follows the master through failovers.
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://{}?sentinelServiceName={}",
            self.addr(),
            self.master_name
        )
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("sentinel.log")
    }

    /// Waits until the Sentinel answers `PING` with `+PONG`; fails the test after 20 s, or at
    /// once, with its log, if the process has exited.
    pub async fn wait_ready(&self) {
        let what = format!("sentinel on {} to answer PONG", self.addr());
        wait_for(&what, READY_DEADLINE, || {
            if let Some(status) = exited(&self.child) {
                panic!(
                    "sentinel on {} exited ({status}) before answering; its log:\n{}",
                    self.addr(),
                    log_tail(&self.log_path())
                );
            }
            let addr = self.addr();
            async move { ping_at(addr).await.then_some(()) }
        })
        .await
    }

    /// The master's port as this Sentinel sees it now (`SENTINEL get-master-addr-by-name`); during
    /// a failover, the promoted replica's once it has been chosen. `None` if the Sentinel does not
    /// answer.
    pub async fn master_port(&self) -> Option<u16> {
        self.master_addr().await.map(|a| a.port())
    }

    /// [`master_port`](Self::master_port) with the master's address: what tells a master in one
    /// [`Host`] from a replica promoted in another.
    pub async fn master_addr(&self) -> Option<SocketAddr> {
        let reply = command_at(
            self.addr(),
            &["SENTINEL", "get-master-addr-by-name", &self.master_name],
        )
        .await?;
        match reply {
            Resp::Array(Some(items)) => match (items.first(), items.get(1)) {
                (Some(Resp::Bulk(Some(ip))), Some(Resp::Bulk(Some(port)))) => {
                    Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// The ports of the replicas of the master that this Sentinel knows and does not consider
    /// down or disconnected (`SENTINEL replicas`): the candidates of a failover.
    pub async fn replica_ports(&self) -> Vec<u16> {
        let Some(Resp::Array(Some(replicas))) =
            command_at(self.addr(), &["SENTINEL", "replicas", &self.master_name]).await
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
