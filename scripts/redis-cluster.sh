#!/usr/bin/env bash
# A local Redis Cluster of three masters (no replicas) for running the gateway, the workers and
# seckill-bench against a cluster on one machine: each master on its own port from
# $SECKILL_CLUSTER_PORT (default 7301, 7302, 7303), with its own data directory under
# $SECKILL_CLUSTER_DIR (default /tmp/seckill-redis-cluster), run from deploy/redis.conf (append-only
# file, `appendfsync always`, `noeviction`), the 16384 slots split evenly. Prints the
# SECKILL_REDIS_URL that names it.
#
#   scripts/redis-cluster.sh start     # start (or find running) and print the URL
#   scripts/redis-cluster.sh stop      # shut every master down (SHUTDOWN NOSAVE) and remove its data
#   eval "$(scripts/redis-cluster.sh env)"   # export SECKILL_REDIS_URL for this shell
set -euo pipefail
cd "$(dirname "$0")/.."
base=${SECKILL_CLUSTER_PORT:-7301}
dir=${SECKILL_CLUSTER_DIR:-/tmp/seckill-redis-cluster}
ports=("$base" "$((base + 1))" "$((base + 2))")

url() {
  local first=${ports[0]} rest=()
  for p in "${ports[@]:1}"; do rest+=("node=127.0.0.1:$p"); done
  (IFS='&'; echo "redis-cluster://127.0.0.1:$first?${rest[*]}")
}

up() { redis-cli -p "$1" ping 2>/dev/null | grep -q PONG; }

start() {
  for p in "${ports[@]}"; do
    up "$p" && continue
    mkdir -p "$dir/$p"
    # The cluster bus on port + 10000, the node's table (nodes.conf) in its own directory.
    redis-server "$PWD/deploy/redis.conf" --port "$p" --bind 127.0.0.1 --dir "$dir/$p" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
      --daemonize yes --logfile "$dir/$p/redis.log" --pidfile "$dir/$p/redis.pid"
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 100); do up "$p" && break; sleep 0.1; done
    up "$p" || { echo "redis on port $p did not start: see $dir/$p/redis.log" >&2; exit 1; }
  done
  if ! redis-cli -p "${ports[0]}" cluster info | grep -q cluster_state:ok; then
    local nodes=()
    for p in "${ports[@]}"; do nodes+=("127.0.0.1:$p"); done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log"
    for _ in $(seq 100); do
      ok=1
      for p in "${ports[@]}"; do redis-cli -p "$p" cluster info | grep -q cluster_state:ok || ok=0; done
      [ "$ok" = 1 ] && break
      sleep 0.1
    done
    [ "$ok" = 1 ] || { echo "the cluster did not reach cluster_state:ok" >&2; exit 1; }
  fi
  url
}

stop() {
  for p in "${ports[@]}"; do
    up "$p" && redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "${dir:?}/$p"
  done
  rm -f "$dir/create.log"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  env) echo "export SECKILL_REDIS_URL='$(start)'" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
