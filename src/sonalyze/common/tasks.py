"""CPU work (analyses, simulations) as tasks: one interface, two runners.

    tasks = task_runner(settings, "analysis", local=lambda: CpuPool(1, 4))
    running = await tasks.submit(analyze_uploads, task, timeout_s=300, on_progress=lambda f, msg: ...)
    result = await running          # fn's result, or the errors below

:meth:`TaskRunner.submit` answers at once: :class:`~sonalyze.common.errors.Busy` (503, ``busy``,
``Retry-After``) when the bound is reached, else a handle (an ``asyncio.Task``) whose await gives
``fn(*args, **kwargs)``'s result; cancelling it stops waiting (and the work, where it can). The errors
are :mod:`sonalyze.common.cpu_pool`'s: :class:`TaskTimeout` (504), :class:`WorkerCrashed` (500),
:class:`TaskFailed` (500, an exception that cannot be pickled), or ``fn``'s own exception.

* :class:`LocalTasks` (``TASK_QUEUE_URL`` empty, the embedded default): the replica's own
  :class:`~sonalyze.common.cpu_pool.CpuPool`; its bound is the pool's workers plus waiting places.
* :class:`QueueTasks` (``TASK_QUEUE_URL=redis://host:port/db``): Dramatiq over Redis; the work runs in
  ``sonalyze worker`` processes on any machine (:func:`worker_main`). Dramatiq acknowledges a message only
  after the actor returned, and its Redis broker puts a dead worker's unacknowledged messages back on the
  queue once that worker's heartbeat is older than ``TASK_QUEUE_HEARTBEAT_TIMEOUT_S``: a task in flight on
  a killed worker runs again on another. The bound is ``TASK_QUEUE_MAX`` tasks submitted and not answered
  (queued or running, over every replica), kept in a Redis sorted set.

Per task the worker writes to Redis (``sonalyze:task:{id}:*``): an event list the submitter blocks on
(``started`` with the worker's pid, ``progress``, ``done``) and the outcome, set once (``SET NX``). A task
run twice (its worker died after starting, or the heartbeat was late) therefore answers one outcome, and a
run that finds an outcome already there does not compute again: the service records the result once.
A submitter that stops waiting (timeout, cancel) sets ``cancel``: a worker that has not started the task
skips it; one that has started finishes it (a thread cannot be killed) and its outcome expires unread.

The messages carry pickled calls (like Celery's pickle serializer): the Redis must be reachable only by
the services and the workers. Inputs that are files travel as blob keys (``sonalyze.common.blobs``): a
worker on another machine needs ``BLOB_URL`` to name a store it reaches (S3, or a shared folder).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings

from sonalyze.common.cpu_pool import (
    CpuPool,
    ProgressCallback,
    TaskTimeout,
    _portable_exception,
    _rss_mb,
    outcome_value,
)
from sonalyze.common.errors import Busy

log = logging.getLogger(__name__)

QUEUES = ("analysis", "simulation")
"""Dramatiq queues: one per kind of task, so each can be scaled and watched on its own."""
KEY_PREFIX = "sonalyze:task"
OUTCOME_TTL_S = 3600
"""How long a task's outcome and events stay in Redis for a submitter to read."""
START_GRACE_S = 5.0
"""Added to ``timeout_s`` after a task started before its submitter gives up (the worker's own limit is
``timeout_s``: it answers ``timeout`` first)."""


