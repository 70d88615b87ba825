"""Several URLs per upstream (``LOBBY_URL=http://a,http://b``): the gateway balances its routed events and
proxied requests over real replicas on loopback, fails over when one stops, and uses it again when it is back."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import ValidationError
from websockets.asyncio.client import connect

from sonalyze.common.json import JSONResponse
from sonalyze.gateway.config import GatewaySettings
from tests.gateway.conftest import gateway_settings, start_gateway
from tests.support.servers import ServiceProcess, ThreadedServer


def named_replica(name: str) -> FastAPI:
    """Answers routed events and every proxied path with its own name."""
    app = FastAPI()

    @app.post("/gateway/handle")
    async def handle(request: Request) -> JSONResponse:
        return JSONResponse({"data": {"replica": name, "event": (await request.json())["event"]}})

    @app.get("/v1/jobs/{rest:path}")
    async def job(rest: str) -> JSONResponse:
        return JSONResponse({"replica": name, "path": "/v1/jobs/" + rest})

    return app


@pytest.fixture
def replicas() -> Iterator[dict[str, ThreadedServer]]:
    servers = {name: ThreadedServer(named_replica(name)).start() for name in ("a", "b")}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def gateway(replicas: dict[str, ThreadedServer]) -> Iterator[ThreadedServer]:
    both = f"{replicas['a'].url}/, {replicas['b'].url}"  # spaces and trailing slashes are fine
    server = start_gateway(gateway_settings(
        {"lobby": replicas["a"], "measurement": replicas["a"], "simulation": replicas["a"]},
        lobby_url=both, measurement_url=both, http_timeout_seconds=5.0,
    ))
    yield server
    server.stop()


async def served_by(ws, http: httpx.AsyncClient, count: int) -> tuple[Counter, Counter]:
    """Which replica answered each of ``count`` routed events and ``count`` proxied requests (all must succeed)."""
    events: Counter = Counter()
    requests: Counter = Counter()
    for index in range(count):
        await ws.send(json.dumps({"event": "lobby.get", "request_id": index}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply["type"] == "response", reply
        events[reply["data"]["replica"]] += 1
    for index in range(count):
        response = await http.get(f"/v1/jobs/j{index}", headers={"X-Device-Id": "dev-r"})
        assert response.status_code == 200, response.text
        assert response.json()["path"] == f"/v1/jobs/j{index}"
        requests[response.json()["replica"]] += 1
    return events, requests


async def test_calls_are_balanced_fail_over_and_return_to_a_replica_that_is_back(gateway, replicas) -> None:
    async with connect(gateway.ws_url + "/ws?device_id=dev-r") as ws, httpx.AsyncClient(base_url=gateway.url) as http:
        assert await served_by(ws, http, 6) == ({"a": 3, "b": 3}, {"a": 3, "b": 3})  # in turn

        replicas["a"].stop()
        assert await served_by(ws, http, 6) == ({"b": 6}, {"b": 6})  # every call still answered

        replicas["a"].start()  # same port; passed over for a few seconds, then tried again
        deadline_s = time.monotonic() + 30
        events, requests = Counter(), Counter()
        while not (events["a"] and requests["a"]):
            assert time.monotonic() < deadline_s, "replica a was never used again after it came back"
            more_events, more_requests = await served_by(ws, http, 2)
            events += more_events
            requests += more_requests
            await asyncio.sleep(0.2)
        assert await served_by(ws, http, 6) == ({"a": 3, "b": 3}, {"a": 3, "b": 3})


async def test_every_replica_down_is_upstream_unavailable(gateway, replicas) -> None:
    for server in replicas.values():
        server.stop()
    async with connect(gateway.ws_url + "/ws?device_id=dev-r") as ws, httpx.AsyncClient(base_url=gateway.url) as http:
        await ws.send(json.dumps({"event": "lobby.get", "request_id": "down"}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert (reply["type"], reply["error"]["code"]) == ("error", "upstream_unavailable")
        response = await http.get("/v1/jobs/x", headers={"X-Device-Id": "dev-r"})
        assert (response.status_code, response.json()["error"]["code"]) == (502, "upstream_unavailable")


def test_upstream_urls_are_normalised_and_checked(monkeypatch) -> None:
    monkeypatch.setenv("MEASUREMENT_URL", " http://m1:8002/ , http://m2:8002/")
    monkeypatch.setenv("LOBBY_URL", "http://l:5/")
    assert GatewaySettings().upstream_urls()["measurement"] == "http://m1:8002,http://m2:8002"
    assert GatewaySettings().upstream_urls()["lobby"] == "http://l:5"  # one URL: as before
    monkeypatch.setenv("SIMULATION_URL", "http://s:1,ftp://s:2")
    with pytest.raises(ValidationError, match="not an http"):
        GatewaySettings()


@pytest.mark.postgres
async def test_a_lobby_replica_killed_with_sigkill_is_failed_over(postgres_url: str, dead_url: str) -> None:
    """Two real lobby processes on one PostgreSQL behind ``LOBBY_URL=a,b``: ``kill -9`` of one between calls
    costs no call (its pooled connections die with it; the call goes to the other)."""
    env = {"DATABASE_URL": postgres_url, "MEASUREMENT_URL": dead_url, "GATEWAY_URL": "", "LOG_LEVEL": "WARNING"}
    with ServiceProcess("lobby", env=env) as a, ServiceProcess("lobby", env=env) as b:
        lobby_url = f"{a.url},{b.url}"
        server = start_gateway(gateway_settings(
            {"lobby": a, "measurement": a, "simulation": a}, lobby_url=lobby_url, http_timeout_seconds=10.0
        ))
        try:
            async with connect(server.ws_url + "/ws?device_id=host") as ws:
                async def call(event: str, data: dict, request_id: str) -> dict:
                    await ws.send(json.dumps({"event": event, "data": data, "request_id": request_id}))
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 20))
                    assert reply["type"] == "response", reply
                    return reply["data"]

                room = await call("lobby.create", {}, "create")
                for n in range(4):  # both replicas now hold a pooled connection from the gateway
                    assert (await call("lobby.get", {"lobby_id": room["lobby_id"]}, f"before-{n}"))["lobby_id"] == room["lobby_id"]
                a.kill()
                for n in range(6):
                    assert (await call("lobby.get", {"lobby_id": room["lobby_id"]}, f"after-{n}"))["lobby_id"] == room["lobby_id"]
        finally:
            server.stop()
