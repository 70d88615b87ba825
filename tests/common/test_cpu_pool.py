"""``CpuPool``: real task processes — results, exceptions, progress, the bound, timeouts, crashes."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from sonalyze.common.cpu_pool import CpuPool, TaskFailed, TaskTimeout, WorkerCrashed
from sonalyze.common.errors import Busy
from tests.common.cpu_tasks import (
    exit_abruptly,
    raise_unpicklable,
    raise_value_error,
    report_steps,
    sum_of_squares,
    wait_for_file,
)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child that is not yet reaped is a zombie: not alive for us.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


@pytest.fixture
async def pool():
    pool = CpuPool(max_workers=2, max_queued=1)
    yield pool
    await pool.close()


async def test_result_with_args_and_kwargs(pool):
    await pool.warm_up()  # starts the fork server; not a task of the pool
    assert pool.running == 0 and pool.queued == 0
    assert await pool.run(sum_of_squares, 10, offset=5) == sum(i * i for i in range(10)) + 5
    assert pool.running == 0 and pool.queued == 0


async def test_exception_is_reraised_with_its_type_and_message(pool):
    with pytest.raises(ValueError, match="bad sweep") as caught:
        await pool.run(raise_value_error, "bad sweep")
    assert "raise_value_error" in str(caught.value.__cause__)  # the child's traceback travels along
    with pytest.raises(TaskFailed, match=r"Unpicklable: 1\+2"):
        await pool.run(raise_unpicklable)


async def test_progress_reaches_the_event_loop_in_order(pool):
    seen: list[tuple[float, str]] = []
    result = await pool.run(report_steps, 4, on_progress=lambda fraction, text: seen.append((fraction, text)))
    assert result == "finished"
    assert seen == [(0.25, "step 1"), (0.5, "step 2"), (0.75, "step 3"), (1.0, "step 4")]


async def test_event_loop_stays_free_while_a_task_runs(pool, tmp_path):
    """The task waits for a file that only this event loop creates: a blocked loop would deadlock."""
    signal = tmp_path / "go"
    task = asyncio.create_task(pool.run(wait_for_file, str(signal), timeout_s=60))
    while pool.running == 0:
        await asyncio.sleep(0.01)
    assert not task.done()
    signal.touch()
    pid = await task
    assert pid != os.getpid()


async def test_busy_beyond_workers_plus_queue(pool, tmp_path):
    signal = tmp_path / "go"
    tasks = [asyncio.create_task(pool.run(wait_for_file, str(signal), timeout_s=60)) for _ in range(3)]
    while pool.running + pool.queued < 3:
        await asyncio.sleep(0.01)
    assert (pool.running, pool.queued) == (2, 1)
    with pytest.raises(Busy) as caught:
        await pool.run(sum_of_squares, 3)
    assert caught.value.status_code == 503 and caught.value.code == "busy"
    assert int(caught.value.headers["Retry-After"]) >= 1
    signal.touch()
    pids = await asyncio.gather(*tasks)
    assert len(set(pids)) == 3  # one process per task
    assert await pool.run(sum_of_squares, 3) == 5  # capacity is back


async def test_timeout_kills_only_that_task(pool, tmp_path):
    signal = tmp_path / "go"
    pids: dict[str, int] = {}

    def remember(name: str):
        return lambda _fraction, text: pids.setdefault(name, int(text))

    survivor = asyncio.create_task(
        pool.run(wait_for_file, str(signal), timeout_s=120, on_progress=remember("survivor"))
    )
    with pytest.raises(TaskTimeout) as caught:
        await pool.run(wait_for_file, str(tmp_path / "never"), timeout_s=3.0, on_progress=remember("late"))
    assert caught.value.status_code == 504 and caught.value.code == "timeout"
    assert not _pid_alive(pids["late"])
    assert _pid_alive(pids["survivor"]) and not survivor.done()
    signal.touch()
    assert await survivor == pids["survivor"]


async def test_a_crashed_worker_is_reported(pool):
    with pytest.raises(WorkerCrashed, match="exit code 3"):
        await pool.run(exit_abruptly)
    assert await pool.run(sum_of_squares, 2) == 1


async def test_cancelling_the_caller_kills_the_process(pool, tmp_path):
    pids: list[int] = []
    task = asyncio.create_task(
        pool.run(wait_for_file, str(tmp_path / "never"), on_progress=lambda _f, text: pids.append(int(text)))
    )
    while not pids:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _pid_alive(pids[0])
    assert pool.running == 0


async def test_close_stops_running_tasks_and_refuses_new_ones(tmp_path):
    pool = CpuPool(max_workers=1, max_queued=0)
    task = asyncio.create_task(pool.run(wait_for_file, str(tmp_path / "never")))
    while pool.running == 0:
        await asyncio.sleep(0.01)
    await pool.close()
    with pytest.raises(Busy):
        await task
    with pytest.raises(Busy):
        await pool.run(sum_of_squares, 2)
