//! `GET /orders`: a buyer's own orders, newest first, page by page, through the real gateway,
//! workers and database (PostgreSQL and MariaDB): every order exactly once, the status filter,
//! nobody else's orders, and a `400` for every malformed parameter.

mod common;

use common::{DRAIN, Stack, WorkersMode, n, stack_tests};
use sea_orm::ConnectionTrait;
use seckill_schema::{OrderId, UserId};
use seckill_testkit::Backend;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

const ITEM: u64 = 1;
const BUYER: u64 = 7;
const OTHER: u64 = 8;
const ORDERS: usize = 250;

async fn get(stack: &Stack, user: Option<u64>, path: &str) -> (u16, Value) {
    let mut req = stack.http.get(format!("{}{path}", stack.url));
    if let Some(user) = user {
        req = req.bearer_auth(stack.jwt.mint(UserId(user), 3600));
    }
    let resp = req.send().await.expect("GET");
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or_default(),
    )
}

/// Every page of `user`'s orders under `query` (`limit` orders each), in the order served; checks
/// each page's size and that only the last has no `next_cursor`.
async fn all_pages(stack: &Stack, user: u64, query: &str, limit: usize) -> Vec<Value> {
    let mut orders = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/orders?limit={limit}{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = get(stack, Some(user), &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let page = body["orders"].as_array().expect("orders").clone();
        assert!(page.len() <= limit, "{path}: {} orders", page.len());
        orders.extend(page.iter().cloned());
        match &body["next_cursor"] {
            Value::Null => return orders,
            Value::String(c) => {
                assert_eq!(page.len(), limit, "a page before the last is full");
                cursor = Some(c.clone());
            }
            other => panic!("next_cursor is a string or null: {other}"),
        }
    }
}

fn id_of(order: &Value) -> OrderId {
    order["order_id"]
        .as_str()
        .expect("order_id is a string")
        .parse()
        .expect("a decimal id")
}

/// The buyer's orders by status, from the database.
async fn in_database(stack: &Stack, user: u64) -> BTreeMap<String, Vec<OrderId>> {
    let mut by_status: BTreeMap<String, Vec<OrderId>> = BTreeMap::new();
    for &status in seckill_schema::OrderStatus::ALL {
        let rows = stack
            .db
            .query_all_raw(stack.sql(&format!(
                "SELECT id FROM orders WHERE user_id = {user} AND status = '{status}' ORDER BY id DESC"
            )))
            .await
            .expect("orders");
        let ids: Vec<OrderId> = rows
            .into_iter()
            .map(|r| OrderId(r.try_get::<i64>("", "id").unwrap() as u64))
            .collect();
        if !ids.is_empty() {
            by_status.insert(status.to_string(), ids);
        }
    }
    by_status
}

async fn a_buyers_orders_page_by_page(backend: Backend) {
    let stack = Stack::start_configured(backend, WorkersMode::InProcess, |c| {
        c.payment_timeout = Duration::from_secs(600);
    })
    .await;
    stack.create_item(ITEM, 1000, ORDERS as i32 + 10).await;
    let mine = stack
        .buy_many(std::iter::repeat_n(BUYER, ORDERS), ITEM, 32)
        .await;
    assert_eq!(mine.len(), ORDERS);
    let theirs = stack.buy_many(std::iter::repeat_n(OTHER, 3), ITEM, 3).await;
    stack
        .wait_awaiting_payment(ITEM, (ORDERS + theirs.len()) as i64)
        .await;

    // Several statuses: some paid (and some of those shipped), some cancelled.
    let mut sorted = mine.clone();
    sorted.sort();
    for id in &sorted[..60] {
        assert_eq!(stack.pay(*id, &format!("pay_{id}"), 1999, true).await, 200);
    }
    for id in &sorted[60..100] {
        assert_eq!(stack.cancel(BUYER, *id).await.0, 202);
    }
    stack
        .wait_counts(ITEM, "paid and cancelled", DRAIN, |c| {
            n(c, "PAID") == 60 && n(c, "CANCELLED") == 40
        })
        .await;
    for id in &sorted[..10] {
        stack.wait_shown(*id, "PAID").await;
        assert_eq!(stack.ship(*id).await.0, 202);
    }
    stack
        .wait_counts(ITEM, "shipped", DRAIN, |c| n(c, "SHIPPED") == 10)
        .await;

    let db = in_database(&stack, BUYER).await;
    let mut expected: Vec<OrderId> = db.values().flatten().copied().collect();
    expected.sort_by(|a, b| b.cmp(a));
    assert_eq!(expected.len(), ORDERS);
    assert_eq!(
        expected.iter().copied().collect::<HashSet<_>>(),
        mine.iter().copied().collect::<HashSet<_>>()
    );

    // Every order exactly once, newest first, whatever the page size.
    for limit in [1, 7, 100] {
        let served = all_pages(&stack, BUYER, "", limit).await;
        let ids: Vec<OrderId> = served.iter().map(id_of).collect();
        assert_eq!(
            ids, expected,
            "limit {limit}: every order once, newest first"
        );
    }
    // Each as GET /orders/{id} shows it (the payment shown included).
    let served = all_pages(&stack, BUYER, "", 100).await;
    for order in served.iter().step_by(5).chain(served.iter().rev().take(60)) {
        let (status, mut one) =
            get(&stack, Some(BUYER), &format!("/orders/{}", id_of(order))).await;
        assert_eq!(status, 200);
        // The read model stamps its own `updated_at` when it mirrors a change, a few ms after
        // the database's.
        let mut listed = order.clone();
        listed["updated_at"] = Value::Null;
        one["updated_at"] = Value::Null;
        assert_eq!(
            listed, one,
            "the list shows the order as GET /orders/{{id}} does"
        );
    }
    let paid = served
        .iter()
        .find(|o| o["status"] == "PAID")
        .expect("a paid order");
    assert_eq!(paid["payment"]["status"], "SUCCEEDED", "{paid}");

    // The status filter: each status's orders, all of them, newest first.
    for (status, ids) in &db {
        let served = all_pages(&stack, BUYER, &format!("&status={status}"), 25).await;
        let got: Vec<OrderId> = served.iter().map(id_of).collect();
        assert_eq!(&got, ids, "status={status}");
        assert!(served.iter().all(|o| o["status"] == status.as_str()));
    }
    let (status, body) = get(&stack, Some(BUYER), "/orders?status=COMPLETED").await;
    assert_eq!(status, 200);
    assert_eq!(body["orders"], serde_json::json!([]));
    assert_eq!(body["next_cursor"], Value::Null);

    // The default page: the 20 newest.
    let (status, body) = get(&stack, Some(BUYER), "/orders").await;
    assert_eq!(status, 200);
    let ids: Vec<OrderId> = body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(ids, expected[..20]);
    assert!(body["next_cursor"].is_string());

    // Nobody sees another's orders; a cursor from one buyer's pages does not leak the other's.
    let cursor = body["next_cursor"].as_str().unwrap().to_owned();
    let others = all_pages(&stack, OTHER, "", 2).await;
    let other_ids: HashSet<OrderId> = others.iter().map(id_of).collect();
    assert_eq!(other_ids, theirs.iter().copied().collect());
    assert!(others.iter().all(|o| o["user_id"] == OTHER));
    let (status, body) = get(&stack, Some(OTHER), &format!("/orders?cursor={cursor}")).await;
    assert_eq!(status, 200);
    assert!(
        body["orders"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| theirs.contains(&id_of(o))),
        "{body}"
    );
    let (status, body) = get(&stack, Some(9), "/orders").await;
    assert_eq!(status, 200);
    assert_eq!(body["orders"], serde_json::json!([]));
    assert_eq!(body["next_cursor"], Value::Null);

    // Malformed parameters: 400, with the contract's body.
    for query in [
        "cursor=not-a-cursor",
        "cursor=",
        "cursor=AQ",
        "limit=0",
        "limit=101",
        "limit=ten",
        "limit=-1",
        "status=paid",
        "status=SHIPPED_SOON",
        "status=PAID&status=SHIPPED",
        "page=2",
    ] {
        let (status, body) = get(&stack, Some(BUYER), &format!("/orders?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"], "bad_request", "{query}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, body) = get(&stack, None, "/orders").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let resp = stack
        .http
        .post(format!("{}/orders", stack.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers()["allow"], "GET");
}

stack_tests! {
    a_buyers_orders_page_by_page_on_postgres => a_buyers_orders_page_by_page(Backend::Postgres);
    a_buyers_orders_page_by_page_on_mariadb => a_buyers_orders_page_by_page(Backend::MySql);
}
