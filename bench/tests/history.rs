//! The history checker against a real small sale: gateway and workers in process, 100 units with a
//! per-user limit of 1 sold to 300 buyers through the recording client, 20 of them with an
//! `Idempotency-Key` and a retry each (10 sent together with the first request, 10 after the sale
//! sold out); the history checks out against the database. Then one stored order's amount is
//! changed behind the system's back, and the checker says which.

mod common;

use common::InProcess;
use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use seckill_bench::history::{self, Client, History, Outcome};
use seckill_schema::entity::orders;
use seckill_schema::{ItemId, UserId};
use std::collections::BTreeSet;
use std::time::Duration;

const ITEM: ItemId = ItemId(77);
const STOCK: u64 = 100;
const BUYERS: u64 = 300;
/// Buyers 1..=KEYED buy with a key, and retry with it once.
const KEYED: u64 = 20;
const PRICE: i64 = 1234;

fn key(user: u64) -> String {
    format!("history-{user}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_sale_of_100_units_to_300_buyers_checks_out() {
    let (mut env, running) = InProcess::on_fresh_env().await;
    let (config, gateway) = (env.config.clone(), running.gateway.clone());
    let item = common::new_item(ITEM, "history test", PRICE, STOCK, 1);
    common::create_item(&gateway, &config, item).await;

    let history = History::new();
    let client = Client::new(&history, &config, &gateway);
    let buy = |user: u64, key: Option<String>| {
        let client = client.clone();
        async move { client.buy(UserId(user), ITEM, 1, key.as_deref()).await }
    };
    // The keyed buyers first, half of them sending their retry at once: all 20 sell.
    let first = (1..=KEYED)
        .map(|u| buy(u, Some(key(u))))
        .chain((1..=KEYED / 2).map(|u| buy(u, Some(key(u)))));
    let first = futures_util::future::join_all(first).await;
    assert!(
        first.iter().all(|o| matches!(o, Outcome::Accepted(_))),
        "{first:?}"
    );
    // The crowd: 280 buyers for the other 80 units.
    let crowd = futures_util::future::join_all((KEYED + 1..=BUYERS).map(|u| buy(u, None))).await;
    let sold = crowd
        .iter()
        .filter(|o| matches!(o, Outcome::Accepted(_)))
        .count();
    assert_eq!(sold as u64, STOCK - KEYED, "{crowd:?}");
    assert!(
        crowd
            .iter()
            .all(|o| matches!(o, Outcome::Accepted(_) | Outcome::SoldOut)),
        "{crowd:?}"
    );
    // The other keyed buyers retry after the sale sold out: their first answer back.
    let late =
        futures_util::future::join_all((KEYED / 2 + 1..=KEYED).map(|u| buy(u, Some(key(u))))).await;
    assert!(
        late.iter().all(|o| matches!(o, Outcome::Accepted(_))),
        "{late:?}"
    );

    let ops = history.ops();
    assert_eq!(ops.len() as u64, BUYERS + KEYED);
    let ids: BTreeSet<_> = ops.iter().filter_map(|op| op.outcome.order_id()).collect();
    assert_eq!(ids.len() as u64, STOCK);
    let settle = client.settle(Duration::from_secs(10)).await;
    assert_eq!((settle.settled, settle.unsettled), (0, 0));

    history::wait_for_orders(&history, &config, ITEM, Duration::from_secs(60))
        .await
        .unwrap();
    let checks = history::check(&history, &config, ITEM).await.unwrap();
    common::assert_checks_pass(&checks, &history);
    let names: BTreeSet<&str> = checks.iter().map(|c| c.name).collect();
    for rule in [
        "accepted_stored",
        "answer_ids_unique",
        "idempotent_retries",
        "outcome_unknown_settled",
        "no_order_from_nowhere",
        "limit_reached_truthful",
        "sold_out_truthful",
        "unknown_item_truthful",
        "orders_within_stock",
        "orders_within_user_limit",
        "order_ids_unique",
        // The audit's.
        "no_oversell",
        "accepted_orders_stored",
        "redis_conservation",
    ] {
        assert!(names.contains(rule), "no {rule} among {names:?}");
    }
    let stored = checks.iter().find(|c| c.name == "accepted_stored").unwrap();
    assert!(
        stored
            .detail
            .starts_with("100 orders answered 202 (120 answers)"),
        "{}",
        stored.detail
    );

    // One order's amount changed behind the system's back: the checker names it.
    let victim = ids.iter().next().copied().unwrap();
    let db = seckill_infra::db::connect(&config.database_url, 1)
        .await
        .unwrap();
    let mut row: orders::ActiveModel = orders::Entity::find_by_id(victim.0 as i64)
        .one(&db)
        .await
        .unwrap()
        .unwrap()
        .into();
    row.amount_cents = Set(PRICE + 1);
    row.update(&db).await.unwrap();
    let _ = db.close().await;
    let checks = history::check(&history, &config, ITEM).await.unwrap();
    let failed: Vec<_> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name)
        .collect();
    assert_eq!(failed, ["accepted_stored"], "{checks:#?}");
    let detail = &checks
        .iter()
        .find(|c| c.name == "accepted_stored")
        .unwrap()
        .detail;
    assert!(
        detail.contains(&format!("order {victim} stored with {} cents", PRICE + 1)),
        "{detail}"
    );

    let _gateway = running.gateway_task.stop_later();
    running.workers_task.stop().await.unwrap();
    env.cleanup().await;
}
