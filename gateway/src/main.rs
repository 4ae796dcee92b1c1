//! `seckill-gateway`: the HTTP API. Configured by `SECKILL_*` environment variables.

use clap::Parser;

/// jemalloc, not glibc's malloc: a purchase and a worker batch are many small allocations freed
/// soon after (frames, keys, JSON, SQL values), and glibc's `_int_malloc`/`_int_free` with its
/// consolidation were a fifth of these processes' CPU time.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The seckill gateway: POST /seckill runs one Redis script and answers; an outbox relay carries
/// accepted orders to RabbitMQ. Configuration comes from SECKILL_* environment variables (see the
/// README): SECKILL_HTTP_ADDR, SECKILL_REDIS_URL, SECKILL_AMQP_URL, SECKILL_DATABASE_URL,
/// SECKILL_NAMESPACE, SECKILL_JWT_SECRET, SECKILL_TICKET_SECRET, SECKILL_ADMIN_TOKEN,
/// SECKILL_WEBHOOK_SECRET, SECKILL_PAYMENT_TIMEOUT_SECS, SECKILL_RATE_PER_USER, SECKILL_NODE_ID,
/// SECKILL_MAX_ORDER_STREAMS.
#[derive(Parser)]
#[command(name = "seckill-gateway", version)]
struct Cli {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse();
    seckill_infra::lifecycle::main::<seckill_gateway::Application>().await
}
