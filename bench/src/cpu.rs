//! What an order and a request cost in CPU, summed over every process of the pipeline: the
//! gateways, the workers, Redis, RabbitMQ, the database and a load balancer in front of the
//! gateways, each found by name in `/proc` (or, for the processes the bench started itself, by
//! pid) and read from `/proc/<pid>/stat` at the first request and again once every order is final
//! or awaits a person (paid, timed out, released): each order's whole life.
//!
//! Each process counts its own user + system time and that of its children that exited and were
//! waited for in the window (`cutime` + `cstime`): Redis's append-only-file rewrite, PostgreSQL's
//! autovacuum workers and the backends that close. Beside the pipeline's sum, the machine's own
//! total from `/proc/stat` over the same window (kernel threads, softirqs of the loopback, every
//! other process), and the bench's share of it (oha, the payment provider, its polling), so that
//! nothing hides. On a machine where every process shares the cores, this is what limits a sale,
//! and it holds on a noisy machine where requests per second do not.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

/// The pipeline's parts and the process names that make each up.
const PARTS: [(&str, &[&str]); 6] = [
    ("gateway", &["seckill-gateway"]),
    ("workers", &["seckill-workers"]),
    ("redis", &["redis-server"]),
    ("rabbitmq", &["beam.smp", "erl_child_setup", "inet_gethost"]),
    ("database", &["postgres", "mariadbd", "mysqld"]),
    ("haproxy", &["haproxy"]),
];

/// Processes by part (`"gateway"`, `"workers"`, `"haproxy"`, …): those a run started itself.
pub type Own = BTreeMap<&'static str, Vec<u32>>;

/// One process's CPU time, in clock ticks, from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcTicks {
    pub ppid: u32,
    /// `utime` + `stime`: its own.
    pub own: u64,
    /// `cutime` + `cstime`: its children's that exited and were waited for.
    pub children: u64,
}

impl ProcTicks {
    pub fn total(&self) -> u64 {
        self.own + self.children
    }
}

/// CPU time per part, in clock ticks, of the processes alive at the reading, with the machine's
/// total and the bench's own.
#[derive(Debug, Clone)]
pub struct Reading {
    at: Instant,
    ticks: BTreeMap<&'static str, BTreeMap<u32, ProcTicks>>,
    /// Busy ticks of every core, from `/proc/stat`.
    machine: Option<u64>,
    /// This process (the bench) and its waited-for children (oha).
    bench: u64,
    /// Every process by pid: the bench's database backends, and what else ran.
    all: BTreeMap<u32, (String, ProcTicks)>,
}

impl Default for Reading {
    fn default() -> Reading {
        Reading {
            at: Instant::now(),
            ticks: BTreeMap::new(),
            machine: None,
            bench: 0,
            all: BTreeMap::new(),
        }
    }
}

/// What a window is divided by.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Accepted orders.
    pub orders: u64,
    /// Requests fired at `POST /seckill`, sold out or not.
    pub requests: u64,
}

impl Reading {
    /// Every process of every part, found by name.
    pub fn now() -> Reading {
        Reading::now_of(&Own::new())
    }

