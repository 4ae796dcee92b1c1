//! `SECKILL_REDIS_DURABILITY`: what must be true of an accepted order before its `202`, and whether
//! Redis can give it. Every process reads Redis's own configuration (on every primary of a
//! cluster) at start, every few seconds and in `/readyz`, and is not ready while Redis cannot give
//! what the mode asks or may evict keys.
//!
//! The rules are a pure function of what Redis reported ([`problems`]), so they are tested without
//! a server; [`check`] only reads, and [`DurabilityWatch`] keeps the latest answer, logs when it
//! changes and exports it as metrics.

use crate::lifecycle::{Every, Shutdown};
use fred::prelude::*;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What must be true of an accepted order before the gateway answers `202`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Durability {
    /// On disk in Redis's append-only file (`appendonly yes`, `appendfsync always`): survives a
    /// Redis crash or a power cut.
    #[default]
    Fsync,
    /// Also acknowledged by at least one replica (`WAIT`): survives the loss of the master and a
    /// failover.
    Replica,
    /// In Redis's memory only, for throwaway demos: a Redis crash loses accepted orders.
    None,
}

impl Durability {
    pub const ALL: [Durability; 3] = [Durability::Fsync, Durability::Replica, Durability::None];

    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Replica => "replica",
            Durability::None => "none",
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected fsync, replica or none")]
pub struct ParseDurabilityError;

impl FromStr for Durability {
    type Err = ParseDurabilityError;

    fn from_str(s: &str) -> Result<Durability, ParseDurabilityError> {
        Durability::ALL
            .into_iter()
            .find(|d| d.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or(ParseDurabilityError)
    }
}

/// What one Redis server says about itself, and what in it falls short of the mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisReport {
    pub appendonly: bool,
    pub appendfsync: String,
    pub maxmemory_policy: String,
    /// Replicas whose line in `INFO replication` says `state=online`; one still syncing cannot
    /// acknowledge a write yet.
    pub connected_replicas: u32,
    /// `master` or `slave`, as `INFO replication` says.
    pub role: String,
    /// Clear sentences naming the server, empty when this server gives what the mode asks.
    pub problems: Vec<String>,
}

impl RedisReport {
    /// Judges what `server` reported against `mode` (see [`problems`]).
    pub fn new(server: &str, mode: Durability, settings: RedisSettings) -> RedisReport {
        let problems = problems(server, mode, &settings);
        RedisReport {
            appendonly: settings.appendonly,
            appendfsync: settings.appendfsync,
            maxmemory_policy: settings.maxmemory_policy,
            connected_replicas: settings.connected_replicas,
            role: settings.role,
            problems,
        }
    }
}

/// The settings of one Redis server that durability depends on, as read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub appendonly: bool,
    pub appendfsync: String,
    pub maxmemory_policy: String,
    pub role: String,
    /// Replicas that are `state=online`.
    pub connected_replicas: u32,
    /// `min-replicas-to-write`: a master with fewer online replicas refuses writes.
    pub min_replicas_to_write: u32,
}

/// The rules, without Redis: why `server`, configured as `settings`, cannot give `mode`.
pub fn problems(server: &str, mode: Durability, settings: &RedisSettings) -> Vec<String> {
    let mut out = Vec::new();
    if settings.role != "master" {
        out.push(format!(
            "Redis {server} is a replica (role {}), not a master: point SECKILL_REDIS_URL at the \
             master",
            settings.role
        ));
    }
    if !settings.maxmemory_policy.eq_ignore_ascii_case("noeviction") {
        out.push(format!(
            "Redis {server} may evict keys (maxmemory-policy {}); set it to noeviction",
            settings.maxmemory_policy
        ));
    }
    match mode {
        Durability::Fsync => {
            if !settings.appendonly {
                out.push(format!(
                    "Redis {server} keeps no append-only file (appendonly no), so a crash loses \
                     accepted orders; set appendonly yes and appendfsync always, or choose \
                     another SECKILL_REDIS_DURABILITY"
                ));
            } else if !settings.appendfsync.eq_ignore_ascii_case("always") {
                out.push(format!(
                    "Redis {server} syncs its append-only file only with appendfsync {}, so a \
                     power cut can lose the last accepted orders; set appendfsync always",
                    settings.appendfsync
                ));
            }
        }
        Durability::Replica => {
            if settings.connected_replicas == 0 {
                out.push(format!(
                    "Redis {server} has no online replica, so no accepted order can be confirmed \
                     by WAIT; start a replica of it, or choose another SECKILL_REDIS_DURABILITY"
                ));
            }
            // A master cut off from its replicas (paused, partitioned) that a failover replaced
            // must refuse writes when it comes back, or purchases in its socket sell there and
            // reach the broker through its relay while the new master never has them.
            if settings.min_replicas_to_write == 0 {
                out.push(format!(
                    "Redis {server} accepts writes with no replica (min-replicas-to-write 0), so \
                     a master a failover replaced goes on selling when it comes back; set \
                     min-replicas-to-write 1"
                ));
            }
        }
        Durability::None => {}
    }
    out
}

