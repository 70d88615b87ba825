"""The task queue (sonalyze.common.tasks) on real Redis with real ``sonalyze worker`` processes on loopback.

Redis database 9 of the test server is this module's (flushed before each test).
"""

from __future__ import annotations

import asyncio
import base64
import pickle
import time
import uuid

import pytest
import soundfile

from sonalyze.common import tasks
from sonalyze.common.errors import Busy
from sonalyze.common.internal_auth import Caller
from sonalyze.common.tasks import QueueTasks
from sonalyze.measurement.jobs import AnalyzeRequest, JobCreate, JobStatus
from sonalyze.measurement.service import MeasurementService
from sonalyze.measurement.settings import MeasurementSettings
from sonalyze.simulation.service import SimulationService, parse_request
from tests.common import cpu_tasks
from tests.measurement.audio import encode, sweep_recording
from tests.measurement.conftest import FS_HZ, RT_S, SHORT_SWEEP, room  # noqa: F401  (the fixture)
from tests.simulation.conftest import make_settings, shoebox_request
from tests.support.cluster import HEARTBEAT_TIMEOUT_S, Worker

pytestmark = [pytest.mark.redis]

REDIS_DB = 9


@pytest.fixture
def workers(queue_url):
    """Start ``count`` ``sonalyze worker``s of ``processes`` each and wait until they take tasks: the tests time
    what the queue does, not the workers' start-up (tens of seconds under load)."""
    started: list[Worker] = []

    def start(count: int = 1, processes: int = 1) -> list[Worker]:
        new = [Worker(queue_url, processes) for _ in range(count)]
        started.extend(new)
        for worker in new:
            worker.wait_ready()
        return new

    yield start
    for worker in started:
        worker.stop()


async def test_results_progress_and_errors_come_back_through_the_queue(queue_url, workers) -> None:
    [worker] = workers()
    queue = QueueTasks(queue_url, "analysis", max_in_flight=10, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S)
    try:
        seen: list[tuple[float, str]] = []
        running = await queue.submit(cpu_tasks.report_steps, 3, on_progress=lambda f, m: seen.append((f, m)))
        assert await asyncio.wait_for(running, 60) == "finished", worker.log_text()
        assert seen == [(1 / 3, "step 1"), (2 / 3, "step 2"), (1.0, "step 3")]
        assert await (await queue.submit(cpu_tasks.sum_of_squares, 4, offset=1)) == 15
        with pytest.raises(ValueError, match="bad input") as caught:
            await (await queue.submit(cpu_tasks.raise_value_error, "bad input"))
        assert "raise_value_error" in str(caught.value.__cause__)  # the worker's traceback
        assert worker.owns(await (await queue.submit(cpu_tasks.own_pid)))
        assert await queue.ready() is None
        assert await queue._redis.zcard(tasks._in_flight_key("analysis")) == 0  # nothing left in flight
    finally:
        await queue.close()


async def test_a_full_queue_answers_busy_with_retry_after(queue_url) -> None:
    """No worker: two tasks wait, the third is refused; a task given up leaves its place."""
    queue = QueueTasks(queue_url, "simulation", max_in_flight=2)
    try:
        first = await queue.submit(cpu_tasks.sum_of_squares, 3)
        await queue.submit(cpu_tasks.sum_of_squares, 4)
        with pytest.raises(Busy) as refused:
            await queue.submit(cpu_tasks.sum_of_squares, 5)
        assert refused.value.code == "busy" and refused.value.status_code == 503
        assert int(refused.value.headers["Retry-After"]) >= 1
        assert queue.health()["queued"] == 2
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await queue.submit(cpu_tasks.sum_of_squares, 6)  # the cancelled task's place is free again
    finally:
        await queue.close()


async def test_unreachable_redis_makes_the_service_not_ready(tmp_path) -> None:
    queue = QueueTasks("redis://127.0.0.1:19299/9", "analysis", max_in_flight=2)  # nothing listens (our range)
    try:
        reason = await queue.ready()
        assert reason is not None and "Redis" in reason
    finally:
        await queue.close()


