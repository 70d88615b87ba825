"""The internal API served in front of FastAPI: same answers as FastAPI gave, keep-alive and pipelining."""

from __future__ import annotations

import asyncio
import json

import httpx
from websockets.asyncio.client import connect

from tests.gateway.conftest import TOKEN

BODY = {"event": "lobby.updated", "data": {"n": 1}, "targets": {"device_ids": ["pipe"]}}


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head[:-4].split(b"\r\n")
    headers = {name.strip().lower(): value.strip() for name, value in (line.split(b":", 1) for line in header_lines)}
    return int(status_line.split()[1]), headers, await reader.readexactly(int(headers[b"content-length"]))


def request(path: str, body: bytes, token: str | None = TOKEN) -> bytes:
    token_header = f"X-Internal-Token: {token}\r\n" if token is not None else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n{token_header}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def test_pipelined_broadcasts_on_one_keep_alive_connection_are_answered_in_order(gateway) -> None:
    async with connect(gateway.ws_url + "/ws?device_id=pipe") as ws:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        try:
            bodies = [json.dumps({**BODY, "data": {"n": index}}).encode() for index in range(5)]
            writer.write(
                b"".join(request("/internal/broadcast", body) for body in bodies[:2])
                + request("/internal/broadcast", bodies[2], token="wrong")
                + b"".join(request("/internal/broadcast", body) for body in bodies[3:])
            )
            answers = [await asyncio.wait_for(read_answer(reader), 5) for _ in bodies]
        finally:
            writer.close()
        assert [status for status, _, _ in answers] == [200, 200, 403, 200, 200]
        assert all(headers[b"content-type"] == b"application/json" for _, headers, _ in answers)
        assert json.loads(answers[0][2]) == {"delivered": 1, "devices": 1}
        assert json.loads(answers[2][2])["error"] == {"code": "forbidden", "message": "X-Internal-Token is wrong"}
        received = [json.loads(await asyncio.wait_for(ws.recv(), 5))["data"]["n"] for _ in range(4)]
        assert received == [0, 1, 3, 4]


async def test_a_chunked_body_is_read_whole(gateway) -> None:
    async def chunks():
        raw = json.dumps(BODY).encode()
        for start in range(0, len(raw), 7):
            yield raw[start:start + 7]

    async with connect(gateway.ws_url + "/ws?device_id=pipe") as ws, httpx.AsyncClient() as client:
        answer = await client.post(gateway.url + "/internal/broadcast", content=chunks(), headers={"X-Internal-Token": TOKEN})
        assert answer.status_code == 200 and answer.json() == {"delivered": 1, "devices": 1}
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["data"] == {"n": 1}


async def test_subscriptions_refusals_match_the_broadcast_api(gateway) -> None:
    body = {"device_ids": ["a"], "channel": "lobby:x", "action": "subscribe"}
    async with httpx.AsyncClient() as client:
        url = gateway.url + "/internal/subscriptions"
        missing = await client.post(url, json=body)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
        wrong = await client.post(url, json=body, headers={"X-Internal-Token": "nope"})
        assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"
        bad = await client.post(url, json={**body, "action": "join"}, headers={"X-Internal-Token": TOKEN})
        assert bad.status_code == 422
        assert [item["field"] for item in bad.json()["error"]["details"]["errors"]] == ["action"]


async def test_other_methods_and_paths_still_reach_fastapi(gateway) -> None:
    async with httpx.AsyncClient() as client:
        for method in ("GET", "PUT"):
            refused = await client.request(method, gateway.url + "/internal/broadcast")
            assert refused.status_code == 405 and refused.headers["allow"] == "POST"
            assert refused.json() == {"error": {"code": "method_not_allowed", "message": "Method Not Allowed"}}
        head = await client.head(gateway.url + "/internal/subscriptions")
        assert head.status_code == 405 and head.content == b""
        slash = await client.post(gateway.url + "/internal/broadcast/?q=1", json=BODY, headers={"X-Internal-Token": TOKEN})
        assert slash.status_code == 307 and slash.headers["location"] == gateway.url + "/internal/broadcast?q=1"
        assert (await client.get(gateway.url + "/healthz")).json()["status"] == "ok"
        missing = await client.post(gateway.url + "/internal/other", json={}, headers={"X-Internal-Token": TOKEN})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
