//! The shapes seckill's data takes outside a process, and no client of its own: ids and their
//! snowflake layout, order and payment statuses, the messages on the broker, the Redis key layout,
//! the order's Redis record and its outbox entry, and the database's sea-orm entities and
//! migrations. Every process reads and writes these through the one codec each has here.
//!
//! The clients that carry them (Redis and its scripts, the broker, the database, auth, telemetry)
//! live in `seckill-infra`.

pub mod entity;
pub mod ids;
pub mod keys;
pub mod messages;
pub mod migration;
pub mod outbox;
pub mod record;
pub mod snowflake;
pub mod status;
pub mod window;

pub use ids::{AdjustmentId, ItemId, OrderId, Quantity, UserId};
pub use keys::Keys;
pub use messages::{Kind, Message, OrderEvent, PaymentEvent, PaymentOutcome};
pub use status::{OrderStatus, PaymentStatus};
pub use window::SaleWindow;
