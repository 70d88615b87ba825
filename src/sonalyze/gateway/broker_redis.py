"""Redis pub/sub broker: one channel per cluster, every node subscribed, each delivering locally.

Two plain connections speak RESP through hiredis's C parser instead of redis-py's per-message machinery
(a coroutine chain, a retry wrapper and a health check around every read): a publisher that pipelines
``PUBLISH`` commands and matches the replies in order, and a subscriber whose ``data_received`` hands each
message to local delivery at once, with no task or await in between (bench/gateway_scale.md: the cost
per message and instance). Pub/sub channels are server-wide: the URL's database number does not matter.

With a push history (issue 18, ``PUSH_HISTORY_MAX`` > 0) a message is published by a Lua script that, in
one atomic step, gives it the cluster's next offset (``INCR``), appends it to a Redis stream (``XADD``
with ``MAXLEN ~`` and an age bound by ``XTRIM MINID ~``) and ``PUBLISH``es it with its position: every
node sees publications in offset order and stamps ``"pos"`` into the envelope. The epoch is a key of its
own, set by the first publication after the history was lost. A node keeps the last offset it delivered;
a resuming connection gets the stream's entries up to there (``XREVRANGE``).

While Redis is unreachable a node delivers its publications locally at once and queues them (at most
``PUSH_OUTAGE_QUEUE_MAX``); when Redis is back they are published in order, the other nodes' devices get
them through the bus and the stream, and this node skips the ones it delivered already. Each node numbers
its publications and the script drops a number it has seen: a publication that reached a frozen Redis
(SIGSTOP) and is queued again after the timeout is appended once.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis

from sonalyze.gateway.outage import OutageQueue
from sonalyze.gateway.publication import (
    Deliver, Targets, deliver_publication, encode_publication, position_prefix, resync_local, stamp_position,
)
from sonalyze.gateway.push_history import Entry

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


PUBLISH_SCRIPT = b"""
local last = tonumber(redis.call('HGET', KEYS[5], ARGV[5]) or '0')
if tonumber(ARGV[6]) <= last then return 0 end
redis.call('HSET', KEYS[5], ARGV[5], ARGV[6])
redis.call('PEXPIRE', KEYS[5], ARGV[7])
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[3], epoch)
  redis.call('DEL', KEYS[4], KEYS[1])
