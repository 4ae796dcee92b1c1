//! `GET /orders/{order_id}/events` through the real gateway, workers, Redis and database: a buyer
//! follows an order to its end (paid, shipped, completed; or timed out) and the stream ends by
//! itself; a reconnection gets the current state at once; and 500 idle streams cost Redis nothing
//! and slow no purchase.

mod common;

use common::{DRAIN, Stack, WorkersMode, n};
use sea_orm::ConnectionTrait;
use seckill_schema::{OrderId, OrderStatus, UserId};
use seckill_testkit::{Backend, RedisOptions, RedisServer};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// An event stream as a client reads it.
struct Sse {
    resp: reqwest::Response,
    buf: Vec<u8>,
    keep_alives: usize,
}

impl Sse {
    /// Opens the stream of `order` as `user`; the error answer if it is not `200`.
    async fn open(stack: &Stack, user: Option<u64>, order: &str) -> Result<Sse, (u16, Value)> {
        let mut req = stack
            .http
            .get(format!("{}/orders/{order}/events", stack.url));
        if let Some(user) = user {
            req = req.bearer_auth(stack.jwt.mint(UserId(user), 3600));
        }
        let resp = req.send().await.expect("GET events");
        let status = resp.status().as_u16();
        if status != 200 {
            return Err((status, resp.json().await.unwrap_or_default()));
        }
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Ok(Sse {
            resp,
            buf: Vec::new(),
            keep_alives: 0,
        })
    }

    /// The next `order` event's JSON, comments skipped; `None` once the server ended the stream.
    async fn next(&mut self, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = String::from_utf8(block).expect("UTF-8 events");
                let lines: Vec<&str> = block.trim_end().lines().collect();
                if lines.iter().all(|l| l.starts_with(':')) {
                    self.keep_alives += 1;
                    continue;
                }
                assert_eq!(lines.len(), 2, "an event is two lines: {block:?}");
                assert_eq!(lines[0], "event: order", "{block:?}");
                let data = lines[1].strip_prefix("data: ").expect("a data line");
                return Some(serde_json::from_str(data).expect("the event's JSON"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Err(_) => panic!("no event within {within:?}"),
                Ok(Ok(Some(bytes))) => self.buf.extend_from_slice(&bytes),
                Ok(Ok(None)) => {
                    assert!(self.buf.is_empty(), "the stream ended mid-event");
                    return None;
                }
                Ok(Err(e)) => panic!("reading the stream: {e}"),
            }
        }
    }

    /// The next event's status; the stream must still be open.
    async fn next_status(&mut self) -> (OrderStatus, Value) {
        let event = self.next(DRAIN).await.expect("the stream goes on");
        let status = event["status"].as_str().expect("a status").parse().unwrap();
        (status, event)
    }
}

