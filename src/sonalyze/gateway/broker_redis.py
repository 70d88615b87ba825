"""Redis pub/sub broker: one channel per cluster, every node subscribed, each delivering locally."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from sonalyze.gateway.broker import Deliver, deliver_publication, encode_publication

logger = logging.getLogger("sonalyze.gateway.broker")

RECONNECT_DELAYS_S = (0.1, 0.2, 0.5, 1.0, 2.0)


class RedisBroker:
    name = "redis"

    def __init__(self, url: str, channel: str, deliver: Deliver) -> None:
        self._url = url
        self._channel = channel
        self._deliver = deliver
        self._client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
        self._subscribed = False
        self._listener: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._subscribed

    async def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._listen(), name="gateway-redis-broker")

    async def publish(self, targets: Any, payload: bytes) -> tuple[int | None, int | None]:
        if self._subscribed:
            try:
                await self._client.publish(self._channel, encode_publication(targets, payload))
                return None, None
            except (RedisError, OSError) as exc:
                self._down(exc)
        return self._deliver(targets, payload)  # the bus is down: this node's devices still get it

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await self._client.aclose()

    async def _listen(self) -> None:
        attempt = 0
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self._subscribed, attempt = True, 0
                logger.info("broker connected: redis channel %s", self._channel)
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None and message["type"] == "message":
                        deliver_publication(self._deliver, message["data"])
            except (RedisError, OSError) as exc:
                self._down(exc)
            finally:
                await pubsub.aclose()
            await asyncio.sleep(RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)])
            attempt += 1

    def _down(self, exc: BaseException) -> None:
        if self._subscribed:
            logger.warning("broker disconnected (redis): %s; delivering locally until it is back", exc)
        self._subscribed = False