/// Reads `role` and the number of replicas that are `state=online` from `INFO replication`.
pub fn parse_replication(info: &str) -> (String, u32) {
    let mut role = String::new();
    let mut online = 0;
    for line in info.lines().map(str::trim) {
        if let Some(r) = line.strip_prefix("role:") {
            role = r.to_owned();
        } else if let Some((name, fields)) = line.split_once(':') {
            let is_replica_line = name
                .strip_prefix("slave")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if is_replica_line && fields.split(',').any(|f| f == "state=online") {
                online += 1;
            }
        }
    }
    (role, online)
}

/// What every Redis server behind the client reported, judged against the mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurabilityStatus {
    pub mode: Durability,
    /// One entry per server (every primary of a cluster), named `host:port`.
    pub nodes: Vec<(String, RedisReport)>,
    /// True when every server gives what `mode` asks.
    pub ok: bool,
    /// Every problem of every server, or why Redis could not be read.
    pub reasons: Vec<String>,
}

impl DurabilityStatus {
    pub fn from_nodes(mode: Durability, nodes: Vec<(String, RedisReport)>) -> DurabilityStatus {
        let mut reasons: Vec<String> = nodes
            .iter()
            .flat_map(|(_, r)| r.problems.iter().cloned())
            .collect();
        if nodes.is_empty() {
            reasons.push("no Redis server is known to check".to_owned());
        }
        DurabilityStatus {
            mode,
            ok: reasons.is_empty(),
            nodes,
            reasons,
        }
    }

    /// Redis did not answer: nothing can be promised.
    pub fn unreadable(mode: Durability, error: &Error) -> DurabilityStatus {
        DurabilityStatus {
            mode,
            nodes: Vec::new(),
            ok: false,
            reasons: vec![format!("could not read Redis's configuration: {error}")],
        }
    }
}

async fn config_value<C: ClientLike>(client: &C, name: &'static str) -> Result<String, Error> {
    // `CONFIG GET` answers `[name, value]` (RESP2) or `{name: value}` (RESP3): both read as a map.
    let mut map: std::collections::HashMap<String, String> = client
        .custom(fred::cmd!("CONFIG"), vec!["GET", name])
        .await?;
    map.remove(name).ok_or_else(|| {
        Error::new(
            ErrorKind::Protocol,
            format!("CONFIG GET {name} returned nothing"),
        )
    })
}

async fn read_settings<C: ClientLike>(client: &C) -> Result<RedisSettings, Error> {
    let appendonly = config_value(client, "appendonly").await?;
    let appendfsync = config_value(client, "appendfsync").await?;
    let maxmemory_policy = config_value(client, "maxmemory-policy").await?;
    let info: String = client
        .custom(fred::cmd!("INFO"), vec!["replication"])
        .await?;
    let (role, connected_replicas) = parse_replication(&info);
    let min_replicas_to_write = config_value(client, "min-replicas-to-write")
        .await?
        .parse()
        .unwrap_or(0);
    Ok(RedisSettings {
        appendonly: appendonly.eq_ignore_ascii_case("yes"),
        appendfsync,
        maxmemory_policy,
        role,
        connected_replicas,
        min_replicas_to_write,
    })
}

fn server_name(client: &Client) -> String {
    client
        .active_connections()
        .into_iter()
        .next()
        .map(|s| s.to_string())
        .unwrap_or_else(|| match &client.client_config().server {
            ServerConfig::Centralized { server } => server.to_string(),
            _ => "master".to_owned(),
        })
}

/// Reads what the Redis server (or every primary of the cluster) behind `client` is configured to
/// do, and judges it against `mode`. An error means Redis could not be read at all.
pub async fn check(client: &Client, mode: Durability) -> Result<DurabilityStatus, Error> {
    let mut nodes = Vec::new();
    if client.is_clustered() {
        let primaries = client
            .cached_cluster_state()
            .map(|s| s.unique_primary_nodes())
            .unwrap_or_default();
        for server in primaries {
            let node = client.with_options(&Options {
                cluster_node: Some(server.clone()),
                ..Default::default()
            });
            let name = server.to_string();
            let settings = read_settings(&node).await?;
            nodes.push((name.clone(), RedisReport::new(&name, mode, settings)));
        }
    } else {
        let settings = read_settings(client).await?;
        // Named after the read, so a Sentinel client names the master it actually asked.
        let name = server_name(client);
        nodes.push((name.clone(), RedisReport::new(&name, mode, settings)));
    }
    Ok(DurabilityStatus::from_nodes(mode, nodes))
}

