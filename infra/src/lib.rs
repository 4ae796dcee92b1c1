//! The infrastructure every seckill process shares: configuration, the Redis, broker and database
//! clients (with the entities and migrations), the Redis durability watch and the rebuild of a
//! Redis that lost its state, operators' stock adjustments, the snowflake node lease, JWT auth and telemetry.
//!
//! What these carry (ids, statuses, messages, records, keys, scripts) is `seckill-domain`.

pub mod auth;
pub mod broker;
pub mod config;
pub mod db;
pub mod durability;
pub mod entity;
pub mod lease;
pub mod migration;
pub mod net;
pub mod recovery;
pub mod redis;
pub mod stock;
pub mod telemetry;

pub use config::Config;
