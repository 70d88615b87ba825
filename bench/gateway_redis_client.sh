#!/usr/bin/env bash
# Issue 16, "One Redis client" (bench/gateway_scale.md): the Redis broker on redis-py (with its hiredis parser)
# against the own RESP client it replaced, side by side in one run, rounds interleaved. The own client runs
# from a copy of this tree's src/ with only broker_redis.py taken from OWN_COMMIT. One JSON line per run
# appended to bench/gateway_scale_results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=bench/gateway_scale_results.jsonl
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
OWN_COMMIT=${OWN_COMMIT:-46dadfc}
ROUNDS=${ROUNDS:-3}
OWN=$(mktemp -d)
trap 'rm -r "$OWN"' EXIT
cp -r src "$OWN/"
git show "$OWN_COMMIT:src/sonalyze/gateway/broker_redis.py" > "$OWN/src/sonalyze/gateway/broker_redis.py"

for round in $(seq "$ROUNDS"); do
  for targets in 1 1000; do
    messages=$(( targets == 1 ? 20000 : 2000 ))
    PYTHONPATH=$OWN/src $PY bench/gateway_scale.py broker --broker "$REDIS_URL" --targets $targets --messages $messages \
      --label "own RESP client" | tail -1 >> $OUT
    $PY bench/gateway_scale.py broker --broker "$REDIS_URL" --targets $targets --messages $messages \
      --label "redis-py + hiredis" | tail -1 >> $OUT
  done
  PYTHONPATH=$OWN/src $PY bench/gateway_scale.py cluster --instances 2 --broker "$REDIS_URL" --clients 1000 --seconds 8 \
    --label "2 x redis, own RESP client" | tail -1 >> $OUT
  $PY bench/gateway_scale.py cluster --instances 2 --broker "$REDIS_URL" --clients 1000 --seconds 8 \
    --label "2 x redis, redis-py + hiredis" | tail -1 >> $OUT
  $PY bench/gateway_scale.py cluster --instances 1 --broker memory:// --clients 1000 --seconds 8 \
    --label "1 x memory (reference)" | tail -1 >> $OUT
done
