//! The fault tests' stack: the real `seckill-gateway` and `seckill-workers` binaries, Redis,
//! RabbitMQ and PostgreSQL, each in a host of its own on a private network
//! ([`seckill_testkit::Network`]), so that a test can cut any two of them apart, isolate one, or
//! pause and kill any process; a paced sale through the history checker's recording
//! [`Client`]; and the end of every test: settle the `outcome_unknown`s, wait for the pipeline,
//! and hold the history and the bench's audit against the database.
//!
//! ```text
//!   test process (root namespace): the buyers, the checks, the faults
//!     │
//!   ──┴── bridge ──┬────────┬────────┬────────┬──────────┬──────────────┬──────────┐
//!               redis      mq       db     gateway    workers     replica1/2   sentinel
//!             (master)  RabbitMQ PostgreSQL (+gateway2)            (replica mode only)
//! ```
//!
//! Included by the fault test files with `#[path = "common/faults.rs"] mod faults;`.
//!
//! ```ignore
//! let plan = Plan::new(ITEM, 300);
//! let stack = Stack::selling(Options::fsync(), &plan, 150).await;
//! let ((), ()) = tokio::join!(stack.burst(&plan), async {
//!     plan.progress.until_accepted(40).await;
//!     stack.net.cut(&stack.hosts.gateways[0], &stack.hosts.redis);
//!     hold(Duration::from_secs(4)).await;
//!     stack.net.heal(&stack.hosts.gateways[0], &stack.hosts.redis);
//! });
//! stack.verify(ITEM, Final::AwaitingPaymentOk).await.assert_passed();
//! ```

// Each fault test file uses a part of it.
#![allow(dead_code)]

use fred::prelude::*;
use http::{Method, StatusCode};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use seckill_bench::audit::Check;
use seckill_bench::history::{self, Client, History, Op, Outcome};
use seckill_bench::http::HttpClient;
use seckill_infra::Config;
use seckill_infra::durability::Durability;
use seckill_schema::entity::orders;
use seckill_schema::{ItemId, Keys, OrderId, OrderStatus, UserId};
use seckill_testkit::{
    Host, Network, PostgresServer, RabbitMqNode, RedisOptions, RedisServer, Sentinel, env_vars,
    wait_for,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Where the gateways listen, each in its own host (so the same port).
pub const GATEWAY_PORT: u16 = 8080;
/// Where the workers' `/readyz` and `/metrics` listen, in their host.
pub const WORKERS_PORT: u16 = 9091;
/// The Sentinel's name of the master.
pub const MASTER_NAME: &str = "seckill";
/// How long a buyer waits for an answer before giving up on it (`Indeterminate`): longer than the
/// gateway's own worst case (2 s in its lane, 2 s for the script, 0.5 s for a replica's `WAIT`),
/// so that an answer the gateway gives is seen.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(8);
/// Readiness of a started process.
const READY_DEADLINE: Duration = Duration::from_secs(90);

/// What the stack runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// `SECKILL_REDIS_DURABILITY`. `Fsync`: one Redis with `appendonly yes`, `appendfsync
    /// always`. `Replica`: a master (no append-only file), two replicas and a Sentinel, the
    /// processes on a `redis-sentinel://` URL. `None`: one Redis without an append-only file (for
    /// showing what the other modes protect).
    pub durability: Durability,
    /// Gateways, each in a host of its own (`gateway`, `gateway2`, …). The first is started
    /// (and holds every relay lease) before the others.
    pub gateways: usize,
    /// `SECKILL_PAYMENT_TIMEOUT_SECS`.
    pub payment_timeout: Duration,
    /// RabbitMQ's `advanced.config` (empty: none).
    pub rabbitmq_advanced_config: String,
}

impl Options {
    pub fn fsync() -> Options {
        Options {
            durability: Durability::Fsync,
            gateways: 1,
            payment_timeout: Duration::from_secs(600),
            rabbitmq_advanced_config: String::new(),
        }
    }

