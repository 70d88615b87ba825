"""NATS core broker: one subject per cluster, every node subscribed, each delivering locally.

nats-py reconnects by itself and re-subscribes; while it is not connected a publish is delivered locally
instead of being buffered (a buffered one would reach this node twice once the bus is back).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError

from sonalyze.gateway.publication import Deliver, deliver_publication, encode_publication

logger = logging.getLogger("sonalyze.gateway.broker")

CONNECT_RETRY_S = 0.5


class NatsBroker:
    name = "nats"
    history = None
    """No push history on NATS yet (issue 18): resumes answer ``resync_required``."""

    def __init__(self, url: str, subject: str, deliver: Deliver) -> None:
        self._url = url
        self._subject = subject
        self._deliver = deliver
        self._client: Client | None = None
        self._starter: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def start(self) -> None:
        self._starter = asyncio.get_running_loop().create_task(self._connect(), name="gateway-nats-broker")

    async def publish(self, targets: Any, payload: bytes, positioned: bool = True) -> tuple[int | None, int | None]:
        """NATS keeps no history: nothing is positioned (``positioned`` is accepted for the interface)."""
        client = self._client
        if client is not None and client.is_connected:
            try:
                await client.publish(self._subject, encode_publication(targets, payload))
                return None, None
            except (NatsError, OSError) as exc:
                logger.warning("broker publish failed (nats): %s; delivering locally", exc)
        return self._deliver(targets, payload)

    async def close(self) -> None:
        if self._starter is not None:
            self._starter.cancel()
            await asyncio.gather(self._starter, return_exceptions=True)
        if self._client is not None and not self._client.is_closed:
            await self._client.close()

    async def _connect(self) -> None:
        """Until the first connection succeeds; nats-py handles every later loss itself."""
        while True:
            try:
                client = await nats.connect(
                    self._url,
                    connect_timeout=1,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.2,
                    pending_size=0,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    error_cb=self._error,
                )
            except (NatsError, OSError, asyncio.TimeoutError) as exc:
                logger.warning("broker not reachable (nats %s): %s; retrying", self._url, exc)
                await asyncio.sleep(CONNECT_RETRY_S)
                continue
            await client.subscribe(self._subject, cb=self._message)
            self._client = client
            logger.info("broker connected: nats subject %s", self._subject)
            return

    async def _message(self, message: Any) -> None:
        deliver_publication(self._deliver, message.data)

    async def _disconnected(self) -> None:
        logger.warning("broker disconnected (nats); delivering locally until it is back")

    async def _reconnected(self) -> None:
        logger.info("broker reconnected (nats)")

    async def _error(self, exc: Exception) -> None:
        logger.debug("nats: %s", exc)
