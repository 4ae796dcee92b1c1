//! The events on the broker. One AMQP message carries a batch of events of one type (the
//! `"type"` field); each event keeps its own identity (its order id, or a payment's id), and that
//! identity is what the workers deduplicate by.

use crate::ids::{ItemId, OrderId, Quantity, UserId};
use serde::{Deserialize, Serialize};

/// An event about one order. It carries the whole order, so any handler can act on it even when
/// it arrives before the order's `ORDER_CREATED` was stored (a cancel racing the pipeline).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OrderEvent {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub item_id: ItemId,
    pub quantity: Quantity,
    pub amount_cents: i64,
    /// Milliseconds since the Unix epoch at which the gateway accepted the order.
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentOutcome {
    Succeeded,
    Failed,
    /// The provider gave back the money of this payment (same `payment_id` as its success).
    Refunded,
}

impl PaymentOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentOutcome::Succeeded => "SUCCEEDED",
            PaymentOutcome::Failed => "FAILED",
            PaymentOutcome::Refunded => "REFUNDED",
        }
    }
}

/// A payment provider's verdict, as the webhook received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentEvent {
    pub payment_id: String,
    pub order_id: OrderId,
    pub status: PaymentOutcome,
    pub amount_cents: i64,
    pub received_at_ms: i64,
}

/// The envelope: one enum, whose variant is the wire's `"type"`. [`Kind`], the variant without its
/// events (routing keys, queues, metric labels), is derived from it, so the two cannot drift.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, strum::EnumDiscriminants)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
#[strum_discriminants(
    name(Kind),
    derive(Hash, strum::VariantArray, strum::IntoStaticStr),
    strum(serialize_all = "SCREAMING_SNAKE_CASE")
)]
pub enum Message {
    OrderCreated {
        events: Vec<OrderEvent>,
    },
    LockInventory {
        events: Vec<OrderEvent>,
    },
    PreparePayment {
        events: Vec<OrderEvent>,
    },
    PaymentResult {
        events: Vec<PaymentEvent>,
    },
    OrderCancel {
        events: Vec<OrderEvent>,
    },
    OrderTimeout {
        events: Vec<OrderEvent>,
    },
    InventoryCompensate {
        events: Vec<OrderEvent>,
    },
    /// The operator shipped a paid order.
    OrderShip {
        events: Vec<OrderEvent>,
    },
    /// The buyer confirmed receipt of a shipped order.
    OrderComplete {
        events: Vec<OrderEvent>,
    },
    /// The same, on its own, `SECKILL_AUTO_COMPLETE_SECS` after shipping (a delayed message).
    OrderAutoComplete {
        events: Vec<OrderEvent>,
    },
    /// The buyer asked for a paid, unshipped order's money back.
    RefundRequest {
        events: Vec<OrderEvent>,
    },
}

impl Kind {
    pub const ALL: &'static [Kind] = <Kind as strum::VariantArray>::VARIANTS;

    pub fn routing_key(self) -> &'static str {
        match self {
            Kind::OrderCreated => "order.created",
            Kind::LockInventory => "inventory.lock",
            Kind::PreparePayment => "payment.prepare",
            Kind::PaymentResult => "payment.result",
            Kind::OrderCancel => "order.cancel",
            Kind::OrderTimeout => "order.timeout",
            Kind::InventoryCompensate => "inventory.compensate",
            Kind::OrderShip => "order.ship",
            Kind::OrderComplete => "order.complete",
            Kind::OrderAutoComplete => "order.auto_complete",
            Kind::RefundRequest => "refund.request",
        }
    }

    /// The wire's `"type"` of this kind's messages.
    pub fn type_name(self) -> &'static str {
        self.into()
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .iter()
            .copied()
            .find(|k| k.type_name() == s)
            .ok_or_else(|| format!("unknown message type {s:?}"))
    }
}

impl Message {
    /// The message of `kind` carrying `events`, or `None` when they are not of its kind's shape.
    fn of(kind: Kind, events: Events) -> Option<Message> {
        Some(match (kind, events) {
            (Kind::PaymentResult, Events::Payments(events)) => Message::PaymentResult { events },
            (Kind::PaymentResult, Events::Orders(_)) | (_, Events::Payments(_)) => return None,
            (kind, Events::Orders(events)) => match kind {
                Kind::OrderCreated => Message::OrderCreated { events },
                Kind::LockInventory => Message::LockInventory { events },
                Kind::PreparePayment => Message::PreparePayment { events },
                Kind::OrderCancel => Message::OrderCancel { events },
                Kind::OrderTimeout => Message::OrderTimeout { events },
                Kind::InventoryCompensate => Message::InventoryCompensate { events },
                Kind::OrderShip => Message::OrderShip { events },
                Kind::OrderComplete => Message::OrderComplete { events },
                Kind::OrderAutoComplete => Message::OrderAutoComplete { events },
                Kind::RefundRequest => Message::RefundRequest { events },
                Kind::PaymentResult => return None,
            },
        })
    }