    /// Like [`now`](Self::now), except that a part listed in `own` counts exactly those
    /// processes (a run's own gateways, say, and not another run's on the same machine).
    pub fn now_of(own: &Own) -> Reading {
        let mut reading = Reading {
            machine: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| machine_busy_ticks(&s)),
            bench: process_stat(Path::new("/proc/self")).map_or(0, |(_, t)| t.total()),
            ..Reading::default()
        };
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return reading;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Some((name, used)) = process_stat(&entry.path()) else {
                continue;
            };
            reading.all.insert(pid, (name.clone(), used));
            if let Some((part, _)) = PARTS
                .iter()
                .find(|(_, names)| names.contains(&name.as_str()))
                && own.get(part).is_none_or(|pids| pids.contains(&pid))
            {
                reading.ticks.entry(part).or_default().insert(pid, used);
            }
        }
        reading
    }

    /// What each part used since `before`, per accepted order and per request. A process that
    /// started since counts from zero. One that ended was reaped by its parent, whose children's
    /// time now holds the whole of its life: when that parent is of the same part, the ended
    /// process's time before the window is taken off again. The processes in `measuring` are left
    /// out: they serve the bench's own polling (its database backends), which is the instrument's
    /// cost, not the pipeline's, and is shown with the bench's.
    pub fn since(&self, before: &Reading, counts: Counts, measuring: &[u32]) -> CpuCost {
        let per_tick_ms = 1e3 / clock_ticks_per_second() as f64;
        let parts: BTreeMap<String, PartCost> = PARTS
            .iter()
            .map(|(part, _)| {
                let now = self.ticks.get(part).cloned().unwrap_or_default();
                let then = before.ticks.get(part).cloned().unwrap_or_default();
                let counted = |pid: &u32| !measuring.contains(pid);
                let grew = |pid: &u32, t: &ProcTicks| {
                    let was = then.get(pid).copied().unwrap_or_default();
                    (
                        t.own.saturating_sub(was.own),
                        t.children.saturating_sub(was.children),
                    )
                };
                let (own, children): (u64, u64) = now
                    .iter()
                    .filter(|(pid, _)| counted(pid))
                    .map(|(pid, t)| grew(pid, t))
                    .fold((0, 0), |(o, c), (a, b)| (o + a, c + b));
                // Reaped by a parent of this part: its time before the window is in the
                // parent's children's time now, and was not used in the window.
                let ended_before: u64 = then
                    .iter()
                    .filter(|(pid, t)| !now.contains_key(pid) && now.contains_key(&t.ppid))
                    .map(|(_, t)| t.total())
                    .sum();
                let children = children.saturating_sub(ended_before);
                let cpu_ms = (own + children) as f64 * per_tick_ms;
                let cost = PartCost {
                    processes: now.keys().filter(|pid| counted(pid)).count(),
                    cpu_ms,
                    children_ms: children as f64 * per_tick_ms,
                    us_per_order: per(cpu_ms * 1e3, counts.orders),
                    us_per_request: per(cpu_ms * 1e3, counts.requests),
                };
                ((*part).to_owned(), cost)
            })
            .collect();
        let total_ms: f64 = parts.values().map(|p| p.cpu_ms).sum();
        let backends: u64 = measuring
            .iter()
            .filter_map(|pid| {
                let now = self.all.get(pid)?.1.total();
                Some(now.saturating_sub(before.all.get(pid).map_or(0, |(_, t)| t.total())))
            })
            .sum();
        let counted: Vec<u32> = self
            .ticks
            .values()
            .flat_map(|p| p.keys().copied())
            .chain(measuring.iter().copied())
            .chain([std::process::id()])
            .collect();
        let others = self.others(before, &counted);
        let bench_ms = (self.bench.saturating_sub(before.bench) + backends) as f64 * per_tick_ms;
        let machine = self.machine.zip(before.machine).map(|(now, then)| {
            let cpu_ms = now.saturating_sub(then) as f64 * per_tick_ms;
            Machine {
                cpu_ms,
                cores: cores(),
                bench_ms,
                other_ms: cpu_ms - total_ms - bench_ms,
                others,
            }
        });
        CpuCost {
            orders: counts.orders,
            requests: counts.requests,
            seconds: self.at.saturating_duration_since(before.at).as_secs_f64(),
            whole_life: false,
            total_ms,
            total_us_per_order: per(total_ms * 1e3, counts.orders),
            total_us_per_request: per(total_ms * 1e3, counts.requests),
            parts,
            machine,
            to_awaiting_payment_us_per_order: None,
            inherited_messages: 0,
        }
    }

    /// The busiest processes outside `counted`, by name, with the ms they and their ended
    /// children used since `before` (a build's compilers show in cargo's).
    fn others(&self, before: &Reading, counted: &[u32]) -> Vec<(String, f64)> {
        let per_tick_ms = 1e3 / clock_ticks_per_second() as f64;
        let mut by_name: BTreeMap<&str, i64> = BTreeMap::new();
        for (pid, (name, t)) in &self.all {
            if !counted.contains(pid) {
                let was = before.all.get(pid).map_or(0, |(_, t)| t.total());
                *by_name.entry(name).or_default() += t.total().saturating_sub(was) as i64;
            }
        }
        // As for the parts: an ended process's time before the window is in its parent's now.
        for (pid, (_, t)) in &before.all {
            if !self.all.contains_key(pid)
                && let Some((parent, _)) = self.all.get(&t.ppid)
                && let Some(used) = by_name.get_mut(parent.as_str())
            {
                *used -= t.total() as i64;
            }
        }
        let mut others: Vec<(String, f64)> = by_name
            .into_iter()
            .filter(|(_, t)| *t > 0)
            .map(|(name, t)| (name.to_owned(), t as f64 * per_tick_ms))
            .collect();
        others.sort_by(|a, b| b.1.total_cmp(&a.1));
        others.truncate(5);
        others
    }
}

