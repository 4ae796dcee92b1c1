#!/usr/bin/env bash
# Checks what deploy/ holds for operating seckill: the Prometheus configuration, the alert rules
# and their unit tests, the Grafana provisioning and dashboard, docker-compose.yml, and that every
# seckill_* metric the alerts and the dashboard use is exported by the code.
#
#   scripts/check-deploy.sh
#
# Installs Debian's `prometheus` package when `promtool` is missing (as root), without leaving
# the packaged Prometheus server running. Runs every check, then exits non-zero if any failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

failed=()
step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; failed+=("$1"); }

# ------------------------------------------------------------------ tools
sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_promtool() {
  step "promtool is missing: installing Debian's prometheus package"
  # Debian starts a packaged service at install unless policy-rc.d says no. Say no for the length
  # of the install when nothing says it already (Docker images usually ship one that does).
  local policy=/usr/sbin/policy-rc.d ours=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | sudo_ tee "$policy" >/dev/null
    sudo_ chmod 755 "$policy"
    ours=1
  fi
  local t0=$SECONDS rc=0
  sudo_ apt-get update -qq || rc=$?
  if [ "$rc" -eq 0 ]; then
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus || rc=$?
  fi
  if [ "$ours" -eq 1 ]; then sudo_ rm -f "$policy"; fi
  echo "apt-get update + install took $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || { echo "installing prometheus failed (exit $rc)"; exit "$rc"; }

  # Only promtool is wanted: stop and disable the packaged server if it started anyway.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    if systemctl is-active --quiet prometheus; then
      echo "stopping the prometheus service the package started"
      sudo_ systemctl stop prometheus
    fi
    sudo_ systemctl disable --quiet prometheus 2>/dev/null || true
  elif [ -x /etc/init.d/prometheus ]; then
    if sudo_ /etc/init.d/prometheus status >/dev/null 2>&1; then
      echo "stopping the prometheus service the package started"
      sudo_ /etc/init.d/prometheus stop || true
    fi
    sudo_ update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
  local pid
  for pid in $(pgrep -x prometheus || true); do
    if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/bin/prometheus ]; then
      echo "the packaged prometheus still runs (pid $pid): stopping it"
      sudo_ kill "$pid" || true
    fi
  done
  if command -v ss >/dev/null 2>&1 && ss -ltnH 'sport = :9090' 2>/dev/null | grep -q .; then
    echo "note: something listens on port 9090:"; ss -ltnp 'sport = :9090' || true
  else
    echo "no packaged Prometheus server left running (port 9090 is free)"
  fi
}

command -v promtool >/dev/null 2>&1 || install_promtool
promtool --version 2>&1 | head -n 1

# python3 with PyYAML, for the YAML files.
PY=python3
if ! "$PY" -c 'import yaml' 2>/dev/null; then
  if /usr/bin/python3 -c 'import yaml' 2>/dev/null; then
    PY=/usr/bin/python3
  else
    step "PyYAML is missing: installing Debian's python3-yaml"
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-yaml
    PY=/usr/bin/python3
  fi
fi

# What the Python checks below share: `from deploycheck import bad, panels, verdict`.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/deploycheck.py" <<'EOF'
import sys

bad = []  # what is wrong, a line each


def panels(ps):
    """A dashboard's panels, those nested in rows included."""
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))


def verdict(summary):
    """Prints what is wrong and the summary; exits 1 when anything is wrong."""
    for b in bad:
        print("  " + b)
    print(summary)
    sys.exit(1 if bad else 0)
EOF
export PYTHONPATH="$tmp${PYTHONPATH:+:$PYTHONPATH}"

# ------------------------------------------------------------------ Prometheus
step "promtool check config deploy/prometheus.yml"
promtool check config deploy/prometheus.yml || fail "promtool check config"

step "promtool check rules deploy/alerts.yml"
promtool check rules deploy/alerts.yml || fail "promtool check rules"

