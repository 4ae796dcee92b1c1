#!/usr/bin/env bash
# One hot item over K shards against K = 1, in one sitting: a local 3-master Redis Cluster
# (scripts/redis-cluster.sh), the release gateway and workers on it, and `seckill-bench flash-sale
# --profile in-stock` run at K = 1 and K = 3 in turn, $ROUNDS times (A/B, interleaved, so that
# both see the same machine). Each run's report goes to out/shards/k<K>-<round>/; the last round's
# to bench/results/shards-k1/ and shards-k3/. Stops what it started (the cluster too, unless
# KEEP_CLUSTER=1). Extra arguments go to every `seckill-bench flash-sale`.
#
#   scripts/shards-bench.sh                 # 3 rounds of 20,000 requests over 512 connections
#   CONNECTIONS=128 scripts/shards-bench.sh # fewer in flight: smaller batches per master
#   ROUNDS=1 scripts/shards-bench.sh -n 5000
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
# 512 in flight: enough that each master's calls carry batches as a hot item's would. At 128, K = 3
# splits the same few purchases in flight over three masters, each paying its own call and fsync.
connections=${CONNECTIONS:-512}
cargo build --release --bins
SECKILL_REDIS_URL=$(scripts/redis-cluster.sh start)
export SECKILL_REDIS_URL
export SECKILL_NAMESPACE="${SECKILL_NAMESPACE:-shards_$(date +%s)}"
export SECKILL_PAYMENT_TIMEOUT_SECS=600 SECKILL_RATE_PER_USER=0
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export SECKILL_HTTP_ADDR="${SECKILL_HTTP_ADDR:-127.0.0.1:$(free_port)}"
export SECKILL_WORKERS_ADDR="${SECKILL_WORKERS_ADDR:-127.0.0.1:$(free_port)}"
source scripts/lib/demo.sh
demo_start out/shards
# demo_start's trap stops the gateway and workers; the cluster goes after them.
trap 'demo_stop; [ "${KEEP_CLUSTER:-0}" = 1 ] || scripts/redis-cluster.sh stop' EXIT
for round in $(seq "$rounds"); do
  for k in 1 3; do
    out=out/shards/k$k-$round
    echo "[shards-bench] round $round, K = $k -> $out" >&2
    target/release/seckill-bench flash-sale --profile in-stock --shards "$k" \
      --requests 20000 --connections "$connections" --pay-ratio 0 --skip-timeouts \
      --gateway-pid "$gateway_pid" --out "$out" "$@"
  done
done
for k in 1 3; do
  rm -rf "bench/results/shards-k$k"
  mkdir -p "bench/results/shards-k$k"
  cp "out/shards/k$k-$rounds"/{report.json,report.txt,report.svg,oha.json} "bench/results/shards-k$k/"
done
# Each round's figures, side by side.
for f in out/shards/k*-*/report.json; do
  python3 - "$f" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r.get("shards") or {}
redis = r["cpu"]["parts"].get("redis", {})
print(f'{sys.argv[1]}: {r["load"]["status_codes"].get("202", 0)} accepted, '
      f'{r["load"]["requests_per_sec"]:.0f} requests/s; redis {redis.get("us_per_order", 0):.1f} µs/order '
      f'(every redis-server here); masters {[round(m["share"], 3) for m in s.get("masters", [])]} '
      f'{s.get("redis_us_per_purchase") or "-"} µs/purchase')
PY
done
