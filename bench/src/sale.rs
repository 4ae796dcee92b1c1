//! One whole flash sale against a running gateway and workers: create an item, fire tickets at
//! `POST /seckill` with oha, wait for the pipeline to drain, pay a share of the orders through the
//! webhook, wait for the rest to time out, and audit.

use crate::audit::{self, Accepted, Snapshot};
use crate::baseline;
use crate::http::HttpClient;
use crate::oha::{self, Body, Load};
use crate::provider::{self, Faults, PayOptions};
use crate::report::{Drain, Report, Sample};
use crate::rss::{self, Rss};
use anyhow::{Context, ensure};
use fred::prelude::*;
use http::StatusCode;
use rand::Rng;
use sea_orm::{DatabaseConnection, EntityTrait};
use seckill_infra::Config;
use seckill_infra::auth::Tickets;
use seckill_infra::broker::Topology;
use seckill_schema::entity::items;
use seckill_schema::snowflake::now_ms;
use seckill_schema::{ItemId, Keys, Kind, OrderStatus, UserId};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the bench's tickets are good for: the whole run, however slow.
const TICKET_LIFETIME_SECS: i64 = 3600;
const POLL_EVERY: Duration = Duration::from_millis(100);
/// How long paid orders get to show as paid, on top of any payment timeout waited for.
const SETTLE_SLACK: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct SaleOptions {
    /// Base URL of the gateway.
    pub gateway: String,
    pub stock: i64,
    pub requests: u64,
    pub connections: u64,
    /// Share of the requests that are repeat attempts by buyers who already tried.
    pub repeat_ratio: f64,
    pub per_user_limit: i32,
    pub price_cents: i64,
    pub pay_ratio: f64,
    pub faults: Faults,
    pub drain_timeout: Duration,
    /// Wait for unpaid orders to time out before the audit.
    pub wait_for_timeouts: bool,
    pub baseline: bool,
    /// With the baseline, also measure the sale's path alone (the workers paused).
    pub alone: Option<Alone>,
    pub gateway_pid: Option<u32>,
    /// The processes the run started itself (`--gateways`): their parts' CPU counts exactly
    /// these, not every process of that name on the machine.
    pub own: crate::cpu::Own,
    /// The item's Redis shards (1: unsharded).
    pub shards: u8,
    pub out: PathBuf,
}

