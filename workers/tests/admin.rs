//! The operators' endpoints against the real Redis, RabbitMQ and database, with the gateway and the
//! workers in process: stock adjustments during a sale (a restock in the middle of a burst, a
//! shrink refused below the units live orders hold), the repair of an adjustment cut in half by a
//! crash, ending a sale, the listings and their cursors, an item's history and an order's, and bad
//! requests that change nothing. Every stock test ends with the contract's invariants and the
//! bench's audit.

mod common;

use common::{DRAIN, Stack, WorkersMode, n, stack_tests};
use fred::prelude::*;
use reqwest::Method;
use sea_orm::ConnectionTrait;
use seckill_infra::scripts::{Adjusted, PendingAdjustment, Scripts};
use seckill_infra::stock::{self, Settled};
use seckill_schema::keys::gene_of_item;
use seckill_schema::snowflake::{Snowflake, now_ms};
use seckill_schema::{AdjustmentId, ItemId, OrderId, UserId};
use seckill_testkit::{Backend, wait_for};
use seckill_workers::reconcile::Intervals;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Redis's `(remaining, stock)` of an item.
async fn redis_item(stack: &Stack, item: u64) -> (Option<i64>, Option<i64>) {
    let v: Vec<Option<i64>> = stack
        .redis
        .hmget(stack.keys.item(ItemId(item)), vec!["remaining", "stock"])
        .await
        .expect("redis");
    (v[0], v[1])
}

/// The pending adjustments of the item's gene.
async fn pending(stack: &Stack, item: u64) -> HashMap<String, String> {
    stack
        .redis
        .hgetall(stack.keys.adjustments(gene_of_item(ItemId(item))))
        .await
        .expect("redis")
}

/// Every history row of an item (of `cause`, if any), following the cursors `per_page` at a time.
async fn history(stack: &Stack, item: u64, cause: Option<&str>, per_page: u32) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/admin/items/{item}/history?limit={per_page}");
        if let Some(c) = cause {
            path.push_str(&format!("&cause={c}"));
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = stack.admin(Method::GET, &path, None).await;
        assert_eq!(status, 200, "{path}: {page}");
        let got = page["history"].as_array().expect("history").clone();
        assert!(got.len() <= per_page as usize, "{page}");
        rows.extend(got);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return rows,
        }
    }
}

stack_tests! {
    restock_during_a_burst_postgres => restock_during_a_burst_sells_exactly_the_new_stock(Backend::Postgres);
    restock_during_a_burst_mysql => restock_during_a_burst_sells_exactly_the_new_stock(Backend::MySql);
    shrink_stops_at_held_units_postgres => shrink_stops_at_the_units_live_orders_hold(Backend::Postgres);
    shrink_stops_at_held_units_mysql => shrink_stops_at_the_units_live_orders_hold(Backend::MySql);
    a_crash_between_redis_and_the_database_postgres => a_crash_between_redis_and_the_database_is_repaired_once(Backend::Postgres);
    a_crash_between_redis_and_the_database_mysql => a_crash_between_redis_and_the_database_is_repaired_once(Backend::MySql);
    a_rebuild_counts_the_pending_adjustments_postgres => a_rebuild_counts_the_pending_adjustments(Backend::Postgres);
    a_rebuild_counts_the_pending_adjustments_mysql => a_rebuild_counts_the_pending_adjustments(Backend::MySql);
    ending_listing_and_history_postgres => ending_listing_and_history(Backend::Postgres);
    ending_listing_and_history_mysql => ending_listing_and_history(Backend::MySql);
    bad_admin_requests_change_nothing_postgres => bad_admin_requests_change_nothing(Backend::Postgres);
    bad_admin_requests_change_nothing_mysql => bad_admin_requests_change_nothing(Backend::MySql);
}