class TaskQueueSettings(BaseSettings):
    """``TASK_QUEUE_*``, whatever the service's env prefix (also read by ``sonalyze worker``)."""

    task_queue_url: str = Field(
        "",
        validation_alias=AliasChoices("task_queue_url", "TASK_QUEUE_URL"),
        description="redis://host:port/db of the Dramatiq broker; empty: analyses and simulations run in this process's pool",
    )
    task_queue_max: int = Field(
        100,
        ge=1,
        le=100_000,
        validation_alias=AliasChoices("task_queue_max", "TASK_QUEUE_MAX"),
        description="tasks of one kind queued or running over every replica before submit answers 503 busy",
    )
    task_queue_heartbeat_timeout_s: float = Field(
        15.0,
        gt=0,
        le=3600,
        validation_alias=AliasChoices("task_queue_heartbeat_timeout_s", "TASK_QUEUE_HEARTBEAT_TIMEOUT_S"),
        description="a worker silent this long is taken for dead and its running tasks are queued again",
    )
    task_queue_max_tasks_per_process: int = Field(
        1000,
        ge=1,
        validation_alias=AliasChoices("task_queue_max_tasks_per_process", "TASK_QUEUE_MAX_TASKS_PER_PROCESS"),
        description="a `sonalyze worker` process is replaced by a new one after this many tasks",
    )
    task_queue_max_process_rss_mb: float = Field(
        1024.0,
        gt=0,
        validation_alias=AliasChoices("task_queue_max_process_rss_mb", "TASK_QUEUE_MAX_PROCESS_RSS_MB"),
        description="... or after a task that leaves its resident memory above this (MB)",
    )


class TaskRunner(Protocol):
    async def submit(
        self, fn: Callable[..., Any], /, *args: Any, timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None, **kwargs: Any,
    ) -> asyncio.Task[Any]:
        """Busy now, or the running task (see the module doc)."""

    def health(self) -> dict[str, Any]:
        """Counts for ``/healthz``."""

    async def ready(self) -> str | None:
        """None when tasks can be submitted, else why not (``/readyz``)."""

    async def warm_up(self) -> None:
        """Start the local workers now rather than with the first task."""

    async def close(self) -> None:
        """Refuse new tasks; stop waiting for the running ones (their callers get Busy or CancelledError)."""


def task_runner(settings: TaskQueueSettings, queue: str, local: Callable[[], CpuPool]) -> TaskRunner:
    """``QueueTasks`` on ``queue`` when ``TASK_QUEUE_URL`` is set, else ``LocalTasks`` on ``local()``."""
    if settings.task_queue_url:
        return QueueTasks(
            settings.task_queue_url,
            queue,
            max_in_flight=settings.task_queue_max,
            heartbeat_timeout_s=settings.task_queue_heartbeat_timeout_s,
        )
    return LocalTasks(local())


class LocalTasks:
    """The embedded default: the replica's own :class:`CpuPool`, at most its workers plus waiting places."""

    def __init__(self, pool: CpuPool) -> None:
        self.pool = pool
        self._pending: set[asyncio.Task[Any]] = set()

    async def submit(
        self, fn: Callable[..., Any], /, *args: Any, timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None, **kwargs: Any,
    ) -> asyncio.Task[Any]:
        if len(self._pending) >= self.pool.max_workers + self.pool.max_queued:
            raise Busy(
                f"{len(self._pending)} tasks are running or waiting; try again later",
                headers={"Retry-After": str(self.pool.retry_after_s())},
            )
        task = asyncio.create_task(self.pool.run(fn, *args, timeout_s=timeout_s, on_progress=on_progress, **kwargs))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    def health(self) -> dict[str, Any]:
        return {
            "running": self.pool.running,
            "queued": self.pool.queued,
            "max_workers": self.pool.max_workers,
            "max_queued": self.pool.max_queued,
        }

    async def ready(self) -> str | None:
        return None

    async def warm_up(self) -> None:
        await self.pool.warm_up()

    async def close(self) -> None:
        await self.pool.close()


# ---- the Dramatiq queue ----

