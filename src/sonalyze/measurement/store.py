"""Jobs in the database, their audio in the blob store: every replica sees every job.

    measurement_jobs (job_id, status, version, runner, lease_until_s, updated_s, body)   the job as JSON, one row
    blob jobs/{job_id}/sweep.wav          the sweep to play, written once at creation
    blob jobs/{job_id}/uploads/{name}     each upload, published once complete (`sonalyze.common.blobs`)

SQLite (``DATA_DIR/measurement.db``) is the embedded default, PostgreSQL the shared one (``DATABASE_URL``);
the schema is migrated with Alembic at start-up (``sonalyze.measurement.migrations``). A save checks the
``version`` it loaded (optimistic concurrency): two replicas changing one job at once cannot both win,
the later one gets ``409 conflict`` (``reason: concurrent_update``). ``runner`` names the replica running
an analysis, so a restarted replica fails its own interrupted analyses and no other's.

An analyzing job is leased to its runner until ``lease_until_s`` (Unix time, ``MEASUREMENT_JOB_LEASE_S``
after each save or :meth:`JobStore.renew`), with the leases of `sonalyze.common.leases`. A runner that
stops renewing (killed) loses the job: any replica claims it (:meth:`JobStore.claim_expired`: a
conditional UPDATE on the version, so one claim wins and the former runner's late save gets
``concurrent_update``) and runs its analysis again; a runner that stops gracefully ends its leases at once
(:meth:`JobStore.release`). A row without a lease (written before migration ``0002``) counts as expired.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Column, Float, Integer, MetaData, String, Table, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from sonalyze.common import migrations
from sonalyze.common.blobs import BlobStore
from sonalyze.common.errors import Conflict
from sonalyze.common.leases import Leases
from sonalyze.measurement.jobs import JOB_ID_PATTERN, Job, JobStatus
from sonalyze.storage.outbox import outbox_table

metadata = MetaData()
jobs_table = Table(
    "measurement_jobs",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("status", String(16), nullable=False, index=True),
    Column("version", Integer, nullable=False),
    Column("runner", String(200)),
    Column("lease_until_s", Float),
    Column("updated_s", Float, nullable=False, index=True),
    Column("body", JSON, nullable=False),
)
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def sweep_key(job_id: str) -> str:
    return f"jobs/{job_id}/sweep.wav"


def upload_key(job_id: str, name: str) -> str:
    return f"jobs/{job_id}/uploads/{name}"


class JobStore:
    def __init__(self, engine: AsyncEngine, blobs: BlobStore, *, runner: str, lease_s: float = 15.0) -> None:
        self.engine = engine
        self.blobs = blobs
        self.runner = runner
        self.leases = Leases(
            engine, jobs_table, key="job_id", active=jobs_table.c.status == JobStatus.ANALYZING.value, runner=runner, lease_s=lease_s
        )

    async def migrate(self) -> None:
        await migrations.upgrade(self.engine, MIGRATIONS_DIR)

    def _row(self, job: Job, version: int) -> dict:
        lease = self.leases.granted() if job.status is JobStatus.ANALYZING else {"runner": None, "lease_until_s": None}
        return {
            "status": job.status.value,
            "version": version,
            **lease,
            "updated_s": job.updated_at.timestamp(),
            "body": job.model_dump(mode="json"),
        }

    async def create(self, job: Job, sweep_file: Path, *, records: Sequence[Mapping[str, Any]] = ()) -> None:
        """Publish the sweep, then insert the job (with ``records``, as :meth:`save`): a job that exists
        always has its sweep."""
        await asyncio.to_thread(self.blobs.put_file, sweep_key(job.job_id), sweep_file)
        async with self.engine.begin() as connection:
            await connection.execute(insert(jobs_table).values(job_id=job.job_id, **self._row(job, 1)))
            if records:
                await connection.execute(insert(outbox_table), list(records))
        job.version = 1

    async def save(self, job: Job, *, records: Sequence[Mapping[str, Any]] = ()) -> None:
        """Write ``job`` if nobody changed it since this replica read it; else 409 ``concurrent_update``.

        ``records`` are storage outbox rows (:func:`sonalyze.storage.outbox.put_row`; the outbox table in
        this database) committed in the same transaction as the job: a replica killed right after the
        save cannot lose them, and a refused save queues none."""
        seen = job.version
        condition = (jobs_table.c.job_id == job.job_id) & (jobs_table.c.version == seen)
        async with self.engine.begin() as connection:
            result = await connection.execute(update(jobs_table).where(condition).values(**self._row(job, seen + 1)))
            if result.rowcount != 1:
                raise Conflict(
                    f"job {job.job_id} was changed meanwhile (by another replica); try again",
                    details={"reason": "concurrent_update"},
                )
            if records:
                await connection.execute(insert(outbox_table), list(records))
        job.version = seen + 1

    async def load(self, job_id: str) -> Job | None:
        if not JOB_ID_PATTERN.fullmatch(job_id):
            return None
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(jobs_table.c.version, jobs_table.c.body).where(jobs_table.c.job_id == job_id)
                )
            ).first()
        if row is None:
            return None
        return _job(row)

    async def interrupted(self) -> list[Job]:
        """The jobs this replica (``runner``) was analyzing when it stopped."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(jobs_table.c.job_id, jobs_table.c.version, jobs_table.c.body).where(self.leases.held_here())
            )
            return [_job(row) for row in rows]

    async def renew(self, job_ids: list[str]) -> None:
        """Extend this runner's lease on ``job_ids`` (no version change: the job itself is not touched); a
        job another replica took over meanwhile stays that replica's."""
        await self.leases.renew(job_ids)

    async def release(self, job_ids: list[str]) -> None:
        """End this runner's lease on ``job_ids`` now (it stops): the next claim takes them over."""
        await self.leases.release(job_ids)

    async def claim_expired(self, now_s: float, *, exclude: set[str] = frozenset(), limit: int = 16) -> list[Job]:
        """Take over up to ``limit`` analyzing jobs whose lease ended before ``now_s``, but ``exclude`` (the
        ones this replica still awaits: it renews them); of several replicas claiming one job one wins."""
        jobs = []
        for row in await self.leases.claim_expired(now_s, [jobs_table.c.body], exclude=exclude, limit=limit):
            job = _job(row)
            job.version += 1  # the claim's bump
            jobs.append(job)
        return jobs

    async def delete_expired(self, before_s: float) -> list[str]:
        """Delete the jobs last changed before ``before_s`` (Unix time) that are not being analyzed, and
        their audio; their ids. Rows go first: a job never exists without its sweep."""
        async with self.engine.begin() as connection:
            ids = list(
                (
                    await connection.execute(
                        select(jobs_table.c.job_id).where(
                            (jobs_table.c.updated_s < before_s) & (jobs_table.c.status != JobStatus.ANALYZING.value)
                        )
                    )
                ).scalars()
            )
            if ids:
                await connection.execute(delete(jobs_table).where(jobs_table.c.job_id.in_(ids)))
        for job_id in ids:
            await asyncio.to_thread(self.blobs.delete_prefix, f"jobs/{job_id}")
        return ids

    async def import_job_files(self, data_dir: Path) -> int:
        """Insert the jobs of the former on-disk layout (``DATA_DIR/jobs/{id}/job.json``) not yet in the
        database; their audio already sits at the folder store's keys. How many were imported."""
        jobs_dir = data_dir / "jobs"
        if not jobs_dir.is_dir():
            return 0
        files = [path for path in jobs_dir.glob("*/job.json") if JOB_ID_PATTERN.fullmatch(path.parent.name)]
        imported = 0
        for path in files:
            job = Job.model_validate_json(await asyncio.to_thread(path.read_bytes))
            async with self.engine.begin() as connection:
                exists = await connection.execute(select(jobs_table.c.job_id).where(jobs_table.c.job_id == job.job_id))
                if exists.first() is None:
                    await connection.execute(insert(jobs_table).values(job_id=job.job_id, **self._row(job, 1)))
                    imported += 1
        return imported


def _job(row) -> Job:
    job = Job.model_validate(row.body)
    job.version = row.version
    return job
