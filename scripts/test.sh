#!/usr/bin/env bash
# The whole test suite: unit tests and the integration tests against the real Redis, RabbitMQ,
# PostgreSQL and MariaDB of this machine (each test in its own namespace and database).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
# The project's durable Redis (deploy/redis.conf: AOF, appendfsync always), which services.sh runs,
# not the machine's shared one on 6379.
export SECKILL_REDIS_URL="${SECKILL_REDIS_URL:-redis://127.0.0.1:${SECKILL_LOCAL_REDIS_PORT:-6390}}"
cargo build --workspace --bins --quiet
# The HTTP surface fuzzed from its own OpenAPI document, and the Prometheus and Grafana files checked
# with the real tools (both install what they need).
scripts/schemathesis.sh
scripts/check-deploy.sh
scripts/prometheus-scrape.sh
# Every test binary runs even when one fails, so one run shows every failure.
cargo test --workspace --no-fail-fast -- "$@"
