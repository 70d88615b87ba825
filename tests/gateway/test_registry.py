"""The connection registry in the real Redis: who is connected where, refreshed by the heartbeat, TTL 2× timeout."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
import redis.asyncio as redis
from websockets.asyncio.client import connect

from tests.gateway.conftest import gateway_settings, start_gateway

ALLOW_ALL = json.dumps({"routes": [{"events": ["*"], "upstream": "lobby"}], "channels": [{"channels": ["*"], "authorize": "allow"}]})


async def eventually(check, timeout_s: float = 5.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await check()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.05)


async def test_connections_and_rooms_are_registered_refreshed_and_removed(upstreams, redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    settings = gateway_settings(
        upstreams, registry_url=redis_url, gateway_broker_prefix=prefix, gateway_id="gw-test",
        heartbeat_interval_sec=0.2, connection_timeout_sec=1.0, gateway_routes=ALLOW_ALL,
    )
    server = start_gateway(settings)
    client = redis.Redis.from_url(redis_url)
    conn_key, room_key = f"{prefix}conn:-:dev1", f"{prefix}room:room:1"
    try:
        async with connect(server.ws_url + "/ws?device_id=dev1") as one, connect(server.ws_url + "/ws?device_id=dev1") as two:
            await one.send(json.dumps({"event": "subscribe", "data": {"channel": "room:1"}}))
            await one.recv()

            async def registered():
                entry = await client.hget(conn_key, "gw-test")
                return entry and json.loads(entry)["channels"] == ["room:1"] and json.loads(entry)

            entry = await eventually(registered)
            assert entry["device_id"] == "dev1" and entry["gateway_id"] == "gw-test" and entry["connections"] == 2
            assert entry["tenant_id"] is None
            assert 0 < await client.pttl(conn_key) <= 2000  # 2 × CONNECTION_TIMEOUT_SEC
            room = json.loads(await client.hget(room_key, "gw-test"))
            assert room["members"] == ["-:dev1"]
            await asyncio.sleep(0.5)
            assert await client.pttl(conn_key) > 1000  # refreshed by the heartbeat
            async with httpx.AsyncClient() as http:
                readiness = (await http.get(server.url + "/readyz")).json()
            assert readiness["registry"] == {"connected": True} and readiness["gateway_id"] == "gw-test"
            await two.close()
        gone = await eventually(lambda: _missing(client, conn_key, room_key))
        assert gone
    finally:
        server.stop()
        await client.delete(conn_key, room_key)
        await client.aclose()


async def _missing(client, *keys: str) -> bool:
    return [await client.hget(key, "gw-test") for key in keys] == [None] * len(keys)


async def test_readyz_is_ready_with_the_memory_broker(gateway) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.get(gateway.url + "/readyz")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ready" and body["broker"] == {"kind": "memory", "connected": True} and "registry" not in body


@pytest.mark.parametrize("url", ["kafka://x", "http://x", "memory"])
def test_an_unknown_broker_url_stops_the_gateway_at_start_up(url: str) -> None:
    from sonalyze.gateway.config import GatewaySettings

    with pytest.raises(ValueError, match="BROKER_URL"):
        GatewaySettings(broker_url=url)
