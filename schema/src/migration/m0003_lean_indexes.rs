//! Indexes that cost the sale less on PostgreSQL, where an index may cover only the rows a query
//! looks for. MySQL has no partial indexes and keeps the ones it has.
//!
//! - A stock adjustment's id is unique among adjustments; the history rows of orders (nearly all
//!   of them) have none, and no longer enter that index at all.
//! - The payment results not yet applied to their orders, looked up by order at every
//!   `PREPARE_PAYMENT` and every payment batch, are few: an index of them alone is small, and the
//!   planner uses it whatever its statistics say (the index on `order_id` loses to a sequential
//!   scan of every payment when the table has never been analysed, as with autovacuum off).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[
    "CREATE UNIQUE INDEX IF NOT EXISTS inventory_history_adjustment_once \
     ON inventory_history (adjustment_id) WHERE adjustment_id IS NOT NULL",
    "DROP INDEX IF EXISTS inventory_history_adjustment",
    "CREATE INDEX IF NOT EXISTS payments_unapplied \
     ON payments (order_id) WHERE NOT applied AND status <> 'PENDING'",
];

const DOWN: &[&str] = &[
    "DROP INDEX IF EXISTS payments_unapplied",
    "CREATE UNIQUE INDEX IF NOT EXISTS inventory_history_adjustment \
     ON inventory_history (adjustment_id)",
    "DROP INDEX IF EXISTS inventory_history_adjustment_once",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        super::on_postgres(m, UP).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        super::on_postgres(m, DOWN).await
    }
}
