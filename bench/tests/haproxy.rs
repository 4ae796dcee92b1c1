//! Many gateways and workers behind a real HAProxy, configured from deploy/haproxy.cfg.
//!
//! - `seckill-bench flash-sale --gateways 3 --workers 2`, as an operator runs it: the bench starts
//!   the processes and HAProxy, drives the sale through HAProxy, audits, sums every process's CPU
//!   in its report, and stops everything it started.
//! - The same fleet started from the bench's library ([`Fleet`]), a sale through HAProxy with the
//!   history's recording client, exact (every request answered, the history's checks and the audit
//!   pass); then a burst during which one gateway is SIGKILLed: HAProxy takes it out, the buyers
//!   it cut off are the only ones without an answer, each explains at most one order, and
//!   everything else is exact. The per-user limit is 2, so a purchase the balancer sent twice would
//!   be two orders of one request, which the history's checker names.

mod common;

use seckill_bench::fleet::{Fleet, FleetOptions};
use seckill_bench::history::{self, Client, History, Outcome};
use seckill_schema::{ItemId, UserId};
use seckill_testkit::{Backend, TestEnv, env_vars};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const GATEWAYS: usize = 3;
const WORKERS: usize = 2;
const PRICE: i64 = 700;

/// One fleet at a time: two would share the machine's two cores.
static ONE_FLEET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fleet test's turn: the fleet lock held, its start, a fresh namespace whose unpaid orders
/// time out after 3 s, and an output folder for the fleet's files.
struct Turn {
    started: Instant,
    env: TestEnv,
    out: PathBuf,
    /// Last, so that it is dropped last: a failed test's namespace is cleaned up before the next
    /// fleet starts.
    _one: tokio::sync::MutexGuard<'static, ()>,
}

async fn turn() -> Turn {
    let _one = ONE_FLEET.lock().await;
    let started = Instant::now();
    let mut env = TestEnv::new(Backend::Postgres);
    env.config.payment_timeout = Duration::from_secs(3);
    let out = std::env::temp_dir().join(format!("seckill-haproxy-{}", env.config.namespace));
    std::fs::create_dir_all(&out).unwrap();
    Turn {
        started,
        env,
        out,
        _one,
    }
}

impl Turn {
    async fn end(mut self) {
        println!("took {:.1}s", self.started.elapsed().as_secs_f64());
        let _ = std::fs::remove_dir_all(&self.out);
        self.env.cleanup().await;
    }
}

/// The processes of this namespace still running here (gateways, workers, HAProxies).
fn left_running(namespace: &str) -> Vec<(String, u32)> {
    ["seckill-gateway", "seckill-workers", "haproxy"]
        .iter()
        .flat_map(|name| {
            seckill_bench::rss::find_processes(name)
                .into_iter()
                .filter(|pid| {
                    seckill_bench::rss::environ_var(*pid, "SECKILL_NAMESPACE").as_deref()
                        == Some(namespace)
                })
                .map(|pid| (name.to_string(), pid))
        })
        .collect()
}

async fn create_item(url: &str, config: &seckill_infra::Config, item: ItemId, stock: u64) {
    let item = common::new_item(item, "haproxy test", PRICE, stock, 2);
    common::create_item(url, config, item).await;
}

/// Sessions HAProxy sent to each gateway so far (`stot` of `show stat`).
async fn sessions(fleet: &Fleet) -> BTreeMap<String, u64> {
    let csv = fleet.runtime_api("show stat").await.unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap()[2..].split(',').collect();
    let col = |n: &str| header.iter().position(|c| *c == n).unwrap();
    let (px, sv, stot) = (col("pxname"), col("svname"), col("stot"));
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > stot && f[px] == "gateways" && f[sv].starts_with("gw"))
        .map(|f| (f[sv].to_owned(), f[stot].parse().unwrap_or(0)))
        .collect()
}

fn count(ops: &[history::Op], pred: impl Fn(&Outcome) -> bool) -> usize {
    ops.iter().filter(|op| pred(&op.outcome)).count()
}