fn gauge01(v: bool) -> f64 {
    if v { 1.0 } else { 0.0 }
}

/// Exports the mode and what Redis reported as gauges.
pub fn record_metrics(status: &DurabilityStatus) {
    for m in Durability::ALL {
        metrics::gauge!("seckill_redis_durability_mode", "mode" => m.as_str())
            .set(gauge01(m == status.mode));
    }
    metrics::gauge!("seckill_redis_durability_ok").set(gauge01(status.ok));
    for (server, r) in &status.nodes {
        let s = server.clone();
        metrics::gauge!("seckill_redis_appendonly", "server" => s.clone())
            .set(gauge01(r.appendonly));
        metrics::gauge!("seckill_redis_appendfsync_always", "server" => s.clone())
            .set(gauge01(r.appendfsync.eq_ignore_ascii_case("always")));
        metrics::gauge!("seckill_redis_noeviction", "server" => s.clone()).set(gauge01(
            r.maxmemory_policy.eq_ignore_ascii_case("noeviction"),
        ));
        metrics::gauge!("seckill_redis_connected_replicas", "server" => s)
            .set(f64::from(r.connected_replicas));
    }
}

/// Keeps the latest [`DurabilityStatus`] of a process, re-read every few seconds and on demand.
#[derive(Clone)]
pub struct DurabilityWatch {
    client: Client,
    mode: Durability,
    latest: Arc<Mutex<Option<DurabilityStatus>>>,
    /// `latest`'s verdict, read on the hot path without a lock.
    ok: Arc<std::sync::atomic::AtomicBool>,
}

/// How often a process re-reads Redis's configuration while it falls short of the mode.
const RECHECK_WHILE_BAD: Duration = Duration::from_millis(500);

/// How often a process re-reads Redis's configuration in production: a Redis switched to
/// `appendfsync everysec`, `appendonly no` or an evicting policy at run time stops the sale within
/// about this long.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