    pub fn kind(&self) -> Kind {
        self.into()
    }

    pub fn len(&self) -> usize {
        match self {
            Message::PaymentResult { events } => events.len(),
            other => other.order_events().map_or(0, <[OrderEvent]>::len),
        }
    }

    /// The events of a message about orders (every kind but `PAYMENT_RESULT`).
    pub fn order_events(&self) -> Option<&[OrderEvent]> {
        match self {
            Message::PaymentResult { .. } => None,
            Message::OrderCreated { events }
            | Message::LockInventory { events }
            | Message::PreparePayment { events }
            | Message::OrderCancel { events }
            | Message::OrderTimeout { events }
            | Message::InventoryCompensate { events }
            | Message::OrderShip { events }
            | Message::OrderComplete { events }
            | Message::OrderAutoComplete { events }
            | Message::RefundRequest { events } => Some(events),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("messages always serialize")
    }
}

enum Events {
    Orders(Vec<OrderEvent>),
    Payments(Vec<PaymentEvent>),
}

/// Read by hand rather than derived: serde's internally tagged enums buffer the whole message
/// into an intermediate tree before they look at `"type"`, which was a tenth of the workers'
/// decoding work. Every message this project writes has `"type"` first, so its events are read
/// straight into their own type; a message with `"events"` first is still read, through a
/// buffered value.
impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MessageVisitor)
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    Type,
    Events,
    #[serde(other)]
    Other,
}

struct MessageVisitor;

impl<'de> serde::de::Visitor<'de> for MessageVisitor {
    type Value = Message;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a message: an object with \"type\" and \"events\"")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
        use serde::de::Error;
        let mut kind: Option<Kind> = None;
        let mut events: Option<Events> = None;
        let mut early: Option<serde_json::Value> = None;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Type if kind.is_some() => return Err(A::Error::duplicate_field("type")),
                Field::Type => {
                    let name: std::borrow::Cow<'de, str> = map.next_value()?;
                    kind = Some(name.parse().map_err(A::Error::custom)?);
                }
                Field::Events if events.is_some() || early.is_some() => {
                    return Err(A::Error::duplicate_field("events"));
                }
                Field::Events => match kind {
                    Some(Kind::PaymentResult) => events = Some(Events::Payments(map.next_value()?)),
                    Some(_) => events = Some(Events::Orders(map.next_value()?)),
                    None => early = Some(map.next_value()?),
                },
                Field::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let kind = kind.ok_or_else(|| A::Error::missing_field("type"))?;
        let events = match (events, early) {
            (Some(events), _) => events,
            (None, Some(value)) if kind == Kind::PaymentResult => {
                Events::Payments(serde_json::from_value(value).map_err(A::Error::custom)?)
            }
            (None, Some(value)) => {
                Events::Orders(serde_json::from_value(value).map_err(A::Error::custom)?)
            }
            (None, None) => return Err(A::Error::missing_field("events")),
        };
        Message::of(kind, events).ok_or_else(|| A::Error::custom("events of another kind"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_has_the_contract_type_field() {
        let m = Message::OrderCreated {
            events: vec![OrderEvent {
                order_id: OrderId(7),
                user_id: UserId(3),
                item_id: ItemId(1),
                quantity: Quantity::ONE,
                amount_cents: 990,
                created_at_ms: 1,
            }],
        };
        let v: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        assert_eq!(v["type"], "ORDER_CREATED");
        assert_eq!(v["events"][0]["order_id"], "7");
        assert_eq!(serde_json::from_value::<Message>(v).unwrap(), m);
        for &k in Kind::ALL {
            let json = format!("{{\"type\":\"{}\",\"events\":[]}}", k.type_name());
            assert_eq!(serde_json::from_str::<Message>(&json).unwrap().kind(), k);
        }
        assert!(serde_json::from_str::<Message>(r#"{"type":"NOPE","events":[]}"#).is_err());
        // `"events"` first, and a field no one knows, read all the same.
        let late = r#"{"events":[{"order_id":"7","user_id":3,"item_id":1,"quantity":1,"amount_cents":990,"created_at_ms":1}],"v":2,"type":"ORDER_CREATED"}"#;
        assert_eq!(serde_json::from_str::<Message>(late).unwrap(), m);
        let pay = r#"{"type":"PAYMENT_RESULT","events":[{"payment_id":"p","order_id":"7","status":"SUCCEEDED","amount_cents":990,"received_at_ms":1}]}"#;
        assert_eq!(
            serde_json::from_str::<Message>(pay).unwrap().kind(),
            Kind::PaymentResult
        );
        for bad in [
            r#"{"events":[]}"#,
            r#"{"type":"ORDER_CREATED"}"#,
            r#"{"type":"ORDER_CREATED","type":"ORDER_CREATED","events":[]}"#,
            r#"{"type":"PAYMENT_RESULT","events":[{"order_id":"7"}]}"#,
            r#"[]"#,
        ] {
            assert!(serde_json::from_str::<Message>(bad).is_err(), "{bad}");
        }
    }
}
