"""``sonalyze worker`` replaces a worker process after ``TASK_QUEUE_MAX_TASKS_PER_PROCESS`` tasks, or after a task
that leaves it above ``TASK_QUEUE_MAX_PROCESS_RSS_MB``, and no task is lost on the way (real Redis, database 12
of the test server, flushed first; a real ``sonalyze worker`` process).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from sonalyze.common.tasks import QueueTasks
from tests.common import cpu_tasks
from tests.support.infra import REDIS_URL, require

pytestmark = [pytest.mark.redis]

REPO_ROOT = Path(__file__).resolve().parents[2]
REDIS_DB = 12


@pytest.fixture
def queue_url() -> str:
    import redis

    require(REDIS_URL, 6379, "Redis")
    url = REDIS_URL.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


class Worker:
    """``sonalyze worker`` in its own process group, stopped with SIGTERM as Kubernetes does."""

    def __init__(self, queue_url: str, processes: int = 1, **env: str) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="sonalyze-worker-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sonalyze", "worker", "--processes", str(processes), "--poll-ms", "200"],
            env={**os.environ, "TASK_QUEUE_URL": queue_url, "PYTHONUNBUFFERED": "1", **env},
            cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def owns(self, pid: int) -> bool:
        try:
            return os.getpgid(pid) == self.process.pid
        except ProcessLookupError:
            return False

    def log_text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def close(self) -> int | None:
        """SIGTERM to the supervisor only; its exit code (None: it had to be killed)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            return None


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

    worker = Worker(queue_url, **env)
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
        code = worker.close()
    assert code == 0, worker.log_text()[-3000:]
