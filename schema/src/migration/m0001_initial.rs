//! Items, orders, stock locks, payments and the inventory history.

use super::{BigInts, bigint_key, create_index, table};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The stock locks of m0001, dropped by m0005 (whose `down` brings the table back).
pub(super) fn stock_locks() -> TableCreateStatement {
    table("stock_locks")
        .col(bigint_key("order_id"))
        .bigints(&["item_id"])
        .col(ColumnDef::new("quantity").integer().not_null())
        .col(ColumnDef::new("status").string_len(16).not_null())
        .bigints(&["created_at_ms", "updated_at_ms"])
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            table("items")
                .col(bigint_key("id"))
                .col(ColumnDef::new("name").string_len(200).not_null())
                .bigints(&["price_cents", "stock", "available", "locked", "sold"])
                .col(ColumnDef::new("per_user_limit").integer().not_null())
                .col(ColumnDef::new("starts_at_ms").big_integer().null())
                .col(ColumnDef::new("ends_at_ms").big_integer().null())
                .bigints(&["created_at_ms", "updated_at_ms"])
                .to_owned(),
        )
        .await?;
        m.create_table(
            table("orders")
                .col(bigint_key("id"))
                .bigints(&["user_id", "item_id"])
                .col(ColumnDef::new("quantity").integer().not_null())
                .bigints(&["amount_cents"])
                .col(ColumnDef::new("status").string_len(24).not_null())
                .col(ColumnDef::new("close_reason").string_len(64).null())
                .bigints(&["created_at_ms", "updated_at_ms"])
                .to_owned(),
        )
        .await?;
        create_index(m, "orders_item_status", "orders", &["item_id", "status"]).await?;
        create_index(m, "orders_user", "orders", &["user_id"]).await?;
        m.create_table(stock_locks()).await?;
        m.create_table(
            table("payments")
                .col(
                    ColumnDef::new("payment_id")
                        .string_len(64)
                        .not_null()
                        .primary_key(),
                )
                .bigints(&["order_id", "amount_cents"])
                .col(ColumnDef::new("status").string_len(24).not_null())
                .col(ColumnDef::new("applied").boolean().not_null())
                .bigints(&["created_at_ms", "updated_at_ms"])
                .to_owned(),
        )
        .await?;
        create_index(m, "payments_order", "payments", &["order_id"]).await?;
        m.create_table(
            table("inventory_history")
                .col(
                    ColumnDef::new("id")
                        .big_integer()
                        .not_null()
                        .auto_increment()
                        .primary_key(),
                )
                .bigints(&["item_id"])
                .col(ColumnDef::new("order_id").big_integer().null())
                .col(ColumnDef::new("cause").string_len(32).not_null())
                .bigints(&["quantity"])
                .bigints(&["available_before", "available_after"])
                .bigints(&["locked_before", "locked_after"])
                .bigints(&["sold_before", "sold_after"])
                .bigints(&["created_at_ms"])
                .to_owned(),
        )
        .await?;
        create_index(
            m,
            "inventory_history_item",
            "inventory_history",
            &["item_id"],
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            "inventory_history",
            "payments",
            "stock_locks",
            "orders",
            "items",
        ] {
            m.drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
