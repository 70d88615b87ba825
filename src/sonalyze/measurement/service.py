"""The measurement service's operations, shared by the HTTP routes and the gateway events.

The files are the truth: a job is read from ``job.json``, changed under that job's lock and saved
before the change is answered. Only jobs being analyzed stay in memory (their progress changes all the
time). Analyses run in the CPU pool as background tasks; :meth:`MeasurementService._analysis_finished` is the
one place where an analysis ends (with results or an error).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sonalyze.acoustics.sweep import exponential_sweep
from sonalyze.common.cpu_pool import DEFAULT_PRELOAD, CpuPool
from sonalyze.common.errors import BadRequest, Busy, Conflict, Forbidden, NotFound, SonalyzeError, Unprocessable
from sonalyze.common.internal_auth import Caller, internal_headers
from sonalyze.measurement.access import JobAccess, require_device
from sonalyze.common.logging import log_context
from sonalyze.measurement.analysis import AnalysisTask, analyze_uploads, summarize
from sonalyze.measurement import storage_records
from sonalyze.measurement.jobs import (
    AnalysisSource,
    AnalyzeRequest,
    Job,
    JobCreate,
    JobError,
    JobStatus,
    Progress,
    Upload,
    utc_now,
)
from sonalyze.measurement.settings import MeasurementSettings
from sonalyze.measurement.store import JobStore, commit_file
from sonalyze.measurement.uploads import (
    check_declared_length,
    check_sample_rate,
    check_upload_name,
    inspect_audio,
    parse_capture_facts,
    receive_multipart,
    receive_raw,
)
from sonalyze.storage.outbox import writer_outbox

log = logging.getLogger(__name__)

FINAL_STATUSES = frozenset({JobStatus.DONE, JobStatus.FAILED})



class MeasurementService:
    def __init__(self, settings: MeasurementSettings) -> None:
        self.settings = settings
        self.store = JobStore(settings.data_dir)
        self.pool = CpuPool(
            settings.analysis_workers,
            settings.analysis_queue,
            preload=(*DEFAULT_PRELOAD, "sonalyze.measurement.analysis"),
            memory_limit_mb=settings.worker_memory_mb,
        )
        self.access = JobAccess(
            settings.lobby_url,
            headers=internal_headers(settings.internal_auth_token),
            retention_s=settings.job_access_retention_hours * 3600.0,
            cache_s=settings.lobby_access_cache_s,
        )
        self._analyzing: dict[str, Job] = {}
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._analyses: dict[str, asyncio.Task[None]] = {}
        self._warm_up: asyncio.Task[None] | None = None
        self.outbox = writer_outbox(settings.storage_url, settings.internal_auth_token, settings.database_url, settings.data_dir)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """At start-up: start the storage outbox, warm the analysis workers up (in the background) and
        recover the jobs on disk."""
        if self.outbox is not None:
            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
            await self.outbox.start()
        self._warm_up = asyncio.create_task(self.pool.warm_up())
        await self._recover()

    async def _recover(self) -> None:
        """Drop half-written files, fail the analyses a previous process did not finish."""

        def scan() -> list[Job]:
            interrupted = []
            for job_id in self.store.job_ids():
                self.store.remove_partials(job_id)
                job = self.store.load(job_id)
                if job is not None and job.status is JobStatus.ANALYZING:
                    interrupted.append(job)
            return interrupted

        for job in await asyncio.to_thread(scan):
            error = JobError(code="interrupted", message="the service stopped during the analysis; run it again")
            await self._analysis_finished(job, error=error)

    async def close(self) -> None:
        if self._warm_up is not None:
            await asyncio.gather(self._warm_up, return_exceptions=True)
        for task in list(self._analyses.values()):
            task.cancel()
        await asyncio.gather(*self._analyses.values(), return_exceptions=True)
        await self.pool.close()
        await self.access.aclose()
        if self.outbox is not None:
            await self.outbox.stop()
            await self.outbox.client.aclose()

    # -- jobs ------------------------------------------------------------------------------------

    async def create_job(self, request: JobCreate, caller: Caller) -> Job:
        """A standalone job belongs to the device that creates it; a session's job (``lobby_id``) is
        created by the lobby, a service."""
        if not caller.service:
            require_device(caller)
            if request.lobby_id is not None:
                raise Forbidden("only the lobby creates the job of a lobby's session", details={"field": "lobby_id"})
        check_sample_rate(request.sample_rate_hz)
        try:
            params = request.sweep_params()
        except ValueError as exc:
            raise Unprocessable(str(exc), code="invalid_sweep") from exc
        job = Job.create(params, lobby_id=request.lobby_id, owner_device_id=caller.device_id)
        sweep = await asyncio.to_thread(exponential_sweep, params)
        await asyncio.to_thread(self.store.create, job, sweep)
        if self.outbox is not None and job.lobby_id is None:
            await self.outbox.enqueue("measurements", storage_records.measurement_record(job), aggregate=job.job_id)
        log.info("job created", extra={"job_id": job.job_id, "sample_rate_hz": job.sample_rate_hz})
        return job

    async def get_job(self, job_id: str, caller: Caller) -> Job:
        """The job, if ``caller`` may reach it (:mod:`sonalyze.measurement.access`); else 404."""
        job = await self._load(job_id)
        await self.access.check_read(job, caller)
        return job

    async def _load(self, job_id: str) -> Job:
        """The live job while it is analyzed (its progress moves), else the job as saved on disk."""
        job = self._analyzing.get(job_id) or await asyncio.to_thread(self.store.load, job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}", details={"job_id": job_id})
        return job

    def sweep_path(self, job: Job) -> Path:
        return self.store.sweep_path(job.job_id)

    def _lock(self, job_id: str) -> asyncio.Lock:
        """The job's lock; it lives as long as someone holds or awaits it."""
        lock = self._locks.get(job_id)
        if lock is None:
            lock = self._locks[job_id] = asyncio.Lock()
        return lock

    async def _save(self, job: Job) -> None:
        job.updated_at = utc_now()
        await asyncio.to_thread(self.store.save, job)

    # -- uploads ---------------------------------------------------------------------------------

    async def upload(
        self,
        job_id: str,
        name: str,
        chunks: AsyncIterator[bytes],
        *,
        caller: Caller,
        content_type: str | None,
        content_length: str | None,
        capture_facts: str | None = None,
    ) -> Upload:
        """Stream the body to a temporary file, check it is usable audio, then publish it under ``name``
        (with the client's capture facts, the ``X-Capture-Facts`` header)."""
        check_upload_name(name)
        capture = parse_capture_facts(capture_facts)
        job = await self._load(job_id)
        await self.access.check_upload(job, caller, name)
        self._check_can_upload(job, name)
        limit = self.settings.max_upload_bytes
        check_declared_length(content_length, limit)
        partial = self.store.partial_path(job_id)
        try:
            with open(partial, "wb") as out:
                if content_type and content_type.lower().startswith("multipart/form-data"):
                    await receive_multipart(chunks, content_type, out, limit)
                else:
                    await receive_raw(chunks, out, limit)
            facts = await asyncio.to_thread(inspect_audio, partial, max_duration_s=self.settings.max_upload_s)
            async with self._lock(job_id):
                job = await self._load(job_id)
                self._check_can_upload(job, name)
                job.move_to(JobStatus.UPLOADING, "upload")
                await asyncio.to_thread(commit_file, partial, self.store.upload_path(job_id, name))
                upload = Upload(name=name, uploaded_at=utc_now(), capture=capture, **facts.model_dump())
                job.uploads.append(upload)
                await self._save(job)
        finally:
            partial.unlink(missing_ok=True)
        log.info("upload stored", extra={"job_id": job_id, "upload": name, "size_bytes": upload.size_bytes})
        return upload

    @staticmethod
    def _check_can_upload(job: Job, name: str) -> None:
        job.check_transition(JobStatus.UPLOADING, "upload")
        if job.upload(name) is not None:
            raise Conflict(
                f"job {job.job_id} already has an upload named {name!r}; choose another name",
                details={"reason": "upload_exists", "name": name},
            )

    # -- analysis --------------------------------------------------------------------------------

    async def analyze(self, job_id: str, request: AnalyzeRequest, caller: Caller) -> Job:
        """Start the analysis and wait up to ``analyze_wait_s`` for it; the job, finished or still analyzing."""
        await self.get_job(job_id, caller)
        async with self._lock(job_id):
            job = await self._load(job_id)
            job.check_transition(JobStatus.ANALYZING, "analyze")
            names = request.uploads if request.uploads is not None else [upload.name for upload in job.uploads]
            self._check_analyzable(job, names, request.source)
            capacity = self.pool.max_workers + self.pool.max_queued
            if len(self._analyses) >= capacity:
                raise Busy(
                    f"{len(self._analyses)} analyses are running or waiting; try again later",
                    headers={"Retry-After": str(self.pool.retry_after_s())},
                )
            job.move_to(JobStatus.ANALYZING, "analyze")
            job.error = None
            job.progress = Progress(fraction=0.0, message="waiting for a worker")
            await self._save(job)
            self._analyzing[job_id] = job
            task = AnalysisTask(
                source=request.source,
                sweep=job.sweep_params,
                uploads=tuple((name, self.store.upload_path(job_id, name)) for name in names),
                captures=tuple(job.upload(name).capture for name in names),
            )
            self._analyses[job_id] = asyncio.create_task(self._run_analysis(job, task), name=f"analysis-{job_id}")
        running = self._analyses.get(job_id)
        if running is not None:
            await asyncio.wait([running], timeout=self.settings.analyze_wait_s)
        return job

    @staticmethod
    def _check_analyzable(job: Job, names: list[str], source: AnalysisSource) -> None:
        unknown = [name for name in names if job.upload(name) is None]
        if unknown:
            raise BadRequest(
                f"job {job.job_id} has no upload named {', '.join(map(repr, unknown))}",
                details={
                    "reason": "unknown_upload",
                    "uploads": unknown,
                    "known": [upload.name for upload in job.uploads],
                },
            )
        if source is AnalysisSource.SWEEP_DECONVOLUTION:
            params = job.sweep_params
            short = [name for name in names if job.upload(name).duration_s < params.duration_s]
            if short:
                raise Unprocessable(
                    f"{', '.join(map(repr, short))} is shorter than the sweep ({params.duration_s:g} s): "
                    "it cannot hold the whole sweep",
                    code="too_short",
                    details={"uploads": short, "sweep_duration_s": params.duration_s},
                )

    async def _run_analysis(self, job: Job, task: AnalysisTask) -> None:
        def on_progress(fraction: float, message: str) -> None:
            job.progress = Progress(fraction=fraction, message=message)

        with log_context(job_id=job.job_id):
            try:
                results = await self.pool.run(
                    analyze_uploads, task, timeout_s=self.settings.analysis_timeout_s, on_progress=on_progress
                )
            except asyncio.CancelledError:
                await self._analysis_finished(job, error=JobError(code="interrupted", message="the service stopped"))
                raise
            except SonalyzeError as exc:
                await self._analysis_finished(job, error=JobError(code=exc.code, message=exc.message))
            except Exception as exc:
                log.exception("analysis crashed")
                await self._analysis_finished(job, error=JobError(code="analysis_failed", message=str(exc)))
            else:
                await self._analysis_finished(job, results=results)
            finally:
                self._analyses.pop(job.job_id, None)

    async def _analysis_finished(
        self, job: Job, *, results: dict[str, dict[str, Any]] | None = None, error: JobError | None = None
    ) -> None:
        """The one place an analysis ends: merge the results, summarize, settle the status, save."""
        async with self._lock(job.job_id):
            if results is not None:
                job.results.update(results)
                job.summary = summarize(job.results)
                failed = [name for name in results if "error" in results[name]]
                if len(failed) == len(results):
                    message = f"no upload could be analyzed: {', '.join(failed)}"
                    error = JobError(code="analysis_failed", message=message)
            job.error = error
            job.progress = Progress(fraction=1.0, message="failed" if error else "done")
            job.move_to(JobStatus.FAILED if error else JobStatus.DONE, "finish the analysis")
            await self._save(job)
            self._analyzing.pop(job.job_id, None)
            await self._send_to_storage(job, results or {})
        log.info("analysis finished", extra={"job_id": job.job_id, "status": job.status.value})

    async def _send_to_storage(self, job: Job, results: dict[str, dict[str, Any]]) -> None:
        """Queue the outputs of this analysis (and a standalone job's measurement record) for storage.

        Under the job's lock, after the save: a job's records enter the outbox in the order of its
        analyses, so an older analysis never overwrites a newer one in storage.
        """
        if self.outbox is None:
            return
        puts = [("measurements", storage_records.measurement_record(job))] if job.lobby_id is None else []
        puts += [("analysis_outputs", storage_records.output_record(job, name, result)) for name, result in results.items()]
        await self.outbox.enqueue_all(puts, aggregate=job.job_id)  # all of them or none

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "service": "measurement",
            "analysis": {
                "running": self.pool.running,
                "queued": self.pool.queued,
                "max_workers": self.pool.max_workers,
                "max_queued": self.pool.max_queued,
            },
        }

