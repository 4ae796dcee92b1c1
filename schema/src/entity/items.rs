//! A sale item and its database stock: `available + locked + sold = stock`.

use sea_orm::entity::prelude::*;

/// The table's name, for hand-written SQL (the entity's `table_name()`, as a constant).
pub const TABLE: &str = "items";

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "items")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: i64,
    pub name: String,
    pub price_cents: i64,
    pub stock: i64,
    pub available: i64,
    pub locked: i64,
    pub sold: i64,
    pub per_user_limit: i32,
    pub starts_at_ms: Option<i64>,
    pub ends_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Redis shards the stock is spread over (1 to 16).
    pub shards: i16,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
