"""The service shell around `engine.simulate`: limits, the tasks (`sonalyze.common.tasks`: this replica's
CPU pool, or the Dramatiq queue of ``sonalyze worker`` processes with ``TASK_QUEUE_URL``), keeping jobs and results."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from sonalyze.common.blobs import blob_store
from sonalyze.common.cpu_pool import DEFAULT_PRELOAD, CpuPool
from sonalyze.common.errors import SonalyzeError, from_validation_error
from sonalyze.common.retention import cleanup_forever
from sonalyze.common.tasks import task_runner
from sonalyze.simulation.config import SimulationSettings
from sonalyze.simulation.limits import check_limits
from sonalyze.simulation.pushes import SimulationPushes
from sonalyze.simulation.schemas import SimulateRequest
from sonalyze.simulation.storage_records import job_record, result_records
from sonalyze.simulation.store import JobStatus, SimulationStore
from sonalyze.simulation.worker import SimulationResult, run_simulation
from sonalyze.storage.db import make_engine
from sonalyze.storage.outbox import writer_outbox

log = logging.getLogger(__name__)

PRELOAD = (*DEFAULT_PRELOAD, "pyroomacoustics", "sonalyze.simulation.worker")
"""Imported once in the fork server: pyroomacoustics alone takes about a second to import."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_request(data: dict[str, Any]) -> SimulateRequest:
    """Validate a ``simulation.run`` payload exactly like the HTTP body: 422 ``validation_error``."""
    try:
        return SimulateRequest.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from exc


