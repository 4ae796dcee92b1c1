//! What every seckill process shares: ids and their snowflake generator, configuration, the
//! messages on the broker and its topology, Redis keys and scripts, and the database's entities
//! and migrations.

pub mod auth;
pub mod broker;
pub mod config;
pub mod db;
pub mod durability;
pub mod entity;
pub mod ids;
pub mod keys;
pub mod lease;
pub mod messages;
pub mod migration;
pub mod outbox;
pub mod record;
pub mod recovery;
pub mod redis;
pub mod scripts;
pub mod snowflake;
pub mod status;
pub mod telemetry;

pub use config::Config;
pub use ids::{ItemId, OrderId, Quantity, UserId};
pub use keys::Keys;
pub use messages::{Kind, Message, OrderEvent, PaymentEvent, PaymentOutcome};
pub use status::OrderStatus;
