#!/bin/sh
# Every gateway benchmark, each result one JSON line appended to bench/gateway_results.jsonl.
#   sh bench/gateway_run_all.sh
set -e
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=bench/gateway_results.jsonl
: > "$OUT"
run() { echo "# $*" >&2; "$PY" bench/gateway_bench.py "$@" | tee -a "$OUT"; }
echo "{\"started\": \"$(date -u +%FT%TZ)\", \"loadavg_before\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >> "$OUT"
for server in gateway starlette; do
  run fanout --server $server --clients 1000 --seconds 10
  run fanout --server $server --clients 5000 --seconds 10
done
run routed --clients 100 --seconds 10
run routed --clients 100 --seconds 10 --rate 5000
run direct --clients 100 --seconds 10 --rate 5000
run routed --clients 1 --seconds 5
run direct --clients 1 --seconds 5
run routed --clients 100 --seconds 10 --event ping
run idle --server gateway --clients 10000
run idle --server starlette --clients 10000
"$PY" bench/gateway_http_clients.py | tee -a "$OUT"
echo "{\"finished\": \"$(date -u +%FT%TZ)\", \"loadavg_after\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >> "$OUT"
