"""Channels: subscribe / unsubscribe, authorized by a rule or an upstream hook; broadcasts to channels and to all."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from websockets.asyncio.client import connect

from sonalyze.common.json import JSONResponse
from tests.gateway.conftest import TOKEN, gateway_settings, nothing_arrived, start_gateway
from tests.support.servers import ThreadedServer

LOBBY_MEMBERS = {"lobby:L1": {"a", "b"}}
ROUTES = {
    "routes": [{"events": ["lobby.*"], "upstream": "lobby"}],
    "channels": [{"channels": ["lobby:*"], "authorize": "lobby"}, {"channels": ["public:*"], "authorize": "allow"}],
}


def authorizing_lobby() -> FastAPI:
    """A lobby stub implementing the ``gateway.authorize_subscribe`` hook: members of a lobby may join it."""
    app = FastAPI()
    app.state.asked = []

    @app.post("/gateway/handle")
    async def handle(request: Request) -> JSONResponse:
        body = await request.json()
        app.state.asked.append(body)
        if body["event"] != "gateway.authorize_subscribe":
            return JSONResponse({"error": {"code": "unknown_event", "message": body["event"]}})
        channel = body["data"]["channel"]
        if channel == "lobby:broken":
            return JSONResponse({"error": {"code": "not_found", "message": "no such lobby"}})
        allowed = body["device_id"] in LOBBY_MEMBERS.get(channel, set())
        return JSONResponse({"data": {"allowed": allowed, **({} if allowed else {"reason": "not a participant"})}})

    return app


@pytest.fixture(scope="module")
def channel_gateway(upstreams) -> Iterator[tuple[ThreadedServer, FastAPI]]:
    lobby_app = authorizing_lobby()
    with ThreadedServer(lobby_app) as lobby:
        stubs = {**upstreams, "lobby": lobby}
        server = start_gateway(gateway_settings(stubs, gateway_routes=json.dumps(ROUTES)))
        yield server, lobby_app
        server.stop()


async def call(ws, event: str, data: dict, request_id: str = "r") -> dict:
    await ws.send(json.dumps({"event": event, "data": data, "request_id": request_id}))
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def broadcast(url: str, targets: dict, event: str = "room.said") -> httpx.Response:
    async with httpx.AsyncClient() as client:
        body = {"event": event, "data": {"text": "hi"}, "targets": targets}
        return await client.post(url + "/internal/broadcast", json=body, headers={"X-Internal-Token": TOKEN})


async def test_the_lobby_hook_decides_who_joins_a_lobby_channel(channel_gateway) -> None:
    gateway, lobby_app = channel_gateway
    async with connect(gateway.ws_url + "/ws?device_id=a") as a, connect(gateway.ws_url + "/ws?device_id=z") as z:
        assert await call(a, "subscribe", {"channel": "lobby:L1"}) == {
            "type": "response", "event": "subscribe", "request_id": "r", "data": {"channel": "lobby:L1", "subscribed": True},
        }
        refused = await call(z, "subscribe", {"channel": "lobby:L1"})
        assert refused["type"] == "error" and refused["error"]["code"] == "forbidden"
        assert "not a participant" in refused["error"]["message"]
        asked = lobby_app.state.asked[-1]
        assert asked["event"] == "gateway.authorize_subscribe" and asked["device_id"] == "z"
        assert asked["data"] == {"channel": "lobby:L1"}
        passed_through = await call(a, "subscribe", {"channel": "lobby:broken"})
        assert passed_through["error"]["code"] == "not_found"  # the hook's error reaches the client as is
        answer = await broadcast(gateway.url, {"channels": ["lobby:L1"]})
        assert answer.json() == {"delivered": 1, "devices": 1}
        pushed = json.loads(await asyncio.wait_for(a.recv(), 5))
        assert set(pushed.pop("pos")) == {"epoch", "offset"}  # the push's position (tests/gateway/test_resume.py)
        assert pushed == {"type": "event", "event": "room.said", "data": {"text": "hi"}}
        assert await nothing_arrived(z)


async def test_channels_without_a_rule_are_refused_and_allow_rules_need_no_hook(channel_gateway) -> None:
    gateway, lobby_app = channel_gateway
    asked_before = len(lobby_app.state.asked)
    async with connect(gateway.ws_url + "/ws?device_id=p") as p:
        refused = await call(p, "subscribe", {"channel": "secret:1"})
        assert refused["error"]["code"] == "forbidden"
        assert (await call(p, "subscribe", {"channel": "public:news"}))["data"]["subscribed"] is True
        bad = await call(p, "subscribe", {"channel": ""})
        assert bad["error"]["code"] == "invalid_data"
    assert len(lobby_app.state.asked) == asked_before


async def test_subscribing_needs_identification(channel_gateway) -> None:
    gateway, _ = channel_gateway
    async with connect(gateway.ws_url + "/ws") as anonymous:
        assert (await call(anonymous, "subscribe", {"channel": "public:x"}))["error"]["code"] == "not_identified"


async def test_unsubscribe_and_closing_leave_the_channel_and_a_connection_in_two_channels_gets_one_copy(channel_gateway) -> None:
    gateway, _ = channel_gateway
    async with connect(gateway.ws_url + "/ws?device_id=m") as m, connect(gateway.ws_url + "/ws?device_id=n") as n:
        for channel in ("public:one", "public:two"):
            await call(m, "subscribe", {"channel": channel})
        await call(n, "subscribe", {"channel": "public:one"})
        assert (await broadcast(gateway.url, {"channels": ["public:one", "public:two"]})).json() == {"delivered": 2, "devices": 2}
        assert json.loads(await m.recv())["event"] == "room.said"
        assert json.loads(await n.recv())["event"] == "room.said"
        assert await nothing_arrived(m)  # once, though m is in both channels
        assert await call(n, "unsubscribe", {"channel": "public:one"}) == {
            "type": "response", "event": "unsubscribe", "request_id": "r", "data": {"channel": "public:one", "subscribed": False},
        }
        assert (await broadcast(gateway.url, {"channels": ["public:one"]})).json() == {"delivered": 1, "devices": 1}
        assert json.loads(await m.recv())["event"] == "room.said"
        assert await nothing_arrived(n)
    for _ in range(100):
        answer = (await broadcast(gateway.url, {"channels": ["public:one", "public:two"]})).json()
        if answer == {"delivered": 0, "devices": 0}:
            break
        await asyncio.sleep(0.05)
    assert answer == {"delivered": 0, "devices": 0}


async def test_a_broadcast_to_all_reaches_every_identified_connection_once(channel_gateway) -> None:
    gateway, _ = channel_gateway
    async with (
        connect(gateway.ws_url + "/ws?device_id=x") as x1,
        connect(gateway.ws_url + "/ws?device_id=x") as x2,
        connect(gateway.ws_url + "/ws?device_id=y") as y,
        connect(gateway.ws_url + "/ws") as anonymous,
    ):
        answer = await broadcast(gateway.url, {"all": True}, event="maintenance")
        assert answer.json() == {"delivered": 3, "devices": 2}
        for ws in (x1, x2, y):
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["event"] == "maintenance"
            assert await nothing_arrived(ws)
        assert await nothing_arrived(anonymous)


@pytest.mark.parametrize(
    "targets",
    [{}, {"all": False}, {"all": True, "channels": ["a"]}, {"device_ids": ["a"], "channels": ["b"]}, {"channels": []}, {"channels": [""]}],
)
async def test_targets_name_exactly_one_kind(channel_gateway, targets: dict) -> None:
    gateway, _ = channel_gateway
    answer = await broadcast(gateway.url, targets)
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "validation_error"


async def subscriptions(url: str, body: dict) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(url + "/internal/subscriptions", json=body, headers={"X-Internal-Token": TOKEN})


async def test_a_backend_puts_devices_into_a_channel_and_takes_them_out(channel_gateway) -> None:
    gateway, lobby_app = channel_gateway
    asked_before = len(lobby_app.state.asked)
    async with connect(gateway.ws_url + "/ws?device_id=p1") as p1, connect(gateway.ws_url + "/ws?device_id=p1") as p1b:
        joined = await subscriptions(gateway.url, {"device_ids": ["p1", "absent"], "channel": "lobby:L9", "action": "subscribe"})
        assert joined.json() == {"connections": 2, "devices": 1}
        assert len(lobby_app.state.asked) == asked_before  # the backend decided: no hook call
        assert (await broadcast(gateway.url, {"channels": ["lobby:L9"]})).json() == {"delivered": 2, "devices": 1}
        for ws in (p1, p1b):
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["event"] == "room.said"
        left = await subscriptions(gateway.url, {"device_ids": ["p1"], "channel": "lobby:L9", "action": "unsubscribe"})
        assert left.json() == {"connections": 2, "devices": 1}
        assert (await broadcast(gateway.url, {"channels": ["lobby:L9"]})).json() == {"delivered": 0, "devices": 0}


@pytest.mark.parametrize(
    "body", [{"device_ids": [], "channel": "c", "action": "subscribe"}, {"device_ids": ["a"], "channel": "c", "action": "join"}, {"device_ids": ["a"], "action": "subscribe"}]
)
async def test_malformed_subscription_changes_are_422(channel_gateway, body: dict) -> None:
    gateway, _ = channel_gateway
    answer = await subscriptions(gateway.url, body)
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "validation_error"
    async with httpx.AsyncClient() as client:
        assert (await client.post(gateway.url + "/internal/subscriptions", json=body)).status_code == 401
