//! The whole system on a real three-node RabbitMQ cluster of the test's own
//! ([`RabbitMqCluster`]): the gateway and the workers in process with `SECKILL_AMQP_URL` listing
//! the three nodes, a sale of 360 buyers for 240 units spread over 30 s through the history's
//! recording client, a payment provider paying half of what awaits payment every second, and a
//! payment timeout of 3 s, so that unpaid orders time out through the delay queue while the faults
//! happen. Mid-sale the node leading the most of the namespace's queues is SIGKILLed; later a
//! second node's RabbitMQ is stopped (`stop_app`) for 5 s, which leaves one node of three, no
//! quorum, until it is started again (`start_app`); then the killed node is restarted and rejoins.
//!
//! Expected: nothing lost, nothing applied twice, `{ns}.dead` empty, the sale and the timeouts go
//! on after the faults, and the history's checks and the audit pass. The test prints what it saw:
//! the fault timeline, how long the pipeline stood still (orders accepted but not stored, orders
//! overdue but not timed out) and the broker reconnections the processes logged.

mod common;

use common::InProcess;
use sea_orm::ConnectionTrait;
use seckill_bench::audit;
use seckill_bench::history::{self, Client, History, Outcome};
use seckill_bench::provider::{self, PayOptions, PayReport};
use seckill_schema::messages::Kind;
use seckill_schema::{ItemId, UserId};
use seckill_testkit::{Backend, RabbitMqCluster, TestEnv, wait_for};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ITEM: ItemId = ItemId(4_242);
const STOCK: u64 = 200;
const BUYERS: u64 = 360;
const PRICE: i64 = 1_500;
const PAYMENT_TIMEOUT: Duration = Duration::from_secs(3);
/// Share of the orders awaiting payment the provider pays each second: an order sees about three
/// rounds before its timeout, so about half are paid and the stock lasts the whole sale.
const PAY_RATIO: f64 = 0.2;
/// The buyers arrive evenly over this.
const SALE: Duration = Duration::from_secs(30);
/// When the busiest node is killed, and when the second node's RabbitMQ stops, counted from the
/// sale's start; the second stays stopped for `STOPPED`, then the killed node is restarted.
const KILL_AT: Duration = Duration::from_secs(5);
const STOP_AT: Duration = Duration::from_secs(12);
const STOPPED: Duration = Duration::from_secs(5);
/// The latest an unpaid order may close past its timeout: the time quorum was lost, plus the
/// sweeper's bound for a timeout that went missing (twice the timeout, at least 5 s, every 5 s),
/// plus slack.
const MAX_LATENESS: Duration = Duration::from_secs(25);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_rides_out_a_killed_node_and_a_lost_quorum() {
    let test_started = Instant::now();
    let log = Log::install();
    // Declared before the namespace, so dropped after it: the namespace's cleanup needs the broker.
    let cluster = RabbitMqCluster::start().await;
    let booted = test_started.elapsed();
    println!(
        "cluster {} up in {:.1}s: {}",
        cluster.tag(),
        booted.as_secs_f64(),
        cluster.url()
    );
    let mut env = TestEnv::new(Backend::Postgres);
    env.config.amqp_url = cluster.url();
    env.config.payment_timeout = PAYMENT_TIMEOUT;
    let config = env.config.clone();

    let running = InProcess::start(&config).await;
    let gateway = running.gateway.clone();
    let item = common::new_item(ITEM, "cluster test", PRICE, STOCK, 1);
    common::create_item(&gateway, &config, item).await;

    let prefix = format!("{}.", config.namespace);
    let leaders = cluster.leader_counts(&prefix).await;
    println!("queue leaders per node before the sale: {leaders:?}");
    let topology = seckill_infra::broker::Topology::of(&config);
    let delay_queues = Kind::ALL
        .iter()
        .filter(|k| topology.delay(**k).is_some())
        .count();
    assert_eq!(
        leaders.iter().sum::<usize>(),
        Kind::ALL.len() + delay_queues + 1,
        "every queue of the namespace (the event queues, the delay queues and the dead letters) \
         is a quorum queue with a leader"
    );

    // The sale: buyers, the payment provider, and a sampler of the pipeline, all at once.
    let history = History::new();
    let client = Client::new(&history, &config, &gateway).with_timeout(Duration::from_secs(5));
    let sale_started = Instant::now();
    let sale_wall_ms = seckill_schema::snowflake::now_ms() as i64;
    let buyers = tokio::spawn({
        let client = client.clone();
        async move {
            let each = SALE / BUYERS as u32;
            let buys = (1..=BUYERS).map(|u| {
                let client = client.clone();
                async move {
                    tokio::time::sleep(each * (u as u32 - 1)).await;
                    client.buy(UserId(u), ITEM, 1, None).await
                }
            });
            futures_util::future::join_all(buys).await
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_while(
        config.clone(),
        history.clone(),
        sale_started,
        stop.clone(),
    ));
    let prober = tokio::spawn(probe_readiness(gateway.clone(), sale_started, stop.clone()));

    // The payment provider runs beside the faults (on this task: its future is not Send).
    let payer = pay_while(config.clone(), gateway.clone(), stop.clone());
    let run = async {
        // The faults.
        let mut faults: Vec<(f64, String)> = Vec::new();
        let at = |t: Duration| tokio::time::sleep_until((sale_started + t).into());
        // Leaders only move when a node goes: the busiest node now is the busiest at the kill.
        let (killed, led) = cluster.busiest(&prefix).await;
        at(KILL_AT).await;
        cluster.kill(killed);
        faults.push((
            secs(sale_started),
            format!(
                "SIGKILL node {} (led {led} of the namespace's queues)",
                cluster.node_name(killed)
            ),
        ));
        let after_kill = cluster.leader_counts(&prefix).await;
        faults.push((
            secs(sale_started),
            format!("queue leaders per node after the kill: {after_kill:?}"),
        ));
        let stopped = (killed + 1) % cluster.len();
        at(STOP_AT).await;
        cluster.stop_app(stopped).await;
        faults.push((
            secs(sale_started),
            format!(
                "stop_app node {}: one node of three runs, no quorum",
                cluster.node_name(stopped)
            ),
        ));
        at(STOP_AT + STOPPED).await;
        faults.push((
            secs(sale_started),
            format!("start_app node {}", cluster.node_name(stopped)),
        ));
        cluster.start_app(stopped).await;
        // Quorum is back: from here on the sale, the pipeline and the timeouts must go on.
        let quorum_back = secs(sale_started);
        faults.push((
            quorum_back,
            format!(
                "node {} accepts AMQP again: quorum is back",
                cluster.node_name(stopped)
            ),
        ));
        faults.push((
            secs(sale_started),
            format!("restarting node {}", cluster.node_name(killed)),
        ));
        cluster.restart(killed).await;
        faults.push((
            secs(sale_started),
            format!(
                "node {} rejoined and accepts AMQP",
                cluster.node_name(killed)
            ),
        ));
        let after_restart = cluster.leader_counts(&prefix).await;
        faults.push((
            secs(sale_started),
            format!("queue leaders per node: {after_restart:?}"),
        ));

        let outcomes = buyers.await.unwrap();
        let sale_ended = secs(sale_started);
        // Every unpaid order of the sale times out, through the delay queue (or the sweeper).
        let settle = client.settle(Duration::from_secs(30)).await;
        history::wait_for_orders(&history, &config, ITEM, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        wait_for(
            "every order of the sale to be paid or closed",
            Duration::from_secs(60),
            || async {
                let c = counts(&config, 0).await?;
                (c.get("AWAITING_PAYMENT") == 0 && c.get("CREATED") + c.get("STOCK_LOCKED") == 0)
                    .then_some(())
            },
        )
        .await;
        stop.store(true, Ordering::SeqCst);
        (faults, quorum_back, outcomes, sale_ended, settle)
    };
    let ((faults, quorum_back, outcomes, sale_ended, settle), payments) = tokio::join!(run, payer);
    let samples = sampler.await.unwrap();
    let not_ready = prober.await.unwrap();

    let ops = history.ops();
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for op in &ops {
        let key = match &op.outcome {
            Outcome::Accepted(_) => "202".to_owned(),
            other => other.to_string(),
        };
        *answers.entry(key).or_default() += 1;
    }
    let mut checks = history::check(&history, &config, ITEM).await.unwrap();
    let snapshot = audit::Snapshot::load(&config, ITEM).await.unwrap();
    checks.push(audit::callbacks_reflected(&snapshot.orders, &payments));
    let mut queues: Vec<String> = Kind::ALL.iter().map(|k| topology.queue(*k)).collect();
    queues.extend(
        Kind::ALL
            .iter()
            .filter_map(|k| Some(topology.delay_queue_of(*k, topology.delay(*k)?))),
    );
    queues.push(topology.dead());
    let left: BTreeMap<String, u32> = audit::queue_depths(&config.amqp_url, &queues)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|(q, n)| Some((q, n?)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let (latest, lateness) = timeout_lateness(&snapshot.orders, sale_wall_ms);

    // What the test saw.
    println!("faults (s from the sale's start):");
    for (t, what) in &faults {
        println!("  {t:6.1}  {what}");
    }
    println!(
        "sale: {} ops over {sale_ended:.1}s, answers {answers:?}; settled {} outcome_unknown \
         ({} left)",
        ops.len(),
        settle.settled,
        settle.unsettled
    );
    let mut end_states: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &snapshot.orders {
        *end_states.entry(o.status.as_str()).or_default() += 1;
    }
    println!("orders: {end_states:?}");
    println!(
        "payments: {} callbacks accepted, answers {:?}",
        payments.accepted.len(),
        payments.answers
    );
    println!("{lateness}");
    println!(
        "the sweeper sent ORDER_TIMEOUT for {} orders whose delayed one had not come",
        log.swept()
    );
    println!("messages left in the namespace's queues at the end: {left:?}");
    println!(
        "the pipeline, once a second (s: accepted stored overdue timed_out paid | delay queue, timeout queue):"
    );
    let mut next = 0.0;
    for x in &samples {
        if x.t >= next {
            let q = |d: Option<u32>| d.map_or("?".to_owned(), |d| d.to_string());
            println!(
                "  {:5.1}: {:3} {:3} {:3} {:3} {:3} | {:>3} {:>3}",
                x.t,
                x.accepted,
                x.stored,
                x.overdue,
                x.timed_out,
                x.paid,
                q(x.delay_queue),
                q(x.timeout_queue)
            );
            next = x.t.floor() + 1.0;
        }
    }
    let stalls = Stalls::of(&samples);
    println!("{stalls}");
    let spans: Vec<String> = not_ready
        .iter()
        .map(|(a, b)| format!("{a:.1}s..{b:.1}s"))
        .collect();
    println!(
        "the gateway's /readyz was not 200 within 3 s (what a load balancer's check sees) over \
         {:.1}s in all: {spans:?}",
        not_ready.iter().fold(0.0, |sum, (a, b)| sum + (b - a))
    );
    println!("{}", log.summary(sale_started));
    common::print_checks(&checks);

    common::assert_checks_pass(&checks, &history);
    let dead = checks
        .iter()
        .find(|c| c.name == "dead_letters_empty")
        .expect("the audit looks at the dead letters");
    assert!(dead.detail.contains("is empty"), "{}", dead.detail);
    let sold = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Accepted(_)))
        .count();
    assert!(sold as u64 >= STOCK / 2, "only {sold} purchases accepted");
    // The sale went on after the faults: purchases accepted, stored, paid and timed out.
    let late_accepted = ops
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Accepted(_)))
        // The history began a moment before the sale: its clock is the sale's, within a ms.
        .filter(|op| op.span.invoked_ms as f64 / 1000.0 > quorum_back)
        .count();
    let last = samples.last().expect("samples");
    let at_quorum_back = samples
        .iter()
        .rev()
        .find(|s| s.t <= quorum_back)
        .unwrap_or(&samples[0]);
    println!(
        "after quorum came back ({quorum_back:.1}s): {late_accepted} purchases accepted, {} stored, \
         {} timed out, {} paid",
        last.stored - at_quorum_back.stored,
        last.timed_out - at_quorum_back.timed_out,
        last.paid - at_quorum_back.paid
    );
    assert!(late_accepted > 0, "no purchase accepted after the faults");
    // A timeout is late by the time its ORDER_CREATED waited (here, the lost quorum), or, when it
    // went missing, until the sweeper sends it (twice the timeout, at least 5 s, checked every
    // 5 s): never by minutes.
    assert!(
        latest <= MAX_LATENESS.as_millis() as i64,
        "an order timed out {latest} ms past its timeout"
    );
    assert!(
        last.stored > at_quorum_back.stored,
        "no order stored after the faults"
    );
    assert!(
        last.timed_out > at_quorum_back.timed_out,
        "no order timed out after the faults"
    );
    println!(
        "test took {:.1}s (cluster start {:.1}s)",
        test_started.elapsed().as_secs_f64(),
        booted.as_secs_f64()
    );

    let _gateway = running.gateway_task.stop_later();
    running.workers_task.stop().await.unwrap();
    env.cleanup().await;
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// Pays half of the orders awaiting payment every second until `stop`, through the gateway's
/// webhook: payments race the timeouts, and the gateway publishes each `PAYMENT_RESULT` with
/// confirms through whatever nodes are up. Returns every accepted callback.
async fn pay_while(
    config: seckill_infra::Config,
    gateway: String,
    stop: Arc<AtomicBool>,
) -> PayReport {
    let mut all = PayReport::default();
    while !stop.load(Ordering::SeqCst) {
        let mut opts = PayOptions::new(&config, &gateway);
        opts.item = Some(ITEM);
        opts.ratio = PAY_RATIO;
        match provider::pay(&opts).await {
            Ok(r) => {
                all.chosen += r.chosen;
                all.paid += r.paid;
                all.duplicates += r.duplicates;
                all.refunds += r.refunds;
                for (answer, n) in r.answers {
                    *all.answers.entry(answer).or_default() += n;
                }
                // A later callback for the same order (paid again while the first was on its
                // way) means the same: the last one stands.
                all.accepted.extend(r.accepted);
            }
            Err(e) => {
                *all.answers
                    .entry(format!("round failed: {e:#}"))
                    .or_default() += 1;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    all
}

/// The item's orders by status, and how many awaiting payment are overdue by more than a second.
struct Counts(BTreeMap<String, u64>);

impl Counts {
    fn get(&self, status: &str) -> u64 {
        self.0.get(status).copied().unwrap_or(0)
    }
}

async fn counts(config: &seckill_infra::Config, overdue_before_ms: i64) -> Option<Counts> {
    let db = seckill_infra::db::connect(&config.database_url, 1)
        .await
        .ok()?;
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT status, COUNT(*) AS n, \
                 SUM(CASE WHEN updated_at_ms < {overdue_before_ms} THEN 1 ELSE 0 END) AS old \
                 FROM orders WHERE item_id = {} GROUP BY status",
                ITEM.0
            ),
        ))
        .await;
    let _ = db.close().await;
    let mut counts = BTreeMap::new();
    for r in rows.ok()? {
        let status: String = r.try_get("", "status").ok()?;
        let n: i64 = r.try_get("", "n").ok()?;
        let old: i64 = r.try_get("", "old").ok()?;
        if status == "AWAITING_PAYMENT" {
            counts.insert("overdue".to_owned(), old as u64);
        }
        counts.insert(status, n as u64);
    }
    Some(Counts(counts))
}

/// One look at the pipeline.
#[derive(Debug, Clone)]
struct Sample {
    /// Seconds since the sale's start.
    t: f64,
    /// `202`s the buyers had by then.
    accepted: u64,
    /// Orders in the database.
    stored: u64,
    /// Awaiting payment more than a second past their timeout.
    overdue: u64,
    timed_out: u64,
    paid: u64,
    /// Messages ready in the payment timeout's delay queue and in `{ns}.q.order.timeout`
    /// (`None`: the broker did not say within a second).
    delay_queue: Option<u32>,
    timeout_queue: Option<u32>,
}

/// Samples the pipeline every 250 ms until `stop`.
async fn sample_while(
    config: seckill_infra::Config,
    history: History,
    started: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let topology = seckill_infra::broker::Topology::of(&config);
    let queues = [topology.delay_queue(), topology.queue(Kind::OrderTimeout)];
    while !stop.load(Ordering::SeqCst) {
        let depths = tokio::time::timeout(
            Duration::from_secs(1),
            audit::queue_depths(&config.amqp_url, &queues),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
        let depth = |q: &String| depths.get(q).copied().flatten();
        let overdue_before = seckill_schema::snowflake::now_ms() as i64
            - (PAYMENT_TIMEOUT + Duration::from_secs(1)).as_millis() as i64;
        if let Some(c) = counts(&config, overdue_before).await {
            let accepted = history
                .ops()
                .iter()
                .filter(|op| matches!(op.outcome, Outcome::Accepted(_)))
                .count() as u64;
            samples.push(Sample {
                t: secs(started),
                accepted,
                stored: c
                    .0
                    .iter()
                    .filter(|(k, _)| *k != "overdue")
                    .map(|(_, n)| n)
                    .sum(),
                overdue: c.get("overdue"),
                timed_out: c.get("TIMED_OUT"),
                paid: c.get("PAID") + c.get("REFUND_REQUIRED"),
                delay_queue: depth(&queues[0]),
                timeout_queue: depth(&queues[1]),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    samples
}

/// Asks the gateway's `/readyz` every 250 ms until `stop`, giving each answer 3 s (HAProxy's
/// `timeout check` in deploy/haproxy.cfg); returns the spans, in seconds since `started`, when it
/// was not ready.
async fn probe_readiness(
    gateway: String,
    started: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<(f64, f64)> {
    let http = seckill_bench::http::HttpClient::default();
    let url = format!("{gateway}/readyz");
    let mut spans = Vec::new();
    let mut since: Option<f64> = None;
    while !stop.load(Ordering::SeqCst) {
        let at = secs(started);
        let ready = matches!(
            tokio::time::timeout(Duration::from_secs(3), http.get(&url)).await,
            Ok(Ok((status, _))) if status.is_success()
        );
        match (ready, since) {
            (false, None) => since = Some(at),
            (true, Some(from)) => {
                spans.push((from, at));
                since = None;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let Some(from) = since {
        spans.push((from, secs(started)));
    }
    spans
}

/// The longest stretches the pipeline stood still.
struct Stalls {
    /// Orders answered `202` and not yet in the database, while the database's count did not
    /// move: (seconds, from, to).
    storing: (f64, f64, f64),
    /// Orders overdue for their timeout, while no order timed out.
    timeouts: (f64, f64, f64),
    samples: usize,
}

impl Stalls {
    fn of(samples: &[Sample]) -> Stalls {
        fn longest(
            samples: &[Sample],
            waiting: impl Fn(&Sample) -> bool,
            moved: impl Fn(&Sample, &Sample) -> bool,
        ) -> (f64, f64, f64) {
            let mut best = (0.0, 0.0, 0.0);
            let mut since: Option<f64> = None;
            for w in samples.windows(2) {
                let (prev, s) = (&w[0], &w[1]);
                if moved(prev, s) || !waiting(s) {
                    since = None;
                    continue;
                }
                let from = *since.get_or_insert(prev.t);
                if s.t - from > best.0 {
                    best = (s.t - from, from, s.t);
                }
            }
            best
        }
        Stalls {
            storing: longest(
                samples,
                |s| s.accepted > s.stored,
                |a, b| b.stored > a.stored,
            ),
            timeouts: longest(samples, |s| s.overdue > 0, |a, b| b.timed_out > a.timed_out),
            samples: samples.len(),
        }
    }
}

impl std::fmt::Display for Stalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, a, b) = self.storing;
        writeln!(
            f,
            "longest stall storing accepted orders: {s:.1}s ({a:.1}s..{b:.1}s), over {} samples",
            self.samples
        )?;
        let (s, a, b) = self.timeouts;
        write!(
            f,
            "longest stall of timeouts with orders overdue: {s:.1}s ({a:.1}s..{b:.1}s)"
        )
    }
}

/// How late the timed-out orders closed, past their payment timeout: through the delay queue it
/// is well under a second; the sweeper closes what never came at twice the timeout (at least 5 s
/// past it). With the late ones' creation and closing times, in s from the sale's start.
fn timeout_lateness(
    orders: &[seckill_schema::entity::orders::Model],
    sale_wall_ms: i64,
) -> (i64, String) {
    let mut late: Vec<(i64, &seckill_schema::entity::orders::Model)> = orders
        .iter()
        .filter(|o| o.status == "TIMED_OUT")
        .map(|o| {
            let late = o.updated_at_ms - o.created_at_ms - PAYMENT_TIMEOUT.as_millis() as i64;
            (late, o)
        })
        .collect();
    late.sort_by_key(|(l, o)| (*l, o.id));
    if late.is_empty() {
        return (0, "no order timed out".into());
    }
    let q = |p: f64| late[((late.len() - 1) as f64 * p).round() as usize].0;
    let over = |ms: i64| late.iter().filter(|(l, _)| *l > ms).count();
    let mut out = format!(
        "{} orders timed out, closed past their timeout by p50 {} ms, p90 {} ms, max {} ms; \
         {} more than 2 s late, {} more than 5 s late",
        late.len(),
        q(0.5),
        q(0.9),
        q(1.0),
        over(2_000),
        over(5_000)
    );
    let at = |ms: i64| (ms - sale_wall_ms) as f64 / 1000.0;
    for (l, o) in late.iter().filter(|(l, _)| *l > 2_000) {
        out.push_str(&format!(
            "\n  order {} created at {:.1}s, due {:.1}s, closed {:.1}s ({:.1}s late)",
            o.id,
            at(o.created_at_ms),
            at(o.created_at_ms) + PAYMENT_TIMEOUT.as_secs_f64(),
            at(o.updated_at_ms),
            *l as f64 / 1000.0
        ));
    }
    (q(1.0), out)
}

struct Logged {
    at: Instant,
    level: tracing::Level,
    /// The message, with the consumer's message type when the event names one.
    text: String,
    error: Option<String>,
    /// The sweeper's count of orders it sent ORDER_TIMEOUT for.
    orders: Option<u64>,
}

/// The warnings and errors the gateway and the workers logged, and their `consuming` lines (a
/// consumer started, or restarted after its connection broke), with when they came.
#[derive(Clone)]
struct Log {
    started: Instant,
    events: Arc<Mutex<Vec<Logged>>>,
}

impl Log {
    fn install() -> Log {
        use tracing_subscriber::layer::SubscriberExt as _;
        let log = Log {
            started: Instant::now(),
            events: Arc::default(),
        };
        let subscriber = tracing_subscriber::registry().with(log.clone());
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber per test");
        log
    }

    /// The orders the workers' sweeper sent `ORDER_TIMEOUT` for, their delayed one not having come.
    fn swept(&self) -> u64 {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|e| e.text.starts_with("sent ORDER_TIMEOUT"))
            .filter_map(|e| e.orders)
            .sum()
    }

    /// Counts by message, each with its times in seconds since `since` and its first error.
    fn summary(&self, since: Instant) -> String {
        let events = self.events.lock().unwrap();
        // (level, message) → (times, first error)
        type Seen<'a> = (Vec<f64>, Option<&'a str>);
        let mut by: BTreeMap<(String, &str), Seen<'_>> = BTreeMap::new();
        for e in events.iter() {
            let t = e.at.saturating_duration_since(since).as_secs_f64()
                - since.saturating_duration_since(e.at).as_secs_f64();
            let entry = by.entry((e.level.to_string(), &e.text)).or_default();
            entry.0.push(t);
            entry.1 = entry.1.or(e.error.as_deref());
        }
        let mut out = format!(
            "the processes logged (times in s from the sale's start, {:.1}s into the test):\n",
            since.duration_since(self.started).as_secs_f64()
        );
        for ((level, text), (times, error)) in by {
            let shown: Vec<String> = times.iter().take(10).map(|t| format!("{t:.1}")).collect();
            let more = if times.len() > 10 { " …" } else { "" };
            out.push_str(&format!(
                "  {level:5} ×{:<4} {text} at [{}{more}]\n",
                times.len(),
                shown.join(", ")
            ));
            if let Some(error) = error {
                let error: String = error.chars().take(240).collect();
                out.push_str(&format!("               first error: {error}\n"));
            }
        }
        out
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Log {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let meta = event.metadata();
        let level = *meta.level();
        if !meta.target().starts_with("seckill") || level > tracing::Level::INFO {
            return;
        }
        let mut message = Message::default();
        event.record(&mut message);
        let keep = level <= tracing::Level::WARN
            || message.text == "consuming"
            || message.text.starts_with("sent ORDER_TIMEOUT");
        if keep {
            let orders = message.orders;
            let text = match (message.kind, message.orders) {
                (Some(kind), _) => format!("{} [{kind}]", message.text),
                (None, Some(orders)) => format!("{} [{orders} orders]", message.text),
                (None, None) => message.text,
            };
            self.events.lock().unwrap().push(Logged {
                at: Instant::now(),
                level,
                text,
                error: message.error,
                orders,
            });
        }
    }
}

/// An event's message, and its `kind` (the consumer's message type) and `error` fields, if any.
#[derive(Default)]
struct Message {
    text: String,
    kind: Option<String>,
    error: Option<String>,
    orders: Option<u64>,
}

impl tracing::field::Visit for Message {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "orders" {
            self.orders = Some(value);
        }
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        if field.name() == "orders" {
            self.orders = u64::try_from(value).ok();
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.text = format!("{value:?}"),
            "kind" => self.kind = Some(format!("{value:?}").trim_matches('"').to_owned()),
            "error" => self.error = Some(format!("{value:?}")),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "message" => self.text = value.to_owned(),
            "kind" => self.kind = Some(value.to_owned()),
            "error" => self.error = Some(value.to_owned()),
            _ => {}
        }
    }
}