class SimulationService:
    def __init__(self, settings: SimulationSettings) -> None:
        self.settings = settings
        self.limits = settings.limits()
        blobs = blob_store(settings.blob_url, settings.data_dir, endpoint_url=settings.s3_endpoint_url)
        self.store = SimulationStore(make_engine(settings.simulations_database_url), blobs, runner=settings.replica_id)
        self.tasks = task_runner(settings, "simulation", lambda: CpuPool(settings.workers, settings.queue, preload=PRELOAD))
        self._warm_up: asyncio.Task[None] | None = None
        self._cleanup: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.pushes = SimulationPushes(settings.gateway_url, settings.internal_auth_token)
        self.outbox = writer_outbox(settings.storage_url, settings.internal_auth_token, settings.database_url, settings.data_dir)

    async def start(self) -> None:
        """Migrate the database, start the storage outbox and (in the background) the workers; fail this
        replica's simulations left running; start the retention cleanup."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.store.migrate()
        if self.outbox is not None:
            await self.outbox.start()
        self._warm_up = asyncio.create_task(self.tasks.warm_up())
        error = {"code": "interrupted", "message": "the service stopped before the simulation finished"}
        for simulation_id in await self.store.running_ids():
            log.warning("simulation %s was interrupted", simulation_id)
            await self._finish(simulation_id, status=JobStatus.FAILED, error=error)
        if self.settings.retention_days > 0:
            self._cleanup = asyncio.create_task(
                cleanup_forever(self.delete_expired, self.settings.cleanup_interval_s, "simulations"), name="simulation-cleanup"
            )

    async def delete_expired(self, now_s: float) -> list[str]:
        """Delete the simulations (and their RIRs) finished ``SIMULATION_RETENTION_DAYS`` before ``now_s``;
        their storage records stay. The ids deleted."""
        deleted = await self.store.delete_expired(now_s - self.settings.retention_days * 86400.0)
        if deleted:
            log.info("expired simulations deleted", extra={"simulations": len(deleted)})
        return deleted

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.pushes.aclose()
        if self._cleanup is not None:
            self._cleanup.cancel()
            await asyncio.gather(self._cleanup, return_exceptions=True)
        if self._warm_up is not None:
            await asyncio.gather(self._warm_up, return_exceptions=True)
        await self.tasks.close()
        if self.outbox is not None:
            await self.outbox.stop()
            await self.outbox.client.aclose()
        await self.store.engine.dispose()

    async def _finish(
        self,
        simulation_id: str,
        *,
        status: JobStatus,
        result: dict[str, Any] | None = None,
        rirs: list[tuple[int, int, bytes]] | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record a finished simulation: kept files first, then (if configured) the storage outbox."""
        job = await self.store.finish(
            simulation_id, status=status, finished_at=utc_now(), now_s=time.time(), result=result, rirs=rirs or (), error=error
        )
        if self.outbox is not None:
            records = [("simulation_jobs", job_record(job, result))]
            records += [("simulation_results", r) for r in result_records(simulation_id, result)] if result is not None else []
            await self.outbox.enqueue_all(records, aggregate=simulation_id)  # the job and its pairs in one commit
        return job

    def health(self) -> dict[str, Any]:
        counts = self.tasks.health()
        workers = {"max": counts.pop("max_workers", None), **counts}
        return {"status": "ok", "service": "simulation", "workers": workers}

    async def ready(self) -> str | None:
        """None when this replica can take work: its database and the task queue answer; else why not."""
        try:
            async with self.store.engine.connect() as connection:
                await asyncio.wait_for(connection.exec_driver_sql("SELECT 1"), 2.0)
        except Exception as exc:
            return f"the simulation database does not answer: {type(exc).__name__}"
        return await self.tasks.ready()

    async def get(self, simulation_id: str) -> dict[str, Any]:
        job, result = await self.store.job_and_result(simulation_id)
        return {**job, **(result or {})}

    async def run(self, request: SimulateRequest) -> dict[str, Any]:
        """Simulate, keep the job and result, and answer with the result (RIRs as base64 on request)."""
        job = await self._create(request)
        running = await self._start(job["id"], request)
        return await self._execute(job["id"], request, running)

    async def submit(self, request: SimulateRequest, device_id: str) -> dict[str, Any]:
        """``simulation.run`` with ``"wait": false``: keep the job and answer with it at once; progress
        and the result are pushed to ``device_id`` (`SimulationPushes`). Busy when no worker or queue
        place is free now (nothing is kept then)."""
        job = await self._create(request)

        def on_progress(fraction: float, message: str) -> None:
            self.pushes.send(device_id, "simulation.progress", {"id": job["id"], "fraction": fraction, "message": message})

        running = await self._start(job["id"], request, on_progress=on_progress)
        task = asyncio.create_task(self._execute_and_push(job["id"], request, running, device_id), name=f"simulation-{job['id']}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return job

    async def _execute_and_push(
        self, simulation_id: str, request: SimulateRequest, running: asyncio.Task[SimulationResult], device_id: str
    ) -> None:
        try:
            answer = await self._execute(simulation_id, request, running)
        except SonalyzeError as exc:
            self.pushes.send(device_id, "simulation.failed", {"id": simulation_id, "error": exc.to_body()["error"]})
        except asyncio.CancelledError:
            raise
        else:
            self.pushes.send(device_id, "simulation.completed", answer)

    async def _create(self, request: SimulateRequest) -> dict[str, Any]:
        check_limits(request, self.limits)
        simulation_id = uuid.uuid4().hex
        job = {"id": simulation_id, "status": JobStatus.RUNNING.value, "created_at": utc_now(), "request": request.model_dump(mode="json")}
        await self.store.create(job, now_s=time.time())
        return job

    async def _start(
        self, simulation_id: str, request: SimulateRequest, *, on_progress: Callable[[float, str], None] | None = None
    ) -> asyncio.Task[SimulationResult]:
        """Submit the simulation's task; refused (Busy): the job is discarded, nothing is kept."""
        try:
            return await self.tasks.submit(
                run_simulation,
                request,
                simulation_id=simulation_id,
                max_rir_s=self.limits.max_rir_s,
                timeout_s=self.settings.timeout_s,
                on_progress=on_progress,
            )
        except BaseException:
            await asyncio.shield(self.store.discard(simulation_id))
            raise

    async def _execute(
        self, simulation_id: str, request: SimulateRequest, running: asyncio.Task[SimulationResult]
    ) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            simulated: SimulationResult = await running
        except SonalyzeError as exc:  # timeout, crashed worker
            await self._finish(simulation_id, status=JobStatus.FAILED, error=exc.to_body()["error"])
            raise
        except asyncio.CancelledError:  # the client went away: the worker was stopped
            error = {"code": "cancelled", "message": "the request was cancelled before the simulation finished"}
            await self._finish(simulation_id, status=JobStatus.FAILED, error=error)
            raise
        except Exception as exc:  # a bug in the simulation: keep it, log it, answer 500
            log.exception("simulation %s failed", simulation_id)
            failure = SonalyzeError(f"the simulation failed: {exc}", code="simulation_failed")
            await self._finish(simulation_id, status=JobStatus.FAILED, error=failure.to_body()["error"])
            raise failure from exc
        result = simulated.result
        result["timing"]["service_s"] = time.perf_counter() - started
        job = await self._finish(simulation_id, status=JobStatus.SUCCEEDED, result=result, rirs=simulated.wavs)
        log.info("simulation %s done in %.2f s", simulation_id, result["elapsed_s"])
        answer = {**job, **result}
        if request.include_rir:
            answer = self._with_base64(answer, simulated.wavs)
        return answer

    def _with_base64(self, answer: dict[str, Any], wavs: list[tuple[int, int, bytes]]) -> dict[str, Any]:
        encoded_bytes = sum(4 * ((len(data) + 2) // 3) for _, _, data in wavs)
        cap_bytes = self.settings.max_rir_base64_mb * 1e6
        if encoded_bytes > cap_bytes:
            answer["rir_base64_omitted"] = (
                f"the RIRs would take {encoded_bytes / 1e6:.1f} MB as base64, above the limit "
                f"{self.settings.max_rir_base64_mb:g} MB: download them from each pair's rir.path"
            )
            return answer
        by_pair = {(s, m): data for s, m, data in wavs}
        pairs = [
            {**pair, "rir": {**pair["rir"], "wav_base64": base64.b64encode(by_pair[(pair["source"], pair["microphone"])]).decode("ascii")}}
            for pair in answer["pairs"]
        ]
        return {**answer, "pairs": pairs}