    pub fn replica() -> Options {
        Options {
            durability: Durability::Replica,
            ..Options::fsync()
        }
    }

    pub fn durability(mut self, durability: Durability) -> Options {
        self.durability = durability;
        self
    }

    pub fn gateways(mut self, n: usize) -> Options {
        assert!(n >= 1);
        self.gateways = n;
        self
    }

    pub fn payment_timeout(mut self, secs: u64) -> Options {
        self.payment_timeout = Duration::from_secs(secs);
        self
    }

    pub fn rabbitmq_advanced_config(mut self, terms: &str) -> Options {
        self.rabbitmq_advanced_config = terms.to_owned();
        self
    }
}

/// The hosts of the stack's network.
pub struct Hosts {
    /// The Redis master at start.
    pub redis: Host,
    pub mq: Host,
    pub db: Host,
    /// `gateway`, `gateway2`, …
    pub gateways: Vec<Host>,
    pub workers: Host,
    /// `replica1`, `replica2` (replica mode).
    pub replicas: Vec<Host>,
    /// The Sentinel's host (replica mode).
    pub sentinel: Option<Host>,
}

/// One of the project's binaries running in a host: its output goes to a log file, it is killed
/// when dropped.
pub struct Proc {
    pub name: String,
    pub host: Host,
    /// `http://<host ip>:<port>`.
    pub url: String,
    pub log: PathBuf,
    binary: PathBuf,
    vars: Vec<(String, String)>,
    child: Option<tokio::process::Child>,
}

impl Proc {
    fn spawn(
        name: &str,
        host: &Host,
        binary: &Path,
        vars: Vec<(String, String)>,
        addr: SocketAddr,
        log: PathBuf,
    ) -> Proc {
        let mut proc = Proc {
            name: name.to_owned(),
            host: host.clone(),
            url: format!("http://{addr}"),
            log,
            binary: binary.to_owned(),
            vars,
            child: None,
        };
        proc.start();
        proc
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log.display()));
        let child = self
            .host
            .tokio_command(&self.binary)
            .env_remove("SECKILL_NODE_ID")
            .envs(self.vars.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log's handle"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} in {:?}: {e}", self.name, self.host));
        self.child = Some(child);
    }

    /// The process's id (`ip netns exec` execs the binary, so it is the binary's).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .unwrap_or_else(|| panic!("{} is not running", self.name))
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid();
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("running kill -{sig} {pid}: {e}"));
        assert!(status.success(), "kill -{sig} {pid} ({}) failed", self.name);
    }

    /// SIGSTOP: the process hangs, its connections open, until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// SIGKILL, and reaped.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again (after [`kill`](Self::kill)), with the same configuration and log.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        self.start();
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let http = HttpClient::default();
        let url = format!("{}/readyz", self.url);
        let what = format!("{} to be ready (log: {})", self.name, self.log.display());
        let started = Instant::now();
        wait_for(&what, READY_DEADLINE, || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let (status, _) = http.get(&url).await.ok()?;
                (status == StatusCode::OK).then_some(())
            }
        })
        .await;
        eprintln!("{} ready in {:?}", self.name, started.elapsed());
    }

    /// The lines of its log that report a panic.
    pub fn panics(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("panicked"))
            .map(str::to_owned)
            .collect()
    }

    /// How many lines of its log contain `text`.
    pub fn log_count(&self, text: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(text))
            .count()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // A stopped process dies of SIGKILL too; kill_on_drop sends it.
            let _ = child.start_kill();
        }
    }
}

