"""A simulation's RIRs go to the blob store from the worker process; only a small result travels back (through
the task queue's Redis, or the local pool's pipe), and the retention cleanup deletes the RIRs.
"""

from __future__ import annotations

import base64
import io
import pickle
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import soundfile

from sonalyze.common import tasks
from sonalyze.common.blobs import BlobAddress
from sonalyze.common.errors import NotFound
from sonalyze.simulation.service import SimulationService, parse_request
from sonalyze.simulation.store import rir_key
from sonalyze.simulation.worker import run_simulation
from tests.simulation.conftest import make_settings, shoebox_request
from tests.support.s3 import make_bucket, s3_server, set_credentials

REQUEST = shoebox_request(microphones=[(5, 2, 1.2), (6, 4, 1.5)], seed=4)
REDIS_DB = 14
"""This module's database of the test Redis (the ``queue_url`` fixture)."""


def _bytes_inside(value: Any) -> list[bytes]:
    if isinstance(value, bytes):
        return [value]
    if isinstance(value, dict):
        return [found for item in value.values() for found in _bytes_inside(item)]
    if isinstance(value, list):
        return [found for item in value for found in _bytes_inside(item)]
    return []


def _kept_rirs(address: BlobAddress, simulation_id: str, result: dict[str, Any]) -> list[bytes]:
    """Every pair's RIR, a WAV blob of its announced length."""
    store = address.open()
    rirs = []
    for pair in result["pairs"]:
        path = store.local_path(rir_key(simulation_id, pair["source"], pair["microphone"]))
        samples, fs_hz = soundfile.read(path, dtype="float32")
        assert fs_hz == result["sample_rate_hz"] and samples.size == pair["rir"]["samples"] > 1000
        rirs.append(path.read_bytes())
    return rirs


def _carries_none_of(answer: bytes, rirs: list[bytes]) -> bool:
    """No stretch of any RIR's samples (past the WAV header) is inside ``answer``."""
    return all(rir[100:1100] not in answer for rir in rirs)


@pytest.mark.parametrize("backend", ["folder", "s3"])
def test_the_task_writes_the_rirs_to_the_blob_store_and_answers_a_small_result(backend, tmp_path, monkeypatch) -> None:
    simulation_id = uuid.uuid4().hex
    if backend == "folder":
        address = BlobAddress(f"file://{tmp_path / 'blobs'}", tmp_path / "data")
        result = run_simulation(parse_request(REQUEST), simulation_id=simulation_id, max_rir_s=2.0, blobs=address)
        rirs = _kept_rirs(address, simulation_id, result)
    else:
        set_credentials(monkeypatch)
        with s3_server() as endpoint_url:
            make_bucket(endpoint_url, "rirs")
            address = BlobAddress("s3://rirs/simulation", tmp_path / "data", endpoint_url)
            result = run_simulation(parse_request(REQUEST), simulation_id=simulation_id, max_rir_s=2.0, blobs=address)
            rirs = _kept_rirs(BlobAddress("s3://rirs/simulation", tmp_path / "reader", endpoint_url), simulation_id, result)
            assert address.open().delete_prefix(f"simulations/{simulation_id}") == 2
    assert isinstance(result, dict) and _bytes_inside(result) == []  # metrics and paths, not the RIRs
    assert _carries_none_of(pickle.dumps(result), rirs)


@pytest.mark.redis
def test_through_the_queue_redis_holds_the_small_result_not_the_rirs(tmp_path, queue_url) -> None:
    """The task queue's actor, in this process, on the real Redis: the outcome it stores is the small result."""
    import redis

    simulation_id, task_id = uuid.uuid4().hex, uuid.uuid4().hex
    address = BlobAddress("", tmp_path / "data")
    call = (run_simulation, (parse_request(REQUEST),), {"simulation_id": simulation_id, "max_rir_s": 2.0, "blobs": address}, False)
    _events, outcome_key, _cancel = tasks._keys(task_id)
    tasks._worker_redis = client = redis.Redis.from_url(queue_url)
    try:
        tasks._execute(task_id, base64.b64encode(pickle.dumps(call)).decode("ascii"))
        stored = client.get(outcome_key)
        client.delete(*tasks._keys(task_id))
    finally:
        tasks._worker_redis = None
        client.close()
    result = tasks._unpack_outcome(stored)
    assert isinstance(result, dict) and _bytes_inside(result) == []
    assert _carries_none_of(stored, _kept_rirs(address, simulation_id, result))


async def test_rirs_written_by_the_pool_are_answered_and_deleted_by_the_retention(tmp_path) -> None:
    """The embedded default: the local pool's worker process writes the RIRs into DATA_DIR."""
    settings = make_settings(tmp_path, retention_days=30)
    service = SimulationService(settings)
    await service.start()
    try:
        answer = await service.run(parse_request({**REQUEST, "include_rir": True}))
        simulation_id = answer["id"]
        folder = Path(settings.data_dir) / "simulations" / simulation_id / "rir"
        assert sorted(path.name for path in folder.iterdir()) == ["0_0.wav", "0_1.wav"]
        for pair in answer["pairs"]:
            kept = (folder / f"{pair['source']}_{pair['microphone']}.wav").read_bytes()
            assert base64.b64decode(pair["rir"]["wav_base64"]) == kept
            assert soundfile.info(io.BytesIO(kept)).frames == pair["rir"]["samples"]
        assert await service.delete_expired(time.time() + 29 * 86400.0) == []  # not yet expired
        assert await service.delete_expired(time.time() + 31 * 86400.0) == [simulation_id]
        assert not folder.parent.exists()
        with pytest.raises(NotFound):
            await service.get(simulation_id)
    finally:
        await service.close()
