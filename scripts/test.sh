#!/usr/bin/env bash
# The whole test suite: unit tests and the integration tests against the real Redis, RabbitMQ,
# PostgreSQL and MariaDB of this machine (each test in its own namespace and database).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo build --workspace --bins --quiet
cargo test --workspace -- "$@"
