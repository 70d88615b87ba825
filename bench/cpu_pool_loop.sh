#!/bin/bash
# The event loop while a process's first CpuPool starts and closes, old tree against the working tree,
# alternating: longest pause between ticks 10 ms apart (ms), then seconds until a uvicorn app that warms
# the pool up at start (as the services do) has started and answers /healthz. bench/cpu_pool_loop.md
#   bench/cpu_pool_loop.sh OLD_COMMIT [ROUNDS] [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
old=$(mktemp -d)
trap 'rm -rf "$old"' EXIT
git archive "$1" src | tar -x -C "$old"
port=${3:-18801}
probe='import asyncio, json, tests.common.test_cpu_pool_loop as t; print(json.dumps({k: round(v) for k, v in asyncio.run(t.first_pool_gaps_ms()).items()}))'
for _ in $(seq 1 "${2:-5}"); do
  for tree in old new; do
    path=$([ $tree = old ] && echo "$old/src" || echo "")
    gaps=$(PYTHONPATH=$path .venv/bin/python -c "$probe")
    serve=$(PYTHONPATH=$path .venv/bin/python bench/cpu_pool_loop_serve.py "$port")
    echo "load $(cut -d' ' -f1 /proc/loadavg) $tree gaps_ms $gaps $serve"
  done
done
