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

source scripts/lib/stack.sh
stack_start st

# Something real to find: item 1 on sale, stock to spare, and a buyer's token.
stack_item 1 1000000 1000000
export SECKILL_ST_USER_JWT=$(stack_jwt 1)
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
# Nor these of a PATCH: at least one change besides the reason, and the window the right way round
# given the item's own start or end (400); a shrink below the units live orders hold (409).
[[operations]]
include-operation-id = "patch_item"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]
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