step "promtool test rules deploy/alerts.test.yml"
promtool test rules deploy/alerts.test.yml || fail "promtool test rules"

step "every alert: for, severity, summary, description; a firing and a quiet test case"
"$PY" - <<'EOF' || fail "alert rules and their test cases"
import yaml
from deploycheck import bad, verdict
rules = [r for g in yaml.safe_load(open("deploy/alerts.yml"))["groups"] for r in g["rules"] if "alert" in r]
tests = yaml.safe_load(open("deploy/alerts.test.yml"))["tests"]
firing, quiet = set(), set()
for t in tests:
    for c in t.get("alert_rule_test", []):
        (firing if c.get("exp_alerts") else quiet).add(c["alertname"])
for r in rules:
    name = r["alert"]
    if not r.get("for"):
        bad.append(f"{name}: no `for:`")
    if r.get("labels", {}).get("severity") not in ("critical", "warning"):
        bad.append(f"{name}: severity label is not critical or warning")
    for a in ("summary", "description"):
        if not r.get("annotations", {}).get(a):
            bad.append(f"{name}: no {a} annotation")
    if name not in firing:
        bad.append(f"{name}: no test case where it fires")
    if name not in quiet:
        bad.append(f"{name}: no test case where it stays quiet")
known = {r["alert"] for r in rules}
for n in sorted((firing | quiet) - known):
    bad.append(f"{n}: tested but not defined")
verdict(f"{len(rules)} alerts, {len(firing & known)} with a firing case, {len(quiet & known)} with a quiet case")
EOF

# ------------------------------------------------------------------ Grafana
step "Grafana provisioning and dashboard"
"$PY" - <<'EOF' || fail "Grafana provisioning or dashboard"
import json, sys, yaml
from deploycheck import bad, panels, verdict
ds = yaml.safe_load(open("deploy/grafana/provisioning/datasources/prometheus.yml"))
uids = {d.get("uid") for d in ds.get("datasources", [])}
prov = yaml.safe_load(open("deploy/grafana/provisioning/dashboards/seckill.yml"))
if not prov.get("providers"):
    bad.append("dashboards provisioning: no provider")
try:
    dash = json.load(open("deploy/grafana/dashboards/seckill.json"))
except ValueError as e:
    print(f"  seckill.json is not JSON: {e}")
    sys.exit(1)

all_panels = list(panels(dash.get("panels", [])))
if not all_panels:
    bad.append("the dashboard has no panels")
ids = [p.get("id") for p in all_panels]
if len(ids) != len(set(ids)):
    bad.append("panel ids are not unique")
for p in all_panels:
    title = p.get("title") or f"panel {p.get('id')}"
    src = p.get("datasource")
    uid = src.get("uid") if isinstance(src, dict) else src
    if not uid:
        bad.append(f"{title}: no datasource")
    elif uid not in uids:
        bad.append(f"{title}: datasource {uid!r} is not provisioned ({sorted(uids)})")
    targets = p.get("targets") or []
    if not targets:
        bad.append(f"{title}: no targets")
    for t in targets:
        if not (t.get("expr") or "").strip():
            bad.append(f"{title}: target {t.get('refId')} has no expr")
    if "gridPos" not in p:
        bad.append(f"{title}: no gridPos")
verdict(f"dashboard {dash.get('title')!r}: {len(all_panels)} panels, "
        f"{sum(len(p.get('targets', [])) for p in all_panels)} queries")
EOF

step "every dashboard query parses (promtool, as recording rules)"
"$PY" - "$tmp/dashboard-queries.yml" <<'PYEOF'
import json, sys, yaml
from deploycheck import panels
dash = json.load(open("deploy/grafana/dashboards/seckill.json"))
rules = []
for p in panels(dash.get("panels", [])):
    for t in p.get("targets", []):
        expr = t.get("expr", "")
        for var, val in (("$__rate_interval", "20s"), ("$__interval", "5s"), ("$__range", "15m")):
            expr = expr.replace(var, val)
        rules.append({"record": f"dashboard:panel_{p.get('id')}_{t.get('refId')}", "expr": expr})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[1], "w"))
