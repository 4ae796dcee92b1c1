//! The audit on its own: a small consistent sale written straight into the database and Redis of a
//! test namespace passes it; breaking one invariant on purpose fails exactly that invariant.

mod common;

use common::{ITEM, PRICE, Sale, oid};
use fred::prelude::*;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
use seckill_bench::audit::{self, Check};
use seckill_infra::broker::Topology;
use seckill_schema::OrderStatus;
use seckill_schema::entity::orders;
use seckill_schema::snowflake::now_ms;
use seckill_testkit::{Backend, wait_for};
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test]
async fn a_consistent_sale_passes_every_check() {
    for backend in [Backend::Postgres, Backend::MySql] {
        let sale = Sale::on(backend).await;
        let checks = sale.audit().await;
        let failed: Vec<&Check> = checks.iter().filter(|c| !c.passed).collect();
        assert!(failed.is_empty(), "{backend:?}: {failed:#?}");
        let invariants: BTreeSet<u8> = checks.iter().map(|c| c.invariant).collect();
        assert_eq!(invariants, BTreeSet::from([1, 2, 3, 4, 5]));
        sale.done().await;
    }
}

#[tokio::test]
async fn a_user_over_the_limit_breaks_invariant_1() {
    let mut sale = Sale::new().await;
    // User 1, already holding one paid unit, gets a second one.
    sale.order(6, 1, OrderStatus::AwaitingPayment).await;
    sale.step(6, "LOCK", (-1, 1, 0)).await;
    sale.breaks_only(1).await;
}

#[tokio::test]
async fn a_unit_added_in_redis_breaks_invariant_2() {
    let sale = Sale::new().await;
    let _: i64 = sale
        .redis
        .hincrby(sale.keys.item(ITEM), "remaining", 1)
        .await
        .unwrap();
    sale.breaks_only(2).await;
}

#[tokio::test]
async fn a_lost_order_breaks_invariant_3() {
    let sale = Sale::new().await;
    orders::Entity::delete_by_id(oid(4))
        .exec(&sale.db)
        .await
        .unwrap();
    sale.breaks_only(3).await;
}

#[tokio::test]
async fn a_payment_missing_from_its_order_breaks_invariant_3() {
    let sale = Sale::new().await;
    sale.payment("pay_2", 2, "SUCCEEDED", PRICE).await;
    sale.breaks_only(3).await;
}

#[tokio::test]
async fn a_second_payment_breaks_invariant_4() {
    let sale = Sale::new().await;
    sale.payment("pay_1_again", 1, "SUCCEEDED", PRICE).await;
    sale.breaks_only(4).await;
}

#[tokio::test]
async fn a_step_recorded_twice_breaks_invariant_4() {
    let sale = Sale::new().await;
    let now = sale.stock;
    sale.record(1, "DEDUCT", now, now).await;
    sale.breaks_only(4).await;
}

#[tokio::test]
async fn an_order_stuck_in_created_breaks_invariant_5() {
    let mut sale = Sale::new().await;
    // Taken in Redis, stored, but never locked in the database.
    sale.order(6, 6, OrderStatus::Created).await;
    sale.breaks_only(5).await;
}

#[tokio::test]
async fn an_order_awaiting_payment_past_its_timeout_breaks_invariant_5() {
    let sale = Sale::new().await;
    let overdue = sale.env.config.payment_timeout + audit::TIMEOUT_GRACE + Duration::from_secs(60);
    let mut order: orders::ActiveModel = orders::Entity::find_by_id(oid(2))
        .one(&sale.db)
        .await
        .unwrap()
        .unwrap()
        .into();
    order.updated_at_ms = Set(now_ms() as i64 - overdue.as_millis() as i64);
    order.update(&sale.db).await.unwrap();
    sale.breaks_only(5).await;
}

#[tokio::test]
async fn a_dead_letter_breaks_invariant_5() {
    let sale = Sale::new().await;
    let c = &sale.env.config;
    let dead = Topology::new(&c.namespace, c.payment_timeout).dead();
    let conn = seckill_infra::broker::connect(&c.amqp_url, "audit-test")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(dead.as_str().into(), durable, FieldTable::default())
        .await
        .unwrap();
    ch.basic_publish(
        "".into(),
        dead.as_str().into(),
        BasicPublishOptions::default(),
        br#"{"type":"NOPE"}"#,
        seckill_infra::broker::persistent(),
    )
    .await
    .unwrap();
    let queues = [dead.clone()];
    wait_for(
        "the dead letter to be counted",
        Duration::from_secs(10),
        || async {
            let depths = audit::queue_depths(&c.amqp_url, &queues).await.ok()?;
            (depths.get(&dead).copied().flatten() == Some(1)).then_some(())
        },
    )
    .await;
    let _ = conn.close(200, "done".into()).await;
    sale.breaks_only(5).await;
}

#[tokio::test]
async fn the_audit_reads_only_its_own_item() {
    let sale = Sale::new().await;
    // Another item's order, stuck, in the same database and namespace.
    let mut other = orders::Entity::find_by_id(oid(4))
        .one(&sale.db)
        .await
        .unwrap()
        .unwrap();
    other.id = 99;
    other.item_id = 8;
    other.status = OrderStatus::Created.as_str().into();
    orders::ActiveModel::from(other)
        .reset_all()
        .insert(&sale.db)
        .await
        .unwrap();
    assert_eq!(sale.broken().await, BTreeSet::new());
    let of_item = orders::Entity::find()
        .filter(orders::Column::ItemId.eq(ITEM.0 as i64))
        .all(&sale.db)
        .await
        .unwrap();
    assert_eq!(of_item.len() as u64, sale.accepted);
    sale.done().await;
}
