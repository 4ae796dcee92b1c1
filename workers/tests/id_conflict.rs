//! An accepted order whose id the database holds as another order (two processes minted one id)
//! is an incident, never silent: the stored order goes on untouched, the other is dead-lettered
//! with its reason and counted, while a true redelivery of the stored one changes nothing.

mod common;

use common::{Stack, WorkersMode, n};
use lapin::options::BasicGetOptions;
use seckill_infra::broker::{Publisher, Topology};
use seckill_schema::{ItemId, Message, OrderEvent, OrderId, Quantity, UserId};
use seckill_testkit::{Backend, wait_for};
use std::time::Duration;

const ITEM: u64 = 17;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_id_stored_as_another_order_is_dead_lettered_and_the_stored_one_goes_on() {
    let stack = Stack::start(Backend::Postgres, 600, WorkersMode::InProcess).await;
    stack.create_item(ITEM, 5, 1).await;
    let (status, body) = stack.buy(1, ITEM).await;
    assert_eq!(status, 202, "{body}");
    let id = OrderId(body["order_id"].as_str().unwrap().parse().unwrap());
    stack
        .wait_counts(
            ITEM,
            "the order awaiting payment",
            Duration::from_secs(60),
            |c| n(c, "AWAITING_PAYMENT") == 1,
        )
        .await;
    let stored: serde_json::Value = stack.get_order(1, id).await;

    // The same order again (a redelivery), and another buyer's order under its id, in one message.
    let original = OrderEvent {
        order_id: id,
        user_id: UserId(1),
        item_id: ItemId(ITEM),
        quantity: Quantity::ONE,
        amount_cents: stored["amount_cents"].as_i64().unwrap(),
        created_at_ms: 1,
    };
    let other = OrderEvent {
        user_id: UserId(2),
        ..original.clone()
    };
    let topology: Topology = stack.topology();
    let publisher = Publisher::new(
        &stack.env.config.amqp_url,
        "test-conflict",
        topology.clone(),
    );
    publisher
        .publish(&Message::OrderCreated {
            events: vec![original.clone(), other.clone()],
        })
        .await
        .unwrap();

    wait_for("one dead letter", Duration::from_secs(30), || async {
        (stack.queue_depth(&topology.dead()).await == 1).then_some(())
    })
    .await;
    let conn = seckill_infra::broker::connect(&stack.env.config.amqp_url, "test-conflict-read")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let dead = ch
        // Taken off the queue, as the person who settles the incident does.
        .basic_get(
            topology.dead().as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the dead letter");
    let reason = dead
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-seckill-reason").cloned())
        .and_then(|v| match v {
            lapin::types::AMQPValue::LongString(s) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            _ => None,
        })
        .unwrap_or_default();
    assert!(reason.contains("order id conflict"), "{reason}");
    let message: Message = serde_json::from_slice(&dead.data).unwrap();
    assert_eq!(
        message,
        Message::OrderCreated {
            events: vec![other]
        },
        "only the other buyer's order is dead-lettered"
    );
    // The stored order is the first buyer's still, where it was.
    let now = stack.get_order(1, id).await;
    assert_eq!(now["user_id"], 1);
    assert_eq!(now["status"], "AWAITING_PAYMENT");
    let _ = conn.close(200, "bye".into()).await;
    stack.audit(ITEM, 1).await;
}
