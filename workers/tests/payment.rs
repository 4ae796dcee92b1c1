//! The payment webhook and cancel, through the real gateway and workers: signatures, duplicates,
//! wrong amounts, and payments racing the timeout, a cancel, or the pipeline itself.

mod common;

use common::{DRAIN, Stack, WorkersMode, n, order_status, wait_stored};
use sea_orm::ConnectionTrait;
use seckill_schema::OrderId;
use seckill_testkit::{Backend, wait_for};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

async fn payment_rows(stack: &Stack, order: OrderId) -> Vec<(String, String)> {
    let rows = stack
        .db
        .query_all_raw(stack.sql(&format!(
            "SELECT payment_id, status FROM payments WHERE order_id = {} ORDER BY payment_id",
            order.0
        )))
        .await
        .unwrap();
    rows.into_iter()
        .map(|r| {
            (
                r.try_get("", "payment_id").unwrap(),
                r.try_get("", "status").unwrap(),
            )
        })
        .collect()
}

/// A failed payment for `order`, sent behind the others and waited for: once it is recorded,
/// anything sent before it on the same queue would be too.
async fn send_marker(stack: &Stack, order: OrderId) {
    assert_eq!(stack.pay(order, "marker", 1999, false).await, 200);
    wait_for("the marker recorded", DRAIN, || async {
        payment_rows(stack, order)
            .await
            .iter()
            .any(|(p, _)| p == "marker")
            .then_some(())
    })
    .await;
}

