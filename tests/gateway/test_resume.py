"""Positions and resuming (issue 18): a device that comes back gets exactly what it missed, in order, once.

Real gateway (uvicorn on loopback), real WebSocket clients, broadcasts through ``POST /internal/broadcast``.
Every pushed message is counted: expected sequences are built from the numbers the test published.
"""

from __future__ import annotations

import asyncio
import json

import httpx
from websockets.asyncio.client import connect

from sonalyze.gateway.publication import Targets
from sonalyze.gateway.push_history import PushHistory
from tests.gateway.conftest import TOKEN, gateway_settings, nothing_arrived, start_gateway


async def publish(client: httpx.AsyncClient, url: str, n: int, targets: dict) -> None:
    answer = await client.post(
        url + "/internal/broadcast", json={"event": "t.n", "data": {"n": n}, "targets": targets}, headers={"X-Internal-Token": TOKEN}
    )
    assert answer.status_code == 200, answer.text


async def pushes_until_marker(ws, marker: int) -> list[dict]:
    """Every push up to and including the one with ``data.n == marker`` (one publisher's pushes keep their order)."""
    seen = []
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        seen.append(message)
        if message.get("data", {}).get("n") == marker:
            return seen


async def test_positions_count_up_and_a_resume_replays_exactly_what_was_missed(upstreams) -> None:
    server = start_gateway(gateway_settings(upstreams))
    try:
        async with httpx.AsyncClient() as client:
            async with connect(server.ws_url + "/ws?device_id=a") as ws:
                for n in range(3):
                    await publish(client, server.url, n, {"device_ids": ["a"]})
                first = await pushes_until_marker(ws, 2)
            assert [m["data"]["n"] for m in first] == [0, 1, 2]
            epoch = first[0]["pos"]["epoch"]
            assert [m["pos"] for m in first] == [{"epoch": epoch, "offset": k} for k in (1, 2, 3)]
            # away: 10 for a, 5 for b only, 4 for everyone, interleaved
            for n in range(3, 22):
                targets = {"device_ids": ["b"]} if n % 4 == 0 else {"all": True} if n % 5 == 0 else {"device_ids": ["a"]}
                await publish(client, server.url, n, targets)
            missed = [n for n in range(3, 22) if n % 4 != 0]
            async with connect(server.ws_url + f"/ws?device_id=a&resume={epoch}:3") as ws:
                await publish(client, server.url, 22, {"device_ids": ["a"]})
                replay = await pushes_until_marker(ws, 22)
                assert await nothing_arrived(ws)
            assert [m["data"]["n"] for m in replay] == [*missed, 22]
            assert [m["pos"]["offset"] for m in replay] == [n + 1 for n in (*missed, 22)]  # publication n has offset n + 1
    finally:
        server.stop()


async def test_resume_event_replays_only_up_to_where_live_delivery_began(upstreams) -> None:
    server = start_gateway(gateway_settings(upstreams))
    try:
        async with httpx.AsyncClient() as client:
            for n in range(5):
                await publish(client, server.url, n, {"device_ids": ["a"]})
            async with connect(server.ws_url + "/ws?device_id=a") as ws:
                await publish(client, server.url, 5, {"device_ids": ["a"]})
                live = await pushes_until_marker(ws, 5)
                epoch = live[0]["pos"]["epoch"]
                await ws.send(json.dumps({"event": "resume", "request_id": "r", "data": {"epoch": epoch, "offset": 2}}))
                replay = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(3)]
                answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert await nothing_arrived(ws)
        assert [m["data"]["n"] for m in live] == [5]
        assert [m["data"]["n"] for m in replay] == [2, 3, 4]  # offsets 3..5; 6 came live
        assert answer == {
            "type": "response", "event": "resume", "request_id": "r",
            "data": {"replayed": 3, "resync_required": False, "pos": {"epoch": epoch, "offset": 5}},
        }
    finally:
        server.stop()