PYEOF
promtool check rules "$tmp/dashboard-queries.yml" || fail "dashboard queries"

# ------------------------------------------------------------------ docker-compose.yml
step "docker-compose.yml"
if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
  docker compose config -q && echo "docker compose config -q: valid" || fail "docker compose config"
elif command -v docker-compose >/dev/null 2>&1 && docker-compose version 2>/dev/null | grep -q ' v2\.'; then
  docker-compose config -q && echo "docker-compose config -q ($(docker-compose version --short)): valid" \
    || fail "docker-compose config"
else
  echo "(no Docker Compose v2 here: only the checks below, on the file as YAML)"
fi
"$PY" - <<'PYEOF' || fail "docker-compose.yml services"
import os, yaml
from deploycheck import bad, verdict
c = yaml.safe_load(open("docker-compose.yml"))
s = c.get("services", {})
for name in ("redis", "rabbitmq", "postgres", "gateway", "workers", "prometheus", "grafana"):
    if name not in s:
        bad.append(f"no service {name}")
for name, port in (("gateway", 8080), ("workers", 9091)):
    test = " ".join(s.get(name, {}).get("healthcheck", {}).get("test", []))
    if f":{port}/readyz" not in test:
        bad.append(f"{name}: no healthcheck on :{port}/readyz")
for name, svc in s.items():
    for v in svc.get("volumes", []):
        src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
        if src.startswith("."):
            if not os.path.exists(src):
                bad.append(f"{name}: mounts {src}, which does not exist")
        elif src and src not in (c.get("volumes") or {}):
            bad.append(f"{name}: named volume {src} is not declared")
    for dep in svc.get("depends_on", {}) or {}:
        if dep not in s:
            bad.append(f"{name}: depends on unknown service {dep}")
verdict(f"{len(s)} services: {', '.join(s)}")
PYEOF

# ------------------------------------------------------------------ metric names
step "every seckill_* metric of the alerts and the dashboard is exported by the code"
dirs=()
for d in gateway/src workers/src schema/src infra/src; do
  [ -d "$d" ] && dirs+=("$d")
done
echo "searching ${dirs[*]}"
names=$("$PY" - <<'EOF'
import json, re, yaml
from deploycheck import panels
exprs = [r["expr"] for g in yaml.safe_load(open("deploy/alerts.yml"))["groups"] for r in g["rules"]]
dash = json.load(open("deploy/grafana/dashboards/seckill.json"))
exprs += [t.get("expr", "") for p in panels(dash.get("panels", [])) for t in p.get("targets", [])]
exprs += [v.get("query", "") if isinstance(v.get("query"), str) else v.get("query", {}).get("query", "")
          for v in dash.get("templating", {}).get("list", [])]
names = set()
for e in exprs:
    for m in re.findall(r"(?<![A-Za-z0-9_:])seckill_[A-Za-z0-9_]*", e):
        names.add(re.sub(r"_(bucket|sum|count)$", "", m))
print("\n".join(sorted(names)))
EOF
)
missing=()
for n in $names; do
  if [ "${#dirs[@]}" -gt 0 ] && grep -rqF --include='*.rs' "\"$n\"" "${dirs[@]}"; then
    printf '  ok       %s\n' "$n"
  else
    printf '  MISSING  %s\n' "$n"
    missing+=("$n")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  fail "metrics not exported by the code: ${missing[*]}"
fi

# ------------------------------------------------------------------ verdict
echo
if [ "${#failed[@]}" -gt 0 ]; then
  echo "check-deploy: ${#failed[@]} check(s) failed:"
  printf '  - %s\n' "${failed[@]}"
  exit 1
fi
echo "check-deploy: all checks passed"
