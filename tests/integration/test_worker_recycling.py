"""``sonalyze worker`` replaces a worker process after ``TASK_QUEUE_MAX_TASKS_PER_PROCESS`` tasks, or after a task
that leaves it above ``TASK_QUEUE_MAX_PROCESS_RSS_MB``, and no task is lost on the way (real Redis, database 12
of the test server, flushed first; a real ``sonalyze worker`` process).
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from sonalyze.common.tasks import QueueTasks
from tests.common import cpu_tasks
from tests.support.cluster import Worker

pytestmark = [pytest.mark.redis]

REDIS_DB = 12


@pytest.mark.parametrize(
    ("env", "tasks_per_process", "together"),
    [({"TASK_QUEUE_MAX_TASKS_PER_PROCESS": "3"}, 3, 8), ({"TASK_QUEUE_MAX_PROCESS_RSS_MB": "1"}, 1, 2)],
    ids=["after-3-tasks", "above-1-MB"],
)
async def test_a_worker_process_is_replaced_and_no_task_is_lost(queue_url, tmp_path, env, tasks_per_process, together) -> None:
    runs, release = tmp_path / "runs", tmp_path / "release"
    runs.mkdir()
    release.touch()  # each run leaves a file named by its process and returns at once

    def runners() -> list[int]:
        """The process of each run so far, in the order they ran."""
        stamps = sorted((int(ns), int(pid)) for pid, ns in (path.name.split("-") for path in runs.iterdir()))
        return [pid for _ns, pid in stamps]

    async def submit() -> asyncio.Task:
        return await queue.submit(cpu_tasks.record_run_and_wait, str(runs), str(release), on_progress=lambda *_: None)

    worker = Worker(queue_url, env=env)
    queue = QueueTasks(queue_url, "analysis", max_in_flight=100)
    try:
        in_turn = 2 * tasks_per_process + 1
        for _ in range(in_turn):
            assert await asyncio.wait_for(await submit(), 120) == "done", worker.log_text()
        order = runners()
        processes = order[::tasks_per_process]
        assert order == [pid for pid in processes for _ in range(tasks_per_process)][:in_turn], worker.log_text()
        assert len(set(processes)) == 3 and worker.owns(processes[-1])
        assert not any(worker.owns(pid) for pid in processes[:-1])  # the retired ones are gone

        # Submitted together: some wait in the queue while a process retires and its successor starts.
        answers = await asyncio.wait_for(asyncio.gather(*[await submit() for _ in range(together)]), 180)
        assert answers == ["done"] * together
        counts = Counter(runners())
        assert sum(counts.values()) == in_turn + together  # each task ran once: none lost, none run again
        assert max(counts.values()) == tasks_per_process and len(counts) >= 5, counts
        assert worker.process.poll() is None  # the supervisor itself stays
        assert "was recycled" in worker.log_text()
    finally:
        await queue.close()
        code = worker.terminate()  # as Kubernetes stops it
    assert code == 0, worker.log_text()[-3000:]