/// The bench's audit of every invariant, as after a sale.
async fn restock_during_a_burst_sells_exactly_the_new_stock(backend: Backend) {
    const ITEM: u64 = 7;
    const STOCK: i64 = 50;
    const RESTOCK: i64 = 100;
    let stack = Stack::start(backend, 900, WorkersMode::InProcess).await;
    stack.create_item(ITEM, STOCK, 1).await;
    // Many more buyers than the stock, even restocked; each may buy one unit.
    let burst = stack.buy_many(1..=600, ITEM, 32);
    let restock = async {
        wait_for("half the stock sold", DRAIN, || async {
            (stack.remaining(ITEM).await <= STOCK / 2).then_some(())
        })
        .await;
        stack
            .patch_item(
                ITEM,
                json!({"stock_delta": RESTOCK, "reason": "the second truck arrived"}),
            )
            .await
    };
    let (mut accepted, (status, item)) = tokio::join!(burst, restock);
    assert_eq!(status, 200, "{item}");
    assert_eq!(item["stock"], STOCK + RESTOCK, "{item}");
    // Had the restock come as the burst ended, what it added sells to more buyers.
    let mut next = 1_000;
    while stack.remaining(ITEM).await > 0 {
        assert!(next < 100_000, "the restocked units never sold");
        accepted.extend(stack.buy_many(next..next + 50, ITEM, 16).await);
        next += 50;
    }
    let accepted: HashSet<OrderId> = accepted.into_iter().collect();
    assert_eq!(
        accepted.len() as i64,
        STOCK + RESTOCK,
        "exactly the stock sold"
    );
    assert_eq!(stack.remaining(ITEM).await, 0);

    stack.wait_awaiting_payment(ITEM, STOCK + RESTOCK).await;
    let paid: HashSet<OrderId> = accepted.iter().take(10).copied().collect();
    stack.pay_as_they_await(ITEM, &paid).await;
    stack
        .wait_counts(ITEM, "10 orders paid", DRAIN, |c| n(c, "PAID") == 10)
        .await;
    stack.check_and_audit(ITEM, &accepted).await;

    let restocks = history(&stack, ITEM, Some("restock"), 20).await;
    assert_eq!(restocks.len(), 1, "{restocks:?}");
    let row = &restocks[0];
    assert_eq!(row["delta"], RESTOCK, "{row}");
    assert_eq!(row["order_id"], Value::Null, "{row}");
    assert_eq!(row["reason"], "the second truck arrived", "{row}");
    assert!(row["adjustment_id"].is_string(), "{row}");
    assert_eq!(
        row["after"]["available"].as_i64().unwrap() - row["before"]["available"].as_i64().unwrap(),
        RESTOCK
    );
    assert!(pending(&stack, ITEM).await.is_empty());
    let (status, view) = stack
        .admin(Method::GET, &format!("/admin/items/{ITEM}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(view["stock"], STOCK + RESTOCK, "{view}");
    assert_eq!(view["redis"]["remaining"], 0, "{view}");
}

async fn shrink_stops_at_the_units_live_orders_hold(backend: Backend) {
    const ITEM: u64 = 8;
    let stack = Stack::start(backend, 900, WorkersMode::InProcess).await;
    stack.create_item(ITEM, 10, 1).await;
    let accepted = stack.buy_awaiting_payment(1..=4, ITEM, 4, 4).await;
    let db_before = stack.db_item(ITEM).await;
    assert_eq!(db_before, (10, 6, 4, 0));
    let redis_before = redis_item(&stack, ITEM).await;
    assert_eq!(redis_before, (Some(6), Some(10)));

    // One unit more than is free: refused, and nothing changed anywhere.
    let (status, body) = stack
        .patch_item(ITEM, json!({"stock_delta": -7, "reason": "water damage"}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "insufficient_stock", "{body}");
    assert_eq!(stack.db_item(ITEM).await, db_before);
    assert_eq!(redis_item(&stack, ITEM).await, redis_before);
    assert!(history(&stack, ITEM, Some("shrink"), 20).await.is_empty());
    assert!(pending(&stack, ITEM).await.is_empty());

    // Every free unit: applied to both, and recorded with its reason.
    let reason = "water damage 📦 in aisle 4";
    let (status, item) = stack
        .patch_item(ITEM, json!({"stock_delta": -6, "reason": reason}))
        .await;
    assert_eq!(status, 200, "{item}");
    assert_eq!(item["stock"], 4, "{item}");
    assert_eq!(item["redis"]["remaining"], 0, "{item}");
    assert_eq!(
        item["db"],
        json!({"available": 0, "locked": 4, "sold": 0}),
        "{item}"
    );
    assert_eq!(stack.db_item(ITEM).await, (4, 0, 4, 0));
    assert_eq!(redis_item(&stack, ITEM).await, (Some(0), Some(4)));
    let shrinks = history(&stack, ITEM, Some("shrink"), 20).await;
    assert_eq!(shrinks.len(), 1, "{shrinks:?}");
    let row = &shrinks[0];
    assert_eq!(row["cause"], "shrink");
    assert_eq!(row["delta"], -6, "{row}");
    assert_eq!(row["reason"], reason, "{row}");
    assert_eq!(
        row["before"],
        json!({"available": 6, "locked": 4, "sold": 0})
    );
    assert_eq!(
        row["after"],
        json!({"available": 0, "locked": 4, "sold": 0})
    );
    let (status, body) = stack.buy(99, ITEM).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("sold_out")));

    stack.check_and_audit(ITEM, &accepted).await;
}

async fn a_crash_between_redis_and_the_database_is_repaired_once(backend: Backend) {
    const ITEM: u64 = 9;
    let mut stack = Stack::start(backend, 900, WorkersMode::None).await;
    stack.create_item(ITEM, 20, 1).await;
    // No workers yet: the order is only in Redis's read model, and the admin view shows it there.
    let order = stack.buy_accepted(1, ITEM).await;
    let (status, view) = stack
        .admin(Method::GET, &format!("/admin/orders/{order}"), None)
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "PENDING", "{view}");
    assert_eq!(view["user_id"], 1, "{view}");
    assert_eq!(view["payments"], json!([]), "{view}");
    assert_eq!(view["history"], json!([]), "{view}");

    stack
        .start_workers_with_intervals(Intervals {
            reconcile: Duration::from_millis(100),
            sweep: Duration::from_secs(1),
            adjustment_age: Duration::from_millis(300),
        })
        .await;
    stack.wait_awaiting_payment(ITEM, 1).await;

    // A gateway that crashed right after the Redis half of a restock.
    let scripts = Scripts::new(stack.keys.clone());
    let id = AdjustmentId(
        Snowflake::new(1000)
            .next(gene_of_item(ItemId(ITEM)))
            .unwrap(),
    );
    let adj = PendingAdjustment {
        item: ItemId(ITEM),
        delta: 5,
        at_ms: now_ms() as i64,
        reason: "restocked, then the gateway crashed".into(),
    };
    assert_eq!(
        scripts.adjust_stock(&stack.redis, id, &adj).await.unwrap(),
        Adjusted::Applied {
            remaining: 24,
            stock: 25
        }
    );
    // Sent again (a client's retry of a lost answer): nothing more.
    assert_eq!(
        scripts.adjust_stock(&stack.redis, id, &adj).await.unwrap(),
        Adjusted::AlreadyPending
    );
    assert_eq!(redis_item(&stack, ITEM).await, (Some(24), Some(25)));
    assert_eq!(stack.db_item(ITEM).await.0, 20, "the database half not yet");

    // The reconciler applies the database half once the entry is older than its threshold.
    wait_for("the reconciler to settle the adjustment", DRAIN, || async {
        pending(&stack, ITEM).await.is_empty().then_some(())
    })
    .await;
    assert_eq!(stack.db_item(ITEM).await, (25, 24, 1, 0));
    let rows_of_id = format!(
        "SELECT COUNT(*) AS n FROM inventory_history WHERE adjustment_id = {}",
        id.0
    );
    assert_eq!(stack.count(&rows_of_id).await, 1);
    let restocks = history(&stack, ITEM, Some("restock"), 20).await;
    assert_eq!(restocks.len(), 1, "{restocks:?}");
    assert_eq!(restocks[0]["reason"], adj.reason.as_str());
    assert_eq!(restocks[0]["adjustment_id"], id.to_string());

    // A crash after the database half, before the entry went: the reconciler only removes it.
    let entry = format!("{} {} {} {}", ITEM, adj.delta, adj.at_ms, adj.reason);
    let _: i64 = stack
        .redis
        .hset(
            stack.keys.adjustments(gene_of_item(ItemId(ITEM))),
            (id.to_string(), entry),
        )
        .await
        .unwrap();
    wait_for(
        "the reconciler to remove the settled entry",
        DRAIN,
        || async { pending(&stack, ITEM).await.is_empty().then_some(()) },
    )
    .await;
    assert_eq!(stack.db_item(ITEM).await, (25, 24, 1, 0), "applied once");
    assert_eq!(stack.count(&rows_of_id).await, 1);
    assert_eq!(redis_item(&stack, ITEM).await, (Some(24), Some(25)));
    // Settling it once more changes nothing either.
    assert_eq!(
        stock::settle(&stack.db, &stack.redis, &scripts, id, &adj)
            .await
            .unwrap(),
        Settled::AlreadyApplied
    );
    assert_eq!(stack.db_item(ITEM).await, (25, 24, 1, 0));

    // A crash between the database and Redis writes of a settings change: the reconciler copies
    // the database's into Redis.
    stack
        .db
        .execute_raw(stack.sql(&format!(
            "UPDATE items SET per_user_limit = 3 WHERE id = {ITEM}"
        )))
        .await
        .unwrap();
    wait_for("the per-user limit copied into Redis", DRAIN, || async {
        let limit: Option<i64> = stack
            .redis
            .hget(stack.keys.item(ItemId(ITEM)), "limit")
            .await
            .unwrap();
        (limit == Some(3)).then_some(())
    })
    .await;

    stack.check_and_audit(ITEM, &HashSet::from([order])).await;
}

