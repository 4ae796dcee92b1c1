//! A small sale written straight into the database and Redis of a test namespace, as the gateway
//! and workers would have left it: the audit's raw material, and the bench's database reads'. And
//! the real gateway and workers in process, for the tests that run the whole system, and what
//! those tests share: the binaries, an item put on sale, the checks' verdict.

// Each test crate uses a part of it.
#![allow(dead_code)]

use fred::prelude::*;
use sea_orm::{ActiveModelTrait, ActiveValue::NotSet, DatabaseConnection, EntityTrait, Set};
use seckill_bench::audit::{self, Accepted, Check};
use seckill_bench::history::History;
use seckill_schema::entity::{inventory_history, items, orders, payments};
use seckill_schema::snowflake::now_ms;
use seckill_schema::{ItemId, Keys, OrderId, OrderStatus};
use seckill_testkit::{Backend, ServerTask, Stores, TestEnv};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The gateway and the workers, in process on one configuration.
pub struct InProcess {
    /// The gateway's base URL.
    pub gateway: String,
    /// The workers' base URL (their `/metrics`).
    pub workers: String,
    pub gateway_task: ServerTask<anyhow::Result<()>>,
    pub workers_task: ServerTask<anyhow::Result<()>>,
}

impl InProcess {
    /// A fresh namespace and database on PostgreSQL, with the system running on it.
    pub async fn on_fresh_env() -> (TestEnv, InProcess) {
        let env = TestEnv::new(Backend::Postgres);
        let running = InProcess::start(&env.config).await;
        (env, running)
    }

    /// The gateway first, then the workers once Redis's state is ready (as in production).
    pub async fn start(config: &seckill_infra::Config) -> InProcess {
        let app = seckill_gateway::Application::build(config.clone())
            .await
            .expect("the gateway starts");
        let gateway = format!("http://127.0.0.1:{}", app.port());
        let gateway_task = ServerTask::spawn(|shutdown| app.run(shutdown));
        seckill_testkit::wait_for_redis_state(config).await;
        let workers = seckill_workers::Workers::build(config.clone())
            .await
            .expect("the workers start");
        let workers_url = format!("http://127.0.0.1:{}", workers.port());
        let workers_task = ServerTask::spawn(|shutdown| workers.run(shutdown));
        InProcess {
            gateway,
            workers: workers_url,
            gateway_task,
            workers_task,
        }
    }
}

/// Buys through `buy` for new users from `first_user` on until one is sold to (`buy` answers the
/// order of a `202`): selling resumed with no one's help. The user that bought, and their order.
pub async fn sells_again<F>(first_user: u64, buy: impl Fn(u64) -> F) -> (u64, OrderId)
where
    F: Future<Output = Option<OrderId>>,
{
    let next = AtomicU64::new(first_user);
    let again = || async {
        let user = next.fetch_add(1, Ordering::Relaxed);
        buy(user).await.map(|order| (user, order))
    };
    seckill_testkit::wait_for("the gateway to sell again", Duration::from_secs(60), again).await
}

/// The directory of the gateway and workers binaries, built if stale (a no-op after `cargo build
/// --workspace --bins`): this crate's own, whose path is the only one Cargo tells integration tests.
pub fn built_binaries() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_seckill-bench"))
        .parent()
        .unwrap()
        .to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args([
            "build",
            "--bins",
            "-p",
            "seckill-gateway",
            "-p",
            "seckill-workers",
        ]);
    if dir.ends_with("release") {
        build.arg("--release");
    }
    assert!(build.status().unwrap().success(), "building the binaries");
    dir
}

/// Runs `seckill-bench flash-sale <args> --out <out>` on the test's configuration (`vars`), as an
/// operator would, and returns the `report.json` it wrote. Fails the test, with the report's
/// checks, unless it succeeded and every check passed.
pub async fn run_flash_sale(
    vars: &[(&str, String)],
    args: &[&str],
    out: &Path,
) -> serde_json::Value {
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_seckill-bench"))
        .envs(vars.iter().cloned())
        .arg("flash-sale")
        .args(args)
        .arg("--out")
        .arg(out)
        .stdin(std::process::Stdio::null())
        .status()
        .await
        .expect("running seckill-bench");
    let report: serde_json::Value = std::fs::read(out.join("report.json"))
        .map(|json| serde_json::from_slice(&json).expect("report.json"))
        .unwrap_or_default();
    assert!(
        status.success(),
        "seckill-bench flash-sale {} failed ({status}); checks: {:#}; logs in {}",
        args.join(" "),
        report["checks"],
        out.display()
    );
    assert_eq!(report["passed"], true);
    report
}

