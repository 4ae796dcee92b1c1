# Sourced by the scripts that need a throwaway gateway and workers: `stack_start` runs the debug
# binaries on free ports in a namespace and database of their own (Redis, RabbitMQ and PostgreSQL
# must be up: scripts/services.sh), `stack_jwt USER` mints a user token, and the EXIT trap stops
# both processes and drops what they made. Sets $base (the gateway's URL), $workers_url, $out.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

stack_start() { # name
  ns="$1_$$_$(date +%s)"
  export SECKILL_NAMESPACE=$ns
  export SECKILL_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$ns"
  export SECKILL_REDIS_URL="${SECKILL_REDIS_URL:-redis://127.0.0.1:${SECKILL_LOCAL_REDIS_PORT:-6390}}"
  export SECKILL_HTTP_ADDR="127.0.0.1:$(free_port)"
  export SECKILL_WORKERS_ADDR="127.0.0.1:$(free_port)"
  export SECKILL_JWT_SECRET=stack-jwt-secret SECKILL_TICKET_SECRET=stack-ticket-secret
  export SECKILL_ADMIN_TOKEN=stack-admin-token SECKILL_WEBHOOK_SECRET=stack-webhook-secret
  export SECKILL_RATE_PER_USER=0 RUST_LOG=${RUST_LOG:-warn}
  out=$(mktemp -d)
  target/debug/seckill-gateway >"$out/gateway.log" 2>&1 & stack_gateway=$!
  target/debug/seckill-workers >"$out/workers.log" 2>&1 & stack_workers=$!
  trap stack_stop EXIT
  base="http://$SECKILL_HTTP_ADDR"
  workers_url="http://$SECKILL_WORKERS_ADDR"
  for _ in $(seq 240); do
    curl -sf "$base/readyz" >/dev/null && curl -sf "$workers_url/readyz" >/dev/null && return 0
    sleep 0.5
  done
  echo "the gateway and workers did not become ready:" >&2
  cat "$out/gateway.log" "$out/workers.log" >&2
  return 1
}

stack_stop() {
  for cleanup in "${stack_cleanups[@]:-}"; do [ -n "$cleanup" ] && eval "$cleanup"; done
  kill "$stack_gateway" "$stack_workers" 2>/dev/null || true
  wait "$stack_gateway" "$stack_workers" 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS \"$ns\"" >/dev/null 2>&1 || true
  redis-cli -u "$SECKILL_REDIS_URL" --scan --pattern "$ns*" \
    | xargs -r -n 500 redis-cli -u "$SECKILL_REDIS_URL" del >/dev/null 2>&1 || true
  # The namespace's queues (their names start with it; the exchange holds nothing and stays).
  timeout 120 bash -c 'rabbitmqctl -q list_queues name 2>/dev/null | grep "^$0\." |
    while read -r q; do rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1; done' "$ns" || true
}

stack_jwt() { # user id
  STACK_USER=$1 python3 - <<'PY'
import base64, hashlib, hmac, json, os, time
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=")
head = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b(json.dumps({"sub": os.environ["STACK_USER"], "exp": int(time.time()) + 3600}).encode())
sig = b(hmac.new(os.environ["SECKILL_JWT_SECRET"].encode(), head + b"." + body, hashlib.sha256).digest())
print((head + b"." + body + b"." + sig).decode())
PY
}

stack_item() { # item id, stock, per-user limit
  curl -sf -X POST "$base/admin/items" -H "authorization: Bearer $SECKILL_ADMIN_TOKEN" \
    -H 'content-type: application/json' \
    -d "{\"item_id\":$1,\"name\":\"item $1\",\"price_cents\":100,\"stock\":$2,\"per_user_limit\":$3}" >/dev/null
}
