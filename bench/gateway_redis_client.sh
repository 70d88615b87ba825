#!/usr/bin/env bash
# Issue 16, "One Redis client": the gateway's Redis broker before and after it moved to redis-py with hiredis,
# side by side in one run. Before = its own RESP client over hiredis, the tree at commit c9ddec4 (its src/,
# extracted to a temporary folder and put first on PYTHONPATH for every process of the run: the benchmark, its
# subscriber process, the gateways); after = this tree. Every round runs each benchmark on both, the order
# alternating from round to round:
#   broker:  one node publishing, another subscribed (bench/gateway_scale.py broker), CPU per message;
#   cluster: two gateway instances on Redis, 1,000 devices (bench/gateway_scale.py cluster), CPU per
#            delivery: the measure of the fan-out target (README, Performance).
# Both without a push history (PUSH_HISTORY_MAX=0, as the first comparison ran). One JSON line per run is
# appended to bench/gateway_redis_client.jsonl; the summary (median, min-max per setup) is printed at the end.
#   REDIS_URL=redis://127.0.0.1:26379/0 ROUNDS=4 bash bench/gateway_redis_client.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=bench/gateway_redis_client.jsonl
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
ROUNDS=${ROUNDS:-4}
SECONDS_PER_PHASE=${SECONDS_PER_PHASE:-8}
BEFORE_COMMIT=c9ddec4
RUN_ID=$(date -u +%Y-%m-%dT%H:%M:%SZ)
export PUSH_HISTORY_MAX=0
BEFORE=$(mktemp -d)
trap 'rm -r "$BEFORE"' EXIT
git archive "$BEFORE_COMMIT" src | tar -x -C "$BEFORE"

run() {  # run CLIENT ARGS...: one benchmark on one client, its result line tagged with the run and round
  local client=$1 path=; shift
  [ "$client" = own ] && path=$BEFORE/src
  PYTHONPATH=$path $PY bench/gateway_scale.py "$@" --label "$client" | tail -1 \
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