async fn a_rebuild_counts_the_pending_adjustments(backend: Backend) {
    const ITEM: u64 = 11;
    let mut stack = Stack::start(backend, 900, WorkersMode::None).await;
    // A reconciler that leaves every adjustment to its gateway.
    stack
        .start_workers_with_intervals(Intervals {
            adjustment_age: Duration::from_secs(3600),
            ..Intervals::default()
        })
        .await;
    stack.create_item(ITEM, 10, 2).await;
    let accepted = stack.buy_awaiting_payment(1..=3, ITEM, 3, 3).await;
    let scripts = Scripts::new(stack.keys.clone());
    let gene = gene_of_item(ItemId(ITEM));
    let id = AdjustmentId(Snowflake::new(1001).next(gene).unwrap());
    let adj = PendingAdjustment {
        item: ItemId(ITEM),
        delta: 4,
        at_ms: now_ms() as i64,
        reason: "in flight while Redis lost the item".into(),
    };
    assert!(matches!(
        scripts.adjust_stock(&stack.redis, id, &adj).await.unwrap(),
        Adjusted::Applied { .. }
    ));
    // Redis loses the item between the two halves, and the workers rebuild the gene from a
    // database that does not have the adjustment yet.
    let _: i64 = stack
        .redis
        .del(stack.keys.item(ItemId(ITEM)))
        .await
        .unwrap();
    let _: i64 = stack
        .redis
        .hdel(stack.keys.state(gene), "ready")
        .await
        .unwrap();
    wait_for("the gene rebuilt", DRAIN, || async {
        let ready: Option<String> = stack
            .redis
            .hget(stack.keys.state(gene), "ready")
            .await
            .ok()?;
        ready.map(|_| ())
    })
    .await;
    assert_eq!(
        redis_item(&stack, ITEM).await,
        (Some(11), Some(14)),
        "the rebuilt item counts the pending adjustment"
    );
    assert_eq!(stack.db_item(ITEM).await.0, 10);
    // Then its gateway finishes it: both agree.
    assert!(matches!(
        stock::settle(&stack.db, &stack.redis, &scripts, id, &adj)
            .await
            .unwrap(),
        Settled::Applied(_)
    ));
    assert_eq!(stack.db_item(ITEM).await, (14, 11, 3, 0));
    assert!(pending(&stack, ITEM).await.is_empty());
    stack.check_and_audit(ITEM, &accepted).await;
}

