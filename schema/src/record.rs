//! The order's read model in Redis (`Keys::order`), decoded in one place. The Lua scripts write
//! its fields (`lua/purchase.lua`, `lua/mirror.lua`, `lua/rebuild_orders.lua`); every Rust reader
//! goes through [`OrderRecord`], so a malformed record is one error everywhere.

use crate::ids::{ItemId, OrderId, Quantity, UserId};
use crate::messages::OrderEvent;
use crate::status::{OrderStatus, PaymentStatus};

/// The record's field names, as `lua/record.lua` names them for the scripts that write and read
/// the record (`R_USER` is [`field::USER`], and so on; a test holds the two together).
pub mod field {
    pub const USER: &str = "user";
    pub const ITEM: &str = "item";
    pub const QTY: &str = "qty";
    pub const AMOUNT: &str = "amount";
    pub const STATUS: &str = "status";
    pub const RANK: &str = "rank";
    pub const CREATED: &str = "created";
    pub const UPDATED: &str = "updated";
    pub const EPOCH: &str = "epoch";
    pub const PAY_ID: &str = "pay_id";
    pub const PAY_AMOUNT: &str = "pay_amount";
    pub const PAY_STATUS: &str = "pay_status";
    pub const RELEASED: &str = "released";
    pub const REFUSED: &str = "refused";
    pub const ALL: [&str; 14] = [
        USER, ITEM, QTY, AMOUNT, STATUS, RANK, CREATED, UPDATED, EPOCH, PAY_ID, PAY_AMOUNT,
        PAY_STATUS, RELEASED, REFUSED,
    ];
}

/// One order's new status, as announced on [`crate::Keys::order_changes`]: `"<order id>
/// <STATUS>"`, one per line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderChange {
    pub order_id: OrderId,
    pub status: OrderStatus,
}

impl OrderChange {
    /// One message for a batch of changes.
    pub fn encode(changes: impl IntoIterator<Item = OrderChange>) -> String {
        let mut out = String::new();
        for c in changes {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&c.order_id.0.to_string());
            out.push(' ');
            out.push_str(c.status.as_str());
        }
        out
    }

    /// The changes of one message; malformed lines are skipped.
    pub fn decode(message: &str) -> impl Iterator<Item = OrderChange> + '_ {
        message.lines().filter_map(|line| {
            let (id, status) = line.split_once(' ')?;
            Some(OrderChange {
                order_id: OrderId(id.parse().ok()?),
                status: status.parse().ok()?,
            })
        })
    }
}

/// The payment an order shows: the intent while it awaits payment, then the provider's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownPayment {
    pub payment_id: String,
    pub amount_cents: i64,
    pub status: PaymentStatus,
}

impl ShownPayment {
    /// What an order awaiting payment asks the provider to pay: its own payment id, its amount.
    /// It is not stored: the payments table holds what the provider reported, and an order
    /// awaiting payment with no report shows this.
    pub fn intent(order: OrderId, amount_cents: i64) -> ShownPayment {
        ShownPayment {
            payment_id: intent_id(order),
            amount_cents,
            status: PaymentStatus::Pending,
        }
    }

    /// The payment an order shows: the one reported for it, else, while it awaits payment, its
    /// intent. The one rule for the read model, the database's view and recovery.
    pub fn or_intent(
        reported: Option<ShownPayment>,
        order: OrderId,
        status: OrderStatus,
        amount_cents: i64,
    ) -> Option<ShownPayment> {
        match reported {
            None if status == OrderStatus::AwaitingPayment => {
                Some(ShownPayment::intent(order, amount_cents))
            }
            reported => reported,
        }
    }
}

