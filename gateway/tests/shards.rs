//! An item's stock over K shards, through the gateway alone (the workers play no part in a sale
//! until units come back): every buyer buys from one home shard, units move to a dry home shard
//! from the others, and the item is sold out exactly when its last unit sold, per-user limits and
//! idempotency as exact as with one shard.

mod common;

use common::{TestApp, accepted_orders, concurrently, item_body};
use http::StatusCode;
use seckill_infra::scripts::{Held, Scripts};
use seckill_schema::keys::{home_shard, shard_gene};
use seckill_schema::snowflake::gene_of;
use seckill_schema::{ItemId, OrderId, UserId};
use std::collections::{BTreeMap, BTreeSet};

/// Every shard of the item at one moment: (remaining, units held, units in transfer) each.
async fn shards(app: &TestApp, item: u64, k: u8) -> Vec<(i64, i64, i64)> {
    Scripts::new(app.keys.clone())
        .shards_state(&app.redis, ItemId(item), k, Held::Counted)
        .await
        .unwrap()
        .expect("a consistent reading")
        .iter()
        .map(|s| (s.remaining, s.held, s.pending))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyers_drain_every_shard_and_sold_out_comes_with_the_last_unit() {
    const ITEM: u64 = 40;
    const STOCK: i64 = 120;
    const K: u8 = 4;
    let app = TestApp::spawn().await;
    let mut body = item_body(ITEM, STOCK, 1);
    body["shards"] = K.into();
    app.create_item_with(&body).await;
    let warmed = shards(&app, ITEM, K).await;
    assert_eq!(warmed, vec![(30, 0, 0); 4], "the stock split evenly");

    // 400 buyers for 120 units: homes fill unevenly, so units must move for every unit to sell.
    let answers = concurrently((1..=400u64).collect(), 64, |user| {
        let (http, body) = (app.http.clone(), app.purchase(user, ITEM));
        async move { (user, http.seckill(&body).await) }
    })
    .await;
    let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
    let mut sold = Vec::new();
    for (user, r) in &answers {
        match r.status {
            StatusCode::ACCEPTED => sold.push((*user, r.accepted())),
            _ => *by_code.entry(r.error_code()).or_default() += 1,
        }
    }
    assert_eq!(
        sold.len(),
        STOCK as usize,
        "exactly the stock sold: {by_code:?}"
    );
    // Whoever was refused was told sold_out (or to retry while units moved), never anything else.
    assert!(
        by_code
            .keys()
            .all(|c| c == "sold_out" || c == "unavailable"),
        "{by_code:?}"
    );
    // Every order in its buyer's home shard's gene.
    for (user, order) in &sold {
        let home = shard_gene(ItemId(ITEM), home_shard(UserId(*user), K));
        assert_eq!(gene_of(order.0), home, "order {order} of user {user}");
    }
    let ids: BTreeSet<OrderId> = sold.iter().map(|(_, o)| *o).collect();
    assert_eq!(ids.len(), sold.len(), "no id twice");
    // Nothing left anywhere, nothing in transfer, every unit held by its buyer's home shard.
    let after = shards(&app, ITEM, K).await;
    assert!(
        after.iter().all(|(r, _, p)| *r == 0 && *p == 0),
        "{after:?}"
    );
    assert_eq!(
        after.iter().map(|(_, h, _)| h).sum::<i64>(),
        STOCK,
        "{after:?}"
    );
    // Sold out now, for a buyer of any shard.
    for user in 401..=404 {
        let r = app.http.seckill(&app.purchase(user, ITEM)).await;
        r.assert_error(StatusCode::CONFLICT, "sold_out");
    }
    // The product page sums the shards.
    let page = app.http.get(&format!("/items/{ITEM}"), None).await;
    assert_eq!(page.json()["remaining"], 0, "{}", page.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_buyer_racing_sixty_requests_at_a_sharded_item_gets_the_limit() {
    const ITEM: u64 = 41;
    const LIMIT: i32 = 3;
    let app = TestApp::spawn().await;
    let mut body = item_body(ITEM, 40, LIMIT);
    body["shards"] = 4.into();
    app.create_item_with(&body).await;
    let purchase = app.purchase(7, ITEM);
    let answers = concurrently((0..60).collect(), 60, |i: u64| {
        let (http, body) = (app.http.clone(), purchase.clone());
        async move {
            // A third of them with one idempotency key each, retried twice.
            if i.is_multiple_of(3) {
                http.seckill_with_key(&format!("k{}", i % 9), &body).await
            } else {
                http.seckill(&body).await
            }
        }
    })
    .await;
    let accepted: BTreeSet<OrderId> = accepted_orders(&answers);
    assert_eq!(
        accepted.len(),
        LIMIT as usize,
        "exactly the limit: {accepted:?}"
    );
    let refused: BTreeSet<String> = answers
        .iter()
        .filter(|r| r.status != StatusCode::ACCEPTED)
        .map(|r| r.error_code())
        .collect();
    assert!(refused.iter().all(|c| c == "limit_reached"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_change_only_while_the_sale_is_not_live_and_a_shrink_gathers_units() {
    const ITEM: u64 = 42;
    let app = TestApp::spawn().await;
    let mut body = item_body(ITEM, 60, 1);
    body["shards"] = 3.into();
    app.create_item_with(&body).await;
    let patch = |body: serde_json::Value| {
        let http = app.http.clone();
        let token = app.config.admin_token.clone();
        async move {
            let auth = format!("Bearer {token}");
            http.send(
                http::Method::PATCH,
                &format!("/admin/items/{ITEM}"),
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                serde_json::to_vec(&body).unwrap(),
            )
            .await
        }
    };
    // Live (open now): the shards stay as they are.
    let r = patch(serde_json::json!({"shards": 5, "reason": "hotter"})).await;
    r.assert_error(StatusCode::CONFLICT, "shards_in_use");
    // Ended: spread over 5, the 60 units kept.
    let ended = (chrono::Utc::now() - chrono::Duration::seconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let r = patch(serde_json::json!({"ends_at": ended, "reason": "pause"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = patch(serde_json::json!({"shards": 5, "reason": "hotter"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["shards"], 5, "{}", r.text());
    assert_eq!(r.json()["redis"]["remaining"], 60, "{}", r.text());
    assert_eq!(shards(&app, ITEM, 5).await, vec![(12, 0, 0); 5]);
    // Open again; a buyer's purchase goes to their home under five shards.
    let r = patch(serde_json::json!({"ends_at": null, "reason": "go on"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let order = app.http.seckill(&app.purchase(3, ITEM)).await.accepted();
    assert_eq!(
        gene_of(order.0),
        shard_gene(ItemId(ITEM), home_shard(UserId(3), 5))
    );
    // A shrink larger than shard 0 holds takes units from the others first.
    let r = patch(serde_json::json!({"stock_delta": -40, "reason": "broken"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["stock"], 20, "{}", r.text());
    assert_eq!(r.json()["redis"]["remaining"], 19, "{}", r.text());
    // And never below what live orders hold.
    let r = patch(serde_json::json!({"stock_delta": -20, "reason": "too far"})).await;
    r.assert_error(StatusCode::CONFLICT, "insufficient_stock");
}
