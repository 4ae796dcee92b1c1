//! The outbox relay meets an entry it cannot read: the entry goes to `{ns}.dead` with a reason
//! (never silently dropped) and the orders behind it still reach the broker.

mod common;

use common::{Events, TestApp, wait_for_empty_outbox};
use fred::prelude::*;
use lapin::options::BasicGetOptions;
use seckill_infra::broker::Topology;
use seckill_schema::ItemId;
use seckill_schema::keys::gene_of_item;
use std::collections::BTreeSet;

const ITEM: u64 = 91;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_outbox_entry_is_dead_lettered_and_blocks_nothing() {
    let app = TestApp::with_item(ITEM, 10, 1).await;
    let events = Events::bind(&app.config).await;
    let stream = app.keys.outbox(gene_of_item(ItemId(ITEM)));
    let _: String = app
        .redis
        .xadd(&stream, false, None, "*", vec![("e", "not an order")])
        .await
        .expect("XADD");
    let order = app.http.seckill(&app.purchase(1, ITEM)).await.accepted();
    events
        .wait_for_ids(&BTreeSet::from([order]), common::RELAY_DEADLINE)
        .await;
    wait_for_empty_outbox(&app.redis, &app.keys).await;

    let conn = seckill_infra::broker::connect(&app.config.amqp_url, "relay-test")
        .await
        .expect("RabbitMQ");
    let ch = conn.create_channel().await.expect("a channel");
    let dead = Topology::new(&app.config.namespace, app.config.payment_timeout).dead();
    let got = ch
        .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("the entry is in the dead-letter queue");
    let body: serde_json::Value = serde_json::from_slice(&got.delivery.data).expect("a JSON body");
    assert_eq!(body["fields"]["e"], "not an order", "{body}");
    let reason = got
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-seckill-reason").cloned());
    assert!(reason.is_some(), "a reason header");
    let _ = conn.close(200, "done".into()).await;
    events.close().await;
    app.stop().await.expect("run() returns Ok");
}
