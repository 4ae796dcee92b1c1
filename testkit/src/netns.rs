//! Network partitions between a test's own processes, with Linux network namespaces.
//!
//! A [`Network`] is a private bridge in the root namespace on a random `10.R.S.0/24`; each
//! [`Host`] is a network namespace plugged into it by a veth pair, with an address of its own. The
//! root namespace (where the test itself runs) has `10.R.S.1` on the bridge, so the test reaches
//! every host directly:
//!
//! ```text
//!   test process (root namespace, 10.R.S.1 on skb<id>)
//!        │
//!   ─────┴──────── bridge skb<id> ─────┬──────────────────┐
//!        │ skv<id>2                    │ skv<id>3         │ …
//!   ┌────┴─────────────┐        ┌──────┴───────────┐
//!   │ sk-<id>-redis    │        │ sk-<id>-client   │
//!   │ eth0 10.R.S.2/24 │        │ eth0 10.R.S.3/24 │
//!   └──────────────────┘        └──────────────────┘
//! ```
//!
//! Two faults, each undone:
//!
//! - [`Network::cut`] / [`Network::heal`]: two hosts stop hearing each other, silently (packets
//!   dropped, no error sent back: callers see timeouts, as in a real partition, not "connection
//!   refused"); both still talk to everyone else, the test process included. Established
//!   connections hang and resume after the heal, TCP retransmitting.
//! - [`Host::isolate`] / [`Host::rejoin`]: the host's cable is pulled (its veth's bridge end goes
//!   down): it hears no one, **the test process included**. Its processes keep running and can
//!   still be reached from inside the host ([`Host::command`] on `127.0.0.1`). Callers see
//!   timeouts, or "No route to host" once ARP gives up on the address (seconds later), as on a
//!   real LAN.
//!
//! Everything is removed when the [`Network`] is dropped, also when the test panics: every
//! process left inside a host is killed (SIGKILL), then the namespaces, the veths and the bridge
//! are deleted. A test process that was killed outright leaves them behind; [`Network::new`]
//! sweeps those ([`Network::sweep_stale`]).
//!
//! The test process itself cannot be cut from one host alone, and what runs in it (a
//! [`ServerTask`](crate::ServerTask)'s gateway or workers) with it: to partition the project's
//! own processes from each other, run their binaries in hosts ([`Host::command`] with
//! [`env_vars`](crate::env_vars)). Hosts reach the test's namespace at `10.R.S.1` only, so not
//! the servers it runs on 127.0.0.1 (the machine's shared Redis, PostgreSQL, RabbitMQ), and
//! nothing beyond (no default route).
//!
//! Needs root (`CAP_NET_ADMIN`, `CAP_SYS_ADMIN`) and iproute2's `ip`, nothing else: no `tc`, no
//! iptables. (If the machine's iptables drops bridged traffic — Docker's `FORWARD` policy with
//! `net.bridge.bridge-nf-call-iptables=1` — hosts cannot reach each other.)
//!
//! ```ignore
//! let net = Network::new();
//! let (a, b) = (net.host("redis"), net.host("client"));
//! let redis = RedisServer::start_ready_in(&a, RedisOptions::volatile()).await;
//! net.cut(&a, &b);   // b's clients time out; the test still reaches redis.url()
//! net.heal(&a, &b);
//! ```

mod postgres;
mod rabbitmq;

pub use postgres::PostgresServer;
pub use rabbitmq::RabbitMqNode;

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Namespaces are `sk-<id>-<host>`, bridges `skb<id>`, the veths' root ends `skv<id><n>`, `<id>`
/// six hex digits: `skv` + 6 + 3 digits stays within the 15 characters of an interface name.
const NETNS_PREFIX: &str = "sk-";
const BRIDGE_PREFIX: &str = "skb";
const VETH_PREFIX: &str = "skv";
const ID_LEN: usize = 6;

