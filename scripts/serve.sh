#!/usr/bin/env bash
# The system, running locally until Ctrl-C: services up, release build, the gateway on
# $SECKILL_HTTP_ADDR (default 127.0.0.1:8080) and the workers, with the demo's secrets
# (scripts/lib/demo.sh). For trying the API by hand: see "Try it in a minute" in the README.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo build --release --bins
source scripts/lib/demo.sh
out=out/serve
demo_start "$out"
echo "serving until Ctrl-C (logs in $out/)" >&2
wait
