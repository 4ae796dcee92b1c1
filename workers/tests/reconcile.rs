//! The safety nets, against the real Redis, RabbitMQ and PostgreSQL: the sweeper closes orders
//! whose timeout was lost with a delay queue deleted by hand, and the reconciler reports a drift
//! between Redis and the database once the item is quiet, and clears it when it goes away.
//!
//! The workers run in process with the reconciler's and the sweeper's intervals shortened
//! (`Workers::with_intervals`); everything else is production's.

mod common;

use common::{DRAIN, Stack, WorkersMode, n, stack_tests};
use fred::prelude::*;
use lapin::options::QueueDeleteOptions;
use sea_orm::{ConnectionTrait, Statement};
use seckill_schema::ItemId;
use seckill_testkit::{Backend, ServerTask, wait_for};
use seckill_workers::reconcile::{self, Intervals};
use std::time::Duration;

const FAST: Intervals = Intervals {
    reconcile: Duration::from_millis(200),
    sweep: Duration::from_millis(200),
    adjustment_age: reconcile::ADJUSTMENT_AGE,
};

/// In-process workers with intervals of the test's choosing, on the stack's configuration.
struct Workers {
    port: u16,
    task: ServerTask<anyhow::Result<()>>,
}

impl Workers {
    async fn start(stack: &Stack, intervals: Intervals) -> Workers {
        let workers = seckill_workers::Workers::build(stack.env.config.clone())
            .await
            .expect("workers start")
            .with_intervals(intervals);
        Workers {
            port: workers.port(),
            task: ServerTask::spawn(|shutdown| workers.run(shutdown)),
        }
    }

    async fn stop(self) {
        self.task.stop().await.expect("workers stop cleanly");
    }

    /// One series of the workers' `/metrics`, e.g. `name{label="v"}` (`None`: not exported).
    async fn metric(&self, stack: &Stack, series: &str) -> Option<f64> {
        let body = stack
            .http
            .get(format!("http://127.0.0.1:{}/metrics", self.port))
            .send()
            .await
            .expect("/metrics")
            .text()
            .await
            .expect("/metrics body");
        body.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }
}