/// One file per live network, named after its subnet (`10.R.S`): created with `O_EXCL`, it
/// reserves the subnet among concurrent test processes, and it names the owner (pid and start
/// time) so that [`Network::sweep_stale`] never touches a live test's network.
const MARKERS: &str = "/run/seckill-testkit-netns";

/// The priority of a cut's rules: they must come before the lookup of the `local` table, which
/// would otherwise deliver a packet to a local address before any rule could drop it. Each host
/// moves that lookup from its usual priority 0 (which no rule can precede) to [`LOCAL_PREF`].
const CUT_PREF: &str = "100";
const LOCAL_PREF: &str = "1000";

/// A private bridge with its hosts. Dropping it kills every process left in its hosts and removes
/// the namespaces, the veths and the bridge.
pub struct Network {
    id: String,
    /// `R` and `S` of `10.R.S.0/24`.
    subnet: [u8; 2],
    bridge: String,
    marker: PathBuf,
    hosts: Mutex<Vec<Host>>,
    /// The hosts cut from each other, by their addresses' last byte, the lower first.
    cuts: Mutex<BTreeSet<(u8, u8)>>,
}

/// A network namespace on a [`Network`]'s bridge. Cheap to clone; the [`Network`] owns the
/// namespace: it goes when the network is dropped, not when the last `Host` is.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

struct HostInner {
    network: String,
    name: String,
    netns: String,
    /// The veth's end in the root namespace, on the bridge: [`Host::isolate`] takes it down.
    veth: String,
    ip: Ipv4Addr,
}

