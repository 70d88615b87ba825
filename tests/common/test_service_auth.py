"""Service-to-service authentication of the lobby, measurement, simulation and storage, on real servers.

Every endpoint but the health probes answers 401 ``unauthorized`` without the internal token, with a
wrong one, or with only an ``X-Device-Id`` a client could type; a service with an empty token does not
start unless told it is a development one; ``/gateway/handle`` takes string and integer request ids.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from sonalyze.common.cpu_pool import CpuPool
from sonalyze.common.internal_auth import InsecureConfiguration, InternalAuth
from sonalyze.lobby.config import LobbySettings
from sonalyze.lobby.main import create_app as create_lobby
from sonalyze.measurement.main import create_app as create_measurement
from sonalyze.measurement.settings import MeasurementSettings
from sonalyze.simulation.config import SimulationSettings
from sonalyze.simulation.main import create_app as create_simulation
from sonalyze.storage.main import create_app as create_storage
from sonalyze.storage.settings import StorageSettings
from tests.support.servers import INTERNAL_TOKEN, SERVICE_HEADERS, ServiceProcess, ThreadedServer

SERVICES = ("lobby", "measurement", "simulation", "storage")
HEALTH_PATHS = {"lobby": "/healthz", "measurement": "/healthz", "simulation": "/healthz", "storage": "/healthz"}


def build(name: str, tmp_path: Path, token: str = INTERNAL_TOKEN, **extra):
    """The service's ASGI application and its FastAPI app (for the routes), with ``token``."""
    if name == "lobby":
        app = create_lobby(LobbySettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'lobby.db'}", internal_auth_token=token, **extra))
        return app, app.app
    if name == "measurement":
        app = create_measurement(MeasurementSettings(data_dir=tmp_path / "m", internal_auth_token=token, **extra))
        return app, app
    if name == "simulation":
        app = create_simulation(SimulationSettings(data_dir=tmp_path / "s", internal_auth_token=token, **extra))
        return app, app
    app = create_storage(StorageSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'storage.db'}", internal_auth_token=token, **extra))
    return app, app


def endpoints(fastapi_app) -> list[tuple[str, str]]:
    """Every (method, path) the service serves, path parameters filled in, plus ``/gateway/handle``."""
    found = {("POST", "/gateway/handle")}
    for path, operations in fastapi_app.openapi()["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "1", path)
        found.update((method.upper(), concrete) for method in operations)
    return sorted(found)


@pytest.fixture(params=SERVICES)
def service(request, tmp_path) -> Iterator[tuple[str, ThreadedServer, list[tuple[str, str]]]]:
    app, fastapi_app = build(request.param, tmp_path)
    with ThreadedServer(app) as server:
        yield request.param, server, endpoints(fastapi_app)


def test_every_endpoint_refuses_a_call_without_the_internal_token(service) -> None:
    name, server, routes = service
    assert len(routes) >= 4, routes
    wrong = {"X-Internal-Token": INTERNAL_TOKEN + "x"}
    for attempt in ({}, wrong, {"X-Internal-Token": ""}, {"X-Device-Id": "phone-1"}, {"X-Service-Token": INTERNAL_TOKEN}):
        for method, path in routes:
            response = httpx.request(method, server.url + path, headers=attempt, json={}, timeout=30)
            if path in ("/healthz", "/readyz", "/health", "/v1/health"):  # probes carry no token
                assert response.status_code == 200, (name, path)
                continue
            assert response.status_code == 401, (name, method, path, attempt, response.text)
            assert method == "HEAD" or response.json()["error"]["code"] == "unauthorized"
    # The same routes with the token are served (whatever they then say about the request itself).
    for method, path in routes:
        response = httpx.request(method, server.url + path, headers=SERVICE_HEADERS, json={}, timeout=30)
        assert response.status_code != 401, (name, method, path, response.text)
    assert httpx.get(server.url + HEALTH_PATHS[name]).status_code == 200


@pytest.mark.parametrize("name", SERVICES)
def test_a_service_with_an_empty_token_refuses_to_start(name, tmp_path) -> None:
    with pytest.raises(InsecureConfiguration, match="INTERNAL_AUTH_TOKEN is empty"):
        build(name, tmp_path, token="")
    # Development mode, asked for by name: open to every caller.
    app, _ = build(name, tmp_path, token="", internal_auth_disabled=True)
    with ThreadedServer(app) as server:
        response = httpx.post(server.url + "/gateway/handle", json={"event": "nothing.here"}, timeout=30)
        assert response.status_code != 401


def test_the_process_exits_with_the_reason(tmp_path) -> None:
    process = ServiceProcess("storage", env={"INTERNAL_AUTH_TOKEN": "", "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 's.db'}"})
    with pytest.raises(RuntimeError) as refused:
        process.start(timeout_s=30)
    assert "INTERNAL_AUTH_TOKEN is empty" in str(refused.value)


def test_the_caller_is_read_from_the_headers_only_with_the_token() -> None:
    auth = InternalAuth("s3cret")
    headers = lambda **h: [(k.replace("_", "-").encode(), v.encode()) for k, v in h.items()]  # noqa: E731
    assert auth.caller(headers(x_device_id="a")) is None
    assert auth.caller(headers(x_internal_token="s3cre", x_device_id="a")) is None
    device = auth.caller(headers(X_Internal_Token="s3cret", X_Device_Id="a"))
    assert device is not None and device.device_id == "a" and not device.service
    gateway_for_nobody = auth.caller(headers(x_internal_token="s3cret"))
    assert gateway_for_nobody is not None and gateway_for_nobody.device_id is None and not gateway_for_nobody.service
    assert not auth.caller(headers(x_internal_token="s3cret", x_service_token="guess")).service
    assert auth.caller(headers(x_internal_token="s3cret", x_service_token="s3cret")).service
    assert auth.caller(headers(x_internal_token="s3cret", x_device_id="d" * 129)) is None


@pytest.mark.parametrize("name", ["lobby", "measurement", "simulation"])
def test_gateway_handle_takes_string_and_integer_request_ids(name, tmp_path) -> None:
    """One ``HandleRequest`` model (common/handle.py) for every service: the gateway forwards either."""
    app, _ = build(name, tmp_path)
    with ThreadedServer(app) as server, httpx.Client(base_url=server.url, headers=SERVICE_HEADERS, timeout=30) as http:
        for request_id in (7, "7", 2**62, None):
            response = http.post("/gateway/handle", json={"event": "no.such.event", "request_id": request_id, "device_id": "d"})
            assert response.status_code == 200, (request_id, response.text)
            assert response.json()["error"]["code"] == "unknown_event"
        for bad in (1.5, True, [1], {"a": 1}):
            response = http.post("/gateway/handle", json={"event": "no.such.event", "request_id": bad})
            assert response.status_code == 422 and response.json()["error"]["code"] == "validation_error", bad


async def test_an_analysis_worker_cannot_take_the_host_s_memory() -> None:
    """RLIMIT_AS in the worker: a 2 GiB allocation fails there with MemoryError; the worker lives on."""
    pool = CpuPool(1, 0, memory_limit_mb=256)
    try:
        with pytest.raises(MemoryError):
            await pool.run(np.ones, 2**28, timeout_s=60)
        assert (await pool.run(np.ones, 1000, timeout_s=60)).sum() == 1000  # 8 kB: still fine
    finally:
        await pool.close()
    await asyncio.sleep(0)
