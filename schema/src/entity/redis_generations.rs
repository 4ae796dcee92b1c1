//! Per gene, the newest write generation of Redis's state the database has seen confirmed (see
//! the migration that made it): a Redis below it is stale.

use sea_orm::entity::prelude::*;

/// The table's name, for hand-written SQL (the entity's `table_name()`, as a constant).
pub const TABLE: &str = "redis_generations";

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "redis_generations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub gene: i16,
    pub generation: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
