//! Test support for every seckill crate, kept out of the production libraries:
//!
//! - a namespace and a database of a test's own against the real servers, cleaned up when
//!   dropped, and the variables that hand its configuration to a child process;
//! - waiting on a condition with a deadline instead of sleeping;
//! - the gateway and the workers on a task of the test's own ([`ServerTask`]);
//! - RabbitMQ's queues as a test sees them;
//! - Redis, Sentinel and Redis Cluster processes of a test's own, for the tests that kill, pause,
//!   wipe or fail over Redis;
//! - a filesystem that loses what was not fsynced on a simulated power cut ([`LazyFs`]), for the
//!   tests that prove acknowledged data survives losing power, and a PostgreSQL cluster of a
//!   test's own that can live on it ([`LocalPostgres`]: SIGKILLed and started again on the same
//!   port and data directory);
//! - network partitions between processes of a test's own ([`Network`]: namespaces on a private
//!   bridge, cut, healed, isolated), with Redis, Sentinel, PostgreSQL and RabbitMQ inside;
//! - a RabbitMQ cluster of a test's own on loopback ([`RabbitMqCluster`]), whose nodes a test
//!   kills, stops and restarts.
//!
//! Use it as a `[dev-dependencies]` entry only.

mod broker;
mod cluster;
mod env;
mod http;
mod lazyfs;
mod netns;
mod postgres;
mod process;
mod rabbitmq;
mod rabbitmq_cluster;
mod redis;
mod resp;
mod sentinel;
mod server;
mod wait;

pub use broker::{bind_own_queue, queue_depth};
pub use cluster::RedisCluster;
pub use env::{
    Backend, Stores, TEST_MYSQL, TEST_POSTGRES, TestEnv, env_vars, wait_for_redis_state,
};
pub use http::answer;
pub use lazyfs::{LazyFs, LazyFsStats};
pub use netns::{Host, Network, PostgresServer, RabbitMqNode};
pub use postgres::LocalPostgres;
pub use process::{installed, workspace_binary};
pub use rabbitmq_cluster::RabbitMqCluster;
pub use redis::{RedisOptions, RedisServer, config_set, free_port};
pub use sentinel::Sentinel;
pub use server::{ServerTask, Shutdown};
pub use wait::wait_for;