impl CpuCost {
    /// Nine in ten requests or more were accepted: the window's CPU divided by the orders is what
    /// an order costs, not the sold-out answers'.
    pub fn is_per_order(&self) -> bool {
        self.orders > 0 && self.orders as f64 >= 0.9 * self.requests as f64
    }
}

/// `us / n`, or 0 for nothing to divide by.
fn per(us: f64, n: u64) -> f64 {
    if n > 0 { us / n as f64 } else { 0.0 }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuCost {
    /// The accepted orders the time is divided by.
    pub orders: u64,
    /// The requests fired at `POST /seckill` (sold out or not) the time is also divided by.
    pub requests: u64,
    /// The window: from the first request to the reading.
    pub seconds: f64,
    /// The window ends with every order final or awaiting a person (paid, timed out, released);
    /// false when unpaid orders were still awaiting payment with their timeouts pending.
    pub whole_life: bool,
    pub parts: BTreeMap<String, PartCost>,
    /// Every part's CPU in the window.
    pub total_ms: f64,
    /// `total_ms` per accepted order: an order's own whole-life cost when nearly every request
    /// sold ([`CpuCost::is_per_order`]); in a sold-out sale it also carries the sold-out answers.
    pub total_us_per_order: f64,
    pub total_us_per_request: f64,
    /// The machine's CPU in the same window (`null`: `/proc/stat` unreadable).
    pub machine: Option<Machine>,
    /// The same parts from the first request until the last accepted order awaited payment only
    /// (the window this figure had before it covered the whole life).
    pub to_awaiting_payment_us_per_order: Option<f64>,
    /// Messages already waiting in the namespace's queues when the run began (an earlier run's
    /// delayed timeouts, say): the pipeline handles them inside this run's window, so its figure
    /// counts their work too.
    pub inherited_messages: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PartCost {
    /// Processes found at the end.
    pub processes: usize,
    /// Its processes' own time and their children's that ended in the window.
    pub cpu_ms: f64,
    /// Of which, children that ended in the window (an AOF rewrite, autovacuum workers, closed
    /// backends).
    pub children_ms: f64,
    pub us_per_order: f64,
    pub us_per_request: f64,
}

/// The whole machine over the window, from `/proc/stat`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Machine {
    /// user + nice + system + irq + softirq + steal of every core.
    pub cpu_ms: f64,
    pub cores: usize,
    /// The bench itself with oha (the load), the payment provider, its polling and its database
    /// backends: the instrument, not the pipeline.
    pub bench_ms: f64,
    /// Neither the pipeline nor the bench: kernel threads, interrupts, other processes.
    pub other_ms: f64,
    /// The busiest other processes by name, with ms: the CPU they and their ended children used.
    pub others: Vec<(String, f64)>,
}

/// The report's CPU section: each part per accepted order and per request over the window, the
/// machine's total beside their sum, and the earlier, shorter window's figure.
pub fn table(c: &CpuCost) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let window = if c.whole_life {
        "first request to every order final or awaiting a person"
    } else {
        "first request to the paid orders settled; unpaid orders still awaited their timeouts, \
         which fall outside"
    };
    let _ = writeln!(
        t,
        "CPU, {}: {} accepted orders of {} requests, {window} ({:.1} s)",
        if c.whole_life {
            "whole life"
        } else {
            "not the whole life"
        },
        c.orders,
        c.requests,
        c.seconds
    );
    // Dividing by the orders shows an order's own cost only when nearly every request sold: in a
    // sold-out sale it would charge the sold-out answers to the few orders.
    let per_order = |us: f64| {
        if c.is_per_order() {
            format!("{us:>7.1} µs")
        } else {
            format!("{:>10}", "-")
        }
    };
    let _ = writeln!(
        t,
        "  {:<9} {:>10} {:>12} {:>10} {:>10}",
        "part", "per order", "per request", "total", "children"
    );
    for (part, p) in &c.parts {
        let _ = writeln!(
            t,
            "  {part:<9} {} {:>9.2} µs {:>7.0} ms {:>7.0} ms  ({} processes)",
            per_order(p.us_per_order),
            p.us_per_request,
            p.cpu_ms,
            p.children_ms,
            p.processes
        );
    }
    let _ = writeln!(
        t,
        "  {:<9} {} {:>9.2} µs {:>7.0} ms",
        "total",
        per_order(c.total_us_per_order),
        c.total_us_per_request,
        c.total_ms
    );
    if !c.is_per_order() && c.orders > 0 {
        let _ = writeln!(
            t,
            "  per order: -, since most requests were answered sold out and their cost is not an \
             order's; a sale of --profile in-stock measures an order's whole life (docs/capacity.md)"
        );
    }
    if let Some(us) = c
        .to_awaiting_payment_us_per_order
        .filter(|_| c.is_per_order())
    {
        let _ = writeln!(
            t,
            "  until the last order awaited payment only (no payments, timeouts or releases): \
             {us:.1} µs per order"
        );
    }
    if let Some(m) = &c.machine {
        let busy = if m.cores > 0 && c.seconds > 0.0 {
            format!(
                ", {:.0} % of {} cores",
                100.0 * m.cpu_ms / (1e3 * c.seconds * m.cores as f64),
                m.cores
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            t,
            "  machine (/proc/stat) {:>7.0} ms{busy}\n    \
             the parts above    {:>7.0} ms\n    \
             the bench and oha  {:>7.0} ms  (the load, the payment provider, the polling: not \
             counted above)\n    \
             everything else    {:>7.0} ms  (kernel threads, interrupts, other processes)",
            m.cpu_ms, c.total_ms, m.bench_ms, m.other_ms
        );
        if !m.others.is_empty() {
            let _ = writeln!(
                t,
                "      busiest others: {}",
                m.others
                    .iter()
                    .map(|(name, ms)| format!("{name} {ms:.0} ms"))
                    .collect::<Vec<_>>()
                    .join(" · ")
            );
        }
    }
    if c.inherited_messages > 0 {
        let _ = writeln!(
            t,
            "  ! {} messages of earlier runs were waiting in this namespace's queues (delayed \
             timeouts, say); their work falls in this window: a fresh SECKILL_NAMESPACE gives a \
             clean figure",
            c.inherited_messages
        );
    }
    t
}

/// The busy ticks of every core from the `cpu` line of `/proc/stat`: user + nice + system + irq
/// + softirq + steal (guest time is already in user; idle and iowait are not busy).
pub fn machine_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    let busy = [0, 1, 2, 5, 6, 7];
    busy.iter().map(|&i| v.get(i).copied()).sum()
}

