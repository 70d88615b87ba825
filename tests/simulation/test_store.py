"""Simulations in the database (SQLite and PostgreSQL), RIRs in the blob store: shared by replicas."""

from __future__ import annotations

import pytest

from sonalyze.common.blobs import LocalBlobStore
from sonalyze.common.errors import Conflict, NotFound
from sonalyze.simulation.store import JobStatus, SimulationStore, rir_key
from sonalyze.storage.db import make_engine


def _job(simulation_id: str) -> dict:
    return {"id": simulation_id, "status": JobStatus.RUNNING.value, "created_at": "2026-01-01T00:00:00Z", "request": {}}


@pytest.fixture
async def stores(database_url, tmp_path):
    """Two replicas on one database and one blob store."""
    blobs = LocalBlobStore(tmp_path / "blobs")
    first = SimulationStore(make_engine(database_url), blobs, runner="replica-a")
    second = SimulationStore(first.engine, blobs, runner="replica-b")
    await first.migrate()
    await second.migrate()  # idempotent: every replica migrates at start-up
    yield first, second
    await first.engine.dispose()


async def test_a_simulation_finishes_once_and_every_replica_reads_it(stores):
    first, second = stores
    await first.create(_job("a" * 32), now_s=100.0)
    finished = await second.finish(
        "a" * 32, status=JobStatus.SUCCEEDED, finished_at="t", now_s=101.0, result={"pairs": [1]}, rirs=[(0, 1, b"RIFF")]
    )
    assert finished["status"] == "succeeded"
    assert await first.job_and_result("a" * 32) == (finished, {"pairs": [1]})
    assert (await first.rir_path("a" * 32, 0, 1)).read_bytes() == b"RIFF"
    with pytest.raises(Conflict):
        await first.finish("a" * 32, status=JobStatus.FAILED, finished_at="t", now_s=102.0)
    with pytest.raises(NotFound):
        await first.rir_path("a" * 32, 1, 1)
    for missing in ("b" * 32, "../x"):
        with pytest.raises(NotFound):
            await first.job(missing)


async def test_running_ids_are_the_runners_own(stores):
    first, second = stores
    await first.create(_job("a" * 32), now_s=1.0)
    await second.create(_job("b" * 32), now_s=1.0)
    assert await first.running_ids() == ["a" * 32] and await second.running_ids() == ["b" * 32]


async def test_expired_simulations_and_their_rirs_are_deleted(stores):
    first, _ = stores
    for simulation_id in ("a" * 32, "b" * 32, "c" * 32):
        await first.create(_job(simulation_id), now_s=10.0)
    await first.finish("a" * 32, status=JobStatus.SUCCEEDED, finished_at="t", now_s=10.0, result={}, rirs=[(0, 0, b"x")])
    await first.finish("b" * 32, status=JobStatus.FAILED, finished_at="t", now_s=30.0)
    assert await first.delete_expired(20.0) == ["a" * 32]  # "c" still runs, "b" is recent
    assert first.blobs.local_path(rir_key("a" * 32, 0, 0)) is None
    with pytest.raises(NotFound):
        await first.job("a" * 32)
    assert (await first.job("b" * 32))["status"] == "failed" and (await first.job("c" * 32))["status"] == "running"
