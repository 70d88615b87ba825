"""Simulations in the database, their RIRs in the blob store: every replica sees every simulation.

    simulations (simulation_id, status, runner, updated_s, job, result)   one row per simulation
    blob simulations/{id}/rir/{s}_{m}.wav                                  one RIR per source–microphone pair

SQLite (``DATA_DIR/simulation.db``) is the embedded default, PostgreSQL the shared one (``DATABASE_URL``);
the schema is migrated with Alembic at start-up (``sonalyze.simulation.migrations``). ``finish`` publishes
the RIRs first, then sets the result and the status in one ``UPDATE ... WHERE status = 'running'``: a
simulation finishes once, and a reader never sees a result whose RIRs are missing. ``runner`` names the
replica running it, so a restarted replica fails its own interrupted simulations and no other's.
"""

from __future__ import annotations

import asyncio
import enum
import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from sqlalchemy import JSON, Column, Float, MetaData, String, Table, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from sonalyze.common import migrations
from sonalyze.common.blobs import BlobStore, put_bytes
from sonalyze.common.errors import Conflict, NotFound

_ID = re.compile(r"^[0-9a-f]{32}$")
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

metadata = MetaData()
simulations_table = Table(
    "simulations",
    metadata,
    Column("simulation_id", String(32), primary_key=True),
    Column("status", String(16), nullable=False, index=True),
    Column("runner", String(200)),
    Column("updated_s", Float, nullable=False, index=True),
    Column("job", JSON, nullable=False),
    Column("result", JSON),
)


class JobStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
}


def check_transition(current: JobStatus, target: JobStatus) -> None:
    if target not in TRANSITIONS[current]:
        raise Conflict(f"a {current.value} simulation cannot become {target.value}", code="invalid_transition")


def wav_bytes(rir: np.ndarray, fs_hz: int) -> bytes:
    """A mono 32-bit float WAV of ``rir`` (amplitudes as simulated, not normalised)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(rir, dtype=np.float32), fs_hz, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def rir_key(simulation_id: str, source: int, microphone: int) -> str:
    return f"simulations/{simulation_id}/rir/{source}_{microphone}.wav"


def _check_id(simulation_id: str) -> str:
    if not _ID.match(simulation_id):
        raise NotFound(f"no simulation {simulation_id!r}")
    return simulation_id


class SimulationStore:
    """Jobs and results in the database, RIR files in the blob store."""

    def __init__(self, engine: AsyncEngine, blobs: BlobStore, *, runner: str) -> None:
        self.engine = engine
        self.blobs = blobs
        self.runner = runner

    async def migrate(self) -> None:
        await migrations.upgrade(self.engine, MIGRATIONS_DIR)

    async def create(self, job: dict[str, Any], *, now_s: float) -> None:
        """Record a new job (``id``, ``status`` running, ``request``, ``created_at``)."""
        async with self.engine.begin() as connection:
            await connection.execute(
                insert(simulations_table).values(
                    simulation_id=_check_id(job["id"]), status=job["status"], runner=self.runner, updated_s=now_s, job=job
                )
            )

    async def discard(self, simulation_id: str) -> None:
        """Forget a job that never ran (its request was refused)."""
        async with self.engine.begin() as connection:
            await connection.execute(delete(simulations_table).where(simulations_table.c.simulation_id == simulation_id))

    async def _row(self, simulation_id: str):
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(simulations_table.c.job, simulations_table.c.result).where(
                        simulations_table.c.simulation_id == _check_id(simulation_id)
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"no simulation {simulation_id!r}")
        return row

    async def job(self, simulation_id: str) -> dict[str, Any]:
        return (await self._row(simulation_id)).job

    async def job_and_result(self, simulation_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        row = await self._row(simulation_id)
        return row.job, row.result

    async def rir_path(self, simulation_id: str, source: int, microphone: int) -> Path:
        path = await asyncio.to_thread(self.blobs.local_path, rir_key(_check_id(simulation_id), source, microphone))
        if path is None:
            raise NotFound(f"simulation {simulation_id!r} has no RIR for source {source} and microphone {microphone}")
        return path

    async def finish(
        self,
        simulation_id: str,
        *,
        status: JobStatus,
        finished_at: str,
        now_s: float,
        result: dict[str, Any] | None = None,
        rirs: Iterable[tuple[int, int, bytes]] = (),
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The one place a finished simulation is recorded: RIRs, then the result and the job status."""
        job = await self.job(simulation_id)
        check_transition(JobStatus(job["status"]), status)
        for source, microphone, data in rirs:
            await asyncio.to_thread(put_bytes, self.blobs, rir_key(simulation_id, source, microphone), data)
        job = {**job, "status": status.value, "finished_at": finished_at, "error": error}
        async with self.engine.begin() as connection:
            changed = await connection.execute(
                update(simulations_table)
                .where(
                    (simulations_table.c.simulation_id == simulation_id)
                    & (simulations_table.c.status == JobStatus.RUNNING.value)
                )
                .values(status=status.value, runner=None, updated_s=now_s, job=job, result=result)
            )
        if changed.rowcount != 1:  # another replica finished it meanwhile
            check_transition(JobStatus((await self.job(simulation_id))["status"]), status)
        return job

    async def running_ids(self) -> list[str]:
        """This replica's jobs still marked running (at start-up: left by a previous process)."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(simulations_table.c.simulation_id).where(
                    (simulations_table.c.status == JobStatus.RUNNING.value)
                    & (simulations_table.c.runner == self.runner)
                )
            )
            return list(rows.scalars())

    async def delete_expired(self, before_s: float) -> list[str]:
        """Delete the finished simulations last changed before ``before_s`` (Unix time) and their RIRs."""
        async with self.engine.begin() as connection:
            ids = list(
                (
                    await connection.execute(
                        select(simulations_table.c.simulation_id).where(
                            (simulations_table.c.updated_s < before_s)
                            & (simulations_table.c.status != JobStatus.RUNNING.value)
                        )
                    )
                ).scalars()
            )
            if ids:
                await connection.execute(delete(simulations_table).where(simulations_table.c.simulation_id.in_(ids)))
        for simulation_id in ids:
            await asyncio.to_thread(self.blobs.delete_prefix, f"simulations/{simulation_id}")
        return ids
