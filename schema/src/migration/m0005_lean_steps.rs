//! Less written per order on its way to payment.
//!
//! - `stock_locks` is gone. It held one row per order whose stock the database locked, with a
//!   status (`LOCKED`, `DEDUCTED`, `RELEASED`) that always followed the order's own status
//!   (`STOCK_LOCKED`/`AWAITING_PAYMENT`, sold, closed), and nothing read it but the audit: every
//!   order paid for a row insert and, later, a row update that said what `orders.status` says.
//!   `items.locked` and `items.sold` are now audited against the orders themselves.
//! - On PostgreSQL a payment id compares bytewise (`COLLATE "C"`): its index is a primary key
//!   looked up and inserted into by equality only, and the database's default collation made
//!   every comparison a locale-aware `strcoll`.
//! - On PostgreSQL the history is keyed by `(item_id, id)`, the order in which every reader pages
//!   through an item's history; the index on `(item_id, id)` beside a key on `id` alone was one
//!   index entry more per history row. (MySQL wants an `AUTO_INCREMENT` column first in a key, so
//!   it keeps both.)

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const PG_UP: &[&str] = &[
    "ALTER TABLE payments ALTER COLUMN payment_id TYPE varchar(64) COLLATE \"C\"",
    "ALTER TABLE inventory_history DROP CONSTRAINT IF EXISTS inventory_history_pkey",
    "ALTER TABLE inventory_history ADD CONSTRAINT inventory_history_pkey PRIMARY KEY (item_id, id)",
    "DROP INDEX IF EXISTS inventory_history_item_id",
];

const PG_DOWN: &[&str] = &[
    "CREATE INDEX IF NOT EXISTS inventory_history_item_id ON inventory_history (item_id, id)",
    "ALTER TABLE inventory_history DROP CONSTRAINT IF EXISTS inventory_history_pkey",
    "ALTER TABLE inventory_history ADD CONSTRAINT inventory_history_pkey PRIMARY KEY (id)",
    "ALTER TABLE payments ALTER COLUMN payment_id TYPE varchar(64) COLLATE \"default\"",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("stock_locks").if_exists().to_owned())
            .await?;
        super::on_postgres(m, PG_UP).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        super::on_postgres(m, PG_DOWN).await?;
        // Empty: what it held followed from the orders' statuses.
        m.create_table(super::m0001_initial::stock_locks()).await
    }
}
