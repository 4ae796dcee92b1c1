//! Support for the gateway's integration tests: the real gateway, in process or as its binary, over
//! the real Redis, RabbitMQ and PostgreSQL, in a namespace and database of the test's own; a small
//! HTTP client; tokens; Redis inspection; and an observer queue bound to the events exchange.
//!
//! Each test file compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use bytes::Bytes;
use fred::prelude::*;
use futures_util::StreamExt;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lapin::options::BasicGetOptions;
use seckill_gateway::Application;
use seckill_infra::Config;
use seckill_infra::auth::{Jwt, TICKET_TTL_SECS, Tickets};
use seckill_infra::broker::Topology;
use seckill_schema::{ItemId, Keys, Kind, Message, OrderEvent, OrderId, UserId};
use seckill_testkit::{Backend, RedisServer, ServerTask, TestEnv, wait_for};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long a test waits for the relay to carry events to the broker.
pub const RELAY_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// HTTP

/// One answer, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} answered a non-JSON body ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    /// The `error` code of a contract error body, which must also carry a `message`.
    pub fn error_code(&self) -> String {
        let v = self.json();
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "an error body carries a message: {v}"
        );
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("an error body carries an error code: {v}"))
            .to_owned()
    }

    /// The `error` code of a JSON error body, if it is one.
    pub fn error_code_or_none(&self) -> Option<String> {
        let v: Value = serde_json::from_slice(&self.body).ok()?;
        v["error"].as_str().map(str::to_owned)
    }

    /// The `order_id` of the body: a decimal string.
    pub fn order_id(&self) -> OrderId {
        let v = self.json();
        let raw = v["order_id"]
            .as_str()
            .unwrap_or_else(|| panic!("order_id is a string: {v}"));
        raw.parse()
            .unwrap_or_else(|_| panic!("order_id is a decimal u64: {v}"))
    }

    /// Asserts the contract's error answer: this status, this code.
    #[track_caller]
    pub fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "unexpected answer: {}", self.text());
        assert_eq!(
            self.error_code(),
            code,
            "unexpected answer: {}",
            self.text()
        );
    }

    /// Asserts a `202` purchase answer and returns its order id.
    #[track_caller]
    pub fn accepted(&self) -> OrderId {
        assert_eq!(
            self.status,
            StatusCode::ACCEPTED,
            "expected 202, got: {}",
            self.text()
        );
        let v = self.json();
        assert_eq!(v["status"], "PENDING", "{v}");
        let id = self.order_id();
        assert_eq!(
            self.headers
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok()),
            Some(format!("/orders/{id}").as_str()),
            "a 202 carries Location"
        );
        id
    }
}

/// A pooled HTTP/1 client for one gateway address: as many connections as requests in flight.
#[derive(Clone)]
pub struct Http {
    client: HttpClient<HttpConnector, Full<Bytes>>,
    pub base: String,
}

