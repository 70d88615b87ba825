#!/usr/bin/env bash
# Issue 16, "One Redis client": the gateway's Redis broker on its own RESP client against the same pub/sub
# path on redis-py with hiredis (bench/gateway_redis_py/redis_py_broker.py, put in place by that folder's
# sitecustomize.py when SONALYZE_BENCH_REDIS_CLIENT=redis-py: no file of the tree is swapped), side by side
# in one run: every round runs each benchmark on both clients, the order alternating from round to round.
#   broker:  one node publishing, another subscribed (bench/gateway_scale.py broker), CPU per message;
#   cluster: two gateway instances on Redis, 1,000 devices (bench/gateway_scale.py cluster), CPU per
#            delivery: the measure of the fan-out target (README, Performance).
# Both without a push history (PUSH_HISTORY_MAX=0: the bench broker keeps none). One JSON line per run is
# appended to bench/gateway_redis_client.jsonl; the summary (median, min-max per setup) is printed at the end.
#   REDIS_URL=redis://127.0.0.1:23379/0 ROUNDS=4 bash bench/gateway_redis_client.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=bench/gateway_redis_client.jsonl
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
ROUNDS=${ROUNDS:-4}
SECONDS_PER_PHASE=${SECONDS_PER_PHASE:-8}
RUN_ID=$(date -u +%Y-%m-%dT%H:%M:%SZ)
export PUSH_HISTORY_MAX=0
export PYTHONPATH="$PWD/bench/gateway_redis_py${PYTHONPATH:+:$PYTHONPATH}"

run() {  # run CLIENT ARGS...: one benchmark on one client, its result line tagged with the run and round
  local client=$1; shift
  SONALYZE_BENCH_REDIS_CLIENT=$client $PY bench/gateway_scale.py "$@" --label "$client" | tail -1 \
    | $PY -c "import sys, orjson; print(orjson.dumps({'run': '$RUN_ID', 'round': $round, **orjson.loads(sys.stdin.read())}).decode())" >> $OUT
}

for round in $(seq "$ROUNDS"); do
  if (( round % 2 )); then clients="own redis-py"; else clients="redis-py own"; fi
  for client in $clients; do
    run "$client" broker --broker "$REDIS_URL" --targets 1 --messages 5000
    run "$client" broker --broker "$REDIS_URL" --targets 1000 --messages 2000
  done
  for client in $clients; do
    run "$client" cluster --instances 2 --broker "$REDIS_URL" --clients 1000 --seconds "$SECONDS_PER_PHASE"
  done
done
$PY bench/gateway_redis_summary.py "$OUT" "$RUN_ID"
