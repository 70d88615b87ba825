"""Retiring a worker with pebble's public API only (issue 16: no private library internals unless a committed
benchmark justifies them).

    .venv/bin/python bench/cpu_pool_retire.py [--rounds 6] [--noops 200] [--sleeps 10] [--ffts 20]

``CpuPool`` retires a worker after a task that left it above ``max_worker_rss_mb`` or ended in
``SystemExit``; pebble has no public way to say "this worker takes no further task" (``max_tasks`` counts
tasks; ``concurrent.futures``' ``max_tasks_per_child`` likewise), so ``cpu_pool._init_worker`` wraps pebble's
private ``pebble.pool.process.fetch_task``. The public way to the same guarantee is ``max_tasks=1``: a fresh
worker for every task. This measures what that costs, side by side in one run, the order alternating each
round: ``CpuPool(1, 0)`` as it is (``max_tasks_per_worker=100``, retiring on condition) against
``CpuPool(1, 0, max_tasks_per_worker=1)``, each awaited one task after another: a no-op (``os.getpid``), a
100 ms sleep (the overhead on top is what is measured) and an FFT of 10 s at 48 kHz (``numpy.fft.rfft``,
work a new process may do slower the first time). Per pool and round: median round trip (overhead for the
sleep), and the parent's CPU per no-op. Prints one JSON line per pool and round, then the medians and ranges.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import time

import numpy
import orjson

SLEEP_S = 0.1
SIGNAL = numpy.random.default_rng(0).standard_normal(480_000)


def fft_peak(signal: numpy.ndarray) -> float:
    return float(numpy.abs(numpy.fft.rfft(signal)).max())


async def measure(pool, noops: int, sleeps: int, ffts: int) -> dict:
    async def timed(fn, *args) -> float:
        started = time.perf_counter()
        await pool.run(fn, *args)
        return time.perf_counter() - started

    before = resource.getrusage(resource.RUSAGE_SELF)
    noop_s = [await timed(os.getpid) for _ in range(noops)]
    after = resource.getrusage(resource.RUSAGE_SELF)
    sleep_s = [await timed(time.sleep, SLEEP_S) - SLEEP_S for _ in range(sleeps)]
    fft_s = [await timed(fft_peak, SIGNAL) for _ in range(ffts)]
    parent_cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {
        "noop_ms": round(1000 * statistics.median(noop_s), 3),
        "noop_parent_cpu_ms": round(1000 * parent_cpu_s / noops, 3),
        "sleep_overhead_ms": round(1000 * statistics.median(sleep_s), 3),
        "fft_ms": round(1000 * statistics.median(fft_s), 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--noops", type=int, default=200)
    parser.add_argument("--sleeps", type=int, default=10)
    parser.add_argument("--ffts", type=int, default=20)
    args = parser.parse_args()
    from sonalyze.common.cpu_pool import CpuPool

    pools = {"retire on condition (max_tasks 100, private fetch_task)": CpuPool(1, 0), "max_tasks 1 (public API)": CpuPool(1, 0, max_tasks_per_worker=1)}
    results: dict[str, list[dict]] = {name: [] for name in pools}
    try:
        for pool in pools.values():
            await pool.warm_up()
            await pool.run(fft_peak, SIGNAL)
        for round_index in range(args.rounds):
            names = list(pools) if round_index % 2 == 0 else list(reversed(pools))
            for name in names:
                result = await measure(pools[name], args.noops, args.sleeps, args.ffts)
                results[name].append(result)
                print(orjson.dumps({"round": round_index + 1, "pool": name, **result, "loadavg": os.getloadavg()[0]}).decode(), flush=True)
    finally:
        for pool in pools.values():
            await pool.close()
    for name, runs in results.items():
        summary = {key: f"{statistics.median(r[key] for r in runs):g} ({min(r[key] for r in runs):g}-{max(r[key] for r in runs):g})" for key in runs[0]}
        print(orjson.dumps({"pool": name, "rounds": len(runs), "median (range)": summary}).decode())


if __name__ == "__main__":
    asyncio.run(main())
