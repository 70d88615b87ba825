"""Redis pub/sub broker: one channel per cluster, every node subscribed, each delivering locally.

On redis-py's asyncio client with hiredis as its parser, the gateway's one Redis client (issue 16; what it
costs against the own RESP client it replaced: bench/gateway_redis_client.md). Each connection attempt
opens one client with two connections: one sends the commands in the order they were issued (this node's
publications keep their order on the bus), pipelined by one task (what is issued while a batch awaits its
replies goes as the next batch), and a ``PubSub`` subscription read by one task that hands each message to
local delivery as it is read. Pub/sub channels are server-wide: the URL's database number does not matter.

redis-py does not retry here (``Retry(NoBackoff(), 0)``; by default its ``PubSub`` connects again and
resubscribes by itself, and the node would miss what was published in between without catching up, and a
retried ``PUBLISH`` could arrive twice). Any failure on either connection reaches the broker and ends
both; the broker connects again itself, subscribes, and catches up from the stream. Commands issued
behind a failed one fail at once (they go to the outage queue) instead of waiting for a new connection.

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
import uuid
from functools import partial
from typing import Any

import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sonalyze.gateway.outage import OutageQueue
from sonalyze.gateway.publication import (
    Deliver, Targets, deliver_publication, encode_publication, position_prefix, resync_local, stamp_position,
)
from sonalyze.gateway.push_history import Entry

logger = logging.getLogger("sonalyze.gateway.broker")

RECONNECT_DELAYS_S = (0.1, 0.2, 0.5, 1.0, 2.0)
CONNECT_TIMEOUT_S = 1.0
REPLY_TIMEOUT_S = 2.0
"""Bounds every reply (redis-py's ``socket_timeout``), but for the subscription's reads, which wait for messages."""
REDIS_ERRORS = (OSError, RedisError)
"""What a failed command raises (``TimeoutError`` and the built-in ``ConnectionError`` are ``OSError``)."""


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
        self._client: redis.Redis | None = None
        """The connection attempt's client, until one of its connections fails: commands on another fail at once."""
        self._client_lost: asyncio.Future[BaseException] | None = None
        """Resolved (with the reason) when a command on ``_client`` failed: the listener connects again."""
        self._commands: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        """Commands issued and not yet sent, in order, with what waits for each reply."""
        self._commands_issued = asyncio.Event()
        self._publisher: redis.Redis | None = None
        """``_client`` once subscribed (and caught up): what publications go through."""
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
                await self._command(publisher, b"PUBLISH", self._channel, encode_publication(targets, payload))
            except REDIS_ERRORS:
                return self._deliver(targets, payload)  # lost on its way: this node's devices get it at least
            return None, None
        return self._deliver(targets, payload)  # the bus is down: this node's devices still get it

    async def _publish_kept(self, targets: Any, payload: bytes, kept: bool) -> tuple[int | None, int | None]:
        """Through the script when ``kept`` (in order behind anything queued), else as an ``M`` line on the same
        connection; Redis down: deliver here and queue (:class:`OutageQueue`; the script drops a number it saw)."""
        number = self.outage.next_number()
        publisher = self._publisher
        send, lost = (None, None) if publisher is None else (partial(self._send, publisher), partial(self._lost, publisher))
        return await self.outage.publish(number, targets, payload, (encode_publication(targets, payload), kept), send, REDIS_ERRORS, lost)

    async def _send(self, publisher: redis.Redis, number: int, item: tuple[bytes, bool]) -> None:
        message, kept = item
        if not kept:  # a membership change or a stream relay: in order on the same connection, no position
            await self._command(publisher, b"PUBLISH", self._keys[1], b"M %s %d\n%s" % (self._node, number, message))
            return
        await self._command(
            publisher, b"EVALSHA", self._script_sha, b"5", *self._keys, message, self._history_max, self._history_age_ms,
            uuid.uuid4().hex[:16], self._node, b"%d" % number, self._numbers_ttl_ms,
        )

    async def _command(self, client: redis.Redis, *args: Any) -> Any:
        """One command on ``client``'s connection, sent after every command issued before it; raises at once
        when the connection attempt of ``client`` has ended (and a failure ends it: :meth:`_send_commands`).
        Named in bytes, a command gets Redis's reply as hiredis parsed it (redis-py's response callbacks are
        looked up by ``str`` names)."""
        if client is not self._client:
            raise ConnectionError("the redis connection was lost")
        reply = asyncio.get_running_loop().create_future()
        self._commands.append((args, reply))
        self._commands_issued.set()
        return await reply

    async def _send_commands(self, client: redis.Redis) -> None:
        """For one connection attempt: send the commands in the order they were issued, pipelined (what is
        issued while a batch waits for its replies goes in the next batch, as one ``Pipeline``), and hand
        out the replies; on a failure, fail what was issued and end the attempt (:meth:`_lost`)."""
        batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        try:
            while True:
                await self._commands_issued.wait()
                self._commands_issued.clear()
                while self._commands:
                    batch, self._commands = self._commands, []
                    if len(batch) == 1:  # one command: without a pipeline's own cost
                        replies = [await client.execute_command(*batch[0][0])]
                    else:
                        pipeline = client.pipeline(transaction=False)
                        for args, _ in batch:
                            pipeline.execute_command(*args)
                        replies = await pipeline.execute(raise_on_error=False)
                    for (_, reply), value in zip(batch, replies):
                        if not reply.done():
                            if isinstance(value, Exception):
                                reply.set_exception(value)
                            else:
                                reply.set_result(value)
                    batch = []
        except REDIS_ERRORS as exc:
            self._lost(client, exc)
            self._fail_commands(batch, exc)
        except asyncio.CancelledError:  # the attempt ended: what was sent gets no reply
            self._fail_commands(batch, ConnectionError("the redis connection was closed"))
            raise

    def _fail_commands(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]], exc: BaseException) -> None:
        """What waits for ``batch`` and every command issued after it gets ``exc``."""
        waiting, self._commands = batch + self._commands, []
        for _, reply in waiting:
            if not reply.done():
                reply.set_exception(exc)

    def _lost(self, client: redis.Redis, exc: BaseException) -> None:
        """A command on ``client`` failed: the connection attempt ends (nothing more when it ended already)."""
        if client is self._client and self._client_lost is not None:
            self._client = None  # what waits behind fails at once
            self._client_lost.set_result(exc)  # the listener connects again
            self._down(exc)  # delivers here what is not back yet

    async def _flush_queue(self, publisher: redis.Redis) -> None:
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

    async def _read_after(self, client: redis.Redis, after: int) -> list[tuple[int, bytes, int, bytes]] | None:
        """Every stream entry after offset ``after``, oldest first, as (offset, node, number, targets and
        payload); None when the stream does not reach back that far or Redis fails."""
        found: list[tuple[int, bytes, int, bytes]] = []
        cursor = b"+"
        oldest = None
        try:
            while True:
                page = await self._command(client, b"XREVRANGE", self._keys[0], cursor, b"-", b"COUNT", b"%d" % REPLAY_PAGE)
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
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            client = redis.Redis.from_url(
                self._url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=REPLY_TIMEOUT_S, retry=Retry(NoBackoff(), 0)
            )  # its pool: the subscription's connection and the one the commands use, one batch at a time
            lost: asyncio.Future[BaseException] = loop.create_future()
            self._client, self._client_lost = client, lost
            tasks = [loop.create_task(self._send_commands(client), name="gateway-redis-commands")]
            try:
                if self.history is not None:
                    self._held = []  # from the first message on: one may come right after the SUBSCRIBE reply, before the catch-up
                subscription = client.pubsub()
                await subscription.subscribe(self._channel)  # connects and authenticates
                if await subscription.get_message(timeout=REPLY_TIMEOUT_S) is None:  # the SUBSCRIBE reply comes first
                    raise TimeoutError("redis did not confirm the subscription")
                reader = loop.create_task(self._read(subscription), name="gateway-redis-subscription")
                tasks.append(reader)
                if self.history is not None:
                    await self._catch_up(client)
                self._publisher, attempt = client, 0
                logger.info("broker connected: redis channel %s", self._channel.decode())
                if self.outage.queue:
                    self._flusher = loop.create_task(self._flush_queue(client), name="gateway-redis-queue")
                await asyncio.wait([reader, lost], return_when=asyncio.FIRST_COMPLETED)
                self._down(lost.result() if lost.done() else reader.exception() or ConnectionError("the subscription ended"))
            except REDIS_ERRORS as exc:
                self._down(exc)
                if attempt == 0:
                    logger.warning("broker not reachable (redis channel %s): %s; retrying", self._channel.decode(), exc)
            finally:
                self._publisher = self._client = None
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._fail_commands([], ConnectionError("the redis connection was closed"))  # issued, never sent
                await asyncio.gather(client.aclose(), return_exceptions=True)  # both connections (a dead one may fail to close)
                self._drop_held()
            await asyncio.sleep(RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)])
            attempt += 1

    async def _read(self, subscription: PubSub) -> None:
        """Hand each message of the subscription to ``_message`` as it is read; returns (raising) when the
        connection fails, which ends the connection attempt."""
        message = self._message
        while True:
            reply = await subscription.get_message(ignore_subscribe_messages=True, timeout=None)
            if reply is not None:
                message(reply["data"])

    async def _catch_up(self, client: redis.Redis) -> None:
        """After (re)subscribing: deliver what the stream got since this node's last offset (other nodes'
        queued publications after an outage), then what arrived on the bus meanwhile, in offset order.
        When the stream cannot say (history lost or trimmed) the local devices are told to resynchronize.

        Bus messages are held from before the subscription (``_connect_and_listen``) until this is done: one
        delivered before the catch-up would move this node's offset past publications it has not delivered
        yet, and the catch-up would skip them (a node subscribing while another flushed its outage queue
        got the second queued publication right after the SUBSCRIBE reply, and never the first). If it fails,
        ``_connect_and_listen`` drops them: the next connection's catch-up reads them from the stream."""
        self._script_sha = await self._command(client, b"SCRIPT", b"LOAD", PUBLISH_SCRIPT)
        epoch, offset = await self._command(client, b"MGET", self._keys[2], self._keys[3])
        newest = int(offset or 0)
        if epoch is None:  # an empty Redis: the next publication starts a history (and comes on the bus)
            self.epoch, self._epoch_bytes, self.offset = None, b"", 0
        elif not self._caught_up_once:
            self._new_epoch(epoch, newest)  # a node starting: nothing of the past is for it
        else:
            if epoch != self._epoch_bytes:
                self._new_epoch(epoch, 0)  # Redis lost the history and a new one began: from its start
            if newest > self.offset:
                missed = await self._read_after(client, self.offset)
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
