#!/usr/bin/env bash
# One whole local flash sale: services up, release build, gateway and workers started (migrations
# apply themselves), an oha burst through seckill-bench, payments, timeouts, the audit report.
# Stops what it started. Extra arguments go to `seckill-bench flash-sale` and override the defaults.
#
#   scripts/flash-sale.sh                       # defaults below
#   scripts/flash-sale.sh --stock 10000 --requests 1000000
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
phase() { printf '\n[flash-sale +%ss] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }

phase "1/4 services: Redis, RabbitMQ, PostgreSQL, MariaDB and oha (once: apt packages and \
\`cargo install oha\`, about 5 minutes)"
scripts/services.sh
# The project's durable Redis (deploy/redis.conf: AOF, appendfsync always), which services.sh runs,
# not the machine's shared one on 6379.
export SECKILL_REDIS_URL="${SECKILL_REDIS_URL:-redis://127.0.0.1:${SECKILL_LOCAL_REDIS_PORT:-6390}}"
phase "2/4 release build (once: about 10 minutes on 2 cores; cargo lists each crate)"
cargo build --release --bins

export SECKILL_NAMESPACE="${SECKILL_NAMESPACE:-seckill_demo}"
export SECKILL_DATABASE_URL="${SECKILL_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/seckill_demo}"
export SECKILL_HTTP_ADDR="${SECKILL_HTTP_ADDR:-127.0.0.1:8080}"
export SECKILL_WORKERS_ADDR="${SECKILL_WORKERS_ADDR:-127.0.0.1:9091}"
export SECKILL_PAYMENT_TIMEOUT_SECS="${SECKILL_PAYMENT_TIMEOUT_SECS:-5}"
# A flash sale of distinct buyers: the per-user rate limit has nothing to do here.
export SECKILL_RATE_PER_USER="${SECKILL_RATE_PER_USER:-0}"
# Local demo secrets (the processes warn when these are the built-in development values).
export SECKILL_JWT_SECRET="${SECKILL_JWT_SECRET:-demo-jwt-secret}"
export SECKILL_TICKET_SECRET="${SECKILL_TICKET_SECRET:-demo-ticket-secret}"
export SECKILL_ADMIN_TOKEN="${SECKILL_ADMIN_TOKEN:-demo-admin-token}"
export SECKILL_WEBHOOK_SECRET="${SECKILL_WEBHOOK_SECRET:-demo-webhook-secret}"
export RUST_LOG="${RUST_LOG:-warn}"

out=out/flash-sale
mkdir -p "$out"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

phase "3/4 starting the workers and the gateway (logs in $out/)"
target/release/seckill-workers >"$out/workers.log" 2>&1 &
pids+=($!)
target/release/seckill-gateway >"$out/gateway.log" 2>&1 &
gateway_pid=$!
pids+=($gateway_pid)

for _ in $(seq 120); do
  if curl -sf "http://$SECKILL_HTTP_ADDR/readyz" >/dev/null && curl -sf "http://$SECKILL_WORKERS_ADDR/readyz" >/dev/null; then
    break
  fi
  sleep 0.5
done
curl -sf "http://$SECKILL_HTTP_ADDR/readyz" >/dev/null || { echo "the gateway did not become ready; see $out/gateway.log" >&2; exit 1; }
curl -sf "http://$SECKILL_WORKERS_ADDR/readyz" >/dev/null || { echo "the workers did not become ready; see $out/workers.log" >&2; exit 1; }

phase "4/4 the sale: an oha burst, payments, timeouts, the audit and the report in $out/"
target/release/seckill-bench flash-sale \
  --stock 1000 --requests 100000 --connections 256 --pay-ratio 0.5 \
  --baseline --gateway-pid "$gateway_pid" --out "$out" "$@"
phase "done"
