//! The schema, as sea-orm migrations applied at start by every process that owns a connection.

use sea_orm_migration::prelude::*;

mod m0001_initial;
mod m0002_after_sale;
mod m0003_lean_indexes;
mod m0004_hot_order_moves;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_initial::Migration),
            Box::new(m0002_after_sale::Migration),
            Box::new(m0003_lean_indexes::Migration),
            Box::new(m0004_hot_order_moves::Migration),
        ]
    }
}
