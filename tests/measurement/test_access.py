"""Who may reach a job, against the real lobby and measurement services; the 1 Hz WAV refused cheaply."""

from __future__ import annotations

import asyncio
import io
import struct
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import soundfile

from sonalyze.common.internal_auth import Caller
from sonalyze.measurement.access import SessionGrant, may_read, may_upload
from sonalyze.measurement.jobs import Job
from sonalyze.acoustics.sweep import SweepParams
from tests.lobby.clients import Handle
from tests.lobby.conftest import full_stack, recording_wav
from tests.support.servers import SERVICE_HEADERS, device_headers


async def test_a_session_job_is_reached_by_its_lobby_s_devices_only(tmp_path: Path) -> None:
    with full_stack(f"sqlite+aiosqlite:///{tmp_path / 'lobby.db'}", tmp_path, with_gateway=False) as stack:
        async with httpx.AsyncClient(base_url=stack.lobby.url, headers=SERVICE_HEADERS, timeout=30) as lobby_http:
            handle = Handle(lobby_http)
            lobby = await handle.call("lobby.create", {}, "host")
            ref = {"lobby_id": lobby["lobby_id"]}
            for guest in ("mic-a", "mic-b"):
                await handle.call("lobby.join", {"code": lobby["code"]}, guest)
                await handle.call("role.assign", {**ref, "device_id": guest, "role": "microphone"}, "host")
            await handle.call("role.assign", {**ref, "device_id": "host", "role": "speaker"}, "host")
            await handle.call("lobby.start", ref, "host")
            session = await handle.call("measurement.create_session", ref, "host")
            job_id = session["job_id"]

            async with httpx.AsyncClient(base_url=stack.measurement.url, timeout=60) as http:
                job_path = f"/v1/jobs/{job_id}"
                for device in ("host", "mic-a", "mic-b"):
                    assert (await http.get(job_path, headers=device_headers(device))).status_code == 200
                    assert (await http.get(job_path + "/sweep.wav", headers=device_headers(device))).status_code == 200
                for outsider in ({"X-Internal-Token": SERVICE_HEADERS["X-Internal-Token"]}, device_headers("stranger")):
                    refused = await http.get(job_path, headers=outsider)
                    assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
                # A device may not create a job in someone's lobby.
                forged = await http.post("/v1/jobs", json={"lobby_id": lobby["lobby_id"]}, headers=device_headers("mic-a"))
                assert forged.status_code == 403

                info = (await http.get(job_path, headers=device_headers("mic-a"))).json()
                wav = recording_wav(info, seed=1)
                upload = f"{job_path}/uploads/speaker-0_mic-0.wav"
                wrong = await http.post(upload, content=wav, headers=device_headers("mic-b"))
                assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "wrong_device"
                assert wrong.json()["error"]["details"]["your_uploads"] == ["speaker-0_mic-1.wav"]
                assert (await http.post(upload, content=wav, headers=device_headers("host"))).status_code == 403
                assert (await http.post(upload, content=wav, headers=device_headers("stranger"))).status_code == 404
                assert (await http.post(upload, content=wav, headers=device_headers("mic-a"))).status_code == 201

                # An ex-participant loses access once the measurement service's answer from the lobby is stale.
                await handle.call("lobby.leave", ref, "mic-b")
                await asyncio.sleep(2.2)  # MEASUREMENT_LOBBY_ACCESS_CACHE_S = 2 s
                assert (await http.get(job_path, headers=device_headers("mic-b"))).status_code == 404
                assert (await http.get(job_path, headers=device_headers("mic-a"))).status_code == 200
                # The lobby's access endpoint is for services only.
                asked = await lobby_http.get(
                    f"/internal/lobbies/{lobby['lobby_id']}/jobs/{job_id}/access", headers={"X-Service-Token": ""}
                )
                assert asked.status_code == 403


def test_access_ends_a_retention_period_after_the_lobby_closed() -> None:
    params = SweepParams(fs_hz=16000, f_start_hz=20.0, f_end_hz=7000.0, duration_s=1.0).validate()
    job = Job.create(params, lobby_id="L")
    grant = SessionGrant(devices=frozenset({"a"}), closed_at_s=1000.0, uploads={"f.wav": "a"})
    a = Caller(device_id="a")
    assert may_read(job, a, grant, now_s=1000.0 + 3600.0, retention_s=3600.0)
    assert not may_read(job, a, grant, now_s=1000.0 + 3600.001, retention_s=3600.0)
    assert may_read(job, a, SessionGrant(frozenset({"a"}), None, {}), now_s=1e12, retention_s=0.0)  # open lobby
    assert may_upload(job, a, grant, "f.wav", now_s=1000.0, retention_s=0.0)
    assert not may_upload(job, a, grant, "g.wav", now_s=1000.0, retention_s=0.0)
    assert may_read(job, Caller(service=True), None, now_s=1e12, retention_s=0.0)
    standalone = Job.create(params, owner_device_id="a")
    assert may_read(standalone, a, None, now_s=0.0, retention_s=0.0)
    assert not may_read(standalone, Caller(device_id="b"), None, now_s=0.0, retention_s=0.0)
    assert not may_read(Job.create(params), Caller(device_id="b"), None, now_s=0.0, retention_s=0.0)


def _wav_declaring(fs_hz: int, size_bytes: int = 96_000) -> bytes:
    """A 16-bit mono WAV of noise whose header says ``fs_hz`` (written at 16 kHz, then patched)."""
    samples = np.random.default_rng(0).uniform(-0.5, 0.5, (size_bytes - 44) // 2)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format="WAV", subtype="PCM_16")
    raw = bytearray(buffer.getvalue())
    raw[24:32] = struct.pack("<II", fs_hz, fs_hz * 2)  # fmt chunk: sample rate, byte rate
    return bytes(raw)


def test_a_wav_declaring_1_hz_is_refused_at_once_without_memory_growth(server, http) -> None:
    job = http.post("/v1/jobs", json={"sample_rate_hz": 48000}).json()
    process = psutil.Process()
    before_mb = process.memory_info().rss / 2**20
    for fs_hz in (1, 16, 7999, 192_001):
        started = time.monotonic()
        response = http.post(f"/v1/jobs/{job['job_id']}/uploads/evil-{fs_hz}", content=_wav_declaring(fs_hz))
        assert time.monotonic() - started < 5.0
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "unsupported_sample_rate"
        assert response.json()["error"]["details"]["sample_rate_hz"] == fs_hz
    assert process.memory_info().rss / 2**20 - before_mb < 50.0
    assert http.get(f"/v1/jobs/{job['job_id']}").json()["uploads"] == []  # nothing half-written
    accepted = http.post(f"/v1/jobs/{job['job_id']}/uploads/fine", content=_wav_declaring(16000))
    assert accepted.status_code == 201 and accepted.json()["sample_rate_hz"] == 16000


def test_a_recording_longer_than_the_bound_is_refused_before_decoding(server, http, settings) -> None:
    job = http.post("/v1/jobs", json={"sample_rate_hz": 8000}).json()
    buffer = io.BytesIO()
    seconds = settings.max_upload_s + 1
    soundfile.write(buffer, np.full(int(8000 * seconds), 0.01), 8000, format="FLAC")  # tiny: a constant compresses well
    response = http.post(f"/v1/jobs/{job['job_id']}/uploads/long", content=buffer.getvalue())
    assert response.status_code == 422 and response.json()["error"]["code"] == "too_long", response.text
