//! The public catalog: `GET /items/{item_id}` and `GET /items`, served from each gateway's cache
//! so that a crowd refreshing a product page costs Redis at most one read of the item a second.

mod common;

use common::{Http, Resp, TestApp};
use http::{Method, StatusCode};
use seckill_schema::snowflake::now_ms;
use seckill_testkit::{RedisOptions, RedisServer, wait_for};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const HOUR_MS: i64 = 3_600_000;

fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("a time in range")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn item_with_window(item: u64, stock: i64, starts: Option<i64>, ends: Option<i64>) -> Value {
    let mut body = common::item_body(item, stock, 1);
    if let Some(ms) = starts {
        body["starts_at"] = json!(rfc3339_ms(ms));
    }
    if let Some(ms) = ends {
        body["ends_at"] = json!(rfc3339_ms(ms));
    }
    body
}

/// Asserts a `200` of the catalog with its `Cache-Control`, and returns the body.
#[track_caller]
fn catalog_answer(resp: &Resp) -> Value {
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(
        resp.headers
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok()),
        Some("public, max-age=1"),
        "the catalog may be cached a second"
    );
    resp.json()
}

/// Asserts one item's body has every field of the contract, with the server's clock near ours.
#[track_caller]
fn assert_item_shape(v: &Value, item: u64) {
    assert_eq!(v["item_id"], item, "{v}");
    assert_eq!(v["name"], format!("item {item}"), "{v}");
    assert_eq!(v["price_cents"], common::PRICE_CENTS, "{v}");
    for field in ["starts_at", "ends_at"] {
        assert!(
            v[field].is_null() || v[field].is_string(),
            "{field} is a time or null: {v}"
        );
    }
    assert!(v["remaining"].is_i64(), "{v}");
    assert!(
        ["upcoming", "live", "sold_out", "ended"].contains(&v["state"].as_str().unwrap_or("")),
        "{v}"
    );
    let server_time = v["server_time"].as_str().expect("server_time is a string");
    let t = chrono::DateTime::parse_from_rfc3339(server_time)
        .unwrap_or_else(|e| panic!("server_time is RFC 3339 ({e}): {v}"));
    let skew = (t.timestamp_millis() - now_ms() as i64).abs();
    assert!(skew < 10_000, "server_time is now: {v}");
}