impl Http {
    pub fn new(port: u16) -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Http {
            client,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A request to `path` of this gateway; a body is sent as JSON.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Request<Full<Bytes>> {
        let body: Bytes = body.into();
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if !body.is_empty() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(Full::new(body)).expect("a well-formed request")
    }

    /// Sends one request; `Err` when no answer came (refused, reset, timed out).
    pub async fn try_send(&self, req: Request<Full<Bytes>>) -> Result<Resp, String> {
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?
                .to_bytes();
            Ok(Resp {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .map_err(|_| "no answer within 20 s".to_owned())?
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        let method_name = method.to_string();
        self.try_send(self.request(method, path, headers, body))
            .await
            .unwrap_or_else(|e| panic!("{method_name} {path} got no answer: {e}"))
    }

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> Resp {
        let auth = bearer.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.send(Method::GET, path, &headers, Bytes::new()).await
    }

    /// `GET path` without credentials, answered `status` with the error `code`.
    pub async fn get_error(&self, path: &str, status: StatusCode, code: &str) {
        self.get(path, None).await.assert_error(status, code);
    }

    pub async fn post_json(&self, path: &str, bearer: Option<&str>, body: &Value) -> Resp {
        let auth = bearer.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.send(Method::POST, path, &headers, body.to_string())
            .await
    }

    /// `POST /seckill` with a JSON body and no header.
    pub async fn seckill(&self, body: &Value) -> Resp {
        self.post_json("/seckill", None, body).await
    }

    /// `POST /seckill` with a JSON body and an `Idempotency-Key`.
    pub async fn seckill_with_key(&self, key: &str, body: &Value) -> Resp {
        let headers = [("idempotency-key", key)];
        self.send(Method::POST, "/seckill", &headers, body.to_string())
            .await
    }

    /// `POST /admin/items` with the admin token.
    pub async fn create_item(&self, admin_token: &str, body: &Value) -> Resp {
        self.create_item_raw(admin_token, body.to_string()).await
    }

    /// `POST /admin/items` with the admin token and a body as it is, JSON or not.
    pub async fn create_item_raw(&self, admin_token: &str, body: impl Into<Bytes>) -> Resp {
        let auth = format!("Bearer {admin_token}");
        let headers = [("authorization", auth.as_str())];
        self.send(Method::POST, "/admin/items", &headers, body)
            .await
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials and bodies

pub fn jwt(config: &Config, user: u64) -> String {
    Jwt::new(&config.jwt_secret).mint(UserId(user), 3600)
}

pub fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A ticket good for [`TICKET_TTL_SECS`].
pub fn ticket(config: &Config, user: u64, item: u64) -> String {
    Tickets::new(&config.ticket_secret).mint(
        UserId(user),
        ItemId(item),
        now_unix() + TICKET_TTL_SECS,
    )
}

pub fn purchase(config: &Config, user: u64, item: u64) -> Value {
    json!({"item_id": item, "quantity": 1, "ticket": ticket(config, user, item)})
}

pub const PRICE_CENTS: i64 = 990;

/// An item on sale now, with no window.
pub fn item_body(item: u64, stock: i64, per_user_limit: i32) -> Value {
    json!({
        "item_id": item,
        "name": format!("item {item}"),
        "price_cents": PRICE_CENTS,
        "stock": stock,
        "per_user_limit": per_user_limit,
    })
}

// ---------------------------------------------------------------------------------------------
// The gateway in process

/// The gateway of one test, serving on a port of its own until [`TestApp::stop`].
pub struct TestApp {
    pub http: Http,
    pub port: u16,
    pub config: Config,
    pub keys: Keys,
    pub redis: fred::prelude::Client,
    /// `None` once stopping.
    run: Option<ServerTask<anyhow::Result<()>>>,
    /// Last, so the namespace and database are dropped after everything that uses them.
    pub env: TestEnv,
}

impl TestApp {
    /// A gateway on a fresh namespace and PostgreSQL database.
    pub async fn spawn() -> TestApp {
        TestApp::spawn_env(TestEnv::new(Backend::Postgres)).await
    }

    /// [`spawn`](Self::spawn), then an item on sale (see [`create_item`](Self::create_item)).
    pub async fn with_item(item: u64, stock: i64, per_user_limit: i32) -> TestApp {
        let app = TestApp::spawn().await;
        app.create_item(item, stock, per_user_limit).await;
        app
    }

    /// A gateway on a Redis server of the test's own.
    pub async fn spawn_on(redis: &RedisServer) -> TestApp {
        let mut env = TestEnv::new(Backend::Postgres);
        env.config.redis_url = redis.url();
        TestApp::spawn_env(env).await
    }

    pub async fn spawn_env(env: TestEnv) -> TestApp {
        let config = env.config.clone();
        let app = Application::build(config.clone())
            .await
            .expect("the gateway builds against the real services");
        let port = app.port();
        assert_ne!(port, 0, "the gateway is bound");
        let run = ServerTask::spawn(|shutdown| app.run(shutdown));
        seckill_testkit::wait_for_redis_state(&config).await;
        let redis = seckill_infra::redis::client(&config.redis_url)
            .await
            .expect("the test's own Redis client connects");
        TestApp {
            http: Http::new(port),
            port,
            keys: Keys::new(&config.namespace),
            redis,
            config,
            run: Some(run),
            env,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn jwt(&self, user: u64) -> String {
        jwt(&self.config, user)
    }

    pub fn ticket(&self, user: u64, item: u64) -> String {
        ticket(&self.config, user, item)
    }

    pub fn purchase(&self, user: u64, item: u64) -> Value {
        purchase(&self.config, user, item)
    }

    /// Creates an item on sale now and checks the `201`.
    pub async fn create_item(&self, item: u64, stock: i64, per_user_limit: i32) {
        self.create_item_with(&item_body(item, stock, per_user_limit))
            .await;
    }

    pub async fn create_item_with(&self, body: &Value) {
        let resp = self.http.create_item(&self.config.admin_token, body).await;
        assert_eq!(
            resp.status,
            StatusCode::CREATED,
            "creating an item: {}",
            resp.text()
        );
        let v = resp.json();
        assert_eq!(v["item_id"], body["item_id"], "{v}");
        assert_eq!(v["stock"], body["stock"], "{v}");
    }

    pub async fn remaining(&self, item: u64) -> Option<i64> {
        remaining(&self.redis, &self.keys, item).await
    }

    /// Completes the shutdown future and waits for `run()` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let run = self.begin_shutdown();
        let result = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("run() returns within 30 s of the shutdown signal")
            .expect("the gateway task does not panic");
        let _ = self.redis.quit().await;
        result
    }

    /// Triggers the shutdown future without waiting; returns the task that runs the app.
    pub fn begin_shutdown(&mut self) -> JoinHandle<anyhow::Result<()>> {
        self.run.take().expect("running").stop_later()
    }
}

// ---------------------------------------------------------------------------------------------
// Redis inspection

pub async fn remaining(redis: &fred::prelude::Client, keys: &Keys, item: u64) -> Option<i64> {
    redis
        .hget(keys.item(ItemId(item)), "remaining")
        .await
        .expect("reading the item's remaining stock")
}

/// Outbox entries not yet confirmed by the broker, over every gene.
pub async fn outbox_backlog(redis: &fred::prelude::Client, keys: &Keys) -> i64 {
    let mut total = 0;
    for (_, stream) in keys.outboxes() {
        let n: i64 = redis.xlen(stream).await.expect("XLEN");
        total += n;
    }
    total
}

/// The ids of every order record (`Keys::order`) of the namespace.
pub async fn recorded_orders(redis: &fred::prelude::Client, keys: &Keys) -> BTreeSet<OrderId> {
    let pattern = format!("{}:*:order:*", keys.namespace());
    let mut cursor = "0".to_owned();
    let mut ids = BTreeSet::new();
    loop {
        let (next, found): (String, Vec<String>) = redis
            .custom(
                fred::cmd!("SCAN"),
                vec![
                    cursor.clone(),
                    "MATCH".into(),
                    pattern.clone(),
                    "COUNT".into(),
                    "1000".into(),
                ],
            )
            .await
            .expect("SCAN");
        for key in found {
            let id = key
                .rsplit(':')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("an order key ends with its id: {key}"));
            assert_eq!(keys.order(id), key, "the key is the order's record");
            ids.insert(id);
        }
        if next == "0" {
            return ids;
        }
        cursor = next;
    }
}

// ---------------------------------------------------------------------------------------------
// The broker

/// An exclusive queue of the test's own, bound to `{ns}.events` with `order.created`: it sees every
/// `ORDER_CREATED` the relay publishes from the moment it is bound.
#[derive(Clone)]
pub struct Events {
    conn: Arc<lapin::Connection>,
    channel: lapin::Channel,
    queue: String,
    seen: Arc<Mutex<Vec<OrderEvent>>>,
}

impl Events {
    pub async fn bind(config: &Config) -> Events {
        let conn = seckill_infra::broker::connect(&config.amqp_url, "gateway-test-observer")
            .await
            .expect("connecting to RabbitMQ");
        let channel = conn.create_channel().await.expect("opening a channel");
        // The exchange must exist before the binding, whoever starts first.
        let topology = Topology::of(config);
        topology
            .declare(&conn)
            .await
            .expect("declaring the topology");
        let queue = seckill_testkit::bind_own_queue(
            &channel,
            &topology.exchange(),
            Kind::OrderCreated.routing_key(),
        )
        .await;
        Events {
            conn: Arc::new(conn),
            channel,
            queue,
            seen: Arc::default(),
        }
    }

    /// Takes every message now in the queue; returns how many events they carried.
    pub async fn drain(&self) -> usize {
        let mut n = 0;
        loop {
            let got = self
                .channel
                .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get on the observer queue");
            let Some(msg) = got else { return n };
            assert_eq!(
                msg.delivery.routing_key.as_str(),
                Kind::OrderCreated.routing_key()
            );
            let message: Message = serde_json::from_slice(&msg.delivery.data).unwrap_or_else(|e| {
                panic!(
                    "an undecodable message ({e}): {}",
                    String::from_utf8_lossy(&msg.delivery.data)
                )
            });
            let Message::OrderCreated { events } = message else {
                panic!("only ORDER_CREATED is routed with order.created, got {message:?}");
            };
            assert!(!events.is_empty(), "a message carries at least one event");
            n += events.len();
            self.seen.lock().unwrap().extend(events);
        }
    }

    /// Every event seen so far, duplicates included.
    pub fn events(&self) -> Vec<OrderEvent> {
        self.seen.lock().unwrap().clone()
    }

    pub fn ids(&self) -> BTreeSet<OrderId> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.order_id)
            .collect()
    }

    /// Drains until at least `n` events were seen.
    pub async fn wait_for_count(&self, n: usize, deadline: Duration) {
        wait_for(&format!("{n} ORDER_CREATED events"), deadline, || {
            let me = self.clone();
            async move {
                me.drain().await;
                (me.events().len() >= n).then_some(())
            }
        })
        .await;
    }

    /// Drains until every id of `ids` was seen.
    pub async fn wait_for_ids(&self, ids: &BTreeSet<OrderId>, deadline: Duration) {
        wait_for(
            &format!("ORDER_CREATED events for {} orders", ids.len()),
            deadline,
            || {
                let me = self.clone();
                async move {
                    me.drain().await;
                    let seen = me.ids();
                    ids.is_subset(&seen).then_some(())
                }
            },
        )
        .await;
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// Waits until the relay has published, confirmed and deleted every outbox entry; after that the
/// observer queue holds every event there will be.
pub async fn wait_for_empty_outbox(redis: &fred::prelude::Client, keys: &Keys) {
    wait_for("an empty outbox", RELAY_DEADLINE, || async {
        (outbox_backlog(redis, keys).await == 0).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Load

/// Runs `requests` through `f` with at most `concurrency` in flight; answers in completion order.
pub async fn concurrently<T, F, Fut>(requests: Vec<T>, concurrency: usize, f: F) -> Vec<Fut::Output>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future,
{
    futures_util::stream::iter(requests.into_iter().map(f))
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// The orders of the `202` answers among `answers`, each checked as [`Resp::accepted`] does.
pub fn accepted_orders<C: FromIterator<OrderId>>(answers: &[Resp]) -> C {
    answers
        .iter()
        .filter(|r| r.status == StatusCode::ACCEPTED)
        .map(Resp::accepted)
        .collect()
}
