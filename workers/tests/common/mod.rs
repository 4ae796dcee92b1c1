//! A whole stack for one test: its own namespace and database, the real gateway and workers
//! in-process (or the workers as a child process, for crash tests), and the contract's invariants
//! checked from the sources: the database, Redis and the broker.

#![allow(dead_code)]

use fred::prelude::*;
use sea_orm::{ConnectionTrait, DatabaseConnection, QueryResult, Statement};
use seckill_infra::auth::{Jwt, WebhookSigner};
use seckill_infra::broker::Topology;
use seckill_schema::{ItemId, Keys, OrderId, UserId};
use seckill_testkit::{Backend, ServerTask, Stores, TestEnv, answer, wait_for};
use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

/// How long a test waits for the pipeline to carry its orders where it expects them.
pub const DRAIN: Duration = Duration::from_secs(60);

/// Tests on the multi-threaded runtime a stack needs, each running one scenario (typically the same
/// one on each database): `name => scenario(Backend::Postgres);`. (Not every test file uses it.)
#[allow(unused_macros)]
macro_rules! stack_tests {
    ($($name:ident => $scenario:expr;)+) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $scenario.await;
        }
    )+};
}
#[allow(unused_imports)]
pub(crate) use stack_tests;

/// Orders in `status`, of counts by status.
pub fn n(counts: &BTreeMap<String, i64>, status: &str) -> i64 {
    counts.get(status).copied().unwrap_or(0)
}

/// The order's status in the database; `None` until the workers stored it.
pub async fn order_status(stack: &Stack, order: OrderId) -> Option<String> {
    stack
        .db
        .query_one_raw(stack.sql(&format!("SELECT status FROM orders WHERE id = {}", order.0)))
        .await
        .unwrap()
        .map(|r| r.try_get("", "status").unwrap())
}

/// Waits until the database has the order in `status`.
pub async fn wait_stored(stack: &Stack, order: OrderId, status: &str) {
    wait_for(&format!("order {order} {status}"), DRAIN, || async {
        (order_status(stack, order).await.as_deref() == Some(status)).then_some(())
    })
    .await;
}

pub struct Stack {
    pub url: String,
    pub http: reqwest::Client,
    pub jwt: Jwt,
    pub signer: WebhookSigner,
    pub db: DatabaseConnection,
    pub redis: Client,
    pub keys: Keys,
    /// In process; dropping the stack starts their shutdown.
    gateway: ServerTask<anyhow::Result<()>>,
    workers: Option<ServerTask<anyhow::Result<()>>>,
    pub workers_child: Option<tokio::process::Child>,
    /// Last, so the namespace and database are dropped after everything that uses them.
    pub env: TestEnv,
}

pub enum WorkersMode {
    InProcess,
    ChildProcess,
    None,
}

impl Stack {
    pub async fn start(backend: Backend, payment_timeout_secs: u64, mode: WorkersMode) -> Stack {
        Stack::start_configured(backend, mode, |c| {
            c.payment_timeout = Duration::from_secs(payment_timeout_secs)
        })
        .await
    }

    /// A stack whose configuration `configure` adjusts first.
    pub async fn start_configured(
        backend: Backend,
        mode: WorkersMode,
        configure: impl FnOnce(&mut seckill_infra::Config),
    ) -> Stack {
        seckill_infra::telemetry::init_tracing();
        let mut env = TestEnv::new(backend);
        configure(&mut env.config);
        let app = seckill_gateway::Application::build(env.config.clone())
            .await
            .expect("gateway starts");
        let url = format!("http://127.0.0.1:{}", app.port());
        let gateway = ServerTask::spawn(|shutdown| app.run(shutdown));
        seckill_testkit::wait_for_redis_state(&env.config).await;
        let Stores { db, redis, keys } = Stores::connect(&env.config, 4).await;
        let mut stack = Stack {
            jwt: Jwt::new(&env.config.jwt_secret),
            signer: WebhookSigner::new(&env.config.webhook_secret),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .expect("client"),
            url,
            db,
            redis,
            keys,
            gateway,
            workers: None,
            workers_child: None,
            env,
        };
        match mode {
            WorkersMode::InProcess => stack.start_workers_in_process().await,
            WorkersMode::ChildProcess => stack.spawn_workers().await,
            WorkersMode::None => {}
        }
        stack
    }

    pub async fn start_workers_in_process(&mut self) {
        let config = self.env.config.clone();
        self.start_workers_with(config).await;
    }

