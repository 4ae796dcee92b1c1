//! Test support for every seckill crate, kept out of the production libraries: a namespace and a
//! database of a test's own against the real servers, cleaned up when dropped; waiting on a
//! condition with a deadline instead of sleeping; and Redis, Sentinel and Redis Cluster processes
//! of a test's own, for the tests that kill, pause, wipe or fail over Redis.
//!
//! Use it as a `[dev-dependencies]` entry only.

mod cluster;
mod env;
mod process;
mod redis;
mod resp;
mod sentinel;
mod wait;

pub use cluster::RedisCluster;
pub use env::{Backend, TEST_MYSQL, TEST_POSTGRES, TestEnv, wait_for_redis_state};
pub use redis::{RedisOptions, RedisServer, free_port};
pub use sentinel::Sentinel;
pub use wait::wait_for;
