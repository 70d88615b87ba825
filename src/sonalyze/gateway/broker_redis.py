"""Redis pub/sub broker on redis-py: one channel per cluster, every node subscribed, each delivering locally.

redis-py parses with hiredis's C parser when ``hiredis`` is installed (a dependency of the gateway).
Publications wait in one list and a single flusher task sends each batch in one pipeline, so concurrent
publishes keep their order on the wire and cost one round trip per batch; a ``PubSub`` connection reads
the channel. The own RESP client this replaced saved nothing that matters for the fan-out target
(bench/gateway_scale.md, "One Redis client"). Pub/sub channels are server-wide: the URL's database
number does not matter.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sonalyze.gateway.broker import Deliver, deliver_publication, encode_publication

logger = logging.getLogger("sonalyze.gateway.broker")

RECONNECT_DELAYS_S = (0.1, 0.2, 0.5, 1.0, 2.0)
CONNECT_TIMEOUT_S = 1.0
REPLY_TIMEOUT_S = 2.0
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


class RedisBroker:
    name = "redis"

    def __init__(self, url: str, channel: str, deliver: Deliver) -> None:
        self._url = url
        self._channel = channel
        self._deliver = deliver
        self._client: redis.Redis | None = None
        """Set while the publishing client works and the subscription is confirmed."""
        self._lost: asyncio.Future[BaseException] | None = None
        """Resolved by a failed publish: the listener then reconnects both connections."""
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._connect_and_listen(), name="gateway-redis-broker")

    async def publish(self, targets: Any, payload: bytes) -> tuple[int | None, int | None]:
        client = self._client
        if client is not None:
            sent = asyncio.get_running_loop().create_future()
            self._pending.append((encode_publication(targets, payload), sent))
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.get_running_loop().create_task(self._flush())
            try:
                await sent
                return None, None
            except REDIS_ERRORS:
                pass  # logged; the listener reconnects
        return self._deliver(targets, payload)  # the bus is down: this node's devices still get it

    async def _flush(self) -> None:
        """Send what waits, one pipeline per batch, until nothing waits; a failure fails its whole batch."""
        while self._pending:
            batch, self._pending = self._pending, []
            client, lost = self._client, self._lost
            try:
                if client is None:
                    raise ConnectionError("the redis broker is reconnecting")
                pipe = client.pipeline(transaction=False)
                for message, _ in batch:
                    pipe.publish(self._channel, message)
                async with asyncio.timeout(REPLY_TIMEOUT_S):
                    await pipe.execute()
            except REDIS_ERRORS as exc:
                if lost is self._lost:  # not a batch of a connection already replaced
                    self._down(exc)
                for _, sent in batch:
                    if not sent.done():
                        sent.set_exception(exc)
                continue
            for _, sent in batch:
                if not sent.done():
                    sent.set_result(None)

    async def close(self) -> None:
        """Send what waits (at most ``REPLY_TIMEOUT_S``), then disconnect."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)

    async def _connect_and_listen(self) -> None:
        attempt = 0
        while True:
            client = redis.Redis.from_url(
                self._url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=REPLY_TIMEOUT_S, retry=Retry(NoBackoff(), 0)
            )
            pubsub = client.pubsub()
            reading: asyncio.Task[None] | None = None
            try:
                async with asyncio.timeout(REPLY_TIMEOUT_S):
                    await client.ping()  # the publishing connection authenticates
                    await pubsub.subscribe(self._channel)
                    confirmation = await pubsub.parse_response(block=True)
                if confirmation[0] != b"subscribe":
                    raise RedisError(f"SUBSCRIBE answered {confirmation!r}")
                self._lost = asyncio.get_running_loop().create_future()
                self._client, attempt = client, 0
                logger.info("broker connected: redis channel %s", self._channel)
                reading = asyncio.ensure_future(self._read(pubsub))
                await asyncio.wait([reading, self._lost], return_when=asyncio.FIRST_COMPLETED)
                self._down(reading.exception() if reading.done() else self._lost.result())
            except REDIS_ERRORS as exc:
                self._down(exc)
                if attempt == 0:
                    logger.warning("broker not reachable (redis channel %s): %s; retrying", self._channel, exc)
            finally:
                self._client = None
                if reading is not None:
                    reading.cancel()
                    await asyncio.gather(reading, return_exceptions=True)
                await asyncio.gather(pubsub.aclose(), client.aclose(), return_exceptions=True)
            await asyncio.sleep(RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)])
            attempt += 1

    async def _read(self, pubsub: redis.client.PubSub) -> None:
        """Deliver each message of the channel as it arrives, until the connection fails (raises)."""
        deliver = self._deliver
        while True:
            reply = await pubsub.parse_response(block=True)
            if reply[0] == b"message":
                deliver_publication(deliver, reply[2])

    def _down(self, exc: BaseException | None) -> None:
        if self._client is not None:
            logger.warning("broker disconnected (redis): %s; delivering locally until it is back", exc)
        self._client = None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(exc or ConnectionError("redis closed the connection"))
