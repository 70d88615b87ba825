"""``WS /ws`` end to end: real gateway, real stub upstreams, real WebSocket clients on loopback."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.gateway.conftest import gateway_settings, start_gateway
from tests.gateway.test_router import README_ROWS


async def call(ws, event: str, request_id: str | int | None = "r", data: object = None) -> dict:
    message = {"event": event, "request_id": request_id}
    if data is not None:
        message["data"] = data
    await ws.send(json.dumps(message))
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def test_every_readme_event_reaches_its_service_with_the_upstream_contract(gateway) -> None:
    async with connect(gateway.ws_url + "/ws?device_id=dev-1") as ws:
        for index, (event, service) in enumerate(README_ROWS):
            reply = await call(ws, event, f"req-{index}", {"n": index})
            assert reply["type"] == "response", reply
            assert (reply["event"], reply["request_id"]) == (event, f"req-{index}")
            data = reply["data"]
            assert data["service"] == service
            assert (data["event"], data["data"], data["device_id"], data["request_id"]) == (event, {"n": index}, "dev-1", f"req-{index}")
            assert data["connection_id"]


async def test_identify_event_then_routing_and_connection_id_matches(gateway) -> None:
    async with connect(gateway.ws_url + "/ws") as ws:
        refused = await call(ws, "lobby.create", "a")
        assert refused["type"] == "error" and refused["error"]["code"] == "not_identified"
        identified = await call(ws, "identify", "b", {"device_id": "phone-7"})
        assert identified["type"] == "response" and identified["data"]["device_id"] == "phone-7"
        routed = await call(ws, "lobby.create", "c")
        assert routed["data"]["device_id"] == "phone-7"
        assert routed["data"]["connection_id"] == identified["data"]["connection_id"]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "invalid_json"),
        ('{"request_id": "x"}', "missing_event"),
        ('{"event": "lobby.get", "data": [1]}', "invalid_data"),
        ('{"event": "chat.send"}', "unknown_event"),
        ('{"event": "measurement.unknown"}', "unknown_event"),
    ],
)
async def test_bad_messages_get_error_envelopes_and_the_socket_stays_usable(gateway, raw: str, code: str) -> None:
    async with connect(gateway.ws_url + "/ws?device_id=dev-2") as ws:
        await ws.send(raw)
        reply = json.loads(await ws.recv())
        assert reply["type"] == "error" and reply["error"]["code"] == code and reply["error"]["message"]
        assert (await call(ws, "lobby.get", "after"))["type"] == "response"


async def test_oversize_message_gets_an_error_and_the_socket_stays_usable(upstreams) -> None:
    server = start_gateway(gateway_settings(upstreams, max_message_bytes=1000, max_frame_bytes=10_000))
    try:
        async with connect(server.ws_url + "/ws?device_id=big", max_size=None) as ws:
            await ws.send(json.dumps({"event": "lobby.get", "data": {"x": "a" * 2000}}))
            reply = json.loads(await ws.recv())
            assert reply["error"]["code"] == "message_too_large" and reply["error"]["details"]["max_bytes"] == 1000
            assert (await call(ws, "lobby.get"))["type"] == "response"
            await ws.send("a" * 20_000)  # over MAX_FRAME_BYTES: closed with 1009
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    finally:
        server.stop()


async def test_binary_and_fragmented_messages_are_read_whole(gateway) -> None:
    async with connect(gateway.ws_url + "/ws?device_id=frag") as ws:
        await ws.send(json.dumps({"event": "lobby.get", "request_id": "bin"}).encode())
        assert json.loads(await ws.recv())["request_id"] == "bin"
        text = json.dumps({"event": "lobby.get", "request_id": "frag", "data": {"pad": "p" * 3000}})
        await ws.send([text[:1000], text[1000:2000], text[2000:]])
        reply = json.loads(await ws.recv())
        assert reply["request_id"] == "frag" and reply["data"]["data"]["pad"] == "p" * 3000


async def test_a_slow_upstream_call_does_not_hold_back_the_next_request(gateway) -> None:
    async with connect(gateway.ws_url + "/ws?device_id=dev-3") as ws:
        await ws.send(json.dumps({"event": "lobby.slow", "request_id": "slow", "data": {"delay_s": 1.5}}))
        await ws.send(json.dumps({"event": "simulation.run", "request_id": "fast"}))
        first = json.loads(await ws.recv())
        assert first["request_id"] == "fast"  # answered while the first request still waits upstream
        second = json.loads(await ws.recv())
        assert second["request_id"] == "slow" and second["type"] == "response"


@pytest.mark.parametrize(
    ("event", "code"),
    [("lobby.garbage", "upstream_error"), ("lobby.http500", "upstream_error"), ("lobby.bad_shape", "upstream_error")],
)
async def test_upstream_answers_that_break_the_contract_are_upstream_error(gateway, event: str, code: str) -> None:
    async with connect(gateway.ws_url + "/ws?device_id=dev-4") as ws:
        reply = await call(ws, event, "g")
        assert reply["type"] == "error" and reply["error"]["code"] == code and reply["request_id"] == "g"
        assert (await call(ws, "lobby.get"))["type"] == "response"


async def test_an_upstream_error_is_passed_through_as_is(gateway) -> None:
    async with connect(gateway.ws_url + "/ws?device_id=dev-5") as ws:
        reply = await call(ws, "lobby.fail", "f")
        assert reply == {
            "type": "error", "event": "lobby.fail", "request_id": "f",
            "error": {"code": "bad_request", "message": "no", "details": {"field": "x"}},
        }


async def test_upstream_down_and_timing_out(upstreams, dead_url: str) -> None:
    server = start_gateway(gateway_settings(upstreams, lobby_url=dead_url, http_timeout_seconds=0.5))
    try:
        async with connect(server.ws_url + "/ws?device_id=dev-6") as ws:
            down = await call(ws, "lobby.create", "d")
            assert down["type"] == "error" and down["error"]["code"] == "upstream_unavailable"
            for attempt in range(2):  # first on a new connection, then on a pooled one
                timed_out = await call(ws, "simulation.slow", f"t{attempt}", {"delay_s": 3})
                assert timed_out["error"]["code"] == "upstream_timeout" and timed_out["request_id"] == f"t{attempt}"
                assert (await call(ws, "simulation.run"))["type"] == "response"
    finally:
        server.stop()


async def test_an_upstream_restart_is_survived_by_the_pooled_client(gateway, upstreams) -> None:
    async with connect(gateway.ws_url + "/ws?device_id=dev-7") as ws:
        assert (await call(ws, "analysis.run"))["type"] == "response"
        upstreams["measurement"].restart()  # pooled keep-alive connections to it are now dead
        assert (await call(ws, "analysis.run"))["type"] == "response"


async def test_rate_limit_per_connection_with_retry_hint_and_refill(upstreams) -> None:
    server = start_gateway(gateway_settings(upstreams, rate_limit_rps=2.0, rate_limit_burst=3))
    try:
        async with connect(server.ws_url + "/ws?device_id=rl") as ws, connect(server.ws_url + "/ws?device_id=rl2") as other:
            for index in range(3):
                await ws.send(json.dumps({"event": "ping", "request_id": index}))
            replies = [json.loads(await ws.recv()) for _ in range(3)]
            assert all(reply["type"] == "response" for reply in replies)
            limited = await call(ws, "lobby.get", "over")
            assert limited["error"]["code"] == "rate_limited" and limited["request_id"] == "over"
            retry_after_s = limited["error"]["details"]["retry_after_s"]
            assert 0 < retry_after_s <= 0.5 + 1e-9  # one token per 1/RATE_LIMIT_RPS
            assert (await call(other, "lobby.get"))["type"] == "response"  # buckets are per connection
            await asyncio.sleep(retry_after_s + 0.05)
            assert (await call(ws, "lobby.get", "later"))["type"] == "response"
    finally:
        server.stop()


async def test_handshake_refuses_other_paths_and_bad_device_ids(gateway) -> None:
    with pytest.raises(InvalidStatus) as other_path:
        async with connect(gateway.ws_url + "/socket"):
            pass
    assert other_path.value.response.status_code == 404
    with pytest.raises(InvalidStatus) as bad_id:
        async with connect(gateway.ws_url + "/ws?device_id=" + "x" * 200):
            pass
    assert bad_id.value.response.status_code == 400


async def test_ping_frames_are_answered_and_close_is_clean(gateway) -> None:
    async with connect(gateway.ws_url + "/ws?device_id=pinger") as ws:
        latency_s = await asyncio.wait_for(await ws.ping(), 5)
        assert latency_s >= 0
    assert ws.close_code == 1000
