"""A job driven through the real gateway: events over WebSocket, the sweep and a real upload over ``/v1/jobs``.

Both services run as ``python -m sonalyze serve ...`` child processes, as in production.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.measurement.audio import decode, encode, sweep_recording
from tests.measurement.conftest import RT_S, SHORT_SWEEP
from tests.support.servers import ServiceProcess

JND_T = 0.05


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    data_dir = tmp_path_factory.mktemp("measurement-data")
    measurement = ServiceProcess("measurement", env={"MEASUREMENT_DATA_DIR": str(data_dir)}).start()
    try:
        gateway = ServiceProcess("gateway", env={"MEASUREMENT_URL": measurement.url, "RATE_LIMIT_BURST": "100"})
        with gateway.start():
            yield measurement, gateway
    finally:
        measurement.stop()


async def _call(ws, event: str, data: dict, request_id: str) -> dict:
    await ws.send(json.dumps({"event": event, "request_id": request_id, "data": data}))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert reply["event"] == event and reply["request_id"] == request_id
    return reply


async def _identify(ws) -> tuple[str, str]:
    """Contract C1: ``identify {}`` mints a device; the answer holds its id and token."""
    reply = await _call(ws, "identify", {}, "id")
    assert reply["type"] == "response" and reply["data"]["issued"] is True, reply
    return reply["data"]["device_id"], reply["data"]["device_token"]


async def test_a_job_through_the_gateway(services, room) -> None:
    measurement, gateway = services
    async with connect(gateway.ws_url + "/ws") as ws:
        owner_id, token = await _identify(ws)
    async with connect(gateway.ws_url + f"/ws?device_token={token}") as ws, httpx.AsyncClient(
        base_url=gateway.url, timeout=60, headers={"X-Device-Token": token}
    ) as http:
        created = await _call(ws, "measurement.create_job", {"sample_rate_hz": 48000, "sweep": SHORT_SWEEP}, "c1")
        assert created["type"] == "response", created
        job_id = created["data"]["job_id"]
        assert created["data"]["status"] == "created"

        info = (await _call(ws, "measurement.get_audio_info", {"job_id": job_id}, "c2"))["data"]
        assert info["sample_rate_hz"] == 48000 and info["audio_url"] == f"/v1/jobs/{job_id}/sweep.wav"
        assert info["sweep"]["sweep_start_s"] == SHORT_SWEEP["silence_before_s"]
        assert info["sweep"]["total_duration_s"] == pytest.approx(3.7)

        # The speaker downloads the sweep and the microphone uploads its recording, both through the gateway.
        download = await http.get(info["audio_url"])
        assert download.status_code == 200
        sweep, fs_hz = decode(download.content)
        assert sweep.size == info["sweep"]["total_samples"]
        recording = sweep_recording(sweep, room, fs_hz, offset_s=0.4, noise_dbfs=-80.0)
        upload = await http.post(f"/v1/jobs/{job_id}/uploads/mic-1", content=encode(recording, fs_hz))
        assert upload.status_code == 201, upload.text
        assert upload.json()["name"] == "mic-1" and upload.json()["duration_s"] == pytest.approx(recording.size / fs_hz)

        run = await _call(ws, "analysis.run", {"job_id": job_id, "source": "sweep_deconvolution"}, "c3")
        assert run["type"] == "response", run
        job = run["data"]
        for poll in range(120):
            if job["status"] != "analyzing":
                break
            await asyncio.sleep(0.5)
            job = (await _call(ws, "measurement.get_job", {"job_id": job_id}, f"p{poll}"))["data"]
        assert job["status"] == "done", job.get("error")
        assert job["results"]["mic-1"]["t30_s"]["broadband"] == pytest.approx(RT_S, rel=JND_T)
        assert job["summary"]["uploads"] == ["mic-1"]

        # The same job over HTTP through the gateway.
        assert (await http.get(f"/v1/jobs/{job_id}")).json()["results"] == job["results"]
        assert (await http.get("/v1/measurement/health")).json()["service"] == "measurement"

    # A standalone job belongs to the device that created it: another device, or none, does not see it.
    async with connect(gateway.ws_url + "/ws") as ws, httpx.AsyncClient(base_url=gateway.url, timeout=60) as anonymous:
        _, other_token = await _identify(ws)
        assert (await _call(ws, "measurement.get_job", {"job_id": job_id}, "o1"))["error"]["code"] == "not_found"
        other = await anonymous.get(f"/v1/jobs/{job_id}", headers={"X-Device-Token": other_token})
        assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
        nobody = await anonymous.get(f"/v1/jobs/{job_id}")
        assert nobody.status_code == 404
        forged = await anonymous.get(f"/v1/jobs/{job_id}", headers={"X-Device-Id": owner_id})
        assert forged.status_code == 404
        wav = encode(recording, fs_hz)
        intruder = await anonymous.post(f"/v1/jobs/{job_id}/uploads/mic-2", content=wav, headers={"X-Device-Token": other_token})
        assert intruder.status_code == 404


async def test_errors_through_the_gateway(services) -> None:
    _, gateway = services
    async with connect(gateway.ws_url + "/ws") as ws:
        await _identify(ws)
        missing = await _call(ws, "measurement.get_job", {"job_id": "0" * 32}, "e1")
        assert missing["type"] == "error" and missing["error"]["code"] == "not_found"
        no_id = await _call(ws, "measurement.get_audio_info", {}, "e2")
        assert no_id["type"] == "error" and no_id["error"]["code"] == "bad_request"
        bad_sweep = await _call(ws, "measurement.create_job", {"sweep": {"duration_s": -1}}, "e3")
        assert bad_sweep["type"] == "error" and bad_sweep["error"]["code"] == "bad_request"
        job_id = (await _call(ws, "measurement.create_job", {}, "e4"))["data"]["job_id"]
        early = await _call(ws, "analysis.run", {"job_id": job_id}, "e5")
        assert early["type"] == "error" and early["error"]["code"] == "conflict"
        assert early["error"]["details"]["status"] == "created"
