"""CPU-bound work off the event loop: warm worker processes, a bound on how many, a kill per timeout.

Each task runs ``fn(*args, **kwargs)`` in one of at most ``max_workers`` long-lived worker processes,
forked from a ``forkserver`` that has already imported numpy/scipy and the acoustics code.
:meth:`CpuPool.warm_up` starts them all in advance (otherwise each starts with its first task), so a
task costs a pickle each way, not a process start. The parent never blocks: it writes the task to an
idle worker's pipe and reads the length-prefixed pickles that come back (progress, then the answer)
without blocking (``loop.add_writer``/``loop.add_reader``).

    pool = CpuPool(max_workers=1, max_queued=4)
    await pool.warm_up()  # optional: start the workers now
    result = await pool.run(analyze, path, timeout_s=120, on_progress=lambda f, msg: ...)

Isolation is still per task: a task that outlives ``timeout_s``, or whose caller is cancelled, has its
worker killed (that one only) and a replacement started in the background; a worker that dies takes
down only the task it was running. A worker that died while idle is replaced before it gets a task.

A worker is retired (it exits when its task pipe closes) and replaced after ``max_tasks_per_worker``
tasks, or after a task that left it above ``max_worker_rss_mb`` of resident memory: a long-lived
process keeps the peak heap of its largest task (the allocator rarely returns it) plus whatever caches
and leaks the libraries accumulate, where a fresh process per task started clean each time. Recycling
bounds both at the cost of one process start every so many tasks, made in the background. A task
that ended in an exception that cannot come back as itself (``SystemExit``, an unpicklable one) also
retires its worker.

Refusals (all :class:`~sonalyze.common.errors.SonalyzeError`): :class:`~sonalyze.common.errors.Busy`
(503, ``busy``, ``Retry-After``) when ``max_workers`` tasks run and ``max_queued`` wait already, or the
pool is closing; :class:`TaskTimeout` (504, ``timeout``) when a task outlives ``timeout_s`` (its worker
is killed); :class:`WorkerCrashed` (500, ``worker_crashed``) when the worker dies without an answer;
:class:`TaskFailed` (500, ``task_failed``) when ``fn`` raised an exception that cannot be pickled.
An exception that pickles (``ValueError``...) is re-raised as itself, with the worker's traceback as
its ``__cause__``. A task must not leave state behind that changes the next task's result (the
worker process is reused): module-level caches are fine, global settings are not.
"""

from __future__ import annotations

import asyncio
import functools
import math
import multiprocessing
import os
import pickle
import resource
import struct
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

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


_FRAME_HEADER = struct.Struct("!Q")


def _frame(message: Any) -> bytes:
    """One length-prefixed pickle (raises if ``message`` does not pickle)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME_HEADER.pack(len(data)) + data


def _send(conn: Connection, message: tuple[str, Any]) -> None:
    """Write one frame to the pipe (blocking: the worker has nothing else to do)."""
    view = memoryview(_frame(message))
    while view:
        view = view[os.write(conn.fileno(), view) :]


def _read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes from the blocking pipe ``fd``, or None at its end."""
    data = bytearray()
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _receive_frame(conn: Connection) -> bytes | None:
    """The next frame's pickle from the pipe (blocking), or None once the parent closed it."""
    header = _read_exactly(conn.fileno(), _FRAME_HEADER.size)
    if header is None:
        return None
    return _read_exactly(conn.fileno(), _FRAME_HEADER.unpack(header)[0])


