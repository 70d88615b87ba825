#!/usr/bin/env bash
# Issue-8 benchmarks: fan-out before/after (regression check of the single-instance path), one instance vs
# two over Redis, 20,000 connections. Results (one JSON line each) go to bench/gateway_scale_results.jsonl.
# BEFORE_SRC: a checkout of the previous gateway's src/ (e.g. `git archive HEAD src | tar -x -C /tmp/before`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=bench/gateway_scale_results.jsonl
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
for round in 1 2 3; do
  if [ -n "${BEFORE_SRC:-}" ]; then
    echo "{\"label\": \"fanout before (issue 2 code)\", \"round\": $round, \"result\": $(PYTHONPATH=$BEFORE_SRC $PY bench/gateway_bench.py fanout --server gateway --clients 1000 --seconds 10 | tail -1), \"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >> $OUT
  fi
  echo "{\"label\": \"fanout after\", \"round\": $round, \"result\": $($PY bench/gateway_bench.py fanout --server gateway --clients 1000 --seconds 10 | tail -1), \"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >> $OUT
done
for round in 1 2; do
  $PY bench/gateway_scale.py cluster --instances 1 --broker memory:// --clients 1000 --seconds 10 | tail -1 >> $OUT
  $PY bench/gateway_scale.py cluster --instances 2 --broker "$REDIS_URL" --clients 1000 --seconds 10 | tail -1 >> $OUT
done
# the gateway process is capped at the hard `ulimit -n` (20,000 here): 19,800 connections (+100 warm-up ones) is about the most it can hold
$PY bench/gateway_scale.py connections --clients 19800 | tail -1 >> $OUT