    /// In-process workers with a configuration of their own (another database URL, say).
    pub async fn start_workers_with(&mut self, config: seckill_infra::Config) {
        let workers = seckill_workers::Workers::build(config)
            .await
            .expect("workers start");
        self.workers = Some(ServerTask::spawn(|shutdown| workers.run(shutdown)));
    }

    /// In-process workers whose periodic jobs run at `intervals` (the tests' shorter ones).
    pub async fn start_workers_with_intervals(
        &mut self,
        intervals: seckill_workers::reconcile::Intervals,
    ) {
        let workers = seckill_workers::Workers::build(self.env.config.clone())
            .await
            .expect("workers start")
            .with_intervals(intervals);
        self.workers = Some(ServerTask::spawn(|shutdown| workers.run(shutdown)));
    }

    /// Stops in-process workers gracefully and waits for them.
    pub async fn stop_workers_in_process(&mut self) {
        if let Some(workers) = self.workers.take() {
            workers.stop().await.expect("workers stop cleanly");
        }
    }

    /// The real `seckill-workers` binary, configured like this stack.
    pub async fn spawn_workers(&mut self) {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_seckill-workers"))
            .envs(seckill_testkit::env_vars(&self.env.config))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning seckill-workers");
        self.workers_child = Some(child);
    }

    pub async fn sigkill_workers(&mut self) {
        if let Some(mut child) = self.workers_child.take() {
            child.start_kill().expect("SIGKILL");
            child.wait().await.expect("reaped");
        }
    }

    pub async fn create_item(&self, item: u64, stock: i64, per_user_limit: i32) {
        let body = serde_json::json!({
            "item_id": item, "name": format!("item {item}"), "price_cents": 1999,
            "stock": stock, "per_user_limit": per_user_limit,
        });
        let (status, reply) = self
            .admin(reqwest::Method::POST, "/admin/items", Some(body))
            .await;
        assert_eq!(status, 201, "creating item {item}: {reply}");
    }

    pub async fn buy(&self, user: u64, item: u64) -> (u16, serde_json::Value) {
        let req = self
            .http
            .post(format!("{}/seckill", self.url))
            .bearer_auth(self.jwt.mint(UserId(user), 3600))
            .json(&serde_json::json!({ "item_id": item }));
        answer(req, "POST /seckill").await
    }

    /// `user` buys one unit of `item` and is answered `202`: the order's id.
    pub async fn buy_accepted(&self, user: u64, item: u64) -> OrderId {
        let (status, body) = self.buy(user, item).await;
        assert_eq!(status, 202, "{body}");
        body["order_id"].as_str().unwrap().parse().unwrap()
    }

    /// Buyers `users` each try once, `concurrency` at a time; the accepted order ids.
    pub async fn buy_many(
        &self,
        users: impl IntoIterator<Item = u64>,
        item: u64,
        concurrency: usize,
    ) -> Vec<OrderId> {
        use futures_util::StreamExt;
        let results: Vec<(u16, serde_json::Value)> = futures_util::stream::iter(users)
            .map(|u| self.buy(u, item))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut ids = Vec::new();
        for (status, body) in results {
            match status {
                202 => ids.push(OrderId(
                    body["order_id"]
                        .as_str()
                        .expect("order id")
                        .parse()
                        .expect("numeric"),
                )),
                409 => assert_eq!(body["error"], "sold_out", "unexpected 409 {body}"),
                other => panic!("unexpected status {other}: {body}"),
            }
        }
        ids
    }

    pub async fn pay(
        &self,
        order: OrderId,
        payment_id: &str,
        amount_cents: i64,
        succeeded: bool,
    ) -> u16 {
        let status = if succeeded { "SUCCEEDED" } else { "FAILED" };
        self.callback(order, payment_id, amount_cents, status).await
    }

    /// A signed provider callback with this `status` (`SUCCEEDED`, `FAILED` or `REFUNDED`).
    pub async fn callback(
        &self,
        order: OrderId,
        payment_id: &str,
        amount_cents: i64,
        status: &str,
    ) -> u16 {
        let body = serde_json::to_vec(&serde_json::json!({
            "payment_id": payment_id, "order_id": order.to_string(),
            "status": status, "amount_cents": amount_cents,
        }))
        .expect("json");
        let sig = self.signer.header(chrono::Utc::now().timestamp(), &body);
        self.http
            .post(format!("{}/payment/callback", self.url))
            .header("x-seckill-signature", sig)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("callback")
            .status()
            .as_u16()
    }