async fn get_item(http: &Http, item: u64) -> Value {
    catalog_answer(&http.get(&format!("/items/{item}"), None).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_show_their_sale_state_and_the_list_shows_sales_not_over() {
    let app = TestApp::spawn().await;
    let now = now_ms() as i64;
    let (live, sold_out, upcoming, ended, windowed) = (101, 102, 103, 104, 105);
    let upcoming_window = (now + HOUR_MS, now + 2 * HOUR_MS);
    for body in [
        item_with_window(live, 5, None, None),
        item_with_window(sold_out, 0, None, None),
        item_with_window(
            upcoming,
            5,
            Some(upcoming_window.0),
            Some(upcoming_window.1),
        ),
        item_with_window(ended, 5, Some(now - 2 * HOUR_MS), Some(now - HOUR_MS)),
        item_with_window(windowed, 3, Some(now - HOUR_MS), Some(now + HOUR_MS)),
    ] {
        app.create_item_with(&body).await;
    }

    let v = get_item(&app.http, live).await;
    assert_item_shape(&v, live);
    assert_eq!(v["state"], "live", "{v}");
    assert_eq!(v["remaining"], 5, "{v}");
    assert!(v["starts_at"].is_null() && v["ends_at"].is_null(), "{v}");

    let v = get_item(&app.http, sold_out).await;
    assert_item_shape(&v, sold_out);
    assert_eq!(
        (&v["state"], &v["remaining"]),
        (&json!("sold_out"), &json!(0))
    );

    let v = get_item(&app.http, upcoming).await;
    assert_item_shape(&v, upcoming);
    assert_eq!(v["state"], "upcoming", "{v}");
    assert_eq!(v["starts_at"], rfc3339_ms(upcoming_window.0), "{v}");
    assert_eq!(v["ends_at"], rfc3339_ms(upcoming_window.1), "{v}");

    let v = get_item(&app.http, ended).await;
    assert_item_shape(&v, ended);
    assert_eq!(v["state"], "ended", "{v}");

    let v = get_item(&app.http, windowed).await;
    assert_item_shape(&v, windowed);
    assert_eq!((&v["state"], &v["remaining"]), (&json!("live"), &json!(3)));

    // Unknown and garbage ids: 404, never a 400 or a 503.
    for path in [
        "/items/999999",
        "/items/0",
        "/items/abc",
        "/items/-1",
        "/items/1.5",
        "/items/9223372036854775808",
        "/items/99999999999999999999999",
    ] {
        app.http
            .get_error(path, StatusCode::NOT_FOUND, "unknown_item")
            .await;
    }
    // Asked again: the negative entry answers the same.
    app.http
        .get_error("/items/999999", StatusCode::NOT_FOUND, "unknown_item")
        .await;
    let resp = app
        .http
        .send(Method::DELETE, &format!("/items/{live}"), &[], "")
        .await;
    resp.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(resp.headers.get(http::header::ALLOW).unwrap(), "GET");
    app.http
        .post_json("/items", None, &json!({}))
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");

    // The list: upcoming, live and sold out, never ended; each as `GET /items/{id}` shows it.
    let list = catalog_answer(&app.http.get("/items", None).await);
    let listed: BTreeMap<u64, Value> = list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("items is an array: {list}"))
        .iter()
        .map(|v| (v["item_id"].as_u64().expect("item_id"), v.clone()))
        .collect();
    assert_eq!(
        listed.keys().copied().collect::<Vec<_>>(),
        vec![live, sold_out, upcoming, windowed],
        "{list}"
    );
    for (item, state) in [
        (live, "live"),
        (sold_out, "sold_out"),
        (upcoming, "upcoming"),
        (windowed, "live"),
    ] {
        assert_item_shape(&listed[&item], item);
        assert_eq!(listed[&item]["state"], state, "{list}");
    }
    app.stop().await.expect("run() returns Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_catches_up_within_a_second_of_purchases() {
    let app = TestApp::spawn().await;
    let item = 201;
    app.create_item(item, 10, 1).await;
    assert_eq!(get_item(&app.http, item).await["remaining"], 10);
    for user in 1..=3 {
        app.http.seckill(&app.purchase(user, item)).await.accepted();
    }
    wait_page(&app, item, "the purchases", |v| v["remaining"] == 7).await;
    // The list reads the same per-item cache.
    let list = catalog_answer(&app.http.get("/items", None).await);
    assert_eq!(list["items"][0]["item_id"], item, "{list}");
    assert_eq!(list["items"][0]["remaining"], 7, "{list}");

    // Sold out: the state follows.
    let rest: Vec<u64> = (4..=10).collect();
    for user in rest {
        app.http.seckill(&app.purchase(user, item)).await.accepted();
    }
    wait_page(&app, item, "the item sold out", |v| {
        v["state"] == "sold_out" && v["remaining"] == 0
    })
    .await;
    app.stop().await.expect("run() returns Ok");
}

/// Waits (the cache's second, and half of one more) until `GET /items/{item}` shows `what`.
async fn wait_page(app: &TestApp, item: u64, what: &str, shown: impl Fn(&Value) -> bool) {
    let what = format!("GET /items/{{id}} to show {what}");
    wait_for(&what, Duration::from_millis(1500), || async {
        shown(&get_item(&app.http, item).await).then_some(())
    })
    .await;
}

/// `HMGET`s the server has run: `cmdstat_hmget:calls=<n>,…` of `INFO commandstats`.
async fn hmget_calls(redis: &RedisServer) -> u64 {
    let info = redis
        .info("commandstats")
        .await
        .expect("INFO commandstats answers");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_hmget:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("a count of calls"))
}

/// `clients` clients, each sending `GET path` again as soon as answered, for `duration`; checks
/// every answer with `check` and returns how many there were.
async fn crowd(
    http: &Http,
    path: &str,
    clients: usize,
    duration: Duration,
    check: fn(&Resp),
) -> u64 {
    let until = Instant::now() + duration;
    let tasks = (0..clients).map(|_| {
        let (http, path) = (http.clone(), path.to_owned());
        tokio::spawn(async move {
            let mut answers = 0u64;
            while Instant::now() < until {
                check(&http.get(&path, None).await);
                answers += 1;
            }
            answers
        })
    });
    futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("a client does not panic"))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_costs_redis_at_most_one_read_of_the_item_a_second() {
    // A Redis server of the test's own: its command counts are this gateway's alone.
    let redis = RedisServer::start_ready(RedisOptions::default()).await;
    let app = TestApp::spawn_on(&redis).await;
    let item = 301;
    app.create_item(item, 10, 1).await;
    assert_eq!(get_item(&app.http, item).await["remaining"], 10);

    const CLIENTS: usize = 200;
    let before = hmget_calls(&redis).await;
    let started = Instant::now();
    let answers = crowd(
        &app.http,
        &format!("/items/{item}"),
        CLIENTS,
        Duration::from_secs(3),
        |resp| {
            let v = catalog_answer(resp);
            assert_item_shape(&v, 301);
            assert_eq!((&v["state"], &v["remaining"]), (&json!("live"), &json!(10)));
        },
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    let reads = hmget_calls(&redis).await - before;
    println!("{answers} answers in {secs:.2} s; {reads} reads of the item");
    assert!(
        answers >= CLIENTS as u64,
        "every client was answered: {answers}"
    );
    assert!(
        reads <= secs.ceil() as u64 + 1,
        "{reads} reads of the item in {secs:.2} s"
    );
    assert!(
        reads >= 2,
        "the item was read again as its value aged: {reads}"
    );

    // Unknown ids are cached too: each read is the item's hash and its gene's state.
    let before = hmget_calls(&redis).await;
    let started = Instant::now();
    crowd(
        &app.http,
        "/items/999999",
        CLIENTS,
        Duration::from_secs(1),
        |resp| resp.assert_error(StatusCode::NOT_FOUND, "unknown_item"),
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    let reads = hmget_calls(&redis).await - before;
    assert!(
        reads <= 2 * (secs.ceil() as u64 + 1),
        "{reads} reads for an unknown id in {secs:.2} s"
    );
    app.stop().await.expect("run() returns Ok");
}
