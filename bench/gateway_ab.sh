#!/bin/sh
# Before/after, side by side: the same benchmarks on the previous gateway code (BEFORE_SRC, a copy of its
# src/) and on this tree, interleaved, N rounds; one JSON line each, appended to bench/gateway_ab.jsonl.
# Compare user CPU per delivery/event of the pairs taken in the same round, not wall time.
#   git archive <previous commit> src | tar -x -C /tmp/gw_before
#   BEFORE_SRC=/tmp/gw_before/src sh bench/gateway_ab.sh 3
set -e
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=bench/gateway_ab.jsonl
: "${BEFORE_SRC:?set BEFORE_SRC to a copy of the previous src/}"
: > "$OUT"
run() {
  label=$1; shift
  if [ "$label" = before ]; then result=$(PYTHONPATH=$BEFORE_SRC "$PY" bench/gateway_bench.py "$@" | tail -1)
  else result=$("$PY" bench/gateway_bench.py "$@" | tail -1); fi
  echo "{\"code\": \"$label\", \"round\": $round, \"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"result\": $result}" | tee -a "$OUT"
}
for round in $(seq "${1:-3}"); do
  for label in before after; do run $label fanout --server gateway --clients 1000 --seconds 10; done
  for label in before after; do run $label fanout --server gateway --clients 5000 --seconds 10; done
  for label in before after; do run $label fanout --server gateway --clients 5 --seconds 10; done  # small pushes: the per-call cost
  for label in before after; do run $label routed --clients 100 --seconds 10; done
  for label in before after; do run $label routed --clients 100 --seconds 10 --rate 5000; done
done
