"""Pushes to devices (the gateway's ``POST /internal/broadcast``) and channel subscriptions
(``POST /internal/subscriptions``), off the request path.

Bounded queues drained by a few workers; the requests of one lobby always go to the same worker, in
the order they were queued, so its participants get its pushes in the order of the lobby's log and a
device is put into the lobby's channel before the push that announces its join. Each worker keeps one
HTTP/1.1 keep-alive connection to the gateway and *pipelines* the requests it finds queued (writes them
all, then reads the answers in order): a general-purpose client (httpx) spends about 2 ms of CPU per request here, which
capped the lobby at ~400 pushes/s; pipelining over a plain stream costs a few tens of µs each.

A request that cannot be queued or delivered is logged and dropped: the state it announces is already in
the database and clients can read it again (``lobby.get``, ``measurement.session_status``,
``GET /lobbies/{id}/events``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal
from urllib.parse import urlsplit

from sonalyze.common.json import dumps

log = logging.getLogger("sonalyze.lobby.broadcast")

_BROADCAST_PATH = "/internal/broadcast"
_SUBSCRIPTIONS_PATH = "/internal/subscriptions"
_MAX_PIPELINE = 256


class Broadcaster:
    """Queue pushes with :meth:`send` and channel changes with :meth:`subscription` (neither blocks);
    workers deliver them to the gateway. ``delivered`` and ``failed`` count both kinds (a request dropped
    because its queue is full is logged)."""

    def __init__(self, gateway_url: str, token: str, *, queue_size: int, workers: int, timeout_s: float) -> None:
        parts = urlsplit(gateway_url) if gateway_url else None
        self._host = parts.hostname if parts else None
        self._port = (parts.port or (443 if parts.scheme == "https" else 80)) if parts else None
        self._tls = bool(parts and parts.scheme == "https")
        headers = f"Host: {parts.netloc}\r\nX-Internal-Token: {token}\r\nContent-Type: application/json\r\n" if parts else ""
        self._heads = {path: f"POST {path} HTTP/1.1\r\n{headers}Content-Length: ".encode() for path in (_BROADCAST_PATH, _SUBSCRIPTIONS_PATH)}
        self._queues: list[asyncio.Queue[bytes]] = [asyncio.Queue(maxsize=max(1, queue_size // workers)) for _ in range(workers)]
        self._timeout_s = timeout_s
        self._tasks: list[asyncio.Task] = []
        self.delivered = 0
        self.failed = 0

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
                log.warning("stopping with %d gateway requests undelivered", sum(queue.qsize() for queue in self._queues))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def send(self, event: str, data: dict[str, Any], device_ids: list[str] | tuple[str, ...], *, order_key: str) -> None:
        """Queue one push (serialized once, here); requests with the same ``order_key`` (the lobby) keep
        their order. Dropped with a warning when the queue is full."""
        if self._host is None or not device_ids:
            return
        body = dumps({"event": event, "data": data, "targets": {"device_ids": list(device_ids)}})
        self._queue(_BROADCAST_PATH, body, order_key, event, len(device_ids))

    def subscription(
        self, action: Literal["subscribe", "unsubscribe"], channel: str, device_ids: list[str] | tuple[str, ...], *, order_key: str
    ) -> None:
        """Queue putting the devices' open connections into ``channel`` (or taking them out)."""
        if self._host is None or not device_ids:
            return
        body = dumps({"device_ids": list(device_ids), "channel": channel, "action": action})
        self._queue(_SUBSCRIPTIONS_PATH, body, order_key, f"{action} {channel}", len(device_ids))

    def _queue(self, path: str, body: bytes, order_key: str, what: str, device_count: int) -> None:
        try:
            self._queues[hash(order_key) % len(self._queues)].put_nowait(self._heads[path] + str(len(body)).encode() + b"\r\n\r\n" + body)
        except asyncio.QueueFull:
            log.warning("gateway queue full: dropped %s for %d devices", what, device_count)

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
                    async with asyncio.timeout(self._timeout_s):  # the whole batch; no task, unlike wait_for
                        while batch:
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
                        log.warning("%d gateway requests not delivered: %r", len(batch), exc)
                        for _ in batch:
                            queue.task_done()

    async def _read_answer(self, reader: asyncio.StreamReader) -> None:
        """Read one pipelined answer; it needs a Content-Length (uvicorn always sends one)."""
        head = (await reader.readuntil(b"\r\n\r\n")).lower()
        status = int(head.split(b" ", 2)[1])
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            raise ValueError("the gateway answered without Content-Length")
        at += len(b"\r\ncontent-length:")
        body = await reader.readexactly(int(head[at : head.index(b"\r\n", at)]))
        if status >= 300:
            self.failed += 1
            log.warning("gateway refused a request: %s %s", status, body[:200])
        else:
            self.delivered += 1
