"""Heartbeats (one timer: ping the silent, close the dead) and MAX_CONNECTIONS_PER_DEVICE."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from sonalyze.gateway.config import GatewaySettings
from sonalyze.gateway.heartbeat import HeartbeatAction, heartbeat_action
from tests.gateway.conftest import TOKEN, gateway_settings, start_gateway


@pytest.mark.parametrize(
    ("idle_s", "action"), [(0.0, HeartbeatAction.NONE), (9.9, HeartbeatAction.NONE), (10.0, HeartbeatAction.PING), (29.9, HeartbeatAction.PING), (30.0, HeartbeatAction.CLOSE)]
)
def test_what_a_tick_does_to_a_silent_connection(idle_s: float, action: HeartbeatAction) -> None:
    assert heartbeat_action(idle_s, 10.0, 30.0) is action


def test_the_timeout_must_be_longer_than_the_interval() -> None:
    with pytest.raises(ValueError, match="CONNECTION_TIMEOUT_SEC"):
        GatewaySettings(heartbeat_interval_sec=30, connection_timeout_sec=30)


async def raw_client(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client that does the handshake and then never answers anything."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    return first & 0x0F, await reader.readexactly(length)


async def test_a_silent_client_is_pinged_then_closed_with_4408_and_a_live_one_stays(upstreams) -> None:
    server = start_gateway(gateway_settings(upstreams, heartbeat_interval_sec=0.2, connection_timeout_sec=0.8))
    try:
        reader, writer = await raw_client(server.port, "/ws?device_id=silent")
        async with connect(server.ws_url + "/ws?device_id=alive", ping_interval=None) as alive:
            opcodes = []
            while True:
                opcode, body = await asyncio.wait_for(read_frame(reader), 5)
                opcodes.append(opcode)
                if opcode == 0x8:
                    break
            assert 0x9 in opcodes  # pinged first
            code = struct.unpack("!H", body[:2])[0]
            assert code == 4408 and b"connection timeout" in body[2:]
            await asyncio.sleep(0.5)  # alive answered every ping (websockets pongs by itself)
            await alive.send(json.dumps({"event": "ping"}))
            assert json.loads(await asyncio.wait_for(alive.recv(), 5))["event"] == "pong"
        writer.close()
    finally:
        server.stop()


async def test_with_a_limit_the_newest_connection_replaces_the_oldest_which_is_told_why(upstreams) -> None:
    server = start_gateway(gateway_settings(upstreams, max_connections_per_device=1))
    try:
        async with connect(server.ws_url + "/ws?device_id=phone") as old, connect(server.ws_url + "/ws?device_id=phone") as new:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(old.recv(), 5)
            assert closed.value.rcvd.code == 4000 and "replaced by a newer connection" in closed.value.rcvd.reason
            async with httpx.AsyncClient() as client:
                body = {"event": "x", "targets": {"device_ids": ["phone"]}}
                answer = await client.post(server.url + "/internal/broadcast", json=body, headers={"X-Internal-Token": TOKEN})
            assert answer.json() == {"delivered": 1, "devices": 1}
            assert json.loads(await asyncio.wait_for(new.recv(), 5))["event"] == "x"
    finally:
        server.stop()


async def test_without_a_limit_a_device_keeps_all_its_connections(gateway) -> None:
    async with connect(gateway.ws_url + "/ws?device_id=many") as one, connect(gateway.ws_url + "/ws?device_id=many") as two:
        async with httpx.AsyncClient() as client:
            body = {"event": "x", "targets": {"device_ids": ["many"]}}
            answer = await client.post(gateway.url + "/internal/broadcast", json=body, headers={"X-Internal-Token": TOKEN})
        assert answer.json() == {"delivered": 2, "devices": 1}
        for ws in (one, two):
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["event"] == "x"
