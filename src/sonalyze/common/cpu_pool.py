"""CPU-bound work off the event loop: pebble's process pool behind a bound on how many tasks wait.

Each task runs ``fn(*args, **kwargs)`` in one of ``max_workers`` long-lived worker processes of a
``pebble.ProcessPool``, forked from a ``forkserver`` that has already imported numpy/scipy and the
acoustics code; :meth:`CpuPool.warm_up` starts them in advance. pebble kills only the worker of a task
that outlives ``timeout_s`` or whose caller is cancelled, replaces a worker that died, and retires a
worker after ``max_tasks_per_worker`` tasks. What this module adds (bench/cpu_pool.md):

- a bound: at most ``max_workers`` tasks run and ``max_queued`` wait, beyond that :class:`Busy`;
- progress: a task given ``on_progress`` gets a ``progress(fraction, message)`` keyword argument whose
  calls reach ``on_progress`` on the event loop, in order, before the result;
- recycling above ``max_worker_rss_mb`` of resident memory after a task, and after a task that ended in
  ``SystemExit`` (a long-lived process keeps the peak heap of its largest task); and an ``RLIMIT_AS``
  budget per worker (``memory_limit_mb``); BLAS single-threaded in the workers;
- the event loop never waits for pebble: it starts and stops the worker processes in a thread of the
  pool's (the first start in a process takes seconds: the fork server imports numpy/scipy first), so a
  service warming its pool up answers its health checks meanwhile (tests/common/test_cpu_pool_loop.py).

    pool = CpuPool(max_workers=1, max_queued=4)
    await pool.warm_up()  # optional: start the workers now
    result = await pool.run(analyze, path, timeout_s=120, on_progress=lambda f, msg: ...)

Refusals (all :class:`~sonalyze.common.errors.SonalyzeError`): :class:`~sonalyze.common.errors.Busy`
(503, ``busy``, ``Retry-After``) when ``max_workers`` tasks run and ``max_queued`` wait already, or the
pool is closing; :class:`TaskTimeout` (504, ``timeout``); :class:`WorkerCrashed` (500,
``worker_crashed``) when the worker dies without an answer; :class:`TaskFailed` (500, ``task_failed``)
when ``fn`` raised an exception that cannot be pickled. An exception that pickles (``ValueError``...) is
re-raised as itself, with the worker's traceback as its ``__cause__``. A task must not leave state behind
that changes the next task's result (the worker process is reused).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import multiprocessing
import os
import pickle
import resource
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import pebble
from pebble.pool import process as pebble_process
from threadpoolctl import threadpool_limits

from sonalyze.common.errors import Busy, SonalyzeError

ProgressCallback = Callable[[float, str], None]

DEFAULT_PRELOAD = ("numpy", "scipy.signal", "soundfile", "sonalyze.acoustics", "sonalyze.common.cpu_pool")
"""Imported once in the fork server, so every worker process starts with them loaded."""

DEFAULT_MAX_TASKS_PER_WORKER = 100
DEFAULT_MAX_WORKER_RSS_MB = 1024.0

_context = multiprocessing.get_context("forkserver")
_preload_set = False


class TaskTimeout(SonalyzeError):
    code, status_code = "timeout", 504


class WorkerCrashed(SonalyzeError):
    code, status_code = "worker_crashed", 500


class TaskFailed(SonalyzeError):
    code, status_code = "task_failed", 500


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process (attached as ``__cause__``)."""

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.args[0]}\"\"\""


# ---- in the worker process ----

_progress_queue: Any = None
"""The pool's queue to the parent: ``(task_id, "pid", pid)``, ``(task_id, "progress", (f, msg))``, ``(task_id, "end", None)``."""
_retired = False
"""Set by a task after which this worker must not take another one."""


