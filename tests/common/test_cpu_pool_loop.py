"""``CpuPool`` never holds the event loop: not while the first pool of a process starts its fork server and
workers (seconds: the fork server imports numpy/scipy), nor while ``close`` waits for the workers to exit;
and a ``close`` during a start stops what that start began.

Measured in a fresh Python process, where the pool is the first one (this test process's fork server may
be running already). Before the fix pebble started the workers on the event loop: the ticker below saw
gaps of 0.94-2.1 s at load 1-3 and 4.8-6.6 s at load 3-7; with the start in a thread 13-24 ms
(bench/cpu_pool_loop.md).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from sonalyze.common.cpu_pool import CpuPool
from sonalyze.common.errors import Busy
from tests.common.cpu_tasks import own_pid

MAX_GAP_MS = 250.0
"""Longest pause allowed between ticks 10 ms apart; scheduling noise on the loaded 2-core machine stays far
below it, the old start on the loop far above it."""


async def longest_tick_gap_ms(awaitable) -> float:
    """Await ``awaitable`` while a task ticks every 10 ms; the longest pause between two ticks, in ms."""
    gaps_s: list[float] = []
    done = False

    async def tick() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps_s.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.05)  # the ticker is running
    try:
        await awaitable
    finally:
        done = True
        await ticker
    return max(gaps_s) * 1e3


async def first_pool_gaps_ms() -> dict[str, float]:
    """Longest loop pauses while the process's first CpuPool warms up, runs a task and closes."""
    pool = CpuPool(max_workers=2, max_queued=1)
    return {
        "warm_up": await longest_tick_gap_ms(pool.warm_up()),
        "task": await longest_tick_gap_ms(pool.run(abs, -1)),
        "close": await longest_tick_gap_ms(pool.close()),
    }


def test_the_first_pool_of_a_process_never_blocks_the_event_loop():
    probe = "import asyncio, json, tests.common.test_cpu_pool_loop as t; print(json.dumps(asyncio.run(t.first_pool_gaps_ms())))"
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    gaps_ms = json.loads(done.stdout.splitlines()[-1])
    assert max(gaps_ms.values()) < MAX_GAP_MS, gaps_ms


def _grandchildren() -> set[int]:
    """Live processes below this one's children: the fork server's workers."""
    me = psutil.Process()
    direct = {child.pid for child in me.children()}
    return {
        child.pid
        for child in me.children(recursive=True)
        if child.pid not in direct and child.status() != psutil.STATUS_ZOMBIE
    }


async def test_close_during_the_start_refuses_the_waiting_task_and_stops_the_workers():
    before = _grandchildren()
    pool = CpuPool(max_workers=2, max_queued=1)
    waiting = asyncio.create_task(pool.run(own_pid))
    await asyncio.sleep(0)  # the task has asked for the workers' start
    await pool.close()  # stops after that start, not during it
    with pytest.raises(Busy):
        await waiting
    assert _grandchildren() <= before
