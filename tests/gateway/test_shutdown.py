"""SIGTERM: stop accepting, let in-flight calls finish within the grace time, close sockets with 1001."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.servers import ServiceProcess


def gateway_env(upstreams, **extra: str) -> dict[str, str]:
    return {
        "LOBBY_URL": upstreams["lobby"].url, "MEASUREMENT_URL": upstreams["measurement"].url,
        "SIMULATION_URL": upstreams["simulation"].url, "INTERNAL_AUTH_TOKEN": "t",
        "ALLOW_INSECURE_DEVICE_IDS": "true", **extra,
    }


async def closed_code(ws) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), 15)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_in_flight_call_finishes_then_every_socket_closes_with_1001(upstreams) -> None:
    gateway = ServiceProcess("gateway", env=gateway_env(upstreams, SHUTDOWN_GRACE_SECONDS="10")).start()
    try:
        async with connect(gateway.ws_url + "/ws?device_id=busy") as busy, connect(gateway.ws_url + "/ws?device_id=idle") as idle:
            await busy.send(json.dumps({"event": "lobby.slow", "request_id": "inflight", "data": {"delay_s": 1.0}}))
            await asyncio.sleep(0.2)
            gateway.process.send_signal(signal.SIGTERM)
            assert await closed_code(idle) == 1001
            reply = json.loads(await asyncio.wait_for(busy.recv(), 10))
            assert reply["request_id"] == "inflight" and reply["type"] == "response"
            assert await closed_code(busy) == 1001
        assert gateway.process.wait(timeout=15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
        with pytest.raises(OSError):
            async with connect(gateway.ws_url + "/ws?device_id=late", open_timeout=2):
                pass
    finally:
        gateway.stop()


async def test_calls_running_past_the_grace_time_are_cut_off(upstreams) -> None:
    gateway = ServiceProcess("gateway", env=gateway_env(upstreams, SHUTDOWN_GRACE_SECONDS="0.5")).start()
    try:
        async with connect(gateway.ws_url + "/ws?device_id=stuck") as ws:
            await ws.send(json.dumps({"event": "lobby.slow", "request_id": "stuck", "data": {"delay_s": 5}}))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            gateway.process.send_signal(signal.SIGTERM)
            assert await closed_code(ws) == 1001
            assert time.monotonic() - started < 8
        gateway.process.wait(timeout=15)
    finally:
        gateway.stop()


def test_start_up_log_says_when_the_broadcast_api_is_closed(upstreams) -> None:
    with ServiceProcess("gateway", env=gateway_env(upstreams, INTERNAL_AUTH_TOKEN="")) as closed:
        time.sleep(0.2)
        assert "internal broadcast API is closed" in closed.log_text()
    with ServiceProcess("gateway", env=gateway_env(upstreams)) as open_:
        time.sleep(0.2)
        assert "internal broadcast API is closed" not in open_.log_text()