pub async fn flash_sale(config: &Config, opts: &SaleOptions) -> anyhow::Result<Report> {
    oha::prepare(&opts.out).await?;
    let http = HttpClient::default();
    let ready = http.get(&format!("{}/readyz", opts.gateway)).await;
    ensure!(
        matches!(ready, Ok((StatusCode::OK, _))),
        "the gateway at {} is not ready: {ready:?}",
        opts.gateway
    );
    let item = create_item(&http, config, opts).await?;
    eprintln!("created item {item} with a stock of {}", opts.stock);
    let bodies = opts.out.join("bodies.jsonl");
    let buyers = write_bodies(&bodies, &Tickets::new(&config.ticket_secret), item, opts)?;
    // Before the in-stock path alone, whose own delayed timeouts either fire before the sale (it
    // waits for them) or long after it.
    let inherited = inherited_messages(config).await?;
    let baseline = if opts.baseline {
        let mut b = baseline::run(
            &config.redis_url,
            opts.requests,
            opts.connections,
            Some(&bodies),
            &opts.out,
        )
        .await?;
        match opts.alone {
            Some(Alone::InStock) => in_stock_alone(&http, config, opts, &mut b).await?,
            Some(Alone::SoldOut) => sold_out_alone(&http, config, opts, &bodies, &mut b).await?,
            None => {}
        }
        Some(b)
    } else {
        None
    };

    let gateway_pid = opts.gateway_pid.or_else(rss::find_gateway);
    let sampler = gateway_pid.map(rss::Sampler::start);
    let mut watch = Watch::new(config, item, opts.stock).await?;
    let output = opts.out.join("oha.json");
    let load = Load {
        url: &format!("{}/seckill", opts.gateway),
        requests: opts.requests,
        connections: opts.connections,
        body: Body::Lines(&bodies),
        tui: std::io::stdout().is_terminal(),
        output: &output,
    };
    let shards = crate::shards::Probe::start(config, item, opts.shards).await?;
    let cpu_before = crate::cpu::Reading::now_of(&opts.own);
    let load = watch.during(oha::run(&load)).await?;
    let peak_kib = match sampler {
        Some(s) => Some(s.stop().await),
        None => None,
    };
    let accepted = load.count(202);
    ensure!(
        accepted > 0 || opts.stock == 0,
        "no purchase was accepted (answers {:?}): do the bench and the gateway share \
         SECKILL_TICKET_SECRET?",
        load.status_codes
    );
    let drained = watch
        .until("drain", opts.drain_timeout, |s| {
            s.stored >= accepted && s.in_flight() == 0
        })
        .await?;
    // From the first request to the last accepted order awaiting payment: the pipeline alone,
    // beside the whole life's figure below.
    let counts = crate::cpu::Counts {
        orders: accepted,
        requests: opts.requests,
    };
    let to_awaiting_payment = crate::cpu::Reading::now_of(&opts.own)
        .since(
            &cpu_before,
            counts,
            &crate::db::own_backends(&watch.db).await,
        )
        .total_us_per_order;
    let shards = shards.finish(&watch.db, accepted).await?;
    let drain = Drain::new(
        watch.stored,
        drained,
        crate::db::order_span(&watch.db, item).await?,
    );

    let payments = provider::pay(&PayOptions {
        item: Some(item),
        ratio: opts.pay_ratio,
        faults: opts.faults,
        ..PayOptions::new(config, &opts.gateway)
    })
    .await?;
    let paid = payments.paid_orders().count() as u64;
    let wait_for_timeouts = opts.wait_for_timeouts;
    let settle_deadline = if wait_for_timeouts {
        config.payment_timeout + SETTLE_SLACK
    } else {
        SETTLE_SLACK
    };
    let settled = watch
        .until("settle", settle_deadline, |s| {
            s.in_flight() == 0
                && s.count(OrderStatus::Paid) + s.count(OrderStatus::RefundRequired) >= paid
                && (!wait_for_timeouts || s.count(OrderStatus::AwaitingPayment) == 0)
                && s.redis_remaining == s.db_available
        })
        .await?;
    // Each order's whole life: from the first request until every order is paid, timed out with
    // its units released, or waits on a person.
    let mut cpu = crate::cpu::Reading::now_of(&opts.own).since(
        &cpu_before,
        counts,
        &crate::db::own_backends(&watch.db).await,
    );
    cpu.whole_life = settled && wait_for_timeouts;
    cpu.to_awaiting_payment_us_per_order = Some(to_awaiting_payment);
    cpu.inherited_messages = inherited;
    let timeline = watch.close().await;

    let snapshot = Snapshot::load(config, item).await?;
    let mut checks = snapshot.checks(
        Accepted {
            answered: accepted,
            cut_off: load.unanswered(),
        },
        config.payment_timeout,
        now_ms() as i64,
    );
    checks.push(audit::callbacks_reflected(&snapshot.orders, &payments));
    checks.sort_by_key(|c| c.invariant);
    let mut end_states = BTreeMap::new();
    for o in &snapshot.orders {
        *end_states.entry(o.status.clone()).or_default() += 1;
    }
    let queues = audit::queue_depths(&config.amqp_url, &queue_names(config)).await?;
    let rss = gateway_pid.zip(peak_kib).map(|(pid, peak_kib)| Rss {
        pid,
        peak_kib,
        after_kib: rss::status_kib(pid, "VmRSS").unwrap_or(0),
        target_kib: rss::TARGET_KIB,
    });
    Ok(Report {
        item_id: item,
        gateway: opts.gateway.clone(),
        stock: opts.stock,
        requests: opts.requests,
        connections: opts.connections,
        buyers,
        passed: checks.iter().all(|c| c.passed),
        load,
        drain,
        payments,
        end_states,
        queues,
        checks,
        timeline,
        rss,
        cpu,
        shards: Some(shards),
        baseline,
    })
}

