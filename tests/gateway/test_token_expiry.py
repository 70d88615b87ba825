"""An open connection is closed when its JWT expires: first a ``token_expired`` error, then close 4401."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.gateway.conftest import TOKEN, gateway_settings, start_gateway
from tests.support.servers import ThreadedServer

SECRET = "a-test-secret-of-at-least-32-bytes!!"


def token(device_id: str, ttl_s: float) -> str:
    return jwt.encode({"device_id": device_id, "exp": time.time() + ttl_s}, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def auth_gateway(upstreams) -> Iterator[ThreadedServer]:
    server = start_gateway(gateway_settings(upstreams, auth_required=True, jwt_secret=SECRET))
    yield server
    server.stop()


async def test_a_connection_is_told_and_closed_when_its_token_expires(auth_gateway) -> None:
    async with (
        connect(auth_gateway.ws_url + f"/ws?token={token('short', 1.5)}") as short,
        connect(auth_gateway.ws_url + f"/ws?token={token('long', 600)}") as long,
    ):
        await short.send(json.dumps({"event": "lobby.get", "request_id": "before"}))
        assert json.loads(await short.recv())["type"] == "response"  # usable until it expires
        opened_s = time.monotonic()
        told = json.loads(await asyncio.wait_for(short.recv(), 5))
        assert told["type"] == "error" and told["error"]["code"] == "token_expired"
        assert 0.5 < time.monotonic() - opened_s < 2.5
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(short.recv(), 5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4401, "token expired")

        await long.send(json.dumps({"event": "lobby.get", "request_id": "after"}))
        assert json.loads(await long.recv())["request_id"] == "after"  # a valid token's connection stays
    metrics = httpx.get(auth_gateway.url + "/metrics", headers={"X-Internal-Token": TOKEN}).text
    assert 'gateway_disconnects_total{reason="token_expired"} 1.0' in metrics
