# Sourced by scripts/flash-sale.sh and scripts/serve.sh: the local demo's configuration (each
# value overridable from the environment) and starting its gateway and workers from the release
# build. Needs the services up (scripts/services.sh).

# The project's durable Redis (deploy/redis.conf: AOF, appendfsync always), which services.sh runs,
# not the machine's shared one on 6379.
export SECKILL_REDIS_URL="${SECKILL_REDIS_URL:-redis://127.0.0.1:${SECKILL_LOCAL_REDIS_PORT:-6390}}"
export SECKILL_NAMESPACE="${SECKILL_NAMESPACE:-seckill_demo}"
# The project's PostgreSQL (deploy/postgresql.conf: autovacuum, fsync and synchronous_commit on),
# which services.sh runs, not the machine's shared one on 5432 (autovacuum off, for the tests).
export SECKILL_DATABASE_URL="${SECKILL_DATABASE_URL:-postgres://postgres@127.0.0.1:${SECKILL_LOCAL_PG_PORT:-5433}/seckill_demo}"
export SECKILL_HTTP_ADDR="${SECKILL_HTTP_ADDR:-127.0.0.1:8080}"
export SECKILL_WORKERS_ADDR="${SECKILL_WORKERS_ADDR:-127.0.0.1:9091}"
# Local demo secrets (the processes warn when these are the built-in development values).
export SECKILL_JWT_SECRET="${SECKILL_JWT_SECRET:-demo-jwt-secret}"
export SECKILL_TICKET_SECRET="${SECKILL_TICKET_SECRET:-demo-ticket-secret}"
export SECKILL_ADMIN_TOKEN="${SECKILL_ADMIN_TOKEN:-demo-admin-token}"
export SECKILL_WEBHOOK_SECRET="${SECKILL_WEBHOOK_SECRET:-demo-webhook-secret}"
export RUST_LOG="${RUST_LOG:-warn}"

demo_pids=()
demo_stop() {
  for p in "${demo_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${demo_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}

demo_start() { # log directory; sets $gateway_pid
  local out=$1
  mkdir -p "$out"
  trap demo_stop EXIT
  target/release/seckill-workers >"$out/workers.log" 2>&1 &
  demo_pids+=($!)
  target/release/seckill-gateway >"$out/gateway.log" 2>&1 &
  gateway_pid=$!
  demo_pids+=($gateway_pid)
  for _ in $(seq 120); do
    if curl -sf "http://$SECKILL_HTTP_ADDR/readyz" >/dev/null && curl -sf "http://$SECKILL_WORKERS_ADDR/readyz" >/dev/null; then
      break
    fi
    sleep 0.5
  done
  curl -sf "http://$SECKILL_HTTP_ADDR/readyz" >/dev/null || { echo "the gateway did not become ready; see $out/gateway.log" >&2; return 1; }
  curl -sf "http://$SECKILL_WORKERS_ADDR/readyz" >/dev/null || { echo "the workers did not become ready; see $out/workers.log" >&2; return 1; }
  echo "gateway http://$SECKILL_HTTP_ADDR, workers http://$SECKILL_WORKERS_ADDR; admin token: $SECKILL_ADMIN_TOKEN" >&2
}
