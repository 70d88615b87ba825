"""The service shell around `engine.simulate`: limits, the tasks (`sonalyze.common.tasks`: this replica's
CPU pool, or the Dramatiq queue of ``sonalyze worker`` processes with ``TASK_QUEUE_URL``), keeping jobs and results.

The task writes the RIRs to the blob store and answers a small result (`sonalyze.simulation.worker`).
The replica awaiting a simulation holds a lease on its row and renews it (`_lease_turn`, every third of
``SIMULATION_JOB_LEASE_S``); every replica's same loop claims the running simulations whose lease lapsed
(their replica was killed) and runs them again (`_take_over`), pushing to the device that asked. Only
the replica whose ``finish`` changes the row records, sends to storage and pushes the end: the device
gets ``simulation.completed`` once. A replica that stops gracefully releases its leases (another takes
over at once); one alone fails them as ``interrupted`` when it starts again.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from sonalyze.common.blobs import BlobAddress, blob_store
from sonalyze.common.cpu_pool import DEFAULT_PRELOAD, CpuPool
from sonalyze.common.errors import Conflict, SonalyzeError, from_validation_error
from sonalyze.common.readiness import database_unready
from sonalyze.common.retention import cleanup_forever
from sonalyze.common.tasks import task_runner
from sonalyze.simulation.config import SimulationSettings
from sonalyze.simulation.limits import check_limits
from sonalyze.simulation.pushes import SimulationPushes
from sonalyze.simulation.schemas import SimulateRequest
from sonalyze.simulation.storage_records import job_record, result_records
from sonalyze.simulation.store import JobStatus, SimulationStore
from sonalyze.simulation.worker import run_simulation
from sonalyze.storage.db import make_engine
from sonalyze.storage.outbox import put_row, writer_outbox

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
        self.blob_address = BlobAddress(settings.blob_url, settings.data_dir.resolve(), settings.s3_endpoint_url)
        self.store = SimulationStore(
            make_engine(settings.simulations_database_url), blobs, runner=settings.replica_id, lease_s=settings.job_lease_s
        )
        self.tasks = task_runner(settings, "simulation", lambda: CpuPool(settings.workers, settings.queue, preload=PRELOAD))
        self._warm_up: asyncio.Task[None] | None = None
        self._cleanup: asyncio.Task[None] | None = None
        self._leases: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._awaited: set[str] = set()
        """The simulations whose task this replica awaits: it renews their leases."""
        self._closing = False
        self.pushes = SimulationPushes(settings.gateway_url, settings.internal_auth_token)
        # In the simulation database: a finished simulation and its storage records commit together (store.finish).
        self.outbox = writer_outbox(settings.storage_url, settings.internal_auth_token, settings.simulations_database_url)

    async def start(self) -> None:
        """Migrate the database, start the storage outbox and (in the background) the workers; fail this
        replica's simulations left running; start the lease loop and the retention cleanup."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.store.migrate()
        if self.outbox is not None:
            await self.outbox.start()
        self._warm_up = asyncio.create_task(self.tasks.warm_up())
        error = {"code": "interrupted", "message": "the service stopped before the simulation finished"}
        for row in await self.store.interrupted():
            log.warning("simulation %s was interrupted", row.simulation_id)
            if await self._finish(row.simulation_id, status=JobStatus.FAILED, error=error) is not None and row.device_id:
                self.pushes.send(row.device_id, "simulation.failed", {"id": row.simulation_id, "error": error})
        self._leases = asyncio.create_task(
            cleanup_forever(self._lease_turn, self.settings.job_lease_s / 3.0, "simulation leases"), name="simulation-leases"
        )
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

    async def _lease_turn(self, now_s: float) -> None:
        """Renew the leases of the simulations awaited here, then take over those whose lease lapsed."""
        await self.store.leases.renew(list(self._awaited))
        for row in await self.store.claim_expired(now_s, exclude=set(self._awaited)):
            await self._take_over(row.simulation_id, row.job, row.device_id)

    async def _take_over(self, simulation_id: str, job: dict[str, Any], device_id: str | None) -> None:
        """Run a claimed simulation again (same request, same seed): awaited here from now on."""
        log.warning("taking over simulation %s: its replica stopped renewing its lease", simulation_id)
        try:
            request = parse_request(job["request"])
            running = await self._start(simulation_id, request, on_progress=self._progress_pushes(simulation_id, device_id))
        except SonalyzeError as exc:  # busy (or a request this version refuses): it fails; the device asks again
            if await self._finish(simulation_id, status=JobStatus.FAILED, error=exc.to_body()["error"]) is not None and device_id:
                self.pushes.send(device_id, "simulation.failed", {"id": simulation_id, "error": exc.to_body()["error"]})
            return
        self._in_background(self._execute_and_push(simulation_id, request, running, device_id), simulation_id)

    async def close(self) -> None:
        """Stop: the simulations awaited here are released (not failed), for another replica to take over."""
        self._closing = True
        for loop in (self._cleanup, self._leases):
            if loop is not None:
                loop.cancel()
                await asyncio.gather(loop, return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.pushes.aclose()
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
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Record a finished simulation, then (if configured) send it through the storage outbox; None when
        it was not this replica's to finish any more (taken over or finished elsewhere): nothing is recorded."""
        def outbox_rows(job: dict[str, Any]) -> list[dict[str, Any]]:
            puts = [("simulation_jobs", job_record(job, result))]
            puts += [("simulation_results", r) for r in result_records(simulation_id, result)] if result is not None else []
            return [put_row(resource, record, aggregate=simulation_id) for resource, record in puts]

        job = await self.store.finish(
            simulation_id,
            status=status,
            finished_at=utc_now(),
            now_s=time.time(),
            result=result,
            error=error,
            outbox_rows=outbox_rows if self.outbox is not None else None,
        )
        if job is not None and self.outbox is not None:
            self.outbox.wake()
        return job

    def health(self) -> dict[str, Any]:
        counts = self.tasks.health()
        workers = {"max": counts.pop("max_workers", None), **counts}
        return {"status": "ok", "service": "simulation", "workers": workers}

    async def ready(self) -> str | None:
        """None when this replica can take work: its database and the task queue answer; else why not."""
        return await database_unready(self.store.engine, "simulation database") or await self.tasks.ready()

    async def get(self, simulation_id: str) -> dict[str, Any]:
        job, result = await self.store.job_and_result(simulation_id)
        return {**job, **(result or {})}

    async def run(self, request: SimulateRequest) -> dict[str, Any]:
        """Simulate, keep the job and result, and answer with the result (RIRs as base64 on request)."""
        request = self._seeded(request)
        job = await self._create(request)
        running = await self._start_or_discard(job["id"], request, None)
        answer = await self._execute(job["id"], request, running)
        if answer is None:
            raise Conflict(
                f"simulation {job['id']} was taken over by another replica; read it with GET /simulations/{job['id']}",
                details={"reason": "taken_over", "id": job["id"]},
            )
        return answer

    async def submit(self, request: SimulateRequest, device_id: str) -> dict[str, Any]:
        """``simulation.run`` with ``"wait": false``: keep the job and answer with it at once; progress
        and the result are pushed to ``device_id`` (`SimulationPushes`). Busy when no worker or queue
        place is free now (nothing is kept then)."""
        request = self._seeded(request)
        job = await self._create(request, device_id)
        running = await self._start_or_discard(job["id"], request, device_id)
        self._in_background(self._execute_and_push(job["id"], request, running, device_id), job["id"])
        return job

    def _in_background(self, work: Any, simulation_id: str) -> None:
        task = asyncio.create_task(work, name=f"simulation-{simulation_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _execute_and_push(
        self, simulation_id: str, request: SimulateRequest, running: asyncio.Task[dict[str, Any]], device_id: str | None
    ) -> None:
        try:
            answer = await self._execute(simulation_id, request, running)
        except SonalyzeError as exc:
            if device_id:
                self.pushes.send(device_id, "simulation.failed", {"id": simulation_id, "error": exc.to_body()["error"]})
        except asyncio.CancelledError:
            raise
        except Exception:  # the database away while recording: the lease lapses, another replica finishes it
            log.exception("simulation %s could not be recorded", simulation_id)
        else:
            if answer is not None and device_id:
                self.pushes.send(device_id, "simulation.completed", answer)

    @staticmethod
    def _seeded(request: SimulateRequest) -> SimulateRequest:
        """``request`` with a seed chosen now if it has none: a run again after a take-over computes the same RIRs."""
        return request if request.seed is not None else request.model_copy(update={"seed": secrets.randbelow(2**63)})

    async def _create(self, request: SimulateRequest, device_id: str | None = None) -> dict[str, Any]:
        """Keep a new job, leased to this replica; ``device_id``: where its pushes go."""
        check_limits(request, self.limits)
        simulation_id = uuid.uuid4().hex
        job = {"id": simulation_id, "status": JobStatus.RUNNING.value, "created_at": utc_now(), "request": request.model_dump(mode="json")}
        await self.store.create(job, now_s=time.time(), device_id=device_id)
        return job

    async def _start_or_discard(
        self, simulation_id: str, request: SimulateRequest, device_id: str | None
    ) -> asyncio.Task[dict[str, Any]]:
        """`_start` with the progress pushed to ``device_id``; refused (Busy): the job is discarded, nothing is kept."""
        try:
            return await self._start(simulation_id, request, on_progress=self._progress_pushes(simulation_id, device_id))
        except BaseException:
            await asyncio.shield(self.store.discard(simulation_id))
            raise

    def _progress_pushes(self, simulation_id: str, device_id: str | None) -> Callable[[float, str], None] | None:
        if not device_id:
            return None

        def on_progress(fraction: float, message: str) -> None:
            self.pushes.send(device_id, "simulation.progress", {"id": simulation_id, "fraction": fraction, "message": message})

        return on_progress

    async def _start(
        self, simulation_id: str, request: SimulateRequest, *, on_progress: Callable[[float, str], None] | None = None
    ) -> asyncio.Task[dict[str, Any]]:
        """Submit the simulation's task (Busy when the bound is reached): awaited, and its lease renewed, here."""
        running = await self.tasks.submit(
            run_simulation,
            request,
            simulation_id=simulation_id,
            max_rir_s=self.limits.max_rir_s,
            blobs=self.blob_address,
            timeout_s=self.settings.timeout_s,
            on_progress=on_progress,
        )
        self._awaited.add(simulation_id)
        return running

    async def _execute(
        self, simulation_id: str, request: SimulateRequest, running: asyncio.Task[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """Await the task and record how it ended: the answer, or the error raised; None when the simulation
        is no longer this replica's (taken over): another replica records it, answers and pushes."""
        started = time.perf_counter()
        try:
            try:
                result = await running
            except SonalyzeError as exc:  # timeout, crashed worker
                if await self._finish(simulation_id, status=JobStatus.FAILED, error=exc.to_body()["error"]) is None:
                    return None
                raise
            except asyncio.CancelledError:
                if self._closing:  # this replica stops: another one (or this one restarted) takes it over
                    await asyncio.shield(self.store.leases.release([simulation_id]))
                else:  # the client went away: the worker was stopped
                    error = {"code": "cancelled", "message": "the request was cancelled before the simulation finished"}
                    await self._finish(simulation_id, status=JobStatus.FAILED, error=error)
                raise
            except Exception as exc:  # a bug in the simulation: keep it, log it, answer 500
                log.exception("simulation %s failed", simulation_id)
                failure = SonalyzeError(f"the simulation failed: {exc}", code="simulation_failed")
                if await self._finish(simulation_id, status=JobStatus.FAILED, error=failure.to_body()["error"]) is None:
                    return None
                raise failure from exc
            result["timing"]["service_s"] = time.perf_counter() - started
            job = await self._finish(simulation_id, status=JobStatus.SUCCEEDED, result=result)
        finally:
            self._awaited.discard(simulation_id)
        if job is None:
            log.warning("simulation %s: result dropped, another replica took it over", simulation_id)
            return None
        log.info("simulation %s done in %.2f s", simulation_id, result["elapsed_s"])
        answer = {**job, **result}
        if request.include_rir:
            answer = await self._with_base64(simulation_id, answer)
        return answer

    async def _with_base64(self, simulation_id: str, answer: dict[str, Any]) -> dict[str, Any]:
        """Each pair's RIR read back from the blob store as base64 WAV, unless that exceeds the cap."""
        paths = [await self.store.rir_path(simulation_id, pair["source"], pair["microphone"]) for pair in answer["pairs"]]
        sizes = [path.stat().st_size for path in paths]
        encoded_bytes = sum(4 * ((size + 2) // 3) for size in sizes)
        cap_bytes = self.settings.max_rir_base64_mb * 1e6
        if encoded_bytes > cap_bytes:
            answer["rir_base64_omitted"] = (
                f"the RIRs would take {encoded_bytes / 1e6:.1f} MB as base64, above the limit "
                f"{self.settings.max_rir_base64_mb:g} MB: download them from each pair's rir.path"
            )
            return answer
        pairs = []
        for pair, path in zip(answer["pairs"], paths):
            data = await asyncio.to_thread(path.read_bytes)
            pairs.append({**pair, "rir": {**pair["rir"], "wav_base64": base64.b64encode(data).decode("ascii")}})
        return {**answer, "pairs": pairs}
