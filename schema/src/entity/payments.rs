//! Payments by the provider's id: every result the webhook received (`SUCCEEDED`, `FAILED`,
//! `AMOUNT_MISMATCH`, `REFUND_REQUIRED`, `REFUNDED`; `PENDING` only between a result's insert and
//! its update in the same transaction). `applied` is false while a result waits for its order to
//! reach `AWAITING_PAYMENT`. An order's intent (what it asks the provider to pay) is not a row:
//! [`shown`] derives it.

use crate::OrderId;
use crate::record::ShownPayment;
use crate::status::{OrderStatus, PaymentStatus};
use sea_orm::entity::prelude::*;

/// The table's name, for hand-written SQL (the entity's `table_name()`, as a constant).
pub const TABLE: &str = "payments";

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

#[derive(Debug, thiserror::Error)]
#[error("payment {0} has status {1:?}")]
pub struct UnknownPaymentStatus(pub String, pub String);

/// The payment an order shows, from its payment rows: the one that paid it, else the latest
/// report, else (while it awaits payment) its intent.
pub fn shown(
    order: OrderId,
    status: OrderStatus,
    amount_cents: i64,
    pays: &[Model],
) -> Result<Option<ShownPayment>, UnknownPaymentStatus> {
    Ok(ShownPayment::or_intent(
        reported(pays)?,
        order,
        status,
        amount_cents,
    ))
}

/// The reported payment an order shows, from its payment rows: the one that paid it, else the
/// latest; what the read model stores (it derives the intent itself).
pub fn reported(pays: &[Model]) -> Result<Option<ShownPayment>, UnknownPaymentStatus> {
    let paid = |p: &&Model| p.status == PaymentStatus::Succeeded.as_str() && p.applied;
    let chosen = pays.iter().find(paid).or_else(|| {
        pays.iter()
            .max_by(|a, b| a.updated_at_ms.cmp(&b.updated_at_ms))
    });
    chosen
        .map(|p| {
            Ok(ShownPayment {
                payment_id: p.payment_id.clone(),
                amount_cents: p.amount_cents,
                status: p
                    .status
                    .parse()
                    .map_err(|_| UnknownPaymentStatus(p.payment_id.clone(), p.status.clone()))?,
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, status: PaymentStatus, applied: bool, at: i64) -> Model {
        Model {
            payment_id: id.into(),
            order_id: 7,
            amount_cents: 990,
            status: status.as_str().into(),
            applied,
            created_at_ms: at,
            updated_at_ms: at,
        }
    }

    #[test]
    fn the_paying_result_then_the_latest_then_the_intent() {
        let order = OrderId(7);
        let awaiting = OrderStatus::AwaitingPayment;
        let intent = shown(order, awaiting, 990, &[]).unwrap().unwrap();
        assert_eq!(intent, ShownPayment::intent(order, 990));
        assert_eq!(intent.payment_id, "pay_7");
        assert_eq!(intent.status, PaymentStatus::Pending);
        // No intent once the order is past waiting, and none before.
        for status in [OrderStatus::TimedOut, OrderStatus::Created] {
            assert_eq!(shown(order, status, 990, &[]).unwrap(), None, "{status}");
        }
        let failed = row("a", PaymentStatus::Failed, true, 1);
        let later = row("b", PaymentStatus::Failed, true, 2);
        let latest = shown(order, awaiting, 990, &[later.clone(), failed.clone()]).unwrap();
        assert_eq!(latest.unwrap().payment_id, "b");
        let paid = row("c", PaymentStatus::Succeeded, true, 0);
        let all = [failed, paid, later];
        let shown_paid = shown(order, OrderStatus::Paid, 990, &all).unwrap().unwrap();
        assert_eq!(
            (shown_paid.payment_id.as_str(), shown_paid.status),
            ("c", PaymentStatus::Succeeded)
        );
        let broken = row("d", PaymentStatus::Failed, true, 3);
        let broken = Model {
            status: "MAYBE".into(),
            ..broken
        };
        assert!(shown(order, awaiting, 990, &[broken]).is_err());
    }
}