_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local count = redis.call('ZCARD', KEYS[1])
if count >= tonumber(ARGV[3]) then return {0, count} end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
return {1, count + 1}
"""
"""Admit one task if fewer than ARGV[3] are in flight (entries past their expiry ARGV[1] are dropped:
a submitter that died never removes its own)."""


def _keys(task_id: str) -> tuple[str, str, str]:
    """(events, outcome, cancel) keys of one task."""
    base = f"{KEY_PREFIX}:{task_id}"
    return f"{base}:events", f"{base}:outcome", f"{base}:cancel"


def _in_flight_key(queue: str) -> str:
    return f"{KEY_PREFIX}s:{queue}:in_flight"


def _actor_name(queue: str) -> str:
    return f"sonalyze_{queue}"


def _wake_key(queue: str) -> str:
    return f"{KEY_PREFIX}s:{queue}:wake"


WAKE_TOKENS_MAX = 64
"""Wake-up tokens kept per queue (one per submitted task; a token nobody takes costs one empty fetch)."""


def redis_broker(url: str, heartbeat_timeout_s: float) -> Any:
    """A Dramatiq Redis broker on ``url`` with the task actor declared on every queue of :data:`QUEUES`.

    Dramatiq's Redis consumer polls an empty queue with a growing sleep, so an idle worker starts a task
    up to its poll interval late, or burns CPU polling often (8.5 % of a core per idle process at 20 ms,
    bench/task_queue.md). Here an idle consumer blocks on a wake-up list instead (``BLPOP`` for up to the
    poll interval), which the submitter pushes a token to after each message: the task starts at once and
    an idle worker asks Redis about once per interval. A consumer whose process has all the messages it may
    take waits for one of them to be acknowledged (an event its ``ack`` sets), not on a timer: it fetches
    the next message as soon as a task ends and does not wake while the task runs. Maintenance (putting a
    dead worker's messages back) runs on 10 % of the broker's calls rather than 0.1 %, as calls are that
    much rarer.
    """
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
    from dramatiq.broker import MessageProxy
    from dramatiq.errors import ConnectionClosed
    from dramatiq.message import Message
    import redis

    class WakingConsumer(_RedisConsumer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.settled = threading.Event()
            """Set by a worker thread once it acknowledged (or rejected) one of this consumer's messages."""

        def ack(self, message: Any) -> None:
            try:
                super().ack(message)
            finally:
                self.settled.set()

        def nack(self, message: Any) -> None:
            try:
                super().nack(message)
            finally:
                self.settled.set()

        def __next__(self) -> Any:
            try:
                while True:
                    if self.message_cache:
                        message = Message.decode(self.message_cache.pop(0))
                        self.queued_message_ids.add(message.message_id)
                        return MessageProxy(message)
                    self.settled.clear()  # before the count: an ack after it sets the event, one before it is counted
                    if self.outstanding_message_count >= self.prefetch or _retiring.is_set():
                        self.settled.wait(self.timeout / 1000)  # its tasks run, or it retires
                        return None
                    self.message_cache = self.broker.do_fetch(self.queue_name, self.prefetch - self.outstanding_message_count)
                    if not self.message_cache:
                        self.broker.client.blpop([_wake_key(self.queue_name)], timeout=self.timeout / 1000)
                        return None
            except redis.ConnectionError as exc:
                raise ConnectionClosed(exc) from None

    class WakingRedisBroker(RedisBroker):
        @property
        def consumer_class(self) -> Any:
            return WakingConsumer

    broker = WakingRedisBroker(url=url, heartbeat_timeout=int(heartbeat_timeout_s * 1000), maintenance_chance=100_000)
    for queue in QUEUES:
        # max_retries=0: the actor never raises (it stores fn's exception as the outcome); a task runs again
        # only when its worker died before acknowledging it.
        dramatiq.actor(_execute, broker=broker, actor_name=_actor_name(queue), queue_name=queue, max_retries=0)
    return broker


class QueueTasks:
    """Tasks on Dramatiq's Redis broker, run by ``sonalyze worker`` processes."""

    def __init__(self, url: str, queue: str, *, max_in_flight: int, heartbeat_timeout_s: float = 15.0) -> None:
        import redis.asyncio as aioredis

        if queue not in QUEUES:
            raise ValueError(f"queue must be one of {QUEUES}")
        self.url = url
        self.queue = queue
        self.max_in_flight = max_in_flight
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._broker = redis_broker(url, heartbeat_timeout_s)
        self._actor = self._broker.get_actor(_actor_name(queue))
        self._redis = aioredis.from_url(url)
        self._admit = self._redis.register_script(_ADMIT)
        self._waiting: set[asyncio.Task[Any]] = set()
        self._reads: set[asyncio.Future[Any]] = set()
        self._started = 0
        self._closed = False
        self._mean_duration_s = 1.0

    async def submit(
        self, fn: Callable[..., Any], /, *args: Any, timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None, **kwargs: Any,
    ) -> asyncio.Task[Any]:
        if self._closed:
            raise Busy("the service is shutting down", headers={"Retry-After": "5"})
        call = pickle.dumps((fn, args, kwargs, on_progress is not None), protocol=pickle.HIGHEST_PROTOCOL)
        task_id = uuid.uuid4().hex
        now_s = time.time()
        expiry_s = now_s + 2 * (timeout_s or 3600.0) + 600.0
        admitted, count = await self._admit(keys=[_in_flight_key(self.queue)], args=[now_s, expiry_s, self.max_in_flight, task_id])
        if not admitted:
            raise Busy(
                f"{count} {self.queue} tasks are queued or running (TASK_QUEUE_MAX {self.max_in_flight}); try again later",
                headers={"Retry-After": str(await self._retry_after_s(count))},
            )
        try:
            options = {"time_limit": int(timeout_s * 1000)} if timeout_s is not None else {}
            encoded = base64.b64encode(call).decode("ascii")
            await asyncio.to_thread(self._actor.send_with_options, args=(task_id, encoded), **options)
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.rpush(_wake_key(self.queue), b"1")
                pipe.ltrim(_wake_key(self.queue), -WAKE_TOKENS_MAX, -1)
                pipe.expire(_wake_key(self.queue), OUTCOME_TTL_S)
                await pipe.execute()
        except BaseException:
            await self._redis.zrem(_in_flight_key(self.queue), task_id)
            raise
        task = asyncio.create_task(self._await(task_id, timeout_s, on_progress), name=f"task-{task_id}")
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)
        return task

    async def _await(self, task_id: str, timeout_s: float | None, on_progress: ProgressCallback | None) -> Any:
        """Follow the task's events until ``done``; its outcome as the result or the exception."""
        events, outcome_key, cancel = _keys(task_id)
        deadline: float | None = None
        started_at: float | None = None
        answered = False
        try:
            while True:
                wait_s = 1.0 if deadline is None else min(1.0, max(0.01, deadline - time.monotonic()))
                item = await self._blpop(events, wait_s)
                if item is None:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise TaskTimeout(
                            f"the task took longer than {timeout_s:g} s and was given up", details={"timeout_s": timeout_s}
                        )
                    continue
                kind, *values = pickle.loads(item[1])
                if kind == "started":
                    if started_at is None:
                        self._started += 1
                    started_at = time.monotonic()  # again when a second worker took it over
                    if timeout_s is not None:
                        deadline = started_at + timeout_s + START_GRACE_S
                elif kind == "progress":
                    if on_progress is not None:
                        on_progress(*values)
                elif kind == "done":
                    data = await self._redis.get(outcome_key)
                    if data is None:
                        continue  # expired meanwhile: cannot happen within OUTCOME_TTL_S
                    answered = True
                    if started_at is not None:
                        self._mean_duration_s = 0.8 * self._mean_duration_s + 0.2 * (time.monotonic() - started_at)
                    return _unpack_outcome(data)
        finally:
            if started_at is not None:
                self._started -= 1
            await asyncio.shield(self._forget(task_id, answered))

    async def _blpop(self, key: str, wait_s: float) -> Any:
        """``BLPOP`` that a cancel does not interrupt (redis-py can hang cancelling a blocking read): the
        caller stops waiting at once, the read ends by itself within ``wait_s``."""
        read = asyncio.ensure_future(self._redis.blpop([key], timeout=wait_s))
        self._reads.add(read)
        read.add_done_callback(self._reads.discard)
        return await asyncio.shield(read)

    async def _forget(self, task_id: str, answered: bool) -> None:
        events, outcome_key, cancel = _keys(task_id)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrem(_in_flight_key(self.queue), task_id)
                if answered:
                    pipe.delete(events, outcome_key)
                else:  # given up: a worker that has not started it skips it
                    pipe.set(cancel, b"1", ex=OUTCOME_TTL_S)
                await pipe.execute()
        except Exception:  # Redis away: the entries expire by themselves
            log.warning("could not clear task %s in Redis", task_id, exc_info=True)

    async def _retry_after_s(self, in_flight: int) -> int:
        """A hint: the tasks ahead over the live Dramatiq processes, times recent task durations."""
        try:
            live = await self._redis.zcount("dramatiq:__heartbeats__", (time.time() - self.heartbeat_timeout_s) * 1000, "+inf")
        except Exception:
            live = 1
        return max(1, math.ceil(self._mean_duration_s * max(1.0, in_flight / max(1, live))))

    def health(self) -> dict[str, Any]:
        waiting = len(self._waiting)
        return {
            "running": self._started,
            "queued": waiting - self._started,
            "max_queued": self.max_in_flight,
            "task_queue": "redis",
        }

    async def ready(self) -> str | None:
        try:
            await asyncio.wait_for(self._redis.ping(), 2.0)
        except Exception as exc:
            return f"the task queue's Redis does not answer: {type(exc).__name__}"
        return None

    async def warm_up(self) -> None:
        return None

    async def close(self) -> None:
        self._closed = True
        for task in list(self._waiting):
            task.cancel()
        await asyncio.gather(*self._waiting, return_exceptions=True)
        await asyncio.gather(*self._reads, return_exceptions=True)
        await self._redis.aclose()
        await asyncio.to_thread(self._broker.close)


