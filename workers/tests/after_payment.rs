//! The order's life after payment, through the real gateway, broker, database and workers:
//! shipping and completion (by the buyer, or on its own), refunds confirmed by the provider, a
//! refund racing the shipment, and the same callback twice.

mod common;

use common::{DRAIN, Stack, WorkersMode, order_status, wait_stored};
use sea_orm::ConnectionTrait;
use seckill_schema::OrderId;
use seckill_testkit::{Backend, wait_for};
use std::collections::HashSet;
use std::time::Duration;

const PRICE: i64 = 1999;

/// Waits until the order has `status` in the database, then in the read model (which the gateway
/// checks a step against).
async fn wait_status(stack: &Stack, order: OrderId, status: &str) {
    wait_stored(stack, order, status).await;
    stack.wait_shown(order, status).await;
}

/// `user` buys one unit of `item` and pays for it with `pay_<order>`.
async fn paid_order(stack: &Stack, item: u64, user: u64) -> OrderId {
    let ids = stack.buy_many(user..=user, item, 1).await;
    assert_eq!(ids.len(), 1, "user {user} bought");
    let id = ids[0];
    wait_status(stack, id, "AWAITING_PAYMENT").await;
    assert_eq!(stack.pay(id, &format!("pay_{id}"), PRICE, true).await, 200);
    wait_status(stack, id, "PAID").await;
    id
}

/// The provider's `REFUNDED` callback for the order's payment `pay_<order>`, answered `200`.
async fn provider_refunds(stack: &Stack, order: OrderId) {
    let answer = stack
        .callback(order, &format!("pay_{order}"), PRICE, "REFUNDED")
        .await;
    assert_eq!(answer, 200);
}