/// The sweeper tests read one process-wide counter: one at a time.
static SWEEPER_COUNTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn orders_close_without_their_delay_queue(backend: Backend, item: u64) {
    const TIMEOUT_SECS: u64 = 5;
    let _counter = SWEEPER_COUNTER.lock().await;
    let stack = Stack::start(backend, TIMEOUT_SECS, WorkersMode::None).await;
    let workers = Workers::start(&stack, FAST).await;
    stack.create_item(item, 10, 1).await;
    // Once they await payment, each order's ORDER_TIMEOUT waits in the delay queue (published
    // with LOCK_INVENTORY).
    let accepted = stack.buy_awaiting_payment(1..=4, item, 4, 4).await;
    let swept_before = workers
        .metric(&stack, "seckill_sweeper_closed_total")
        .await
        .unwrap_or(0.0);

    // An operator deletes the delay queue: the timeouts in it are gone with it.
    let conn = seckill_infra::broker::connect(&stack.env.config.amqp_url, "test-operator")
        .await
        .expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    let delay = stack.topology().delay_queue();
    let deleted = ch
        .queue_delete(delay.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("deleting the delay queue");
    let _ = conn.close(200, "bye".into()).await;
    assert!(
        deleted >= 1,
        "the orders' timeouts were still waiting in the delay queue"
    );
    assert_eq!(
        stack.counts(item).await.get("AWAITING_PAYMENT"),
        Some(&4),
        "nothing closed them before the queue went"
    );

    // The sweeper closes them anyway, once they are well past their deadline.
    let c = stack
        .wait_counts(item, "the 4 orders timed out", DRAIN, |c| {
            n(c, "TIMED_OUT") == 4
        })
        .await;
    assert_eq!(c.values().sum::<i64>(), 4, "{c:?}");
    let rows = stack
        .db
        .query_all_raw(Statement::from_sql_and_values(
            stack.db.get_database_backend(),
            stack
                .sql("SELECT created_at_ms, updated_at_ms, close_reason FROM orders WHERE item_id = $1")
                .sql,
            [(item as i64).into()],
        ))
        .await
        .expect("orders");
    let well_past = (TIMEOUT_SECS * 1000) as i64
        + reconcile::grace(Duration::from_secs(TIMEOUT_SECS)).as_millis() as i64;
    for r in rows {
        let created: i64 = r.try_get("", "created_at_ms").unwrap();
        let closed: i64 = r.try_get("", "updated_at_ms").unwrap();
        let reason: Option<String> = r.try_get("", "close_reason").unwrap();
        assert_eq!(reason.as_deref(), Some("payment_timeout"));
        assert!(
            closed - created >= well_past,
            "closed by the sweeper {} ms after creation, not by the lost timeout",
            closed - created
        );
    }
    let swept = workers
        .metric(&stack, "seckill_sweeper_closed_total")
        .await
        .expect("the sweeper's counter");
    assert_eq!(swept - swept_before, 4.0, "each order sent once");

    // The stock is whole again, in Redis and in the database, and every invariant holds.
    wait_for("the units back in Redis", DRAIN, || async {
        (stack.remaining(item).await == 10).then_some(())
    })
    .await;
    assert_eq!(stack.db_item(item).await, (10, 10, 0, 0));
    stack.check_invariants(item, &accepted).await;

    // And the delay queue is back, so the next orders' timeouts have somewhere to wait.
    wait_for("the delay queue declared again", DRAIN, || async {
        seckill_testkit::queue_depth(&stack.env.config.amqp_url, &delay)
            .await
            .map(|_| ())
    })
    .await;
    workers.stop().await;
}

/// `item` is the drift gauge's label, which every test of this process shares: one per test.
async fn drift_reported_once_quiet_and_cleared(backend: Backend, item: u64) {
    let stack = Stack::start(backend, 60, WorkersMode::None).await;
    let workers = Workers::start(&stack, FAST).await;
    stack.create_item(item, 20, 1).await;
    let accepted = stack.buy_awaiting_payment(1..=3, item, 3, 3).await;
    let gauge = format!("seckill_reconcile_drift{{item=\"{item}\"}}");

    // Quiet and consistent: passes go by, nothing is reported.
    let runs = workers
        .metric(&stack, "seckill_reconcile_runs_total")
        .await
        .unwrap_or(0.0);
    wait_for("a few reconciliation passes", DRAIN, || async {
        let now = workers
            .metric(&stack, "seckill_reconcile_runs_total")
            .await?;
        (now >= runs + 5.0).then_some(())
    })
    .await;
    assert_eq!(
        workers.metric(&stack, &gauge).await.unwrap_or(0.0),
        0.0,
        "no drift while Redis and the database agree"
    );
    // What a dashboard shows: stock left, orders by status (the recorder is process-wide: another
    // test's reconciler may have written the count of its own database last), the drain lag, and readiness.
    let remaining = format!("seckill_item_remaining{{item=\"{item}\"}}");
    assert_eq!(workers.metric(&stack, &remaining).await, Some(17.0));
    for at_least_3 in [
        "seckill_orders{status=\"AWAITING_PAYMENT\"}",
        "seckill_order_drain_seconds_count",
    ] {
        let value = workers.metric(&stack, at_least_3).await;
        assert!(value.is_some_and(|n| n >= 3.0), "{at_least_3}: {value:?}");
    }
    assert_eq!(workers.metric(&stack, "seckill_ready").await, Some(1.0));

    // Someone changes Redis behind the system's back.
    let key = stack.keys.item(ItemId(item));
    let _: i64 = stack
        .redis
        .hincrby(key.as_str(), "remaining", 3)
        .await
        .unwrap();
    wait_for("the drift reported", Duration::from_secs(10), || async {
        (workers.metric(&stack, &gauge).await? == 3.0).then_some(())
    })
    .await;

    // Undone: the gauge goes back to 0.
    let _: i64 = stack
        .redis
        .hincrby(key.as_str(), "remaining", -3)
        .await
        .unwrap();
    wait_for("the drift cleared", Duration::from_secs(10), || async {
        (workers.metric(&stack, &gauge).await? == 0.0).then_some(())
    })
    .await;
    stack.check_invariants(item, &accepted).await;
    workers.stop().await;
}

stack_tests! {
    the_sweeper_closes_orders_whose_delay_queue_was_deleted_postgres =>
        orders_close_without_their_delay_queue(Backend::Postgres, 51);
    the_sweeper_closes_orders_whose_delay_queue_was_deleted_mariadb =>
        orders_close_without_their_delay_queue(Backend::MySql, 52);
    the_reconciler_reports_a_drift_once_quiet_and_clears_it_postgres =>
        drift_reported_once_quiet_and_cleared(Backend::Postgres, 61);
    the_reconciler_reports_a_drift_once_quiet_and_clears_it_mariadb =>
        drift_reported_once_quiet_and_cleared(Backend::MySql, 62);
}