def _unpack_outcome(data: bytes) -> Any:
    return outcome_value(*pickle.loads(data))


# ---- in a worker process (``sonalyze worker``) ----

_worker_redis: Any = None
_retiring = threading.Event()
"""Set in a worker process that takes no more messages (:func:`recycling`)."""


def _execute(task_id: str, encoded: str) -> None:
    """The Dramatiq actor: run the pickled call once per task id and publish its outcome (module doc)."""
    from dramatiq.middleware.time_limit import TimeLimitExceeded

    events, outcome_key, cancel = _keys(task_id)
    client = _worker_redis

    def push(*event: Any, outcome: bytes | None = None) -> None:
        """One round trip: the event (after the outcome, when given: set once, a second run leaves the first)."""
        with client.pipeline(transaction=False) as pipe:
            if outcome is not None:
                pipe.set(outcome_key, outcome, nx=True, ex=OUTCOME_TTL_S)
            pipe.rpush(events, pickle.dumps(event))
            pipe.expire(events, OUTCOME_TTL_S)
            pipe.execute()

    with client.pipeline(transaction=False) as pipe:
        ran, cancelled = pipe.exists(outcome_key).exists(cancel).execute()
    if ran:  # ran before: answer again (its worker may have died before "done")
        push("done")
        return
    if cancelled:
        return
    fn, args, kwargs, with_progress = pickle.loads(base64.b64decode(encoded))
    push("started", os.getpid(), socket.gethostname())
    if with_progress:
        kwargs = {**kwargs, "progress": lambda fraction, message: push("progress", float(fraction), str(message))}
    started = time.monotonic()
    try:
        outcome: tuple[str, Any] = ("result", fn(*args, **kwargs))
    except TimeLimitExceeded:
        elapsed_s = time.monotonic() - started
        stopped = TaskTimeout(f"the task took longer than its limit and was stopped after {elapsed_s:.0f} s")
        outcome = ("error", (stopped, str(stopped), ""))
    except BaseException as exc:  # everything goes back to the submitter
        outcome = ("error", _portable_exception(exc))
    try:
        data = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        data = pickle.dumps(("error", (None, f"the task's answer cannot be sent back: {exc}", "")))
    push("done", outcome=data)


