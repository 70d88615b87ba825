"""The measurement service on a real uvicorn server over a per-test data folder, and real audio."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from sonalyze.measurement.main import create_app
from sonalyze.measurement.settings import MeasurementSettings
from tests.measurement.audio import decode, encode, room_ir, sweep_recording
from tests.support.servers import INTERNAL_TOKEN, SERVICE_HEADERS, ThreadedServer

FS_HZ = 48000
RT_S = 0.5
SHORT_SWEEP = {"duration_s": 2.0, "silence_before_s": 0.2, "silence_after_s": 1.5}


@pytest.fixture
def settings(tmp_path) -> MeasurementSettings:
    return MeasurementSettings(
        data_dir=tmp_path / "measurement",
        max_upload_mb=2.0,
        analysis_workers=1,
        analysis_queue=1,
        analyze_wait_s=60,
        internal_auth_token=INTERNAL_TOKEN,
    )


@pytest.fixture
def server(settings) -> Iterator[ThreadedServer]:
    with ThreadedServer(create_app(settings)) as running:
        yield running


@pytest.fixture
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60, headers=SERVICE_HEADERS) as client:
        yield client


@pytest.fixture(scope="session")
def room() -> np.ndarray:
    """The synthetic room: T = RT_S at every frequency (exponentially decaying white noise)."""
    return room_ir(FS_HZ, RT_S, 1.2)


@pytest.fixture(scope="session")
def ir_wav(room) -> bytes:
    return encode(room * 0.5, FS_HZ)


def record_job_sweep(http: httpx.Client, job: dict, room: np.ndarray, *, offset_s: float = 0.3) -> np.ndarray:
    """Download the job's sweep and 'play' it in the room: what a microphone would upload."""
    download = http.get(job["audio_url"])
    assert download.status_code == 200
    sweep, fs_hz = decode(download.content)
    assert fs_hz == job["sample_rate_hz"]
    return sweep_recording(sweep, room, fs_hz, offset_s=offset_s, noise_dbfs=-80.0)