impl Network {
    /// A bridge `skb<id>` on a random free `10.R.S.0/24`, the root namespace at `10.R.S.1`, no
    /// hosts yet. Sweeps what crashed runs left first ([`sweep_stale`](Self::sweep_stale)).
    /// Panics if the bridge cannot be made (not root, no `ip`).
    pub fn new() -> Network {
        Network::sweep_stale();
        std::fs::create_dir_all(MARKERS)
            .unwrap_or_else(|e| panic!("creating {MARKERS} (the kit needs root): {e}"));
        let routes = ipv4_routes();
        for _ in 0..200 {
            let subnet = [rand::random_range(16..=254u8), rand::random::<u8>()];
            if routes
                .iter()
                .any(|&(net, len)| overlaps(net, len, subnet_base(subnet), 24))
            {
                continue;
            }
            let id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
            let marker = Path::new(MARKERS).join(format!("10.{}.{}", subnet[0], subnet[1]));
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&marker);
            let mut file = match file {
                Ok(file) => file,
                // Another network holds this subnet.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("creating {}: {e}", marker.display()),
            };
            let me = std::process::id();
            let owner = format!("id={id}\npid={me}\nstart={}\n", start_time(me).unwrap_or(0));
            file.write_all(owner.as_bytes())
                .unwrap_or_else(|e| panic!("writing {}: {e}", marker.display()));
            drop(file);
            let bridge = format!("{BRIDGE_PREFIX}{id}");
            let made = ip_batch(
                None,
                &[
                    format!("link add {bridge} type bridge"),
                    format!("addr add {}/24 dev {bridge}", host_ip(subnet, 1)),
                    format!("link set {bridge} up"),
                ],
            );
            match made {
                Ok(()) => {
                    return Network {
                        id,
                        subnet,
                        bridge,
                        marker,
                        hosts: Mutex::new(Vec::new()),
                        cuts: Mutex::new(BTreeSet::new()),
                    };
                }
                Err(e) => {
                    let _ = ip(&["link", "del", &bridge]);
                    let _ = std::fs::remove_file(&marker);
                    // The id is taken (by a leftover the sweep had to leave): try another.
                    if !e.contains("File exists") {
                        panic!("creating the bridge {bridge} (the kit needs root): {e}");
                    }
                }
            }
        }
        panic!("no free 10.R.S.0/24 subnet found for a test network");
    }

    /// Adds a host: namespace `sk-<id>-<name>` with `lo` up and `eth0` at the next free address,
    /// plugged into the bridge. `name` is 1 to 32 of `[A-Za-z0-9_-]`, unique in the network.
    pub fn host(&self, name: &str) -> Host {
        assert!(
            (1..=32).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "host name {name:?}: 1 to 32 of [A-Za-z0-9_-]"
        );
        let mut hosts = lock(&self.hosts);
        assert!(
            hosts.iter().all(|h| h.name() != name),
            "the network already has a host {name:?}"
        );
        // .1 is the root namespace's; .255 is the broadcast address.
        let n = hosts.len() + 2;
        assert!(n < 255, "a test network holds at most 253 hosts");
        let n = n as u8;
        let host = Host {
            inner: Arc::new(HostInner {
                network: self.id.clone(),
                name: name.to_owned(),
                netns: format!("{NETNS_PREFIX}{}-{name}", self.id),
                veth: format!("{VETH_PREFIX}{}{n}", self.id),
                ip: host_ip(self.subnet, n),
            }),
        };
        let netns = host.netns();
        must(ip(&["netns", "add", netns]), "adding namespace", netns);
        // Listed before it is complete, so that a failure below still has it removed.
        hosts.push(host.clone());
        let veth = &host.inner.veth;
        must(
            ip_batch(
                None,
                &[
                    format!("link add {veth} type veth peer name eth0 netns {netns}"),
                    format!("link set {veth} master {} up", self.bridge),
                ],
            ),
            "plugging in",
            netns,
        );
        must(
            ip_batch(
                Some(netns),
                &[
                    "link set lo up".into(),
                    format!("addr add {}/24 dev eth0", host.ip()),
                    "link set eth0 up".into(),
                    // See CUT_PREF: the local table's lookup moves behind where cuts go.
                    format!("rule add pref {LOCAL_PREF} lookup local"),
                    "rule del pref 0".into(),
                ],
            ),
            "configuring",
            netns,
        );
        host
    }

    /// The hosts, in the order they were added.
    pub fn hosts(&self) -> Vec<Host> {
        lock(&self.hosts).clone()
    }

    /// The bridge's name, `skb<id>` (e.g. for `tcpdump -i`).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The root namespace's address on the bridge: where the test process's own connections to
    /// the hosts come from.
    pub fn test_ip(&self) -> Ipv4Addr {
        host_ip(self.subnet, 1)
    }

    /// `a` and `b` stop hearing each other: each namespace drops, on arrival, every packet from
    /// the other's address (`ip rule add pref 100 from <other> blackhole`, before the local
    /// table's lookup). Nothing answers, so connects and requests time out. Both still reach,
    /// and are reached by, every other host and the test process. Idempotent.
    ///
    /// (Not a blackhole *route* to the other's address: that fails the sender's `connect` at
    /// once with `EINVAL`, which no real partition does.)
    pub fn cut(&self, a: &Host, b: &Host) {
        let pair = self.pair(a, b);
        if lock(&self.cuts).insert(pair) {
            drop_from(a, b, "add");
            drop_from(b, a, "add");
        }
    }

    /// Undoes [`cut`](Self::cut): connections hanging across it resume once TCP retransmits.
    /// Idempotent.
    pub fn heal(&self, a: &Host, b: &Host) {
        let pair = self.pair(a, b);
        if lock(&self.cuts).remove(&pair) {
            drop_from(a, b, "del");
            drop_from(b, a, "del");
        }
    }

    /// Cuts every host of `side` from every host of `other`: a split of the network in two (the
    /// test process still reaches both sides).
    pub fn partition(&self, side: &[&Host], other: &[&Host]) {
        for a in side {
            for b in other {
                self.cut(a, b);
            }
        }
    }

    /// Heals every cut ([`cut`](Self::cut), [`partition`](Self::partition)); leaves isolated hosts
    /// isolated.
    pub fn heal_all(&self) {
        let cuts: Vec<(u8, u8)> = lock(&self.cuts).iter().copied().collect();
        let hosts = self.hosts();
        let by_last = |n: u8| {
            hosts
                .iter()
                .find(|h| h.ip().octets()[3] == n)
                .expect("a cut's hosts belong to the network")
        };
        for (a, b) in cuts {
            self.heal(by_last(a), by_last(b));
        }
    }

    fn pair(&self, a: &Host, b: &Host) -> (u8, u8) {
        for h in [a, b] {
            assert!(
                h.inner.network == self.id,
                "host {} is on another network",
                h.name()
            );
        }
        let (x, y) = (a.ip().octets()[3], b.ip().octets()[3]);
        assert_ne!(x, y, "cutting host {} from itself", a.name());
        (x.min(y), x.max(y))
    }

    /// Removes what test processes that died without dropping their [`Network`] left: the
    /// networks whose owner process (named in their marker file) is gone — killing whatever
    /// still runs in their namespaces, then deleting namespaces, veths and bridge — and, of this
    /// kit's naming only, namespaces without a marker in which nothing runs and bridges without a
    /// marker or namespace. A live test's network is never touched. [`Network::new`] calls it.
    pub fn sweep_stale() {
        // Objects first, markers second: a network whose objects are listed wrote its marker
        // before making them, so it cannot be mistaken for one without a marker.
        let namespaces: Vec<String> = run_ip(&["netns", "list"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| kit_id(n, NETNS_PREFIX).is_some())
            .map(str::to_owned)
            .collect();
        let links: Vec<String> = run_ip(&["-o", "link", "show"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .filter(|n| kit_id(n, BRIDGE_PREFIX).is_some() || kit_id(n, VETH_PREFIX).is_some())
            .collect();
        let mut live = HashSet::new();
        let mut dead = HashSet::new();
        let mut dead_markers = Vec::new();
        for entry in std::fs::read_dir(MARKERS).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                    .map(str::to_owned)
            };
            let (Some(id), Some(pid), Some(start)) = (field("id"), field("pid"), field("start"))
            else {
                // Being written by a network that is starting now; its objects, if any, were
                // not listed above.
                continue;
            };
            let alive = pid
                .parse::<u32>()
                .ok()
                .and_then(start_time)
                .is_some_and(|t| t.to_string() == start);
            if alive {
                live.insert(id);
            } else {
                dead.insert(id);
                dead_markers.push(entry.path());
            }
        }
        let mut kept_ids = HashSet::new();
        for ns in &namespaces {
            let id = kit_id(ns, NETNS_PREFIX).expect("filtered");
            if live.contains(id) {
                continue;
            }
            if dead.contains(id) {
                kill_processes(ns);
            } else if !netns_pids(ns).is_empty() {
                // No marker says whose it is: leave a namespace in use alone.
                kept_ids.insert(id.to_owned());
                continue;
            }
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("netns sweep: deleting namespace {ns}: {e}");
            }
        }
        for link in &links {
            let id = kit_id(link, BRIDGE_PREFIX)
                .or_else(|| kit_id(link, VETH_PREFIX))
                .expect("filtered");
            if live.contains(id) || kept_ids.contains(id) {
                continue;
            }
            // A veth may already be gone with its namespace.
            let _ = ip(&["link", "del", link]);
        }
        for marker in dead_markers {
            let _ = std::fs::remove_file(marker);
        }
    }
}

