"""Services on the real Redis task queue: a Redis database of the test's own, ``sonalyze worker`` processes,
measurement replicas sharing one PostgreSQL and one blob folder (tests/integration/test_task_queue.py,
tests/integration/test_worker_recycling.py, tests/measurement/test_takeover.py, tests/simulation/test_takeover.py,
tests/integration/test_replicas_kill.py); the ``queue_url`` fixture (tests/conftest.py) is :func:`redis_database`
of the module's ``REDIS_DB``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.infra import REDIS_URL, require
from tests.support.servers import REPO_ROOT, ServiceProcess

HEARTBEAT_TIMEOUT_S = 2.0
"""``TASK_QUEUE_HEARTBEAT_TIMEOUT_S`` of the tests' workers and services: a killed worker's task runs again
on another one this long after its last heartbeat."""
WORKER_READY_LINE = "Worker process is ready for action."
"""What Dramatiq logs once a worker process's consumers run (dramatiq/cli.py, after ``Worker.start``)."""


def redis_database(db: int) -> str:
    """The URL of database ``db`` of the test Redis (one number per test module), emptied first."""
    import redis

    require(REDIS_URL, 6379, "Redis")
    parts = urlsplit(REDIS_URL)
    url = f"redis://{parts.hostname or '127.0.0.1'}:{parts.port or 6379}/{db}"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


class Worker:
    """``sonalyze worker`` in its own process group (a ``kill -9`` of the group is a machine going away);
    ``env`` adds to or overrides its environment (``TASK_QUEUE_MAX_TASKS_PER_PROCESS``)."""

    def __init__(self, queue_url: str, processes: int = 1, env: dict[str, str] | None = None) -> None:
        environment = {
            **os.environ,
            "TASK_QUEUE_URL": queue_url,
            "TASK_QUEUE_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.processes = processes
        self.log = tempfile.NamedTemporaryFile(prefix="sonalyze-worker-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sonalyze", "worker", "--processes", str(processes), "--poll-ms", "200"],
            env=environment, cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Wait until each of its processes takes tasks (:data:`WORKER_READY_LINE`): its start-up (imports: two
        workers took 10-18 s at load 10-14 on 2 cores) is then no part of what a test times."""
        deadline_s = time.monotonic() + timeout_s
        while self.log_text().count(WORKER_READY_LINE) < self.processes:
            assert self.process.poll() is None, f"the worker exited while starting:\n{self.log_text()[-3000:]}"
            assert time.monotonic() < deadline_s, f"the worker was not ready within {timeout_s} s:\n{self.log_text()[-3000:]}"
            time.sleep(0.05)

    def owns(self, pid: int) -> bool:
        """``pid`` is one of this worker's processes."""
        try:
            return os.getpgid(pid) == self.process.pid
        except ProcessLookupError:
            return False

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)

    def terminate(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM to the supervisor only, as Kubernetes stops a pod's main process (the supervisor stops its
        own worker processes); its exit code, or None when it had to be killed after ``timeout_s``."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def stop(self) -> None:
        """Clean-up: SIGTERM to the whole group, SIGKILL after 30 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")


def measurement_replica(
    name: str,
    *,
    database_url: str,
    blob_dir: Path,
    data_dir: Path,
    queue_url: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> ServiceProcess:
    """``sonalyze serve measurement`` as replica ``name`` (not started): jobs in ``database_url``, audio in the
    shared folder ``blob_dir``, analyses on the queue ``queue_url``."""
    return ServiceProcess(
        "measurement",
        env={
            "DATABASE_URL": database_url,
            "BLOB_URL": f"file://{blob_dir}",
            "TASK_QUEUE_URL": queue_url,
            "TASK_QUEUE_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
            "MEASUREMENT_DATA_DIR": str(data_dir / name),
            "MEASUREMENT_REPLICA_ID": name,
            **(env or {}),
        },
        port=port,
    )
