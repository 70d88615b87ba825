"""The measurement service's operations, shared by the HTTP routes and the gateway events.

The database is the truth (`sonalyze.measurement.store`): a job is read from its row, changed under
that job's lock and saved (version-checked, so replicas cannot overwrite each other) before the change
is answered; its audio is in the blob store every replica reaches. Only jobs being analyzed stay in memory (their progress changes all the
time). Analyses are tasks (`sonalyze.common.tasks`: this replica's CPU pool, or the Dramatiq queue that
``sonalyze worker`` processes serve when ``TASK_QUEUE_URL`` is set), awaited by background tasks here;
:meth:`MeasurementService._analysis_finished` is the one place where an analysis ends (with results or an error).

The replica awaiting an analysis holds a lease on the job's row and renews it (`_lease_turn`, every third
of ``MEASUREMENT_JOB_LEASE_S``); every replica's same loop claims the analyzing jobs whose lease lapsed
(their replica was killed) and submits their analysis again from the row and the blob store
(`_take_over`). The first save of a result wins (version check): a former runner that wakes up late gets
``concurrent_update`` and drops its result, so the job and its storage records are written once. A
replica that stops gracefully releases its leases: another replica takes over at once (a rolling update
loses no analysis); one alone fails them as ``interrupted`` when it starts again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import soundfile

from sonalyze.acoustics.sweep import SweepParams, exponential_sweep
from sonalyze.common.blobs import PARTIAL_SUFFIX, BlobAddress, blob_store
from sonalyze.common.cpu_pool import DEFAULT_PRELOAD, CpuPool
from sonalyze.common.errors import BadRequest, Conflict, Forbidden, NotFound, SonalyzeError, Unprocessable
from sonalyze.common.internal_auth import Caller, internal_headers
from sonalyze.measurement.access import JobAccess, require_device
from sonalyze.common.logging import log_context
from sonalyze.common.readiness import database_unready
from sonalyze.common.retention import cleanup_forever
from sonalyze.common.tasks import task_runner
from sonalyze.measurement.analysis import AnalysisTask, analyze_uploads, summarize
from sonalyze.measurement import storage_records
from sonalyze.measurement.jobs import (
    AnalysisSource,
    AnalyzeRequest,
    Job,
    JobCreate,
    JobError,
    JobStatus,
    SWEEP_FILE_FORMAT,
    Progress,
    Upload,
    utc_now,
)
from sonalyze.measurement.settings import MeasurementSettings
from sonalyze.measurement.store import JobStore, sweep_key, upload_key
from sonalyze.measurement.uploads import (
    check_declared_length,
    check_sample_rate,
    check_upload_name,
    inspect_audio,
    parse_capture_facts,
    receive_multipart,
    receive_raw,
)
from sonalyze.storage.db import make_engine
from sonalyze.storage.outbox import put_row, writer_outbox

log = logging.getLogger(__name__)

#: Lobby session uploads analysed as they arrive, kept until their job's analyze takes them (oldest dropped).
EARLY_ANALYSES_MAX = 64

UPLOAD_SAVE_ATTEMPTS = 5
"""An upload's save is tried again from the job as saved when another replica changed it meanwhile (the
microphones of one session upload at once, and the gateway spreads them over the replicas)."""

FINAL_STATUSES = frozenset({JobStatus.DONE, JobStatus.FAILED})
PROGRESS_SAVE_INTERVAL_S = 0.25
"""An analysis's progress reaches the database (and so every replica's answers) at most this often."""



class MeasurementService:
    def __init__(self, settings: MeasurementSettings) -> None:
        self.settings = settings
        blobs = blob_store(settings.blob_url, settings.data_dir, endpoint_url=settings.s3_endpoint_url)
        self.store = JobStore(
            make_engine(settings.jobs_database_url), blobs, runner=settings.replica_id, lease_s=settings.job_lease_s
        )
        self.tasks = task_runner(
            settings,
            "analysis",
            lambda: CpuPool(
                settings.analysis_workers,
                settings.analysis_queue,
                preload=(*DEFAULT_PRELOAD, "sonalyze.measurement.analysis"),
                memory_limit_mb=settings.worker_memory_mb,
            ),
        )
        self.blobs_location = BlobAddress(settings.blob_url, settings.data_dir.resolve(), settings.s3_endpoint_url)
        self.access = JobAccess(
            settings.lobby_url,
            headers=internal_headers(settings.internal_auth_token),
            retention_s=settings.job_access_retention_hours * 3600.0,
            cache_s=settings.lobby_access_cache_s,
        )
        self._analyzing: dict[str, Job] = {}
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._analyses: dict[str, asyncio.Task[None]] = {}
        self._progress_saves: dict[str, asyncio.Task[None]] = {}
        self._early: dict[tuple[str, str], asyncio.Task[dict[str, dict[str, Any]]]] = {}
        """(job_id, upload name) → its sweep analysis, started at the upload (`_analyze_early`)."""
        self._warm_up: asyncio.Task[None] | None = None
        self._cleanup: asyncio.Task[None] | None = None
        self._leases: asyncio.Task[None] | None = None
        # In the job database: a job and its storage records commit in one transaction (JobStore.save).
        self.outbox = writer_outbox(settings.storage_url, settings.internal_auth_token, settings.jobs_database_url)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """At start-up: migrate the job database, start the storage outbox, warm the analysis workers up
        (in the background), fail this replica's interrupted analyses, start the lease loop and the
        retention cleanup."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.store.migrate()
        if not self.settings.blob_url:
            await self.store.import_job_files(self.settings.data_dir)
        if self.outbox is not None:
            await self.outbox.start()
        self._warm_up = asyncio.create_task(self.tasks.warm_up())
        for job in await self.store.interrupted():
            error = JobError(code="interrupted", message="the service stopped during the analysis; run it again")
            await self._analysis_finished(job, error=error)  # unless another replica took it over meanwhile
        self._leases = asyncio.create_task(
            cleanup_forever(self._lease_turn, self.settings.job_lease_s / 3.0, "job leases"), name="measurement-leases"
        )
        if self.settings.retention_days > 0:
            self._cleanup = asyncio.create_task(
                cleanup_forever(self.delete_expired, self.settings.cleanup_interval_s, "jobs"), name="measurement-cleanup"
            )

    async def delete_expired(self, now_s: float) -> list[str]:
        """Delete the jobs (and their audio) unchanged for ``MEASUREMENT_RETENTION_DAYS`` before ``now_s``;
        their storage records stay. The ids deleted."""
        before_s = now_s - self.settings.retention_days * 86400.0
        deleted = await self.store.delete_expired(before_s)
        if deleted:
            log.info("expired jobs deleted", extra={"jobs": len(deleted)})
        return deleted

    async def _lease_turn(self, now_s: float) -> None:
        """Renew the leases of the analyses awaited here, then take over those whose lease lapsed."""
        await self.store.renew(list(self._analyzing))
        for job in await self.store.claim_expired(now_s, exclude=set(self._analyzing)):
            await self._take_over(job)

    async def _take_over(self, job: Job) -> None:
        """Run a claimed job's analysis again (its uploads are blobs): awaited here from now on."""
        log.warning(
            "taking over the analysis of a job whose replica stopped renewing its lease", extra={"job_id": job.job_id}
        )
        request = job.analysis or AnalyzeRequest(source=AnalysisSource.SWEEP_DECONVOLUTION)
        names = request.uploads if request.uploads is not None else [upload.name for upload in job.uploads]
        try:
            running = await self._submit(job, request.source, names)
        except SonalyzeError as exc:  # busy: the job fails as if analyze had been refused; analyze it again
            await self._analysis_finished(job, error=JobError(code=exc.code, message=exc.message))
            return
        self._analyzing[job.job_id] = job
        self._analyses[job.job_id] = asyncio.create_task(
            self._run_analysis(job, running, {}), name=f"analysis-{job.job_id}"
        )

    async def close(self) -> None:
        for loop in (self._cleanup, self._leases):
            if loop is not None:
                loop.cancel()
                await asyncio.gather(loop, return_exceptions=True)
        if self._warm_up is not None:
            await asyncio.gather(self._warm_up, return_exceptions=True)
        for task in [*self._analyses.values(), *self._early.values(), *self._progress_saves.values()]:
            task.cancel()
        await asyncio.gather(
            *self._analyses.values(), *self._early.values(), *self._progress_saves.values(), return_exceptions=True
        )
        await self.tasks.close()
        await self.access.aclose()
        if self.outbox is not None:
            await self.outbox.stop()
            await self.outbox.client.aclose()
        await self.store.engine.dispose()

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
        sweep_file = self._temp_path()
        try:
            await asyncio.to_thread(_write_sweep, sweep_file, params, job.sample_rate_hz)
            records = self._storage_rows(job, {})
            await self.store.create(job, sweep_file, records=records)
        finally:
            sweep_file.unlink(missing_ok=True)
        if records:
            self.outbox.wake()
        log.info("job created", extra={"job_id": job.job_id, "sample_rate_hz": job.sample_rate_hz})
        return job

    async def get_job(self, job_id: str, caller: Caller) -> Job:
        """The job, if ``caller`` may reach it (:mod:`sonalyze.measurement.access`); else 404."""
        job = await self._load(job_id)
        await self.access.check_read(job, caller)
        return job

    async def _load(self, job_id: str) -> Job:
        """The live job while it is analyzed here (its progress moves), else the job as saved."""
        job = self._analyzing.get(job_id) or await self.store.load(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}", details={"job_id": job_id})
        return job

    async def sweep_path(self, job: Job) -> Path:
        """A local file holding the job's sweep (the blob itself, or this replica's cached copy)."""
        path = await asyncio.to_thread(self.store.blobs.local_path, sweep_key(job.job_id))
        if path is None:
            raise NotFound(f"job {job.job_id} has no sweep", details={"job_id": job.job_id})
        return path

    def _temp_path(self) -> Path:
        return self.store.blobs.temp_dir() / f"{uuid.uuid4().hex}{PARTIAL_SUFFIX}"

    def _lock(self, job_id: str) -> asyncio.Lock:
        """The job's lock; it lives as long as someone holds or awaits it."""
        lock = self._locks.get(job_id)
        if lock is None:
            lock = self._locks[job_id] = asyncio.Lock()
        return lock

    async def _save(self, job: Job, *, results: dict[str, dict[str, Any]] | None = None) -> None:
        """Save the job; with ``results`` (an analysis ended) its storage records in the same transaction."""
        job.updated_at = utc_now()
        records = self._storage_rows(job, results) if results is not None else []
        await self.store.save(job, records=records)
        if records:
            self.outbox.wake()

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
        partial = self._temp_path()
        try:
            with open(partial, "wb") as out:
                if content_type and content_type.lower().startswith("multipart/form-data"):
                    await receive_multipart(chunks, content_type, out, limit)
                else:
                    await receive_raw(chunks, out, limit)
            facts = await asyncio.to_thread(inspect_audio, partial, max_duration_s=self.settings.max_upload_s)
            async with self._lock(job_id):
                for attempt in range(1, UPLOAD_SAVE_ATTEMPTS + 1):
                    job = await self._load(job_id)
                    self._check_can_upload(job, name)
                    job.move_to(JobStatus.UPLOADING, "upload")
                    if attempt == 1:
                        await asyncio.to_thread(self.store.blobs.put_file, upload_key(job_id, name), partial)
                    upload = Upload(name=name, uploaded_at=utc_now(), capture=capture, **facts.model_dump())
                    job.uploads.append(upload)
                    try:
                        await self._save(job)
                        break
                    except Conflict:  # another replica stored another upload of this job meanwhile: add to its version
                        if attempt == UPLOAD_SAVE_ATTEMPTS:
                            raise
        finally:
            partial.unlink(missing_ok=True)
        log.info("upload stored", extra={"job_id": job_id, "upload": name, "size_bytes": upload.size_bytes})
        if job.lobby_id is not None:
            self._analyze_early(job, upload)
        return upload

    def _analyze_early(self, job: Job, upload: Upload) -> None:
        """A lobby session's recording is analysed (sweep deconvolution) as soon as it is stored, so when
        the last one arrives only that one is left for ``analyze`` (uploads are never replaced)."""
        while len(self._early) >= EARLY_ANALYSES_MAX:
            self._early.pop(next(iter(self._early))).cancel()

        async def run() -> dict[str, dict[str, Any]]:
            task = self._analysis_task(job, AnalysisSource.SWEEP_DECONVOLUTION, [upload.name])
            return await (await self.tasks.submit(analyze_uploads, task, timeout_s=self.settings.analysis_timeout_s))

        early = asyncio.create_task(run(), name=f"early-analysis-{job.job_id}-{upload.name}")
        early.add_done_callback(lambda t: t.cancelled() or t.exception())  # a failure only means analyze runs it
        self._early[(job.job_id, upload.name)] = early

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
            early_names = [name for name in names if (job_id, name) in self._early]
            if request.source is not AnalysisSource.SWEEP_DECONVOLUTION:
                early_names = []  # the early analyses deconvolved a sweep: not this analysis
            rest = [name for name in names if name not in early_names]
            running = await self._submit(job, request.source, rest) if rest else None  # Busy here, before any change
            early = {name: self._early.pop((job_id, name)) for name in early_names}
            for name in names:
                stale = self._early.pop((job_id, name), None)
                if stale is not None:
                    stale.cancel()
            job.move_to(JobStatus.ANALYZING, "analyze")
            job.analysis = AnalyzeRequest(source=request.source, uploads=names)
            job.error = None
            job.progress = Progress(fraction=0.0, message="waiting for a worker")
            try:
                await self._save(job)
            except BaseException:
                for task in [running, *early.values()]:
                    if task is not None:
                        task.cancel()
                raise
            self._analyzing[job_id] = job
            self._analyses[job_id] = asyncio.create_task(
                self._run_analysis(job, running, early), name=f"analysis-{job_id}"
            )
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

    async def _submit(
        self, job: Job, source: AnalysisSource, names: list[str]
    ) -> asyncio.Task[dict[str, dict[str, Any]]]:
        """Submit the analysis of ``names`` (Busy when the queue is full); its progress goes to ``job``."""

        def on_progress(fraction: float, message: str) -> None:
            job.progress = Progress(fraction=fraction, message=message)
            self._save_progress_soon(job)

        task = self._analysis_task(job, source, names)
        return await self.tasks.submit(
            analyze_uploads, task, timeout_s=self.settings.analysis_timeout_s, on_progress=on_progress
        )

    def _analysis_task(self, job: Job, source: AnalysisSource, names: list[str]) -> AnalysisTask:
        """What a worker needs to analyze ``names`` of ``job``: blob keys, not local files (`BlobAddress`)."""
        return AnalysisTask(
            source=source,
            sweep=job.sweep_params,
            uploads=tuple((name, upload_key(job.job_id, name)) for name in names),
            blobs=self.blobs_location,
            captures=tuple(job.upload(name).capture for name in names),
        )

    async def _run_analysis(
        self, job: Job, running: asyncio.Task[dict[str, dict[str, Any]]] | None, early: dict[str, asyncio.Task[Any]]
    ) -> None:
        """Await the submitted task and the early analyses; an early one that failed (busy, crash) runs again."""
        with log_context(job_id=job.job_id):
            try:
                results = await self._early_results(early)
                again = [name for name in early if name not in results]
                if again:
                    task = self._analysis_task(job, AnalysisSource.SWEEP_DECONVOLUTION, again)
                    results |= await (await self.tasks.submit(analyze_uploads, task, timeout_s=self.settings.analysis_timeout_s))
                if running is not None:
                    results |= await running
            except asyncio.CancelledError:  # this replica stops: another one (or this one restarted) takes over
                if running is not None:
                    running.cancel()
                # No longer awaited here: a progress report the pool still delivers while its worker stops
                # (`_save_progress`) must not save the job, which would lease it to this replica again.
                if self._analyzing.get(job.job_id) is job:
                    del self._analyzing[job.job_id]
                await self.store.release([job.job_id])
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

    def _save_progress_soon(self, job: Job) -> None:
        """Save the job's latest progress within ``PROGRESS_SAVE_INTERVAL_S`` (one pending save per job):
        the other replicas read the job from the database, not from this replica's memory."""
        if job.job_id not in self._progress_saves:
            self._progress_saves[job.job_id] = asyncio.create_task(self._save_progress(job))

    async def _save_progress(self, job: Job) -> None:
        try:
            await asyncio.sleep(PROGRESS_SAVE_INTERVAL_S)
            async with self._lock(job.job_id):
                if self._analyzing.get(job.job_id) is job:  # not finished meanwhile
                    await self._save(job)
        except Exception:  # the next save or the end of the analysis writes it
            log.warning("saving the progress of job %s failed", job.job_id, exc_info=True)
        finally:
            self._progress_saves.pop(job.job_id, None)

    @staticmethod
    async def _early_results(early: dict[str, asyncio.Task[Any]]) -> dict[str, dict[str, Any]]:
        """The results of the early analyses that succeeded; one that failed (busy, crash) is left out."""
        results: dict[str, dict[str, Any]] = {}
        for running in early.values():
            try:
                await asyncio.wait([running])
            except asyncio.CancelledError:
                for other in early.values():
                    other.cancel()
                raise
            if not running.cancelled() and running.exception() is None:
                results |= running.result()
        return results

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
            try:
                await self._save(job, results=results or {})
            except Conflict:  # another replica took the job over (this one's lease lapsed): its result counts
                log.warning("analysis result dropped: the job was taken over", extra={"job_id": job.job_id})
                return
            finally:
                if self._analyzing.get(job.job_id) is job:
                    del self._analyzing[job.job_id]
        refused = {
            name: f"{report['error']['code']}: {report['error']['message']}"
            for name, report in (results or {}).items()
            if "error" in report
        }
        log.info("analysis finished", extra={"job_id": job.job_id, "status": job.status.value, "refused": refused})

    def _storage_rows(self, job: Job, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """The outbox rows of ``results`` (and of a standalone job's measurement record), saved with the
        job: a replica killed after the save cannot lose them, and since the job's saves are ordered by its
        version, an older analysis never overwrites a newer one in storage."""
        if self.outbox is None:
            return []
        puts = [("measurements", storage_records.measurement_record(job))] if job.lobby_id is None else []
        puts += [("analysis_outputs", storage_records.output_record(job, name, result)) for name, result in results.items()]
        return [put_row(resource, record, aggregate=job.job_id) for resource, record in puts]

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "service": "measurement",
            "analysis": self.tasks.health(),
        }

    async def ready(self) -> str | None:
        """None when this replica can take work: the job database and the task queue answer; else why not."""
        return await database_unready(self.store.engine, "job database") or await self.tasks.ready()


def _write_sweep(path: Path, params: SweepParams, fs_hz: int) -> None:
    """The sweep file (`SWEEP_FILE_FORMAT`) at ``path``."""
    sweep = exponential_sweep(params)
    soundfile.write(path, sweep, fs_hz, subtype=SWEEP_FILE_FORMAT["subtype"], format="WAV")