impl DurabilityWatch {
    /// Checks at once and then every `every` until the stop is asked; every
    /// [`RECHECK_WHILE_BAD`] while Redis falls short.
    pub fn spawn(
        client: Client,
        mode: Durability,
        every: Duration,
        stop: Shutdown,
    ) -> DurabilityWatch {
        let watch = DurabilityWatch {
            client,
            mode,
            latest: Arc::new(Mutex::new(None)),
            ok: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let w = watch.clone();
        tokio::spawn(async move {
            // Ticks at the shorter period; a tick while Redis gives what the mode asks checks
            // only once `every` has passed since the last check. While Redis falls short, it
            // looks again soon: purchases are refused until it does not.
            let mut ticks = Every::now(every.min(RECHECK_WHILE_BAD), stop);
            let mut last: Option<(tokio::time::Instant, bool)> = None;
            while ticks.tick().await {
                if let Some((at, true)) = last
                    && at.elapsed() + Duration::from_millis(1) < every
                {
                    continue;
                }
                let ok = w.check_now().await.ok;
                last = Some((tokio::time::Instant::now(), ok));
            }
        });
        watch
    }

    pub fn mode(&self) -> Durability {
        self.mode
    }

    /// Whether the latest check found Redis giving what the mode asks (false before the first).
    pub fn is_ok(&self) -> bool {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The latest status, `None` before the first check has finished.
    pub fn current(&self) -> Option<DurabilityStatus> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads Redis's configuration now (as `/readyz` must), records it and returns it.
    pub async fn check_now(&self) -> DurabilityStatus {
        let status = match check(&self.client, self.mode).await {
            Ok(s) => s,
            Err(e) => DurabilityStatus::unreadable(self.mode, &e),
        };
        record_metrics(&status);
        self.ok
            .store(status.ok, std::sync::atomic::Ordering::Relaxed);
        let previous = self
            .latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(status.clone());
        log_change(previous.as_ref(), &status);
        status
    }
}

/// Logs a change of state once, where it is noticed, rather than on every check.
fn log_change(previous: Option<&DurabilityStatus>, now: &DurabilityStatus) {
    if previous.is_some_and(|p| p.ok == now.ok && p.reasons == now.reasons) {
        return;
    }
    if now.ok {
        tracing::info!(
            mode = %now.mode,
            "Redis gives what SECKILL_REDIS_DURABILITY={} asks",
            now.mode
        );
    } else {
        tracing::warn!(
            mode = %now.mode,
            reasons = %now.reasons.join("; "),
            "Redis cannot give what SECKILL_REDIS_DURABILITY={} asks: not ready",
            now.mode
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A master that never evicts, and refuses writes without a replica.
    fn settings(appendonly: bool, appendfsync: &str, replicas: u32) -> RedisSettings {
        RedisSettings {
            appendonly,
            appendfsync: appendfsync.into(),
            maxmemory_policy: "noeviction".into(),
            role: "master".into(),
            connected_replicas: replicas,
            min_replicas_to_write: 1,
        }
    }

    /// The one problem of `mode` against `server` set as `s`.
    #[track_caller]
    fn the_problem(server: &str, mode: Durability, s: &RedisSettings) -> String {
        let mut p = problems(server, mode, s);
        assert_eq!(p.len(), 1, "{p:?}");
        p.remove(0)
    }

    #[test]
    fn modes_parse_case_insensitively() {
        assert_eq!("fsync".parse(), Ok(Durability::Fsync));
        assert_eq!("REPLICA".parse(), Ok(Durability::Replica));
        assert_eq!(" None ".parse(), Ok(Durability::None));
        assert_eq!("always".parse::<Durability>(), Err(ParseDurabilityError));
        assert_eq!("".parse::<Durability>(), Err(ParseDurabilityError));
        for d in Durability::ALL {
            assert_eq!(d.to_string().parse(), Ok(d));
        }
        assert_eq!(Durability::default(), Durability::Fsync);
    }

    #[test]
    fn fsync_needs_an_append_only_file_synced_on_every_write() {
        let s = "127.0.0.1:6390";
        let fsync = Durability::Fsync;
        assert!(problems(s, fsync, &settings(true, "always", 0)).is_empty());
        let p = the_problem(s, fsync, &settings(false, "everysec", 1));
        assert!(p.contains("appendonly no") && p.contains(s), "{p}");
        let p = the_problem(s, fsync, &settings(true, "everysec", 1));
        assert!(
            p.contains("appendfsync everysec") && p.contains("always"),
            "{p}"
        );
    }

    #[test]
    fn replica_needs_an_online_replica_and_nothing_on_disk() {
        let s = "10.0.0.1:6379";
        assert!(problems(s, Durability::Replica, &settings(false, "no", 1)).is_empty());
        let p = the_problem(s, Durability::Replica, &settings(true, "always", 0));
        assert!(p.contains("no online replica") && p.contains(s), "{p}");
        let mut writes_alone = settings(false, "no", 1);
        writes_alone.min_replicas_to_write = 0;
        let p = the_problem(s, Durability::Replica, &writes_alone);
        assert!(p.contains("min-replicas-to-write 0"), "{p}");
    }

    #[test]
    fn none_only_forbids_eviction() {
        let s = "r:1";
        assert!(problems(s, Durability::None, &settings(false, "no", 0)).is_empty());
    }

    #[test]
    fn eviction_is_a_problem_in_every_mode() {
        let mut evicting = settings(true, "always", 1);
        evicting.maxmemory_policy = "allkeys-lru".into();
        for mode in Durability::ALL {
            let p = problems("127.0.0.1:6390", mode, &evicting);
            assert_eq!(
                p,
                vec![
                    "Redis 127.0.0.1:6390 may evict keys (maxmemory-policy allkeys-lru); set it \
                     to noeviction"
                        .to_owned()
                ],
                "{mode}"
            );
        }
    }

    #[test]
    fn a_replica_is_not_a_master() {
        let mut s = settings(true, "always", 0);
        s.role = "slave".into();
        let p = the_problem("r:1", Durability::None, &s);
        assert!(p.contains("role slave"), "{p}");
    }

    #[test]
    fn only_online_replicas_count() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:3\r\n\
                    slave0:ip=127.0.0.1,port=6380,state=online,offset=42,lag=0\r\n\
                    slave1:ip=127.0.0.1,port=6381,state=wait_bgsave,offset=0,lag=0\r\n\
                    slave2:ip=127.0.0.1,port=6382,state=online,offset=42,lag=1\r\n\
                    master_failover_state:no-failover\r\nslave_read_repl_offset:1\r\n";
        assert_eq!(parse_replication(info), ("master".to_owned(), 2));
        let replica = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\n\
                       connected_slaves:0\r\n";
        assert_eq!(parse_replication(replica), ("slave".to_owned(), 0));
    }

    #[test]
    fn the_status_gathers_every_nodes_problems() {
        let good = RedisReport::new("a:1", Durability::Fsync, settings(true, "always", 0));
        let bad = RedisReport::new("b:2", Durability::Fsync, settings(false, "always", 0));
        let ok =
            DurabilityStatus::from_nodes(Durability::Fsync, vec![("a:1".into(), good.clone())]);
        assert!(ok.ok && ok.reasons.is_empty());
        let not = DurabilityStatus::from_nodes(
            Durability::Fsync,
            vec![("a:1".into(), good), ("b:2".into(), bad)],
        );
        assert!(!not.ok);
        assert_eq!(not.reasons.len(), 1);
        assert!(not.reasons[0].contains("b:2"));
        assert!(!DurabilityStatus::from_nodes(Durability::None, Vec::new()).ok);
    }
}