/// The whole system in hosts. Fields drop in order: the processes, then the servers, then the
/// network (which kills whatever is left in its hosts).
pub struct Stack {
    pub config: Config,
    pub gateways: Vec<Proc>,
    pub workers: Proc,
    /// The Redis master at start (in `hosts.redis`).
    pub redis: RedisServer,
    /// Replica mode: `replica1`, `replica2`.
    pub replicas: Vec<RedisServer>,
    pub sentinel: Option<Sentinel>,
    pub pg: PostgresServer,
    pub mq: RabbitMqNode,
    pub hosts: Hosts,
    pub history: History,
    /// One recording client per gateway, sharing [`history`](Self::history).
    pub clients: Vec<Client>,
    pub started: Instant,
    pub net: Network,
}

/// The binaries beside this test executable's crate's own (`target/debug`), built by
/// `cargo build --workspace --bins` (scripts/test.sh does it first). `SECKILL_FAULTS_BIN_DIR`
/// points elsewhere (e.g. binaries built with a safety removed, to see a test fail).
fn binaries() -> (PathBuf, PathBuf) {
    let dir = match std::env::var_os("SECKILL_FAULTS_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_BIN_EXE_seckill-bench"))
            .parent()
            .expect("the bench binary's directory")
            .to_owned(),
    };
    let (gateway, workers) = (dir.join("seckill-gateway"), dir.join("seckill-workers"));
    for bin in [&gateway, &workers] {
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build --workspace --bins` first",
            bin.display()
        );
    }
    (gateway, workers)
}

fn log_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults");
    std::fs::create_dir_all(&dir).expect("creating the logs' directory");
    dir
}

impl Stack {
    /// Starts every server in its host (RabbitMQ, PostgreSQL and Redis at once), then the first
    /// gateway, the workers, and the other gateways, each waited for until `/readyz` says 200.
    pub async fn start(opts: Options) -> Stack {
        let started = Instant::now();
        seckill_infra::telemetry::init_tracing();
        let (gateway_bin, workers_bin) = binaries();
        let net = Network::new();
        let replicated = opts.durability == Durability::Replica;
        let hosts = Hosts {
            redis: net.host("redis"),
            mq: net.host("mq"),
            db: net.host("db"),
            gateways: (1..=opts.gateways)
                .map(|i| match i {
                    1 => net.host("gateway"),
                    i => net.host(&format!("gateway{i}")),
                })
                .collect(),
            workers: net.host("workers"),
            replicas: if replicated {
                vec![net.host("replica1"), net.host("replica2")]
            } else {
                Vec::new()
            },
            sentinel: replicated.then(|| net.host("sentinel")),
        };
        let redis = async {
            // Replica mode as it must be deployed (the processes are not ready otherwise): the
            // master, and any replica once promoted, refuses writes while no replica is connected.
            let min_replicas = |o: RedisOptions| o.arg("min-replicas-to-write", "1");
            let master_opts = match opts.durability {
                Durability::Fsync => RedisOptions::default(),
                Durability::Replica => min_replicas(RedisOptions::volatile().no_sync_delay()),
                Durability::None => RedisOptions::volatile().no_sync_delay(),
            };
            let master = RedisServer::start_ready_in(&hosts.redis, master_opts).await;
            let mut replicas = Vec::new();
            for host in &hosts.replicas {
                let o = min_replicas(RedisOptions::volatile().no_sync_delay())
                    .replicaof_at(master.ip(), master.port());
                replicas.push(RedisServer::start_ready_in(host, o).await);
            }
            let sentinel = match &hosts.sentinel {
                None => None,
                Some(host) => {
                    master.wait_replicas_online(replicas.len()).await;
                    let sentinel =
                        Sentinel::start_in(host, MASTER_NAME, master.ip(), master.port());
                    sentinel.wait_ready().await;
                    let ports: Vec<u16> = replicas.iter().map(RedisServer::port).collect();
                    wait_for(
                        "the Sentinel to know both replicas",
                        Duration::from_secs(30),
                        || async {
                            let known = sentinel.replica_ports().await;
                            ports.iter().all(|p| known.contains(p)).then_some(())
                        },
                    )
                    .await;
                    Some(sentinel)
                }
            };
            (master, replicas, sentinel)
        };
        let ((redis, replicas, sentinel), pg, mq) = tokio::join!(
            redis,
            PostgresServer::start(&hosts.db),
            RabbitMqNode::start_with_advanced_config(&hosts.mq, &opts.rabbitmq_advanced_config),
        );
        eprintln!("servers ready in {:?}", started.elapsed());

        let mut config = Config::from_env().expect("the test environment's SECKILL_* variables");
        let tag = format!(
            "t{:x}{:04x}",
            seckill_schema::snowflake::now_ms() % 0xffff_ffff,
            rand::random::<u16>()
        );
        config.namespace = format!("test_{tag}");
        config.database_url = pg.database_url(&format!("seckill_{tag}"));
        config.redis_url = match &sentinel {
            Some(s) => s.url(),
            None => redis.url(),
        };
        config.redis_durability = opts.durability;
        config.amqp_url = mq.url();
        config.jwt_secret = "test-jwt".into();
        config.ticket_secret = "test-ticket".into();
        config.admin_token = "test-admin".into();
        config.webhook_secret = "test-webhook".into();
        config.rate_per_user = 0;
        config.node_id = None;
        config.payment_timeout = opts.payment_timeout;
        config.http_addr = SocketAddr::new(hosts.gateways[0].ip().into(), GATEWAY_PORT);
        config.workers_addr = SocketAddr::new(hosts.workers.ip().into(), WORKERS_PORT);

        let logs = log_dir();
        let vars = |config: &Config| -> Vec<(String, String)> {
            let mut vars: Vec<(String, String)> = env_vars(config)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            vars.push((
                "SECKILL_REDIS_DURABILITY".into(),
                config.redis_durability.as_str().into(),
            ));
            vars.push(("NO_COLOR".into(), "1".into()));
            vars.push((
                "RUST_LOG".into(),
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            ));
            vars
        };
        let gateway_proc = |i: usize, host: &Host| {
            let mut c = config.clone();
            c.http_addr = SocketAddr::new(host.ip().into(), GATEWAY_PORT);
            let name = host.name().to_owned();
            Proc::spawn(
                &name,
                host,
                &gateway_bin,
                vars(&c),
                c.http_addr,
                logs.join(format!("{}-{name}-{i}.log", config.namespace)),
            )
        };
        let mut gateways = vec![gateway_proc(1, &hosts.gateways[0])];
        gateways[0].wait_ready().await;
        let workers_vars = vars(&config);
        let workers = Proc::spawn(
            "workers",
            &hosts.workers,
            &workers_bin,
            workers_vars,
            config.workers_addr,
            logs.join(format!("{}-workers.log", config.namespace)),
        );
        for (i, host) in hosts.gateways.iter().enumerate().skip(1) {
            gateways.push(gateway_proc(i + 1, host));
        }
        workers.wait_ready().await;
        for g in &gateways[1..] {
            g.wait_ready().await;
        }
        let history = History::new();
        let clients = gateways
            .iter()
            .map(|g| Client::new(&history, &config, &g.url).with_timeout(CLIENT_TIMEOUT))
            .collect();
        eprintln!(
            "stack of namespace {} ready in {:?}; logs in {}",
            config.namespace,
            started.elapsed(),
            logs.display()
        );
        Stack {
            config,
            gateways,
            workers,
            redis,
            replicas,
            sentinel,
            pg,
            mq,
            hosts,
            history,
            clients,
            started,
            net,
        }
    }

    /// The stack, with `plan`'s item on sale: `stock` units at [`PRICE`], two per buyer (the
    /// plan's repeaters are refused their third).
    pub async fn selling(options: Options, plan: &Plan, stock: i64) -> Stack {
        let stack = Stack::start(options).await;
        stack.create_item(plan.item, stock).await;
        stack
    }

    /// Creates an item through the first gateway's admin API, on sale now.
    async fn create_item(&self, item: ItemId, stock: i64) {
        let http = HttpClient::default();
        let body = serde_json::json!({"item_id": item.0, "name": format!("faults {item}"),
            "price_cents": PRICE, "stock": stock, "per_user_limit": 2});
        let (status, body) = http
            .post_json(
                &format!("{}/admin/items", self.gateways[0].url),
                &[(
                    "authorization",
                    &format!("Bearer {}", self.config.admin_token),
                )],
                &body,
            )
            .await
            .expect("POST /admin/items");
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&body)
        );
    }

    /// A client of the stack's Redis (through the Sentinel in replica mode), for a test's reads.
    pub async fn redis_client(&self) -> fred::prelude::Client {
        seckill_infra::redis::client(&self.config.redis_url)
            .await
            .expect("connecting to the stack's Redis")
    }

    /// Entries in the item's gene's outbox stream: accepted orders not yet known to be on the
    /// broker.
    pub async fn outbox_len(&self, item: ItemId) -> Option<u64> {
        let redis = self.redis_client().await;
        let keys = Keys::new(&self.config.namespace);
        let key = keys.outbox(seckill_schema::keys::gene_of_item(item));
        let n = redis.xlen::<u64, _>(key).await.ok();
        let _ = redis.quit().await;
        n
    }

    /// Runs `plan`'s sale through the stack's clients (buyer `u` through gateway `u % n`),
    /// counting answers in its `progress`; returns once every buyer is done.
    pub async fn burst(&self, plan: &Plan) {
        self::burst(&self.clients, plan).await;
    }

    /// The end of every test: settles each `outcome_unknown` (through the first gateway), waits
    /// for the pipeline (until every stored order is final, with `Final::All`), and checks the
    /// history and the audit of `item`. Prints what it saw.
    pub async fn verify(&self, item: ItemId, until: Final) -> Verdict {
        self.verify_except(item, until, &BTreeSet::new()).await
    }

    /// [`verify`](Self::verify), not waiting for the orders of `lost` (answered `202`, known to be
    /// gone) to be stored.
    pub async fn verify_except(
        &self,
        item: ItemId,
        until: Final,
        lost: &BTreeSet<OrderId>,
    ) -> Verdict {
        let t = Instant::now();
        let settle = self.clients[0].settle(Duration::from_secs(60)).await;
        eprintln!("settled in {:?}: {settle:?}", t.elapsed());
        if until == Final::All {
            self.wait_all_final(item, Duration::from_secs(90)).await;
        }
        let within = Duration::from_secs(90);
        let waited =
            history::wait_for_orders_except(&self.history, &self.config, item, lost, within).await;
        if let Err(e) = &waited {
            eprintln!("the pipeline did not finish: {e:#}");
        }
        let checks = history::check(&self.history, &self.config, item)
            .await
            .expect("the checks read every source");
        let summary = Summary::of(&self.history.ops());
        let panics: Vec<String> = self
            .gateways
            .iter()
            .chain([&self.workers])
            .flat_map(Proc::panics)
            .collect();
        let verdict = Verdict {
            checks,
            summary,
            settle_unsettled: settle.unsettled,
            drained: waited.is_ok(),
            panics,
            elapsed: self.started.elapsed(),
        };
        verdict.print();
        verdict
    }

    /// Waits until every stored order of `item` is final (with a short payment timeout, every
    /// order ends `TIMED_OUT` or `FAILED`, after which nothing moves).
    pub async fn wait_all_final(&self, item: ItemId, within: Duration) {
        let db = seckill_infra::db::connect(&self.config.database_url, 1)
            .await
            .expect("the stack's database");
        let end = Instant::now() + within;
        loop {
            let rows = orders::Entity::find()
                .filter(orders::Column::ItemId.eq(item.0 as i64))
                .all(&db)
                .await
                .expect("reading orders");
            let open = rows
                .iter()
                .filter(|o| !o.status.parse::<OrderStatus>().is_ok_and(|s| s.is_final()))
                .count();
            if open == 0 {
                break;
            }
            if Instant::now() >= end {
                eprintln!("{open} orders still open after {within:?}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = db.close().await;
    }

    /// Which gateway holds the relay lease of `item`'s gene now (by the pid in its token).
    pub async fn relay_holder(&self, item: ItemId) -> Option<usize> {
        relay_holder(&self.config, &self.gateways, item).await
    }
}

/// How far [`Stack::verify`] waits for the orders to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Final {
    /// Past the pipeline (awaiting payment or further): the payment timeout is long.
    AwaitingPayment,
    /// Every order final: the payment timeout is short, so every unpaid order times out.
    All,
}

/// What a test saw and what the checks said.
pub struct Verdict {
    pub checks: Vec<Check>,
    pub summary: Summary,
    pub settle_unsettled: usize,
    pub drained: bool,
    pub panics: Vec<String>,
    pub elapsed: Duration,
}

impl Verdict {
    fn print(&self) {
        eprintln!("{}", self.summary);
        for c in &self.checks {
            let mark = if c.passed { "ok" } else { "FAILED" };
            eprintln!(
                "  {mark} {} (invariant {}): {}",
                c.name, c.invariant, c.detail
            );
        }
        eprintln!("test time so far: {:?}", self.elapsed);
    }

    pub fn failed(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.passed).collect()
    }

    /// Every check passed, the dead-letter queue among them, every `outcome_unknown` settled, the
    /// pipeline drained, and no process panicked.
    pub fn assert_passed(&self, history: &History) {
        let failed = self.failed();
        let dead = self
            .checks
            .iter()
            .find(|c| c.name == "dead_letters_empty")
            .expect("the audit checks the dead-letter queue");
        assert!(
            failed.is_empty() && dead.passed,
            "failed checks: {failed:#?}\nhistory: {}",
            history.to_json()
        );
        assert_eq!(self.settle_unsettled, 0, "outcome_unknowns never settled");
        assert!(self.drained, "the pipeline did not drain");
        assert!(self.panics.is_empty(), "panics: {:#?}", self.panics);
    }
}

/// What the answers were, counted.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub ops: usize,
    pub accepted: usize,
    pub by_outcome: BTreeMap<String, usize>,
    pub unknown_settled_found: usize,
    pub unknown_settled_not_found: usize,
    pub unknown_unsettled: usize,
}

impl Summary {
    pub fn of(ops: &[Op]) -> Summary {
        let mut s = Summary {
            ops: ops.len(),
            ..Summary::default()
        };
        for op in ops {
            let kind = match &op.outcome {
                Outcome::Accepted(_) => "202",
                Outcome::SoldOut => "409 sold_out",
                Outcome::LimitReached(_) => "409 limit_reached",
                Outcome::NotStarted => "409 not_started",
                Outcome::Ended => "409 ended",
                Outcome::UnknownItem => "404 unknown_item",
                Outcome::Unavailable => "503 unavailable",
                Outcome::Recovering => "503 recovering",
                Outcome::OutcomeUnknown(_) => "503 outcome_unknown",
                Outcome::RateLimited => "429",
                Outcome::Indeterminate => "no answer",
                Outcome::Other(..) => "other",
            };
            *s.by_outcome.entry(kind.to_owned()).or_default() += 1;
            if let Outcome::Accepted(_) = op.outcome {
                s.accepted += 1;
            }
            if let Outcome::OutcomeUnknown(_) = op.outcome {
                match op.settled.map(|x| x.found) {
                    Some(true) => s.unknown_settled_found += 1,
                    Some(false) => s.unknown_settled_not_found += 1,
                    None => s.unknown_unsettled += 1,
                }
            }
        }
        s
    }

    pub fn count(&self, kind: &str) -> usize {
        self.by_outcome.get(kind).copied().unwrap_or(0)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} purchases:", self.ops)?;
        for (kind, n) in &self.by_outcome {
            write!(f, " {kind} ×{n};")?;
        }
        write!(
            f,
            " outcome_unknown settled 200 ×{}, 404 ×{}, unsettled ×{}",
            self.unknown_settled_found, self.unknown_settled_not_found, self.unknown_unsettled
        )
    }
}

/// Every fault sale's price, in cents.
pub const PRICE: i64 = 990;

/// A paced sale: buyers `1..=buyers` arrive `per_sec` a second, one unit each.
#[derive(Debug, Clone)]
pub struct Plan {
    pub item: ItemId,
    pub buyers: u64,
    pub per_sec: u64,
    /// Every `repeat_every`-th buyer buys three times (past a limit of 2, the third is refused).
    pub repeat_every: u64,
    /// Every `keyed_every`-th buyer (not a repeater) sends an `Idempotency-Key` and retries it
    /// after any answer that is not final (and once more after a `202`, which must answer the
    /// same order).
    pub keyed_every: u64,
    /// Its answers so far, for a fault to wait on.
    pub progress: Arc<Progress>,
}

impl Plan {
    pub fn new(item: ItemId, buyers: u64) -> Plan {
        Plan {
            item,
            buyers,
            per_sec: 32,
            repeat_every: 5,
            keyed_every: 4,
            progress: Progress::new(),
        }
    }
}

/// The answers of a burst so far, for a fault to wait on.
#[derive(Debug, Default)]
pub struct Progress {
    answers: AtomicUsize,
    accepted: AtomicUsize,
    changed: Notify,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress::default())
    }

    fn record(&self, outcome: &Outcome) {
        if matches!(outcome, Outcome::Accepted(_)) {
            self.accepted.fetch_add(1, Ordering::SeqCst);
        }
        self.answers.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn answers(&self) -> usize {
        self.answers.load(Ordering::SeqCst)
    }

    /// Waits until `n` purchases were answered `202` (fails the test after 60 s).
    pub async fn until_accepted(&self, n: usize) {
        let end = Instant::now() + Duration::from_secs(60);
        while self.accepted() < n {
            let notified = self.changed.notified();
            if self.accepted() >= n {
                break;
            }
            assert!(
                tokio::time::timeout_at(end.into(), notified).await.is_ok() || self.accepted() >= n,
                "only {} purchases accepted after 60 s, {n} awaited",
                self.accepted()
            );
        }
    }

    /// Waits until `n` more purchases were accepted than now.
    pub async fn until_more_accepted(&self, n: usize) {
        let target = self.accepted() + n;
        self.until_accepted(target).await;
    }
}

/// A fault held for a set time: the only sleep the tests take.
pub async fn hold(d: Duration) {
    tokio::time::sleep(d).await;
}

fn is_final_answer(o: &Outcome) -> bool {
    matches!(
        o,
        Outcome::Accepted(_)
            | Outcome::SoldOut
            | Outcome::LimitReached(_)
            | Outcome::NotStarted
            | Outcome::Ended
            | Outcome::UnknownItem
    )
}

/// Which of `gateways` holds the relay lease of `item`'s gene now (by the pid in its token).
pub async fn relay_holder(config: &Config, gateways: &[Proc], item: ItemId) -> Option<usize> {
    let redis = seckill_infra::redis::client(&config.redis_url).await.ok()?;
    let keys = Keys::new(&config.namespace);
    let token: Option<String> = redis
        .get(keys.relay_lease(seckill_schema::keys::gene_of_item(item)))
        .await
        .ok()
        .flatten();
    let _ = redis.quit().await;
    let token = token?;
    gateways
        .iter()
        .position(|g| g.child.is_some() && token.starts_with(&format!("gateway-{}-", g.pid())))
}

/// Entries in `item`'s gene's outbox stream on the Redis at `url` (`None`: no answer).
pub async fn outbox_len_at(config: &Config, url: &str, item: ItemId) -> Option<u64> {
    let redis = seckill_infra::redis::client(url).await.ok()?;
    let keys = Keys::new(&config.namespace);
    let key = keys.outbox(seckill_schema::keys::gene_of_item(item));
    let n = redis.xlen::<u64, _>(key).await.ok();
    let _ = redis.quit().await;
    n
}

/// The orders in every outbox stream of `namespace` on `server`: accepted, not yet known to be on
/// the broker.
pub async fn outbox_orders(server: &RedisServer, namespace: &str) -> BTreeSet<OrderId> {
    let redis = seckill_infra::redis::client(&server.url())
        .await
        .expect("connecting to a Redis of the stack");
    let keys = Keys::new(namespace);
    let mut ids = BTreeSet::new();
    for (_, stream) in keys.outboxes() {
        let entries: Vec<(String, Vec<(String, String)>)> =
            redis.xrange(stream, "-", "+", None).await.expect("XRANGE");
        for (_, fields) in entries {
            for (k, v) in fields {
                if k == seckill_schema::outbox::FIELD {
                    let event = seckill_schema::outbox::decode(&v).expect("an outbox entry");
                    ids.insert(event.order_id);
                }
            }
        }
    }
    let _ = redis.quit().await;
    ids
}

/// Orders of `item` in the database.
pub async fn stored_count(config: &Config, item: ItemId) -> usize {
    let db = seckill_infra::db::connect(&config.database_url, 1)
        .await
        .expect("the stack's database");
    let n = orders::Entity::find()
        .filter(orders::Column::ItemId.eq(item.0 as i64))
        .all(&db)
        .await
        .expect("reading orders")
        .len();
    let _ = db.close().await;
    n
}

/// Runs `plan`'s sale through `clients` (buyer `u` through client `u % n`), counting answers in
/// its `progress`; returns once every buyer is done.
pub async fn burst(clients: &[Client], plan: &Plan) {
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for u in 1..=plan.buyers {
        let at = start + Duration::from_millis(u * 1000 / plan.per_sec.max(1));
        let client = clients[u as usize % clients.len()].clone();
        let progress = plan.progress.clone();
        let (item, repeat, keyed) = (
            plan.item,
            u % plan.repeat_every == 0,
            u % plan.keyed_every == 0 && u % plan.repeat_every != 0,
        );
        tasks.spawn(async move {
            tokio::time::sleep_until(at).await;
            let buyer = client.buyer(UserId(u));
            if keyed {
                let key = format!("key-{u}");
                for attempt in 0..4 {
                    let outcome = buyer.buy(item, 1, Some(&key)).await;
                    progress.record(&outcome);
                    if is_final_answer(&outcome) {
                        if matches!(outcome, Outcome::Accepted(_)) && attempt == 0 && u % 2 == 0 {
                            // A duplicate of a request that did get its answer.
                            let again = buyer.buy(item, 1, Some(&key)).await;
                            progress.record(&again);
                        }
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
            } else {
                let times = if repeat { 3 } else { 1 };
                for i in 0..times {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(150)).await;
                    }
                    let outcome = buyer.buy(item, 1, None).await;
                    progress.record(&outcome);
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a buyer's task panicked");
    }
}

/// The ops answered `202` whose request was sent in `[from, to)` (monotonic ms of the history).
pub fn accepted_between(ops: &[Op], from: u64, to: u64) -> usize {
    ops.iter()
        .filter(|op| matches!(op.outcome, Outcome::Accepted(_)))
        .filter(|op| op.span.invoked_ms >= from && op.span.invoked_ms < to)
        .count()
}

/// `GET` a URL and its status (for `/readyz` during a fault); `None` if nothing answered in 3 s.
pub async fn status_of(url: &str) -> Option<StatusCode> {
    let http = HttpClient::default();
    tokio::time::timeout(
        Duration::from_secs(3),
        http.send(Method::GET, url, &[], bytes::Bytes::new()),
    )
    .await
    .ok()?
    .ok()
    .map(|(s, _)| s)
}
