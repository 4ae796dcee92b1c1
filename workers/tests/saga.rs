//! The order saga end to end, against the real Redis, RabbitMQ and database: the happy path with
//! payments and timeouts, compensation, duplicated messages, crashes, poison messages and broker
//! connections dropped mid-drain. Every test checks the contract's invariants at the end.

mod common;

use common::{DRAIN, Stack, WorkersMode, n, stack_tests};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use sea_orm::ConnectionTrait;
use seckill_schema::OrderId;
use seckill_testkit::{Backend, wait_for};
use std::collections::HashSet;
use std::time::Duration;

async fn half_paid_half_timed_out(backend: Backend) {
    let stack = Stack::start(backend, 2, WorkersMode::InProcess).await;
    stack.create_item(1, 200, 1).await;
    let first = stack.buy_many(1..=1000, 1, 100).await;
    assert_eq!(first.len(), 200, "exactly the stock is sold");
    let mut accepted: HashSet<OrderId> = first.iter().copied().collect();

    // Pay half as soon as they await payment; the other half times out (2 s).
    let to_pay: HashSet<OrderId> = first.iter().copied().step_by(2).collect();
    stack.pay_as_they_await(1, &to_pay).await;
    let c = stack
        .wait_counts(1, "100 PAID and 100 TIMED_OUT", DRAIN, |c| {
            n(c, "PAID") == 100 && n(c, "TIMED_OUT") == 100
        })
        .await;
    assert_eq!(c.values().sum::<i64>(), 200, "{c:?}");
    // The units go back to Redis once the database has the timeouts: soon after, not with them.
    wait_for(
        "timed-out units back in Redis",
        Duration::from_secs(10),
        || async { (stack.remaining(1).await == 100).then_some(()) },
    )
    .await;

    // The returned units sell again, to new buyers.
    let again = wait_for(
        "returned units on sale again",
        Duration::from_secs(5),
        || async {
            let ids = stack.buy_many(2001..=2001, 1, 1).await;
            (!ids.is_empty()).then_some(ids)
        },
    )
    .await;
    let rest = stack.buy_many(2002..=2300, 1, 50).await;
    assert_eq!(
        again.len() + rest.len(),
        100,
        "exactly the returned units sell again"
    );
    accepted.extend(again.iter().chain(&rest).copied());
    stack
        .wait_counts(1, "the second wave timed out", DRAIN, |c| {
            n(c, "TIMED_OUT") == 200 && n(c, "PAID") == 100
        })
        .await;
    stack.check_invariants(1, &accepted).await;
}