def setup_worker() -> None:
    """Called by Dramatiq in each worker process (``sonalyze worker``): the broker from the environment,
    with :func:`recycling`; BLAS single-threaded (the processes are the parallelism, bench/simulation.md)."""
    import dramatiq
    import redis
    from threadpoolctl import threadpool_limits

    global _worker_redis
    settings = TaskQueueSettings()
    if not settings.task_queue_url:
        raise SystemExit("sonalyze worker needs TASK_QUEUE_URL (redis://host:port/db)")
    threadpool_limits(limits=1)
    _worker_redis = redis.Redis.from_url(settings.task_queue_url)
    broker = redis_broker(settings.task_queue_url, settings.task_queue_heartbeat_timeout_s)
    broker.add_middleware(recycling(settings.task_queue_max_tasks_per_process, settings.task_queue_max_process_rss_mb))
    dramatiq.set_broker(broker)


def recycling(max_tasks: int, max_rss_mb: float) -> Any:
    """A Dramatiq middleware that retires its worker process after ``max_tasks`` tasks, or after a task that
    leaves its resident memory above ``max_rss_mb`` (a long-lived Python process keeps the peak heap of its
    largest task). Before that task's acknowledgement the process stops fetching messages (``_retiring``);
    after it, it asks the process's Dramatiq master to stop (SIGTERM): Dramatiq stops the process
    gracefully (tasks running finish and are acknowledged, prefetched messages go back to the queue) and
    :func:`worker_main` starts a new one. Dramatiq has no such option: its maintainer declined a
    max-tasks-per-child middleware (Bogdanp/dramatiq#236), and its example restarts every process of a
    master at once (SIGHUP), so each master here runs one process."""
    import dramatiq

    class Recycling(dramatiq.Middleware):
        def __init__(self) -> None:
            self.tasks = 0
            self.retiring = False
            self.signalled = False
            self.lock = threading.Lock()

        def before_ack(self, broker: Any, message: Any) -> None:
            with self.lock:
                self.tasks += 1
                if self.retiring or (self.tasks < max_tasks and _rss_mb(os.getpid()) <= max_rss_mb):
                    return
                self.retiring = True
            _retiring.set()

        def after_ack(self, broker: Any, message: Any) -> None:
            with self.lock:
                if not self.retiring or self.signalled:
                    return
                self.signalled = True
            log.info("worker process %d retires after %d tasks (%.0f MB resident)", os.getpid(), self.tasks, _rss_mb(os.getpid()))
            os.kill(os.getppid(), signal.SIGTERM)

        before_nack = before_ack
        after_nack = after_ack

    return Recycling()


