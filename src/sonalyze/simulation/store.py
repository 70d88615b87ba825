"""Simulations in the database, their RIRs in the blob store: every replica sees every simulation.

    simulations (simulation_id, status, runner, lease_until_s, device_id, updated_s, job, result)   one row each
    blob simulations/{id}/rir/{s}_{m}.wav                                  one RIR per source–microphone pair

SQLite (``DATA_DIR/simulation.db``) is the embedded default, PostgreSQL the shared one (``DATABASE_URL``);
the schema is migrated with Alembic at start-up (``sonalyze.simulation.migrations``). The task writes the
RIRs to the blob store (`sonalyze.simulation.worker`) before it answers; ``finish`` then sets the result
and the status in one ``UPDATE ... WHERE status = 'running' AND runner = this replica``: a simulation
finishes once, and a reader never sees a result whose RIRs are missing.

A running simulation is leased to its runner (`sonalyze.common.leases`, ``SIMULATION_JOB_LEASE_S``): a
runner that stops renewing (killed) loses it and another replica claims it (:meth:`SimulationStore.claim_expired`)
and runs it again; the former runner's late ``finish`` then changes nothing. ``device_id`` is the device
that asked without waiting: the pushes go to it, from whichever replica finishes. A restarted replica
fails its own interrupted simulations and no other's.
"""

from __future__ import annotations

import asyncio
import enum
import io
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from sqlalchemy import JSON, Column, Float, MetaData, Row, String, Table, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from sonalyze.common import migrations
from sonalyze.common.blobs import BlobStore
from sonalyze.common.errors import NotFound
from sonalyze.common.leases import Leases
from sonalyze.storage.outbox import outbox_table

_ID = re.compile(r"^[0-9a-f]{32}$")
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

metadata = MetaData()
simulations_table = Table(
    "simulations",
    metadata,
    Column("simulation_id", String(32), primary_key=True),
    Column("status", String(16), nullable=False, index=True),
    Column("runner", String(200)),
    Column("lease_until_s", Float),
    Column("device_id", String(128)),
    Column("updated_s", Float, nullable=False, index=True),
    Column("job", JSON, nullable=False),
    Column("result", JSON),
)


class JobStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


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

    def __init__(self, engine: AsyncEngine, blobs: BlobStore, *, runner: str, lease_s: float = 15.0) -> None:
        self.engine = engine
        self.blobs = blobs
        self.runner = runner
        running = simulations_table.c.status == JobStatus.RUNNING.value
        self.leases = Leases(engine, simulations_table, key="simulation_id", active=running, runner=runner, lease_s=lease_s)

    async def migrate(self) -> None:
        await migrations.upgrade(self.engine, MIGRATIONS_DIR)

    async def create(self, job: dict[str, Any], *, now_s: float, device_id: str | None = None) -> None:
        """Record a new job (``id``, ``status`` running, ``request``, ``created_at``), leased to this replica;
        ``device_id``: where its pushes go."""
        async with self.engine.begin() as connection:
            await connection.execute(
                insert(simulations_table).values(
                    simulation_id=_check_id(job["id"]),
                    status=job["status"],
                    device_id=device_id,
                    updated_s=now_s,
                    job=job,
                    **self.leases.granted(),
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
        error: dict[str, Any] | None = None,
        outbox_rows: Callable[[dict[str, Any]], Sequence[Mapping[str, Any]]] | None = None,
    ) -> dict[str, Any] | None:
        """The one place a finished simulation is recorded (its RIRs are in the blob store already): the
        finished job, or None when it is no longer this replica's to finish (finished, or taken over).

        ``outbox_rows(job)``: the storage outbox rows of the finished job (the outbox table in this database),
        committed in the same transaction: a replica killed right after finishing cannot lose them, and a
        finish that is not this replica's queues none."""
        job = {**await self.job(simulation_id), "status": status.value, "finished_at": finished_at, "error": error}
        async with self.engine.begin() as connection:
            changed = await connection.execute(
                update(simulations_table)
                .where((simulations_table.c.simulation_id == simulation_id) & self.leases.held_here())
                .values(status=status.value, runner=None, lease_until_s=None, updated_s=now_s, job=job, result=result)
            )
            if changed.rowcount != 1:
                return None
            if outbox_rows is not None:
                await connection.execute(insert(outbox_table), list(outbox_rows(job)))
        return job

    async def interrupted(self) -> list[Row]:
        """This replica's simulations still marked running (at start-up: left by a previous process), each
        row with ``simulation_id`` and ``device_id``."""
        columns = (simulations_table.c.simulation_id, simulations_table.c.device_id)
        async with self.engine.connect() as connection:
            return list((await connection.execute(select(*columns).where(self.leases.held_here()))).all())

    async def claim_expired(self, now_s: float, *, exclude: set[str] = frozenset()) -> list[Row]:
        """Take over the running simulations whose lease lapsed before ``now_s`` but ``exclude`` (the ones
        this replica awaits); each row has ``simulation_id``, ``job`` and ``device_id``."""
        columns = [simulations_table.c.job, simulations_table.c.device_id]
        return await self.leases.claim_expired(now_s, columns, exclude=exclude)

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