/// The body of a `POST /admin/items` ([`create_item`]): `item`, named `name`, on sale from now on,
/// `stock` units at `price_cents` each, at most `per_user_limit` per buyer. Add a field (a
/// window, shards) by indexing it.
pub fn new_item(
    item: ItemId,
    name: &str,
    price_cents: i64,
    stock: u64,
    per_user_limit: u32,
) -> serde_json::Value {
    serde_json::json!({"item_id": item.0, "name": name, "price_cents": price_cents,
        "stock": stock, "per_user_limit": per_user_limit})
}

/// `POST /admin/items` through the gateway at `gateway` with the operator's token: `item` (the
/// request's JSON) must be created.
pub async fn create_item(gateway: &str, config: &seckill_infra::Config, item: serde_json::Value) {
    let created = reqwest::Client::new()
        .post(format!("{gateway}/admin/items"))
        .bearer_auth(&config.admin_token)
        .json(&item)
        .send()
        .await
        .expect("POST /admin/items");
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
}

/// Prints each check: passed or not, its invariant, its name and what it found.
pub fn print_checks(checks: &[Check]) {
    for c in checks {
        println!(
            "  {} {} {}: {}",
            if c.passed { "✓" } else { "✗" },
            c.invariant,
            c.name,
            c.detail
        );
    }
}

/// Every check passed; if not, the failed ones and the whole history.
pub fn assert_checks_pass(checks: &[Check], history: &History) {
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
    assert!(failed.is_empty(), "{failed:#?}\n{}", history.to_json());
}

pub const ITEM: ItemId = ItemId(7);

/// The id of the fixture's order number `n`: its low bits carry the item's gene, as every
/// order id the gateway mints for an unsharded item does (the audit checks each order is in its
/// buyer's home shard).
pub fn oid(n: i64) -> i64 {
    (n << seckill_schema::snowflake::GENE_BITS)
        | i64::from(seckill_schema::keys::gene_of_item(ITEM))
}
pub const STOCK: i64 = 10;
pub const PRICE: i64 = 990;

/// A sale of 10 units after five orders, each in a different end state:
///
/// | order | user | status | stock lock | payment |
/// |---|---|---|---|---|
/// | 1 | 1 | PAID | DEDUCTED | SUCCEEDED |
/// | 2 | 2 | AWAITING_PAYMENT | LOCKED | |
/// | 3 | 3 | TIMED_OUT | RELEASED | |
/// | 4 | 4 | FAILED | | |
/// | 5 | 5 | REFUND_REQUIRED | RELEASED | SUCCEEDED (after the timeout) |
///
/// so the database holds available 8, locked 1, sold 1, and Redis has 8 remaining.
pub struct Sale {
    pub env: TestEnv,
    pub db: DatabaseConnection,
    pub redis: Client,
    pub keys: Keys,
    /// The `202`s the load generator would have seen.
    pub accepted: u64,
    /// The database's stock columns, as the history last left them.
    pub stock: (i64, i64, i64),
}

impl Sale {
    pub async fn new() -> Sale {
        Sale::on(Backend::Postgres).await
    }

    pub async fn on(backend: Backend) -> Sale {
        let env = TestEnv::new(backend);
        let Stores { db, redis, keys } = Stores::connect(&env.config, 2).await;
        let mut sale = Sale {
            env,
            db,
            redis,
            keys,
            accepted: 0,
            stock: (STOCK, 0, 0),
        };
        let now = now_ms() as i64;
        items::ActiveModel {
            id: Set(ITEM.0 as i64),
            name: Set("audit test".into()),
            price_cents: Set(PRICE),
            stock: Set(STOCK),
            available: Set(STOCK),
            locked: Set(0),
            sold: Set(0),
            per_user_limit: Set(1),
            starts_at_ms: Set(None),
            ends_at_ms: Set(None),
            created_at_ms: Set(now),
            updated_at_ms: Set(now),
            shards: Set(1),
        }
        .insert(&sale.db)
        .await
        .unwrap();
        let _: () = sale
            .redis
            .hset(
                sale.keys.item(ITEM),
                [
                    ("remaining", STOCK.to_string()),
                    ("stock", STOCK.to_string()),
                    ("limit", "1".into()),
                    ("price", PRICE.to_string()),
                ],
            )
            .await
            .unwrap();

        use OrderStatus::*;
        sale.order(1, 1, Paid).await;
        sale.step(1, "LOCK", (-1, 1, 0)).await;
        sale.step(1, "DEDUCT", (0, -1, 1)).await;
        sale.payment("pay_1", 1, "SUCCEEDED", PRICE).await;

        sale.order(2, 2, AwaitingPayment).await;
        sale.step(2, "LOCK", (-1, 1, 0)).await;

        sale.order(3, 3, TimedOut).await;
        sale.step(3, "LOCK", (-1, 1, 0)).await;
        sale.step(3, "RELEASE", (1, -1, 0)).await;

        sale.order(4, 4, Failed).await;

        sale.order(5, 5, RefundRequired).await;
        sale.step(5, "LOCK", (-1, 1, 0)).await;
        sale.step(5, "RELEASE", (1, -1, 0)).await;
        sale.payment("pay_5", 5, "SUCCEEDED", PRICE).await;
        sale
    }