stack_tests! {
    end_to_end_half_paid_half_timed_out_postgres => half_paid_half_timed_out(Backend::Postgres);
    end_to_end_half_paid_half_timed_out_mariadb => half_paid_half_timed_out(Backend::MySql);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compensation_when_the_database_holds_less_stock_than_redis() {
    let stack = Stack::start(Backend::Postgres, 60, WorkersMode::None).await;
    stack.create_item(7, 50, 1).await;
    // The database lost 20 units Redis still sells.
    stack
        .db
        .execute_unprepared("UPDATE items SET stock = 30, available = 30 WHERE id = 7")
        .await
        .unwrap();
    let mut stack = stack;
    stack.start_workers_in_process().await;
    let ids = stack.buy_many(1..=80, 7, 40).await;
    assert_eq!(ids.len(), 50);
    let c = stack
        .wait_counts(7, "30 awaiting payment, 20 failed", DRAIN, |c| {
            n(c, "AWAITING_PAYMENT") == 30 && n(c, "FAILED") == 20
        })
        .await;
    assert_eq!(c.values().sum::<i64>(), 50);
    wait_for("failed units back in Redis", DRAIN, || async {
        (stack.remaining(7).await == 20).then_some(())
    })
    .await;
    // The buyers whose orders failed may buy again.
    let failed = stack.order_ids_with_status(7, "FAILED").await;
    assert_eq!(failed.len(), 20);
    let dead = stack.queue_depth(&stack.topology().dead()).await;
    assert_eq!(dead, 0);
    let row = stack
        .row("SELECT available, locked, sold FROM items WHERE id = 7")
        .await;
    assert_eq!(row.try_get::<i64>("", "available").unwrap(), 0);
    assert_eq!(row.try_get::<i64>("", "locked").unwrap(), 30);
}

/// A tap on `{ns}.events` publishes every message once more, so each handler sees each event twice.
async fn duplicate_everything(stack: &Stack) -> tokio::task::JoinHandle<()> {
    let conn = seckill_infra::broker::connect(&stack.env.config.amqp_url, "test-duplicator")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let exchange = stack.topology().exchange();
    let queue = seckill_testkit::bind_own_queue(&ch, &exchange, "#").await;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "dup".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    tokio::spawn(async move {
        let _conn = conn;
        while let Some(Ok(d)) = consumer.next().await {
            let is_copy = d
                .properties
                .headers()
                .as_ref()
                .is_some_and(|h| h.inner().contains_key("x-test-copy"));
            if !is_copy {
                let mut headers = FieldTable::default();
                headers.insert("x-test-copy".into(), AMQPValue::Boolean(true));
                let _ = ch
                    .basic_publish(
                        exchange.as_str().into(),
                        d.routing_key.clone(),
                        BasicPublishOptions::default(),
                        &d.data,
                        seckill_infra::broker::persistent().with_headers(headers),
                    )
                    .await;
            }
            let _ = d.ack(BasicAckOptions::default()).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_delivered_twice_changes_nothing() {
    let stack = Stack::start(Backend::Postgres, 2, WorkersMode::InProcess).await;
    let tap = duplicate_everything(&stack).await;
    stack.create_item(3, 40, 1).await;
    let ids = stack.buy_many(1..=100, 3, 50).await;
    assert_eq!(ids.len(), 40);
    let to_pay: HashSet<OrderId> = ids.iter().copied().step_by(2).collect();
    stack.pay_as_they_await(3, &to_pay).await;
    stack
        .wait_counts(3, "20 PAID and 20 TIMED_OUT", DRAIN, |c| {
            n(c, "PAID") == 20 && n(c, "TIMED_OUT") == 20
        })
        .await;
    // Let the duplicates of the last events arrive too, then check nothing moved twice.
    wait_for("duplicates drained", DRAIN, || async {
        let t = stack.topology();
        let mut total = 0;
        for &k in seckill_schema::Kind::ALL {
            total += stack.queue_depth(&t.queue(k)).await;
        }
        (total == 0).then_some(())
    })
    .await;
    let history = stack
        .count("SELECT COUNT(*) AS n FROM inventory_history WHERE item_id = 3")
        .await;
    assert_eq!(
        history,
        40 + 20 + 20,
        "one lock per order, one sale or release each: nothing twice"
    );
    let payments = stack
        .count("SELECT COUNT(*) AS n FROM payments WHERE status = 'SUCCEEDED' AND applied = TRUE")
        .await;
    assert_eq!(payments, 20);
    stack.check_invariants(3, &ids.into_iter().collect()).await;
    tap.abort();
}

async fn sigkill_three_times(backend: Backend) {
    let mut stack = Stack::start(backend, 600, WorkersMode::ChildProcess).await;
    stack.create_item(5, 2000, 1).await;
    let ids = stack.buy_many(1..=2000, 5, 100).await;
    assert_eq!(ids.len(), 2000);
    let mut last = 0;
    for round in 0..3 {
        // Let it make some progress, then kill it mid-drain and start it again. A fast pipeline
        // may have drained everything already: then the kill finds it idle, and the restart must
        // still leave every order as it was.
        let progressed = stack
            .wait_counts(5, "progress before the kill", DRAIN, |c| {
                let awaiting = n(c, "AWAITING_PAYMENT");
                awaiting > last || awaiting == 2000
            })
            .await;
        last = n(&progressed, "AWAITING_PAYMENT");
        stack.sigkill_workers().await;
        eprintln!("round {round}: killed at {progressed:?}");
        stack.spawn_workers().await;
    }
    stack.wait_awaiting_payment(5, 2000).await;
    let history = stack
        .count("SELECT COUNT(*) AS n FROM inventory_history WHERE item_id = 5")
        .await;
    assert_eq!(history, 2000, "every order locked exactly once");
    stack.check_invariants(5, &ids.into_iter().collect()).await;
    stack.sigkill_workers().await;
}

stack_tests! {
    sigkill_the_workers_three_times_mid_drain_postgres => sigkill_three_times(Backend::Postgres);
    sigkill_the_workers_three_times_mid_drain_mariadb => sigkill_three_times(Backend::MySql);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_unknown_messages_go_to_the_dead_letter_queue() {
    let stack = Stack::start(Backend::Postgres, 600, WorkersMode::InProcess).await;
    let t = stack.topology();
    let conn = seckill_infra::broker::connect(&stack.env.config.amqp_url, "test-poison")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for (key, body) in [
        ("order.created", &b"not json at all"[..]),
        (
            "inventory.lock",
            &br#"{"type":"NO_SUCH_TYPE","events":[]}"#[..],
        ),
        (
            "payment.prepare",
            &br#"{"type":"ORDER_CREATED","events":[]}"#[..],
        ),
        (
            "order.timeout",
            &br#"{"type":"ORDER_TIMEOUT","events":[{"order_id":"x"}]}"#[..],
        ),
    ] {
        ch.basic_publish(
            t.exchange().as_str().into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            seckill_infra::broker::persistent(),
        )
        .await
        .unwrap();
    }
    stack.create_item(9, 30, 1).await;
    stack.buy_awaiting_payment(1..=50, 9, 25, 30).await;
    wait_for("four dead letters", DRAIN, || async {
        (stack.queue_depth(&t.dead()).await == 4).then_some(())
    })
    .await;
    let _ = conn.close(200, "bye".into()).await;
}

/// Closes every broker connection of this test's namespace, as `rabbitmqctl close_connection`.
fn close_our_connections(namespace: &str) -> usize {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in text.lines() {
        if line.contains(namespace) {
            let pid = line.split('\t').next().unwrap_or_default();
            let status = std::process::Command::new("rabbitmqctl")
                .args(["-q", "close_connection", pid, "closed by the test"])
                .status()
                .expect("rabbitmqctl");
            if status.success() {
                closed += 1;
            }
        }
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_recover_when_the_broker_closes_their_connections_mid_drain() {
    let stack = Stack::start(Backend::Postgres, 600, WorkersMode::InProcess).await;
    stack.create_item(11, 1500, 1).await;
    let ids = stack.buy_many(1..=1500, 11, 100).await;
    assert_eq!(ids.len(), 1500);
    stack
        .wait_counts(11, "some progress", DRAIN, |c| c.values().sum::<i64>() > 0)
        .await;
    let closed = close_our_connections(&stack.env.config.namespace);
    assert!(
        closed >= 7,
        "closed {closed} connections; expected the consumers' and publishers'"
    );
    stack.wait_awaiting_payment(11, 1500).await;
    stack.check_invariants(11, &ids.into_iter().collect()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_returns_the_stock_and_the_buyer_may_buy_again() {
    let stack = Stack::start(Backend::Postgres, 600, WorkersMode::InProcess).await;
    stack.create_item(13, 1, 1).await;
    let id = stack.buy_accepted(1, 13).await;
    let (status, body) = stack.cancel(1, id).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "CANCEL_REQUESTED");
    stack
        .wait_counts(13, "cancelled", DRAIN, |c| n(c, "CANCELLED") == 1)
        .await;
    wait_for("unit back", DRAIN, || async {
        (stack.remaining(13).await == 1).then_some(())
    })
    .await;
    let (status, body) = stack.cancel(1, id).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "not_cancellable");
    let again = wait_for("the buyer buys again", Duration::from_secs(5), || async {
        let ids = stack.buy_many(1..=1, 13, 1).await;
        (!ids.is_empty()).then_some(ids)
    })
    .await;
    stack.wait_awaiting_payment(13, 1).await;
    stack
        .check_invariants(13, &[id, again[0]].into_iter().collect())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_while_the_database_is_down_and_flow_when_it_is_back() {
    let mut stack = Stack::start(Backend::Postgres, 600, WorkersMode::None).await;
    // The workers reach PostgreSQL through a proxy this test can cut; the test itself does not.
    let proxy = common::Cuttable::start("127.0.0.1:5432".parse().unwrap()).await;
    let mut config = stack.env.config.clone();
    config.database_url = config
        .database_url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    stack.start_workers_with(config).await;
    stack.create_item(15, 400, 1).await;
    let first = stack.buy_many(1..=100, 15, 50).await;
    stack.wait_awaiting_payment(15, 100).await;

    proxy.cut();
    let retries = || {
        let text = seckill_infra::telemetry::metrics().render();
        text.lines()
            .filter(|l| {
                l.starts_with("seckill_worker_messages_total") && l.contains("outcome=\"retry\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = retries();
    let second = stack.buy_many(101..=200, 15, 50).await;
    assert_eq!(
        second.len(),
        100,
        "the gateway sells while the database is down"
    );
    wait_for(
        "the workers retrying against the dead database",
        DRAIN,
        || async { (retries() >= before + 3.0).then_some(()) },
    )
    .await;
    let c = stack.counts(15).await;
    assert_eq!(
        c.values().sum::<i64>(),
        100,
        "nothing of the second wave was stored: {c:?}"
    );
    assert_eq!(
        stack.queue_depth(&stack.topology().dead()).await,
        0,
        "waiting messages are not dead-lettered"
    );

    proxy.restore();
    stack.wait_awaiting_payment(15, 200).await;
    stack
        .check_invariants(15, &first.into_iter().chain(second).collect())
        .await;
}
