"""Binary WebSocket frames published raw to a Redis channel (seed 002: audio frames to ``audio:{call_id}``).

Frames are queued and a single flusher task publishes each batch in one pipeline: no task and no Redis
round trip per frame. Past ``MAX_PENDING_BYTES`` waiting (Redis slower than the callers), frames are
dropped rather than held: logged when dropping starts, and how many when it ends.
"""

from __future__ import annotations

import asyncio
import logging

logger = logging.getLogger("sonalyze.gateway.binary_relay")

MAX_PENDING_BYTES = 8 << 20


class BinaryRelay:
    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self._client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=5.0)
        self._pending: list[tuple[str, bytes]] = []
        self._pending_bytes = 0
        self._flusher: asyncio.Task[None] | None = None
        self._dropping = 0  # frames dropped since the queue last had room

    def send(self, channel: str, data: bytes) -> None:
        if self._pending_bytes + len(data) > MAX_PENDING_BYTES:
            if not self._dropping:
                logger.warning("binary relay: %d bytes wait for Redis; dropping frames", self._pending_bytes)
            self._dropping += 1
            return
        if self._dropping:
            logger.warning("binary relay: %d frames were dropped while Redis was behind", self._dropping)
            self._dropping = 0
        self._pending.append((channel, data))
        self._pending_bytes += len(data)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        from redis.exceptions import RedisError

        while self._pending:
            batch, self._pending, self._pending_bytes = self._pending, [], 0
            pipe = self._client.pipeline(transaction=False)
            for channel, data in batch:
                pipe.publish(channel, data)
            try:
                await pipe.execute()
            except (RedisError, OSError) as exc:
                logger.warning("binary relay: %d frames not published (redis): %s", len(batch), exc)

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._client.aclose()