impl Default for Network {
    fn default() -> Self {
        Network::new()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // No panics here: a drop during a panic's unwinding that panicked would abort the tests.
        let hosts = std::mem::take(&mut *lock(&self.hosts));
        for host in &hosts {
            kill_processes(host.netns());
            if let Err(e) = ip(&["netns", "del", host.netns()]) {
                eprintln!("removing namespace {}: {e}", host.netns());
            }
            // Gone with the namespace's end unless a process still holds the namespace.
            let _ = ip(&["link", "del", &host.inner.veth]);
        }
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            eprintln!("removing bridge {}: {e}", self.bridge);
        }
        let _ = std::fs::remove_file(&self.marker);
    }
}

impl Host {
    /// The name given to [`Network::host`].
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The host's address on the network, which its servers listen on.
    pub fn ip(&self) -> Ipv4Addr {
        self.inner.ip
    }

    /// The namespace's name, for `ip netns exec` and `ip -n`.
    pub fn netns(&self) -> &str {
        &self.inner.netns
    }

    /// `ip netns exec <namespace> <program>`: add the arguments and run it. `ip` execs the program,
    /// so the child's pid is the program's (signals reach it directly). Like any `Command`, it
    /// inherits the test's stdio unless told otherwise: a program that leaves a process running
    /// in the background with `.output()`'s pipes keeps `.output()` waiting for it (redirect the
    /// background process's output).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", self.netns()]).arg(program);
        command
    }

    /// [`command`](Self::command) for tokio.
    pub fn tokio_command(&self, program: impl AsRef<OsStr>) -> tokio::process::Command {
        self.command(program).into()
    }

    /// Pulls the host's cable: the bridge's end of its veth goes down. The host hears no one, and
    /// no one hears it — other hosts and the test process alike; its processes keep running and
    /// answer on `127.0.0.1` from inside ([`command`](Self::command)). Idempotent.
    pub fn isolate(&self) {
        must(
            ip(&["link", "set", &self.inner.veth, "down"]),
            "isolating",
            self.netns(),
        );
    }

    /// Plugs the cable back in after [`isolate`](Self::isolate). Idempotent.
    pub fn rejoin(&self) {
        must(
            ip(&["link", "set", &self.inner.veth, "up"]),
            "rejoining",
            self.netns(),
        );
    }

    /// The pids of every process inside the host (`ip netns pids`).
    pub fn pids(&self) -> Vec<u32> {
        netns_pids(self.netns())
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Host({} {})", self.name(), self.ip())
    }
}

