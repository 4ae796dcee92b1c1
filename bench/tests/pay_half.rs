//! The payment provider against the whole system: gateway and workers in process, 1,000 orders,
//! half paid with duplicates in random order, the rest left to time out; the audit must pass.

mod common;

use common::InProcess;
use seckill_bench::audit::{self, Accepted};
use seckill_bench::provider::{self, Faults, PayOptions};
use seckill_infra::auth::Tickets;
use seckill_schema::{ItemId, UserId};
use seckill_testkit::{Backend, TestEnv, wait_for};
use std::time::Duration;

const ITEM: u64 = 42;
const ORDERS: u64 = 1_000;

async fn counts(config: &seckill_infra::Config) -> (i64, i64, i64) {
    use sea_orm::ConnectionTrait;
    let db = seckill_infra::db::connect(&config.database_url, 1)
        .await
        .unwrap();
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT status, COUNT(*) AS n FROM orders WHERE item_id = {ITEM} GROUP BY status"
            ),
        ))
        .await
        .unwrap();
    let _ = db.close().await;
    let get = |s: &str| {
        rows.iter()
            .find(|r| r.try_get::<String>("", "status").unwrap() == s)
            .map(|r| r.try_get::<i64>("", "n").unwrap())
            .unwrap_or(0)
    };
    (get("AWAITING_PAYMENT"), get("PAID"), get("TIMED_OUT"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_pays_half_of_1000_orders_with_duplicates_and_reordering() {
    let mut env = TestEnv::new(Backend::Postgres);
    env.config.payment_timeout = Duration::from_secs(8);
    let config = env.config.clone();
    let running = InProcess::start(&config).await;
    let gateway = running.gateway.clone();

    let item = serde_json::json!({"item_id": ITEM, "name": "provider test", "price_cents": 990, "stock": ORDERS});
    common::create_item(&gateway, &config, item).await;
    let http = reqwest::Client::new();
    let tickets = Tickets::new(&config.ticket_secret);
    let expires = chrono::Utc::now().timestamp() + 600;
    let answers = futures_util::future::join_all((1..=ORDERS).map(|u| {
        let (http, gateway) = (&http, &gateway);
        let ticket = tickets.mint(UserId(u), ItemId(ITEM), expires);
        async move {
            http.post(format!("{gateway}/seckill"))
                .json(&serde_json::json!({"item_id": ITEM, "ticket": ticket}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    }))
    .await;
    assert!(
        answers.iter().all(|s| *s == 202),
        "every buyer gets one unit"
    );
    wait_for(
        "all orders awaiting payment",
        Duration::from_secs(60),
        || async { (counts(&config).await.0 == ORDERS as i64).then_some(()) },
    )
    .await;

    let mut opts = PayOptions::new(&config, &gateway);
    opts.item = Some(ItemId(ITEM));
    opts.ratio = 0.5;
    opts.faults = Faults {
        duplicates: 0.3,
        reorder: true,
        ..Faults::default()
    };
    let report = provider::pay(&opts).await.unwrap();
    assert_eq!(report.chosen, 500);
    assert!(report.duplicates > 100, "{} duplicates", report.duplicates);
    assert_eq!(
        report.answers.get("200").copied().unwrap_or(0),
        500 + report.duplicates
    );

    wait_for(
        "500 PAID and 500 TIMED_OUT",
        Duration::from_secs(60),
        || async {
            let (awaiting, paid, timed_out) = counts(&config).await;
            (awaiting == 0 && paid == 500 && timed_out == 500).then_some(())
        },
    )
    .await;
    let checks = audit::audit(&config, ItemId(ITEM), Accepted::exactly(ORDERS))
        .await
        .unwrap();
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    let _gateway = running.gateway_task.stop_later();
    running.workers_task.stop().await.unwrap();
}