async fn create_item(
    http: &HttpClient,
    config: &Config,
    opts: &SaleOptions,
) -> anyhow::Result<ItemId> {
    create_item_of(http, config, opts, opts.stock).await
}

async fn create_item_of(
    http: &HttpClient,
    config: &Config,
    opts: &SaleOptions,
    stock: i64,
) -> anyhow::Result<ItemId> {
    let fields = serde_json::json!({
        "price_cents": opts.price_cents,
        "stock": stock,
        "per_user_limit": opts.per_user_limit,
        "shards": opts.shards,
    });
    crate::http::create_item(http, config, &opts.gateway, "flash sale", fields).await
}

/// Which path of the sale to measure alone, beside the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alone {
    /// The sale's burst at a second item of the sale's stock, drained before the sale.
    InStock,
    /// The sale's burst at a second item of no stock: every answer `sold_out`, nothing sold.
    SoldOut,
}

/// Rounds of a path alone, each beside a round of its ceiling (the bare server or
/// redis-benchmark); the best of each is kept. A burst of a sale's size lasts a second or two,
/// and this machine's neighbours take up to a tenth of it in some seconds and none in others:
/// noise only ever slows a run, so the fastest of a few interleaved rounds is each one's own rate.
const ALONE_ROUNDS: u64 = 3;

/// The in-stock path alone: the sale's burst fired at a second item of the same shape while every
/// `seckill-workers` process is stopped (SIGSTOP), so that the gateway, Redis and the relay to
/// RabbitMQ have the cores to themselves, as `redis-benchmark` has; then the workers continue and
/// drain that item before the sale starts. Said on stderr and skipped when no workers run here.
async fn in_stock_alone(
    http: &HttpClient,
    config: &Config,
    opts: &SaleOptions,
    baseline: &mut baseline::Baseline,
) -> anyhow::Result<()> {
    // Stock for every round, each selling to every request.
    let stock = opts.requests as i64 * ALONE_ROUNDS as i64;
    let ceiling = Ceiling::Redis(&config.redis_url);
    let Some((item, accepted)) = rounds_alone(http, config, opts, stock, ceiling, baseline).await?
    else {
        return Ok(());
    };
    let mut watch = Watch::new(config, item, stock).await?;
    watch
        .until("the in-stock path alone's drain", opts.drain_timeout, |s| {
            s.stored >= accepted && s.in_flight() == 0
        })
        .await?;
    if opts.wait_for_timeouts {
        // Its orders time out before the sale, not in the sale's CPU window.
        watch
            .until(
                "the in-stock path alone's timeouts",
                config.payment_timeout + SETTLE_SLACK,
                |s| {
                    s.in_flight() == 0
                        && s.count(OrderStatus::AwaitingPayment) == 0
                        && s.redis_remaining == s.db_available
                },
            )
            .await?;
    }
    watch.close().await;
    Ok(())
}

/// The sold-out path alone, as the bare server is measured: the sale's burst at a second item of
/// no stock with the workers stopped, so the pipeline draining the sale's own orders does not
/// share the cores. Nothing sells, so nothing is left to drain.
async fn sold_out_alone(
    http: &HttpClient,
    config: &Config,
    opts: &SaleOptions,
    bare_bodies: &Path,
    baseline: &mut baseline::Baseline,
) -> anyhow::Result<()> {
    let ceiling = Ceiling::Bare(bare_bodies);
    let Some((_, sold)) = rounds_alone(http, config, opts, 0, ceiling, baseline).await? else {
        return Ok(());
    };
    ensure!(
        sold == 0,
        "the sold-out path alone sold {sold} units of an item of no stock"
    );
    Ok(())
}

