"""``CpuPool``: real worker processes — results, exceptions, progress, the bound, timeouts, crashes, reuse."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psutil
import pytest

from sonalyze.common.cpu_pool import CpuPool, TaskFailed, TaskTimeout, WorkerCrashed
from sonalyze.common.errors import Busy
from tests.common.cpu_tasks import (
    blas_thread_counts,
    exit_abruptly,
    exit_by_system_exit,
    own_pid,
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
    # It may also be reaped between the two looks: /proc then answers ESRCH.
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "zombie" not in status


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


async def test_workers_run_blas_single_threaded(pool):
    # This process's BLAS uses one thread per core; every BLAS a worker has loaded uses one thread.
    assert max(blas_thread_counts()) == os.cpu_count()
    in_worker = await pool.run(blas_thread_counts)
    assert in_worker and set(in_worker) == {1}


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
    signal, started = tmp_path / "go", []
    tasks = [
        asyncio.create_task(pool.run(wait_for_file, str(signal), timeout_s=60, on_progress=lambda _f, t: started.append(t)))
        for _ in range(3)
    ]
    while pool.running + pool.queued < 3 or len(started) < 2:
        await asyncio.sleep(0.01)
    assert (pool.running, pool.queued) == (2, 1)
    with pytest.raises(Busy) as caught:
        await pool.run(sum_of_squares, 3)
    assert caught.value.status_code == 503 and caught.value.code == "busy"
    assert int(caught.value.headers["Retry-After"]) >= 1
    signal.touch()
    pids = await asyncio.gather(*tasks)
    assert len(set(pids)) == 2  # the two warm workers served the three tasks
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


async def test_warm_up_starts_the_workers_and_tasks_reuse_them(pool, tmp_path):
    await pool.warm_up()
    started = {child.pid for child in psutil.Process().children(recursive=True)}  # the fork server and its workers
    signal, pids = tmp_path / "go", []
    both = [
        asyncio.create_task(pool.run(wait_for_file, str(signal), timeout_s=60, on_progress=lambda _f, t: pids.append(int(t))))
        for _ in range(2)
    ]
    while len(pids) < 2:  # both running at once: one on each worker
        await asyncio.sleep(0.01)
    signal.touch()
    warm_pids = set(await asyncio.gather(*both))
    assert len(warm_pids) == 2 and warm_pids <= started and os.getpid() not in warm_pids
    later_pids = {await pool.run(own_pid) for _ in range(6)}
    assert later_pids <= warm_pids  # no process started per task


async def test_a_killed_worker_is_replaced(pool, tmp_path):
    pids: list[int] = []
    with pytest.raises(TaskTimeout):
        await pool.run(wait_for_file, str(tmp_path / "never"), timeout_s=1.0, on_progress=lambda _f, t: pids.append(int(t)))
    assert not _pid_alive(pids[0])
    after = {await pool.run(own_pid) for _ in range(4)}
    assert pids[0] not in after and all(_pid_alive(pid) for pid in after)


async def test_a_worker_that_died_while_idle_is_replaced_before_its_next_task():
    pool = CpuPool(max_workers=1, max_queued=0)
    try:
        first = await pool.run(own_pid)
        os.kill(first, 9)
        while _pid_alive(first):
            await asyncio.sleep(0.01)
        second = await pool.run(own_pid)
        assert second != first and _pid_alive(second)
    finally:
        await pool.close()


async def test_unpicklable_arguments_fail_in_the_caller_and_keep_the_worker():
    pool = CpuPool(max_workers=1, max_queued=0)  # one worker: the next task must run on the same one
    try:
        worker = await pool.run(own_pid)
        with pytest.raises(Exception, match="pickle"):
            await pool.run(sum_of_squares, lambda: 3)
        assert await pool.run(own_pid) == worker
    finally:
        await pool.close()


async def test_system_exit_comes_back_as_task_failed_and_retires_the_worker():
    pool = CpuPool(max_workers=1, max_queued=0)
    try:
        worker = await pool.run(own_pid)
        with pytest.raises(TaskFailed, match="SystemExit: 4"):
            await pool.run(exit_by_system_exit)
        assert await pool.run(own_pid) != worker
    finally:
        await pool.close()


async def test_workers_are_recycled_after_max_tasks_and_above_max_memory():
    by_count = CpuPool(max_workers=1, max_queued=0, max_tasks_per_worker=3)
    by_memory = CpuPool(max_workers=1, max_queued=0, max_worker_rss_mb=0.0)
    try:
        pids = [await by_count.run(own_pid) for _ in range(7)]
        assert len(set(pids[0:3])) == 1 and len(set(pids[3:6])) == 1 and len(set(pids)) == 3
        pids = [await by_memory.run(own_pid) for _ in range(3)]
        assert len(set(pids)) == 3  # every task leaves its worker above 0 MB
    finally:
        await by_count.close()
        await by_memory.close()
    assert not any(_pid_alive(pid) for pid in pids)


async def test_close_leaves_no_worker_behind(pool):
    await pool.warm_up()
    pids = set(await asyncio.gather(pool.run(own_pid), pool.run(own_pid)))
    await pool.close()
    assert pids and not any(_pid_alive(pid) for pid in pids)
