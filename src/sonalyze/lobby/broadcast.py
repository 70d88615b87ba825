"""Pushes to devices (the gateway's ``POST /internal/broadcast``) and channel subscriptions
(``POST /internal/subscriptions``), off the request path.

Bounded queues drained by a few workers; the requests of one lobby always go to the same worker, in
the order they were queued, so its participants get its pushes in the order of the lobby's log and a
device is put into the lobby's channel before the push that announces its join. Each worker sends its
requests one after the other through the services' one HTTP client
(:class:`sonalyze.common.http_client.UpstreamClient`, a keep-alive connection per worker): httpx spends
about 2 ms of CPU per request here, which capped the lobby at ~400 pushes/s (figures in bench/gateway.md
"One HTTP client").

Several lobby replicas keep one lobby's order too: a replica announcing a change waits with :meth:`sent`
until the gateway answered its requests, and holds the lobby's turn meanwhile
(:meth:`sonalyze.lobby.store.Database.write_in_turn`), so seq n+1 of a lobby is never sent before seq n
was acknowledged, whichever replica sends it.

A request that cannot be queued or delivered is logged and dropped: the state it announces is already in
the database and clients can read it again (``lobby.get``, ``measurement.session_status``,
``GET /lobbies/{id}/events``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Literal

from sonalyze.common.errors import UpstreamTimeout, UpstreamUnavailable
from sonalyze.common.http_client import UpstreamClient
from sonalyze.common.json import dumps
from sonalyze.common.replicas import split_urls

log = logging.getLogger("sonalyze.lobby.broadcast")

_BROADCAST_PATH = "/internal/broadcast"
_SUBSCRIPTIONS_PATH = "/internal/subscriptions"

Request = tuple[str, bytes] | asyncio.Future[None]
"""A gateway request (URL, body), or a marker resolved when the worker reaches it (:meth:`Broadcaster.sent`)."""


class Broadcaster:
    """Queue pushes with :meth:`send` and channel changes with :meth:`subscription` (neither blocks);
    workers deliver them to the gateway. ``delivered`` and ``failed`` count both kinds (a request dropped
    because its queue is full is logged)."""

    def __init__(self, gateway_url: str, token: str, *, queue_size: int, workers: int, timeout_s: float) -> None:
        self._gateway_url = gateway_url.rstrip("/")
        self._urls = {
            path: ",".join(url + path for url in split_urls(gateway_url)) for path in (_BROADCAST_PATH, _SUBSCRIPTIONS_PATH)
        } if gateway_url else {}
        """Per path, the URL on every gateway (GATEWAY_URL may name several, comma-separated: the client
        balances and passes over one that refuses connections, as for every service URL)."""
        self._client = UpstreamClient(timeout_s, max_connections_per_origin=workers, internal_token=token)
        self._timeout_s = timeout_s
        self._queues: list[asyncio.Queue[Request]] = [asyncio.Queue(maxsize=max(1, queue_size // workers)) for _ in range(workers)]
        self._tasks: list[asyncio.Task] = []
        self.delivered = 0
        self.failed = 0

    async def start(self) -> None:
        if not self._gateway_url:
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
        await self._client.aclose()

    def send(self, event: str, data: dict[str, Any], device_ids: list[str] | tuple[str, ...], *, order_key: str) -> None:
        """Queue one push (serialized once, here); requests with the same ``order_key`` (the lobby) keep
        their order. Dropped with a warning when the queue is full."""
        if not self._gateway_url or not device_ids:
            return
        body = dumps({"event": event, "data": data, "targets": {"device_ids": list(device_ids)}})
        self._queue(_BROADCAST_PATH, body, order_key, event, len(device_ids))

    def subscription(
        self, action: Literal["subscribe", "unsubscribe"], channel: str, device_ids: list[str] | tuple[str, ...], *, order_key: str
    ) -> None:
        """Queue putting the devices' open connections into ``channel`` (or taking them out)."""
        if not self._gateway_url or not device_ids:
            return
        body = dumps({"device_ids": list(device_ids), "channel": channel, "action": action})
        self._queue(_SUBSCRIPTIONS_PATH, body, order_key, f"{action} {channel}", len(device_ids))

    async def sent(self, order_keys: Iterable[str]) -> None:
        """Wait until the gateway answered every request queued so far under ``order_keys`` (or it failed).

        Bounded by the request timeout: a stuck queue is logged and no longer waited for."""
        if not self._tasks:
            return
        loop = asyncio.get_running_loop()
        markers: list[asyncio.Future[None]] = []
        try:
            async with asyncio.timeout(self._timeout_s):
                for queue in {id(queue): queue for queue in map(self._queue_of, order_keys)}.values():
                    markers.append(loop.create_future())
                    await queue.put(markers[-1])
                await asyncio.gather(*markers)
        except TimeoutError:
            log.warning("gateway requests of %s not answered within %g s: the next change may overtake them", list(order_keys), self._timeout_s)

    def _queue_of(self, order_key: str) -> asyncio.Queue[Request]:
        return self._queues[hash(order_key) % len(self._queues)]

    def _queue(self, path: str, body: bytes, order_key: str, what: str, device_count: int) -> None:
        try:
            self._queue_of(order_key).put_nowait((self._urls[path], body))
        except asyncio.QueueFull:
            log.warning("gateway queue full: dropped %s for %d devices", what, device_count)

    async def _work(self, queue: asyncio.Queue[Request]) -> None:
        while True:
            request = await queue.get()
            if isinstance(request, asyncio.Future):
                if not request.done():
                    request.set_result(None)
                queue.task_done()
                continue
            url, body = request
            try:
                status, answer = await self._client.post_json(url, body)
            except (UpstreamTimeout, UpstreamUnavailable) as exc:
                self.failed += 1
                log.warning("gateway request not delivered: %s", exc.message)
            else:
                if status >= 300:
                    self.failed += 1
                    log.warning("gateway refused a request: %s %s", status, answer[:200])
                else:
                    self.delivered += 1
            finally:
                queue.task_done()
