"""The task queue (sonalyze.common.tasks, Dramatiq on Redis) against the local pool (CpuPool).

1. Throughput: ``--tasks`` sweep analyses (5 s sweep, 48 kHz) submitted at once through the queue, served by
   ``sonalyze worker --processes 1`` then ``--processes 2`` (interleaved ``--rounds`` times): analyses per second.
   The same with tasks that sleep 0.5 s (``time.sleep``: no CPU), which shows the queue's own parallelism
   when other work on a shared machine takes the cores.
2. Overhead per task: a no-op task's round trip (submit -> result), sequential, through the local pool and
   through the queue with one idle worker process (``--poll-ms`` as given to ``sonalyze worker``).

    .venv/bin/python bench/task_queue_bench.py [--redis redis://127.0.0.1:6379/10] [--tasks 16] [--rounds 2]

Uses (and flushes) the given Redis database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measurement_cpu_pool import _recording  # noqa: E402  (the same recording as the pool's benchmark)

from sonalyze.acoustics.sweep import SweepParams  # noqa: E402
from sonalyze.common.cpu_pool import DEFAULT_PRELOAD, CpuPool  # noqa: E402
from sonalyze.common.tasks import LocalTasks, QueueTasks  # noqa: E402
from sonalyze.measurement.analysis import AnalysisTask, BlobLocation, analyze_uploads  # noqa: E402
from sonalyze.measurement.jobs import AnalysisSource  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def start_worker(url: str, processes: int, poll_ms: int) -> subprocess.Popen:
    env = {**os.environ, "TASK_QUEUE_URL": url}
    return subprocess.Popen(
        [sys.executable, "-m", "sonalyze", "worker", "--processes", str(processes), "--poll-ms", str(poll_ms)],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def stop_worker(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=60)


async def warm(queue: QueueTasks, processes: int) -> None:
    """Every worker process has imported the analysis and run one task."""
    await asyncio.gather(*[await queue.submit(sum, [1]) for _ in range(4 * processes)])


async def throughput(queue: QueueTasks, fn, arg, count: int) -> float:
    start = time.perf_counter()
    handles = [await queue.submit(fn, arg, timeout_s=300) for _ in range(count)]
    await asyncio.gather(*handles)
    return count / (time.perf_counter() - start)


async def round_trips(runner, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        await (await runner.submit(sum, [1, 2, 3]))
        times.append(time.perf_counter() - start)
        await asyncio.sleep(0.05)  # the worker idles between tasks, as between requests
    return times


async def main(url: str, tasks: int, rounds: int, poll_ms: int, trips: int) -> None:
    redis.Redis.from_url(url).flushdb()
    params = SweepParams()
    path = Path(tempfile.mkdtemp()) / "mic.wav"
    _recording(params, path)
    task = AnalysisTask(AnalysisSource.SWEEP_DECONVOLUTION, params, (("mic", path.name),), BlobLocation("", path.parent))
    queue = QueueTasks(url, "analysis", max_in_flight=1000)
    rates: dict[int, list[float]] = {1: [], 2: []}
    sleeps: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(rounds):
        for processes in (1, 2):
            worker = start_worker(url, processes, poll_ms)
            try:
                await warm(queue, processes)
                rates[processes].append(await throughput(queue, analyze_uploads, task, tasks))
                sleeps[processes].append(await throughput(queue, time.sleep, 0.5, 8))
            finally:
                stop_worker(worker)
    for processes in (1, 2):
        print(f"{processes} worker process(es): {', '.join(f'{v:.2f}' for v in rates[processes])} analyses/s; "
              f"{', '.join(f'{v:.2f}' for v in sleeps[processes])} sleep tasks/s")
    print(f"ratio 2/1 (medians): analyses {statistics.median(rates[2]) / statistics.median(rates[1]):.2f}, "
          f"sleep tasks {statistics.median(sleeps[2]) / statistics.median(sleeps[1]):.2f}")

    local = LocalTasks(CpuPool(1, 0, preload=(*DEFAULT_PRELOAD, "sonalyze.measurement.analysis")))
    await local.warm_up()
    worker = start_worker(url, 1, poll_ms)
    try:
        await warm(queue, 1)
        local_s = await round_trips(local, trips)
        queue_s = await round_trips(queue, trips)
    finally:
        stop_worker(worker)
        await local.close()
        await queue.close()
    med_local, med_queue = statistics.median(local_s), statistics.median(queue_s)
    print(f"no-op round trip, local pool: median {1000 * med_local:.2f} ms, p90 {1000 * statistics.quantiles(local_s, n=10)[-1]:.2f} ms")
    print(f"no-op round trip, queue (poll {poll_ms} ms): median {1000 * med_queue:.2f} ms, p90 {1000 * statistics.quantiles(queue_s, n=10)[-1]:.2f} ms")
    print(f"queue overhead per task (median difference): {1000 * (med_queue - med_local):.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/10")
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--poll-ms", type=int, default=1000)
    parser.add_argument("--trips", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.redis, args.tasks, args.rounds, args.poll_ms, args.trips))
