//! The seckill operator's tool, as a library: the binary is a thin command line over it, and the
//! tests use its parts alone.
//!
//! - [`baseline`]: the ceilings the gateway is measured against (a bare hyper server, the purchase
//!   script under redis-benchmark);
//! - [`provider`]: a stand-in payment provider calling the real webhook;
//! - [`sale`]: one whole flash sale, from item creation to the audit;
//! - [`page`]: the public product page (`GET /items/{item_id}`) under a crowd, against the bare
//!   hyper server;
//! - [`audit`]: the contract's invariants, checked from Redis, the database and the broker;
//! - [`cpu`]: what an order costs in CPU, summed over every process of the pipeline;
//! - [`shards`]: a sale of one item over K shards: each shard's sales and transfers, each Redis
//!   master's CPU;
//! - [`fleet`]: several gateways and workers behind an HAProxy, started and stopped by the bench;
//! - [`report`] and [`svg`]: the results, for people and for the record.

pub mod audit;
pub mod baseline;
pub mod cli;
pub mod cpu;
pub mod db;
pub mod fleet;
pub mod history;
pub mod http;
pub mod oha;
pub mod page;
pub mod provider;
pub mod report;
pub mod rss;
pub mod sale;
pub mod shards;
pub mod svg;
