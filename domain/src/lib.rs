//! The seckill domain every process shares, with no client of its own: ids and their snowflake
//! layout, order and payment statuses, the messages on the broker, the order's Redis record and
//! its outbox entry, the Redis key layout and the Lua scripts with their typed answers.
//!
//! The clients that carry these (Redis, the broker, the database, auth, telemetry) live in
//! `seckill-infra`.

pub mod ids;
pub mod keys;
pub mod messages;
pub mod outbox;
pub mod record;
pub mod scripts;
pub mod snowflake;
pub mod status;

pub use ids::{AdjustmentId, ItemId, OrderId, Quantity, UserId};
pub use keys::Keys;
pub use messages::{Kind, Message, OrderEvent, PaymentEvent, PaymentOutcome};
pub use status::{OrderStatus, PaymentStatus};