/// The payment id of an order's intent.
pub fn intent_id(order: OrderId) -> String {
    format!("pay_{order}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub user: UserId,
    pub item: ItemId,
    pub quantity: Quantity,
    pub amount_cents: i64,
    pub status: OrderStatus,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub payment: Option<ShownPayment>,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed order record: {0}")]
pub struct BadRecord(String);

impl OrderRecord {
    /// Order `order`'s record, from the hash's `field, value` pairs as `HGETALL` answers them. An
    /// order awaiting payment with no payment in its record shows its intent: the read model
    /// does not store what the order's id and amount say.
    pub fn from_pairs<I, K, V>(order: OrderId, pairs: I) -> Result<OrderRecord, BadRecord>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let mut f = std::collections::HashMap::new();
        for (k, v) in pairs {
            f.insert(k.as_ref().to_owned(), v.into());
        }
        let num = |k: &str| -> Result<i64, BadRecord> {
            f.get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .ok_or_else(|| BadRecord(format!("field {k:?} is missing or not a number")))
        };
        let unsigned = |k: &str| -> Result<u64, BadRecord> {
            u64::try_from(num(k)?).map_err(|_| BadRecord(format!("field {k:?} is negative")))
        };
        let status = match f.get(field::STATUS) {
            None => OrderStatus::Pending,
            Some(s) => s.parse().map_err(|e| BadRecord(format!("{e}")))?,
        };
        let quantity = u32::try_from(num(field::QTY)?)
            .ok()
            .and_then(Quantity::new)
            .ok_or_else(|| BadRecord(format!("field {:?} is not a quantity", field::QTY)))?;
        let amount_cents = num(field::AMOUNT)?;
        let reported = match f.get(field::PAY_ID) {
            None => None,
            Some(id) => Some(ShownPayment {
                payment_id: id.clone(),
                amount_cents: num(field::PAY_AMOUNT)?,
                status: f
                    .get(field::PAY_STATUS)
                    .map(|s| s.parse())
                    .transpose()
                    .map_err(|e| BadRecord(format!("{e}")))?
                    .unwrap_or(PaymentStatus::Pending),
            }),
        };
        let created_at_ms = num(field::CREATED)?;
        Ok(OrderRecord {
            user: UserId(unsigned(field::USER)?),
            item: ItemId(unsigned(field::ITEM)?),
            quantity,
            amount_cents,
            status,
            created_at_ms,
            updated_at_ms: num(field::UPDATED).unwrap_or(created_at_ms),
            payment: ShownPayment::or_intent(reported, order, status, amount_cents),
        })
    }

    /// The order as an event, for the messages that act on it.
    pub fn event(&self, order_id: OrderId) -> OrderEvent {
        OrderEvent {
            order_id,
            user_id: self.user,
            item_id: self.item,
            quantity: self.quantity,
            amount_cents: self.amount_cents,
            created_at_ms: self.created_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_changes_round_trip() {
        let changes = [
            OrderChange {
                order_id: OrderId(7),
                status: OrderStatus::Paid,
            },
            OrderChange {
                order_id: OrderId(u64::MAX >> 1),
                status: OrderStatus::RefundRequested,
            },
        ];
        let msg = OrderChange::encode(changes);
        assert_eq!(OrderChange::decode(&msg).collect::<Vec<_>>(), changes);
        assert_eq!(OrderChange::decode("x PAID\n7 NOPE\n").count(), 0);
    }

    #[test]
    fn the_lua_prelude_and_the_codec_name_the_fields_alike() {
        let lua: Vec<(String, String)> = include_str!("../../lua/record.lua")
            .lines()
            .filter_map(|l| {
                let (name, value) = l.strip_prefix("local R_")?.split_once(" = ")?;
                Some((name.to_owned(), value.trim_matches('\'').to_owned()))
            })
            .collect();
        let rust: Vec<(String, String)> = field::ALL
            .iter()
            .map(|f| (f.to_uppercase(), (*f).to_owned()))
            .collect();
        assert_eq!(lua, rust);
    }

    #[test]
    fn decodes_a_pending_record_and_a_paid_one() {
        let pending = OrderRecord::from_pairs(
            OrderId(1),
            [
                ("user", "7"),
                ("item", "3"),
                ("qty", "2"),
                ("amount", "1980"),
                ("created", "1000"),
                ("updated", "1000"),
                ("epoch", "5"),
            ],
        )
        .unwrap();
        assert_eq!(pending.status, OrderStatus::Pending);
        assert_eq!(pending.quantity.get(), 2);
        assert_eq!(pending.payment, None);
        let paid = OrderRecord::from_pairs(
            OrderId(2),
            [
                ("user", "7"),
                ("item", "3"),
                ("qty", "1"),
                ("amount", "990"),
                ("created", "1000"),
                ("updated", "2000"),
                ("status", "PAID"),
                ("pay_id", "p1"),
                ("pay_amount", "990"),
                ("pay_status", "SUCCEEDED"),
            ],
        )
        .unwrap();
        assert_eq!(paid.status, OrderStatus::Paid);
        assert_eq!(paid.payment.unwrap().payment_id, "p1");
        let awaiting = OrderRecord::from_pairs(
            OrderId(3),
            [
                ("user", "7"),
                ("item", "3"),
                ("qty", "1"),
                ("amount", "990"),
                ("created", "1000"),
                ("status", "AWAITING_PAYMENT"),
            ],
        )
        .unwrap();
        assert_eq!(
            awaiting.payment,
            Some(ShownPayment::intent(OrderId(3), 990))
        );
    }

    #[test]
    fn a_malformed_record_is_an_error() {
        assert!(OrderRecord::from_pairs(OrderId(1), [("user", "x")]).is_err());
        assert!(
            OrderRecord::from_pairs(
                OrderId(1),
                [
                    ("user", "1"),
                    ("item", "1"),
                    ("qty", "0"),
                    ("amount", "1"),
                    ("created", "1")
                ]
            )
            .is_err()
        );
    }
}