/// In `host`, drops (`add`) or stops dropping (`del`) what comes from `from`.
fn drop_from(host: &Host, from: &Host, op: &str) {
    let peer = format!("{}/32", from.ip());
    must(
        ip(&[
            "-n",
            host.netns(),
            "rule",
            op,
            "pref",
            CUT_PREF,
            "from",
            &peer,
            "blackhole",
        ]),
        "changing a cut in",
        host.netns(),
    );
}

fn subnet_base(subnet: [u8; 2]) -> Ipv4Addr {
    Ipv4Addr::new(10, subnet[0], subnet[1], 0)
}

fn host_ip(subnet: [u8; 2], n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, subnet[0], subnet[1], n)
}

/// Whether two prefixes share an address.
fn overlaps(a: Ipv4Addr, a_len: u32, b: Ipv4Addr, b_len: u32) -> bool {
    let len = a_len.min(b_len);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(a) & mask == u32::from(b) & mask
}

/// Every IPv4 destination in the root namespace's routing tables, but the default route: a test
/// network must not shadow one (the machine's own network, Docker's, another test's).
fn ipv4_routes() -> Vec<(Ipv4Addr, u32)> {
    const TYPES: [&str; 10] = [
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "blackhole",
        "unreachable",
        "prohibit",
        "throw",
        "nat",
        "anycast",
    ];
    run_ip(&["-4", "-o", "route", "show", "table", "all"])
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let dest = line
                .split_whitespace()
                .find(|w| !TYPES.contains(w))
                .filter(|w| *w != "default")?;
            let (addr, len) = dest.split_once('/').unwrap_or((dest, "32"));
            Some((addr.parse().ok()?, len.parse().ok()?))
        })
        .collect()
}

