"""Process pools side by side (issue 16): a no-op round trip and a 100 ms task, one worker each, one run.

    .venv/bin/python bench/cpu_pool_bench.py [--rounds 5] [--noops 300] [--sleeps 10] [--own-pool PATH]

Pools: ``CpuPool`` (this tree's, on pebble), the own pool it replaced (``--own-pool``: its cpu_pool.py,
e.g. ``git show 46dadfc:src/sonalyze/common/cpu_pool.py > /tmp/own/own_cpu_pool.py``; the directory is
put on ``PYTHONPATH`` so the fork server's children import it too), ``concurrent.futures.ProcessPoolExecutor``
(forkserver, ``max_tasks_per_child``), pebble's ``ProcessPool`` and loky's reusable executor, each awaited
from an asyncio loop. Each pool is started and warmed up first; then per round and pool (the order rotated
each round), ``--noops`` no-op tasks (``os.getpid``) one after another and ``--sleeps`` tasks of 100 ms
(``time.sleep(0.1)``: the pool's overhead on top is what is measured). Per pool: the median round trip of
the no-op, its p90, the parent's CPU per no-op (user + system), and the median of (100 ms task − 100 ms).
One JSON line per pool, medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import importlib
import multiprocessing
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import orjson

SLEEP_S = 0.1


def make_pools(own_pool: str | None) -> dict:
    """name → (submit(fn, *args) -> awaitable, close())"""
    from sonalyze.common.cpu_pool import DEFAULT_PRELOAD, CpuPool

    pools = {}
    mine = CpuPool(1, 0, preload=DEFAULT_PRELOAD)
    pools["CpuPool (pebble)"] = (lambda fn, *a: mine.run(fn, *a), mine.close)
    if own_pool:
        own_module = importlib.import_module(Path(own_pool).stem)
        own = own_module.CpuPool(1, 0, preload=DEFAULT_PRELOAD)
        pools["own CpuPool (before)"] = (lambda fn, *a: own.run(fn, *a), own.close)
    forkserver = multiprocessing.get_context("forkserver")
    executor = concurrent.futures.ProcessPoolExecutor(1, mp_context=forkserver, max_tasks_per_child=100)

    async def close_executor() -> None:
        executor.shutdown()

    pools["ProcessPoolExecutor (forkserver)"] = (lambda fn, *a: asyncio.wrap_future(executor.submit(fn, *a)), close_executor)
    import pebble

    pebble_pool = pebble.ProcessPool(1, max_tasks=100, context=forkserver)

    async def close_pebble() -> None:
        pebble_pool.stop()
        pebble_pool.join()

    pools["pebble ProcessPool"] = (lambda fn, *a: asyncio.wrap_future(pebble_pool.schedule(fn, args=a)), close_pebble)
    import loky

    loky_executor = loky.get_reusable_executor(max_workers=1)

    async def close_loky() -> None:
        loky_executor.shutdown()

    pools["loky"] = (lambda fn, *a: asyncio.wrap_future(loky_executor.submit(fn, *a)), close_loky)
    return pools


async def measure(submit, noops: int, sleeps: int) -> dict:
    round_trips_s = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(noops):
        started = time.perf_counter()
        await submit(os.getpid)
        round_trips_s.append(time.perf_counter() - started)
    after = resource.getrusage(resource.RUSAGE_SELF)
    overheads_s = []
    for _ in range(sleeps):
        started = time.perf_counter()
        await submit(time.sleep, SLEEP_S)
        overheads_s.append(time.perf_counter() - started - SLEEP_S)
    round_trips_s.sort()
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {
        "noop_p50_ms": statistics.median(round_trips_s) * 1e3,
        "noop_p90_ms": round_trips_s[int(0.9 * (len(round_trips_s) - 1))] * 1e3,
        "noop_parent_cpu_us": cpu_s / noops * 1e6,
        "sleep_100ms_overhead_p50_ms": statistics.median(overheads_s) * 1e3,
    }


async def main(args: argparse.Namespace) -> None:
    pools = make_pools(args.own_pool)
    for name, (submit, _) in pools.items():
        started = time.perf_counter()
        for _ in range(3):
            await submit(os.getpid)  # starts the workers (and the fork server, the first time)
        print(orjson.dumps({"pool": name, "start_s": round(time.perf_counter() - started, 3)}).decode(), flush=True)
    names = list(pools)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(await measure(pools[name][0], args.noops, args.sleeps))
    for name in names:
        keys = runs[name][0].keys()
        medians = {key: round(statistics.median(run[key] for run in runs[name]), 3) for key in keys}
        print(orjson.dumps({"benchmark": "cpu_pool", "pool": name, "rounds": args.rounds, **medians,
                            "loadavg": Path("/proc/loadavg").read_text().split()[:3]}).decode(), flush=True)
    for _, close in pools.values():
        await close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--noops", type=int, default=300)
    parser.add_argument("--sleeps", type=int, default=10)
    parser.add_argument("--own-pool", default=None, help="path of the own pool's cpu_pool.py (before pebble)")
    arguments = parser.parse_args()
    if arguments.own_pool:
        own_dir = str(Path(arguments.own_pool).resolve().parent)
        sys.path.insert(0, own_dir)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [own_dir, os.environ.get("PYTHONPATH")]))
    asyncio.run(main(arguments))
