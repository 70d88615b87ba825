"""The lobby's gateway channel ``lobby:{lobby_id}``: who may subscribe, and participants put in and taken out."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx

from tests.lobby.clients import Handle, Phone
from tests.lobby.conftest import TOKEN, Stack, full_stack


@contextlib.asynccontextmanager
async def phones(ws_url: str, devices: list[str]):
    async with contextlib.AsyncExitStack() as stack:
        yield {d: await stack.enter_async_context(Phone(ws_url, d)) for d in devices}


async def _to_channel(gateway_url: str, channel: str, marker: int) -> int:
    """A backend's broadcast to everyone in ``channel`` (``POST /internal/broadcast``); the devices it reached."""
    body = {"event": "test.channel", "data": {"marker": marker}, "targets": {"channels": [channel]}}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as http:
        response = await http.post("/internal/broadcast", json=body, headers={"X-Internal-Token": TOKEN})
    assert response.status_code == 200, response.text
    return response.json()["devices"]


async def _reaches(phone: Phone, marker: int) -> bool:
    """Whether ``phone`` got the channel broadcast ``marker`` (checked once the control phone got it)."""
    await asyncio.sleep(0.2)  # the gateway writes one broadcast to all its connections at once
    return phone.count("test.channel", marker=marker) == 1


async def test_participants_may_subscribe_and_others_are_forbidden(stack: Stack):
    async with phones(stack.gateway.ws_url, ["host", "guest", "stranger"]) as p:
        lobby = await p["host"].call("lobby.create", {})
        channel = f"lobby:{lobby['lobby_id']}"
        await p["guest"].call("lobby.join", {"code": lobby["code"]})

        assert await p["host"].call("subscribe", {"channel": channel}) == {"channel": channel, "subscribed": True}
        assert await p["guest"].call("subscribe", {"channel": channel}) == {"channel": channel, "subscribed": True}
        refused = await p["stranger"].send("subscribe", {"channel": channel})
        assert refused["type"] == "error" and refused["error"]["code"] == "forbidden"
        assert "not a participant" in refused["error"]["message"]
        unknown = await p["stranger"].send("subscribe", {"channel": "lobby:no-such-lobby"})
        assert unknown["error"]["code"] == "forbidden" and "does not exist" in unknown["error"]["message"]

        await _to_channel(stack.gateway.url, channel, 1)
        await p["host"].wait_push("test.channel", marker=1)
        assert await _reaches(p["guest"], 1)
        assert not await _reaches(p["stranger"], 1)


async def test_joining_subscribes_and_leaving_unsubscribes(stack: Stack):
    async with phones(stack.gateway.ws_url, ["host", "guest"]) as p:
        lobby = await p["host"].call("lobby.create", {})
        channel = f"lobby:{lobby['lobby_id']}"
        await p["guest"].call("lobby.join", {"code": lobby["code"]})
        # The subscription travels on the lobby's ordered path before the push announcing the join.
        await p["guest"].wait_push("lobby.updated", type="participant_joined")
        assert await _to_channel(stack.gateway.url, channel, 1) == 2
        assert (await p["guest"].wait_push("test.channel", marker=1))["marker"] == 1, "in the channel without subscribing itself"
        await p["host"].wait_push("test.channel", marker=1)

        await p["guest"].call("lobby.leave", {"lobby_id": lobby["lobby_id"]})
        await p["host"].wait_push("lobby.updated", type="participant_left")
        assert await _to_channel(stack.gateway.url, channel, 2) == 1
        await p["host"].wait_push("test.channel", marker=2)
        assert not await _reaches(p["guest"], 2), "a device that left is out of the lobby's channel"
        refused = await p["guest"].send("subscribe", {"channel": channel})
        assert refused["error"]["code"] == "forbidden"


async def test_joining_again_after_a_reconnect_subscribes_again(stack: Stack):
    async with phones(stack.gateway.ws_url, ["host"]) as p:
        lobby = await p["host"].call("lobby.create", {})
        channel = f"lobby:{lobby['lobby_id']}"
        async with Phone(stack.gateway.ws_url, "guest") as first:
            await first.call("lobby.join", {"code": lobby["code"]})
        async with Phone(stack.gateway.ws_url, "guest") as reconnected:  # a new connection is in no channel
            again = await reconnected.call("lobby.join", {"code": lobby["code"]})
            assert [m["device_id"] for m in again["participants"]] == ["host", "guest"]
            # No push announces a repeated join: wait until the subscription has reached the gateway.
            for _ in range(100):
                if await _to_channel(stack.gateway.url, channel, 3) == 2:
                    break
                await asyncio.sleep(0.05)
            assert (await reconnected.wait_push("test.channel", marker=3))["marker"] == 3


async def test_a_lobby_closed_when_idle_takes_everyone_out_of_its_channel(database_url: str, tmp_path: Path):
    with full_stack(database_url, tmp_path, lobby_idle_timeout_s=1.0, timer_interval_s=0.1) as stack:
        async with phones(stack.gateway.ws_url, ["host", "guest"]) as p:
            lobby = await p["host"].call("lobby.create", {})
            channel = f"lobby:{lobby['lobby_id']}"
            await p["guest"].call("lobby.join", {"code": lobby["code"]})
            await p["guest"].wait_push("lobby.updated", type="participant_joined")
            assert await _to_channel(stack.gateway.url, channel, 4) == 2
            await p["guest"].wait_push("lobby.updated", timeout_s=15, type="closed")
            assert await _to_channel(stack.gateway.url, channel, 5) == 0
            refused = await p["host"].send("subscribe", {"channel": channel})
            assert refused["error"]["code"] == "forbidden" and "closed" in refused["error"]["message"]


async def test_authorize_subscribe_answers(handle: Handle):
    lobby = await handle.call("lobby.create", {}, "host")
    await handle.call("lobby.join", {"code": lobby["code"]}, "guest")
    channel = f"lobby:{lobby['lobby_id']}"
    ask = "gateway.authorize_subscribe"
    assert await handle.call(ask, {"channel": channel}, "guest") == {"allowed": True}
    assert await handle.call(ask, {"channel": channel}, "stranger") == {"allowed": False, "reason": "not a participant of this lobby"}
    other = await handle.call(ask, {"channel": "chat:general"}, "guest")
    assert other["allowed"] is False and "lobby:{lobby_id}" in other["reason"]
    unknown = await handle.call(ask, {"channel": "lobby:0000"}, "guest")
    assert unknown == {"allowed": False, "reason": "lobby 0000 does not exist"}
    assert (await handle.refused(ask, {}, "guest"))["code"] == "bad_request"

    await handle.call("lobby.leave", {"lobby_id": lobby["lobby_id"]}, "guest")
    assert (await handle.call(ask, {"channel": channel}, "guest"))["allowed"] is False
    await handle.call("lobby.leave", {"lobby_id": lobby["lobby_id"]}, "host")
    assert await handle.call(ask, {"channel": channel}, "host") == {"allowed": False, "reason": "the lobby is closed"}
