"""Redis pub/sub broker: one channel per cluster, every node subscribed, each delivering locally.

Two plain connections speak RESP through hiredis's C parser instead of redis-py's per-message machinery
(a coroutine chain, a retry wrapper and a health check around every read): a publisher that pipelines
``PUBLISH`` commands and matches the replies in order, and a subscriber whose ``data_received`` hands each
message to local delivery at once, with no task or await in between (bench/gateway_scale.md: the cost
per message and instance). Pub/sub channels are server-wide: the URL's database number does not matter.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis

from sonalyze.gateway.broker import Deliver, deliver_publication, encode_publication

logger = logging.getLogger("sonalyze.gateway.broker")

RECONNECT_DELAYS_S = (0.1, 0.2, 0.5, 1.0, 2.0)
CONNECT_TIMEOUT_S = 1.0
REPLY_TIMEOUT_S = 2.0
REDIS_ERRORS = (OSError, ConnectionError, TimeoutError, hiredis.ReplyError, hiredis.ProtocolError)


class RespConnection(asyncio.Protocol):
    """One Redis connection: commands pipelined, replies matched in order; ``message`` pushes go to ``on_message``."""

    def __init__(self, on_message: Callable[[bytes], None] | None = None) -> None:
        self._reader = hiredis.Reader()
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._on_message = on_message
        self._transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()
        """Resolved (with the reason) when the connection is gone."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if type(reply) is list and reply[0] == b"message" and self._on_message is not None:
                self._on_message(reply[2])
            elif self._waiting:
                waiter = self._waiting.popleft()
                if not waiter.done():
                    if isinstance(reply, hiredis.ReplyError):
                        waiter.set_exception(reply)
                    else:
                        waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = ConnectionError(f"redis connection lost: {exc}" if exc else "redis closed the connection")
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(reason)
        if not self.lost.done():
            self.lost.set_result(reason)

    def command(self, *args: bytes | str) -> asyncio.Future[Any]:
        """Send one command; the future gets its reply (a ``hiredis.ReplyError`` is raised from it)."""
        if self._transport is None or self.lost.done():
            raise ConnectionError("redis connection is closed")
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._transport.write(hiredis.pack_command(args))
        return waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def open_resp_connection(url: str, on_message: Callable[[bytes], None] | None = None) -> RespConnection:
    """Connect to ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS) and authenticate."""
    parts = urlsplit(url)
    tls = ssl.create_default_context() if parts.scheme == "rediss" else None
    _, connection = await asyncio.wait_for(
        asyncio.get_running_loop().create_connection(
            lambda: RespConnection(on_message), parts.hostname or "127.0.0.1", parts.port or 6379, ssl=tls
        ),
        CONNECT_TIMEOUT_S,
    )
    if parts.password is not None:
        credentials = (unquote(parts.username), unquote(parts.password)) if parts.username else (unquote(parts.password),)
        try:
            await asyncio.wait_for(connection.command("AUTH", *credentials), REPLY_TIMEOUT_S)
        except BaseException:
            connection.close()
            raise
    return connection


class RedisBroker:
    name = "redis"

    def __init__(self, url: str, channel: str, deliver: Deliver) -> None:
        self._url = url
        self._channel = channel.encode()
        self._deliver = deliver
        self._publisher: RespConnection | None = None
        """Set while both connections are up (and the subscription confirmed)."""
        self._listener: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._publisher is not None

    async def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._connect_and_listen(), name="gateway-redis-broker")

    async def publish(self, targets: Any, payload: bytes) -> tuple[int | None, int | None]:
        publisher = self._publisher
        if publisher is not None:
            try:
                async with asyncio.timeout(REPLY_TIMEOUT_S):
                    await publisher.command("PUBLISH", self._channel, encode_publication(targets, payload))
                return None, None
            except REDIS_ERRORS as exc:
                self._down(exc)
                publisher.close()  # the listener reconnects
        return self._deliver(targets, payload)  # the bus is down: this node's devices still get it

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)

    async def _connect_and_listen(self) -> None:
        attempt = 0
        while True:
            connections: list[RespConnection] = []
            try:
                connections.append(publisher := await open_resp_connection(self._url))
                connections.append(subscriber := await open_resp_connection(self._url, self._message))
                await asyncio.wait_for(subscriber.command("SUBSCRIBE", self._channel), REPLY_TIMEOUT_S)
                self._publisher, attempt = publisher, 0
                logger.info("broker connected: redis channel %s", self._channel.decode())
                done, _ = await asyncio.wait([publisher.lost, subscriber.lost], return_when=asyncio.FIRST_COMPLETED)
                self._down(done.pop().result())
            except REDIS_ERRORS as exc:
                self._down(exc)
                if attempt == 0:
                    logger.warning("broker not reachable (redis channel %s): %s; retrying", self._channel.decode(), exc)
            finally:
                self._publisher = None
                for connection in connections:
                    connection.close()
            await asyncio.sleep(RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)])
            attempt += 1

    def _message(self, message: bytes) -> None:
        deliver_publication(self._deliver, message)

    def _down(self, exc: BaseException) -> None:
        if self._publisher is not None:
            logger.warning("broker disconnected (redis): %s; delivering locally until it is back", exc)
        self._publisher = None
