"""Through the real gateway: ``simulation.run`` over WebSocket and ``/v1/simulation/simulate`` over HTTP.

Both services run as ``python -m sonalyze serve <name>`` child processes, as deployed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.simulation.conftest import shoebox_request
from tests.support.servers import ServiceProcess, free_port, service_http


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    data_dir = tmp_path_factory.mktemp("through-gateway")
    gateway_port = free_port()
    simulation_env = {"SIMULATION_DATA_DIR": str(data_dir), "GATEWAY_URL": f"http://127.0.0.1:{gateway_port}"}
    simulation = ServiceProcess("simulation", env=simulation_env).start()
    try:
        gateway_env = {"SIMULATION_URL": simulation.url, "HTTP_TIMEOUT_SECONDS": "60", "ALLOW_INSECURE_DEVICE_IDS": "true"}
        gateway = ServiceProcess("gateway", env=gateway_env, port=gateway_port).start()
        try:
            yield simulation, gateway
        finally:
            gateway.stop()
    finally:
        simulation.stop()


async def test_simulation_run_over_websocket(services) -> None:
    simulation, gateway = services
    async with connect(gateway.ws_url + "/ws?device_id=phone-1", max_size=None) as ws:
        await ws.send(json.dumps({"event": "simulation.health", "request_id": "h"}))
        health = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert health["type"] == "response" and health["data"]["status"] == "ok"

        await ws.send(json.dumps({"event": "simulation.run", "request_id": "run-1", "data": shoebox_request(seed=1)}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 120))
        assert reply["type"] == "response", reply
        assert (reply["event"], reply["request_id"]) == ("simulation.run", "run-1")
        [pair] = reply["data"]["pairs"]
        assert pair["metrics"]["c80_db"]["broadband"] is not None and pair["metrics"]["edt_s"]["bands"][3] > 0
        kept = service_http.get(f"{simulation.url}/simulations/{reply['data']['id']}").json()
        assert kept["pairs"] == reply["data"]["pairs"]

        bad = shoebox_request(microphones=[[9, 1, 1]])
        await ws.send(json.dumps({"event": "simulation.run", "request_id": "run-2", "data": bad}))
        refused = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert refused["type"] == "error" and refused["request_id"] == "run-2"
        assert refused["error"]["code"] == "validation_error"
        assert refused["error"]["details"]["errors"][0]["field"] == "microphones.0"


async def test_simulation_run_without_waiting_answers_at_once_and_pushes_progress_and_the_result(services) -> None:
    simulation, gateway = services
    async with connect(gateway.ws_url + "/ws?device_id=phone-2", max_size=None) as ws:
        body = shoebox_request(seed=3, microphones=[(5, 2, 1.2), (1, 1, 1)])
        await ws.send(json.dumps({"event": "simulation.run", "request_id": "run-3", "data": {**body, "wait": False}}))
        frames = []
        while not frames or frames[-1].get("event") not in ("simulation.completed", "simulation.failed"):
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
        answer, *pushes = frames
        assert answer["type"] == "response" and answer["request_id"] == "run-3", answer
        assert answer["data"]["status"] == "running" and "pairs" not in answer["data"]
        simulation_id = answer["data"]["id"]
        progress = [p["data"] for p in pushes if p["event"] == "simulation.progress"]
        assert [p["event"] for p in pushes] == ["simulation.progress"] * len(progress) + ["simulation.completed"]
        # 0 before the RIRs, then one step per pair (2 pairs: 0.5, 0.75), then 1
        assert [p["fraction"] for p in progress] == [0.0, 0.5, 0.75, 1.0]
        assert {p["id"] for p in progress} == {simulation_id}
        completed = pushes[-1]["data"]
        kept = service_http.get(f"{simulation.url}/simulations/{simulation_id}").json()
        assert completed["status"] == "succeeded" and completed["pairs"] == kept["pairs"] and len(kept["pairs"]) == 2

        await ws.send(json.dumps({"event": "simulation.run", "request_id": "run-4", "data": {**body, "wait": "no"}}))
        refused = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert refused["type"] == "error" and refused["error"]["details"] == {"field": "wait"}


def test_simulate_over_the_gateway_http_proxy(services) -> None:
    simulation, gateway = services
    response = httpx.post(gateway.url + "/v1/simulation/simulate", json=shoebox_request(seed=2), timeout=120)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["status"] == "succeeded" and len(result["theory"]["sabine_s"]) == 7
    wav = httpx.get(gateway.url + "/v1/simulation" + result["pairs"][0]["rir"]["path"], timeout=30)
    assert wav.status_code == 200 and wav.content[:4] == b"RIFF"
    refused = httpx.post(gateway.url + "/v1/simulation/simulate", json=shoebox_request(dimensions=(8, -6, 3)), timeout=30)
    assert refused.status_code == 422
    assert refused.json()["error"]["details"]["errors"][0]["field"] == "room.dimensions_m.1"
    assert httpx.get(gateway.url + "/v1/simulation/health").json()["service"] == "simulation"
