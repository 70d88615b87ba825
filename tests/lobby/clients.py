"""Test clients of the lobby: a phone on the gateway's WebSocket, and a direct ``/gateway/handle`` caller."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect


class Refused(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error['code']}: {error['message']}")
        self.code = error["code"]
        self.error = error


class Phone:
    """One device on ``WS /ws?device_id=``: ``call`` waits for the answer, pushes are kept in order."""

    _ids = itertools.count(1)

    def __init__(self, ws_url: str, device_id: str) -> None:
        self.url = f"{ws_url}/ws?device_id={device_id}"
        self.device_id = device_id
        self.pushes: list[dict[str, Any]] = []
        self._waiting: dict[str, asyncio.Future] = {}
        self._arrived = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> "Phone":
        self._ws = await connect(self.url, max_size=None)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self._ws.close()

    async def _read(self) -> None:
        async for raw in self._ws:
            message = json.loads(raw)
            if message.get("type") == "event":
                self.pushes.append(message)
                self._arrived.set()
                continue
            future = self._waiting.pop(str(message.get("request_id")), None)
            if future is not None and not future.done():
                future.set_result(message)

    async def send(self, event: str, data: dict[str, Any] | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
        """The whole answer envelope (``response`` or ``error``)."""
        request_id = f"{self.device_id}-{next(self._ids)}"
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        await self._ws.send(json.dumps({"event": event, "request_id": request_id, "data": data or {}}))
        return await asyncio.wait_for(future, timeout_s)

    async def call(self, event: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = await self.send(event, data)
        if answer["type"] == "error":
            raise Refused(answer["error"])
        return answer["data"]

    async def refused(self, event: str, data: dict[str, Any] | None = None) -> str:
        answer = await self.send(event, data)
        assert answer["type"] == "error", f"{event} was accepted: {answer}"
        return answer["error"]["code"]

    async def wait_push(self, event: str, timeout_s: float = 20.0, **match: Any) -> dict[str, Any]:
        """The first push named ``event`` whose data has ``match`` (it stays in ``pushes``)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            for push in self.pushes:
                if push["event"] == event and all(push["data"].get(k) == v for k, v in match.items()):
                    return push["data"]
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                seen = [(p["event"], p["data"].get("type") or p["data"].get("step")) for p in self.pushes]
                raise AssertionError(f"{self.device_id} got no {event} {match}; got {seen}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                pass

    def count(self, event: str, **match: Any) -> int:
        return sum(1 for p in self.pushes if p["event"] == event and all(p["data"].get(k) == v for k, v in match.items()))


class Handle:
    """Calls ``POST /gateway/handle`` of the lobby directly, as the gateway does."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def send(self, event: str, data: dict[str, Any], device_id: str | None) -> dict[str, Any]:
        response = await self.http.post("/gateway/handle", json={"event": event, "data": data, "device_id": device_id, "request_id": "r"})
        assert response.status_code == 200, response.text
        return response.json()

    async def call(self, event: str, data: dict[str, Any], device_id: str | None) -> dict[str, Any]:
        body = await self.send(event, data, device_id)
        if "error" in body:
            raise Refused(body["error"])
        return body["data"]

    async def refused(self, event: str, data: dict[str, Any], device_id: str | None) -> dict[str, Any]:
        body = await self.send(event, data, device_id)
        assert "error" in body, f"{event} was accepted: {body}"
        return body["error"]
