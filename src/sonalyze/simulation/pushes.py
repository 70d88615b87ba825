"""Pushes of a running simulation to the device that asked for it (the gateway's ``POST /internal/broadcast``).

``simulation.progress`` ``{"id", "fraction", "message"}``, then ``simulation.completed`` (what
``simulation.get`` answers) or ``simulation.failed`` ``{"id", "error": {"code", "message"}}``. One bounded
queue, drained in order by one task through the services' HTTP client, so a device gets a simulation's
progress before its end. A push that cannot be queued or delivered is logged and dropped: the
simulation is kept, ``simulation.get`` reads it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sonalyze.common.errors import UpstreamTimeout, UpstreamUnavailable
from sonalyze.common.http_client import UpstreamClient
from sonalyze.common.json import dumps
from sonalyze.common.replicas import split_urls

log = logging.getLogger("sonalyze.simulation.pushes")

MAX_QUEUED = 1000


class SimulationPushes:
    def __init__(self, gateway_url: str, token: str, *, timeout_s: float = 10.0) -> None:
        # GATEWAY_URL may name several gateways (comma-separated): the client balances and fails over.
        self._url = ",".join(url + "/internal/broadcast" for url in split_urls(gateway_url)) if gateway_url else ""
        self._client = UpstreamClient(timeout_s, max_connections_per_origin=1, internal_token=token)
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(MAX_QUEUED)
        self._task: asyncio.Task[None] | None = None

    def send(self, device_id: str, event: str, data: dict[str, Any]) -> None:
        """Queue ``event`` for ``device_id`` (never blocks); without ``GATEWAY_URL`` nothing is sent."""
        if not self._url:
            return
        body = dumps({"event": event, "data": data, "targets": {"device_ids": [device_id]}})
        try:
            self._queue.put_nowait(body)
        except asyncio.QueueFull:
            log.warning("push queue full; %s dropped", event, extra={"device_id": device_id})
            return
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="simulation-pushes")

    async def _drain(self) -> None:
        while True:
            body = await self._queue.get()
            try:
                status, answer = await self._client.post_json(self._url, body)
                if status >= 300:
                    log.warning("the gateway refused a push (%d): %s", status, answer[:200])
            except (UpstreamUnavailable, UpstreamTimeout) as exc:
                log.warning("push not delivered: %s", exc)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._client.aclose()
