#!/bin/bash
# bench/acoustics_bench.py for two trees side by side, alternating, three pairs (bench/acoustics.md).
#   bench/acoustics_ab.sh BASE_SRC [HEAD_SRC]   e.g. after: git worktree add --detach /tmp/base <commit>
#                                              bench/acoustics_ab.sh /tmp/base/src
set -e
cd "$(dirname "$0")/.."
base_src=${1:?usage: acoustics_ab.sh BASE_SRC [HEAD_SRC]}
head_src=${2:-$PWD/src}
for i in 1 2 3; do
  for tree in base head; do
    if [ $tree = base ]; then src=$base_src; else src=$head_src; fi
    echo "=== $tree run $i $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
    OMP_NUM_THREADS=1 PYTHONPATH=$src taskset -c 0 .venv/bin/python bench/acoustics_bench.py --repeat 7 --clock process
  done
done