/// What a path alone is held to, measured again between its rounds.
enum Ceiling<'a> {
    /// The bare hyper server, sent these bodies.
    Bare(&'a Path),
    /// redis-benchmark running the purchase script on this Redis.
    Redis(&'a str),
}

impl Ceiling<'_> {
    /// The path held to this ceiling.
    fn path(&self) -> &'static str {
        match self {
            Ceiling::Bare(_) => "sold-out",
            Ceiling::Redis(_) => "in-stock",
        }
    }
}

/// [`ALONE_ROUNDS`] bursts of the sale's shape at a new item of `stock` with this namespace's
/// workers stopped, the second and later each after a round of `ceiling`; `baseline` keeps the
/// best of each (the ceiling's first round is its own). Returns the item and the purchases
/// accepted over every round; `None` when no workers of this namespace run here.
async fn rounds_alone(
    http: &HttpClient,
    config: &Config,
    opts: &SaleOptions,
    stock: i64,
    ceiling: Ceiling<'_>,
    baseline: &mut baseline::Baseline,
) -> anyhow::Result<Option<(ItemId, u64)>> {
    let path = ceiling.path();
    let Some(workers) = namespace_workers(config, path) else {
        return Ok(None);
    };
    let item = create_item_of(http, config, opts, stock).await?;
    let bodies = opts.out.join("alone-bodies.jsonl");
    write_bodies(&bodies, &Tickets::new(&config.ticket_secret), item, opts)?;
    eprintln!(
        "the {path} path alone: item {item}, {ALONE_ROUNDS} rounds beside its ceiling's, \
         workers {workers:?} paused"
    );
    let (round_bare, round_alone) = (
        opts.out.join("baseline-oha.round.json"),
        opts.out.join("alone-oha.round.json"),
    );
    let _paused = Paused::new(&workers)?;
    let rounds = async {
        let mut accepted = 0;
        for round in 0..ALONE_ROUNDS {
            match ceiling {
                _ if round == 0 => {}
                Ceiling::Bare(bare_bodies) => {
                    let (requests, connections) = (opts.requests, opts.connections);
                    let body = Body::Lines(bare_bodies);
                    let bare =
                        baseline::bare_http(requests, connections, body, &round_bare).await?;
                    if bare.requests_per_sec > baseline.http.requests_per_sec {
                        baseline.http = bare;
                        std::fs::rename(&round_bare, opts.out.join("baseline-oha.json"))?;
                    }
                }
                Ceiling::Redis(url) => {
                    let redis =
                        baseline::redis_purchase(url, opts.requests, opts.connections).await?;
                    if redis.requests_per_sec > baseline.redis.requests_per_sec {
                        baseline.redis = redis;
                    }
                }
            }
            let stats = oha::run(&Load {
                url: &format!("{}/seckill", opts.gateway),
                requests: opts.requests,
                connections: opts.connections,
                body: Body::Lines(&bodies),
                tui: false,
                output: &round_alone,
            })
            .await?;
            accepted += stats.count(202);
            let best = baseline.gateway_alone.as_ref();
            if best.is_none_or(|b| stats.requests_per_sec > b.requests_per_sec) {
                baseline.gateway_alone = Some(stats);
                std::fs::rename(&round_alone, opts.out.join("alone-oha.json"))?;
            }
        }
        anyhow::Ok(accepted)
    };
    // Ctrl-C here would leave the workers stopped: it ends the rounds, and the guard continues
    // them on the way out.
    let accepted = tokio::select! {
        accepted = rounds => accepted?,
        _ = tokio::signal::ctrl_c() => {
            anyhow::bail!("interrupted during the {path} path alone; the workers were continued")
        }
    };
    let _ = std::fs::remove_file(&round_bare);
    let _ = std::fs::remove_file(&round_alone);
    Ok(Some((item, accepted)))
}