async fn history_causes(stack: &Stack, order: OrderId) -> Vec<String> {
    stack
        .db
        .query_all_raw(stack.sql(&format!(
            "SELECT cause FROM inventory_history WHERE order_id = {} ORDER BY id",
            order.0
        )))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.try_get("", "cause").unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_orders_complete_by_the_buyer_or_on_their_own() {
    let stack = Stack::start_configured(Backend::Postgres, WorkersMode::InProcess, |c| {
        c.payment_timeout = Duration::from_secs(600);
        c.auto_complete = Duration::from_secs(2);
    })
    .await;
    stack.create_item(1, 10, 1).await;
    let (a, b) = (
        paid_order(&stack, 1, 1).await,
        paid_order(&stack, 1, 2).await,
    );

    // Not shipped yet: nothing to confirm; the buyer cannot ship.
    let (status, body) = stack.order_step(1, a, "confirm").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("invalid_transition"))
    );
    let (status, _) = stack.order_step(1, a, "ship").await;
    assert_eq!(status, 404, "no buyer route ships");

    let (status, body) = stack.ship(a).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["order_id"], a.to_string());
    wait_status(&stack, a, "SHIPPED").await;
    let (status, body) = stack.ship(a).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("invalid_transition"))
    );
    // Someone else's order is not found, shipped or not.
    assert_eq!(stack.order_step(2, a, "confirm").await.0, 404);
    let (status, _) = stack.order_step(1, a, "confirm").await;
    assert_eq!(status, 202);
    wait_status(&stack, a, "COMPLETED").await;

    // The other is never confirmed: it completes after SECKILL_AUTO_COMPLETE_SECS.
    assert_eq!(stack.ship(b).await.0, 202);
    wait_status(&stack, b, "SHIPPED").await;
    wait_status(&stack, b, "COMPLETED").await;
    // The read model follows.
    let view = stack.get_order(2, b).await;
    assert_eq!(view["status"], "COMPLETED");
    let (status, _) = stack.order_step(2, b, "refund").await;
    assert_eq!(status, 409, "a completed order is not refunded");

    stack.check_and_audit(1, &HashSet::from([a, b])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_returns_the_units_once_and_they_sell_again() {
    let stack = Stack::start(Backend::Postgres, 600, WorkersMode::InProcess).await;
    stack.create_item(1, 1, 1).await;
    let a = paid_order(&stack, 1, 1).await;
    // Sold out while paid.
    assert!(stack.buy_many(2..=2, 1, 1).await.is_empty());

    let (status, body) = stack.order_step(1, a, "refund").await;
    assert_eq!(status, 202, "{body}");
    wait_status(&stack, a, "REFUND_REQUESTED").await;
    assert_eq!(
        stack.remaining(1).await,
        0,
        "units stay sold until the money is back"
    );
    // Twice, as providers do: one effect.
    for _ in 0..2 {
        provider_refunds(&stack, a).await;
    }
    wait_status(&stack, a, "REFUNDED").await;
    wait_for("the unit back in Redis", DRAIN, || async {
        (stack.remaining(1).await == 1).then_some(())
    })
    .await;
    // The same callback again, after it took effect: nothing changes.
    provider_refunds(&stack, a).await;
    // The refunded unit sells again to a new buyer (once the gateway's local sold-out flag,
    // raised by the first attempt above, has lapsed).
    let b = wait_for("the refunded unit sold again", DRAIN, || async {
        stack.buy_many(2..=2, 1, 1).await.first().copied()
    })
    .await;
    wait_status(&stack, b, "AWAITING_PAYMENT").await;
    assert_eq!(
        history_causes(&stack, a).await,
        ["lock", "sold", "refund"],
        "the refund is one history row"
    );
    let payment: String = stack
        .db
        .query_one_raw(stack.sql(&format!(
            "SELECT status FROM payments WHERE payment_id = 'pay_{a}'"
        )))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "status")
        .unwrap();
    assert_eq!(payment, "REFUNDED");
    stack.check_and_audit(1, &HashSet::from([a, b])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_racing_the_shipment_ends_in_exactly_one_of_them() {
    let stack = Stack::start(Backend::Postgres, 600, WorkersMode::InProcess).await;
    stack.create_item(1, 20, 1).await;
    let mut orders = Vec::new();
    for user in 1..=8u64 {
        orders.push((user, paid_order(&stack, 1, user).await));
    }
    // Both asked for at once, for every order: each passes the gateway's check.
    let races = orders.iter().map(|&(user, order)| {
        let stack = &stack;
        async move {
            let (refund, ship) =
                tokio::join!(stack.order_step(user, order, "refund"), stack.ship(order));
            (order, refund.0, ship.0)
        }
    });
    let answers = futures_util::future::join_all(races).await;
    let mut shipped = 0;
    for (order, refund, ship) in answers {
        assert!(
            refund == 202 || ship == 202,
            "{order}: one of them was accepted"
        );
        let status = wait_for(&format!("order {order} settled"), DRAIN, || async {
            order_status(&stack, order).await.filter(|s| s != "PAID")
        })
        .await;
        match status.as_str() {
            "SHIPPED" => shipped += 1,
            "REFUND_REQUESTED" => {}
            other => panic!("order {order} ended {other}"),
        }
    }
    // The provider confirms the refunds; the shipped orders keep their units.
    for &(_, order) in &orders {
        if order_status(&stack, order).await.as_deref() == Some("REFUND_REQUESTED") {
            provider_refunds(&stack, order).await;
            wait_status(&stack, order, "REFUNDED").await;
        }
    }
    let accepted: HashSet<OrderId> = orders.iter().map(|(_, o)| *o).collect();
    stack.check_and_audit(1, &accepted).await;
    let sold: i64 = stack
        .db
        .query_one_raw(stack.sql("SELECT sold FROM items WHERE id = 1"))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "sold")
        .unwrap();
    assert_eq!(sold, shipped, "sold = the shipped orders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_after_the_timeout_is_refunded_without_touching_stock() {
    let stack = Stack::start(Backend::Postgres, 1, WorkersMode::InProcess).await;
    stack.create_item(1, 3, 1).await;
    let a = stack.buy_accepted(1, 1).await;
    wait_status(&stack, a, "TIMED_OUT").await;
    assert_eq!(stack.pay(a, "late", PRICE, true).await, 200);
    wait_status(&stack, a, "REFUND_REQUIRED").await;
    assert_eq!(stack.remaining(1).await, 3);
    assert_eq!(stack.callback(a, "late", PRICE, "REFUNDED").await, 200);
    wait_status(&stack, a, "REFUNDED").await;
    assert_eq!(stack.remaining(1).await, 3, "its units were back already");
    assert!(
        !history_causes(&stack, a)
            .await
            .iter()
            .any(|c| c == "refund")
    );
    stack.check_and_audit(1, &HashSet::from([a])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_payment_on_mariadb() {
    let stack = Stack::start(Backend::MySql, 600, WorkersMode::InProcess).await;
    stack.create_item(1, 2, 1).await;
    let a = paid_order(&stack, 1, 1).await;
    let b = paid_order(&stack, 1, 2).await;
    assert_eq!(stack.ship(a).await.0, 202);
    wait_status(&stack, a, "SHIPPED").await;
    assert_eq!(stack.order_step(1, a, "confirm").await.0, 202);
    wait_status(&stack, a, "COMPLETED").await;
    assert_eq!(stack.order_step(2, b, "refund").await.0, 202);
    wait_status(&stack, b, "REFUND_REQUESTED").await;
    provider_refunds(&stack, b).await;
    wait_status(&stack, b, "REFUNDED").await;
    stack.check_and_audit(1, &HashSet::from([a, b])).await;
}