async def test_a_task_on_a_killed_worker_runs_again_on_the_other_and_answers_once(queue_url, workers, tmp_path) -> None:
    first, second = workers(2)
    runs, release = tmp_path / "runs", tmp_path / "release"
    runs.mkdir()
    queue = QueueTasks(queue_url, "analysis", max_in_flight=10, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S)
    try:
        pids: list[int] = []
        running = await queue.submit(
            cpu_tasks.record_run_and_wait, str(runs), str(release), on_progress=lambda f, m: pids.append(int(m))
        )
        # Both workers take tasks (the fixture waited for them): the task starts at once. Once the victim is killed,
        # its heartbeat ages past HEARTBEAT_TIMEOUT_S and the survivor's broker maintenance (on 10 % of its fetches,
        # five a second) queues the task again: seconds (3-6 at load 14), well within the 60 s allowed.
        deadline = time.monotonic() + 60
        while not pids:
            assert time.monotonic() < deadline, first.log_text() + second.log_text()
            await asyncio.sleep(0.05)
        victim, survivor = (first, second) if first.owns(pids[0]) else (second, first)
        assert victim.owns(pids[0])
        victim.kill()  # kill -9 of the whole `sonalyze worker`, mid-task
        release.touch()
        answered, _ = await asyncio.wait({running}, timeout=60)
        assert answered, survivor.log_text()[-3000:]
        assert running.result() == "done"
        assert len(pids) == 2 and survivor.owns(pids[1])  # started again, on the other worker
        assert len(list(runs.iterdir())) == 2
        assert await queue._redis.zcard(tasks._in_flight_key("analysis")) == 0
    finally:
        await queue.close()


def test_a_task_delivered_twice_computes_and_answers_one_outcome(queue_url, tmp_path) -> None:
    """The actor itself, twice for one task id (a redelivery after its outcome was written): one run."""
    import redis

    runs, release = tmp_path / "runs", tmp_path / "release"
    runs.mkdir()
    release.touch()
    call = pickle.dumps((cpu_tasks.record_run_and_wait, (str(runs), str(release)), {}, True))
    task_id = uuid.uuid4().hex
    events, outcome, _cancel = tasks._keys(task_id)
    tasks._worker_redis = client = redis.Redis.from_url(queue_url)
    try:
        for _ in range(2):
            tasks._execute(task_id, base64.b64encode(call).decode())
        assert len(list(runs.iterdir())) == 1
        kinds = [pickle.loads(item)[0] for item in client.lrange(events, 0, -1)]
        assert kinds == ["started", "progress", "done", "done"]
        assert tasks._unpack_outcome(client.get(outcome)) == "done"
    finally:
        tasks._worker_redis = None
        client.close()


async def test_a_measurement_job_is_analyzed_by_a_worker(queue_url, workers, tmp_path, room) -> None:
    """TASK_QUEUE_URL set: the service runs no pool of its own; the worker reads the upload from the
    blob store (here the service's folder, shared on this machine) and the job ends done."""
    [worker] = workers()
    settings = MeasurementSettings(
        data_dir=tmp_path / "measurement", task_queue_url=queue_url, task_queue_max=4, analyze_wait_s=60,
        task_queue_heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
    )
    service = MeasurementService(settings)
    await service.start()
    try:
        assert "pool" not in vars(service.tasks)
        owner = Caller(device_id="dev-1")
        job = await service.create_job(JobCreate(sweep=SHORT_SWEEP), owner)
        sweep, _ = soundfile.read(str(await service.sweep_path(job)), dtype="float64")
        wav = encode(sweep_recording(sweep, room, FS_HZ, offset_s=0.3, noise_dbfs=-80.0), FS_HZ)

        async def chunks():
            yield wav

        await service.upload(job.job_id, "mic.wav", chunks(), caller=owner, content_type="audio/wav", content_length=None)
        done = await service.analyze(job.job_id, AnalyzeRequest(), owner)
        assert done.status is JobStatus.DONE, (done.error, worker.log_text())
        assert done.results["mic.wav"]["t30_s"]["broadband"] == pytest.approx(RT_S, rel=0.05)
        assert done.progress.fraction == 1.0
        assert (await service.store.load(job.job_id)).status is JobStatus.DONE
        assert await service.ready() is None
    finally:
        await service.close()


async def test_a_simulation_runs_on_a_worker_and_its_progress_comes_back(queue_url, workers, tmp_path) -> None:
    [worker] = workers()
    settings = make_settings(tmp_path, task_queue_url=queue_url, task_queue_heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S)
    service = SimulationService(settings)
    await service.start()
    try:
        request = parse_request(shoebox_request())
        job = await service._create(request)
        progress: list[float] = []
        running = await service._start(job["id"], request, on_progress=lambda fraction, _message: progress.append(fraction))
        answer = await asyncio.wait_for(service._execute(job["id"], request, running), 120)
        assert answer["status"] == "succeeded", worker.log_text()
        assert answer["pairs"][0]["metrics"]["t30_s"] is not None or answer["pairs"][0]["metrics_reason"]
        assert progress and progress == sorted(progress)  # pushed from the worker, in order
        kept = await service.get(job["id"])
        assert kept["status"] == "succeeded" and (await service.store.rir_path(job["id"], 0, 0)).is_file()
        assert service.health()["workers"]["task_queue"] == "redis"
    finally:
        await service.close()
