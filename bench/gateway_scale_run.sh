#!/usr/bin/env bash
# Issue-8 benchmarks (bench/gateway_scale.md); one JSON line per run appended to bench/gateway_scale_results.jsonl.
#  1. one instance alone vs one and two over Redis vs two over NATS, side by side, rounds interleaved;
#  2. the Redis broker alone, this code vs the previous one (BEFORE_SRC: its src/, e.g.
#     `git archive <commit> src | tar -x -C /tmp/before`), as it ran then (without hiredis) and with hiredis
#     installed under redis-py, rounds interleaved; then two instances over Redis with each code;
#  3. as many connections as one instance can hold (its file limit), and their memory.
# Step 2 is skipped without BEFORE_SRC.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=bench/gateway_scale_results.jsonl
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}

$PY bench/gateway_scale.py compare --rounds 3 --clients 1000 --seconds 10 \
  --setups "1:memory://,1:$REDIS_URL,2:$REDIS_URL,2:$NATS_URL" >> $OUT

if [ -n "${BEFORE_SRC:-}" ]; then
  for round in 1 2 3; do
    for targets in 1 1000; do
      messages=$(( targets == 1 ? 20000 : 2000 ))
      PYTHONPATH=$BEFORE_SRC $PY bench/gateway_scale.py broker --broker "$REDIS_URL" --targets $targets --messages $messages \
        --without-hiredis --label "before: redis-py" | tail -1 >> $OUT
      PYTHONPATH=$BEFORE_SRC $PY bench/gateway_scale.py broker --broker "$REDIS_URL" --targets $targets --messages $messages \
        --label "before: redis-py with hiredis" | tail -1 >> $OUT
      $PY bench/gateway_scale.py broker --broker "$REDIS_URL" --targets $targets --messages $messages --label "after" | tail -1 >> $OUT
    done
    $PY bench/gateway_scale.py broker --broker "$NATS_URL" --messages 20000 --label "nats" | tail -1 >> $OUT
  done
  # the same through the gateways: two instances over Redis, BEFORE_SRC's code as it ran (hiredis hidden from redis-py)
  NO_HIREDIS=$(mktemp -d)
  echo 'raise ImportError("hidden: redis-py parses in pure Python")' > "$NO_HIREDIS/hiredis.py"
  for round in 1 2 3; do
    for clients in 100 1000; do
      PYTHONPATH=$NO_HIREDIS:$BEFORE_SRC $PY bench/gateway_scale.py cluster --instances 2 --broker "$REDIS_URL" \
        --clients $clients --seconds 8 --label "2 x redis, broker before" | tail -1 >> $OUT
      $PY bench/gateway_scale.py cluster --instances 2 --broker "$REDIS_URL" --clients $clients --seconds 8 \
        --label "2 x redis, broker after" | tail -1 >> $OUT
    done
  done
  rm -r "$NO_HIREDIS"
fi

$PY bench/gateway_scale.py connections --clients 0 --generators 2 | tail -1 >> $OUT
