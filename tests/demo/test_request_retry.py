"""The demo's virtual phone sends a request again while the gateway cannot get it answered (a service's
replica restarting: ``upstream_unavailable``; one frozen: ``upstream_timeout``), after the client's back-off,
and a refusal that comes once the request gets through is the answer (never an empty one).

A real gateway (in this process) in front of a real lobby (SQLite): in a thread of this process, stopped
and started again on its port, or a ``sonalyze serve lobby`` process frozen with SIGSTOP.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import numpy as np
import pytest

from sonalyze.client import GatewayError, SonalyzeClient
from sonalyze.demo.session import DemoConfig, VirtualDevice, _Shared
from sonalyze.gateway.config import GatewaySettings
from sonalyze.gateway.main import create_app as create_gateway
from sonalyze.lobby.main import create_app as create_lobby
from sonalyze.services import SERVICES
from tests.lobby.conftest import lobby_settings
from tests.support.servers import INTERNAL_TOKEN, ServiceProcess, ThreadedServer, free_port

DOWN_S = 1.0
"""How long the lobby is away: several of the client's back-off steps (0.05 s doubling to 0.4 s)."""
HTTP_TIMEOUT_S = 1.0
"""The gateway's ``HTTP_TIMEOUT_SECONDS``: a frozen lobby is answered ``upstream_timeout`` after it."""


def phone(name: str, client: SonalyzeClient) -> VirtualDevice:
    return VirtualDevice(name, client, DemoConfig(gateway_url=client.gateway_url), _Shared(), np.random.default_rng(1), lambda _: None)


@pytest.fixture
def lobby_port() -> int:
    return free_port()


@pytest.fixture
def gateway(lobby_port: int) -> Iterator[ThreadedServer]:
    nowhere = f"http://127.0.0.1:{free_port()}"
    settings = GatewaySettings(
        lobby_url=f"http://127.0.0.1:{lobby_port}", measurement_url=nowhere, simulation_url=nowhere,
        internal_auth_token=INTERNAL_TOKEN, http_timeout_seconds=HTTP_TIMEOUT_S,
    )
    with ThreadedServer(create_gateway(settings), **SERVICES["gateway"].uvicorn_options) as server:
        yield server


async def test_a_request_waits_for_the_lobby_replica_to_come_back(gateway: ThreadedServer, lobby_port: int, tmp_path) -> None:
    lobby = ThreadedServer(create_lobby(lobby_settings(f"sqlite+aiosqlite:///{tmp_path / 'lobby.db'}")), port=lobby_port)

    async def restart_after(delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await asyncio.to_thread(lobby.start)

    async with SonalyzeClient(gateway.url, backoff_initial_s=0.05, backoff_max_s=0.4) as host_client, \
            SonalyzeClient(gateway.url, backoff_initial_s=0.05, backoff_max_s=0.4) as stranger_client:
        host, stranger = phone("host", host_client), phone("stranger", stranger_client)
        try:
            coming_back = asyncio.create_task(restart_after(DOWN_S))  # not started yet: its port refuses
            created = await host.request("lobby.create", {"name": "retried"})
            await coming_back
            assert created["lobby_id"] and created["host_device_id"] == host.device_id
            log = await host.request("lobby.events", {"lobby_id": created["lobby_id"]})
            assert [event["type"] for event in log["events"]] == ["created"]

            await asyncio.to_thread(lobby.stop)  # down again: the stranger's read waits for it, then is refused
            coming_back = asyncio.create_task(restart_after(DOWN_S))
            with pytest.raises(GatewayError) as refused:
                await stranger.request("lobby.events", {"lobby_id": created["lobby_id"]})
            await coming_back
            assert refused.value.code == "forbidden"
        finally:
            await asyncio.to_thread(lobby.stop)


async def test_a_request_waits_for_a_frozen_lobby_replica(gateway: ThreadedServer, lobby_port: int, tmp_path) -> None:
    """Frozen (SIGSTOP) past the gateway's timeout: the first attempt is answered ``upstream_timeout`` and still
    carried out once the lobby thaws; the next one goes through."""
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'lobby.db'}", "GATEWAY_URL": "", "MEASUREMENT_URL": f"http://127.0.0.1:{free_port()}"}
    with ServiceProcess("lobby", env=env, port=lobby_port) as lobby:
        async with SonalyzeClient(gateway.url, backoff_initial_s=0.05, backoff_max_s=0.4) as client:
            host = phone("host", client)
            created = await host.request("lobby.create", {"name": "frozen"})
            os.kill(lobby.pid, signal.SIGSTOP)
            try:
                asking = asyncio.create_task(host.request("lobby.get", {"lobby_id": created["lobby_id"]}))
                await asyncio.sleep(HTTP_TIMEOUT_S + DOWN_S)
                assert not asking.done()  # timed out once at least, and sent again
            finally:
                os.kill(lobby.pid, signal.SIGCONT)
            assert (await asking)["lobby_id"] == created["lobby_id"]
