#!/bin/sh
# Issue 12: does choosing a protocol profile per connection cost the Sonalyze path anything? The gateway
# before the profile hooks (BEFORE_SRC) and with them (AFTER_SRC), interleaved, N rounds: fan-out to 1,000
# devices and routed events from 100 clients (closed loop); one JSON line each, in bench/gateway_profiles_ab.jsonl.
#   git archive d4c89cd src | tar -x -C /tmp/gw_before && git archive 84c0f88 src | tar -x -C /tmp/gw_after
#   BEFORE_SRC=/tmp/gw_before/src AFTER_SRC=/tmp/gw_after/src sh bench/gateway_profiles_ab.sh 2
set -e
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-bench/gateway_profiles_ab.jsonl}
export MAX_CONNECTIONS_PER_ADDRESS=${MAX_CONNECTIONS_PER_ADDRESS:-100000}  # every load client is 127.0.0.1
: "${BEFORE_SRC:?set BEFORE_SRC to a copy of the previous src/}"
: "${AFTER_SRC:?set AFTER_SRC to a copy of this src/}"
export ALLOW_INSECURE_DEVICE_IDS=true  # the load generator connects as /ws?device_id=... (contract C1's development mode)
: > "$OUT"
run() {
  label=$1; shift
  if [ "$label" = before ]; then src=$BEFORE_SRC; else src=$AFTER_SRC; fi
  result=$(PYTHONPATH=$src "$PY" bench/gateway_bench.py "$@" | tail -1)
  echo "{\"code\": \"$label\", \"round\": $round, \"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"result\": $result}" | tee -a "$OUT"
}
for round in $(seq "${1:-2}"); do
  for label in before after; do run $label fanout --server gateway --clients 1000 --seconds 10; done
  for label in before after; do run $label routed --clients 100 --seconds 10; done
done