class _FrameReader:
    """The parent's side of :func:`_send`: bytes in as they arrive (non-blocking), whole messages out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, Any]]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= _FRAME_HEADER.size:
            (size,) = _FRAME_HEADER.unpack_from(self._buffer)
            end = _FRAME_HEADER.size + size
            if len(self._buffer) < end:
                break
            payload = bytes(self._buffer[_FRAME_HEADER.size : end])
            del self._buffer[:end]
            try:
                messages.append(pickle.loads(payload))
            except Exception as exc:  # e.g. an exception class that cannot be rebuilt here
                messages.append(("error", (None, f"unreadable answer from the task: {exc!r}", "")))
        return messages


def _run_task(answers: Connection, task: bytes) -> bool:
    """Run one task, send ``("result", value)`` or ``("error", ...)``; False if the worker must stop."""

    def progress(fraction: float, message: str) -> None:
        _send(answers, ("progress", (float(fraction), str(message))))

    try:
        fn, args, kwargs, with_progress = pickle.loads(task)
        if with_progress:
            kwargs = {**kwargs, "progress": progress}
        _send(answers, ("result", fn(*args, **kwargs)))
    except BaseException as exc:  # everything, including SystemExit, goes back to the parent
        _send(answers, ("error", _portable_exception(exc)))
        return isinstance(exc, Exception)  # after SystemExit or KeyboardInterrupt the worker exits
    return True


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


def _worker_main(tasks: Connection, answers: Connection, memory_limit_mb: float | None = None) -> None:
    """Entry point of a worker process: run the tasks that arrive, one at a time, until the pipe closes.

    BLAS runs single-threaded here: the pool's processes are the parallelism, and BLAS threads on top
    oversubscribe the cores (on a busy machine a 16 k-sample dot product waiting for its second thread
    took 40–60 µs instead of 3 µs; see bench/simulation.md). ``memory_limit_mb``: see
    :func:`_limit_address_space`.
    """
    threadpool_limits(limits=1)
    if memory_limit_mb is not None:
        _limit_address_space(memory_limit_mb)
    while (task := _receive_frame(tasks)) is not None:
        if not _run_task(answers, task):
            return


def _alive(process: multiprocessing.process.BaseProcess) -> bool:
    """Whether ``process`` still runs. ``is_alive()`` alone learns of a death only when the fork server
    (the worker's parent) has reaped it and reported back; ``/proc`` shows it at once (gone or zombie)."""
    try:
        with open(f"/proc/{process.pid}/stat", "rb") as stat:
            state = stat.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return process.is_alive() and not os.path.isdir("/proc/self")  # no /proc: is_alive() alone
    return state not in (b"Z", b"X") and process.is_alive()


def _rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` (Linux ``/proc``; 0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 1e6


async def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to the non-blocking pipe ``fd``, waiting (not blocking) while the pipe is full."""
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            writable = loop.create_future()
            loop.add_writer(fd, lambda: writable.done() or writable.set_result(None))
            try:
                await writable
            finally:
                loop.remove_writer(fd)


class _Worker:
    """A worker process and the parent's ends of its two pipes (tasks out, answers in)."""

    def __init__(self, process: multiprocessing.process.BaseProcess, tasks: Connection, answers: Connection) -> None:
        self.process = process
        self.tasks = tasks
        self.answers = answers
        self.frames = _FrameReader()
        self.tasks_done = 0

    def close_pipes(self) -> None:
        """Close the parent's ends; an idle worker then reads the end of its task pipe and exits."""
        self.tasks.close()
        self.answers.close()


class _Slot:
    """One of the pool's ``max_workers`` places: its worker, or the start of one in progress."""

    def __init__(self) -> None:
        self.worker: _Worker | None = None
        self.starting: asyncio.Future[_Worker] | None = None


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
        self._slots = [_Slot() for _ in range(max_workers)]
        self._idle_slots = list(self._slots)
        """Slots with no task; a task takes one after acquiring ``_free``, so one is always there."""
        self._free = asyncio.Semaphore(max_workers)
        self._running = 0
        self._queued = 0
        self._processes: set[multiprocessing.process.BaseProcess] = set()
        self._stopping: set[asyncio.Task[int | None]] = set()
        self._closed = False
        self._mean_duration_s = 1.0

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
        self._queued += 1
        try:
            await self._free.acquire()
        finally:
            self._queued -= 1
        slot = self._idle_slots.pop()
        self._running += 1
        started = time.monotonic()
        try:
            return await self._run_in_slot(slot, fn, args, kwargs, timeout_s, on_progress)
        finally:
            self._idle_slots.append(slot)
            self._running -= 1
            self._free.release()
            self._mean_duration_s = 0.8 * self._mean_duration_s + 0.2 * (time.monotonic() - started)

    async def _run_in_slot(
        self,
        slot: _Slot,
        fn: Callable[..., Any],
        args: tuple,
        kwargs: dict,
        timeout_s: float | None,
        on_progress: ProgressCallback | None,
    ) -> Any:
        task = _frame((fn, args, kwargs, on_progress is not None))  # a pickling error leaves the worker untouched
        worker = await self._ready_worker(slot)
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[tuple[str, Any]] = loop.create_future()
        fd = worker.answers.fileno()

        def on_readable() -> None:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            messages = worker.frames.feed(data) if data else [("crashed", None)]
            for kind, payload in messages:
                if outcome.done():
                    break
                if kind == "progress":
                    if on_progress is not None:
                        on_progress(*payload)
                else:
                    outcome.set_result((kind, payload))
            if outcome.done():
                loop.remove_reader(fd)

        loop.add_reader(fd, on_readable)
        try:
            async with asyncio.timeout(timeout_s):
                try:
                    await _write_all(worker.tasks.fileno(), task)
                except BrokenPipeError:  # the worker died just now: its answer pipe is at its end too
                    pass
                kind, payload = await asyncio.shield(outcome)
        except TimeoutError:
            raise TaskTimeout(
                f"the task took longer than {timeout_s:g} s and was stopped", details={"timeout_s": timeout_s}
            ) from None
        finally:
            if not outcome.done():  # timed out or cancelled: kill this worker at once
                loop.remove_reader(fd)
                outcome.cancel()
                await self._replace(slot, kill=True)
        if kind == "crashed":
            exit_code = await self._replace(slot, kill=False)
            if self._closed:
                raise self._refuse_closing()
            raise WorkerCrashed(f"the worker process died (exit code {exit_code}) before answering")
        worker.tasks_done += 1
        if (
            worker.tasks_done >= self.max_tasks_per_worker
            or _rss_mb(worker.process.pid) > self.max_worker_rss_mb
            or (kind == "error" and payload[0] is None)  # SystemExit and the like also end the worker
        ):
            self._retire(slot)
        if kind == "result":
            return payload
        exc, summary, remote_traceback = payload
        if exc is None:
            raise TaskFailed(summary) from RemoteTraceback(remote_traceback)
        raise exc from RemoteTraceback(remote_traceback)

    async def _ready_worker(self, slot: _Slot) -> _Worker:
        """The slot's live worker; started now if it has none (or its worker died while idle)."""
        if slot.worker is not None and not _alive(slot.worker.process):
            await self._replace(slot, kill=True)
        self._start_worker_in(slot)
        if slot.starting is not None:
            await asyncio.shield(slot.starting)  # raises what the start raised
        if self._closed or slot.worker is None:
            await self._replace(slot, kill=True)
            raise self._refuse_closing()
        return slot.worker

    def _start_worker_in(self, slot: _Slot) -> None:
        """Start a worker for ``slot`` in the background, unless it has one or one is starting."""
        if slot.worker is None and slot.starting is None and not self._closed:
            slot.starting = asyncio.ensure_future(self._start_worker())
            slot.starting.add_done_callback(functools.partial(self._worker_started, slot))

    def _worker_started(self, slot: _Slot, starting: asyncio.Future[_Worker]) -> None:
        slot.starting = None
        if starting.cancelled() or starting.exception() is not None:
            return  # whoever awaits the start sees its exception; the next task tries again
        slot.worker = starting.result()
        if self._closed:
            slot.worker.process.kill()

    async def _start_worker(self) -> _Worker:
        task_reader, task_writer = _context.Pipe(duplex=False)
        answer_reader, answer_writer = _context.Pipe(duplex=False)
        process = _context.Process(
            target=_worker_main, args=(task_reader, answer_writer, self.memory_limit_mb), daemon=True
        )
        try:
            # Starting talks to the fork server (and starts it the first time): keep that off the loop.
            await asyncio.to_thread(process.start)
        except BaseException:
            task_writer.close()
            answer_reader.close()
            raise
        finally:
            task_reader.close()
            answer_writer.close()
        self._processes.add(process)
        os.set_blocking(task_writer.fileno(), False)
        os.set_blocking(answer_reader.fileno(), False)
        return _Worker(process, task_writer, answer_reader)

    async def _replace(self, slot: _Slot, *, kill: bool) -> int | None:
        """Stop the slot's worker (kill it, or wait for it to exit), start another; the old one's exit code."""
        worker, slot.worker = slot.worker, None
        self._start_worker_in(slot)
        return await self._stop(worker, kill=kill) if worker is not None else None

    def _retire(self, slot: _Slot) -> None:
        """Let the slot's worker exit (it reads the end of its task pipe) and start another, both in the background."""
        worker, slot.worker = slot.worker, None
        self._start_worker_in(slot)
        if worker is not None:
            stopping = asyncio.ensure_future(self._stop(worker, kill=False))
            self._stopping.add(stopping)
            stopping.add_done_callback(self._stopping.discard)

    async def _stop(self, worker: _Worker, *, kill: bool) -> int | None:
        """Kill ``worker`` or give it 5 s to exit by itself (then kill it); its exit code."""
        if kill:
            worker.process.kill()
        worker.close_pipes()
        return await self._reap(worker.process, grace_s=0.0 if kill else 5.0)

    async def _reap(self, process: multiprocessing.process.BaseProcess, grace_s: float) -> int | None:
        """Wait up to ``grace_s`` for ``process`` to exit, then kill it (only this one); its exit code."""
        loop = asyncio.get_running_loop()
        exited = loop.create_future()
        loop.add_reader(process.sentinel, lambda: exited.done() or exited.set_result(None))
        try:
            try:
                await asyncio.wait_for(asyncio.shield(exited), grace_s)
            except TimeoutError:
                process.kill()
                await asyncio.shield(exited)
        finally:
            loop.remove_reader(process.sentinel)
        process.join()
        exit_code = process.exitcode
        process.close()
        self._processes.discard(process)
        return exit_code

    async def warm_up(self) -> None:
        """Start every worker now (and the fork server with its imports, the first time), not with the first tasks."""
        for slot in self._slots:
            self._start_worker_in(slot)
        await asyncio.gather(*(asyncio.shield(slot.starting) for slot in self._slots if slot.starting is not None))

    async def close(self) -> None:
        """Refuse new tasks, kill every worker (running tasks' callers get ``Busy``) and reap them."""
        self._closed = True
        for process in list(self._processes):
            try:
                process.kill()
            except ValueError:  # already closed
                pass
        starting = [asyncio.shield(slot.starting) for slot in self._slots if slot.starting is not None]
        await asyncio.gather(*starting, return_exceptions=True)  # a worker that starts now is killed at once
        for slot in list(self._idle_slots):
            if slot.worker is not None:
                await self._replace(slot, kill=True)
        await asyncio.gather(*self._stopping, return_exceptions=True)
        deadline = time.monotonic() + 10.0
        while (self._processes or self._running) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
