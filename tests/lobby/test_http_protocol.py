"""The lobby's uvicorn HTTP protocol: each response leaves in one write, pipelined answers stay whole and in order."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sonalyze.lobby.http_protocol import LobbyHttpProtocol
from sonalyze.lobby.main import create_app as create_lobby
from tests.lobby.conftest import lobby_settings
from tests.support.servers import INTERNAL_TOKEN, ThreadedServer


def _post(path: str, body: dict, device_id: str | None = None, *, close: bool = False) -> bytes:
    raw = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: lobby\r\nContent-Type: application/json\r\nContent-Length: {len(raw)}\r\n"
    head += f"X-Internal-Token: {INTERNAL_TOKEN}\r\n"
    head += f"X-Device-Id: {device_id}\r\n" if device_id else ""
    head += "Connection: close\r\n" if close else ""
    return head.encode() + b"\r\n" + raw


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
    length = int(head.split("content-length:")[1].split("\r\n")[0])
    return int(head.split(" ", 2)[1]), json.loads(await reader.readexactly(length))


async def test_pipelined_requests_are_answered_whole_and_in_order(database_url: str, tmp_path: Path):
    app = create_lobby(lobby_settings(database_url))
    with ThreadedServer(app, http=LobbyHttpProtocol) as lobby:
        reader, writer = await asyncio.open_connection("127.0.0.1", lobby.port)
        create = {"event": "lobby.create", "data": {"name": "pipelined"}, "device_id": "host", "request_id": "1"}
        writer.write(_post("/gateway/handle", create) + _post("/lobbies", {"name": "rest"}, "host"))
        status, created = await _read_answer(reader)
        assert status == 200 and created["data"]["name"] == "pipelined"
        status, rest = await _read_answer(reader)
        assert status == 201 and rest["name"] == "rest" and rest["host_device_id"] == "host"

        joins = [
            {"event": "lobby.join", "data": {"code": created["data"]["code"]}, "device_id": f"guest-{n}", "request_id": str(n)}
            for n in range(5)
        ]
        writer.write(b"".join(_post("/gateway/handle", join) for join in joins))
        for n in range(5):
            status, joined = await _read_answer(reader)
            assert status == 200 and [p["device_id"] for p in joined["data"]["participants"]][-1] == f"guest-{n}"

        writer.write(_post("/gateway/handle", {"event": "nope", "device_id": "host"}, close=True))
        status, unknown = await _read_answer(reader)
        assert status == 200 and unknown["error"]["code"] == "unknown_event"
        assert await reader.read() == b"", "the server closes after answering a Connection: close request"
        writer.close()
