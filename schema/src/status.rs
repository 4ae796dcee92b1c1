//! The order life of the contract, in one place: statuses, their order, and which moves are legal.
//! Each status's name (`Display`, `FromStr`, `as_str`) and the list of all (`ALL`) come from one
//! derive, with serde's spelling, which `status!` gives both status enums.

use serde::{Deserialize, Serialize};

/// A status enum of the contract: spelled in SCREAMING_SNAKE_CASE by serde and strum alike (its
/// `Display`, `FromStr` and `as_str`), with `ALL` its statuses in declaration order.
macro_rules! status {
    ($(#[$doc:meta])* pub enum $name:ident { $($variants:tt)* }) => {
        $(#[$doc])*
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            Serialize,
            Deserialize,
            strum::Display,
            strum::EnumString,
            strum::IntoStaticStr,
            strum::VariantArray,
        )]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        #[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name { $($variants)* }

        impl $name {
            pub const ALL: &'static [$name] = <$name as strum::VariantArray>::VARIANTS;

            /// The name the API, the database and Redis spell it with.
            pub fn as_str(self) -> &'static str {
                self.into()
            }
        }
    };
}

status! {
    pub enum OrderStatus {
        Pending,
        Created,
        StockLocked,
        AwaitingPayment,
        Paid,
        Failed,
        Cancelled,
        TimedOut,
        RefundRequired,
        Shipped,
        Completed,
        RefundRequested,
        Refunded,
    }
}

impl OrderStatus {
    /// How far along its life an order is. The Redis read model only ever moves forward in rank,
    /// so a late or redelivered message cannot make an order look younger than it is.
    pub fn rank(self) -> u8 {
        match self {
            OrderStatus::Pending => 0,
            OrderStatus::Created => 1,
            OrderStatus::StockLocked => 2,
            OrderStatus::AwaitingPayment => 3,
            OrderStatus::Paid
            | OrderStatus::Failed
            | OrderStatus::Cancelled
            | OrderStatus::TimedOut => 5,
            // Each reached from one of rank 5 by a conditional move, so no two race in the model.
            OrderStatus::RefundRequired | OrderStatus::Shipped | OrderStatus::RefundRequested => 6,
            OrderStatus::Completed => 7,
            OrderStatus::Refunded => 8,
        }
    }

    /// Still holding stock (on its way, or sold): counted against `stock` by the no-oversell
    /// invariant.
    pub fn holds_stock(self) -> bool {
        // The open ones hold theirs until they close.
        self.is_cancellable() || self.is_sold()
    }

    /// Paid for and not refunded: its units are `sold` in the database.
    pub fn is_sold(self) -> bool {
        matches!(
            self,
            OrderStatus::Paid
                | OrderStatus::Shipped
                | OrderStatus::Completed
                | OrderStatus::RefundRequested
        )
    }

    /// Closed without a sale, or refunded: its units went back to stock.
    pub fn is_closed(self) -> bool {
        matches!(
            self,
            OrderStatus::Failed
                | OrderStatus::Cancelled
                | OrderStatus::TimedOut
                | OrderStatus::RefundRequired
                | OrderStatus::Refunded
        )
    }

    /// Past the pipeline and the payment window (invariant 5): ended, or waiting on a person or
    /// the payment provider. No timeout is pending for it.
    pub fn is_final(self) -> bool {
        self.is_sold() || self.is_closed()
    }

    /// Nothing more can happen to it (an SSE stream of the order ends here).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OrderStatus::Completed
                | OrderStatus::Refunded
                | OrderStatus::Failed
                | OrderStatus::Cancelled
                | OrderStatus::TimedOut
        )
    }

    /// Open orders the owner or the timeout may still close.
    pub fn is_cancellable(self) -> bool {
        matches!(
            self,
            OrderStatus::Pending
                | OrderStatus::Created
                | OrderStatus::StockLocked
                | OrderStatus::AwaitingPayment
        )
    }
}

status! {
    /// Status of a payment row, and the payment an order shows: the intent while the order awaits
    /// payment, then what the provider's result did to it.
    pub enum PaymentStatus {
        /// The intent, or a result received but not applied yet.
        Pending,
        Succeeded,
        Failed,
        /// A success for another amount than the order's: never pays it.
        AmountMismatch,
        /// A success on an order closed (or paid) already: the provider must refund it.
        RefundRequired,
        /// The provider gave the money back.
        Refunded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_names() {
        for &st in OrderStatus::ALL {
            assert_eq!(st.as_str().parse::<OrderStatus>().unwrap(), st);
            assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{st}\""));
        }
        assert!("paid".parse::<OrderStatus>().is_err());
        assert_eq!(OrderStatus::ALL.len(), 13);
        assert_eq!(PaymentStatus::ALL.len(), 6);
        for &st in PaymentStatus::ALL {
            assert_eq!(st.as_str().parse::<PaymentStatus>().unwrap(), st);
            assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{st}\""));
        }
    }

    #[test]
    fn ranks_move_forward_along_the_happy_path() {
        let path = [
            OrderStatus::Pending,
            OrderStatus::Created,
            OrderStatus::StockLocked,
            OrderStatus::AwaitingPayment,
            OrderStatus::Paid,
        ];
        assert!(path.windows(2).all(|w| w[0].rank() < w[1].rank()));
        assert!(OrderStatus::TimedOut.rank() < OrderStatus::RefundRequired.rank());
        for path in [
            [
                OrderStatus::Paid,
                OrderStatus::Shipped,
                OrderStatus::Completed,
            ],
            [
                OrderStatus::Paid,
                OrderStatus::RefundRequested,
                OrderStatus::Refunded,
            ],
            [
                OrderStatus::TimedOut,
                OrderStatus::RefundRequired,
                OrderStatus::Refunded,
            ],
        ] {
            assert!(
                path.windows(2).all(|w| w[0].rank() < w[1].rank()),
                "{path:?}"
            );
        }
    }

    #[test]
    fn every_status_is_holding_or_closed_never_both() {
        for &st in OrderStatus::ALL {
            assert_ne!(st.holds_stock(), st.is_closed(), "{st}");
            assert!(!st.is_terminal() || st.is_final(), "{st}");
        }
    }
}
