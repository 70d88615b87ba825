"""The chat example: rooms across two gateway instances over the real Redis, history kept upstream."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect

from examples.chat import run as chat
from tests.support import infra


@pytest.fixture(scope="module")
def cluster() -> Iterator[chat.ChatCluster]:
    redis_url = infra.require(infra.REDIS_URL, 6379, "Redis")
    started = chat.start(redis_url, prefix=f"test-chat-{uuid.uuid4().hex[:8]}:")
    yield started
    started.stop()


async def call(ws, event: str, data: dict) -> dict:
    """Send one event and return its answer; pushes that arrive meanwhile are kept in ``ws.pushes``."""
    request_id = uuid.uuid4().hex
    await ws.send(json.dumps({"event": event, "data": data, "request_id": request_id}))
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if message.get("request_id") == request_id:
            return message
        ws.pushes.append(message)


async def next_push(ws, event: str) -> dict:
    while True:
        for message in ws.pushes:
            if message["event"] == event:
                ws.pushes.remove(message)
                return message
        ws.pushes.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))


async def drain_to_marker(publisher, *sockets) -> None:
    """Collect into ``ws.pushes`` what reaches each socket before a marker ``publisher`` (the gateway the
    chat service pushes through) publishes to all now: one node's publications cross the bus in order, so
    whatever it published earlier has arrived by then or never will. A signal, not a wait."""
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient() as client:
        body = {"event": marker, "data": {}, "targets": {"all": True}}
        headers = {"X-Internal-Token": publisher.env["INTERNAL_AUTH_TOKEN"]}
        assert (await client.post(publisher.url + "/internal/broadcast", json=body, headers=headers)).status_code == 200
    for ws in sockets:
        while (message := json.loads(await asyncio.wait_for(ws.recv(), 10)))["event"] != marker:
            ws.pushes.append(message)


async def test_room_events_reach_members_on_both_instances_and_history_is_kept(cluster) -> None:
    g1, g2 = cluster.gateways
    async with (
        connect(g1.ws_url + "/ws?device_id=alice") as alice,
        connect(g2.ws_url + "/ws?device_id=bob") as bob,
        connect(g2.ws_url + "/ws?device_id=carol") as carol,
    ):
        for ws in (alice, bob, carol):
            ws.pushes = []
        assert (await call(alice, "subscribe", {"channel": "room:lobby"}))["data"] == {"channel": "room:lobby", "subscribed": True}
        assert (await call(bob, "subscribe", {"channel": "room:lobby"}))["data"]["subscribed"] is True
        joined = await next_push(alice, "room.joined")
        assert joined["data"] == {"room_id": "lobby", "device_id": "bob", "members": 2}

        refused = await call(carol, "chat.send", {"room_id": "lobby", "text": "let me in"})
        assert refused["error"]["code"] == "forbidden"  # not a member

        assert (await call(alice, "chat.send", {"room_id": "lobby", "text": "hello from instance 1"}))["data"] == {"seq": 1}
        assert (await call(bob, "chat.send", {"room_id": "lobby", "text": "hello from instance 2"}))["data"] == {"seq": 2}
        for ws in (alice, bob):
            texts = [(await next_push(ws, "room.message"))["data"]["text"] for _ in range(2)]
            assert texts == ["hello from instance 1", "hello from instance 2"]
        history = await call(bob, "chat.history", {"room_id": "lobby"})
        assert [message["text"] for message in history["data"]["messages"]] == ["hello from instance 1", "hello from instance 2"]

        assert (await call(bob, "chat.leave", {"room_id": "lobby"}))["data"] == {"left": "lobby"}
        assert (await call(bob, "unsubscribe", {"channel": "room:lobby"}))["data"]["subscribed"] is False
        left = await next_push(alice, "room.left")
        assert left["data"] == {"room_id": "lobby", "device_id": "bob", "members": 1}
        await call(alice, "chat.send", {"room_id": "lobby", "text": "bob is gone"})
        assert (await next_push(alice, "room.message"))["data"]["text"] == "bob is gone"
        await drain_to_marker(g1, alice, bob, carol)
        assert [m for m in bob.pushes if m["event"] == "room.message"] == []
        assert carol.pushes == []


async def test_seed_001_settings_by_their_own_names() -> None:
    """MAX_CONNECTIONS_PER_DEVICE, CONNECTION_TIMEOUT_SEC, HEARTBEAT_INTERVAL_SEC, MAX_EVENTS_PER_SECOND and
    CACHE_URI as seed 001 spells them; its cache keys with a TTL of 2 × the timeout; /healthz and /readyz."""
    import time

    import httpx
    import redis.asyncio as aioredis
    from websockets.exceptions import ConnectionClosed

    from examples._launch import gateway

    redis_url = infra.require(infra.REDIS_URL, 6379, "Redis")
    prefix = f"test-seed001-{uuid.uuid4().hex[:8]}:"
    routes = {"routes": [{"events": ["chat.*"], "upstream": "http://127.0.0.1:9"}], "channels": [{"channels": ["room:*"], "authorize": "allow"}]}
    node = gateway("gateway", {
        "MAX_CONNECTIONS_PER_DEVICE": "1", "CONNECTION_TIMEOUT_SEC": "4", "HEARTBEAT_INTERVAL_SEC": "1",
        "MAX_EVENTS_PER_SECOND": "5", "RATE_LIMIT_BURST": "5", "CACHE_URI": redis_url, "GATEWAY_BROKER_PREFIX": prefix,
        "GATEWAY_ROUTES": json.dumps(routes), "ALLOW_INSECURE_DEVICE_IDS": "true",
    })
    await asyncio.to_thread(node.start)
    cache = aioredis.Redis.from_url(redis_url)
    try:
        async with httpx.AsyncClient(base_url=node.url) as http:
            assert (await http.get("/healthz")).status_code == 200
            ready = (await http.get("/readyz")).json()
            assert ready["status"] == "ready" and ready["registry"] == {"connected": True}  # CACHE_URI was taken
        async with connect(node.ws_url + "/ws?device_id=alice") as first:
            first.pushes = []
            assert (await call(first, "subscribe", {"channel": "room:r1"}))["data"]["subscribed"] is True
            conn_key, room_key = f"{prefix}conn:-:alice", f"{prefix}room:room:r1"
            deadline = time.monotonic() + 10
            while not (await cache.exists(conn_key) and await cache.exists(room_key)):  # written on the next heartbeat tick
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            for key in (conn_key, room_key):
                assert 0 < await cache.pttl(key) <= 8000  # 2 × CONNECTION_TIMEOUT_SEC
            entry = json.loads(next(iter((await cache.hgetall(conn_key)).values())))
            assert entry["device_id"] == "alice" and entry["channels"] == ["room:r1"]

            async with connect(node.ws_url + "/ws?device_id=alice") as second:
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(first.recv(), 10)
                assert closed.value.rcvd.code == 4000  # MAX_CONNECTIONS_PER_DEVICE=1: the newer one replaces it

                started_s = time.monotonic()
                for n in range(20):
                    await second.send(json.dumps({"event": "ping", "request_id": n}))
                answers = [json.loads(await asyncio.wait_for(second.recv(), 10)) for _ in range(20)]
                elapsed_s = time.monotonic() - started_s
                pongs = sum(answer["type"] == "response" for answer in answers)
                limited = sum(answer.get("error", {}).get("code") == "rate_limited" for answer in answers)
                assert pongs + limited == 20
                assert 5 <= pongs <= 5 + 5 * elapsed_s + 1  # burst 5, then MAX_EVENTS_PER_SECOND=5 refill
    finally:
        await cache.aclose()
        await asyncio.to_thread(node.stop)
