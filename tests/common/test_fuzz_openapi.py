"""Schemathesis on every service's OpenAPI document with the ``not_a_server_error`` check, bounded.

The lobby, measurement, simulation and storage services (SQLite, and storage and the lobby on PostgreSQL
too) and the gateway in front of them run as real uvicorn servers on loopback; every operation of each
document gets ``EXAMPLES`` generated requests with the internal token (the gateway: a minted device
token). No answer may be a 5xx. The longer run and its counts: docs/security.md ("Fuzzing").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error

from sonalyze.gateway.config import GatewaySettings
from sonalyze.gateway.main import create_app as create_gateway
from sonalyze.lobby.config import LobbySettings
from sonalyze.lobby.main import create_app as create_lobby
from sonalyze.measurement.main import create_app as create_measurement
from sonalyze.measurement.settings import MeasurementSettings
from sonalyze.services import SERVICES
from sonalyze.simulation.config import SimulationSettings
from sonalyze.simulation.main import create_app as create_simulation
from sonalyze.storage.main import create_app as create_storage
from sonalyze.storage.settings import StorageSettings
from tests.support import infra
from tests.support.servers import INTERNAL_TOKEN, SERVICE_HEADERS, ThreadedServer

EXAMPLES = int(os.environ.get("SONALYZE_FUZZ_EXAMPLES", "6"))
"""Generated requests per operation; the longer run in docs/security.md sets ``SONALYZE_FUZZ_EXAMPLES``."""

TARGETS = ["lobby", "measurement", "simulation", "storage", "lobby-postgres", "storage-postgres", "gateway"]


def _postgres_url(exits: contextlib.ExitStack) -> str:
    """A fresh PostgreSQL database for the module, dropped at its end."""
    database_url, name = asyncio.run(infra.create_postgres_database())
    exits.callback(lambda: asyncio.run(infra.drop_postgres_database(name)))
    return database_url


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict[str, ThreadedServer]]:
    """Every service (and the gateway in front of the SQLite ones) on free loopback ports."""
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    token = {"internal_auth_token": INTERNAL_TOKEN}
    with contextlib.ExitStack() as exits:

        def serve(name: str, app, service: str) -> ThreadedServer:
            server = exits.enter_context(ThreadedServer(app, **SERVICES[service].uvicorn_options))
            running[name] = server
            return server

        running: dict[str, ThreadedServer] = {}
        measurement = serve("measurement", create_measurement(MeasurementSettings(data_dir=tmp / "m", **token)), "measurement")
        simulation = serve("simulation", create_simulation(SimulationSettings(data_dir=tmp / "s", **token)), "simulation")
        serve("storage", create_storage(StorageSettings(database_url=f"sqlite+aiosqlite:///{tmp / 'storage.db'}", **token)), "storage")
        lobby_settings = {"measurement_url": measurement.url, "sample_rate_hz": 16000, "sweep_duration_s": 1.0, **token}
        lobby = serve("lobby", create_lobby(LobbySettings(database_url=f"sqlite+aiosqlite:///{tmp / 'lobby.db'}", **lobby_settings)), "lobby")
        gateway = GatewaySettings(
            lobby_url=lobby.url,
            measurement_url=measurement.url,
            simulation_url=simulation.url,
            rate_limit_rps=100_000,
            rate_limit_burst=100_000,
            device_mint_rps=100_000,
            device_mint_burst=100_000,
            **token,
        )
        serve("gateway", create_gateway(gateway), "gateway")
        if infra.reachable(infra.POSTGRES_ADMIN_URL, 5432) or infra.servers_required():
            serve("lobby-postgres", create_lobby(LobbySettings(database_url=_postgres_url(exits), **lobby_settings)), "lobby")
            serve("storage-postgres", create_storage(StorageSettings(database_url=_postgres_url(exits), **token)), "storage")
        yield running


def _headers(target: str, server: ThreadedServer) -> dict[str, str]:
    """A service calls with the internal token for a device; a client of the gateway with its device token."""
    if target != "gateway":
        return {**SERVICE_HEADERS, "X-Device-Id": "fuzz-device"}
    minted = httpx.post(f"{server.url}/v1/devices", timeout=30)
    assert minted.status_code == 201, minted.text
    return {"X-Device-Token": minted.json()["device_token"]}


@pytest.mark.parametrize("target", TARGETS)
def test_no_operation_answers_a_server_error(servers: dict[str, ThreadedServer], target: str):
    if target not in servers:
        infra.skip_unless_required(f"{target}: PostgreSQL is not reachable")
    server = servers[target]
    document = httpx.get(f"{server.url}/openapi.json", headers=SERVICE_HEADERS, timeout=30)
    assert document.status_code == 200, document.text
    schema = schemathesis.openapi.from_dict(document.json())
    headers = _headers(target, server)
    calls, failures = 0, []

    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        def fuzz(case) -> None:
            nonlocal calls
            calls += 1
            try:
                case.call_and_validate(base_url=server.url, headers=headers, checks=[not_a_server_error], timeout=30)
            except Exception as exc:  # noqa: BLE001 - collected, reported all at once below
                failures.append(f"{operation.label}: {exc}\n{case.as_curl_command(headers=headers)}")

        fuzz()
    print(f"fuzz {target}: {len(operations)} operations, {calls} requests, {len(failures)} failures")
    assert len(operations) >= 3 and calls >= len(operations), (len(operations), calls)
    assert failures == [], "\n\n".join(failures[:10])
