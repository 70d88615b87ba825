"""Pushes to devices through the gateway's ``POST /internal/broadcast``, off the request path.

Bounded queues drained by a few workers; the pushes of one lobby always go to the same worker, so its
participants get them in the order of the lobby's log. Each worker keeps one HTTP/1.1 keep-alive
connection to the gateway and *pipelines* the requests it finds queued (writes them all, then reads the
answers in order): a general-purpose client (httpx) spends about 2 ms of CPU per request here, which
capped the lobby at ~400 pushes/s; pipelining over a plain stream costs a few tens of µs each.

A push that cannot be queued or delivered is logged and dropped: the state it announces is already in
the database and clients can read it again (``lobby.get``, ``measurement.session_status``,
``GET /lobbies/{id}/events``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

from sonalyze.common.json import dumps

log = logging.getLogger("sonalyze.lobby.broadcast")

_PATH = "/internal/broadcast"
_MAX_PIPELINE = 256


class Broadcaster:
    """Queue pushes with :meth:`send` (never blocks); workers deliver them to the gateway."""

    def __init__(self, gateway_url: str, token: str, *, queue_size: int, workers: int, timeout_s: float) -> None:
        parts = urlsplit(gateway_url) if gateway_url else None
        self._host = parts.hostname if parts else None
        self._port = (parts.port or (443 if parts.scheme == "https" else 80)) if parts else None
        self._tls = bool(parts and parts.scheme == "https")
        self._head = (
            f"POST {_PATH} HTTP/1.1\r\nHost: {parts.netloc}\r\nX-Internal-Token: {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode() if parts else b""
        self._queues: list[asyncio.Queue[bytes]] = [asyncio.Queue(maxsize=max(1, queue_size // workers)) for _ in range(workers)]
        self._timeout_s = timeout_s
        self._tasks: list[asyncio.Task] = []
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    async def start(self) -> None:
        if self._host is None:
            log.warning("GATEWAY_URL is empty: lobby and session pushes are not sent")
            return
        self._tasks = [asyncio.create_task(self._work(queue), name=f"lobby-broadcast-{i}") for i, queue in enumerate(self._queues)]

    async def stop(self, drain_timeout_s: float = 2.0) -> None:
        if self._tasks:
            try:
                await asyncio.wait_for(asyncio.gather(*(queue.join() for queue in self._queues)), drain_timeout_s)
            except TimeoutError:
                log.warning("stopping with %d pushes undelivered", sum(queue.qsize() for queue in self._queues))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def send(self, event: str, data: dict[str, Any], device_ids: list[str] | tuple[str, ...], *, order_key: str) -> None:
        """Queue one push (serialized once, here); pushes with the same ``order_key`` (the lobby) keep
        their order. Dropped with a warning when the queue is full."""
        if self._host is None or not device_ids:
            return
        body = dumps({"event": event, "data": data, "targets": {"device_ids": list(device_ids)}})
        try:
            self._queues[hash(order_key) % len(self._queues)].put_nowait(self._head + str(len(body)).encode() + b"\r\n\r\n" + body)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("push queue full: dropped %s for %d devices", event, len(device_ids))

    async def _work(self, queue: asyncio.Queue[bytes]) -> None:
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while True:
            batch = [await queue.get()]
            while len(batch) < _MAX_PIPELINE and not queue.empty():
                batch.append(queue.get_nowait())
            # A kept-alive connection may have been closed by the gateway while idle: the unanswered
            # rest of a batch is sent once more on a fresh connection.
            for attempt in range(2):
                try:
                    if connection is None:
                        connection = await asyncio.wait_for(
                            asyncio.open_connection(self._host, self._port, ssl=self._tls or None), self._timeout_s
                        )
                    reader, writer = connection
                    writer.write(b"".join(batch))
                    while batch:
                        async with asyncio.timeout(self._timeout_s):  # no task per answer, unlike wait_for
                            await self._read_answer(reader)
                        batch.pop(0)
                        queue.task_done()
                    break
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                    if connection is not None:
                        connection[1].close()
                    connection = None
                    if attempt == 1:
                        self.failed += len(batch)
                        log.warning("%d pushes not delivered: %r", len(batch), exc)
                        for _ in batch:
                            queue.task_done()

    async def _read_answer(self, reader: asyncio.StreamReader) -> None:
        """Read one pipelined answer; it needs a Content-Length (uvicorn always sends one)."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = next((int(v) for k, _, v in (line.partition(":") for line in lines[1:]) if k.lower() == "content-length"), None)
        if length is None:
            raise ValueError("the gateway answered without Content-Length")
        body = await reader.readexactly(length)
        if status >= 300:
            self.failed += 1
            log.warning("gateway refused a push: %s %s", status, body[:200])
        else:
            self.delivered += 1