/// The cores `/proc/stat` lists (`cpu0`, `cpu1`, …).
fn cores() -> usize {
    std::fs::read_to_string("/proc/stat")
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
                .count()
        })
        .unwrap_or(0)
}

/// The process's name (`comm`) and its CPU time, from `/proc/<pid>/stat`.
fn process_stat(dir: &Path) -> Option<(String, ProcTicks)> {
    parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?)
}

/// `pid (comm) state ppid …` of `/proc/<pid>/stat`.
pub fn parse_stat(stat: &str) -> Option<(String, ProcTicks)> {
    // comm may hold spaces and parentheses; it ends at the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // After comm, from field 3 of the man page: ppid is field 4, utime, stime, cutime and cstime
    // fields 14 to 17.
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let ticks = ProcTicks {
        ppid: u32::try_from(field(4)?).ok()?,
        own: field(14)? + field(15)?,
        children: field(16)? + field(17)?,
    };
    // comm is cut at 15 bytes: `seckill-gateway` fits, `seckill-workers` too.
    Some((name, ticks))
}

/// `sysconf(_SC_CLK_TCK)`, asked of `getconf` once (100 on Linux unless configured otherwise);
/// `/proc/stat` counts in the same unit.
pub(crate) fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_read_and_its_work_counted() {
        let me = Path::new("/proc/self");
        let before = process_stat(me).expect("/proc/self/stat").1.own;
        // Spin until the time shows (a tick is 10 ms), within a deadline.
        let mut x = 0u64;
        let started = std::time::Instant::now();
        let after = loop {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let now = process_stat(me).expect("/proc/self/stat").1.own;
            if now > before {
                break now;
            }
            assert!(
                started.elapsed().as_secs() < 30,
                "no CPU time counted after 30 s of spinning"
            );
        };
        assert!(after > before);
        let cost = Reading::default().since(&Reading::default(), Counts::default(), &[]);
        assert_eq!(cost.parts.len(), PARTS.len());
        assert_eq!(cost.total_us_per_order, 0.0);
        assert!(cost.machine.is_none(), "no /proc/stat in either reading");
    }

    #[test]
    fn a_child_that_exited_counts_in_its_parents_time() {
        let me = Path::new("/proc/self");
        let (_, before) = process_stat(me).expect("/proc/self/stat");
        // Children that spin and exit, waited for, until their time shows, within a deadline.
        let started = std::time::Instant::now();
        let after = loop {
            let status = std::process::Command::new("sh")
                .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
                .status()
                .expect("sh");
            assert!(status.success());
            let (_, now) = process_stat(me).expect("/proc/self/stat");
            if now.children > before.children {
                break now;
            }
            assert!(
                started.elapsed().as_secs() < 30,
                "no children's time counted after 30 s of children spinning"
            );
        };
        assert_eq!(after.ppid, before.ppid);
        assert_eq!(after.total(), after.own + after.children);
    }

    #[test]
    fn stat_lines_are_parsed_by_field() {
        // comm with a space and a parenthesis; utime 7, stime 3, cutime 40, cstime 2.
        let stat = "4242 (redis-rdb bgsave) x) S 17 4242 4242 0 -1 4194560 4 0 0 0 7 3 40 2 20 0 \
                    1 0 900 0 0";
        let (name, t) = parse_stat(stat).expect("parsed");
        assert_eq!(name, "redis-rdb bgsave) x");
        assert_eq!(
            t,
            ProcTicks {
                ppid: 17,
                own: 10,
                children: 42
            }
        );
        assert_eq!(t.total(), 52);
        assert_eq!(parse_stat("4242 (short) S 1 2 3"), None);
    }

    #[test]
    fn the_machines_busy_time_leaves_idle_and_iowait_out() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let stat = "cpu  1000 20 300 99999 555 4 50 6 700 0\n\
                    cpu0 500 10 150 50000 300 2 25 3 350 0\n\
                    cpu1 500 10 150 49999 255 2 25 3 350 0\n\
                    intr 12345\n";
        assert_eq!(machine_busy_ticks(stat), Some(1000 + 20 + 300 + 4 + 50 + 6));
        assert_eq!(machine_busy_ticks("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(machine_busy_ticks("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn a_sold_out_sale_shows_no_cost_per_order() {
        let cost = |orders, requests| CpuCost {
            orders,
            requests,
            whole_life: true,
            total_ms: 2_000.0,
            total_us_per_order: 2e6 / orders as f64,
            total_us_per_request: 2e6 / requests as f64,
            ..CpuCost::default()
        };
        let sold_out = cost(1_000, 100_000);
        assert!(!sold_out.is_per_order());
        let t = table(&sold_out);
        assert!(!t.contains("2000.0 µs"), "{t}");
        assert!(t.contains("20.00 µs") && t.contains("per order: -"), "{t}");
        let in_stock = cost(20_000, 20_000);
        assert!(in_stock.is_per_order());
        let t = table(&in_stock);
        assert!(t.contains("  total       100.0 µs    100.00 µs"), "{t}");
        assert!(!t.contains("per order: -"), "{t}");
    }

    /// A reading of these processes by part, with the machine's and the bench's ticks.
    fn reading(
        procs: &[(&'static str, u32, ProcTicks)],
        machine: u64,
        bench: u64,
        all: &[(u32, &str, ProcTicks)],
    ) -> Reading {
        let mut ticks: BTreeMap<&'static str, BTreeMap<u32, ProcTicks>> = BTreeMap::new();
        for (part, pid, t) in procs {
            ticks.entry(part).or_default().insert(*pid, *t);
        }
        Reading {
            ticks,
            machine: Some(machine),
            bench,
            all: all
                .iter()
                .map(|(pid, name, t)| (*pid, ((*name).to_owned(), *t)))
                .collect(),
            ..Reading::default()
        }
    }

    #[test]
    fn ended_children_count_once_and_the_machine_shows_the_rest() {
        let t = |ppid, own, children| ProcTicks {
            ppid,
            own,
            children,
        };
        let before = reading(
            &[
                ("redis", 10, t(1, 100, 0)),
                // A PostgreSQL backend that closes in the window, 30 ticks used before it.
                ("database", 20, t(1, 500, 1000)),
                ("database", 21, t(20, 30, 0)),
                // The bench's own backend.
                ("database", 22, t(20, 9, 0)),
                ("gateway", 30, t(1, 200, 0)),
            ],
            10_000,
            50,
            &[
                (22, "postgres", t(20, 9, 0)),
                (40, "rustc", t(41, 100, 0)),
                (41, "cargo", t(1, 10, 0)),
            ],
        );
        let after = reading(
            &[
                // Its append-only-file rewrite (25 ticks) forked, exited and was waited for.
                ("redis", 10, t(1, 160, 25)),
                // The backend ended at 45 ticks (15 in the window); an autovacuum worker started
                // and ended in it (20).
                ("database", 20, t(1, 540, 1000 + 45 + 20)),
                ("database", 22, t(20, 19, 0)),
                ("gateway", 30, t(1, 400, 0)),
                // A gateway started in the window.
                ("gateway", 31, t(1, 40, 0)),
            ],
            11_000,
            130,
            &[
                // The compiler ended at 170 ticks (70 in the window), waited for by cargo.
                (22, "postgres", t(20, 19, 0)),
                (41, "cargo", t(1, 30, 170)),
                (42, "kworker/0:1", t(2, 5, 0)),
            ],
        );
        let cost = after.since(
            &before,
            Counts {
                orders: 10,
                requests: 1000,
            },
            &[22],
        );
        let ms = 1e3 / clock_ticks_per_second() as f64;
        let part = |name: &str| cost.parts[name].clone();
        assert_eq!(part("redis").cpu_ms, (60 + 25) as f64 * ms);
        assert_eq!(part("redis").children_ms, 25.0 * ms);
        assert_eq!(part("database").cpu_ms, (40 + 15 + 20) as f64 * ms);
        assert_eq!(part("database").children_ms, (15 + 20) as f64 * ms);
        assert_eq!(
            part("database").processes,
            1,
            "the bench's backend is not counted"
        );
        assert_eq!(part("gateway").cpu_ms, (200 + 40) as f64 * ms);
        assert_eq!(part("gateway").processes, 2);
        let total = (85 + 75 + 240) as f64 * ms;
        assert_eq!(cost.total_ms, total);
        assert_eq!(cost.total_us_per_order, total * 1e3 / 10.0);
        assert_eq!(cost.total_us_per_request, total * 1e3 / 1000.0);
        assert_eq!(part("gateway").us_per_request, 240.0 * ms * 1e3 / 1000.0);
        let machine = cost.machine.expect("both readings have /proc/stat");
        assert_eq!(machine.cpu_ms, 1000.0 * ms);
        // oha and the provider (80 ticks) and the bench's backend (10).
        assert_eq!(machine.bench_ms, 90.0 * ms);
        assert_eq!(machine.other_ms, (1000 - 400 - 90) as f64 * ms);
        assert_eq!(
            machine.others,
            [
                ("cargo".to_owned(), 90.0 * ms),
                ("kworker/0:1".to_owned(), 5.0 * ms)
            ],
            "busiest first, idle ones left out"
        );
    }
}