    pub async fn cancel(&self, user: u64, order: OrderId) -> (u16, serde_json::Value) {
        self.order_step(user, order, "cancel").await
    }

    /// `POST /orders/{order}/{step}` as its owner (`cancel`, `confirm`, `refund`).
    pub async fn order_step(
        &self,
        user: u64,
        order: OrderId,
        step: &str,
    ) -> (u16, serde_json::Value) {
        let req = self
            .http
            .post(format!("{}/orders/{order}/{step}", self.url))
            .bearer_auth(self.jwt.mint(UserId(user), 3600));
        answer(req, step).await
    }

    /// `GET /orders/{order}` as `user`: the answer's JSON.
    /// Waits until the read model shows the order with `status`. The workers write it after their
    /// commit, and the gateway checks a step (cancel, ship, confirm, refund) against it: a test
    /// that saw the status in the database waits for this before asking for the next step.
    pub async fn wait_shown(&self, order: OrderId, status: &str) {
        wait_for(&format!("order {order} shown {status}"), DRAIN, || async {
            let shown: Option<String> = self
                .redis
                .hget(
                    self.keys.order(order),
                    seckill_schema::record::field::STATUS,
                )
                .await
                .unwrap();
            (shown.as_deref() == Some(status)).then_some(())
        })
        .await;
    }

    pub async fn get_order(&self, user: u64, order: OrderId) -> serde_json::Value {
        self.http
            .get(format!("{}/orders/{order}", self.url))
            .bearer_auth(self.jwt.mint(UserId(user), 3600))
            .send()
            .await
            .expect("GET order")
            .json()
            .await
            .expect("JSON")
    }

    /// The database's `(stock, available, locked, sold)` of an item.
    pub async fn db_item(&self, item: u64) -> (i64, i64, i64, i64) {
        let row = self
            .row(&format!(
                "SELECT stock, available, locked, sold FROM items WHERE id = {item}"
            ))
            .await;
        (
            row.try_get("", "stock").unwrap(),
            row.try_get("", "available").unwrap(),
            row.try_get("", "locked").unwrap(),
            row.try_get("", "sold").unwrap(),
        )
    }

    /// `POST /admin/orders/{order}/ship`.
    pub async fn ship(&self, order: OrderId) -> (u16, serde_json::Value) {
        let req = self
            .http
            .post(format!("{}/admin/orders/{order}/ship", self.url))
            .bearer_auth(&self.env.config.admin_token);
        answer(req, "ship").await
    }

