//! `redis_generations`: per gene (hash tag), the newest write generation of Redis's state that the
//! database has seen confirmed. Every script that writes a gene's state on behalf of a fact moves
//! the gene's generation forward in Redis; the workers record what they saw here. A Redis whose
//! generation is below the database's (a failover to a replica that missed writes) is stale and
//! is rebuilt from the database like a Redis that lost its state.

use super::table;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            table("redis_generations")
                .col(
                    ColumnDef::new("gene")
                        .small_integer()
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new("generation").big_integer().not_null())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(
            Table::drop()
                .table("redis_generations")
                .if_exists()
                .to_owned(),
        )
        .await
    }
}