async fn checked(history: &History, config: &seckill_infra::Config, item: ItemId) {
    history::wait_for_orders(history, config, item, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let checks = history::check(history, config, item).await.unwrap();
    common::print_checks(&checks);
    common::assert_checks_pass(&checks, history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_runs_a_sale_on_three_gateways_and_two_workers_behind_haproxy() {
    let t = turn().await;
    let c = t.env.config.clone();
    common::built_binaries();
    let args = [
        "--gateways",
        "3",
        "--workers",
        "2",
        "--stock",
        "100",
        "--requests",
        "3000",
        "--connections",
        "48",
        "--pay-ratio",
        "0.5",
    ];
    let report = common::run_flash_sale(&env_vars(&c), &args, &t.out).await;
    assert_eq!(
        report["load"]["status_codes"]["202"], 100,
        "{}",
        report["load"]
    );
    let answered: u64 = report["load"]["status_codes"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(answered, 3000, "every request answered through HAProxy");
    // Its CPU: every process it started, and HAProxy.
    let cpu = &report["cpu"];
    let processes = |part: &str| cpu["parts"][part]["processes"].as_u64().unwrap_or(0);
    assert_eq!(
        (
            processes("gateway"),
            processes("workers"),
            processes("haproxy")
        ),
        (3, 2, 1),
        "{cpu}"
    );
    println!("the bench's CPU per order: {cpu:#}");
    let config = std::fs::read_to_string(t.out.join("haproxy.cfg")).unwrap();
    assert_eq!(config.matches("\n    server gw").count(), 3, "{config}");
    for g in 1..=3 {
        let log = std::fs::read_to_string(t.out.join(format!("gateway-{g}.log"))).unwrap();
        assert!(!log.contains("panicked"), "gateway-{g}: {log}");
    }
    // It stopped everything it started.
    assert_eq!(left_running(&c.namespace), []);
    t.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_burst_behind_haproxy_cuts_off_only_its_own_buyers() {
    let t = turn().await;
    let config = t.env.config.clone();
    let mut fleet = Fleet::start(&FleetOptions {
        gateways: GATEWAYS,
        workers: WORKERS,
        binaries: Some(common::built_binaries()),
        out: t.out.clone(),
        env: env_vars(&config)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    })
    .await
    .unwrap();
    let url = fleet.url();
    println!(
        "fleet up in {:.1}s: HAProxy at {url}, gateways {:?}",
        t.started.elapsed().as_secs_f64(),
        fleet.gateways.iter().map(|g| g.addr).collect::<Vec<_>>()
    );

    // 1. All gateways up: 300 buyers at once for 200 units, each answered, exactly.
    let item = ItemId(31);
    create_item(&url, &config, item, 200).await;
    let history = History::new();
    let client = Client::new(&history, &config, &url);
    let before = sessions(&fleet).await;
    let buys = (1..=300).map(|u| {
        let client = client.clone();
        async move { client.buy(UserId(u), item, 1, None).await }
    });
    futures_util::future::join_all(buys).await;
    let ops = history.ops();
    let after = sessions(&fleet).await;
    let spread: BTreeMap<&String, u64> = after
        .iter()
        .map(|(gw, n)| (gw, n - before.get(gw).copied().unwrap_or(0)))
        .collect();
    println!(
        "all up: {} accepted, {} sold out; HAProxy sessions per gateway {spread:?}",
        count(&ops, |o| matches!(o, Outcome::Accepted(_))),
        count(&ops, |o| matches!(o, Outcome::SoldOut))
    );
    assert_eq!(count(&ops, |o| matches!(o, Outcome::Accepted(_))), 200);
    assert_eq!(count(&ops, |o| matches!(o, Outcome::SoldOut)), 100);
    assert!(
        spread.values().all(|n| *n > 0),
        "every gateway served: {spread:?}"
    );
    checked(&history, &config, item).await;

    // 2. A burst of 900 buyers at once for 600 units, gateway 2 SIGKILLed while it is in flight,
    //    then 200 more once HAProxy has taken it out.
    let item = ItemId(32);
    create_item(&url, &config, item, 600).await;
    let history = History::new();
    let client = Client::new(&history, &config, &url).with_timeout(Duration::from_secs(8));
    let burst = {
        let client = client.clone();
        tokio::spawn(async move {
            let buys = (1..=900).map(|u| {
                let client = client.clone();
                async move { client.buy(UserId(u), item, 1, None).await }
            });
            futures_util::future::join_all(buys).await
        })
    };
    // Until the gateways have answered some of the burst.
    let t0 = Instant::now();
    while history
        .ops()
        .iter()
        .filter(|op| !matches!(op.outcome, Outcome::Indeterminate))
        .count()
        < 100
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the burst does not move"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed_at = history.now_ms();
    fleet.kill_gateway(1);
    let kill = Instant::now();
    let down = loop {
        let states = fleet.servers().await.unwrap();
        let gw2 = states.iter().find(|s| s.name == "gw2").unwrap();
        if gw2.status.starts_with("DOWN") || gw2.status.starts_with("MAINT") {
            break kill.elapsed();
        }
        assert!(
            kill.elapsed() < Duration::from_secs(10),
            "HAProxy still has gw2 as {}",
            gw2.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let down_at = history.now_ms();
    burst.await.unwrap();
    let late = (901..=1100).map(|u| {
        let client = client.clone();
        async move { client.buy(UserId(u), item, 1, None).await }
    });
    futures_util::future::join_all(late).await;
    let settle = client.settle(Duration::from_secs(30)).await;
    let ops = history.ops();
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for op in &ops {
        let key = match &op.outcome {
            Outcome::Accepted(_) => "202".to_owned(),
            Outcome::OutcomeUnknown(_) => "503 outcome_unknown".to_owned(),
            other => other.to_string(),
        };
        *answers.entry(key).or_default() += 1;
    }
    let cut_off: Vec<&history::Op> = ops.iter().filter(|op| op.outcome.cut_off()).collect();
    let last_cut_off = cut_off
        .iter()
        .map(|op| op.span.invoked_ms as i64 - killed_at as i64)
        .max();
    println!(
        "gateway 2 SIGKILLed at +{killed_at} ms into the burst; HAProxy had it DOWN after {:.0} \
         ms; answers {answers:?}; {} cut off (the last sent {last_cut_off:?} ms after the kill); \
         {} outcome_unknown settled",
        down.as_secs_f64() * 1000.0,
        cut_off.len(),
        settle.settled
    );
    let mut notes: BTreeMap<String, usize> = BTreeMap::new();
    for op in &cut_off {
        let note = op.note.clone().unwrap_or_default();
        *notes.entry(note.chars().take(160).collect()).or_default() += 1;
    }
    println!("the cut-off requests' errors: {notes:#?}");
    // HAProxy's word on them: its log line for each purchase not answered 202 or 409, by server
    // and termination state (e.g. `SH--`: the server aborted before its headers; `SD--`: during the
    // body), with the retries it made (the `+N` of redispatched connections is in the counts).
    let log = std::fs::read_to_string(&fleet.haproxy.log).unwrap_or_default();
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("POST /seckill")) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = fields.iter().position(|f| f.starts_with("gateways/")) else {
            continue;
        };
        let (status, term) = (fields.get(at + 2), fields.get(at + 6));
        if let (Some(status), Some(term)) = (status, term)
            && !["202", "409"].contains(status)
        {
            *states
                .entry(format!("{} {status} {term}", fields[at]))
                .or_default() += 1;
        }
    }
    println!(
        "HAProxy's log of the purchases not answered 202 or 409 (server, status, termination state): {states:?}"
    );
    // Only requests in flight when the gateway died lost their answer; none sent after HAProxy
    // took it out did, and every one of the late wave was answered.
    for op in &cut_off {
        assert!(
            op.span.invoked_ms <= down_at,
            "{} was cut off after gw2 was down",
            op.describe()
        );
    }
    assert!(
        ops.iter()
            .filter(|op| op.user.0 > 900)
            .all(|op| !op.outcome.cut_off()),
        "the wave after gw2 went down is answered"
    );
    assert_eq!(settle.unsettled, 0);
    checked(&history, &config, item).await;
    let accepted = history::accepted(&ops, item);
    println!(
        "audit told: {} answered, {} cut off",
        accepted.answered, accepted.cut_off
    );

    let trouble = fleet.stop().await;
    assert_eq!(trouble, ["gateway-2 had been killed"], "{trouble:?}");
    assert_eq!(left_running(&config.namespace), []);
    t.end().await;
}
