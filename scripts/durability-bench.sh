#!/usr/bin/env bash
# The quick start's sale (sold-out path) and an in-stock sale (every buyer gets a unit, the drain
# measured) under each SECKILL_REDIS_DURABILITY mode, one after the other on this machine:
#   fsync   - the project Redis on 6390 (deploy/redis.conf: appendfsync always)
#   replica - the same Redis with a replica of its own on 6392 that WAIT must hear from
#   none    - a Redis without persistence on 6391
# Results go to bench/results/durability-<mode>-<sale>/ (report.json, report.svg, logs).
#
#   scripts/durability-bench.sh              # every mode
#   scripts/durability-bench.sh fsync none   # some
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo build --release --bins --quiet

modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(fsync replica none)
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  redis-cli -p 6390 replicaof no one >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

start_redis() { # port, extra args...
  local port=$1; shift
  mkdir -p "$work/$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --dir "$work/$port" \
    --logfile "$work/$port/redis.log" "$@" &
  pids+=($!)
  for _ in $(seq 100); do
    [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.1
  done
  echo "redis on $port did not start" >&2; return 1
}

for mode in "${modes[@]}"; do
  case $mode in
    fsync) url=redis://127.0.0.1:6390 ;;
    replica)
      url=redis://127.0.0.1:6390
      start_redis 6392 --appendonly no --replicaof 127.0.0.1 6390
      for _ in $(seq 100); do
        redis-cli -p 6390 info replication | grep -q 'state=online' && break
        sleep 0.1
      done ;;
    none)
      url=redis://127.0.0.1:6391
      start_redis 6391 --appendonly no ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
  for sale in quickstart in-stock; do
    args=()
    [ "$sale" = in-stock ] && args=(--stock 50000 --requests 100000)
    echo "== $mode / $sale" >&2
    SECKILL_REDIS_URL=$url SECKILL_REDIS_DURABILITY=$mode \
      SECKILL_NAMESPACE="seckill_bench_$mode" \
      SECKILL_DATABASE_URL="postgres://postgres@127.0.0.1:5432/seckill_bench_$mode" \
      SECKILL_PAYMENT_TIMEOUT_SECS=600 \
      scripts/flash-sale.sh --out "bench/results/durability-$mode-$sale" "${args[@]}"
  done
  if [ "$mode" = replica ]; then
    kill "${pids[-1]}"; unset 'pids[-1]'
    redis-cli -p 6390 replicaof no one >/dev/null 2>&1 || true
  fi
done