async def test_identify_with_resume_replays_right_after_its_answer(upstreams) -> None:
    server = start_gateway(gateway_settings(upstreams))
    try:
        async with httpx.AsyncClient() as client:
            async with connect(server.ws_url + "/ws?device_id=a") as ws:
                await publish(client, server.url, 0, {"device_ids": ["a"]})
                epoch = (await pushes_until_marker(ws, 0))[0]["pos"]["epoch"]
            for n in range(1, 6):
                await publish(client, server.url, n, {"device_ids": ["a"] if n != 3 else ["b"]})
            async with connect(server.ws_url + "/ws") as ws:
                await ws.send(json.dumps({"event": "identify", "request_id": 1, "data": {"device_id": "a", "resume": {"epoch": epoch, "offset": 1}}}))
                answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
                await publish(client, server.url, 6, {"device_ids": ["a"]})
                replay = await pushes_until_marker(ws, 6)
                assert await nothing_arrived(ws)
                await ws.send(json.dumps({"event": "identify", "request_id": 2, "data": {"device_id": "a", "resume": {"epoch": epoch}}}))
                refused = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert answer["event"] == "identify" and answer["data"]["device_id"] == "a"
        assert [(m["data"]["n"], m["pos"]["offset"]) for m in replay] == [(1, 2), (2, 3), (4, 5), (5, 6), (6, 7)]
        assert refused["error"]["code"] == "invalid_data"
    finally:
        server.stop()


async def test_a_position_older_than_the_history_or_of_another_epoch_gets_resync_required(upstreams) -> None:
    server = start_gateway(gateway_settings(upstreams, push_history_max=4))
    try:
        async with httpx.AsyncClient() as client:
            async with connect(server.ws_url + "/ws?device_id=a") as ws:
                await publish(client, server.url, 0, {"device_ids": ["a"]})
                epoch = (await pushes_until_marker(ws, 0))[0]["pos"]["epoch"]
            for n in range(1, 10):
                await publish(client, server.url, n, {"device_ids": ["a"]})
            # kept: offsets 7..10; from 5, offset 6 is gone; from 6 everything missed is still there
            for resume in (f"{epoch}:5", "another-epoch:10", f"{epoch}:11"):
                async with connect(server.ws_url + f"/ws?device_id=a&resume={resume}") as ws:
                    told = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert told == {
                        "type": "event", "event": "resync_required", "data": {"pos": {"epoch": epoch, "offset": 10}, "reason": "history"}
                    }, resume
                    assert await nothing_arrived(ws)
            async with connect(server.ws_url + f"/ws?device_id=a&resume={epoch}:6") as ws:
                await publish(client, server.url, 10, {"device_ids": ["a"]})
                assert [m["data"]["n"] for m in await pushes_until_marker(ws, 10)] == [6, 7, 8, 9, 10]
    finally:
        server.stop()


async def test_bad_resume_positions_are_refused_and_the_connection_keeps_working(gateway) -> None:
    async with httpx.AsyncClient() as client:
        for query in ("device_id=a&resume=nocolon", "device_id=a&resume=e:-1", "device_id=a&resume=e:1x", "resume=e:1"):
            answer = await client.get(
                gateway.url + "/ws?" + query,
                headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
            )
            assert answer.status_code == 400, query
            assert answer.json()["error"]["code"] == "invalid_resume"
    async with connect(gateway.ws_url + "/ws?device_id=a") as ws:
        for data in ({}, {"epoch": "e"}, {"epoch": "e", "offset": -1}, {"epoch": "e", "offset": 1.5}, {"epoch": 3, "offset": 1}):
            await ws.send(json.dumps({"event": "resume", "request_id": 1, "data": data}))
            answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert answer["error"]["code"] == "invalid_data", data
        assert await nothing_arrived(ws)


def test_the_history_forgets_pushes_older_than_its_age_bound() -> None:
    now_s = [100.0]
    history = PushHistory(max_entries=100, max_age_s=10.0, clock=lambda: now_s[0])
    stamped = history.append(Targets(device_ids=["a"]), b'{"type":"event","event":"e","data":{}}')
    assert json.loads(stamped)["pos"] == {"epoch": history.epoch, "offset": 1}
    now_s[0] = 105.0
    history.append(Targets(everyone=True), b'{"type":"event","event":"e","data":{}}')
    assert [entry.offset for entry in history.after(history.epoch, 0)] == [1, 2]
    now_s[0] = 110.5  # offset 1 is 10.5 s old, offset 2 is 5.5 s old
    assert history.after(history.epoch, 0) is None
    assert [entry.offset for entry in history.after(history.epoch, 1)] == [2]
    now_s[0] = 115.5
    assert list(history.after(history.epoch, 2)) == []  # nothing missed: an empty history still reaches back to 2
