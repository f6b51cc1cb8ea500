#!/bin/bash
# Measure the Serve path under one set of Ray Serve environment variables (docs/performance.md,
# "Ray Serve's throughput-optimized mode"). Run by hand on an idle machine, alternating modes:
#   scripts/serve_modes.sh default RAY_SERVE_THROUGHPUT_OPTIMIZED=0
#   scripts/serve_modes.sh optimized RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_DIRECT_INGRESS=0
# Starts `stylefleet run` on 127.0.0.1:8000 with those variables, measures, and stops only it.
set -u
cd "$(dirname "$0")/.."
label=$1; shift
log=$(mktemp -t "stylefleet-mode-$label.XXXX.log")
env "$@" .venv/bin/stylefleet run serve_config.yaml --no-dashboard > "$log" 2>&1 &
pid=$!
for _ in $(seq 100); do sleep 3; grep -q "is serving" "$log" && break; done
sleep 10
echo "== $label ($*)"
.venv/bin/python scripts/serve_latency.py frost
.venv/bin/python scripts/serve_throughput.py frost remove-background
kill -INT "$pid"; wait "$pid"
