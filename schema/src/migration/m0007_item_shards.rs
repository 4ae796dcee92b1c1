//! `items.shards`: how many Redis shards (genes) an item's stock is spread over, 1 to 16. A hot
//! item is no longer capped at one Redis core: each shard is a gene of its own (see
//! `crate::keys::shard_gene`). Every existing item has one.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.has_column("items", "shards").await? {
            return Ok(());
        }
        m.alter_table(
            Table::alter()
                .table("items")
                .add_column(
                    ColumnDef::new("shards")
                        .small_integer()
                        .not_null()
                        .default(1),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("items")
                .drop_column("shards")
                .to_owned(),
        )
        .await
    }
}
