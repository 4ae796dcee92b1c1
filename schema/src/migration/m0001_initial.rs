//! Items, orders, stock locks, payments and the inventory history.

#![allow(elided_lifetimes_in_paths)] // the migration trait is declared with elided lifetimes

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

fn ms(name: &'static str) -> ColumnDef {
    ColumnDef::new(name).big_integer().not_null().to_owned()
}

/// The stock locks of m0001, dropped by m0005 (whose `down` brings the table back).
pub(super) fn stock_locks() -> TableCreateStatement {
    Table::create()
        .table("stock_locks")
        .if_not_exists()
        .col(
            ColumnDef::new("order_id")
                .big_integer()
                .not_null()
                .primary_key(),
        )
        .col(ColumnDef::new("item_id").big_integer().not_null())
        .col(ColumnDef::new("quantity").integer().not_null())
        .col(ColumnDef::new("status").string_len(16).not_null())
        .col(ms("created_at_ms"))
        .col(ms("updated_at_ms"))
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("items")
                .if_not_exists()
                .col(ColumnDef::new("id").big_integer().not_null().primary_key())
                .col(ColumnDef::new("name").string_len(200).not_null())
                .col(ColumnDef::new("price_cents").big_integer().not_null())
                .col(ColumnDef::new("stock").big_integer().not_null())
                .col(ColumnDef::new("available").big_integer().not_null())
                .col(ColumnDef::new("locked").big_integer().not_null())
                .col(ColumnDef::new("sold").big_integer().not_null())
                .col(ColumnDef::new("per_user_limit").integer().not_null())
                .col(ColumnDef::new("starts_at_ms").big_integer().null())
                .col(ColumnDef::new("ends_at_ms").big_integer().null())
                .col(ms("created_at_ms"))
                .col(ms("updated_at_ms"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("orders")
                .if_not_exists()
                .col(ColumnDef::new("id").big_integer().not_null().primary_key())
                .col(ColumnDef::new("user_id").big_integer().not_null())
                .col(ColumnDef::new("item_id").big_integer().not_null())
                .col(ColumnDef::new("quantity").integer().not_null())
                .col(ColumnDef::new("amount_cents").big_integer().not_null())
                .col(ColumnDef::new("status").string_len(24).not_null())
                .col(ColumnDef::new("close_reason").string_len(64).null())
                .col(ms("created_at_ms"))
                .col(ms("updated_at_ms"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("orders_item_status")
                .table("orders")
                .col("item_id")
                .col("status")
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("orders_user")
                .table("orders")
                .col("user_id")
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        m.create_table(stock_locks()).await?;
        m.create_table(
            Table::create()
                .table("payments")
                .if_not_exists()
                .col(
                    ColumnDef::new("payment_id")
                        .string_len(64)
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new("order_id").big_integer().not_null())
                .col(ColumnDef::new("amount_cents").big_integer().not_null())
                .col(ColumnDef::new("status").string_len(24).not_null())
                .col(ColumnDef::new("applied").boolean().not_null())
                .col(ms("created_at_ms"))
                .col(ms("updated_at_ms"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("payments_order")
                .table("payments")
                .col("order_id")
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("inventory_history")
                .if_not_exists()
                .col(
                    ColumnDef::new("id")
                        .big_integer()
                        .not_null()
                        .auto_increment()
                        .primary_key(),
                )
                .col(ColumnDef::new("item_id").big_integer().not_null())
                .col(ColumnDef::new("order_id").big_integer().null())
                .col(ColumnDef::new("cause").string_len(32).not_null())
                .col(ColumnDef::new("quantity").big_integer().not_null())
                .col(ColumnDef::new("available_before").big_integer().not_null())
                .col(ColumnDef::new("available_after").big_integer().not_null())
                .col(ColumnDef::new("locked_before").big_integer().not_null())
                .col(ColumnDef::new("locked_after").big_integer().not_null())
                .col(ColumnDef::new("sold_before").big_integer().not_null())
                .col(ColumnDef::new("sold_after").big_integer().not_null())
                .col(ms("created_at_ms"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("inventory_history_item")
                .table("inventory_history")
                .col("item_id")
                .if_not_exists()
                .to_owned(),
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
