//! The schema, as sea-orm migrations applied at start by every process that owns a connection.

// The migration trait is declared with elided lifetimes (`&SchemaManager`), as its impls are.
#![allow(elided_lifetimes_in_paths)]

use sea_orm_migration::prelude::*;

mod m0001_initial;
mod m0002_after_sale;
mod m0003_lean_indexes;
mod m0004_hot_order_moves;
mod m0005_lean_steps;
mod m0006_redis_generations;
mod m0007_item_shards;

pub struct Migrator;

/// Runs `statements` on PostgreSQL only (partial indexes, storage parameters and collations that
/// MySQL does not have).
async fn on_postgres(m: &SchemaManager<'_>, statements: &[&str]) -> Result<(), DbErr> {
    if m.get_database_backend() != sea_orm_migration::sea_orm::DbBackend::Postgres {
        return Ok(());
    }
    for sql in statements {
        m.get_connection().execute_unprepared(sql).await?;
    }
    Ok(())
}

/// `CREATE TABLE IF NOT EXISTS name`, its columns to add.
fn table(name: &'static str) -> TableCreateStatement {
    Table::create().table(name).if_not_exists().to_owned()
}

/// `CREATE INDEX IF NOT EXISTS name ON table (columns…)`.
fn index(
    name: &'static str,
    table: &'static str,
    columns: &[&'static str],
) -> IndexCreateStatement {
    let mut index = Index::create();
    index.name(name).table(table);
    for column in columns {
        index.col(*column);
    }
    index.if_not_exists().to_owned()
}

/// Creates the index [`index`] describes.
async fn create_index(
    m: &SchemaManager<'_>,
    name: &'static str,
    table: &'static str,
    columns: &[&'static str],
) -> Result<(), DbErr> {
    m.create_index(index(name, table, columns)).await
}

/// A `bigint NOT NULL PRIMARY KEY` column.
fn bigint_key(name: &'static str) -> ColumnDef {
    ColumnDef::new(name)
        .big_integer()
        .not_null()
        .primary_key()
        .to_owned()
}

/// Several `bigint NOT NULL` columns at once (ids, amounts, stock counts, times in ms).
trait BigInts {
    fn bigints(&mut self, names: &[&'static str]) -> &mut Self;
}

impl BigInts for TableCreateStatement {
    fn bigints(&mut self, names: &[&'static str]) -> &mut Self {
        for name in names {
            self.col(ColumnDef::new(*name).big_integer().not_null());
        }
        self
    }
}

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_initial::Migration),
            Box::new(m0002_after_sale::Migration),
            Box::new(m0003_lean_indexes::Migration),
            Box::new(m0004_hot_order_moves::Migration),
            Box::new(m0005_lean_steps::Migration),
            Box::new(m0006_redis_generations::Migration),
            Box::new(m0007_item_shards::Migration),
        ]
    }
}
