//! The outbox entry: what `lua/purchase.lua` appends to the gene's stream for every accepted
//! order, and what the gateway's relay turns into an `ORDER_CREATED` event. One field, `e`, holding
//! "order user item quantity amount accepted_ms" separated by spaces: the purchase script builds it
//! with one concatenation, the cheapest form on the hottest script. This module is its only
//! reader.

use crate::ids::{ItemId, OrderId, Quantity, UserId};
use crate::messages::OrderEvent;

/// The stream field that carries the entry.
pub const FIELD: &str = "e";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed outbox entry {0:?}")]
pub struct BadEntry(pub String);

/// The event an entry's `e` field describes.
pub fn decode(entry: &str) -> Result<OrderEvent, BadEntry> {
    let bad = || BadEntry(entry.to_owned());
    let mut parts = entry.split(' ');
    let mut next = || {
        parts
            .next()
            .and_then(|p| p.parse::<i64>().ok())
            .ok_or_else(bad)
    };
    let unsigned = |n: i64| u64::try_from(n).map_err(|_| bad());
    let event = OrderEvent {
        order_id: OrderId(unsigned(next()?)?),
        user_id: UserId(unsigned(next()?)?),
        item_id: ItemId(unsigned(next()?)?),
        quantity: u32::try_from(next()?)
            .ok()
            .and_then(Quantity::new)
            .ok_or_else(bad)?,
        amount_cents: next()?,
        created_at_ms: next()?,
    };
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(event)
}

/// The `e` field for an event, as the purchase script writes it (for tests and tools).
pub fn encode(e: &OrderEvent) -> String {
    format!(
        "{} {} {} {} {} {}",
        e.order_id,
        e.user_id,
        e.item_id,
        e.quantity.get(),
        e.amount_cents,
        e.created_at_ms
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_the_malformed() {
        let e = OrderEvent {
            order_id: OrderId(382754349494288397),
            user_id: UserId(7),
            item_id: ItemId(81),
            quantity: Quantity::ONE,
            amount_cents: 990,
            created_at_ms: 1_795_000_000_000,
        };
        assert_eq!(decode(&encode(&e)), Ok(e));
        for bad in [
            "",
            "not an order",
            "1 2 3 0 990 5",
            "1 2 3 1 990",
            "1 2 3 1 990 5 6",
            "-1 2 3 1 990 5",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
