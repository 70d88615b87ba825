"""An analyzing job is leased to the replica awaiting it; when that replica dies, another one takes it over.

The store's lease on SQLite and PostgreSQL, then two ``sonalyze serve measurement`` processes on one
PostgreSQL with a ``sonalyze worker`` on Redis (database ``REDIS_DB``, flushed first): replica A is killed (SIGKILL)
while its analysis runs, replica B finishes the job and records its result once.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from sonalyze.common.blobs import LocalBlobStore
from sonalyze.common.errors import Conflict
from sonalyze.measurement.jobs import AnalyzeRequest, Job, JobStatus
from sonalyze.measurement.main import create_app
from sonalyze.measurement.settings import MeasurementSettings
from sonalyze.measurement.store import JobStore, jobs_table
from sonalyze.storage.db import make_engine
from sonalyze.storage.outbox import outbox_table
from tests.support.cluster import Worker, measurement_replica
from tests.support.servers import INTERNAL_TOKEN, SERVICE_HEADERS, ThreadedServer, free_port

REDIS_DB = 13
"""This module's database of the test Redis (the ``queue_url`` fixture)."""
LEASE_S = 2.0
OWNER_LEASE_S = 0.4
"""The store test's first runner: short, so its lease lapses within the test."""
UPLOADS = 30
"""Enough uploads that the analysis (≈ 30 ms each in a warm worker, after its start-up) outlasts A's kill."""


def _analyzing_job() -> Job:
    from sonalyze.acoustics.sweep import SweepParams

    job = Job.create(SweepParams(fs_hz=48000, duration_s=1.0))
    job.move_to(JobStatus.UPLOADING, "upload")
    job.move_to(JobStatus.ANALYZING, "analyze")
    job.analysis = AnalyzeRequest(source="impulse_response", uploads=["ir"])
    return job


async def test_a_lapsed_lease_is_claimed_once_and_the_former_runner_cannot_save(database_url, tmp_path):
    blobs = LocalBlobStore(tmp_path / "blobs")
    owner = JobStore(make_engine(database_url), blobs, runner="replica-a", lease_s=OWNER_LEASE_S)
    others = [JobStore(owner.engine, blobs, runner=name, lease_s=LEASE_S) for name in ("replica-b", "replica-c")]
    try:
        await owner.migrate()
        sweep = tmp_path / "sweep.wav"
        sweep.write_bytes(b"x")
        job = _analyzing_job()
        await owner.create(job, sweep)
        assert await others[0].claim_expired(time.time()) == []  # leased to its owner: nobody takes it
        await asyncio.sleep(OWNER_LEASE_S / 2)
        await owner.renew([job.job_id])
        await asyncio.sleep(OWNER_LEASE_S / 2)
        assert await others[0].claim_expired(time.time()) == []  # renewed: still the owner's

        await asyncio.sleep(OWNER_LEASE_S)  # the owner stopped renewing
        assert await owner.claim_expired(time.time(), exclude={job.job_id}) == []  # one it still awaits
        claims = await asyncio.gather(*(other.claim_expired(time.time()) for other in others))
        winners = [claim for claim in claims if claim]
        assert len(winners) == 1 and [taken.job_id for taken in winners[0]] == [job.job_id]
        taken = winners[0][0]
        assert taken.analysis == job.analysis and taken.version == job.version + 1
        winner = next(other for other, claim in zip(others, claims) if claim)
        before = await _lease_row(owner.engine, job.job_id)
        await owner.renew([job.job_id])  # the former owner, late: the job and its lease stay the winner's
        assert await _lease_row(owner.engine, job.job_id) == before and before.runner == winner.runner
        assert await owner.interrupted() == []  # and, restarted, does not fail it
        job.move_to(JobStatus.DONE, "finish the analysis")
        with pytest.raises(Conflict):  # its late result does not overwrite the new runner's
            await owner.save(job)
        taken.move_to(JobStatus.DONE, "finish the analysis")
        await winner.save(taken)
        assert await winner.claim_expired(time.time() + 3600) == []  # done: no lease, nothing to claim
    finally:
        await owner.engine.dispose()


async def _lease_row(engine: AsyncEngine, job_id: str):
    async with engine.connect() as connection:
        columns = (jobs_table.c.status, jobs_table.c.runner, jobs_table.c.lease_until_s)
        return (await connection.execute(select(*columns).where(jobs_table.c.job_id == job_id))).one()