/// Follows a stream until `last`, checking that each event moves the order forward.
async fn follow_until(sse: &mut Sse, order: OrderId, last: OrderStatus) -> Vec<OrderStatus> {
    let mut seen: Vec<OrderStatus> = Vec::new();
    loop {
        let (status, event) = sse.next_status().await;
        assert_eq!(event["order_id"], order.to_string(), "{event}");
        if let Some(prev) = seen.last() {
            assert!(prev.rank() < status.rank(), "{seen:?} then {status}");
        }
        seen.push(status);
        if status == last {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_follows_an_order_to_its_end() {
    let stack = Stack::start(Backend::Postgres, 2, WorkersMode::InProcess).await;
    stack.create_item(1, 10, 1).await;
    let a = stack.buy_many([1], 1, 1).await[0];
    let b = stack.buy_many([2], 1, 1).await[0];

    // Only the owner, with a valid token, may follow an order.
    for (user, order, status, code) in [
        (Some(2), a.to_string(), 404, "not_found"),
        (Some(1), "123456789".to_owned(), 404, "not_found"),
        (Some(1), "nope".to_owned(), 404, "not_found"),
        (None, a.to_string(), 401, "unauthorized"),
    ] {
        let Err((got, body)) = Sse::open(&stack, user, &order).await else {
            panic!("{user:?} may not follow {order}");
        };
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }

    let mut sa = Sse::open(&stack, Some(1), &a.to_string()).await.unwrap();
    let mut sb = Sse::open(&stack, Some(2), &b.to_string()).await.unwrap();
    // A is paid at once (a callback racing the pipeline is applied when the order gets there),
    // well before the 2 s payment timeout that closes B.
    let (first, _) = sa.next_status().await;
    assert!(
        first.rank() <= OrderStatus::AwaitingPayment.rank(),
        "{first}"
    );
    assert_eq!(stack.pay(a, &format!("pay_{a}"), 1999, true).await, 200);
    let seen = follow_until(&mut sa, a, OrderStatus::Paid).await;
    assert!(
        !seen.contains(&first),
        "no event twice: {first} then {seen:?}"
    );

    // A reconnection gets the current state at once, as GET /orders/{id} shows it.
    drop(sa);
    let mut sa = Sse::open(&stack, Some(1), &a.to_string()).await.unwrap();
    let now = sa
        .next(Duration::from_secs(5))
        .await
        .expect("the current state");
    assert_eq!(now, stack.get_order(1, a).await);
    assert_eq!(now["status"], "PAID");
    assert_eq!(now["payment"]["status"], "SUCCEEDED", "{now}");

    // Shipped, then completed by the buyer: the stream ends after the terminal event.
    assert_eq!(stack.ship(a).await.0, 202);
    assert_eq!(sa.next_status().await.0, OrderStatus::Shipped);
    assert_eq!(stack.order_step(1, a, "confirm").await.0, 202);
    let (last, event) = sa.next_status().await;
    assert_eq!(last, OrderStatus::Completed);
    assert!(
        sa.next(Duration::from_secs(5)).await.is_none(),
        "the stream ends"
    );
    assert_eq!(event, stack.get_order(1, a).await);
    // A finished order's stream: its state, then the end.
    let mut again = Sse::open(&stack, Some(1), &a.to_string()).await.unwrap();
    assert_eq!(again.next_status().await.0, OrderStatus::Completed);
    assert!(again.next(Duration::from_secs(5)).await.is_none());

    // B times out; a second stream opened meanwhile starts from B's state then, and both end.
    let mut sb2 = Sse::open(&stack, Some(2), &b.to_string()).await.unwrap();
    let (then, _) = sb2.next_status().await;
    for sse in [&mut sb, &mut sb2] {
        let seen = follow_until(sse, b, OrderStatus::TimedOut).await;
        assert!(seen.len() <= 5, "{seen:?}");
        assert!(sse.next(Duration::from_secs(5)).await.is_none(), "ends");
    }
    assert!(then.rank() <= OrderStatus::TimedOut.rank());
    let final_b = stack.get_order(2, b).await;
    assert_eq!(final_b["status"], "TIMED_OUT");
}

/// Every command this Redis ran, by name (`INFO commandstats`; a script's own calls included).
async fn commands(redis: &RedisServer) -> BTreeMap<String, u64> {
    let info = redis.info("commandstats").await.expect("INFO commandstats");
    info.lines()
        .filter_map(|l| {
            let (name, stats) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            Some((name.to_owned(), stats.split(',').next()?.parse().ok()?))
        })
        .collect()
}

/// Commands run over `window`: all of them (less the `INFO` that measures them), and those a
/// stream runs to read its order (the lookup script and what it calls).
async fn commands_over(redis: &RedisServer, window: Duration) -> (u64, u64) {
    let before = commands(redis).await;
    tokio::time::sleep(window).await;
    let after = commands(redis).await;
    let delta = |name: &str| after.get(name).unwrap_or(&0) - before.get(name).unwrap_or(&0);
    let all = after.keys().map(|n| delta(n)).sum::<u64>() - 1;
    let reads = ["evalsha", "eval", "hgetall", "script|load"]
        .iter()
        .map(|n| delta(n))
        .sum();
    (all, reads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_cost_redis_nothing_and_purchases_go_on() {
    const STREAMS: u64 = 500;
    const WINDOW: Duration = Duration::from_secs(4);
    // A Redis of the test's own: its command counts are this stack's alone.
    let redis = RedisServer::start_ready(RedisOptions::default()).await;
    let mut stack = Stack::start_configured(Backend::Postgres, WorkersMode::InProcess, |c| {
        c.redis_url = redis.url();
        c.payment_timeout = Duration::from_secs(600);
    })
    .await;
    stack.create_item(1, STREAMS as i64, 1).await;
    let ids = stack.buy_many(1..=STREAMS, 1, 50).await;
    assert_eq!(ids.len() as u64, STREAMS);
    stack
        .wait_counts(1, "every order awaiting payment", DRAIN, |c| {
            n(c, "AWAITING_PAYMENT") == STREAMS as i64
        })
        .await;
    // From here on only the gateway talks to this Redis.
    stack.stop_workers_in_process().await;
    let owners: Vec<(OrderId, u64)> = stack
        .db
        .query_all_raw(stack.sql("SELECT id, user_id FROM orders"))
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                OrderId(r.try_get::<i64>("", "id").unwrap() as u64),
                r.try_get::<i64>("", "user_id").unwrap() as u64,
            )
        })
        .collect();

    let without = commands_over(&redis, WINDOW).await;
    let opened = futures_util::future::join_all(owners.iter().map(|(order, user)| {
        let stack = &stack;
        async move {
            let mut sse = Sse::open(stack, Some(*user), &order.to_string())
                .await
                .expect("a stream opens");
            let (status, _) = sse.next_status().await;
            assert_eq!(status, OrderStatus::AwaitingPayment);
            (*order, *user, sse)
        }
    }))
    .await;
    let idle = commands_over(&redis, WINDOW).await;
    println!(
        "Redis commands over {WINDOW:?} (all, order reads): {without:?} without streams, \
         {idle:?} with {STREAMS} idle"
    );
    // The gateway's own background varies between two windows: each of its 16 relays renews
    // its lease (a script) every second, and a window of 4 s holds 4 or 5 of those ticks, so
    // either window may hold up to 16 more reads than the other. Reading each stream's order
    // once in the window would be 500 more; a tenth of that catches even one read per stream
    // every 40 s.
    assert!(
        idle.1 <= without.1 + STREAMS / 10 && idle.0 <= without.0 + STREAMS / 4,
        "{STREAMS} idle streams made the gateway run {idle:?} commands in {WINDOW:?} ({without:?} without)"
    );

    // A burst of purchases while they sit open: every one sells, promptly.
    stack.create_item(2, 300, 1).await;
    let started = Instant::now();
    let sold = stack.buy_many(1001..=1300, 2, 100).await;
    let took = started.elapsed();
    assert_eq!(sold.len(), 300, "every purchase of the burst sells");
    println!("300 purchases with {STREAMS} streams open: {took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");

    // The streams are alive still: a change reaches its stream, which ends at a terminal status.
    stack.start_workers_in_process().await;
    let (order, user, mut sse) = opened.into_iter().next().unwrap();
    assert_eq!(stack.cancel(user, order).await.0, 202);
    let (status, _) = sse.next_status().await;
    assert_eq!(status, OrderStatus::Cancelled);
    assert!(sse.next(Duration::from_secs(5)).await.is_none());
}
