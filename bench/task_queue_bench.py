"""The task queue (sonalyze.common.tasks, Dramatiq on Redis) against the local pool (CpuPool).

1. Throughput: ``--tasks`` sweep analyses (5 s sweep, 48 kHz) submitted at once through the queue, served by
   ``sonalyze worker --processes 1`` then ``--processes 2`` (interleaved ``--rounds`` times): analyses per second,
   and the CPU time each analysis cost every process involved (the worker processes, this submitting process,
   Redis when it runs on this machine: ``psutil``, before/after each batch). Beside it, the same analyses in 1
   and 2 plain processes without the queue (``multiprocessing``, one BLAS thread each, as the workers): the
   machine's own 2/1 ratio for this work, the ceiling of the queue's.
   The same with tasks that sleep 0.5 s (``time.sleep``: no CPU), which shows the queue's own parallelism
   when other work on a shared machine takes the cores.
2. Overhead per task: a no-op task's round trip (submit -> result), sequential, through the local pool and
   through the queue with one idle worker process (``--poll-ms`` as given to ``sonalyze worker``).

    .venv/bin/python bench/task_queue_bench.py [--redis redis://127.0.0.1:6379/10] [--tasks 16] [--rounds 2]

``--worker-src DIR`` runs the workers from another source tree (``DIR/sonalyze``: a copy with another
``common/tasks.py``), to compare two versions of the worker side in one session. Uses (and flushes) the
given Redis database.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measurement_cpu_pool import _recording  # noqa: E402  (the same recording as the pool's benchmark)

from sonalyze.acoustics.sweep import SweepParams  # noqa: E402
from sonalyze.common.blobs import BlobAddress  # noqa: E402
from sonalyze.common.cpu_pool import DEFAULT_PRELOAD, CpuPool  # noqa: E402
from sonalyze.common.tasks import LocalTasks, QueueTasks  # noqa: E402
from sonalyze.measurement.analysis import AnalysisTask, analyze_uploads  # noqa: E402
from sonalyze.measurement.jobs import AnalysisSource  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def start_worker(url: str, processes: int, poll_ms: int, src: str = "") -> subprocess.Popen:
    env = {**os.environ, "TASK_QUEUE_URL": url}
    if src:
        env["PYTHONPATH"] = src
    return subprocess.Popen(
        [sys.executable, "-m", "sonalyze", "worker", "--processes", str(processes), "--poll-ms", str(poll_ms)],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def stop_worker(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=60)


async def warm(queue: QueueTasks, processes: int, task: AnalysisTask | None = None) -> None:
    """Every worker process has imported the analysis (it answered a task: it consumes only after its
    imports, which take a second or two) and, given ``task``, the analyses run once per process."""
    deadline = time.monotonic() + 120
    while len(set(await asyncio.gather(*[await queue.submit(os.getpid) for _ in range(4 * processes)]))) < processes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{processes} worker processes did not all start")
        await asyncio.sleep(0.2)
    if task is not None:
        await asyncio.gather(*[await queue.submit(analyze_uploads, task) for _ in range(2 * processes)])


async def throughput(queue: QueueTasks, fn, arg, count: int) -> float:
    start = time.perf_counter()
    handles = [await queue.submit(fn, arg, timeout_s=300) for _ in range(count)]
    await asyncio.gather(*handles)
    return count / (time.perf_counter() - start)


def _cpu_s(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def _thread_cpu_s(process: psutil.Process) -> dict[int, float]:
    try:
        return {thread.id: thread.user_time + thread.system_time for thread in process.threads()}
    except psutil.Error:
        return {}


class CpuMeter:
    """CPU seconds spent by the worker processes (``sonalyze worker``'s tree), this process and Redis; in
    the worker processes, by the threads that ran the tasks (the busiest of each process) and the others
    (Dramatiq's consumer threads, heartbeats, time limits)."""

    def __init__(self, worker: subprocess.Popen, redis_pid: int | None) -> None:
        root = psutil.Process(worker.pid)
        self.workers = [root, *root.children(recursive=True)]
        self.groups = {
            "worker processes": self.workers,
            "submitter": [psutil.Process()],
            "redis-server": [psutil.Process(redis_pid)] if redis_pid else [],
        }
        self.start = self._read()
        self.start_threads = [_thread_cpu_s(p) for p in self.workers]

    def _read(self) -> dict[str, float]:
        return {name: sum(_cpu_s(p) for p in processes) for name, processes in self.groups.items()}

    def per_task_ms(self, tasks: int) -> dict[str, float]:
        end = self._read()
        task_threads_s = 0.0
        for process, start in zip(self.workers, self.start_threads):
            deltas = [cpu_s - start.get(thread, 0.0) for thread, cpu_s in _thread_cpu_s(process).items()]
            task_threads_s += max(deltas, default=0.0)
        per_task = {name: 1000 * (end[name] - self.start[name]) / tasks for name in end}
        return {"worker processes": per_task.pop("worker processes"), "(their task threads)": 1000 * task_threads_s / tasks, **per_task}


def _local_redis_pid(client: redis.Redis) -> int | None:
    pid = int(client.info("server")["process_id"])
    try:
        psutil.Process(pid).cpu_times()
    except psutil.Error:  # another machine, or not ours to read
        return None
    return pid


def _single_blas_thread() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def plain_rate(pool: multiprocessing.pool.Pool, task: AnalysisTask, count: int) -> tuple[float, float]:
    """Analyses per second in the pool's processes, and the CPU milliseconds each analysis cost them."""
    processes = [psutil.Process(child.pid) for child in pool._pool]  # the pool's worker processes
    cpu_s = sum(_cpu_s(p) for p in processes)
    start = time.perf_counter()
    pool.map(analyze_uploads, [task] * count, chunksize=1)
    rate = count / (time.perf_counter() - start)
    return rate, 1000 * (sum(_cpu_s(p) for p in processes) - cpu_s) / count


async def round_trips(runner, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        await (await runner.submit(sum, [1, 2, 3]))
        times.append(time.perf_counter() - start)
        await asyncio.sleep(0.05)  # the worker idles between tasks, as between requests
    return times


def _ratio(values: dict[int, list[float]]) -> float:
    return statistics.median(values[2]) / statistics.median(values[1])


async def main(url: str, tasks: int, rounds: int, poll_ms: int, trips: int, src: str) -> None:
    client = redis.Redis.from_url(url)
    client.flushdb()
    redis_pid = _local_redis_pid(client)
    params = SweepParams()
    path = Path(tempfile.mkdtemp()) / "mic.wav"
    _recording(params, path)
    task = AnalysisTask(AnalysisSource.SWEEP_DECONVOLUTION, params, (("mic", path.name),), BlobAddress("", path.parent))
    queue = QueueTasks(url, "analysis", max_in_flight=1000)
    context = multiprocessing.get_context("forkserver")
    plain_pools = {n: context.Pool(n, initializer=_single_blas_thread) for n in (1, 2)}
    for n, pool in plain_pools.items():
        plain_rate(pool, task, 2 * n)  # imported and warm
    rates: dict[int, list[float]] = {1: [], 2: []}
    plain: dict[int, list[float]] = {1: [], 2: []}
    sleeps: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    plain_cpu: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(rounds):
        for processes in (1, 2):
            rate, cpu_ms = plain_rate(plain_pools[processes], task, tasks)
            plain[processes].append(rate)
            plain_cpu[processes].append(cpu_ms)
            worker = start_worker(url, processes, poll_ms, src)
            try:
                await warm(queue, processes, task)
                meter = CpuMeter(worker, redis_pid)
                rates[processes].append(await throughput(queue, analyze_uploads, task, tasks))
                cpu[processes].append(meter.per_task_ms(tasks))
                sleeps[processes].append(await throughput(queue, time.sleep, 0.5, 8))
            finally:
                stop_worker(worker)
    for pool in plain_pools.values():
        pool.terminate()
    print(f"load average {os.getloadavg()[0]:.1f}; workers from {src or 'this tree'}")
    for processes in (1, 2):
        print(f"{processes} worker process(es): {', '.join(f'{v:.2f}' for v in rates[processes])} analyses/s through the queue; "
              f"{', '.join(f'{v:.2f}' for v in plain[processes])} in plain processes; "
              f"{', '.join(f'{v:.2f}' for v in sleeps[processes])} sleep tasks/s")
        names = cpu[processes][0]
        medians = {name: statistics.median(sample[name] for sample in cpu[processes]) for name in names}
        print("  CPU per analysis (ms, medians): " + ", ".join(f"{name} {value:.1f}" for name, value in medians.items())
              + f"; plain processes {statistics.median(plain_cpu[processes]):.1f}")
    print(f"ratio 2/1 (medians): analyses through the queue {_ratio(rates):.2f}, in plain processes {_ratio(plain):.2f}, "
          f"sleep tasks {_ratio(sleeps):.2f}")

    local = LocalTasks(CpuPool(1, 0, preload=(*DEFAULT_PRELOAD, "sonalyze.measurement.analysis")))
    await local.warm_up()
    worker = start_worker(url, 1, poll_ms, src)
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
    parser.add_argument("--worker-src", default="", help="run the workers from this source folder (PYTHONPATH)")
    args = parser.parse_args()
    asyncio.run(main(args.redis, args.tasks, args.rounds, args.poll_ms, args.trips, args.worker_src))