    /// An admin request with the admin token: its status and JSON body (`Null` if none).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.env.config.admin_token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        answer(req, "admin request").await
    }

    /// `PATCH /admin/items/{item}` with `body`.
    pub async fn patch_item(&self, item: u64, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.admin(
            reqwest::Method::PATCH,
            &format!("/admin/items/{item}"),
            Some(body),
        )
        .await
    }

    pub fn sql(&self, sql: &str) -> Statement {
        let backend = self.db.get_database_backend();
        let sql = match backend {
            sea_orm::DbBackend::Postgres => sql.to_owned(),
            _ => {
                // `$1`-style placeholders to MySQL's `?`.
                let mut out = String::new();
                let mut chars = sql.chars().peekable();
                while let Some(c) = chars.next() {
                    if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                        while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                            chars.next();
                        }
                        out.push('?');
                    } else {
                        out.push(c);
                    }
                }
                out
            }
        };
        Statement::from_string(backend, sql)
    }

    /// The one row `sql` reads.
    pub async fn row(&self, sql: &str) -> QueryResult {
        self.db
            .query_one_raw(self.sql(sql))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .unwrap_or_else(|| panic!("{sql}: no row"))
    }

    /// The `n` of `SELECT COUNT(*) AS n …`.
    pub async fn count(&self, sql: &str) -> i64 {
        self.row(sql).await.try_get("", "n").expect("a count")
    }

    /// Pays each order of `to_pay` (right amount, `pay_<id>`) as soon as it awaits payment.
    pub async fn pay_as_they_await(&self, item: u64, to_pay: &HashSet<OrderId>) {
        let paid = tokio::sync::Mutex::new(HashSet::new());
        wait_for(
            "the chosen orders paid",
            Duration::from_secs(60),
            || async {
                let mut paid = paid.lock().await;
                for id in self.order_ids_with_status(item, "AWAITING_PAYMENT").await {
                    if to_pay.contains(&id) && paid.insert(id) {
                        assert_eq!(self.pay(id, &format!("pay_{id}"), 1999, true).await, 200);
                    }
                }
                (paid.len() == to_pay.len()).then_some(())
            },
        )
        .await;
    }

    /// Orders of an item by status, from the database.
    pub async fn counts(&self, item: u64) -> BTreeMap<String, i64> {
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                self.db.get_database_backend(),
                self.sql(
                    "SELECT status, COUNT(*) AS n FROM orders WHERE item_id = $1 GROUP BY status",
                )
                .sql,
                [(item as i64).into()],
            ))
            .await
            .expect("counts");
        rows.into_iter()
            .map(|r| {
                (
                    r.try_get::<String>("", "status").unwrap(),
                    r.try_get::<i64>("", "n").unwrap(),
                )
            })
            .collect()
    }

    pub async fn wait_counts(
        &self,
        item: u64,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&BTreeMap<String, i64>) -> bool,
    ) -> BTreeMap<String, i64> {
        // Every change of the counts is printed, so that a test that times out shows where the
        // orders stopped.
        let seen = std::sync::Mutex::new(BTreeMap::new());
        wait_for(what, deadline, || async {
            let c = self.counts(item).await;
            let mut last = seen.lock().unwrap();
            if *last != c {
                eprintln!("{what}: {c:?}");
                *last = c.clone();
            }
            drop(last);
            pred(&c).then_some(c)
        })
        .await
    }

    /// Waits until `orders` orders of `item` await payment; the counts then.
    pub async fn wait_awaiting_payment(&self, item: u64, orders: i64) -> BTreeMap<String, i64> {
        let what = format!("{orders} orders awaiting payment");
        self.wait_counts(item, &what, DRAIN, |c| n(c, "AWAITING_PAYMENT") == orders)
            .await
    }

    /// Buyers `users` each try once, `concurrency` at a time, and `accepted` of them get an order:
    /// their ids, once every one awaits payment.
    pub async fn buy_awaiting_payment(
        &self,
        users: impl IntoIterator<Item = u64>,
        item: u64,
        concurrency: usize,
        accepted: usize,
    ) -> HashSet<OrderId> {
        let ids: HashSet<OrderId> = self
            .buy_many(users, item, concurrency)
            .await
            .into_iter()
            .collect();
        assert_eq!(ids.len(), accepted);
        self.wait_awaiting_payment(item, accepted as i64).await;
        ids
    }

    pub async fn order_ids_with_status(&self, item: u64, status: &str) -> Vec<OrderId> {
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                self.db.get_database_backend(),
                self.sql("SELECT id FROM orders WHERE item_id = $1 AND status = $2 ORDER BY id")
                    .sql,
                [(item as i64).into(), status.into()],
            ))
            .await
            .expect("orders");
        rows.into_iter()
            .map(|r| OrderId(r.try_get::<i64>("", "id").unwrap() as u64))
            .collect()
    }

    pub async fn remaining(&self, item: u64) -> i64 {
        let v: Option<i64> = self
            .redis
            .hget(self.keys.item(ItemId(item)), "remaining")
            .await
            .expect("redis");
        v.expect("item in redis")
    }

    pub async fn queue_depth(&self, queue: &str) -> u32 {
        seckill_testkit::queue_depth(&self.env.config.amqp_url, queue)
            .await
            .unwrap_or_else(|| panic!("no queue {queue}"))
    }

    pub fn topology(&self) -> Topology {
        Topology::new(&self.env.config.namespace, self.env.config.payment_timeout)
    }

    /// The bench's audit of one item (every invariant of the contract, as `seckill-bench` checks
    /// it after a sale), which must pass; `accepted` orders were answered `202`.
    pub async fn audit(&self, item: u64, accepted: usize) {
        let checks = seckill_bench::audit::audit(
            &self.env.config,
            seckill_schema::ItemId(item),
            seckill_bench::audit::Accepted::exactly(accepted as u64),
        )
        .await
        .expect("the audit runs");
        let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
        assert!(failed.is_empty(), "the audit failed: {failed:#?}");
    }

    /// The contract's invariants and the bench's audit of the item, `accepted` being every order
    /// its sale accepted.
    pub async fn check_and_audit(&self, item: u64, accepted: &HashSet<OrderId>) {
        self.check_invariants(item, accepted).await;
        self.audit(item, accepted.len()).await;
    }

    /// The contract's invariants for one item, once the pipeline is drained. `accepted` is every
    /// order id a client got a 202 for.
    pub async fn check_invariants(&self, item: u64, accepted: &HashSet<OrderId>) {
        let db = &self.db;
        let backend = db.get_database_backend();
        let row = db
            .query_one_raw(Statement::from_sql_and_values(
                backend,
                self.sql("SELECT stock, available, locked, sold, per_user_limit FROM items WHERE id = $1").sql,
                [(item as i64).into()],
            ))
            .await
            .expect("item")
            .expect("item row");
        let stock: i64 = row.try_get("", "stock").unwrap();
        let available: i64 = row.try_get("", "available").unwrap();
        let locked: i64 = row.try_get("", "locked").unwrap();
        let sold: i64 = row.try_get("", "sold").unwrap();
        let limit: i32 = row.try_get("", "per_user_limit").unwrap();
        let orders = db
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                self.sql("SELECT id, user_id, quantity, status FROM orders WHERE item_id = $1")
                    .sql,
                [(item as i64).into()],
            ))
            .await
            .expect("orders");
        let mut holding = 0i64;
        let mut paid_units = 0i64;
        let mut locked_units = 0i64;
        let mut per_user: BTreeMap<i64, i64> = BTreeMap::new();
        let mut in_db = HashSet::new();
        for o in &orders {
            let id: i64 = o.try_get("", "id").unwrap();
            let user: i64 = o.try_get("", "user_id").unwrap();
            let q: i32 = o.try_get("", "quantity").unwrap();
            let status: seckill_schema::OrderStatus =
                o.try_get::<String>("", "status").unwrap().parse().unwrap();
            in_db.insert(OrderId(id as u64));
            assert!(
                status.is_final() || status == seckill_schema::OrderStatus::AwaitingPayment,
                "invariant 5: order {id} is stuck in {status}"
            );
            if status.holds_stock() {
                holding += q as i64;
                *per_user.entry(user).or_default() += q as i64;
            }
            match status {
                s if s.is_sold() => paid_units += q as i64,
                seckill_schema::OrderStatus::AwaitingPayment => locked_units += q as i64,
                _ => {}
            }
        }
        assert!(
            holding <= stock,
            "invariant 1: {holding} units held of {stock}"
        );
        for (user, units) in &per_user {
            assert!(
                *units <= limit as i64,
                "invariant 1: user {user} holds {units} > {limit}"
            );
        }
        // Redis follows the database right after each commit: give it a moment to catch up.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut remaining = self.remaining(item).await;
        while (remaining + holding != stock || remaining != available)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            remaining = self.remaining(item).await;
        }
        assert_eq!(
            remaining + holding,
            stock,
            "invariant 2: redis.remaining + held = stock"
        );
        assert_eq!(
            available + locked + sold,
            stock,
            "invariant 2: db available + locked + sold = stock"
        );
        assert_eq!(
            remaining, available,
            "invariant 2: drained, redis.remaining = db.available"
        );
        assert_eq!(
            sold, paid_units,
            "sold units = units of paid, unrefunded orders"
        );
        assert_eq!(
            locked, locked_units,
            "locked units = units of orders awaiting payment"
        );
        let missing: Vec<_> = accepted.difference(&in_db).collect();
        assert!(
            missing.is_empty(),
            "invariant 3: accepted orders missing from the database: {missing:?}"
        );
        let extra: Vec<_> = in_db.difference(accepted).collect();
        assert!(
            extra.is_empty(),
            "invariant 3: orders nobody was answered 202 for: {extra:?}"
        );
        let dead = self.queue_depth(&self.topology().dead()).await;
        assert_eq!(dead, 0, "nothing may be dead-lettered");
    }
}

/// A TCP proxy to a server that a test can cut (every connection dropped, new ones refused) and
/// restore: the database going down and coming back, for one test only.
pub struct Cuttable {
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Cuttable {
    pub async fn start(target: std::net::SocketAddr) -> Cuttable {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(tokio::task::JoinSet::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                conns2.lock().unwrap().spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Cuttable {
            port,
            up,
            conns,
            accept,
        }
    }

    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.conns.lock().unwrap().abort_all();
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Cuttable {
    fn drop(&mut self) {
        self.accept.abort();
        self.conns.lock().unwrap().abort_all();
    }
}
