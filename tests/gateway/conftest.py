"""Stub upstreams speaking the /gateway/handle contract, and gateways in front of them, on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from starlette.responses import PlainTextResponse, Response

from sonalyze.common.json import JSONResponse
from sonalyze.gateway.config import GatewaySettings
from sonalyze.gateway.main import create_app
from sonalyze.services import SERVICES
from tests.support.servers import ThreadedServer, free_port

TOKEN = "test-internal-token"


async def nothing_arrived(ws) -> bool:
    """Whether nothing reached ``ws`` before the answer to a ping sent now: a connection's frames keep their
    order, and a broadcast is written to the connections before its HTTP call returns, so anything delivered
    earlier would arrive first. An explicit signal, not a wait that a slow machine could outlast."""
    await ws.send(json.dumps({"event": "ping", "request_id": "nothing-arrived?"}))
    first = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return first == {"type": "response", "event": "pong", "request_id": "nothing-arrived?", "data": {}}


def stub_upstream(name: str) -> FastAPI:
    """An upstream that answers every event with who it is and what it got.

    Event names ending in ``.slow`` sleep ``data.delay_s``; ``.fail`` answer an error; ``.garbage``
    answer non-JSON; ``.http500`` answer HTTP 500; ``.bad_shape`` answer JSON without data or error.
    """
    app = FastAPI()

    @app.post("/gateway/handle")
    async def handle(request: Request) -> Response:
        body = await request.json()
        event = body["event"]
        if event.endswith(".slow"):
            await asyncio.sleep(float(body["data"].get("delay_s", 1.0)))
        if event.endswith(".fail"):
            return JSONResponse({"error": {"code": "bad_request", "message": "no", "details": {"field": "x"}}})
        if event.endswith(".garbage"):
            return PlainTextResponse("<html>oops</html>")
        if event.endswith(".http500"):
            return PlainTextResponse("boom", status_code=500)
        if event.endswith(".bad_shape"):
            return JSONResponse({"result": 1})
        return JSONResponse({"data": {"service": name, **body}})

    return app


def serve_three(app_for: Callable[[str], FastAPI]) -> Iterator[dict[str, ThreadedServer]]:
    """One server per upstream name (lobby, measurement, simulation), stopped afterwards."""
    servers = {name: ThreadedServer(app_for(name)).start() for name in ("lobby", "measurement", "simulation")}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, ThreadedServer]]:
    yield from serve_three(stub_upstream)


def gateway_settings(upstreams: dict[str, ThreadedServer], **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "lobby_url": upstreams["lobby"].url,
        "measurement_url": upstreams["measurement"].url,
        "simulation_url": upstreams["simulation"].url,
        "internal_auth_token": TOKEN,
        "rate_limit_rps": 10_000.0,
        "rate_limit_burst": 10_000,
        "allow_insecure_device_ids": True,  # identity is not under test here (tests/gateway/test_device_identity.py)
        **overrides,
    }
    return GatewaySettings(**values)


def start_gateway(settings: GatewaySettings) -> ThreadedServer:
    return ThreadedServer(create_app(settings), **SERVICES["gateway"].uvicorn_options).start()


@pytest.fixture(scope="module")
def gateway(upstreams: dict[str, ThreadedServer]) -> Iterator[ThreadedServer]:
    server = start_gateway(gateway_settings(upstreams, http_timeout_seconds=2.0))
    yield server
    server.stop()


@pytest.fixture
def dead_url() -> str:
    """An http:// base URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"
