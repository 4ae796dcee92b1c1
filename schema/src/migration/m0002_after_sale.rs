//! What buyers and operators read around the sale: a buyer's orders newest first, an order's
//! history, and stock adjustments recorded in the item's history with their reason, once each.

use super::{create_index, index};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // `GET /orders`: a buyer's orders by id (snowflakes: newest first), one index range. It
        // replaces the index on `user_id` alone, which it covers.
        create_index(m, "orders_user_id", "orders", &["user_id", "id"]).await?;
        if m.has_index("orders", "orders_user").await? {
            m.drop_index(Index::drop().name("orders_user").table("orders").to_owned())
                .await?;
        }
        m.alter_table(
            Table::alter()
                .table("inventory_history")
                .add_column_if_not_exists(ColumnDef::new("reason").string_len(200).null())
                // A stock adjustment's id: applied once, whoever applies it (see
                // `seckill_infra::stock`).
                .add_column_if_not_exists(ColumnDef::new("adjustment_id").big_integer().null())
                .to_owned(),
        )
        .await?;
        m.create_index(
            index(
                "inventory_history_adjustment",
                "inventory_history",
                &["adjustment_id"],
            )
            .unique()
            .to_owned(),
        )
        .await?;
        // `GET /admin/orders/{id}`: an order's history rows.
        create_index(
            m,
            "inventory_history_order",
            "inventory_history",
            &["order_id"],
        )
        .await?;
        // `GET /admin/items/{id}/history`, newest first by id.
        create_index(
            m,
            "inventory_history_item_id",
            "inventory_history",
            &["item_id", "id"],
        )
        .await?;
        if m.has_index("inventory_history", "inventory_history_item")
            .await?
        {
            m.drop_index(
                Index::drop()
                    .name("inventory_history_item")
                    .table("inventory_history")
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (table, index) in [
            ("inventory_history", "inventory_history_item_id"),
            ("inventory_history", "inventory_history_order"),
            ("inventory_history", "inventory_history_adjustment"),
            ("orders", "orders_user_id"),
        ] {
            m.drop_index(Index::drop().name(index).table(table).to_owned())
                .await?;
        }
        m.alter_table(
            Table::alter()
                .table("inventory_history")
                .drop_column("reason")
                .drop_column("adjustment_id")
                .to_owned(),
        )
        .await
    }
}
