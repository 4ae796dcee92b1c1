//! Every change of an item's database stock, with its before, its after and its cause.

use sea_orm::entity::prelude::*;

/// The table's name, for hand-written SQL (the entity's `table_name()`, as a constant).
pub const TABLE: &str = "inventory_history";

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "inventory_history")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub item_id: i64,
    pub order_id: Option<i64>,
    pub cause: String,
    pub quantity: i64,
    pub available_before: i64,
    pub available_after: i64,
    pub locked_before: i64,
    pub locked_after: i64,
    pub sold_before: i64,
    pub sold_after: i64,
    pub created_at_ms: i64,
    /// An operator's reason, for a stock adjustment.
    pub reason: Option<String>,
    /// A stock adjustment's id (unique): the row is its record.
    pub adjustment_id: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
