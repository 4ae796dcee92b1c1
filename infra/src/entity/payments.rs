//! Payments by the provider's id: the intent `PREPARE_PAYMENT` opens (`PENDING`), and every
//! result the webhook received (`SUCCEEDED`, `FAILED`, `AMOUNT_MISMATCH`, `REFUND_REQUIRED`).
//! `applied` is false while a result waits for its order to reach `AWAITING_PAYMENT`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "payments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub payment_id: String,
    pub order_id: i64,
    pub amount_cents: i64,
    pub status: String,
    pub applied: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
