//! `seckill-workers`: the order saga. Configured by `SECKILL_*` environment variables.

use clap::Parser;

/// jemalloc, not glibc's malloc: a purchase and a worker batch are many small allocations freed
/// soon after (frames, keys, JSON, SQL values), and glibc's `_int_malloc`/`_int_free` with its
/// consolidation were a fifth of these processes' CPU time.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The seckill workers: consume ORDER_CREATED, LOCK_INVENTORY, PREPARE_PAYMENT, PAYMENT_RESULT,
/// ORDER_CANCEL, ORDER_TIMEOUT and INVENTORY_COMPENSATE from RabbitMQ and drive every order to an
/// end state in the database, keeping Redis in step. Configuration comes from SECKILL_* environment
/// variables (see the README): SECKILL_WORKERS_ADDR, SECKILL_REDIS_URL, SECKILL_AMQP_URL,
/// SECKILL_DATABASE_URL, SECKILL_NAMESPACE, SECKILL_PAYMENT_TIMEOUT_SECS.
#[derive(Parser)]
#[command(name = "seckill-workers", version)]
struct Cli {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse();
    seckill_infra::lifecycle::main::<seckill_workers::Workers>().await
}
