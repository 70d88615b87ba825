"""``POST /internal/broadcast``: tokens, body validation, delivery to every connection of a device."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.gateway.conftest import TOKEN, gateway_settings, nothing_arrived, start_gateway

BODY = {"event": "lobby.updated", "data": {"type": "participant_joined", "device_id": "a"}, "targets": {"device_ids": ["a"]}}


async def health(url: str) -> dict:
    async with httpx.AsyncClient() as client:
        return (await client.get(url + "/healthz")).json()


async def test_every_connection_of_each_target_device_receives_the_event(gateway) -> None:
    async with (
        connect(gateway.ws_url + "/ws?device_id=a") as a1,
        connect(gateway.ws_url + "/ws?device_id=a") as a2,
        connect(gateway.ws_url + "/ws?device_id=b") as b,
        connect(gateway.ws_url + "/ws?device_id=c") as c,
        httpx.AsyncClient() as client,
    ):
        body = {**BODY, "targets": {"device_ids": ["a", "b", "b", "nobody"]}}
        answer = await client.post(gateway.url + "/internal/broadcast", json=body, headers={"X-Internal-Token": TOKEN})
        assert answer.status_code == 200
        assert answer.json() == {"delivered": 3, "devices": 2}
        expected = {"type": "event", "event": "lobby.updated", "data": BODY["data"]}
        for ws in (a1, a2, b):
            pushed = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert set(pushed.pop("pos")) == {"epoch", "offset"}  # the push's position (tests/gateway/test_resume.py)
            assert pushed == expected
        assert await nothing_arrived(c)
        assert await nothing_arrived(b)  # a duplicated target is delivered once


async def test_identify_event_registers_for_broadcasts_and_closing_unregisters(gateway) -> None:
    before = await health(gateway.url)
    async with connect(gateway.ws_url + "/ws") as ws, httpx.AsyncClient() as client:
        await ws.send(json.dumps({"event": "identify", "data": {"device_id": "late"}}))
        await ws.recv()
        body = {**BODY, "targets": {"device_ids": ["late"]}}
        answer = await client.post(gateway.url + "/internal/broadcast", json=body, headers={"X-Internal-Token": TOKEN})
        assert answer.json() == {"delivered": 1, "devices": 1}
        assert json.loads(await ws.recv())["type"] == "event"
        assert (await health(gateway.url))["connections"] == before["connections"] + 1
    for _ in range(100):
        if (await health(gateway.url))["connections"] == before["connections"]:
            break
        await asyncio.sleep(0.05)
    assert (await health(gateway.url))["connections"] == before["connections"]
    async with httpx.AsyncClient() as client:
        body = {**BODY, "targets": {"device_ids": ["late"]}}
        answer = await client.post(gateway.url + "/internal/broadcast", json=body, headers={"X-Internal-Token": TOKEN})
        assert answer.json() == {"delivered": 0, "devices": 0}


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [({}, 401, "unauthorized"), ({"X-Internal-Token": "wrong"}, 403, "forbidden"), ({"X-Internal-Token": TOKEN + "x"}, 403, "forbidden")],
)
async def test_missing_or_wrong_token_is_refused_and_nothing_is_delivered(gateway, headers, status, code) -> None:
    async with connect(gateway.ws_url + "/ws?device_id=a") as ws, httpx.AsyncClient() as client:
        answer = await client.post(gateway.url + "/internal/broadcast", json=BODY, headers=headers)
        assert answer.status_code == status
        assert answer.json()["error"]["code"] == code
        assert await nothing_arrived(ws)


async def test_an_empty_internal_token_closes_the_endpoint(upstreams) -> None:
    server = start_gateway(gateway_settings(upstreams, internal_auth_token=""))
    try:
        async with connect(server.ws_url + "/ws?device_id=a") as ws, httpx.AsyncClient() as client:
            for headers in ({}, {"X-Internal-Token": ""}, {"X-Internal-Token": "anything"}):
                answer = await client.post(server.url + "/internal/broadcast", json=BODY, headers=headers)
                assert answer.status_code == 403
                assert "closed" in answer.json()["error"]["message"]
            assert await nothing_arrived(ws)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", ""),
        (json.dumps({"data": {}, "targets": {"device_ids": ["a"]}}).encode(), "event"),
        (json.dumps({"event": "x", "targets": {"device_ids": []}}).encode(), "targets.device_ids"),
        (json.dumps({"event": "x", "targets": {}}).encode(), "targets.device_ids"),
        (json.dumps({"event": "x", "data": [1], "targets": {"device_ids": ["a"]}}).encode(), "data"),
        (json.dumps({"event": "x", "targets": {"device_ids": ["a"], "rooms": ["r"]}}).encode(), "targets.rooms"),
    ],
)
async def test_malformed_bodies_are_422_with_the_reason(gateway, body: bytes, field: str) -> None:
    async with connect(gateway.ws_url + "/ws?device_id=a") as ws, httpx.AsyncClient() as client:
        answer = await client.post(
            gateway.url + "/internal/broadcast", content=body,
            headers={"X-Internal-Token": TOKEN, "content-type": "application/json"},
        )
        assert answer.status_code == 422
        error = answer.json()["error"]
        assert error["code"] == "validation_error" and error["message"]
        if field:
            assert field in [item["field"] for item in error["details"]["errors"]]
        assert await nothing_arrived(ws)


async def test_a_reader_that_stops_reading_is_disconnected_as_slow(upstreams) -> None:
    server = start_gateway(gateway_settings(upstreams, max_send_buffer_bytes=256 * 1024))
    try:
        async with connect(server.ws_url + "/ws?device_id=slow", max_queue=1, max_size=None) as slow:
            slow.transport.pause_reading()  # stops reading: the kernel buffers fill, then the gateway's
            body = {"event": "bulk", "data": {"blob": "z" * 60_000}, "targets": {"device_ids": ["slow"]}}
            delivered = []
            async with httpx.AsyncClient() as client:
                for _ in range(400):
                    answer = await client.post(server.url + "/internal/broadcast", json=body, headers={"X-Internal-Token": TOKEN})
                    delivered.append(answer.json()["delivered"])
                    if delivered[-1] == 0:
                        break
            assert delivered[0] == 1 and delivered[-1] == 0  # refused once over the bound
            slow.transport.resume_reading()
            with pytest.raises(Exception):
                while True:
                    await asyncio.wait_for(slow.recv(), 10)
            assert slow.close_code == 1008 and "slow" in (slow.close_reason or "")
    finally:
        server.stop()
