"""Simulations in the database (SQLite and PostgreSQL), RIRs in the blob store: shared by replicas, leased to
the replica running them and claimed once by another when that lease lapses."""

from __future__ import annotations

import asyncio
import time

import pytest

from sonalyze.common.blobs import LocalBlobStore, put_bytes
from sonalyze.common.errors import NotFound
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
    put_bytes(first.blobs, rir_key("a" * 32, 0, 1), b"RIFF")  # what the task writes
    assert await second.finish("a" * 32, status=JobStatus.SUCCEEDED, finished_at="t", now_s=101.0) is None  # not its own
    finished = await first.finish("a" * 32, status=JobStatus.SUCCEEDED, finished_at="t", now_s=101.0, result={"pairs": [1]})
    assert finished["status"] == "succeeded"
    assert await second.job_and_result("a" * 32) == (finished, {"pairs": [1]})
    assert (await second.rir_path("a" * 32, 0, 1)).read_bytes() == b"RIFF"
    assert await first.finish("a" * 32, status=JobStatus.FAILED, finished_at="t", now_s=102.0) is None  # once
    assert (await second.job("a" * 32))["status"] == "succeeded"
    with pytest.raises(NotFound):
        await first.rir_path("a" * 32, 1, 1)
    for missing in ("b" * 32, "../x"):
        with pytest.raises(NotFound):
            await first.job(missing)


async def test_interrupted_simulations_are_the_runners_own(stores):
    first, second = stores
    await first.create(_job("a" * 32), now_s=1.0, device_id="phone-1")
    await second.create(_job("b" * 32), now_s=1.0)
    assert [tuple(row) for row in await first.interrupted()] == [("a" * 32, "phone-1")]
    assert [tuple(row) for row in await second.interrupted()] == [("b" * 32, None)]


async def test_a_lapsed_lease_is_claimed_once_and_the_former_runner_cannot_finish(database_url, tmp_path):
    blobs = LocalBlobStore(tmp_path / "blobs")
    owner = SimulationStore(make_engine(database_url), blobs, runner="replica-a", lease_s=0.4)
    others = [SimulationStore(owner.engine, blobs, runner=name, lease_s=30.0) for name in ("replica-b", "replica-c")]
    try:
        await owner.migrate()
        await owner.create(_job("a" * 32), now_s=time.time(), device_id="phone-1")
        assert await others[0].claim_expired(time.time()) == []  # leased to its owner: nobody takes it
        await asyncio.sleep(0.2)
        await owner.leases.renew(["a" * 32])
        await asyncio.sleep(0.2)
        assert await others[0].claim_expired(time.time()) == []  # renewed: still the owner's
        await asyncio.sleep(0.4)  # the owner stopped renewing
        assert await owner.claim_expired(time.time(), exclude={"a" * 32}) == []  # one it still awaits
        claims = await asyncio.gather(*(other.claim_expired(time.time()) for other in others))
        winners = [(other, claim) for other, claim in zip(others, claims) if claim]
        assert len(winners) == 1, claims
        winner, [row] = winners[0]
        assert (row.simulation_id, row.device_id, row.job) == ("a" * 32, "phone-1", _job("a" * 32))
        await owner.leases.renew(["a" * 32])  # the former owner, late: the lease stays the winner's
        assert await owner.interrupted() == [] and await winner.claim_expired(time.time() + 29.0) == []
        assert await owner.finish("a" * 32, status=JobStatus.SUCCEEDED, finished_at="t", now_s=1.0, result={}) is None
        assert (await winner.finish("a" * 32, status=JobStatus.SUCCEEDED, finished_at="t", now_s=1.0, result={}))["status"] == "succeeded"
        assert await winner.claim_expired(time.time() + 3600) == []  # finished: nothing to claim
    finally:
        await owner.engine.dispose()


async def test_expired_simulations_and_their_rirs_are_deleted(stores):
    first, _ = stores
    for simulation_id in ("a" * 32, "b" * 32, "c" * 32):
        await first.create(_job(simulation_id), now_s=10.0)
    put_bytes(first.blobs, rir_key("a" * 32, 0, 0), b"x")
    await first.finish("a" * 32, status=JobStatus.SUCCEEDED, finished_at="t", now_s=10.0, result={})
    await first.finish("b" * 32, status=JobStatus.FAILED, finished_at="t", now_s=30.0)
    assert await first.delete_expired(20.0) == ["a" * 32]  # "c" still runs, "b" is recent
    assert first.blobs.local_path(rir_key("a" * 32, 0, 0)) is None
    with pytest.raises(NotFound):
        await first.job("a" * 32)
    assert (await first.job("b" * 32))["status"] == "failed" and (await first.job("c" * 32))["status"] == "running"
