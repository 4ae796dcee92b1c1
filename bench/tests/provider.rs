//! The payment provider against the real gateway (in process, on a free port): it pays the chosen
//! share of the orders awaiting payment with signatures the gateway accepts, and each callback it
//! delivers becomes one `PAYMENT_RESULT` on the broker.

use fred::prelude::*;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use sea_orm::{ActiveModelTrait, DatabaseConnection, Set};
use seckill_bench::provider::{self, Faults, Intent, PayOptions};
use seckill_infra::broker::Topology;
use seckill_schema::entity::{orders, payments};
use seckill_schema::{
    ItemId, Keys, Kind, Message, OrderId, OrderStatus, PaymentOutcome, PaymentStatus,
};
use seckill_testkit::{Backend, ServerTask, Stores, TestEnv, wait_for};
use std::collections::BTreeMap;
use std::time::Duration;

const ITEM: ItemId = ItemId(7);
const PRICE: i64 = 990;

async fn order(
    db: &DatabaseConnection,
    redis: &Client,
    keys: Option<&Keys>,
    id: i64,
    status: OrderStatus,
) {
    orders::ActiveModel {
        id: Set(id),
        user_id: Set(id),
        item_id: Set(ITEM.0 as i64),
        quantity: Set(1),
        amount_cents: Set(PRICE),
        status: Set(status.as_str().into()),
        close_reason: Set(None),
        created_at_ms: Set(0),
        updated_at_ms: Set(0),
    }
    .insert(db)
    .await
    .unwrap();
    // The read model the gateway looks orders up in; missing for another namespace's orders.
    if let Some(keys) = keys {
        let _: () = redis
            .hset(
                keys.order(OrderId(id as u64)),
                [
                    ("status", status.as_str().to_owned()),
                    ("user", id.to_string()),
                    ("item", ITEM.0.to_string()),
                    ("qty", "1".to_owned()),
                    ("amount", PRICE.to_string()),
                    ("created", "0".to_owned()),
                    ("updated", "0".to_owned()),
                ],
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn pays_the_chosen_share_through_the_real_webhook() {
    let mut env = TestEnv::new(Backend::Postgres);
    let config = env.config.clone();
    let Stores { db, redis, keys } = Stores::connect(&config, 2).await;
    for id in 1..=10 {
        order(&db, &redis, Some(&keys), id, OrderStatus::AwaitingPayment).await;
    }
    order(&db, &redis, Some(&keys), 11, OrderStatus::Paid).await;
    order(&db, &redis, None, 12, OrderStatus::AwaitingPayment).await;
    // A refund owed: the provider confirms it with the payment's own id.
    order(&db, &redis, Some(&keys), 13, OrderStatus::RefundRequested).await;
    payments::ActiveModel {
        payment_id: Set("card_13".into()),
        order_id: Set(13),
        amount_cents: Set(PRICE),
        status: Set(PaymentStatus::Succeeded.as_str().into()),
        applied: Set(true),
        created_at_ms: Set(0),
        updated_at_ms: Set(0),
    }
    .insert(&db)
    .await
    .unwrap();

    let app = seckill_gateway::Application::build(config.clone())
        .await
        .unwrap();
    let gateway = format!("http://127.0.0.1:{}", app.port());
    let server = ServerTask::spawn(|shutdown| app.run(shutdown));

    let opts = PayOptions {
        item: Some(ITEM),
        ratio: 0.6,
        faults: Faults {
            duplicates: 0.5,
            reorder: true,
            wrong_amount: 0.17,
            fail: 0.17,
        },
        ..PayOptions::new(&config, &gateway)
    };
    let report = provider::pay(&opts).await.unwrap();
    assert_eq!(
        (report.awaiting, report.elsewhere, report.chosen),
        (10, 1, 6)
    );
    assert_eq!(
        (
            report.paid,
            report.wrong_amount,
            report.failed,
            report.duplicates
        ),
        (4, 1, 1, 3)
    );
    assert_eq!(report.refunds, 1);
    assert_eq!(report.answers, BTreeMap::from([("200".to_owned(), 10)]));
    assert_eq!(report.accepted.len(), 7);
    assert_eq!(report.paid_orders().count(), 4);

    // Every delivery, duplicates included, reached the broker as the callback said.
    let queue = Topology::new(&config.namespace, config.payment_timeout).queue(Kind::PaymentResult);
    let conn = seckill_infra::broker::connect(&config.amqp_url, "provider-test")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    wait_for("10 payment results", Duration::from_secs(10), || async {
        let ready = seckill_testkit::queue_depth(&config.amqp_url, &queue).await?;
        (ready == 10).then_some(())
    })
    .await;
    let mut deliveries: BTreeMap<OrderId, usize> = BTreeMap::new();
    for _ in 0..10 {
        let msg = ch
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
            .expect("a payment result");
        msg.delivery.ack(BasicAckOptions::default()).await.unwrap();
        let Message::PaymentResult { events } = serde_json::from_slice(&msg.delivery.data).unwrap()
        else {
            panic!("not a PAYMENT_RESULT");
        };
        for e in events {
            let intent = report.accepted[&e.order_id];
            let expected = match intent {
                Intent::Pay => (PaymentOutcome::Succeeded, PRICE),
                Intent::WrongAmount => (PaymentOutcome::Succeeded, PRICE + 1),
                Intent::Fail => (PaymentOutcome::Failed, PRICE),
                Intent::Refund => (PaymentOutcome::Refunded, PRICE),
            };
            let payment_id = if intent == Intent::Refund {
                "card_13".to_owned()
            } else {
                format!("pay_{}", e.order_id)
            };
            assert_eq!(e.payment_id, payment_id);
            assert_eq!((e.status, e.amount_cents), expected);
            *deliveries.entry(e.order_id).or_default() += 1;
        }
    }
    assert_eq!(deliveries.len(), 7);
    assert_eq!(deliveries.values().filter(|n| **n == 2).count(), 3);
    assert!(
        deliveries
            .keys()
            .all(|o| (1..=10).contains(&o.0) || o.0 == 13)
    );

    // A provider with the wrong secret is turned away.
    let forged = PayOptions {
        webhook_secret: "not the secret".into(),
        item: Some(ITEM),
        ..PayOptions::new(&config, &gateway)
    };
    let report = provider::pay(&forged).await.unwrap();
    assert_eq!(report.answers, BTreeMap::from([("401".to_owned(), 11)]));
    assert!(report.accepted.is_empty());

    let _ = conn.close(200, "done".into()).await;
    let _ = server.stop_later().await;
    let _ = redis.quit().await;
    let _ = db.close().await;
    env.cleanup().await;
}