/// This namespace's `seckill-workers` processes (another namespace's sale goes on); `None`, said
/// on stderr, when none runs here.
fn namespace_workers(config: &Config, path: &str) -> Option<Vec<u32>> {
    let workers: Vec<u32> = rss::find_processes("seckill-workers")
        .into_iter()
        .filter(|pid| {
            rss::environ_var(*pid, "SECKILL_NAMESPACE")
                .unwrap_or_else(|| seckill_infra::config::DEFAULT_NAMESPACE.to_owned())
                == config.namespace
        })
        .collect();
    if workers.is_empty() {
        eprintln!(
            "no seckill-workers process of namespace {} here: the {path} path alone is not \
             measured",
            config.namespace
        );
        return None;
    }
    Some(workers)
}

/// Processes stopped with SIGSTOP until this is dropped (SIGCONT), whatever happens between.
struct Paused(Vec<u32>);

impl Paused {
    fn new(pids: &[u32]) -> anyhow::Result<Paused> {
        let paused = Paused(pids.to_vec());
        signal("-STOP", pids)?;
        Ok(paused)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Err(e) = signal("-CONT", &self.0) {
            eprintln!("could not continue {:?}: {e:#}", self.0);
        }
    }
}

/// `kill SIG PID...`: the bench needs no signal crate for two signals.
fn signal(sig: &str, pids: &[u32]) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(sig)
        .args(pids.iter().map(u32::to_string))
        .status()
        .context("running kill")?;
    ensure!(status.success(), "kill {sig} {pids:?}: {status}");
    Ok(())
}

/// Writes one `POST /seckill` body per request: a ticket for each distinct buyer, then repeat
/// attempts by buyers drawn at random. Returns the number of distinct buyers.
fn write_bodies(
    path: &Path,
    tickets: &Tickets,
    item: ItemId,
    opts: &SaleOptions,
) -> anyhow::Result<u64> {
    let buyers = ((opts.requests as f64 * (1.0 - opts.repeat_ratio)).round() as u64).max(1);
    let expires = chrono::Utc::now().timestamp() + TICKET_LIFETIME_SECS;
    let mut rng = rand::rng();
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for i in 0..opts.requests {
        let user = if i < buyers {
            i + 1
        } else {
            rng.random_range(1..=buyers)
        };
        let body = serde_json::json!({
            "item_id": item.0,
            "ticket": tickets.mint(UserId(user), item, expires),
        });
        writeln!(out, "{body}")?;
    }
    out.flush()?;
    Ok(buyers)
}

/// Messages waiting in the namespace's work queues (the dead letters aside) before the run.
async fn inherited_messages(config: &Config) -> anyhow::Result<u64> {
    let dead = Topology::new(&config.namespace, config.payment_timeout).dead();
    let names: Vec<String> = queue_names(config)
        .into_iter()
        .filter(|q| *q != dead)
        .collect();
    Ok(audit::queue_depths(&config.amqp_url, &names)
        .await?
        .into_values()
        .flatten()
        .map(u64::from)
        .sum())
}

fn queue_names(config: &Config) -> Vec<String> {
    let t = Topology::new(&config.namespace, config.payment_timeout);
    let mut names: Vec<String> = Kind::ALL.iter().map(|k| t.queue(*k)).collect();
    names.push(t.delay_queue());
    names.push(t.dead());
    names
}

/// The item's orders at one moment.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// By status, `PENDING` being the orders taken in Redis that the database does not hold yet.
    pub orders: BTreeMap<String, u64>,
    /// Orders the database holds.
    pub stored: u64,
    pub redis_remaining: Option<i64>,
    pub db_available: Option<i64>,
}

impl State {
    pub fn count(&self, status: OrderStatus) -> u64 {
        self.orders.get(status.as_str()).copied().unwrap_or(0)
    }

    /// Stored orders whose stock the database has not locked yet.
    pub fn in_flight(&self) -> u64 {
        self.count(OrderStatus::Created) + self.count(OrderStatus::StockLocked)
    }
}

