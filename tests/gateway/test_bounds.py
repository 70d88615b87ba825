"""Bounds an attacker meets, sent as an attacker would: raw frames, many sockets, guessed join codes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from sonalyze.common.json import JSONResponse
from tests.gateway.conftest import TOKEN, gateway_settings, serve_three, start_gateway
from tests.gateway.test_framing import PING, RawClient, client_frame, event
from tests.support.servers import ThreadedServer

GOOD_CODE = "ABC123"


def join_upstream(name: str) -> FastAPI:
    """Answers ``lobby.join`` with ``not_found`` unless the code is GOOD_CODE; echoes every other event."""
    app = FastAPI()

    @app.post("/gateway/handle")
    async def handle(request: Request) -> JSONResponse:
        body = await request.json()
        if body["event"] == "lobby.join" and body["data"].get("code") != GOOD_CODE:
            return JSONResponse({"error": {"code": "not_found", "message": "no open lobby has that code"}})
        return JSONResponse({"data": {"event": body["event"], "depth_ok": True}})

    return app


@pytest.fixture(scope="module")
def joins() -> Iterator[dict[str, ThreadedServer]]:
    yield from serve_three(join_upstream)


def metric(server: ThreadedServer, line_start: str) -> float:
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    return values[0] if values else 0.0


async def test_a_ping_flooder_is_cut_off_with_1008_and_others_keep_their_round_trip(joins) -> None:
    server = start_gateway(gateway_settings(joins, rate_limit_rps=5.0, rate_limit_burst=10))
    try:
        bystander = await RawClient.open(server.port, "bystander")
        flooder = await RawClient.open(server.port, "flooder")
        flooder.writer.write(b"".join(client_frame(PING, b"x") for _ in range(200)))
        codes = []
        while True:  # pongs for the first ten (the burst), then the close frame
            opcode, payload = await flooder.frame()
            if opcode == 0x8:
                codes.append(int.from_bytes(payload[:2], "big"))
                break
        assert codes == [1008]
        started_s = time.monotonic()
        bystander.writer.write(client_frame(0x1, event("b")))
        opcode, payload = await bystander.frame()
        assert json.loads(payload)["event"] == "pong" and time.monotonic() - started_s < 1.0
        assert metric(server, 'gateway_disconnects_total{reason="control_flood"}') == 1.0
        assert metric(server, 'gateway_rate_limited_total{scope="control"}') == 1.0
    finally:
        server.stop()


async def test_deep_json_gets_an_error_envelope_and_the_connection_stays(joins, caplog) -> None:
    server = start_gateway(gateway_settings(joins, max_json_depth=32))
    try:
        client = await RawClient.open(server.port, "deep")
        nested = "[" * 300 + "]" * 300  # 600 bytes
        client.writer.write(client_frame(0x1, ('{"event": "lobby.get", "request_id": 1, "data": {"x": %s}}' % nested).encode()))
        _, payload = await client.frame()
        answer = json.loads(payload)
        assert answer["error"]["code"] == "invalid_json" and answer["error"]["details"] == {"reason": "too_deep", "max_depth": 32}
        within = '{"event": "lobby.get", "request_id": 2, "data": {"x": %s}}' % ("[" * 30 + "]" * 30)  # depth 32 in all
        client.writer.write(client_frame(0x1, within.encode()))
        _, payload = await client.frame()
        assert json.loads(payload) == {"type": "response", "event": "lobby.get", "request_id": 2, "data": {"event": "lobby.get", "depth_ok": True}}
    finally:
        server.stop()
    assert not [record for record in caplog.records if record.exc_info]  # no traceback per message


async def test_connections_per_address_are_capped_and_forwarded_for_counts_only_from_trusted_proxies(joins) -> None:
    server = start_gateway(gateway_settings(joins, max_connections_per_address=3))
    try:
        opened = [await connect(server.ws_url + f"/ws?device_id=c{n}", additional_headers={"X-Forwarded-For": f"10.0.0.{n}"}) for n in range(3)]
        with pytest.raises(InvalidStatus) as refused:  # X-Forwarded-For from an untrusted peer changes nothing
            await connect(server.ws_url + "/ws?device_id=c9", additional_headers={"X-Forwarded-For": "10.0.0.9"})
        assert refused.value.response.status_code == 429
        assert json.loads(refused.value.response.body)["error"]["code"] == "too_many_connections"
        await opened.pop().close()
        await asyncio.sleep(0.2)
        opened.append(await connect(server.ws_url + "/ws?device_id=c3"))  # room again
        for ws in opened:
            await ws.close()
    finally:
        server.stop()
    behind = start_gateway(gateway_settings(joins, max_connections_per_address=1, trusted_proxies="127.0.0.0/8"))
    try:
        phones = [await connect(behind.ws_url + f"/ws?device_id=p{n}", additional_headers={"X-Forwarded-For": f"10.0.0.{n}, 127.0.0.1"}) for n in range(3)]
        with pytest.raises(InvalidStatus):
            await connect(behind.ws_url + "/ws?device_id=p9", additional_headers={"X-Forwarded-For": "10.0.0.1"})
        for ws in phones:
            await ws.close()
    finally:
        behind.stop()


async def test_failed_joins_are_limited_per_device_and_per_address(joins) -> None:
    server = start_gateway(gateway_settings(joins, max_failed_joins=3, failed_join_window_s=30.0))

    async def join(ws, code: str, request_id: int) -> dict:
        await ws.send(json.dumps({"event": "lobby.join", "request_id": request_id, "data": {"code": code}}))
        return json.loads(await ws.recv())

    try:
        async with connect(server.ws_url + "/ws?device_id=guesser") as ws:
            codes = [(await join(ws, f"ZZZZZ{n}", n))["error"]["code"] for n in range(3)]
            assert codes == ["not_found"] * 3
            limited = await join(ws, GOOD_CODE, 4)  # even the right code waits now
            assert limited["error"]["code"] == "rate_limited" and limited["request_id"] == 4
            assert 29.0 < limited["error"]["details"]["retry_after_s"] <= 30.0
        async with connect(server.ws_url + "/ws?device_id=accomplice") as ws:  # another device, same address
            assert (await join(ws, GOOD_CODE, 5))["error"]["code"] == "rate_limited"
        assert metric(server, 'gateway_rate_limited_total{scope="join"}') == 2.0
    finally:
        server.stop()


async def test_partial_heads_silent_sockets_and_huge_headers_are_closed_within_the_header_timeout(joins) -> None:
    timeout_s = 1.0
    server = start_gateway(gateway_settings(joins, header_timeout_s=timeout_s, max_header_bytes=8192, max_header_count=50))
    try:
        partial, silent = [], []
        for n in range(40):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(f"GET /ws?device_id=slow{n} HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nX-Slow: ".encode())
            partial.append((reader, writer))
        for _ in range(20):
            silent.append(await asyncio.open_connection("127.0.0.1", server.port))
        started_s = time.monotonic()
        answers = await asyncio.gather(*(asyncio.wait_for(reader.read(), 4 * timeout_s) for reader, _ in partial + silent))
        elapsed_s = time.monotonic() - started_s
        assert all(answer.startswith(b"HTTP/1.1 408") and b'"header_timeout"' in answer for answer in answers)
        assert elapsed_s < 3 * timeout_s  # every one closed by the server (read() returned at EOF)

        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Big: " + b"a" * 20_000)  # and more would follow
        answer = await asyncio.wait_for(reader.read(), 4 * timeout_s)
        assert answer.startswith(b"HTTP/1.1 431") and b'"headers_too_large"' in answer
        many = "".join(f"X-H{n}: v\r\n" for n in range(60))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: gateway\r\n{many}\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 4 * timeout_s)
        assert answer.startswith(b"HTTP/1.1 431")

        ok = httpx.get(server.url + "/healthz")  # ordinary requests pass, and a kept-alive client stays served
        assert ok.status_code == 200
        with httpx.Client(base_url=server.url) as kept:
            assert kept.get("/healthz").status_code == 200
            await asyncio.sleep(timeout_s * 1.5)
            assert kept.get("/healthz").status_code == 200
    finally:
        server.stop()


def test_the_proxy_rate_limit_keys_on_forwarded_for_only_behind_trusted_proxies(joins) -> None:
    def statuses(server: ThreadedServer, forwarded: list[str]) -> list[int]:
        return [httpx.get(server.url + "/v1/jobs/x", headers={"X-Forwarded-For": hop}).status_code for hop in forwarded]

    direct = start_gateway(gateway_settings(joins, rate_limit_rps=0.01, rate_limit_burst=1))
    try:
        assert statuses(direct, ["10.0.0.1", "10.0.0.2"]) == [404, 429]  # a client cannot pick its own bucket
    finally:
        direct.stop()
    behind = start_gateway(gateway_settings(joins, rate_limit_rps=0.01, rate_limit_burst=1, trusted_proxies="127.0.0.1/32"))
    try:
        assert statuses(behind, ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.3, 127.0.0.1"]) == [404, 404, 429, 404]
    finally:
        behind.stop()
