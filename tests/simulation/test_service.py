"""The service over real HTTP: results, kept jobs and RIRs, base64 cap, busy, timeout, restart."""

from __future__ import annotations

import asyncio
import base64
import io
import time

import httpx
import numpy as np
import pytest
import soundfile

from sonalyze.simulation.main import create_app
from sonalyze.simulation.service import SimulationService
from sonalyze.simulation.store import JobStatus
from tests.simulation.conftest import flat, kept_jobs, make_settings, shoebox_request
from tests.support.servers import SERVICE_HEADERS, ThreadedServer, service_http

#: A simulation that takes a few seconds on one core (48 kHz ray tracing in a reverberant room).
SLOW = shoebox_request(material=flat(0.05, 0.2), ray_tracing=True, sample_rate_hz=48000, microphones=[(5, 2, 1.2), (6, 4, 1.5)])


def test_simulate_answers_the_measurement_schema_and_keeps_everything(server, settings) -> None:
    body = shoebox_request(microphones=[(5, 2, 1.2), (6, 4, 1.5)], include_rir=True, ray_tracing=True, seed=5)
    response = service_http.post(server.url + "/simulate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["status"] == "succeeded" and result["seed"] == 5
    assert [(p["source"], p["microphone"]) for p in result["pairs"]] == [(0, 0), (0, 1)]
    assert len(result["theory"]["sabine_s"]) == len(result["theory"]["eyring_s"]) == 7
    assert result["elapsed_s"] > 0
    for pair in result["pairs"]:
        metrics = pair["metrics"]
        assert metrics["bands_hz"] == [125, 250, 500, 1000, 2000, 4000, 8000]
        for key in ("t20_s", "t30_s", "edt_s", "c50_db", "c80_db", "d50", "drr_db", "sti"):
            assert key in metrics
        assert metrics["t30_s"]["broadband"] > 0
        assert metrics["t30_s"]["reasons"]["8000"].startswith("band unavailable")  # 16 kHz
        # the base64 WAV, the download and the kept file are the same RIR
        inline = base64.b64decode(pair["rir"]["wav_base64"])
        download = service_http.get(server.url + pair["rir"]["path"])
        assert download.status_code == 200 and download.headers["content-type"] == "audio/wav"
        assert download.content == inline
        samples, fs_hz = soundfile.read(io.BytesIO(inline), dtype="float32")
        assert fs_hz == 16000 and samples.size == pair["rir"]["samples"]
        assert np.max(np.abs(samples)) > 0

    kept = service_http.get(f"{server.url}/simulations/{result['id']}").json()
    assert kept["status"] == "succeeded"
    assert kept["request"]["microphones"] == [[5.0, 2.0, 1.2], [6.0, 4.0, 1.5]]
    assert kept["pairs"][1]["metrics"] == result["pairs"][1]["metrics"]
    assert "wav_base64" not in kept["pairs"][0]["rir"]
    assert service_http.get(f"{server.url}/simulations/{result['id']}/rir/0/7.wav").status_code == 404
    assert service_http.get(f"{server.url}/simulations/{'0' * 32}").json()["error"]["code"] == "not_found"
    assert service_http.get(f"{server.url}/simulations/..%2Fetc").status_code == 404


def test_base64_rirs_over_the_cap_are_left_to_download(tmp_path) -> None:
    settings = make_settings(tmp_path, max_rir_base64_mb=0.01)
    with ThreadedServer(create_app(settings)) as server:
        result = service_http.post(server.url + "/simulate", json=shoebox_request(include_rir=True), timeout=60).json()
        assert "above the limit 0.01 MB" in result["rir_base64_omitted"]
        assert all("wav_base64" not in p["rir"] for p in result["pairs"])
        assert service_http.get(server.url + result["pairs"][0]["rir"]["path"]).status_code == 200


def test_results_survive_a_restart_and_interrupted_jobs_are_failed(tmp_path) -> None:
    settings = make_settings(tmp_path)
    with ThreadedServer(create_app(settings)) as server:
        result = service_http.post(server.url + "/simulate", json=shoebox_request(), timeout=60).json()
    # a job left running by a process that died
    service = SimulationService(settings)

    async def left_running() -> None:
        job = {"id": "a" * 32, "status": JobStatus.RUNNING.value, "created_at": "2026-01-01T00:00:00Z", "request": {}}
        await service.store.migrate()
        await service.store.create(job, now_s=time.time())
        await service.store.engine.dispose()

    asyncio.run(left_running())
    with ThreadedServer(create_app(settings)) as server:
        again = service_http.get(f"{server.url}/simulations/{result['id']}").json()
        assert again["pairs"] == result["pairs"]
        interrupted = service_http.get(f"{server.url}/simulations/{'a' * 32}").json()
        assert interrupted["status"] == "failed" and interrupted["error"]["code"] == "interrupted"
    assert list((settings.data_dir / ".incoming").iterdir()) == []  # no half-written RIR left


async def test_busy_while_running_and_health_still_answers(tmp_path) -> None:
    settings = make_settings(tmp_path, workers=1, queue=0)
    with ThreadedServer(create_app(settings)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=120, headers=SERVICE_HEADERS) as client:
            long_run = asyncio.create_task(client.post("/simulate", json=SLOW))
            while (await client.get("/health")).json()["workers"]["running"] == 0:
                assert not long_run.done(), long_run.result().text
                await asyncio.sleep(0.02)
            started = time.monotonic()
            health = await client.get("/health")
            assert health.status_code == 200 and time.monotonic() - started < 2.0
            refused = await client.post("/simulate", json=shoebox_request())
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "busy"
            assert int(refused.headers["Retry-After"]) >= 1
            event = await client.post("/gateway/handle", json={"event": "simulation.run", "data": shoebox_request()})
            assert event.json()["error"]["code"] == "busy"
            finished = await long_run
            assert finished.status_code == 200, finished.text
    # a refused request leaves no job behind; the long one is kept
    jobs = kept_jobs(settings)
    assert [job["status"] for job in jobs] == ["succeeded"]


def test_a_simulation_past_the_timeout_is_stopped(tmp_path) -> None:
    settings = make_settings(tmp_path, timeout_s=0.5)
    with ThreadedServer(create_app(settings)) as server:
        response = service_http.post(server.url + "/simulate", json=SLOW, timeout=60)
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "timeout"
        [job] = kept_jobs(settings)
        assert job["status"] == "failed" and job["error"]["code"] == "timeout"
        assert service_http.get(server.url + "/health").json()["workers"]["running"] == 0


def test_events_health_and_get(server) -> None:
    health = service_http.post(server.url + "/gateway/handle", json={"event": "simulation.health", "data": {}}).json()
    assert health["data"]["status"] == "ok" and health["data"]["workers"]["max"] == 1
    ran = service_http.post(server.url + "/gateway/handle", json={"event": "simulation.run", "data": shoebox_request()}, timeout=60).json()
    simulation_id = ran["data"]["id"]
    got = service_http.post(server.url + "/gateway/handle", json={"event": "simulation.get", "data": {"id": simulation_id}}).json()
    assert got["data"]["pairs"] == ran["data"]["pairs"]
    missing = service_http.post(server.url + "/gateway/handle", json={"event": "simulation.get", "data": {"id": "nope"}}).json()
    assert missing["error"]["code"] == "not_found"


def test_a_reused_worker_gives_the_same_answer_for_the_same_seed(server) -> None:
    """The one warm worker serves every request: a simulation in between must not change the next one."""
    body = shoebox_request(ray_tracing=True, seed=9, include_rir=True)
    first = service_http.post(server.url + "/simulate", json=body, timeout=60).json()
    other = service_http.post(server.url + "/simulate", json=shoebox_request(material=flat(0.4), ray_tracing=True), timeout=60).json()
    again = service_http.post(server.url + "/simulate", json=body, timeout=60).json()
    assert other["pairs"][0]["metrics"] != first["pairs"][0]["metrics"]
    assert again["pairs"][0]["metrics"] == first["pairs"][0]["metrics"]
    rirs = [soundfile.read(io.BytesIO(base64.b64decode(r["pairs"][0]["rir"]["wav_base64"])))[0] for r in (first, again)]
    assert np.array_equal(*rirs)  # compared as samples: libsndfile stamps the time in each WAV's header
