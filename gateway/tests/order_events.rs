//! `GET /orders/{order_id}/events` at the gateway alone (a just-accepted order is `PENDING` in
//! Redis): who may open a stream, the bound on open streams (`503` with `Retry-After` past it, a
//! place given back when a client leaves), and streams ending on the gateway's graceful shutdown.

mod common;

use bytes::Bytes;
use common::TestApp;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use seckill_testkit::{Backend, RedisOptions, RedisServer, TestEnv, wait_for};
use serde_json::Value;
use std::time::{Duration, Instant};

/// An open stream, read frame by frame.
struct Sse {
    body: Incoming,
    buf: Vec<u8>,
}

enum Opened {
    Stream(Sse),
    Refused(StatusCode, http::HeaderMap, Value),
}

async fn open(app: &TestApp, token: Option<&str>, order: &str) -> Opened {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(format!("{}/orders/{order}/events", app.http.base));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(req.body(Empty::new()).unwrap()),
    )
    .await
    .expect("an answer within 10 s")
    .expect("an answer");
    let (parts, body) = resp.into_parts();
    if parts.status != StatusCode::OK {
        let bytes = body.collect().await.expect("the error body").to_bytes();
        let v = serde_json::from_slice(&bytes).expect("a JSON error");
        return Opened::Refused(parts.status, parts.headers, v);
    }
    assert_eq!(parts.headers["content-type"], "text/event-stream");
    Opened::Stream(Sse {
        body,
        buf: Vec::new(),
    })
}

impl Opened {
    #[track_caller]
    fn stream(self) -> Sse {
        match self {
            Opened::Stream(s) => s,
            Opened::Refused(status, _, v) => panic!("refused: {status} {v}"),
        }
    }

    #[track_caller]
    fn refused(self, status: StatusCode, code: &str) -> http::HeaderMap {
        match self {
            Opened::Stream(_) => panic!("expected {status} {code}, the stream opened"),
            Opened::Refused(got, headers, v) => {
                assert_eq!((got, v["error"].as_str()), (status, Some(code)), "{v}");
                assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
                headers
            }
        }
    }
}