def _init_worker(progress_queue: Any, memory_limit_mb: float | None) -> None:
    """pebble's initializer: BLAS single-threaded (the pool's processes are the parallelism; BLAS threads
    on top oversubscribe the cores, bench/simulation.md), the address-space budget, retirement."""
    global _progress_queue
    _progress_queue = progress_queue
    threadpool_limits(limits=1)
    if memory_limit_mb is not None:
        _limit_address_space(memory_limit_mb)
    fetch_task = pebble_process.fetch_task

    def fetch_task_unless_retired(channel: Any) -> Any:
        # pebble's worker loop calls this module-level function for its next task; exit code 0 is how a
        # worker ends after ``max_tasks``: pebble starts another and charges no task with the exit. A private
        # hook: pebble has no public per-task retirement, and its public ``max_tasks=1`` (a fresh worker per
        # task) costs +150-350 ms per task against 100-500 ms analyses (bench/cpu_pool_retire.md).
        if _retired:
            pebble_process.process_exit(0)
        return fetch_task(channel)

    pebble_process.fetch_task = fetch_task_unless_retired


def _limit_address_space(budget_mb: float) -> None:
    """Let this process map at most ``budget_mb`` MiB more than it has now (``RLIMIT_AS``).

    Counted from the current size because the imported libraries already reserve address space they do
    not use; past the limit an allocation raises ``MemoryError`` in the task instead of swapping the host.
    """
    try:
        with open("/proc/self/status", "rb") as status:
            line = next(line for line in status if line.startswith(b"VmSize:"))
        current = int(line.split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        return  # no /proc: no limit rather than a wrong one
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = current + int(budget_mb * 1024 * 1024)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _portable_exception(exc: BaseException) -> tuple[Exception | None, str, str]:
    """``exc`` if it is an Exception that survives a pickle round trip, else None; its summary; its traceback."""
    summary = f"{type(exc).__name__}: {exc}"
    text = "".join(traceback.format_exception(exc))
    if not isinstance(exc, Exception):  # SystemExit and the like must not stop the parent
        return None, summary, text
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return None, summary, text
    return exc, summary, text


def _run_task(task_id: int, call: bytes, max_rss_mb: float) -> tuple[str, Any]:
    """One task in the worker: ``("result", value)`` or ``("error", _portable_exception(...))``."""
    global _retired
    fn, args, kwargs, with_progress = pickle.loads(call)
    _progress_queue.put((task_id, "pid", os.getpid()))
    if with_progress:
        kwargs = {**kwargs, "progress": lambda f, msg: _progress_queue.put((task_id, "progress", (float(f), str(msg))))}
    try:
        outcome: tuple[str, Any] = ("result", fn(*args, **kwargs))
    except BaseException as exc:  # everything, including SystemExit, goes back to the parent
        outcome = ("error", _portable_exception(exc))
        _retired = not isinstance(exc, Exception)
    _retired = _retired or _rss_mb(os.getpid()) > max_rss_mb
    _progress_queue.put((task_id, "end", None))
    return outcome


def _rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` (Linux ``/proc``; 0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 1e6


# ---- in the parent ----


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


@dataclass
class _Task:
    """What the parent knows of a running task from the progress queue."""

    on_progress: ProgressCallback | None
    ended: asyncio.Future[None]
    pid: int | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)


class CpuPool:
    """At most ``max_workers`` worker processes running one task each and ``max_queued`` tasks waiting."""

    def __init__(
        self,
        max_workers: int,
        max_queued: int,
        *,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        max_tasks_per_worker: int = DEFAULT_MAX_TASKS_PER_WORKER,
        max_worker_rss_mb: float = DEFAULT_MAX_WORKER_RSS_MB,
        memory_limit_mb: float | None = None,
    ) -> None:
        """``memory_limit_mb``: address space each worker may add to what it maps after start-up
        (``RLIMIT_AS``); beyond it a task's allocation fails with ``MemoryError``. None: no limit."""
        if max_workers < 1 or max_queued < 0 or max_tasks_per_worker < 1:
            raise ValueError("max_workers and max_tasks_per_worker must be >= 1 and max_queued >= 0")
        global _preload_set
        if not _preload_set:
            # The fork server is shared by the whole process; its preload list counts only before it starts.
            _context.set_forkserver_preload(list(preload))
            _preload_set = True
        self.max_workers = max_workers
        self.max_queued = max_queued
        self.max_tasks_per_worker = max_tasks_per_worker
        self.max_worker_rss_mb = max_worker_rss_mb
        self.memory_limit_mb = memory_limit_mb
        self._progress: Any = _context.SimpleQueue()
        self._pool: pebble.ProcessPool | None = None
        """pebble's pool once :meth:`_started_pool` has started it; set only in ``self._starter``."""
        self._starter = ThreadPoolExecutor(1, thread_name_prefix="cpu-pool-start")
        """Starts and stops pebble's pools, one call after the other, off the event loop: pebble starts a
        pool's worker processes in the thread that first uses it, and the first start in a process waits
        for the fork server's imports (1-2 s on an idle 2-core machine, 6-11 s at load 9-10); joining the
        stopped workers waits for them to exit."""
        self._tasks: dict[int, _Task] = {}
        self._futures: set[pebble.ProcessFuture] = set()
        """Scheduled and not answered: failed by :meth:`close` (pebble's ``stop`` leaves them pending)."""
        self._task_ids = itertools.count()
        self._reader: threading.Thread | None = None
        self._free = asyncio.Semaphore(max_workers)
        self._running = 0
        self._queued = 0
        self._closed = False
        self._mean_duration_s = 1.0

    def _started_pool(self) -> pebble.ProcessPool:
        """In ``self._starter``: ``self._pool`` with its workers started; a new one if there is none or it
        broke (see :meth:`_run_call`; a broken pool's threads end by themselves)."""
        if self._pool is not None and self._pool.active:
            return self._pool
        if self._pool is not None:
            self._pool.stop()
        pool = pebble.ProcessPool(
            self.max_workers,
            max_tasks=self.max_tasks_per_worker,
            initializer=_init_worker,
            initargs=(self._progress, self.memory_limit_mb),
            context=_context,
        )
        if not pool.active:  # pebble's ``active`` starts a pool that has not started yet
            raise WorkerCrashed("the worker pool did not start")
        self._pool = pool
        return pool

    def _stop_pool(self) -> None:
        """In ``self._starter``: stop the workers (running tasks are killed) and wait until they have exited."""
        if self._pool is not None:
            self._pool.stop()
            self._pool.join()

    @property
    def running(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        return self._queued

    def retry_after_s(self) -> int:
        """A hint for ``Retry-After``: how long the tasks ahead should take, from recent durations."""
        waves = (self._running + self._queued) / self.max_workers
        return max(1, math.ceil(self._mean_duration_s * max(waves, 1.0)))

    def _refuse_closing(self) -> Busy:
        return Busy("the worker pool is shutting down", headers={"Retry-After": "5"})

    async def run(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` in a worker process and return its result (see the module doc)."""
        if self._closed:
            raise self._refuse_closing()
        if self._running + self._queued >= self.max_workers + self.max_queued:
            raise Busy(
                f"all {self.max_workers} workers are busy and {self._queued} tasks wait; try again later",
                headers={"Retry-After": str(self.retry_after_s())},
            )
        call = pickle.dumps((fn, args, kwargs, on_progress is not None), protocol=pickle.HIGHEST_PROTOCOL)
        self._queued += 1
        try:
            await self._free.acquire()
        finally:
            self._queued -= 1
        self._running += 1
        started = time.monotonic()
        try:
            kind, payload = await self._run_call(call, timeout_s, on_progress)
        finally:
            self._running -= 1
            self._free.release()
            self._mean_duration_s = 0.8 * self._mean_duration_s + 0.2 * (time.monotonic() - started)
        return outcome_value(kind, payload)

    async def _run_call(self, call: bytes, timeout_s: float | None, on_progress: ProgressCallback | None) -> tuple[str, Any]:
        """Schedule one call on pebble and wait for it; pebble's failures as this module's errors."""
        loop = asyncio.get_running_loop()
        self._start_reader(loop)
        task_id = next(self._task_ids)
        task = self._tasks[task_id] = _Task(on_progress, loop.create_future())
        try:
            for attempt in range(2):
                future = await self._schedule(task_id, call, timeout_s)
                self._futures.add(future)
                future.add_done_callback(self._futures.discard)
                try:
                    outcome = await asyncio.shield(asyncio.wrap_future(future))
                except asyncio.CancelledError:
                    future.cancel()  # pebble stops the worker running it
                    await self._until_stopped(task)
                    raise
                except BrokenProcessPool:
                    if self._closed:
                        raise self._refuse_closing() from None
                    # pebble gives up its pool when a worker dies while no task runs (killed while idle);
                    # this task never ran: a new pool runs it.
                    if attempt == 0:
                        continue
                    raise WorkerCrashed("the worker pool broke down twice in a row") from None
                except TimeoutError:
                    raise TaskTimeout(
                        f"the task took longer than {timeout_s:g} s and was stopped", details={"timeout_s": timeout_s}
                    ) from None
                except pebble.ProcessExpired as exc:
                    if self._closed:
                        raise self._refuse_closing() from None
                    raise WorkerCrashed(f"the worker process died (exit code {exc.exitcode}) before answering") from None
                except (pickle.PicklingError, TypeError, AttributeError) as exc:  # the answer did not pickle
                    raise TaskFailed(f"the task's answer cannot be sent back: {exc}") from None
                except RuntimeError:
                    if self._closed:
                        raise self._refuse_closing() from None
                    raise
                await task.ended  # its progress messages came before this one
                return outcome
            raise AssertionError("unreachable")
        finally:
            del self._tasks[task_id]

    async def _schedule(self, task_id: int, call: bytes, timeout_s: float | None) -> pebble.ProcessFuture:
        pool = self._pool
        if pool is None or not pool.active:  # not started yet, or broken
            if self._closed:
                raise self._refuse_closing()
            pool = await asyncio.get_running_loop().run_in_executor(self._starter, self._started_pool)
        if self._closed:  # checked with no await before ``schedule``: close() has not stopped the pool yet
            raise self._refuse_closing()
        return pool.schedule(_run_task, args=(task_id, call, self.max_worker_rss_mb), timeout=timeout_s)

    async def _until_stopped(self, task: _Task) -> None:
        """After a cancel: wait until pebble has stopped the task's worker (if the task had started)."""
        try:
            await asyncio.wait_for(task.started.wait(), 1.0)
        except TimeoutError:
            return  # it never reached a worker
        deadline = time.monotonic() + 10.0
        while task.pid is not None and not _gone(task.pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def _start_reader(self, loop: asyncio.AbstractEventLoop) -> None:
        """One thread reads the workers' progress queue and hands each message to the event loop."""
        if self._reader is None:
            self._reader = threading.Thread(target=self._read_progress, args=(loop,), name="cpu-pool-progress", daemon=True)
            self._reader.start()

    def _read_progress(self, loop: asyncio.AbstractEventLoop) -> None:
        while (message := self._progress.get()) is not None:
            try:
                loop.call_soon_threadsafe(self._progress_arrived, *message)
            except RuntimeError:  # the loop is closed
                return

    def _progress_arrived(self, task_id: int, kind: str, value: Any) -> None:
        task = self._tasks.get(task_id)
        if task is None:
            return
        if kind == "pid":
            task.pid = value
            task.started.set()
        elif kind == "progress":
            if task.on_progress is not None:
                task.on_progress(*value)
        elif not task.ended.done():
            task.ended.set_result(None)

    async def warm_up(self) -> None:
        """Start the workers now (and the fork server with its imports, the first time), not with the first tasks."""
        await self.run(os.getpid)

    async def close(self) -> None:
        """Refuse new tasks, stop every worker (running tasks' callers get ``Busy``) and reap them."""
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._starter, self._stop_pool)  # after a start under way
        self._starter.shutdown(wait=False)  # its thread is idle: it ends without being waited for here
        for future in list(self._futures):
            if not future.done():
                future.set_exception(BrokenProcessPool("the pool is closed"))
        if self._reader is not None:
            self._progress.put(None)
            await asyncio.to_thread(self._reader.join)
        self._progress.close()
        deadline = time.monotonic() + 10.0
        while self._running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


def outcome_value(kind: str, payload: Any) -> Any:
    """A task's outcome as the caller sees it: its result, or its exception raised again (from the
    worker's traceback); ``TaskFailed`` when the exception itself could not travel."""
    if kind == "result":
        return payload
    exc, summary, remote_traceback = payload
    if exc is None:
        raise TaskFailed(summary) from RemoteTraceback(remote_traceback)
    raise exc from RemoteTraceback(remote_traceback)
