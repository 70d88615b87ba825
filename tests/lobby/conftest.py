"""Real servers for the lobby tests: the lobby, the measurement service and the gateway, wired together."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
from scipy.signal import fftconvolve

from sonalyze.acoustics.sweep import SweepParams, exponential_sweep
from sonalyze.gateway.config import GatewaySettings
from sonalyze.gateway.main import create_app as create_gateway
from sonalyze.lobby.config import LobbySettings
from sonalyze.lobby.main import create_app as create_lobby
from sonalyze.measurement.main import create_app as create_measurement
from sonalyze.measurement.settings import MeasurementSettings
from sonalyze.services import SERVICES
from tests.lobby.clients import Handle
from tests.support.servers import INTERNAL_TOKEN, SERVICE_HEADERS, ThreadedServer, free_port

TOKEN = INTERNAL_TOKEN

# Short sweeps at 16 kHz keep the real analyses quick on a loaded machine.
FAST_JOBS = {"sample_rate_hz": 16000, "sweep_duration_s": 1.0}


@dataclass
class Stack:
    lobby: ThreadedServer
    gateway: ThreadedServer | None
    measurement: ThreadedServer
    settings: LobbySettings


def lobby_settings(database_url: str, **overrides) -> LobbySettings:
    return LobbySettings(database_url=database_url, internal_auth_token=TOKEN, **{**FAST_JOBS, **overrides})


@contextmanager
def measurement_server(data_dir: Path, lobby_url: str = "") -> Iterator[ThreadedServer]:
    """The measurement service; it asks the lobby at ``lobby_url`` which devices may reach a session's job."""
    settings = MeasurementSettings(data_dir=data_dir, analyze_wait_s=0.5, internal_auth_token=TOKEN, lobby_url=lobby_url)
    with ThreadedServer(create_measurement(settings)) as server:
        yield server


@contextmanager
def gateway_server(port: int, lobby_url: str, measurement_url: str) -> Iterator[ThreadedServer]:
    settings = GatewaySettings(
        lobby_url=lobby_url,
        measurement_url=measurement_url,
        simulation_url="http://127.0.0.1:9",
        internal_auth_token=TOKEN,
        rate_limit_rps=1000,
        rate_limit_burst=1000,
        allow_insecure_device_ids=True,  # identity is not under test here (tests/gateway/test_device_identity.py)
    )
    with ThreadedServer(create_gateway(settings), port=port, **SERVICES["gateway"].uvicorn_options) as server:
        yield server


@contextmanager
def full_stack(database_url: str, data_dir: Path, *, with_gateway: bool = True, **overrides) -> Iterator[Stack]:
    """Measurement, lobby and (optionally) gateway on free ports, each knowing the others' URLs."""
    gateway_port, lobby_port = free_port(), free_port()
    with measurement_server(data_dir / "measurement", f"http://127.0.0.1:{lobby_port}") as measurement:
        gateway_url = f"http://127.0.0.1:{gateway_port}" if with_gateway else ""
        settings = lobby_settings(database_url, gateway_url=gateway_url, measurement_url=measurement.url, **overrides)
        with ThreadedServer(create_lobby(settings), port=lobby_port, **SERVICES["lobby"].uvicorn_options) as lobby:
            if not with_gateway:
                yield Stack(lobby, None, measurement, settings)
                return
            with gateway_server(gateway_port, lobby.url, measurement.url) as gateway:
                yield Stack(lobby, gateway, measurement, settings)


@pytest.fixture
def stack(database_url: str, tmp_path: Path) -> Iterator[Stack]:
    with full_stack(database_url, tmp_path) as running:
        yield running


@pytest.fixture
async def handle(database_url: str, tmp_path: Path) -> AsyncIterator[Handle]:
    """The lobby alone (no gateway: pushes are off), called through ``POST /gateway/handle``."""
    with full_stack(database_url, tmp_path, with_gateway=False) as running:
        async with httpx.AsyncClient(base_url=running.lobby.url, timeout=30, headers=SERVICE_HEADERS) as http:
            yield Handle(http)


def recording_wav(audio_info: dict, seed: int) -> bytes:
    """What a microphone records of the job's sweep in a synthetic room (decaying noise, RT ≈ 0.4 s)."""
    sweep = audio_info["sweep"]
    fs_hz = audio_info["sample_rate_hz"]
    params = SweepParams(
        fs_hz=fs_hz,
        f_start_hz=sweep["f_start_hz"],
        f_end_hz=sweep["f_end_hz"],
        duration_s=sweep["duration_s"],
        silence_before_s=sweep["silence_before_s"],
        silence_after_s=sweep["silence_after_s"],
        level_dbfs=sweep["level_dbfs"],
        fade_s=sweep["fade_s"],
    )
    rng = np.random.default_rng(seed)
    t_s = np.arange(int(0.6 * fs_hz)) / fs_hz
    ir = rng.standard_normal(t_s.size) * 10.0 ** (-3.0 * t_s / 0.4) * 0.3
    ir[0] = 1.0
    wet = fftconvolve(exponential_sweep(params), ir)[: params.total_samples]
    wet = 0.5 * wet / np.max(np.abs(wet)) + rng.standard_normal(wet.size) * 1e-4
    buffer = io.BytesIO()
    soundfile.write(buffer, wet, fs_hz, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
