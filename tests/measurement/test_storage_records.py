"""Finished analyses reach the storage service (``analysis_outputs``, and ``measurements`` for standalone jobs)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sonalyze.acoustics.sweep import SweepParams
from sonalyze.measurement.jobs import Job
from sonalyze.measurement.main import create_app
from sonalyze.measurement.storage_records import output_id, output_record
from sonalyze.measurement.settings import MeasurementSettings
from sonalyze.storage.client import StorageClient
from tests.integration.storage_reads import all_records, eventually, outbox_count
from tests.support.servers import INTERNAL_TOKEN, SERVICE_HEADERS, ServiceProcess, ThreadedServer

NAMES = ["speaker-1_mic-2.wav", "take-2.wav"]


def test_an_output_is_keyed_by_job_and_upload_and_keeps_curves_apart():
    job = Job.create(SweepParams(fs_hz=16000, f_start_hz=50.0, f_end_hz=7000.0, duration_s=1.0).validate())
    result = {"source": "sweep_deconvolution", "t30_s": {"broadband": 0.5}, "decay_curves": {"time_s": [0.0]}, "frequency_response": {"level_db": [0.0]}}
    lobby_upload = output_record(job, NAMES[0], result)
    assert lobby_upload["id"] == f"{job.job_id}:{NAMES[0]}" and lobby_upload["measurement_id"] == job.job_id
    assert (lobby_upload["speaker_id"], lobby_upload["microphone_id"]) == ("speaker-1", "mic-2")
    assert lobby_upload["metrics"] == {"source": "sweep_deconvolution", "t30_s": {"broadband": 0.5}}
    assert lobby_upload["curves"] == {"decay_curves": {"time_s": [0.0]}, "frequency_response": {"level_db": [0.0]}}
    assert lobby_upload["parameters"]["sweep"]["duration_s"] == 1.0
    other = output_record(job, NAMES[1], {"source": "impulse_response", "error": {"code": "analysis_failed"}})
    assert (other["speaker_id"], other["microphone_id"], other["curves"]) == (None, None, None)
    assert other["metrics"]["error"] == {"code": "analysis_failed"}
    long_name = "a" * 64
    assert output_id(job.job_id, long_name) == output_id(job.job_id, long_name) != output_id(job.job_id, "b" * 64)
    assert len(output_id(job.job_id, long_name)) == 42


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[ServiceProcess]:
    with ServiceProcess("storage", env={"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'storage.db'}"}) as running:
        yield running


@pytest.fixture
def measurement(tmp_path: Path, storage: ServiceProcess) -> Iterator[httpx.Client]:
    settings = MeasurementSettings(internal_auth_token=INTERNAL_TOKEN, data_dir=tmp_path / "measurement", analyze_wait_s=60, storage_url=storage.url)
    with ThreadedServer(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=60, headers=SERVICE_HEADERS) as http:
        yield http


def _analyzed_job(http: httpx.Client, ir_wav: bytes, **body) -> str:
    created = http.post("/v1/jobs", json={"sample_rate_hz": 48000, **body})
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    for name in NAMES:
        assert http.post(f"/v1/jobs/{job_id}/uploads/{name}", content=ir_wav).status_code == 201
    _analyze(http, job_id)
    return job_id


def _analyze(http: httpx.Client, job_id: str) -> dict:
    done = http.post(f"/v1/jobs/{job_id}/analyze", json={"source": "impulse_response"})
    assert done.status_code == 200 and done.json()["status"] == "done", done.text
    return done.json()


async def _outputs(storage_url: str, job_id: str, count: int) -> list[dict] | None:
    items = await all_records(storage_url, "analysis_outputs", measurement_id=job_id)
    return items if len(items) == count else None


async def test_a_standalone_job_is_stored_with_its_outputs_once(storage, measurement, ir_wav, tmp_path):
    job_id = _analyzed_job(measurement, ir_wav)
    job = measurement.get(f"/v1/jobs/{job_id}").json()
    stored = await eventually(lambda: _outputs(storage.url, job_id, 2), timeout_s=30, what="two outputs")
    by_name = {item["parameters"]["upload"]: item for item in stored}
    assert sorted(by_name) == sorted(NAMES)
    assert by_name[NAMES[0]]["metrics"]["t30_s"] == job["results"][NAMES[0]]["t30_s"]
    assert by_name[NAMES[0]]["curves"]["decay_curves"] == job["results"][NAMES[0]]["decay_curves"]
    measurements = await all_records(storage.url, "measurements")
    assert [(m["id"], m["kind"], m["status"]) for m in measurements] == [(job_id, "sweep_job", "done")]
    assert measurements[0]["finished_at"] is not None and measurements[0]["parameters"]["summary"] == job["summary"]

    _analyze(measurement, job_id)  # the same uploads again: the same outputs, under the same ids

    async def delivered_again() -> bool:
        (record,) = await all_records(storage.url, "measurements")
        return record["finished_at"] > measurements[0]["finished_at"] and await outbox_count(f"sqlite+aiosqlite:///{tmp_path / 'measurement' / 'measurement.db'}") == 0

    await eventually(delivered_again, timeout_s=30, what="the second analysis delivered")
    again = await all_records(storage.url, "analysis_outputs", measurement_id=job_id)
    assert sorted((i["id"], i["created_at"], i["updated_at"]) for i in again) == sorted(
        (i["id"], i["created_at"], i["updated_at"]) for i in stored
    ), "identical outputs are stored once and left untouched"


async def test_a_lobby_job_leaves_its_measurement_record_to_the_lobby(storage, measurement, ir_wav):
    refused = measurement.post("/v1/jobs", json={"lobby_id": "not a lobby id!"})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "validation_error"
    job_id = _analyzed_job(measurement, ir_wav, lobby_id="lobby-1")
    await asyncio.sleep(1.0)  # time enough for a wrongly written measurement record and its outputs
    async with StorageClient(storage.url, headers=SERVICE_HEADERS) as client:
        # the outputs wait for their parent (storage answers missing_reference; the outbox retries)
        assert (await client.list("analysis_outputs", measurement_id=job_id))["items"] == []
        assert (await client.list("measurements"))["items"] == []
        await client.put("measurements", {"id": job_id, "kind": "sweep_session", "status": "analyzing"})
    stored = await eventually(lambda: _outputs(storage.url, job_id, 2), timeout_s=30, what="the outputs after their parent")
    assert {item["id"] for item in stored} == {f"{job_id}:{name}" for name in NAMES}
    measurements = await all_records(storage.url, "measurements")
    assert [(m["id"], m["kind"], m["status"]) for m in measurements] == [(job_id, "sweep_session", "analyzing")]


async def test_a_job_and_its_storage_records_commit_together(database_url, tmp_path):
    """``JobStore.save``/``create`` with outbox rows write them in the job's transaction (a replica killed
    after the save cannot lose them); a save refused as ``concurrent_update`` queues none."""
    from sonalyze.common.blobs import LocalBlobStore
    from sonalyze.common.errors import Conflict
    from sonalyze.measurement.store import JobStore
    from sonalyze.storage.db import make_engine
    from sonalyze.storage.outbox import outbox_metadata, put_row

    store = JobStore(make_engine(database_url), LocalBlobStore(tmp_path / "blobs"), runner="a")
    try:
        await store.migrate()
        async with store.engine.begin() as connection:
            await connection.run_sync(outbox_metadata.create_all)
        sweep = tmp_path / "sweep.wav"
        sweep.write_bytes(b"x")
        job = Job.create(SweepParams(fs_hz=48000, duration_s=1.0))

        def row(upload: str) -> dict:
            return put_row("analysis_outputs", output_record(job, upload, {"t30_s": 0.5}), aggregate=job.job_id)

        await store.create(job, sweep, records=[row("a.wav")])
        assert await outbox_count(database_url) == 1
        stale = job.model_copy(deep=True)
        await store.save(job, records=[row("b.wav"), row("c.wav")])
        assert await outbox_count(database_url) == 3
        with pytest.raises(Conflict):
            await store.save(stale, records=[row("d.wav")])
        assert await outbox_count(database_url) == 3  # rolled back with the refused save
    finally:
        await store.engine.dispose()