WORKER_PRELOAD = ("sonalyze.measurement.analysis", "sonalyze.simulation.worker")
"""Imported by each worker process before its first task (pyroomacoustics alone takes about a second)."""


def worker_main(*, processes: int, threads: int, queues: Sequence[str], poll_ms: int = 1000) -> int:
    """``sonalyze worker``: ``processes`` Dramatiq workers on ``queues``, each a Dramatiq master (its CLI:
    signals, graceful stop) with one worker process; a master that ends cleanly while the others run was
    recycled (:func:`recycling`) and is started again; one that fails stops the others, and its exit code
    is this one's (Dramatiq's own rule).

    ``threads`` tasks at once per process (1 for CPU-bound work); each process takes at most that many
    messages at a time, so a message never waits behind a busy process while another is idle. ``poll_ms``:
    how long an idle process waits for a wake-up before asking Redis again (:func:`redis_broker`); it must
    stay well below ``TASK_QUEUE_HEARTBEAT_TIMEOUT_S``, since each ask is the process's heartbeat.
    SIGTERM is passed on to the masters; SIGINT (Ctrl-C) reaches every process of the group by itself.
    """
    from sonalyze.common.logging import configure_logging

    configure_logging("worker")
    env = {**os.environ, "dramatiq_queue_prefetch": str(threads), "dramatiq_worker_timeout": str(poll_ms)}
    command = [
        sys.executable, "-m", "dramatiq", "sonalyze.common.tasks:setup_worker", *WORKER_PRELOAD,
        "--processes", "1", "--threads", str(threads), "--queues", *queues, "--worker-shutdown-timeout", "600000",
    ]
    masters: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def start() -> None:
        master = subprocess.Popen(command, env=env)
        masters[master.pid] = master
        if stopping:  # a signal came while it started
            master.send_signal(signal.SIGTERM)

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        if signum == signal.SIGTERM:
            for master in list(masters.values()):
                master.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(processes):
        start()
    code = 0
    while masters:
        pid, status = os.wait()
        master = masters.pop(pid, None)
        if master is None:
            continue
        master.returncode = os.waitstatus_to_exitcode(status)
        if stopping:  # asked to stop: a process retiring meanwhile gets a second SIGTERM, which Dramatiq
            continue  # answers by exiting at once (its tasks are done: it fetched none after its last)
        if master.returncode == 0:
            log.info("a worker process was recycled; starting another")
            start()
        else:
            log.error("a worker process ended with exit code %d; stopping the others", master.returncode)
            code = master.returncode
            stop(signal.SIGTERM, None)
    return 1 if code < 0 else code
