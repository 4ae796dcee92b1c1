//! A flash sale under load: more buyers than stock, all at once, and nothing oversold or lost.

mod common;

use common::{Events, TestApp, concurrently, wait_for_empty_outbox};
use http::StatusCode;
use seckill_schema::{ItemId, OrderId};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const ITEM: u64 = 4242;
const STOCK: i64 = 100;
const BUYERS: u64 = 5_000;
const CONNECTIONS: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_buyers_for_a_hundred_units() {
    let app = TestApp::with_item(ITEM, STOCK, 1).await;
    let events = Events::bind(&app.config).await;
    // Tickets are minted before the burst so that the burst is only HTTP.
    let bodies: Vec<(u64, serde_json::Value)> = (1..=BUYERS)
        .map(|user| (user, app.purchase(user, ITEM)))
        .collect();

    let answers = concurrently(bodies, CONNECTIONS, |(user, body)| {
        let http = app.http.clone();
        async move { (user, http.seckill(&body).await) }
    })
    .await;

    let mut accepted: BTreeMap<OrderId, u64> = BTreeMap::new();
    let mut other: BTreeMap<(u16, String), usize> = BTreeMap::new();
    for (user, resp) in &answers {
        if resp.status == StatusCode::ACCEPTED {
            let id = resp.accepted();
            assert!(
                accepted.insert(id, *user).is_none(),
                "order id {id} was given twice"
            );
        } else {
            *other
                .entry((resp.status.as_u16(), resp.error_code()))
                .or_default() += 1;
        }
    }
    assert_eq!(answers.len(), BUYERS as usize);
    assert_eq!(
        accepted.len(),
        STOCK as usize,
        "202s; the others: {other:?}"
    );
    assert_eq!(
        other,
        BTreeMap::from([(
            (409, "sold_out".to_owned()),
            (BUYERS - STOCK as u64) as usize
        )]),
        "every other buyer is told sold_out"
    );
    assert_eq!(app.remaining(ITEM).await, Some(0), "Redis shows none left");
    let recorded = common::recorded_orders(&app.redis, &app.keys).await;
    assert_eq!(
        recorded,
        accepted.keys().copied().collect::<BTreeSet<_>>(),
        "Redis recorded exactly the accepted orders"
    );

    events
        .wait_for_count(STOCK as usize, Duration::from_secs(30))
        .await;
    wait_for_empty_outbox(&app.redis, &app.keys).await;
    // The outbox is empty only after the broker confirmed every message, so the queue now holds
    // everything the relay will ever publish for this sale.
    events.drain().await;
    let seen = events.events();
    assert_eq!(seen.len(), STOCK as usize, "exactly one event per order");
    let ids: BTreeSet<OrderId> = seen.iter().map(|e| e.order_id).collect();
    assert_eq!(ids.len(), seen.len(), "no order id is published twice");
    assert_eq!(
        ids,
        accepted.keys().copied().collect::<BTreeSet<_>>(),
        "the events are the accepted orders"
    );
    for e in &seen {
        assert_eq!(e.item_id, ItemId(ITEM));
        assert_eq!(e.quantity.get(), 1);
        assert_eq!(e.amount_cents, common::PRICE_CENTS);
        assert_eq!(Some(&e.user_id.0), accepted.get(&e.order_id), "{e:?}");
    }
    events.close().await;
    app.stop().await.expect("run() returns Ok");
}
