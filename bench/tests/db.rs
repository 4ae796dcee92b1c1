//! The bench's raw reads of the workers' database, on PostgreSQL and MySQL alike.

mod common;

use common::{ITEM, PRICE, Sale, oid};
use seckill_bench::db;
use seckill_testkit::Backend;
use std::collections::BTreeMap;

#[tokio::test]
async fn raw_reads_work_on_both_backends() {
    for backend in [Backend::Postgres, Backend::MySql] {
        let sale = Sale::on(backend).await;
        let counts = db::status_counts(&sale.db, ITEM).await.unwrap();
        let expected: BTreeMap<String, u64> = [
            "PAID",
            "AWAITING_PAYMENT",
            "TIMED_OUT",
            "FAILED",
            "REFUND_REQUIRED",
        ]
        .into_iter()
        .map(|s| (s.to_owned(), 1))
        .collect();
        assert_eq!(counts, expected, "{backend:?}");

        let (first, last) = db::order_span(&sale.db, ITEM).await.unwrap().unwrap();
        assert!(first > 0 && first <= last, "{backend:?}");
        assert_eq!(
            db::order_span(&sale.db, seckill_schema::ItemId(8))
                .await
                .unwrap(),
            None
        );

        assert_eq!(
            db::awaiting_payment(&sale.db, Some(ITEM)).await.unwrap(),
            vec![(oid(2), PRICE)]
        );
        assert_eq!(
            db::awaiting_payment(&sale.db, None).await.unwrap(),
            vec![(oid(2), PRICE)]
        );
        sale.done().await;
    }
}
