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
phase "2/4 release build (once: about 10 minutes on 2 cores; cargo lists each crate)"
cargo build --release --bins

source scripts/lib/demo.sh
export SECKILL_PAYMENT_TIMEOUT_SECS="${SECKILL_PAYMENT_TIMEOUT_SECS:-5}"
# A flash sale of distinct buyers: the per-user rate limit has nothing to do here.
export SECKILL_RATE_PER_USER="${SECKILL_RATE_PER_USER:-0}"

out=out/flash-sale
phase "3/4 starting the workers and the gateway (logs in $out/)"
demo_start "$out"

phase "4/4 the sale: an oha burst, payments, timeouts, the audit and the report in $out/"
target/release/seckill-bench flash-sale \
  --stock 1000 --requests 100000 --connections 256 --pay-ratio 0.5 \
  --baseline --gateway-pid "$gateway_pid" --out "$out" "$@"
phase "done (admin token: $SECKILL_ADMIN_TOKEN)"
