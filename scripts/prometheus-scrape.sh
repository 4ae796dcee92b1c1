#!/usr/bin/env bash
# A real Prometheus (Debian's package) scrapes a running gateway and workers: a burst of purchases
# goes in, and a PromQL query for the purchase counter must return the burst's count, as must the
# workers' orders awaiting payment; both processes are ready and no alert fires. Assumes
# scripts/services.sh ran, the debug binaries are built and prometheus is installed
# (scripts/check-deploy.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[prometheus-scrape] %s\n' "$*" >&2; }
source scripts/lib/stack.sh
# JSON logs, checked at the end: one object per line, and the spans of requests and batches.
export SECKILL_LOG_FORMAT=json RUST_LOG=info
stack_start prom

prom_port=$(free_port)
mkdir -p "$out/tsdb"
# deploy/prometheus.yml's jobs, pointed at this run's processes, scraped every second.
cat >"$out/prometheus.yml" <<YAML
global: { scrape_interval: 1s, evaluation_interval: 1s }
rule_files: [$(pwd)/deploy/alerts.yml]
scrape_configs:
  - job_name: seckill-gateway
    static_configs: [{ targets: ["$SECKILL_HTTP_ADDR"] }]
  - job_name: seckill-workers
    static_configs: [{ targets: ["$SECKILL_WORKERS_ADDR"] }]
YAML
prometheus --config.file="$out/prometheus.yml" --storage.tsdb.path="$out/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" >"$out/prometheus.log" 2>&1 &
prom=$!
stack_cleanups=("kill $prom 2>/dev/null; wait $prom 2>/dev/null")

burst=${SECKILL_SCRAPE_BURST:-200}
stack_item 1 "$burst" "$burst"
jwt=$(stack_jwt 1)
log "a burst of $burst purchases"
seq "$burst" | xargs -P 16 -I{} curl -s -o /dev/null -w '%{http_code}\n' -X POST "$base/seckill" \
  -H "authorization: Bearer $jwt" -H 'content-type: application/json' -d '{"item_id":1}' \
  | sort | uniq -c >&2

query() { # PromQL → the first sample's value, or nothing
  curl -sf "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$1" \
    | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")'
}
wait_value() { # what, PromQL, expected
  local got=""
  for _ in $(seq 120); do
    got=$(query "$2" || true)
    [ "$got" = "$3" ] && { log "$1: $got"; return 0; }
    sleep 0.5
  done
  log "$1: expected $3, Prometheus says '${got}'"; cat "$out/prometheus.log" >&2; return 1
}
wait_value "accepted purchases" 'sum(seckill_purchases_total{job="seckill-gateway",outcome="accepted"})' "$burst"
wait_value "workers ready" 'min(seckill_ready{job="seckill-workers"})' 1
wait_value "gateway ready" 'min(seckill_ready{job="seckill-gateway"})' 1
# The reconciler's pass (every 10 s) exports these.
wait_value "orders awaiting payment" 'sum(seckill_orders{job="seckill-workers",status="AWAITING_PAYMENT"})' "$burst"
wait_value "stock left" 'sum(seckill_item_remaining{job="seckill-workers",item="1"})' 0
wait_value "no alert firing" 'count(ALERTS{alertstate="firing"}) or vector(0)' 0
python3 - "$out/gateway.log" "$out/workers.log" <<'PY'
import json, sys
spans = set()
for path in sys.argv[1:]:
    for line in open(path):
        entry = json.loads(line)  # every line is one JSON object
        if entry.get("fields", {}).get("message") == "close":
            spans.add(entry["span"]["name"])
            assert "outcome" in entry["span"], entry
missing = {"request", "batch"} - spans
assert not missing, f"no closed {missing} span in the JSON logs"
PY
log "JSON logs: every line an object, request and batch spans with their outcome"
log "ok"