async fn one_awaiting_order(stack: &Stack, item: u64, user: u64) -> OrderId {
    let ids = stack.buy_many(user..=user, item, 1).await;
    assert_eq!(ids.len(), 1);
    let id = ids[0];
    wait_stored(stack, id, "AWAITING_PAYMENT").await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_are_rejected_and_record_nothing() {
    let stack = Stack::start(Backend::Postgres, 600, WorkersMode::InProcess).await;
    stack.create_item(1, 5, 1).await;
    let id = one_awaiting_order(&stack, 1, 1).await;
    let body = serde_json::to_vec(&serde_json::json!({
        "payment_id": "pay_bad", "order_id": id.to_string(), "status": "SUCCEEDED", "amount_cents": 1999,
    }))
    .unwrap();
    let now = chrono::Utc::now().timestamp();
    const STALE: i64 = seckill_infra::auth::WEBHOOK_TOLERANCE_SECS + 60;
    let other = seckill_infra::auth::WebhookSigner::new("not-the-secret");
    let cases: Vec<(&str, Option<String>, Vec<u8>)> = vec![
        ("no header", None, body.clone()),
        ("malformed", Some("garbage".into()), body.clone()),
        ("no v1", Some(format!("t={now}")), body.clone()),
        ("bad hex", Some(format!("t={now},v1=zz")), body.clone()),
        ("wrong secret", Some(other.header(now, &body)), body.clone()),
        (
            "body changed after signing",
            Some(stack.signer.header(now, &body)),
            body.iter()
                .map(|b| if *b == b'9' { b'8' } else { *b })
                .collect(),
        ),
        // Stale by a margin: the cases run over a few seconds, and a second that passes between
        // this clock read and the gateway's must not bring one inside the tolerance (its exact
        // boundary is a unit test of the signer).
        (
            "stale by 60 s",
            Some(stack.signer.header(now - STALE, &body)),
            body.clone(),
        ),
        (
            "ahead by 60 s",
            Some(stack.signer.header(now + STALE, &body)),
            body.clone(),
        ),
    ];
    for (what, header, body) in cases {
        let mut req = stack
            .http
            .post(format!("{}/payment/callback", stack.url))
            .body(body);
        if let Some(h) = header {
            req = req.header("x-seckill-signature", h);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{what}");
        let json: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(json["error"], "unauthorized", "{what}");
    }
    // Bad bodies with good signatures: 400, and 404 for an unknown order.
    for (what, body, status) in [
        ("not json", b"{".to_vec(), 400),
        (
            "wrong status",
            br#"{"payment_id":"p","order_id":"1","status":"MAYBE","amount_cents":1}"#.to_vec(),
            400,
        ),
        (
            "unknown order",
            br#"{"payment_id":"p","order_id":"12345","status":"SUCCEEDED","amount_cents":1}"#
                .to_vec(),
            404,
        ),
    ] {
        let sig = stack.signer.header(now, &body);
        let resp = stack
            .http
            .post(format!("{}/payment/callback", stack.url))
            .header("x-seckill-signature", sig)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{what}");
    }
    send_marker(&stack, id).await;
    let rows = payment_rows(&stack, id).await;
    assert_eq!(
        rows,
        vec![("marker".to_owned(), "FAILED".to_owned())],
        "only the marker: the intent is not a row"
    );
    assert_eq!(
        order_status(&stack, id).await.as_deref(),
        Some("AWAITING_PAYMENT")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_callback_twenty_times_at_once_has_one_effect() {
    let stack = Stack::start(Backend::Postgres, 600, WorkersMode::InProcess).await;
    stack.create_item(2, 3, 1).await;
    let id = one_awaiting_order(&stack, 2, 1).await;
    let statuses =
        futures_util::future::join_all((0..20).map(|_| stack.pay(id, "pay_same", 1999, true)))
            .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    wait_stored(&stack, id, "PAID").await;
    // Redelivery of the same callback later changes nothing either.
    assert_eq!(stack.pay(id, "pay_same", 1999, true).await, 200);
    send_marker(&stack, id).await;
    let sold = stack
        .row("SELECT sold, locked, available FROM items WHERE id = 2")
        .await;
    assert_eq!(sold.try_get::<i64>("", "sold").unwrap(), 1);
    assert_eq!(sold.try_get::<i64>("", "locked").unwrap(), 0);
    let history = stack
        .count("SELECT COUNT(*) AS n FROM inventory_history WHERE cause = 'sold'")
        .await;
    assert_eq!(history, 1);
    // The buyer sees the payment on the order.
    let order = stack.get_order(1, id).await;
    assert_eq!(order["status"], "PAID");
    assert_eq!(order["payment"]["payment_id"], "pay_same");
    assert_eq!(order["payment"]["status"], "SUCCEEDED");
    assert_eq!(order["payment"]["amount_cents"], 1999);
    stack.check_invariants(2, &[id].into_iter().collect()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_amount_never_pays_and_a_failure_keeps_the_order_waiting() {
    let stack = Stack::start(Backend::Postgres, 600, WorkersMode::InProcess).await;
    stack.create_item(3, 3, 1).await;
    let id = one_awaiting_order(&stack, 3, 1).await;
    assert_eq!(stack.pay(id, "pay_low", 1, true).await, 200);
    assert_eq!(stack.pay(id, "pay_failed", 1999, false).await, 200);
    wait_for("both recorded", DRAIN, || async {
        let rows = payment_rows(&stack, id).await;
        (rows
            .iter()
            .any(|(p, s)| p == "pay_low" && s == "AMOUNT_MISMATCH")
            && rows.iter().any(|(p, s)| p == "pay_failed" && s == "FAILED"))
        .then_some(())
    })
    .await;
    assert_eq!(
        order_status(&stack, id).await.as_deref(),
        Some("AWAITING_PAYMENT")
    );
    assert_eq!(stack.pay(id, "pay_right", 1999, true).await, 200);
    wait_stored(&stack, id, "PAID").await;
    stack.check_invariants(3, &[id].into_iter().collect()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_that_races_the_pipeline_is_applied_once_the_order_awaits_payment() {
    let mut stack = Stack::start(Backend::Postgres, 600, WorkersMode::None).await;
    stack.create_item(4, 2, 1).await;
    let ids = stack.buy_many(1..=1, 4, 1).await;
    let id = ids[0];
    // The order is only PENDING (no workers yet) when the provider answers.
    assert_eq!(stack.pay(id, &format!("pay_{id}"), 1999, true).await, 200);
    stack.start_workers_in_process().await;
    wait_stored(&stack, id, "PAID").await;
    stack.check_invariants(4, &ids.into_iter().collect()).await;
}

/// Pays every order around the moment its timeout is due (its acceptance plus the 1 s timeout,
/// shifted by each of `offsets_ms` in turn), many orders at once.
async fn race_timeout(offsets_ms: &[i64]) {
    let stack = Stack::start(Backend::Postgres, 1, WorkersMode::InProcess).await;
    stack.create_item(5, 90, 1).await;
    let ids = stack.buy_many(1..=90, 5, 90).await;
    assert_eq!(ids.len(), 90);
    let created: BTreeMap<OrderId, i64> = wait_for("all orders stored", DRAIN, || async {
        let rows = stack
            .db
            .query_all_raw(stack.sql("SELECT id, created_at_ms FROM orders WHERE item_id = 5"))
            .await
            .unwrap();
        (rows.len() == 90).then(|| {
            rows.into_iter()
                .map(|r| {
                    (
                        OrderId(r.try_get::<i64>("", "id").unwrap() as u64),
                        r.try_get::<i64>("", "created_at_ms").unwrap(),
                    )
                })
                .collect()
        })
    })
    .await;
    let now_ms = seckill_schema::snowflake::now_ms() as i64;
    let start = Instant::now();
    let pays = ids.iter().enumerate().map(|(i, id)| {
        let due_ms = created[id] + 1000 + offsets_ms[i % offsets_ms.len()];
        let at = start + Duration::from_millis((due_ms - now_ms).max(0) as u64);
        let stack = &stack;
        async move {
            tokio::time::sleep_until(at).await;
            assert_eq!(stack.pay(*id, &format!("pay_{id}"), 1999, true).await, 200);
        }
    });
    futures_util::future::join_all(pays).await;
    let c = stack
        .wait_counts(5, "every order settled", DRAIN, |c| {
            n(c, "AWAITING_PAYMENT") == 0 && n(c, "PAID") + n(c, "REFUND_REQUIRED") == 90
        })
        .await;
    eprintln!("payment vs timeout: {c:?}");
    stack.check_invariants(5, &ids.into_iter().collect()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_racing_the_timeout_end_paid_or_refund_required_never_both() {
    // The pipeline adds a few ms between acceptance and the timeout's start: spread around it.
    race_timeout(&[-200, -50, -10, 0, 10, 50]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_racing_payment_ends_paid_or_refund_required() {
    let stack = Stack::start(Backend::Postgres, 600, WorkersMode::InProcess).await;
    stack.create_item(6, 40, 1).await;
    let ids = stack.buy_awaiting_payment(1..=40, 6, 40, 40).await;
    let owners: BTreeMap<OrderId, u64> = {
        let rows = stack
            .db
            .query_all_raw(stack.sql("SELECT id, user_id FROM orders WHERE item_id = 6"))
            .await
            .unwrap();
        rows.into_iter()
            .map(|r| {
                (
                    OrderId(r.try_get::<i64>("", "id").unwrap() as u64),
                    r.try_get::<i64>("", "user_id").unwrap() as u64,
                )
            })
            .collect()
    };
    let races = ids.iter().map(|id| {
        let stack = &stack;
        let user = owners[id];
        async move {
            let payment_id = format!("pay_{id}");
            let (cancel, pay) = tokio::join!(
                stack.cancel(user, *id),
                stack.pay(*id, &payment_id, 1999, true)
            );
            assert!(cancel.0 == 202 || cancel.0 == 409, "{cancel:?}");
            assert_eq!(pay, 200);
        }
    });
    futures_util::future::join_all(races).await;
    let c = stack
        .wait_counts(6, "every race settled", DRAIN, |c| {
            n(c, "PAID") + n(c, "REFUND_REQUIRED") == 40
        })
        .await;
    eprintln!("payment vs cancel: {c:?}");
    let refunds: HashSet<OrderId> = stack
        .order_ids_with_status(6, "REFUND_REQUIRED")
        .await
        .into_iter()
        .collect();
    // The units go back to Redis right after the commit that closed the order.
    wait_for(
        "cancelled-then-refunded units back on sale",
        DRAIN,
        || async { (stack.remaining(6).await == refunds.len() as i64).then_some(()) },
    )
    .await;
    stack.check_invariants(6, &ids.into_iter().collect()).await;
}
