//! A Redis that comes back older than the database saw it (a failover to a replica that missed
//! writes, or an old file restored) is noticed by its write generation and rebuilt from the
//! database: returned units and sales it missed are not lost, and the invariants hold.

mod common;

use common::{Stack, WorkersMode, n};
use fred::prelude::*;
use fred::types::Value;
use seckill_schema::{ItemId, OrderStatus};
use seckill_testkit::{Backend, wait_for};
use std::time::Duration;

const ITEM: u64 = 31;
const STOCK: i64 = 50;

/// The gene's keys that a replica which stopped replicating here would hold as they are now.
fn gene_keys(stack: &Stack) -> Vec<String> {
    let item = ItemId(ITEM);
    vec![
        stack.keys.item(item),
        stack.keys.buyers(item),
        stack.keys.state_of_item(item),
    ]
}

async fn dump(stack: &Stack) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for key in gene_keys(stack) {
        let v: Value = stack
            .redis
            .custom(fred::cmd!("DUMP"), vec![key.clone()])
            .await
            .unwrap();
        out.push((key, v));
    }
    out
}

async fn restore(stack: &Stack, dumped: Vec<(String, Value)>) {
    for (key, v) in dumped {
        let _: Value = stack
            .redis
            .custom(
                fred::cmd!("RESTORE"),
                vec![Value::from(key), Value::from(0), v, Value::from("REPLACE")],
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_older_than_the_database_is_rebuilt_and_nothing_is_lost() {
    let stack = Stack::start(Backend::Postgres, 600, WorkersMode::InProcess).await;
    stack.create_item(ITEM, STOCK, 1).await;
    let mut first = Vec::new();
    for user in 1..=10 {
        let (status, body) = stack.buy(user, ITEM).await;
        assert_eq!(status, 202, "{body}");
        let id: u64 = body["order_id"].as_str().unwrap().parse().unwrap();
        first.push((user, seckill_schema::OrderId(id)));
    }
    stack
        .wait_counts(ITEM, "10 awaiting payment", Duration::from_secs(60), |c| {
            n(c, "AWAITING_PAYMENT") == 10
        })
        .await;
    // What a replica that stops replicating now keeps.
    let stale = dump(&stack).await;

    // The master goes on: ten more sales, and three cancels whose units come back.
    let second = stack.buy_many(11..=20, ITEM, 10).await;
    assert_eq!(second.len(), 10);
    stack
        .wait_counts(ITEM, "20 awaiting payment", Duration::from_secs(60), |c| {
            n(c, "AWAITING_PAYMENT") == 20
        })
        .await;
    for (user, order) in first.iter().take(3) {
        assert_eq!(stack.cancel(*user, *order).await.0, 202);
    }
    stack
        .wait_counts(ITEM, "three cancelled", Duration::from_secs(60), |c| {
            n(c, OrderStatus::Cancelled.as_str()) == 3
        })
        .await;
    wait_for(
        "the units back in Redis",
        Duration::from_secs(30),
        || async { (stack.remaining(ITEM).await == STOCK - 17).then_some(()) },
    )
    .await;

    // The failover: Redis's state of the gene is the stale replica's. Its remaining says 40
    // (ten sold, nothing back), its buyers ten, and its generation is below the database's.
    restore(&stack, stale).await;
    assert_eq!(stack.remaining(ITEM).await, STOCK - 10);

    // Noticed and rebuilt from the database: 17 units held by live orders, 33 left to sell.
    wait_for(
        "the stale gene to be rebuilt",
        Duration::from_secs(30),
        || async { (stack.remaining(ITEM).await == STOCK - 17).then_some(()) },
    )
    .await;
    // It sells again, and a cancelled buyer may buy again while the others may not.
    let again = stack.buy(1, ITEM).await;
    assert_eq!(again.0, 202, "{again:?}");
    let refused = stack.buy(15, ITEM).await;
    assert_eq!(refused.1["error"], "limit_reached", "{refused:?}");
    stack
        .wait_counts(ITEM, "18 awaiting payment", Duration::from_secs(60), |c| {
            n(c, "AWAITING_PAYMENT") == 18
        })
        .await;
    stack.audit(ITEM, 21).await;
}
