//! An order; its primary key is the gateway's snowflake id.

use sea_orm::entity::prelude::*;

/// The table's name, for hand-written SQL (the entity's `table_name()`, as a constant).
pub const TABLE: &str = "orders";

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "orders")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: i64,
    pub user_id: i64,
    pub item_id: i64,
    pub quantity: i32,
    pub amount_cents: i64,
    pub status: String,
    pub close_reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
