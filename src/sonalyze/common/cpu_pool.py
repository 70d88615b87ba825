"""CPU-bound work off the event loop: one child process per task, a bound on how many, a kill per timeout.

Each task runs ``fn(*args, **kwargs)`` in a fresh process forked from a ``forkserver`` that has
already imported numpy/scipy and the acoustics code, so a task starts in milliseconds and a crash or a
runaway task takes down only its own process. The parent never blocks: the child writes
length-prefixed pickles to a pipe that the parent reads without blocking (``loop.add_reader``), and
the child's exit is watched through its sentinel.

    pool = CpuPool(max_workers=1, max_queued=4)
    result = await pool.run(analyze, path, timeout_s=120, on_progress=lambda f, msg: ...)

Refusals (all :class:`~sonalyze.common.errors.SonalyzeError`): :class:`~sonalyze.common.errors.Busy`
(503, ``busy``, ``Retry-After``) when ``max_workers`` tasks run and ``max_queued`` wait already;
:class:`TaskTimeout` (504, ``timeout``) when a task outlives ``timeout_s`` (its process is killed);
:class:`WorkerCrashed` (500, ``worker_crashed``) when the process dies without an answer;
:class:`TaskFailed` (500, ``task_failed``) when ``fn`` raised an exception that cannot be pickled.
An exception that pickles (``ValueError``...) is re-raised as itself, with the child's traceback as
its ``__cause__``.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import pickle
import struct
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from sonalyze.common.errors import Busy, SonalyzeError

ProgressCallback = Callable[[float, str], None]

DEFAULT_PRELOAD = ("numpy", "scipy.signal", "soundfile", "sonalyze.acoustics", "sonalyze.common.cpu_pool")
"""Imported once in the fork server, so every task process starts with them loaded."""

_context = multiprocessing.get_context("forkserver")
_preload_set = False


class TaskTimeout(SonalyzeError):
    code, status_code = "timeout", 504


class WorkerCrashed(SonalyzeError):
    code, status_code = "worker_crashed", 500


class TaskFailed(SonalyzeError):
    code, status_code = "task_failed", 500


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a task process (attached as ``__cause__``)."""

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


def _noop() -> None:
    """The task of :meth:`CpuPool.warm_up`."""


def _send(conn: Connection, message: tuple[str, Any]) -> None:
    """Write one length-prefixed pickle to the pipe (blocking: the child has nothing else to do)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_FRAME_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(conn.fileno(), view) :]


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


def _task_main(conn: Connection, fn: Callable[..., Any], args: tuple, kwargs: dict, with_progress: bool) -> None:
    """Entry point of a task process: run ``fn``, send ``("result", value)`` or ``("error", ...)``."""

    def progress(fraction: float, message: str) -> None:
        _send(conn, ("progress", (float(fraction), str(message))))

    try:
        if with_progress:
            kwargs = {**kwargs, "progress": progress}
        _send(conn, ("result", fn(*args, **kwargs)))
    except BaseException as exc:  # everything, including SystemExit, goes back to the parent
        _send(conn, ("error", _portable_exception(exc)))
    finally:
        conn.close()


class CpuPool:
    """At most ``max_workers`` task processes at once and ``max_queued`` tasks waiting for one."""

    def __init__(self, max_workers: int, max_queued: int, *, preload: Sequence[str] = DEFAULT_PRELOAD) -> None:
        if max_workers < 1 or max_queued < 0:
            raise ValueError("max_workers must be >= 1 and max_queued >= 0")
        global _preload_set
        if not _preload_set:
            # The fork server is shared by the whole process; its preload list counts only before it starts.
            _context.set_forkserver_preload(list(preload))
            _preload_set = True
        self.max_workers = max_workers
        self.max_queued = max_queued
        self._slots: asyncio.Semaphore | None = None
        self._running = 0
        self._queued = 0
        self._processes: set[multiprocessing.process.BaseProcess] = set()
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

    async def run(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` in a task process and return its result (see the module doc)."""
        if self._closed:
            raise Busy("the worker pool is shutting down", headers={"Retry-After": "5"})
        if self._running + self._queued >= self.max_workers + self.max_queued:
            raise Busy(
                f"all {self.max_workers} workers are busy and {self._queued} tasks wait; try again later",
                headers={"Retry-After": str(self.retry_after_s())},
            )
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_workers)
        self._queued += 1
        try:
            await self._slots.acquire()
        finally:
            self._queued -= 1
        self._running += 1
        started = time.monotonic()
        try:
            return await self._run_in_process(fn, args, kwargs, timeout_s, on_progress)
        finally:
            self._running -= 1
            self._slots.release()
            self._mean_duration_s = 0.8 * self._mean_duration_s + 0.2 * (time.monotonic() - started)

    async def _run_in_process(
        self,
        fn: Callable[..., Any],
        args: tuple,
        kwargs: dict,
        timeout_s: float | None,
        on_progress: ProgressCallback | None,
    ) -> Any:
        loop = asyncio.get_running_loop()
        reader, writer = _context.Pipe(duplex=False)
        process = _context.Process(
            target=_task_main, args=(writer, fn, args, kwargs, on_progress is not None), daemon=True
        )
        outcome: asyncio.Future[tuple[str, Any]] = loop.create_future()
        exit_code: int | None = None

        frames = _FrameReader()
        fd = reader.fileno()

        def on_readable() -> None:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            messages = frames.feed(data) if data else [("crashed", None)]
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

        # Starting talks to the fork server (and starts it the first time): keep that off the loop.
        starting = asyncio.ensure_future(asyncio.to_thread(process.start))
        try:
            await asyncio.shield(starting)
            self._processes.add(process)
            if self._closed:  # close() ran while this one was starting
                process.kill()
            writer.close()
            os.set_blocking(fd, False)
            loop.add_reader(fd, on_readable)
            try:
                kind, payload = await asyncio.wait_for(asyncio.shield(outcome), timeout_s)
            except TimeoutError:
                raise TaskTimeout(
                    f"the task took longer than {timeout_s:g} s and was stopped", details={"timeout_s": timeout_s}
                ) from None
        finally:
            if not starting.done():  # cancelled while starting: let it start, then stop it
                await asyncio.wait([starting])
            finished = outcome.done()
            if not finished:
                loop.remove_reader(fd)
                outcome.cancel()
            reader.close()
            writer.close()
            # A task that answered exits by itself; a timed-out or cancelled one is killed at once.
            exit_code = await self._reap(process, grace_s=5.0 if finished else 0.0)
        if kind == "result":
            return payload
        if kind == "error":
            exc, summary, remote_traceback = payload
            if exc is None:
                raise TaskFailed(summary) from RemoteTraceback(remote_traceback)
            raise exc from RemoteTraceback(remote_traceback)
        if self._closed:
            raise Busy("the worker pool is shutting down", headers={"Retry-After": "5"})
        raise WorkerCrashed(f"the worker process died (exit code {exit_code}) before answering")

    async def _reap(self, process: multiprocessing.process.BaseProcess, grace_s: float) -> int | None:
        """Wait up to ``grace_s`` for ``process`` to exit, then kill it (only this one); its exit code."""
        if process.pid is None:
            return None
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
        """Start the fork server and let it import the preload modules now, not on the first task."""
        await self._run_in_process(_noop, (), {}, None, None)

    async def close(self) -> None:
        """Refuse new tasks and kill the running ones (their callers get ``Busy``)."""
        self._closed = True
        for process in list(self._processes):
            try:
                process.kill()
            except ValueError:  # already closed
                pass
        deadline = time.monotonic() + 10.0
        while (self._processes or self._running) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