/// Polls the item's orders, keeps the timeline, and shows progress on stderr.
struct Watch {
    db: DatabaseConnection,
    redis: Client,
    scripts: seckill_infra::scripts::Scripts,
    item: ItemId,
    stock: i64,
    started: Instant,
    stored: u64,
    timeline: Vec<Sample>,
    tty: bool,
    shown: (String, Instant),
}

impl Watch {
    async fn new(config: &Config, item: ItemId, stock: i64) -> anyhow::Result<Watch> {
        Ok(Watch {
            db: crate::db::connect(&config.database_url).await?,
            redis: seckill_infra::redis::client(&config.redis_url).await?,
            scripts: seckill_infra::scripts::Scripts::new(Keys::new(&config.namespace)),
            item,
            stock,
            started: Instant::now(),
            stored: 0,
            timeline: vec![],
            tty: std::io::stderr().is_terminal(),
            shown: (String::new(), Instant::now()),
        })
    }

    async fn poll(&mut self) -> anyhow::Result<State> {
        let mut orders = crate::db::status_counts(&self.db, self.item).await?;
        let stored: u64 = orders.values().sum();
        let row = items::Entity::find_by_id(self.item.0 as i64)
            .one(&self.db)
            .await
            .context("reading the item")?;
        let db_available = row.as_ref().map(|i| i.available);
        let shards = row.as_ref().map_or(1, seckill_infra::scripts::shards_of);
        let redis_remaining =
            crate::shards::remaining(&self.scripts, &self.redis, self.item, shards)
                .await
                .context("reading the item from Redis")?;
        // Every order of the bench is of one unit: the units Redis gave out that no stored live
        // order holds are the orders still on their way to the database.
        let held: u64 = OrderStatus::ALL
            .iter()
            .copied()
            .filter(|s| s.holds_stock())
            .filter_map(|s| orders.get(s.as_str()))
            .sum();
        let taken = redis_remaining.map_or(0, |r| (self.stock - r).max(0) as u64);
        if taken > held {
            orders.insert(OrderStatus::Pending.as_str().to_owned(), taken - held);
        }
        self.stored = stored;
        self.timeline.push(Sample {
            secs: self.started.elapsed().as_secs_f64(),
            orders: orders.clone(),
        });
        Ok(State {
            orders,
            stored,
            redis_remaining,
            db_available,
        })
    }

    /// Runs `work` while sampling the orders, from a first sample before it starts: the pipeline
    /// drains while the load runs.
    async fn during<T>(
        &mut self,
        work: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        self.poll().await?;
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = tokio::time::sleep(POLL_EVERY) => { self.poll().await?; }
            }
        }
    }

    /// Polls until `done` holds or `deadline` passes; true when it held.
    async fn until(
        &mut self,
        phase: &str,
        deadline: Duration,
        done: impl Fn(&State) -> bool,
    ) -> anyhow::Result<bool> {
        let end = Instant::now() + deadline;
        loop {
            let state = self.poll().await?;
            let finished = done(&state);
            self.show(phase, &state, finished);
            if finished {
                return Ok(true);
            }
            if Instant::now() >= end {
                eprintln!("{phase}: not done after {deadline:?}; auditing as it stands");
                return Ok(false);
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    fn show(&mut self, phase: &str, state: &State, last: bool) {
        let status = crate::report::by_status(&state.orders);
        let line = format!(
            "{phase} {:>6.1}s  {status}",
            self.started.elapsed().as_secs_f64()
        );
        if self.tty {
            eprint!("\r{line}\x1b[K{}", if last { "\n" } else { "" });
            return;
        }
        // Without a terminal, a line when something changed, every few seconds at most.
        let (shown, at) = &self.shown;
        if last || (status != *shown && at.elapsed() >= Duration::from_secs(2)) {
            eprintln!("{line}");
            self.shown = (status, Instant::now());
        }
    }

    async fn close(self) -> Vec<Sample> {
        let _ = self.db.close().await;
        let _ = self.redis.quit().await;
        self.timeline
    }
}
