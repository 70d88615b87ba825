"""Two measurement replicas on one PostgreSQL and one S3-compatible server (moto) share every job."""

from __future__ import annotations

import asyncio
import os
import time

import boto3
import httpx
import pytest

from sonalyze.measurement.main import create_app
from sonalyze.measurement.service import MeasurementService
from sonalyze.measurement.settings import MeasurementSettings
from tests.measurement.conftest import SHORT_SWEEP
from tests.support.s3 import CREDENTIALS, make_bucket, s3_server, set_credentials
from tests.support.servers import INTERNAL_TOKEN, SERVICE_HEADERS, ThreadedServer

pytestmark = [pytest.mark.postgres]

# The analysis workers read the uploads from S3 themselves (sonalyze.common.tasks), with the credentials of
# their own environment: the CPU pool's fork server takes this process's environment once, when the first
# pool of the session starts, so the moto credentials are in place from the collection on.
for _name, _value in CREDENTIALS.items():
    os.environ.setdefault(_name, _value)


def _settings(tmp_path, name: str, postgres_url: str, endpoint_url: str, **overrides) -> MeasurementSettings:
    return MeasurementSettings(
        data_dir=tmp_path / name,  # only the replica's S3 read cache and temporary files
        database_url=postgres_url,
        blob_url="s3://audio/measurement",
        s3_endpoint_url=endpoint_url,
        replica_id=name,
        analysis_workers=1,
        analysis_queue=1,
        analyze_wait_s=60,
        internal_auth_token=INTERNAL_TOKEN,
        **overrides,
    )


async def _delete_expired(settings: MeasurementSettings) -> tuple[list[str], list[str]]:
    """What the cleanup deletes now, then just past ``MEASUREMENT_RETENTION_DAYS`` from now."""
    service = MeasurementService(settings)
    try:
        now = await service.delete_expired(time.time())
        later = await service.delete_expired(time.time() + settings.retention_days * 86400.0 + 1.0)
    finally:
        await service.close()
    return now, later


def test_a_job_created_on_one_replica_is_uploaded_played_and_analyzed_on_the_other(
    tmp_path, postgres_url, ir_wav, monkeypatch
):
    set_credentials(monkeypatch)
    with s3_server() as endpoint_url:
        make_bucket(endpoint_url, "audio")
        first = _settings(tmp_path, "a", postgres_url, endpoint_url)
        second = _settings(tmp_path, "b", postgres_url, endpoint_url)
        with (
            ThreadedServer(create_app(first)) as server_a,
            ThreadedServer(create_app(second)) as server_b,
            httpx.Client(base_url=server_a.url, timeout=60, headers=SERVICE_HEADERS) as a,
            httpx.Client(base_url=server_b.url, timeout=60, headers=SERVICE_HEADERS) as b,
        ):
            job = a.post("/v1/jobs", json={"sample_rate_hz": 48000, "sweep": SHORT_SWEEP}).json()
            swept_a, swept_b = a.get(job["audio_url"]), b.get(job["audio_url"])
            assert swept_b.status_code == 200 and swept_b.content == swept_a.content
            assert b.post(f"/v1/jobs/{job['job_id']}/uploads/ir", content=ir_wav).status_code == 201
            done = a.post(f"/v1/jobs/{job['job_id']}/analyze", json={"source": "impulse_response"}).json()
            assert done["status"] == "done" and list(done["results"]) == ["ir"]
            assert b.get(f"/v1/jobs/{job['job_id']}").json() == done
            assert not (tmp_path / "a" / "jobs").exists() and not (tmp_path / "b" / "jobs").exists()

            # Retention, run by a third replica: the job and its audio leave the database and the bucket.
            expired = asyncio.run(_delete_expired(_settings(tmp_path, "c", postgres_url, endpoint_url)))
            assert expired == ([], [job["job_id"]])
            for client in (a, b):
                assert client.get(f"/v1/jobs/{job['job_id']}").status_code == 404
            listed = boto3.client("s3", endpoint_url=endpoint_url).list_objects_v2(Bucket="audio")
            assert listed.get("KeyCount", 0) == 0
