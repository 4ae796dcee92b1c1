//! Newtypes for the values that cross process boundaries, parsed once at the edge.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A sale item, chosen by the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ItemId(pub u64);

/// A buyer, the `sub` of a user JWT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub u64);

/// A snowflake order id; sent in JSON as a decimal string, since JavaScript numbers lose its low bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderId(pub u64);

/// A stock adjustment by an operator, a snowflake minted by the gateway: the key of its pending
/// entry in Redis (`Keys::adjustments`) and of its history row (`inventory_history.adjustment_id`),
/// so that it is applied once whoever applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdjustmentId(pub u64);

/// Units of one item in one order; never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Quantity(u32);

impl Quantity {
    pub const ONE: Quantity = Quantity(1);

    pub fn new(n: u32) -> Option<Quantity> {
        (n > 0).then_some(Quantity(n))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Quantity {
    type Error = &'static str;
    fn try_from(n: u32) -> Result<Self, Self::Error> {
        Quantity::new(n).ok_or("quantity must be at least 1")
    }
}

impl From<Quantity> for u32 {
    fn from(q: Quantity) -> u32 {
        q.0
    }
}

macro_rules! display_from_str {
    ($($t:ident),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
        impl FromStr for $t {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($t)
            }
        }
    )*};
}
display_from_str!(ItemId, UserId, OrderId, AdjustmentId);

impl Serialize for OrderId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for OrderId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Reads either form with an error message in the API's words, not Rust's.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = OrderId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an order id (a decimal string)")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<OrderId, E> {
                Ok(OrderId(n))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<OrderId, E> {
                s.parse()
                    .map(OrderId)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(s), &self))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_id_is_a_string_in_json_and_reads_either_form() {
        let id = OrderId(u64::MAX - 1);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", u64::MAX - 1));
        assert_eq!(serde_json::from_str::<OrderId>(&json).unwrap(), id);
        assert_eq!(serde_json::from_str::<OrderId>("42").unwrap(), OrderId(42));
        let err = serde_json::from_str::<OrderId>("\"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected an order id"), "{err}");
    }

    #[test]
    fn quantity_rejects_zero() {
        assert!(serde_json::from_str::<Quantity>("0").is_err());
        assert!(serde_json::from_str::<Quantity>("-1").is_err());
        assert!(serde_json::from_str::<Quantity>("4294967296").is_err());
        assert_eq!(serde_json::from_str::<Quantity>("3").unwrap().get(), 3);
    }
}