impl Sse {
    /// The next block (an event, or a comment), or `None` once the stream ended.
    async fn next_block(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                return Some(String::from_utf8(block).unwrap());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.body.frame()).await {
                Err(_) => panic!("nothing within {within:?}"),
                Ok(None) => {
                    assert!(self.buf.is_empty());
                    return None;
                }
                Ok(Some(frame)) => {
                    if let Ok(data) = frame.expect("a frame").into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The next event's data (comments skipped), or `None` once the stream ended.
    async fn next(&mut self, within: Duration) -> Option<Value> {
        loop {
            let block = self.next_block(within).await?;
            if block.starts_with(':') {
                continue;
            }
            let data = block
                .strip_prefix("event: order\ndata: ")
                .unwrap_or_else(|| panic!("an order event: {block:?}"));
            return Some(serde_json::from_str(data.trim_end()).unwrap());
        }
    }
}

async fn app_with_bound(max_streams: u32) -> TestApp {
    let mut env = TestEnv::new(Backend::Postgres);
    env.config.max_order_streams = max_streams;
    TestApp::spawn_env(env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_bounded_and_end_on_shutdown() {
    let mut app = app_with_bound(3).await;
    app.create_item(1, 10, 1).await;
    let order = app.http.seckill(&app.purchase(1, 1)).await.accepted();
    let id = order.to_string();
    let (owner, stranger) = (app.jwt(1), app.jwt(2));

    // Only the owner, with a valid token.
    open(&app, None, &id)
        .await
        .refused(StatusCode::UNAUTHORIZED, "unauthorized");
    open(&app, Some("forged"), &id)
        .await
        .refused(StatusCode::UNAUTHORIZED, "unauthorized");
    for (token, order) in [(&stranger, id.as_str()), (&owner, "42"), (&owner, "x")] {
        open(&app, Some(token), order)
            .await
            .refused(StatusCode::NOT_FOUND, "not_found");
    }
    let wrong_method = app
        .http
        .send(
            Method::POST,
            &format!("/orders/{id}/events"),
            &[],
            Bytes::new(),
        )
        .await;
    wrong_method.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(wrong_method.headers["allow"], "GET");

    // Up to the bound; past it a 503 with Retry-After, whatever the order.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = open(&app, Some(&owner), &id).await.stream();
        let first = s.next(Duration::from_secs(5)).await.expect("an event");
        assert_eq!(first["status"], "PENDING");
        assert_eq!(first["order_id"], id);
        streams.push(s);
    }
    let headers = open(&app, Some(&owner), &id)
        .await
        .refused(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    // Other routes are not bound by it.
    let one = app.http.get(&format!("/orders/{id}"), Some(&owner)).await;
    assert_eq!(one.status, StatusCode::OK);

    // A client that leaves gives its place back.
    drop(streams.pop());
    let mut s = wait_for("a place given back", Duration::from_secs(10), || async {
        match open(&app, Some(&owner), &id).await {
            Opened::Stream(s) => Some(s),
            refused => {
                refused.refused(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
                None
            }
        }
    })
    .await;
    assert!(s.next(Duration::from_secs(5)).await.is_some());
    streams.push(s);

    // The graceful shutdown ends every stream, and does not wait for its drain timeout.
    let started = Instant::now();
    let run = app.begin_shutdown();
    for s in &mut streams {
        assert!(s.next(Duration::from_secs(5)).await.is_none(), "ends");
    }
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("run() returns without waiting for the streams' drain")
        .expect("no panic")
        .expect("Ok");
    assert!(started.elapsed() < seckill_gateway::DRAIN_TIMEOUT);
}

/// Changes reach a stream through the gateway's one subscription, and a change announced while
/// that subscription was cut is caught when it comes back: every stream re-reads then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_streams_and_a_reconnection_rereads() {
    use fred::interfaces::{ClientLike, HashesInterface, PubsubInterface};
    use seckill_schema::record::field;
    // A Redis of the test's own: it cuts the gateway's Pub/Sub connection.
    let redis = RedisServer::start_ready(RedisOptions::default()).await;
    let app = TestApp::spawn_on(&redis).await;
    app.create_item(1, 10, 1).await;
    let order = app.http.seckill(&app.purchase(1, 1)).await.accepted();
    let mut s = open(&app, Some(&app.jwt(1)), &order.to_string())
        .await
        .stream();
    let status = |v: Value| v["status"].as_str().unwrap().to_owned();
    assert_eq!(
        status(s.next(Duration::from_secs(5)).await.unwrap()),
        "PENDING"
    );

    // What the workers do: mirror the status, then announce it.
    let record = app.keys.order(order);
    let channel = app.keys.order_changes();
    let set_status = |st: &'static str| {
        let (redis, record) = (app.redis.clone(), record.clone());
        async move {
            let _: i64 = redis.hset(record, (field::STATUS, st)).await.unwrap();
        }
    };
    let announce = |st: &'static str| {
        let (redis, channel) = (app.redis.clone(), channel.clone());
        async move {
            let _: i64 = redis
                .publish(channel, format!("{order} {st}"))
                .await
                .unwrap();
        }
    };
    set_status("CREATED").await;
    announce("CREATED").await;
    assert_eq!(
        status(s.next(Duration::from_secs(5)).await.unwrap()),
        "CREATED"
    );

    // A change whose announcement was lost while the subscription was down (nothing else wakes
    // the stream here).
    set_status("STOCK_LOCKED").await;
    let killed: i64 = app
        .redis
        .custom(fred::cmd!("CLIENT"), vec!["KILL", "TYPE", "pubsub"])
        .await
        .unwrap();
    assert_eq!(killed, 1, "the gateway's one subscriber connection");
    assert_eq!(
        status(s.next(Duration::from_secs(10)).await.unwrap()),
        "STOCK_LOCKED",
        "re-read after the reconnection"
    );
    // Subscribed again: announcements arrive as before, and a terminal one ends the stream.
    wait_for("subscribed again", Duration::from_secs(10), || async {
        let n: Vec<(String, i64)> = app
            .redis
            .custom(fred::cmd!("PUBSUB"), vec!["NUMSUB", channel.as_str()])
            .await
            .unwrap();
        (n.first().map(|(_, n)| *n) == Some(1)).then_some(())
    })
    .await;
    set_status("TIMED_OUT").await;
    announce("TIMED_OUT").await;
    assert_eq!(
        status(s.next(Duration::from_secs(5)).await.unwrap()),
        "TIMED_OUT"
    );
    assert!(s.next(Duration::from_secs(5)).await.is_none(), "ends");
    app.stop().await.unwrap();
}

/// An idle stream carries a comment line every 15 s, and stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_carries_keep_alives() {
    let app = TestApp::with_item(1, 10, 1).await;
    let order = app.http.seckill(&app.purchase(1, 1)).await.accepted();
    let mut s = open(&app, Some(&app.jwt(1)), &order.to_string())
        .await
        .stream();
    assert!(s.next(Duration::from_secs(5)).await.is_some());
    let started = Instant::now();
    let keep_alive = seckill_gateway::handlers::orders::events::KEEP_ALIVE;
    let block = s.next_block(keep_alive + Duration::from_secs(5)).await;
    assert_eq!(block.as_deref(), Some(": keep-alive\n\n"));
    assert!(started.elapsed() >= keep_alive - Duration::from_secs(1));
    app.stop().await.unwrap();
}