end
local offset = redis.call('INCR', KEYS[4])
local message = 'H ' .. epoch .. ' ' .. offset .. ' ' .. ARGV[5] .. ' ' .. ARGV[6] .. '\\n' .. ARGV[1]
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'm', message)
local now = redis.call('TIME')
local oldest_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[3])
if oldest_ms > 0 then redis.call('XTRIM', KEYS[1], 'MINID', '~', oldest_ms) end
redis.call('PUBLISH', KEYS[2], message)
return offset
"""
"""KEYS: stream, channel, epoch, offset, publisher numbers; ARGV: targets+payload, max entries, max age ms,
a new epoch, node, its publication number, how long numbers are kept (ms). Returns the offset (0: a
number seen before)."""
REPLAY_PAGE = 1000


class RedisBroker:
    name = "redis"

    def __init__(
        self, url: str, channel: str, deliver: Deliver, history_max: int = 0, history_age_s: float = 300.0, queue_max: int = 10_000
    ) -> None:
        self._url = url
        self._channel = channel.encode()
        self._deliver = deliver
        self._publisher: RespConnection | None = None
        """Set while both connections are up (and the subscription confirmed)."""
        self._listener: asyncio.Task[None] | None = None
        self.history = self if history_max else None
        """Itself when it keeps a push history (what ``Gateway.history`` resumes from)."""
        self._history_max = b"%d" % history_max
        self._history_age_ms = b"%d" % round(history_age_s * 1000)
        self._numbers_ttl_ms = b"%d" % max(round(history_age_s * 2000), 3_600_000)
        self._keys = [channel.encode() + suffix for suffix in (b":stream", b"", b":epoch", b":offset", b":numbers")]
        self._script_sha: bytes | None = None
        self.outage: OutageQueue[tuple[bytes, bool]] = OutageQueue(deliver, queue_max)
        """This node's publications through an outage; what it sends: (message, kept in the stream)."""
        self.queue = self.outage.queue
        """Publications waiting for the bus (the ``gateway_outage_queue`` metric)."""
        self._node = self.outage.node_bytes
        self._flusher: asyncio.Task[None] | None = None
        self.epoch: str | None = None
        self._epoch_bytes = b""
        self._pos_prefix = b""
        self.offset = 0
        """The last offset this node delivered: connections identified now get later pushes live."""
        self._held: list[bytes] | None = None
        """Bus messages that arrive while catching up from the stream (delivered after it)."""
        self._caught_up_once = False

    @property
    def connected(self) -> bool:
        return self._publisher is not None

    @property
    def queue_dropped(self) -> int:
        """Publications dropped from a full outage queue (the ``gateway_outage_queue_dropped`` metric)."""
        return self.outage.dropped

    async def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._connect_and_listen(), name="gateway-redis-broker")

    async def publish(self, targets: Any, payload: bytes, positioned: bool = True) -> tuple[int | None, int | None]:
        if self.history is not None:
            return await self._publish_kept(targets, payload, positioned and bool(payload))
        publisher = self._publisher
        if publisher is not None:
            try:
                async with asyncio.timeout(REPLY_TIMEOUT_S):
                    await publisher.command("PUBLISH", self._channel, encode_publication(targets, payload))
                return None, None
            except REDIS_ERRORS as exc:
                self._lost(publisher, exc)
        return self._deliver(targets, payload)  # the bus is down: this node's devices still get it

    async def _publish_kept(self, targets: Any, payload: bytes, kept: bool) -> tuple[int | None, int | None]:
        """Through the script when ``kept`` (in order behind anything queued), else as an ``M`` line on the same
        connection; Redis down: deliver here and queue (:class:`OutageQueue`; the script drops a number it saw)."""
        number = self.outage.next_number()
        publisher = self._publisher
        send, lost = (None, None) if publisher is None else (partial(self._send, publisher), partial(self._lost, publisher))
        return await self.outage.publish(number, targets, payload, (encode_publication(targets, payload), kept), send, REDIS_ERRORS, lost)

    async def _send(self, publisher: RespConnection, number: int, item: tuple[bytes, bool]) -> None:
        message, kept = item
        async with asyncio.timeout(REPLY_TIMEOUT_S):
            if not kept:  # a membership change or a stream relay: in order on the same connection, no position
                await publisher.command("PUBLISH", self._keys[1], b"M %s %d\n%s" % (self._node, number, message))
                return
            await publisher.command(
                "EVALSHA", self._script_sha, b"5", *self._keys, message, self._history_max, self._history_age_ms,
                uuid.uuid4().hex[:16], self._node, b"%d" % number, self._numbers_ttl_ms,
            )

    def _lost(self, publisher: RespConnection, exc: BaseException) -> None:
        self._down(exc)  # delivers here what is not back yet
        publisher.close()  # the listener reconnects

    async def _flush_queue(self, publisher: RespConnection) -> None:
        """Publish what was queued while Redis was down, in order; stops (keeping the rest) on an error."""
        try:
            await self.outage.flush(partial(self._send, publisher), lambda: self._publisher is publisher)
        except REDIS_ERRORS as exc:
            self._lost(publisher, exc)
            return
        if self.outage.queue:
            logger.info("outage queue: %d publications wait for the next connection", len(self.outage.queue))

    async def replay(self, epoch: object, after: object, upto: int) -> list[Entry] | None:
        """The stream's publications after offset ``after`` up to ``upto``, oldest first; None when the
        stream does not reach back that far (or Redis cannot be asked)."""
        if epoch != self.epoch or type(after) is not int or after < 0:
            return None
        if after >= upto:
            return []  # nothing this node delivered since: what follows comes live
        publisher = self._publisher
        read = await self._read_after(publisher, after) if publisher is not None else None
        if read is None:
            return None
        return [
            Entry(offset, 0.0, Targets.decode(rest.partition(b"\n")[0]), stamp_position(rest.partition(b"\n")[2], self._pos_prefix, offset))
            for offset, _, _, rest in read
            if offset <= upto
        ]

    async def _read_after(self, publisher: RespConnection, after: int) -> list[tuple[int, bytes, int, bytes]] | None:
        """Every stream entry after offset ``after``, oldest first, as (offset, node, number, targets and
        payload); None when the stream does not reach back that far or Redis fails."""
        found: list[tuple[int, bytes, int, bytes]] = []
        cursor = b"+"
        oldest = None
        try:
            while True:
                async with asyncio.timeout(REPLY_TIMEOUT_S):
                    page = await publisher.command("XREVRANGE", self._keys[0], cursor, b"-", b"COUNT", b"%d" % REPLAY_PAGE)
                for _, fields in page:
                    head, _, rest = fields[1].partition(b"\n")
                    _, entry_epoch, offset_bytes, node, number = head.split(b" ")
                    if entry_epoch != self._epoch_bytes:
                        return None
                    offset = int(offset_bytes)
                    if offset <= after:
                        found.reverse()
                        return found
                    oldest = offset
                    found.append((offset, node, int(number), rest))
                if len(page) < REPLAY_PAGE:
                    if oldest is None or oldest == after + 1:
                        found.reverse()
                        return found
                    return None
                cursor = b"(" + page[-1][0]
        except REDIS_ERRORS as exc:
            logger.warning("reading the redis stream failed: %s", exc)
            return None

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
                if self.history is not None:
                    self._held = []  # from the first message on: one may come with the SUBSCRIBE reply, before the catch-up
                connections.append(subscriber := await open_resp_connection(self._url, self._message))
                await asyncio.wait_for(subscriber.command("SUBSCRIBE", self._channel), REPLY_TIMEOUT_S)
                if self.history is not None:
                    await self._catch_up(publisher)
                self._publisher, attempt = publisher, 0
                logger.info("broker connected: redis channel %s", self._channel.decode())
                if self.outage.queue:
                    self._flusher = asyncio.get_running_loop().create_task(self._flush_queue(publisher), name="gateway-redis-queue")
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
                self._drop_held()
            await asyncio.sleep(RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)])
            attempt += 1

    async def _catch_up(self, publisher: RespConnection) -> None:
        """After (re)subscribing: deliver what the stream got since this node's last offset (other nodes'
        queued publications after an outage), then what arrived on the bus meanwhile, in offset order.
        When the stream cannot say (history lost or trimmed) the local devices are told to resynchronize.

        Bus messages are held from before the subscription (``_connect_and_listen``) until this is done: one
        delivered before the catch-up would move this node's offset past publications it has not delivered
        yet, and the catch-up would skip them (a node subscribing while another flushed its outage queue
        got the second queued publication with the SUBSCRIBE reply, and never the first). If it fails,
        ``_connect_and_listen`` drops them: the next connection's catch-up reads them from the stream."""
        self._script_sha = await asyncio.wait_for(publisher.command("SCRIPT", "LOAD", PUBLISH_SCRIPT), REPLY_TIMEOUT_S)
        epoch, offset = await asyncio.wait_for(publisher.command("MGET", self._keys[2], self._keys[3]), REPLY_TIMEOUT_S)
        newest = int(offset or 0)
        if epoch is None:  # an empty Redis: the next publication starts a history (and comes on the bus)
            self.epoch, self._epoch_bytes, self.offset = None, b"", 0
        elif not self._caught_up_once:
            self._new_epoch(epoch, newest)  # a node starting: nothing of the past is for it
        else:
            if epoch != self._epoch_bytes:
                self._new_epoch(epoch, 0)  # Redis lost the history and a new one began: from its start
            if newest > self.offset:
                missed = await self._read_after(publisher, self.offset)
                if missed is None:
                    self.offset = newest
                    resync_local(self._deliver, self.epoch, self.offset, "history")
                else:
                    for entry_offset, node, number, rest in missed:
                        self._kept(entry_offset, node, number, rest)
        self._caught_up_once = True
        held, self._held = self._held, None
        for message in held or ():
            self._message(message)

    def _drop_held(self) -> None:
        """After a failed (re)connection: forget the held publications (in the stream: the next catch-up
        delivers them) and deliver the rest (membership changes and relays, which no stream keeps)."""
        held, self._held = self._held, None
        for message in held or ():
            if message[:2] != b"H ":
                self._message(message)

    def _kept(self, offset: int, node: bytes, number: int, rest: bytes) -> None:
        """Deliver one kept publication here (unless this node delivered it while Redis was down)."""
        self.offset = offset
        if node == self._node and self.outage.came_back(number):
            return  # delivered here while Redis was down
        deliver_publication(self._deliver, rest, self._pos_prefix, offset)

    def _message(self, message: bytes) -> None:
        if self._held is not None:
            self._held.append(message)
            return
        kind = message[:2]
        if kind == b"H ":  # a kept publication: "H epoch offset node number"
            head, _, rest = message.partition(b"\n")
            _, epoch, offset_bytes, node, number = head.split(b" ")
            offset = int(offset_bytes)
            if epoch != self._epoch_bytes:
                self._new_epoch(epoch, 0)
            elif offset <= self.offset:
                return  # delivered by the catch-up already
            self._kept(offset, node, int(number), rest)
        elif kind == b"M ":  # a membership change sent through the history path
            head, _, rest = message.partition(b"\n")
            _, node, number = head.split(b" ")
            if node == self._node and self.outage.came_back(int(number)):
                return
            deliver_publication(self._deliver, rest)
        else:
            deliver_publication(self._deliver, message)

    def _new_epoch(self, epoch: bytes, offset: int) -> None:
        self._epoch_bytes = epoch
        self.epoch = epoch.decode()
        self._pos_prefix = position_prefix(epoch)
        self.offset = offset

    def _down(self, exc: BaseException) -> None:
        if self._publisher is not None:
            logger.warning("broker disconnected (redis): %s; delivering locally until it is back", exc)
        self._publisher = None
        self.outage.lost()  # ahead of what this node publishes from now on
