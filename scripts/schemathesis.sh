#!/usr/bin/env bash
# Fuzzes the gateway's HTTP API with schemathesis (PyPI) from its own OpenAPI document: a gateway
# and workers are started on free ports in a namespace and database of their own, then every check
# runs twice: without credentials and with a user JWT and the admin token. Any failure fails.
# Assumes scripts/services.sh ran and the debug binaries are built (scripts/test.sh does both).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
log() { printf '[schemathesis] %s\n' "$*" >&2; }

venv=${SECKILL_SCHEMATHESIS_VENV:-$repo/target/schemathesis-venv}
if [ ! -x "$venv/bin/schemathesis" ]; then
  log "installing schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'schemathesis>=4.3,<5'
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ns="st_$$_$(date +%s)"
export SECKILL_NAMESPACE=$ns
export SECKILL_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$ns"
export SECKILL_REDIS_URL="${SECKILL_REDIS_URL:-redis://127.0.0.1:${SECKILL_LOCAL_REDIS_PORT:-6390}}"
export SECKILL_HTTP_ADDR="127.0.0.1:$(free_port)"
export SECKILL_WORKERS_ADDR="127.0.0.1:$(free_port)"
export SECKILL_JWT_SECRET=st-jwt-secret SECKILL_TICKET_SECRET=st-ticket-secret
export SECKILL_ADMIN_TOKEN=st-admin-token SECKILL_WEBHOOK_SECRET=st-webhook-secret
export SECKILL_RATE_PER_USER=0 RUST_LOG=${RUST_LOG:-warn}
out=$(mktemp -d)
target/debug/seckill-gateway >"$out/gateway.log" 2>&1 & gateway=$!
target/debug/seckill-workers >"$out/workers.log" 2>&1 & workers=$!
cleanup() {
  kill "$gateway" "$workers" 2>/dev/null || true
  wait "$gateway" "$workers" 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS \"$ns\"" >/dev/null 2>&1 || true
  redis-cli -u "$SECKILL_REDIS_URL" --scan --pattern "$ns*" | xargs -r -n 500 redis-cli -u "$SECKILL_REDIS_URL" del >/dev/null 2>&1 || true
}
trap cleanup EXIT
base="http://$SECKILL_HTTP_ADDR"
for _ in $(seq 240); do
  curl -sf "$base/readyz" >/dev/null && curl -sf "http://$SECKILL_WORKERS_ADDR/readyz" >/dev/null && break
  sleep 0.5
done
curl -sf "$base/readyz" >/dev/null || { log "the gateway did not become ready"; cat "$out/gateway.log" >&2; exit 1; }

# Something real to find: item 1 on sale, stock to spare, and a buyer's token.
curl -sf -X POST "$base/admin/items" -H "authorization: Bearer $SECKILL_ADMIN_TOKEN" \
  -H 'content-type: application/json' \
  -d '{"item_id":1,"name":"fuzzed","price_cents":100,"stock":1000000,"per_user_limit":1000000}' >/dev/null
export SECKILL_ST_USER_JWT=$(python3 - <<'PY'
import base64, hashlib, hmac, json, os, time
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=")
head = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b(json.dumps({"sub": "1", "exp": int(time.time()) + 3600}).encode())
sig = b(hmac.new(os.environ["SECKILL_JWT_SECRET"].encode(), head + b"." + body, hashlib.sha256).digest())
print((head + b"." + body + b"." + sig).decode())
PY
)
export SECKILL_ST_ADMIN_TOKEN=$SECKILL_ADMIN_TOKEN

examples=${SECKILL_SCHEMATHESIS_EXAMPLES:-60}
status=0
for run in anonymous authenticated; do
  config="$out/$run.toml"
  printf 'generation.max-examples = %s\nrequest-timeout = 15.0\n' "$examples" >"$config"
  # One rule JSON Schema cannot state: ends_at after starts_at. A schema-valid item with them the
  # wrong way round is a 400, and rightly so.
  cat >>"$config" <<'TOML'
[[operations]]
include-operation-id = "create_item"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
TOML
  if [ "$run" = authenticated ]; then
    cat >>"$config" <<'TOML'
[auth.openapi.user_jwt]
bearer = "${SECKILL_ST_USER_JWT}"
[auth.openapi.admin_token]
bearer = "${SECKILL_ST_ADMIN_TOKEN}"
TOML
  fi
  log "$run: $examples examples per operation and phase, all checks"
  if ! "$venv/bin/schemathesis" --config-file "$config" run "$base/openapi.json" --checks all \
      --workers 1 --seed "${SECKILL_SCHEMATHESIS_SEED:-20261122}" --no-color >"$out/$run.txt" 2>&1; then
    status=1
  fi
  grep -E 'generated|passed|failed|FAILURES|^[[:space:]]*-|Test cases' "$out/$run.txt" | tail -5 >&2 || true
  [ "$status" = 0 ] || { cat "$out/$run.txt" >&2; break; }
done
if grep -qE 'panicked|internal error' "$out/gateway.log" "$out/workers.log"; then
  log "a process logged a panic or an internal error:"; grep -E 'panicked|internal error' "$out"/*.log >&2; status=1
fi
[ "$status" = 0 ] && log "no failures"
exit "$status"
