//! `POST /seckill` for one buyer: the per-user limit under concurrency, `Idempotency-Key`, the sale
//! window and ticket issuance, reading an order back, and the per-user rate limit.

mod common;

use common::{Events, TestApp, accepted_orders, concurrently, wait_for_empty_outbox};
use http::StatusCode;
use seckill_schema::OrderId;
use seckill_testkit::{Backend, TestEnv, wait_for};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

fn rfc3339(offset_secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(offset_secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_racing_fifty_requests_gets_one_order() {
    const ITEM: u64 = 7;
    const STOCK: i64 = 10;
    let app = TestApp::with_item(ITEM, STOCK, 1).await;
    let events = Events::bind(&app.config).await;
    let body = app.purchase(1, ITEM);

    let answers = concurrently((0..50).collect(), 50, |_| {
        let http = app.http.clone();
        let body = body.clone();
        async move { http.seckill(&body).await }
    })
    .await;

    let accepted: Vec<OrderId> = accepted_orders(&answers);
    assert_eq!(accepted.len(), 1, "exactly one order for one user");
    let order = accepted[0];
    for r in answers.iter().filter(|r| r.status != StatusCode::ACCEPTED) {
        r.assert_error(StatusCode::CONFLICT, "limit_reached");
        assert_eq!(r.order_id(), order, "limit_reached names the held order");
    }
    assert_eq!(app.remaining(ITEM).await, Some(STOCK - 1));

    // The same key answers the same, however often and however concurrently it is retried.
    let key = "checkout-42";
    let body2 = app.purchase(2, ITEM);
    let first = app.http.seckill_with_key(key, &body2).await.accepted();
    assert_ne!(first, order);
    let retries = concurrently((0..20).collect(), 20, |_| {
        let http = app.http.clone();
        let body = body2.clone();
        async move { http.seckill_with_key(key, &body).await }
    })
    .await;
    for r in &retries {
        assert_eq!(r.accepted(), first, "a retry gets the first answer back");
    }
    assert_eq!(
        app.remaining(ITEM).await,
        Some(STOCK - 2),
        "retries sold nothing more"
    );
    // Without the key, the same user is at the limit.
    let again = app.http.seckill(&body2).await;
    again.assert_error(StatusCode::CONFLICT, "limit_reached");
    assert_eq!(again.order_id(), first);
    // The key belongs to its user: another user with the same key gets an order of their own.
    let third = app
        .http
        .seckill_with_key(key, &app.purchase(3, ITEM))
        .await
        .accepted();
    assert!(third != first && third != order);
    // An unusable key is refused before anything is sold.
    let long = "k".repeat(129);
    app.http
        .seckill_with_key(&long, &app.purchase(4, ITEM))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(app.remaining(ITEM).await, Some(STOCK - 3));

    let expected = BTreeSet::from([order, first, third]);
    events.wait_for_ids(&expected, common::RELAY_DEADLINE).await;
    wait_for_empty_outbox(&app.redis, &app.keys).await;
    events.drain().await;
    assert_eq!(
        events.events().len(),
        3,
        "one event per order, none for a replay"
    );
    assert_eq!(events.ids(), expected);
    events.close().await;
    app.stop().await.expect("run() returns Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_its_key_is_answered_even_after_the_sale_sold_out() {
    const ITEM: u64 = 8;
    let app = TestApp::with_item(ITEM, 2, 1).await;
    let key = "retry-after-sellout";
    let body1 = app.purchase(1, ITEM);
    let first = app.http.seckill_with_key(key, &body1).await.accepted();
    app.http.seckill(&app.purchase(2, ITEM)).await.accepted();
    // Sold out now; this also raises the gateway's local sold-out flag.
    app.http
        .seckill(&app.purchase(3, ITEM))
        .await
        .assert_error(StatusCode::CONFLICT, "sold_out");
    let retry = app.http.seckill_with_key(key, &body1).await;
    assert_eq!(retry.accepted(), first, "the first answer, not sold_out");
    assert_eq!(app.remaining(ITEM).await, Some(0));
    app.stop().await.expect("run() returns Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_its_key_is_answered_after_the_sale_ended() {
    const ITEM: u64 = 9;
    const OTHER: u64 = 10;
    let app = TestApp::spawn().await;
    let mut body = common::item_body(ITEM, 5, 1);
    body["ends_at"] = json!(rfc3339(2));
    app.create_item_with(&body).await;
    app.create_item(OTHER, 5, 1).await;
    let key = "retry-after-the-end";
    let body1 = app.purchase(1, ITEM);
    let first = app.http.seckill_with_key(key, &body1).await.accepted();
    wait_for("the sale to end", Duration::from_secs(10), || async {
        let r = app.http.seckill(&app.purchase(2, ITEM)).await;
        (r.status == StatusCode::CONFLICT && r.error_code() == "ended").then_some(())
    })
    .await;
    let retry = app.http.seckill_with_key(key, &body1).await;
    assert_eq!(retry.accepted(), first, "the first answer, not ended");
    // The key is scoped to the user and the item: the same key for another item is a new purchase.
    let other = app
        .http
        .seckill_with_key(key, &app.purchase(1, OTHER))
        .await
        .accepted();
    assert_ne!(other, first);
    app.stop().await.expect("run() returns Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sale_window_and_ticket_issuance() {
    const LATER: u64 = 21; // starts in an hour
    const SOON: u64 = 22; // starts in 30 s
    const OVER: u64 = 23; // ended a minute ago
    const OPEN: u64 = 24;
    let app = TestApp::spawn().await;
    let windowed = |item: u64, starts: i64, ends: i64| {
        let mut body = common::item_body(item, 5, 1);
        body["starts_at"] = json!(rfc3339(starts));
        body["ends_at"] = json!(rfc3339(ends));
        body
    };
    app.create_item_with(&windowed(LATER, 3600, 7200)).await;
    app.create_item_with(&windowed(SOON, 30, 3600)).await;
    app.create_item_with(&windowed(OVER, -7200, -60)).await;
    app.create_item(OPEN, 5, 1).await;

    // Buying, with a genuine ticket.
    app.http
        .seckill(&app.purchase(1, LATER))
        .await
        .assert_error(StatusCode::CONFLICT, "not_started");
    app.http
        .seckill(&app.purchase(1, SOON))
        .await
        .assert_error(StatusCode::CONFLICT, "not_started");
    app.http
        .seckill(&app.purchase(1, OVER))
        .await
        .assert_error(StatusCode::CONFLICT, "ended");

    // Ticket issuance: from 60 s before the start until the end.
    let user = app.jwt(1);
    let ticket = |item: u64| {
        let http = app.http.clone();
        let user = user.clone();
        async move {
            http.post_json(&format!("/items/{item}/ticket"), Some(&user), &json!({}))
                .await
        }
    };
    ticket(LATER)
        .await
        .assert_error(StatusCode::CONFLICT, "not_started");
    ticket(OVER)
        .await
        .assert_error(StatusCode::CONFLICT, "ended");
    ticket(999)
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_item");
    app.http
        .post_json(&format!("/items/{OPEN}/ticket"), None, &json!({}))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");

    // Within 60 s of the start: a ticket that outlives the wait for the start.
    let soon = ticket(SOON).await;
    assert_eq!(soon.status, StatusCode::OK, "{}", soon.text());
    let v = soon.json();
    let expires = chrono::DateTime::parse_from_rfc3339(v["expires_at"].as_str().unwrap())
        .expect("expires_at is RFC 3339")
        .timestamp();
    assert!(
        expires >= common::now_unix() + 30 + seckill_infra::auth::TICKET_TTL_SECS - 5,
        "the ticket lasts past the start: {v}"
    );
    let early = app
        .http
        .seckill(&json!({"item_id": SOON, "ticket": v["ticket"]}))
        .await;
    early.assert_error(StatusCode::CONFLICT, "not_started");

    // An open sale: the issued ticket buys.
    let open = ticket(OPEN).await;
    assert_eq!(open.status, StatusCode::OK, "{}", open.text());
    let t = open.json()["ticket"].as_str().unwrap().to_owned();
    app.http
        .seckill(&json!({"item_id": OPEN, "ticket": t}))
        .await
        .accepted();
    // A ticket binds its item.
    app.http
        .seckill(&json!({"item_id": SOON, "ticket": t}))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");

    for (item, left) in [(LATER, 5), (SOON, 5), (OVER, 5), (OPEN, 4)] {
        assert_eq!(app.remaining(item).await, Some(left), "item {item}");
    }
    assert_eq!(
        common::recorded_orders(&app.redis, &app.keys).await.len(),
        1
    );
    app.stop().await.expect("run() returns Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_just_accepted_order_is_pending_to_its_owner_only() {
    const ITEM: u64 = 31;
    let app = TestApp::with_item(ITEM, 3, 2).await;
    // Bought with the user's JWT instead of a ticket, two units.
    let resp = app
        .http
        .post_json(
            "/seckill",
            Some(&app.jwt(5)),
            &json!({"item_id": ITEM, "quantity": 2}),
        )
        .await;
    let id = resp.accepted();

    let mine = app
        .http
        .get(&format!("/orders/{id}"), Some(&app.jwt(5)))
        .await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.text());
    let v = mine.json();
    assert_eq!(v["order_id"], json!(id.to_string()));
    assert_eq!(v["status"], "PENDING");
    assert_eq!(v["user_id"], 5);
    assert_eq!(v["item_id"], ITEM);
    assert_eq!(v["quantity"], 2);
    assert_eq!(v["amount_cents"], 2 * common::PRICE_CENTS);
    assert_eq!(v["payment"], serde_json::Value::Null);
    for field in ["created_at", "updated_at"] {
        let t = v[field].as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(t).is_ok(),
            "{field} is RFC 3339: {v}"
        );
    }

    app.http
        .get(&format!("/orders/{id}"), Some(&app.jwt(6)))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    app.http
        .get(&format!("/orders/{}", id.0 + 1), Some(&app.jwt(5)))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    app.http
        .get("/orders/not-a-number", Some(&app.jwt(5)))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    app.http
        .get_error(
            &format!("/orders/{id}"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    app.stop().await.expect("run() returns Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_answers_429_with_retry_after() {
    const ITEM: u64 = 41;
    let mut env = TestEnv::new(Backend::Postgres);
    env.config.rate_per_user = 1;
    let app = TestApp::spawn_env(env).await;
    app.create_item(ITEM, 100, 1).await;
    let body = app.purchase(9, ITEM);
    let started = std::time::Instant::now();
    let mut answers = Vec::new();
    for _ in 0..10 {
        answers.push(app.http.seckill(&body).await);
    }
    let elapsed = started.elapsed();
    let limited: Vec<_> = answers
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert!(!limited.is_empty(), "some requests are rate limited");
    for r in &limited {
        r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        let after: u64 = r
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("a 429 carries Retry-After in seconds");
        assert!(after >= 1, "Retry-After: {after}");
    }
    // Burst of 2 at 1/s: at most 2 plus one a second got through.
    let passed = answers.len() - limited.len();
    assert!(
        passed as u64 <= 2 + elapsed.as_secs() + 1,
        "{passed} passed in {elapsed:?}"
    );
    assert_eq!(
        answers
            .iter()
            .filter(|r| r.status == StatusCode::ACCEPTED)
            .count(),
        1
    );
    // Ticket issuance shares the user's bucket.
    let t = app
        .http
        .post_json(
            &format!("/items/{ITEM}/ticket"),
            Some(&app.jwt(9)),
            &json!({}),
        )
        .await;
    if started.elapsed() < Duration::from_secs(1) {
        t.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    }
    // Another user has a bucket of their own.
    app.http.seckill(&app.purchase(10, ITEM)).await.accepted();
    assert_eq!(app.remaining(ITEM).await, Some(98));
    app.stop().await.expect("run() returns Ok");
}
