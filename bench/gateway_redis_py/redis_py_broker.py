"""Bench only: the Redis broker's pub/sub path on redis-py with hiredis (issue 16, "one Redis client").

What ``sonalyze.gateway.broker_redis.RedisBroker`` does without a push history, written the plain redis-py
way, so that ``bench/gateway_redis_client.sh`` can run the same benchmarks on both clients side by side:

* publishing: ``await redis.publish(channel, message)`` on a ``single_connection_client`` (its lock keeps
  concurrent publishes in order, as the broker must; the own client pipelines them on one connection);
* receiving: one task reading ``PubSub.get_message(timeout=None)`` and handing each message to the same
  ``deliver_publication`` the broker calls from ``data_received``.

No reconnection, no outage queue, no history (``PUSH_HISTORY_MAX=0``): the benchmark measures the cost per
message of the client, and both brokers do the same work around it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio

from sonalyze.gateway.publication import Deliver, deliver_publication, encode_publication


class RedisPyBroker:
    name = "redis"
    history = None

    def __init__(self, url: str, channel: str, deliver: Deliver) -> None:
        self._publisher = redis.asyncio.Redis.from_url(url, single_connection_client=True)
        self._subscriber = redis.asyncio.Redis.from_url(url)
        self._pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
        self._channel = channel
        self._deliver = deliver
        self._reader: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def start(self) -> None:
        await self._publisher.initialize()
        await self._pubsub.subscribe(self._channel)
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="bench-redis-py-broker")

    async def _read(self) -> None:
        pubsub, deliver = self._pubsub, self._deliver
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is not None:
                deliver_publication(deliver, message["data"])

    async def publish(self, targets: Any, payload: bytes, positioned: bool = True) -> tuple[int | None, int | None]:
        await self._publisher.publish(self._channel, encode_publication(targets, payload))
        return None, None

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._pubsub.aclose()
        await self._subscriber.aclose()
        await self._publisher.aclose()
