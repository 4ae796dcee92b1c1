//! `seckill-gateway`: the HTTP API. Configured by `SECKILL_*` environment variables.

/// jemalloc, not glibc's malloc: a purchase and a worker batch are many small allocations freed
/// soon after (frames, keys, JSON, SQL values), and glibc's `_int_malloc`/`_int_free` with its
/// consolidation were a fifth of these processes' CPU time.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    seckill_infra::lifecycle::main::<seckill_gateway::Application>().await
}
