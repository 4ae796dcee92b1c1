//! What an order costs in CPU, summed over every process of the pipeline: the gateways, the
//! workers, Redis, RabbitMQ, the database and a load balancer in front of the gateways, each found
//! by name in `/proc` (or, for the processes the bench started itself, by pid) and read from
//! `/proc/<pid>/stat` (user + system time) at the first request and once the accepted orders have
//! drained. On a machine where every process shares the cores, this is what limits a sale, and it
//! holds on a noisy machine where requests per second do not.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

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

/// CPU time per part, in clock ticks, of the processes alive at the reading.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    ticks: BTreeMap<&'static str, BTreeMap<u32, u64>>,
}

impl Reading {
    /// Every process of every part, found by name.
    pub fn now() -> Reading {
        Reading::now_of(&Own::new())
    }

    /// Like [`now`](Self::now), except that a part listed in `own` counts exactly those
    /// processes (a run's own gateways, say, and not another run's on the same machine).
    pub fn now_of(own: &Own) -> Reading {
        let mut ticks: BTreeMap<&'static str, BTreeMap<u32, u64>> = BTreeMap::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Reading::default();
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Some((name, used)) = process_ticks(&entry.path()) else {
                continue;
            };
            if let Some((part, _)) = PARTS
                .iter()
                .find(|(_, names)| names.contains(&name.as_str()))
                && own.get(part).is_none_or(|pids| pids.contains(&pid))
            {
                ticks.entry(part).or_default().insert(pid, used);
            }
        }
        Reading { ticks }
    }

    /// What each part used since `before`, per accepted order. A process that started since
    /// counts from zero; one that ended is lost (connections are pooled, so few do). The
    /// processes in `measuring` are left out: they serve the bench's own polling (its database
    /// backends), which is the instrument's cost, not the pipeline's.
    pub fn since(&self, before: &Reading, orders: u64, measuring: &[u32]) -> CpuCost {
        let per_tick_us = 1e6 / clock_ticks_per_second() as f64;
        let parts: BTreeMap<String, PartCost> = PARTS
            .iter()
            .map(|(part, _)| {
                let now = self.ticks.get(part).cloned().unwrap_or_default();
                let then = before.ticks.get(part).cloned().unwrap_or_default();
                let used: u64 = now
                    .iter()
                    .filter(|(pid, _)| !measuring.contains(pid))
                    .map(|(pid, t)| t.saturating_sub(then.get(pid).copied().unwrap_or(0)))
                    .sum();
                let cpu_us = used as f64 * per_tick_us;
                let cost = PartCost {
                    processes: now.keys().filter(|pid| !measuring.contains(pid)).count(),
                    cpu_ms: cpu_us / 1000.0,
                    us_per_order: if orders > 0 {
                        cpu_us / orders as f64
                    } else {
                        0.0
                    },
                };
                ((*part).to_owned(), cost)
            })
            .collect();
        CpuCost {
            orders,
            total_us_per_order: parts.values().map(|p| p.us_per_order).sum(),
            parts,
            inherited_messages: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuCost {
    /// The accepted orders the time is divided by.
    pub orders: u64,
    pub parts: BTreeMap<String, PartCost>,
    pub total_us_per_order: f64,
    /// Messages already waiting in the namespace's queues when the run began (an earlier run's
    /// delayed timeouts, say): the pipeline handles them inside this run's window, so its figure
    /// counts their work too.
    pub inherited_messages: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartCost {
    /// Processes found at the end.
    pub processes: usize,
    pub cpu_ms: f64,
    pub us_per_order: f64,
}

/// The process's name (`comm`) and its user + system time in ticks, from `/proc/<pid>/stat`.
fn process_ticks(dir: &Path) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // `pid (comm) state ...`: comm may hold spaces and parentheses; it ends at the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // After comm: state is field 3 of the man page; utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // comm is cut at 15 bytes: `seckill-gateway` fits, `seckill-workers` too.
    Some((name, utime + stime))
}

/// `sysconf(_SC_CLK_TCK)`, asked of `getconf` once (100 on Linux unless configured otherwise).
fn clock_ticks_per_second() -> u64 {
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
        let (_, before) = process_ticks(me).expect("/proc/self/stat");
        // Spin until the time shows (a tick is 10 ms), within a deadline.
        let mut x = 0u64;
        let started = std::time::Instant::now();
        let after = loop {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let (_, now) = process_ticks(me).expect("/proc/self/stat");
            if now > before {
                break now;
            }
            assert!(
                started.elapsed().as_secs() < 30,
                "no CPU time counted after 30 s of spinning"
            );
        };
        assert!(after > before);
        let cost = Reading::default().since(&Reading::default(), 10, &[]);
        assert_eq!(cost.parts.len(), PARTS.len());
        assert_eq!(cost.total_us_per_order, 0.0);
    }
}