    /// An accepted order of one unit, in the database and in the read model; a live one also
    /// holds its unit in Redis.
    pub async fn order(&mut self, n: i64, user: i64, status: OrderStatus) {
        let id = oid(n);
        let now = now_ms() as i64;
        orders::ActiveModel {
            id: Set(id),
            user_id: Set(user),
            item_id: Set(ITEM.0 as i64),
            quantity: Set(1),
            amount_cents: Set(PRICE),
            status: Set(status.as_str().into()),
            close_reason: Set(None),
            created_at_ms: Set(now),
            updated_at_ms: Set(now),
        }
        .insert(&self.db)
        .await
        .unwrap();
        let _: () = self
            .redis
            .hset(
                self.keys.order(OrderId(id as u64)),
                [("status", status.as_str()), ("user", &user.to_string())],
            )
            .await
            .unwrap();
        if status.holds_stock() {
            let _: i64 = self
                .redis
                .hincrby(self.keys.item(ITEM), "remaining", -1)
                .await
                .unwrap();
            let _: i64 = self
                .redis
                .hincrby(self.keys.buyers(ITEM), user.to_string(), 1)
                .await
                .unwrap();
        }
        self.accepted += 1;
    }

    /// A change of the database's stock, recorded in the history and applied to the item.
    pub async fn step(&mut self, order: i64, cause: &str, delta: (i64, i64, i64)) {
        let before = self.stock;
        let after = (before.0 + delta.0, before.1 + delta.1, before.2 + delta.2);
        self.record(order, cause, before, after).await;
        self.stock = after;
        let mut item: items::ActiveModel = items::Entity::find_by_id(ITEM.0 as i64)
            .one(&self.db)
            .await
            .unwrap()
            .unwrap()
            .into();
        item.available = Set(after.0);
        item.locked = Set(after.1);
        item.sold = Set(after.2);
        item.update(&self.db).await.unwrap();
    }

    pub async fn record(
        &self,
        order: i64,
        cause: &str,
        before: (i64, i64, i64),
        after: (i64, i64, i64),
    ) {
        inventory_history::ActiveModel {
            id: NotSet,
            item_id: Set(ITEM.0 as i64),
            order_id: Set(Some(oid(order))),
            cause: Set(cause.into()),
            quantity: Set(1),
            available_before: Set(before.0),
            available_after: Set(after.0),
            locked_before: Set(before.1),
            locked_after: Set(after.1),
            sold_before: Set(before.2),
            sold_after: Set(after.2),
            created_at_ms: Set(0),
            reason: Set(None),
            adjustment_id: Set(None),
        }
        .insert(&self.db)
        .await
        .unwrap();
    }

    pub async fn payment(&self, id: &str, order: i64, status: &str, amount: i64) {
        payments::ActiveModel {
            payment_id: Set(id.into()),
            order_id: Set(oid(order)),
            amount_cents: Set(amount),
            status: Set(status.into()),
            applied: Set(true),
            created_at_ms: Set(0),
            updated_at_ms: Set(0),
        }
        .insert(&self.db)
        .await
        .unwrap();
    }

    pub async fn audit(&self) -> Vec<Check> {
        audit::audit(&self.env.config, ITEM, Accepted::exactly(self.accepted))
            .await
            .expect("the audit runs")
    }

    /// The invariants the audit finds broken.
    pub async fn broken(&self) -> BTreeSet<u8> {
        let checks = self.audit().await;
        for c in checks.iter().filter(|c| !c.passed) {
            eprintln!("✗ {} {}: {}", c.invariant, c.name, c.detail);
        }
        checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.invariant)
            .collect()
    }

    /// The audit finds `invariant` broken and no other; then the sale is cleaned up.
    pub async fn breaks_only(self, invariant: u8) {
        assert_eq!(self.broken().await, BTreeSet::from([invariant]));
        self.done().await;
    }

    pub async fn done(mut self) {
        let _ = self.redis.quit().await;
        let _ = self.db.close().await;
        self.env.cleanup().await;
    }
}