async fn ending_listing_and_history(backend: Backend) {
    const ITEM: u64 = 21;
    let stack = Stack::start(backend, 900, WorkersMode::InProcess).await;
    for id in [ITEM, 22, 23, 24, 25] {
        stack.create_item(id, 10, 1).await;
    }

    // Every item once, by id, a page at a time.
    let mut seen = Vec::new();
    let mut path = "/admin/items?limit=2".to_owned();
    loop {
        let (status, page) = stack.admin(Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2, "{page}");
        for i in items {
            seen.push(i["item_id"].as_i64().unwrap());
            assert_eq!(i["db"]["available"], 10, "{i}");
            assert_eq!(i["stock"], 10, "{i}");
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/admin/items?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, [21, 22, 23, 24, 25]);
    let (_, all) = stack.admin(Method::GET, "/admin/items", None).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 5);
    assert_eq!(all["next_cursor"], Value::Null);

    // A sale's life: four orders, one paid, one cancelled, a restock and a shrink.
    let accepted = stack.buy_awaiting_payment(1..=4, ITEM, 4, 4).await;
    let mut ids: Vec<OrderId> = accepted.iter().copied().collect();
    ids.sort();
    let (paid, cancelled) = (ids[0], ids[1]);
    let stack_ref = &stack;
    let owner = |o: OrderId| async move {
        let (_, v) = stack_ref
            .admin(Method::GET, &format!("/admin/orders/{o}"), None)
            .await;
        v["user_id"].as_u64().unwrap()
    };
    assert_eq!(stack.pay(paid, "pay_admin_1", 1999, true).await, 200);
    let (status, _) = stack.cancel(owner(cancelled).await, cancelled).await;
    assert_eq!(status, 202);
    stack
        .wait_counts(ITEM, "one paid, one cancelled", DRAIN, |c| {
            n(c, "PAID") == 1 && n(c, "CANCELLED") == 1
        })
        .await;
    for (delta, reason) in [(3, "r1"), (-1, "r2")] {
        let (status, body) = stack
            .patch_item(ITEM, json!({"stock_delta": delta, "reason": reason}))
            .await;
        assert_eq!(status, 200, "{body}");
    }

    // Newest first, in pages or all at once alike.
    let all = history(&stack, ITEM, None, 100).await;
    let causes: Vec<&str> = all.iter().map(|h| h["cause"].as_str().unwrap()).collect();
    assert_eq!(causes.len(), 8, "{causes:?}");
    assert_eq!(&causes[..2], ["shrink", "restock"]);
    let mut older: Vec<&str> = causes[2..].to_vec();
    older.sort();
    assert_eq!(
        older,
        [
            "lock",
            "lock",
            "lock",
            "lock",
            "release:cancelled_by_buyer",
            "sold"
        ]
    );
    assert_eq!(all, history(&stack, ITEM, None, 3).await);
    for h in &all {
        assert_eq!(
            h["delta"].as_i64().unwrap(),
            h["after"]["available"].as_i64().unwrap() - h["before"]["available"].as_i64().unwrap()
        );
    }
    let locks = history(&stack, ITEM, Some("lock"), 3).await;
    assert_eq!(locks.len(), 4);
    assert!(
        locks
            .iter()
            .all(|h| h["order_id"].is_string() && h["reason"].is_null())
    );
    let releases = history(&stack, ITEM, Some("release"), 20).await;
    assert_eq!(releases.len(), 1, "{releases:?}");
    assert_eq!(releases[0]["order_id"], cancelled.to_string());
    assert_eq!(
        history(&stack, ITEM, Some("release:cancelled_by_buyer"), 20).await,
        releases
    );
    assert!(
        history(&stack, ITEM, Some("nothing_like_it"), 20)
            .await
            .is_empty()
    );
    let restock = history(&stack, ITEM, Some("restock"), 20).await;
    assert_eq!(restock.len(), 1);
    assert_eq!(
        (restock[0]["delta"].as_i64(), restock[0]["reason"].as_str()),
        (Some(3), Some("r1"))
    );

    // Any order, with its payments and its own history rows.
    let (status, view) = stack
        .admin(Method::GET, &format!("/admin/orders/{paid}"), None)
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "PAID", "{view}");
    assert_eq!(view["order_id"], paid.to_string());
    let payments = view["payments"].as_array().unwrap();
    let applied: Vec<&Value> = payments
        .iter()
        .filter(|p| p["payment_id"] == "pay_admin_1")
        .collect();
    assert_eq!(applied.len(), 1, "{view}");
    assert_eq!(applied[0]["status"], "SUCCEEDED");
    assert_eq!(applied[0]["applied"], true);
    assert_eq!(applied[0]["amount_cents"], 1999);
    assert!(applied[0]["created_at"].is_string() && applied[0]["updated_at"].is_string());
    let causes: Vec<&str> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["cause"].as_str().unwrap())
        .collect();
    assert_eq!(causes, ["sold", "lock"], "{view}");
    for (path, code) in [
        ("/admin/orders/123", "not_found"),
        ("/admin/orders/abc", "not_found"),
        ("/admin/orders/99999999999999999999", "not_found"),
        ("/admin/items/999/history", "unknown_item"),
        ("/admin/items/abc/history", "unknown_item"),
    ] {
        let (status, body) = stack.admin(Method::GET, path, None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some(code)),
            "{path}"
        );
    }

    // The window and the limit: a later start, a higher limit, ending now, and reopening.
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (status, item) = stack
        .patch_item(
            ITEM,
            json!({"starts_at": later, "reason": "moved to the evening"}),
        )
        .await;
    assert_eq!(status, 200, "{item}");
    assert!(item["starts_at"].is_string(), "{item}");
    assert_eq!(stack.buy(50, ITEM).await.1["error"], "not_started");
    let (status, item) = stack
        .patch_item(
            ITEM,
            json!({"starts_at": null, "per_user_limit": 2, "reason": "open again, two each"}),
        )
        .await;
    assert_eq!(status, 200, "{item}");
    assert_eq!(item["per_user_limit"], 2, "{item}");
    assert_eq!(item["starts_at"], Value::Null, "{item}");
    // A second unit within the new limit.
    let second = stack.buy_accepted(owner(ids[2]).await, ITEM).await;

    let (status, ended) = stack
        .admin(Method::POST, &format!("/admin/items/{ITEM}/end"), None)
        .await;
    assert_eq!(status, 200, "{ended}");
    assert!(ended["ends_at"].is_string(), "{ended}");
    assert_eq!(stack.buy(51, ITEM).await.1["error"], "ended");
    let resp = stack
        .http
        .post(format!("{}/items/{ITEM}/ticket", stack.url))
        .bearer_auth(stack.jwt.mint(UserId(51), 3600))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    // Ended already: it keeps its end.
    let (status, again) = stack
        .admin(Method::POST, &format!("/admin/items/{ITEM}/end"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(again["ends_at"], ended["ends_at"]);
    // Another item that was upcoming ends before it starts.
    let (status, _) = stack
        .patch_item(22, json!({"starts_at": later, "reason": "upcoming"}))
        .await;
    assert_eq!(status, 200);
    let (status, cancelled_sale) = stack.admin(Method::POST, "/admin/items/22/end", None).await;
    assert_eq!(status, 200, "{cancelled_sale}");
    assert_eq!(cancelled_sale["starts_at"], cancelled_sale["ends_at"]);
    assert_eq!(stack.buy(52, 22).await.1["error"], "ended");

    let mut accepted = accepted;
    accepted.insert(second);
    stack.wait_awaiting_payment(ITEM, 3).await;
    stack.check_and_audit(ITEM, &accepted).await;
}

async fn bad_admin_requests_change_nothing(backend: Backend) {
    const ITEM: u64 = 31;
    let stack = Stack::start(backend, 900, WorkersMode::InProcess).await;
    stack.create_item(ITEM, 10, 1).await;
    let db_before = stack.db_item(ITEM).await;
    let (_, view_before) = stack
        .admin(Method::GET, &format!("/admin/items/{ITEM}"), None)
        .await;

    // Without the token, or with another: 401 on every route.
    let routes = [
        (Method::GET, "/admin/items".to_owned(), None),
        (
            Method::PATCH,
            format!("/admin/items/{ITEM}"),
            Some(json!({"stock_delta": 5, "reason": "x"})),
        ),
        (Method::POST, format!("/admin/items/{ITEM}/end"), None),
        (Method::GET, format!("/admin/items/{ITEM}/history"), None),
        (Method::GET, "/admin/orders/1".to_owned(), None),
    ];
    for (method, path, body) in &routes {
        for token in [None, Some("not-the-admin")] {
            let mut req = stack
                .http
                .request(method.clone(), format!("{}{path}", stack.url));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{method} {path} with {token:?}");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"], "unauthorized");
        }
    }

    let long = "x".repeat(201);
    let patches = [
        json!({}),
        json!({"reason": "nothing else"}),
        json!({"stock_delta": 0, "reason": "zero is nothing"}),
        json!({"stock_delta": 5}),
        json!({"stock_delta": 5, "reason": ""}),
        json!({"stock_delta": 5, "reason": "   "}),
        json!({"stock_delta": 5, "reason": "a\u{0001}b"}),
        json!({"stock_delta": 5, "reason": "line\nbreak"}),
        json!({"stock_delta": 5, "reason": long}),
        json!({"stock_delta": 5, "reason": 7}),
        json!({"stock_delta": 1.5, "reason": "x"}),
        json!({"stock_delta": "5", "reason": "x"}),
        json!({"stock_delta": null, "reason": "x"}),
        json!({"stock_delta": 1_000_000_001_i64, "reason": "x"}),
        json!({"stock_delta": -1_000_000_001_i64, "reason": "x"}),
        json!({"stock_delta": 9_223_372_036_854_775_807_i64, "reason": "x"}),
        json!({"stock_delta": 5, "reason": "x", "colour": "red"}),
        json!({"per_user_limit": 0, "reason": "x"}),
        json!({"per_user_limit": -1, "reason": "x"}),
        json!({"per_user_limit": null, "reason": "x"}),
        json!({"per_user_limit": 3_000_000_000_i64, "reason": "x"}),
        json!({"starts_at": "tomorrow", "reason": "x"}),
        json!({"ends_at": 5, "reason": "x"}),
        json!({"starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z", "reason": "x"}),
        json!({"stock_delta": 5, "starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-02T00:00:00Z", "reason": "x"}),
        json!([1]),
        json!("patch"),
    ];
    for body in patches {
        let (status, answer) = stack.patch_item(ITEM, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"], "bad_request", "{body}: {answer}");
        assert!(answer["message"].is_string());
    }
    // Malformed JSON, and a body past the limit.
    for (raw, want) in [
        ("{\"stock_delta\": ".to_owned(), 400),
        (format!("{{\"reason\": \"{}\"}}", "x".repeat(20_000)), 413),
    ] {
        let resp = stack
            .http
            .patch(format!("{}/admin/items/{ITEM}", stack.url))
            .bearer_auth(&stack.env.config.admin_token)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), want);
    }
    // A window that ends before the sale's start, given the start it has.
    let (status, _) = stack
        .patch_item(
            ITEM,
            json!({"starts_at": "2030-01-02T00:00:00Z", "reason": "later"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = stack
        .patch_item(
            ITEM,
            json!({"ends_at": "2030-01-01T00:00:00Z", "stock_delta": 5, "reason": "x"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(stack.db_item(ITEM).await, db_before, "no stock changed");
    let (status, _) = stack
        .patch_item(ITEM, json!({"starts_at": null, "reason": "back"}))
        .await;
    assert_eq!(status, 200);

    // Unknown items, and ids that are no ids.
    for path in [
        "/admin/items/999999",
        "/admin/items/abc",
        "/admin/items/-1",
        "/admin/items/99999999999999999999",
    ] {
        let (status, body) = stack
            .admin(
                Method::PATCH,
                path,
                Some(json!({"stock_delta": 1, "reason": "x"})),
            )
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("unknown_item")),
            "{path}"
        );
        let (status, _) = stack
            .admin(Method::POST, &format!("{path}/end"), None)
            .await;
        assert_eq!(status, 404, "{path}/end");
    }

    // Bad query strings.
    for path in [
        "/admin/items?limit=0",
        "/admin/items?limit=101",
        "/admin/items?limit=x",
        "/admin/items?cursor=abc",
        "/admin/items?cursor=",
        "/admin/items?limit=1&limit=2",
        "/admin/items?colour=red",
        &format!("/admin/items/{ITEM}/history?cause=Lock"),
        &format!("/admin/items/{ITEM}/history?cause=a%20b"),
        &format!("/admin/items/{ITEM}/history?cause={}", "a".repeat(33)),
        &format!("/admin/items/{ITEM}/history?limit=-5"),
        &format!("/admin/items/{ITEM}/history?cursor=-5"),
        &format!("/admin/items/{ITEM}/history?order=asc"),
    ] {
        let (status, body) = stack.admin(Method::GET, path, None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{path}"
        );
    }
    // Cursors past every id: empty pages, not errors.
    let (status, page) = stack
        .admin(Method::GET, "/admin/items?cursor=9999999999999999999", None)
        .await;
    assert_eq!((status, page["items"].clone()), (200, json!([])));
    let (status, page) = stack
        .admin(
            Method::GET,
            &format!("/admin/items/{ITEM}/history?cursor=9999999999999999999"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");

    // Methods the paths do not take.
    for (method, path, allow) in [
        (Method::DELETE, "/admin/items".to_owned(), "GET, POST"),
        (Method::PUT, format!("/admin/items/{ITEM}"), "GET, PATCH"),
        (Method::GET, format!("/admin/items/{ITEM}/end"), "POST"),
        (Method::POST, format!("/admin/items/{ITEM}/history"), "GET"),
        (Method::DELETE, "/admin/orders/1".to_owned(), "GET"),
    ] {
        let resp = stack
            .http
            .request(method.clone(), format!("{}{path}", stack.url))
            .bearer_auth(&stack.env.config.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert_eq!(resp.headers()["allow"], allow, "{method} {path}");
    }

    // Nothing of it changed anything.
    assert_eq!(stack.db_item(ITEM).await, db_before);
    let (_, view_after) = stack
        .admin(Method::GET, &format!("/admin/items/{ITEM}"), None)
        .await;
    assert_eq!(view_after, view_before);
    assert!(history(&stack, ITEM, None, 20).await.is_empty());
    assert!(pending(&stack, ITEM).await.is_empty());
}
