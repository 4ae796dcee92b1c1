//! The schema, as sea-orm migrations applied at start by every process that owns a connection.

use sea_orm_migration::prelude::*;

mod m0001_initial;
mod m0002_after_sale;
mod m0003_lean_indexes;
mod m0004_hot_order_moves;
mod m0005_lean_steps;
mod m0006_redis_generations;

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
        ]
    }
}
