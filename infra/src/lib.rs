//! The infrastructure every seckill process shares: configuration, the Redis client and its Lua
//! scripts, the broker and database clients, the Redis durability watch and the rebuild of a Redis
//! that lost its state, operators' stock adjustments, the snowflake node lease, JWT auth and
//! telemetry.
//!
//! What these carry (ids, statuses, messages, records, keys, entities, migrations) is
//! `seckill-schema`.

pub mod auth;
pub mod broker;
pub mod config;
pub mod db;
pub mod durability;
pub mod lease;
pub mod lifecycle;
pub mod net;
pub mod recovery;
pub mod redis;
pub mod replication;
pub mod scripts;
pub mod shards;
pub mod stock;
pub mod telemetry;

pub use config::Config;
