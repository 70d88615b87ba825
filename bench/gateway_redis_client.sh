#!/usr/bin/env bash
# Issue 16, "One Redis client" (bench/gateway_scale.md): the Redis broker on its own RESP client (this tree)
# against the same broker on redis-py with hiredis (broker_redis.py of REDIS_PY_COMMIT, run from a copy of
# this tree's src/ with only that file replaced), side by side in one run, rounds interleaved. One JSON line
# per run appended to bench/gateway_scale_results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=bench/gateway_scale_results.jsonl
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
REDIS_PY_COMMIT=${REDIS_PY_COMMIT:-75d2917}
ROUNDS=${ROUNDS:-3}
REDIS_PY=$(mktemp -d)
trap 'rm -r "$REDIS_PY"' EXIT
cp -r src "$REDIS_PY/"
git show "$REDIS_PY_COMMIT:src/sonalyze/gateway/broker_redis.py" > "$REDIS_PY/src/sonalyze/gateway/broker_redis.py"

for round in $(seq "$ROUNDS"); do
  for targets in 1 1000; do
    messages=$(( targets == 1 ? 20000 : 2000 ))
    $PY bench/gateway_scale.py broker --broker "$REDIS_URL" --targets $targets --messages $messages \
      --label "own RESP client" | tail -1 >> $OUT
    PYTHONPATH=$REDIS_PY/src $PY bench/gateway_scale.py broker --broker "$REDIS_URL" --targets $targets --messages $messages \
      --label "redis-py + hiredis" | tail -1 >> $OUT
  done
  $PY bench/gateway_scale.py cluster --instances 2 --broker "$REDIS_URL" --clients 1000 --seconds 8 \
    --label "2 x redis, own RESP client" | tail -1 >> $OUT
  PYTHONPATH=$REDIS_PY/src $PY bench/gateway_scale.py cluster --instances 2 --broker "$REDIS_URL" --clients 1000 --seconds 8 \
    --label "2 x redis, redis-py + hiredis" | tail -1 >> $OUT
  $PY bench/gateway_scale.py cluster --instances 1 --broker memory:// --clients 1000 --seconds 8 \
    --label "1 x memory (reference)" | tail -1 >> $OUT
done
