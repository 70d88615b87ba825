#!/bin/sh
# Fan-out only, gateway and Starlette interleaved, N rounds (interference from other processes only ever adds
# CPU, so compare rounds taken at the same time); one JSON line each, appended to bench/gateway_fanout_repeat.jsonl.
#   sh bench/gateway_fanout_repeat.sh 3
set -e
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=bench/gateway_fanout_repeat.jsonl
: > "$OUT"
for round in $(seq "${1:-3}"); do
  for clients in 1000 5000; do
    for server in gateway starlette; do
      echo "{\"round\": $round, \"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >> "$OUT"
      "$PY" bench/gateway_bench.py fanout --server $server --clients $clients --seconds 10 >> "$OUT"
    done
  done
done