async def _outbox_counts(database_url: str, job_id: str) -> dict[str, int]:
    """Rows queued for storage for ``job_id``: outputs, distinct outputs, measurement records marked done."""
    engine = make_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(outbox_table.c.resource, outbox_table.c.record_id, outbox_table.c.payload).where(
                        outbox_table.c.aggregate == job_id
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    outputs = [row.record_id for row in rows if row.resource == "analysis_outputs"]
    done = [row for row in rows if row.resource == "measurements" and row.payload["status"] == "done"]
    return {"outputs": len(outputs), "distinct_outputs": len(set(outputs)), "done_records": len(done)}


@pytest.mark.postgres
@pytest.mark.redis
def test_a_killed_replicas_analysis_is_taken_over_and_recorded_once(tmp_path, postgres_url, queue_url, ir_wav):
    worker = Worker(queue_url)
    # Nothing listens at STORAGE_URL: the storage records stay in the outbox, countable.
    settings = {"STORAGE_URL": f"http://127.0.0.1:{free_port()}", "MEASUREMENT_JOB_LEASE_S": str(LEASE_S), "MEASUREMENT_ANALYZE_WAIT_S": "0"}
    replicas = {
        name: measurement_replica(
            name, database_url=postgres_url, blob_dir=tmp_path / "blobs", data_dir=tmp_path, queue_url=queue_url, env=settings
        )
        for name in ("a", "b")
    }
    try:
        for replica in replicas.values():
            replica.start()
        worker.wait_ready()  # its start-up is no part of the 60 s below
        a, b = (httpx.Client(base_url=replicas[name].url, timeout=60, headers=SERVICE_HEADERS) for name in ("a", "b"))
        with a, b:
            job_id = a.post("/v1/jobs").json()["job_id"]
            for index in range(UPLOADS):
                assert a.post(f"/v1/jobs/{job_id}/uploads/ir{index}", content=ir_wav).status_code == 201
            assert a.post(f"/v1/jobs/{job_id}/analyze", json={"source": "impulse_response"}).status_code == 202
            replicas["a"].kill()
            assert b.get(f"/v1/jobs/{job_id}").json()["status"] == "analyzing", worker.log_text()

            deadline_s = time.monotonic() + 60.0  # the lease (2 s) lapses, B claims, the worker analyzes again
            while (job := b.get(f"/v1/jobs/{job_id}").json())["status"] == "analyzing":
                assert time.monotonic() < deadline_s, replicas["b"].log_text()[-4000:]
                time.sleep(0.2)
            assert job["status"] == "done", replicas["b"].log_text()[-4000:]
            assert len(job["results"]) == UPLOADS and job["summary"]["t30_s"]["count"] == UPLOADS
            assert all(result["t30_s"]["broadband"] > 0 for result in job["results"].values())
            assert "taking over the analysis" in replicas["b"].log_text()
            # The result is saved, then queued for storage in one transaction of its own: wait for it.
            while not asyncio.run(_outbox_counts(postgres_url, job_id))["outputs"]:
                assert time.monotonic() < deadline_s, "the result never reached the outbox"
                time.sleep(0.2)
        replicas["b"].stop()  # whatever B still had to queue is queued now
        counts = asyncio.run(_outbox_counts(postgres_url, job_id))
        assert counts == {"outputs": UPLOADS, "distinct_outputs": UPLOADS, "done_records": 1}
    finally:
        for replica in replicas.values():
            replica.stop()
        worker.stop()




async def _row_of(database_url: str, job_id: str):
    engine = make_engine(database_url)
    try:
        return await _lease_row(engine, job_id)
    finally:
        await engine.dispose()


@pytest.mark.postgres
def test_a_replica_stopping_gracefully_hands_its_analysis_over(tmp_path, postgres_url, ir_wav):
    def settings(name: str) -> MeasurementSettings:
        return MeasurementSettings(
            data_dir=tmp_path / name,
            database_url=postgres_url,
            blob_url=f"file://{tmp_path / 'blobs'}",
            replica_id=name,
            job_lease_s=LEASE_S,
            analyze_wait_s=0,
            internal_auth_token=INTERNAL_TOKEN,
        )

    with ThreadedServer(create_app(settings("a"))) as server_a:
        with httpx.Client(base_url=server_a.url, timeout=60, headers=SERVICE_HEADERS) as a:
            job_id = a.post("/v1/jobs").json()["job_id"]
            for index in range(UPLOADS):
                assert a.post(f"/v1/jobs/{job_id}/uploads/ir{index}", content=ir_wav).status_code == 201
            assert a.post(f"/v1/jobs/{job_id}/analyze", json={"source": "impulse_response"}).status_code == 202
            deadline_s = time.monotonic() + 60.0  # A's worker reports its progress: stop A while it does
            while not (job := a.get(f"/v1/jobs/{job_id}").json())["progress"]["message"].startswith("analyzing ir"):
                assert job["status"] == "analyzing" and time.monotonic() < deadline_s, job
                time.sleep(0.01)
    # A stopped during the analysis: the job is still analyzing (not failed), its lease ended at once, and the
    # reports its pool delivered while its worker stopped did not lease the job to A again.
    row = asyncio.run(_row_of(postgres_url, job_id))
    assert (row.status, row.runner, row.lease_until_s) == ("analyzing", "a", None)
    with (
        ThreadedServer(create_app(settings("b"))) as server_b,
        httpx.Client(base_url=server_b.url, timeout=60, headers=SERVICE_HEADERS) as b,
    ):
        deadline_s = time.monotonic() + 60.0
        while (job := b.get(f"/v1/jobs/{job_id}").json())["status"] == "analyzing":
            assert time.monotonic() < deadline_s, job
            time.sleep(0.1)
        assert job["status"] == "done" and len(job["results"]) == UPLOADS, job