/// The `<id>` of a name of this kit's (`sk-<id>-<host>`, `skb<id>`, `skv<id><n>`), if it is one.
fn kit_id<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = name.strip_prefix(prefix)?;
    let id = rest.get(..ID_LEN)?;
    if !id
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    let tail = &rest[ID_LEN..];
    let fits = match prefix {
        NETNS_PREFIX => tail.len() > 1 && tail.starts_with('-'),
        BRIDGE_PREFIX => tail.is_empty(),
        _ => !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()),
    };
    fits.then_some(id)
}

/// A process's start time (field 22 of `/proc/<pid>/stat`, in clock ticks since boot): with the
/// pid, it names the process even after the pid is reused.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; what follows its last `)` is
    // field 3 onwards.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

fn netns_pids(netns: &str) -> Vec<u32> {
    run_ip(&["netns", "pids", netns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// SIGKILLs every process in the namespace until none is left (a process may fork meanwhile);
/// gives up after 5 s with a message.
fn kill_processes(netns: &str) {
    for _ in 0..250 {
        let pids = netns_pids(netns);
        if pids.is_empty() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(pids.iter().map(u32::to_string))
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("processes still running in namespace {netns} after 5 s of SIGKILL");
}

/// `ip <args>`: its stdout, or its stderr as the error.
fn run_ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run_ip(args).map(drop)
}

/// Several `ip` commands in one process (`ip [-n <netns>] -batch -`), in the root namespace or
/// `netns`; stops at the first that fails.
fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<(), String> {
    let mut command = Command::new("ip");
    if let Some(netns) = netns {
        command.args(["-n", netns]);
    }
    let mut child = command
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running ip: {e}"))?;
    let script = lines.join("\n") + "\n";
    let mut stdin = child.stdin.take().expect("piped");
    let written = stdin.write_all(script.as_bytes());
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running ip: {e}"))?;
    match (out.status.success(), written) {
        (true, Ok(())) => Ok(()),
        (_, written) => Err(format!(
            "ip -batch [{}]: {} {}",
            lines.join("; "),
            String::from_utf8_lossy(&out.stderr).trim(),
            written.err().map(|e| e.to_string()).unwrap_or_default()
        )),
    }
}

fn must(result: Result<(), String>, what: &str, netns: &str) {
    if let Err(e) = result {
        panic!("{what} {netns}: {e}");
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kit_names_are_recognised_and_nothing_else() {
        assert_eq!(kit_id("sk-0a1b2c-redis", NETNS_PREFIX), Some("0a1b2c"));
        assert_eq!(kit_id("sk-0a1b2c-", NETNS_PREFIX), None);
        assert_eq!(kit_id("sk-0A1B2C-redis", NETNS_PREFIX), None);
        assert_eq!(kit_id("sk-test-a", NETNS_PREFIX), None);
        assert_eq!(kit_id("skb0a1b2c", BRIDGE_PREFIX), Some("0a1b2c"));
        assert_eq!(kit_id("skb0a1b2cd", BRIDGE_PREFIX), None);
        assert_eq!(kit_id("skv0a1b2c12", VETH_PREFIX), Some("0a1b2c"));
        assert_eq!(kit_id("skv0a1b2c", VETH_PREFIX), None);
        assert_eq!(kit_id("skbtest01", BRIDGE_PREFIX), None);
    }

    #[test]
    fn prefixes_overlap_when_they_share_an_address() {
        let net = Ipv4Addr::new(10, 7, 8, 0);
        assert!(overlaps(Ipv4Addr::new(10, 0, 0, 0), 8, net, 24));
        assert!(overlaps(Ipv4Addr::new(10, 7, 8, 9), 32, net, 24));
        assert!(!overlaps(Ipv4Addr::new(10, 7, 9, 0), 24, net, 24));
        assert!(!overlaps(Ipv4Addr::new(192, 0, 2, 0), 24, net, 24));
    }

    #[test]
    fn start_time_names_this_process() {
        assert!(start_time(std::process::id()).is_some());
        assert_eq!(start_time(u32::MAX), None);
    }
}
