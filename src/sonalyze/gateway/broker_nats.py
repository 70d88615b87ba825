"""NATS broker: one subject per cluster, every node subscribed, each delivering locally.

Without a push history (``PUSH_HISTORY_MAX=0``) publications are core NATS messages. nats-py reconnects by
itself and re-subscribes; while it is not connected a publish is delivered locally instead of being
buffered (a buffered one would reach this node twice once the bus is back).

With a push history (issue 18) the subject is bound to a JetStream stream (memory storage, ``max_msgs`` =
``PUSH_HISTORY_MAX``, ``max_age`` = ``PUSH_HISTORY_AGE_S``, oldest discarded): a publication's position is
its stream sequence, and the epoch is the stream's creation time, so a stream that was lost and created
again (a NATS restart) is a new history. Each node reads the stream through an ephemeral push consumer
that starts after the last sequence it delivered: live delivery and the catch-up after an outage are one
ordered read, with nothing held. Membership changes go through the stream too (in order with the
publications of the same node) but carry no position and are never replayed; stream relays
(``positioned=False``) stay core NATS on ``<subject>.relay``.

While NATS is unreachable (disconnected, or a publish not acknowledged within ``REPLY_TIMEOUT_S``: a
frozen server) a node delivers its publications locally and queues them (at most
``PUSH_OUTAGE_QUEUE_MAX``); when NATS is back they are published in order and this node skips the ones it
delivered already. Each carries ``Nats-Msg-Id: <node>.<number>``: JetStream appends a publication that
reached a frozen server and is sent again once (its duplicate window).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from sonalyze.gateway.outage import OutageQueue
from sonalyze.gateway.publication import (
    Deliver, Targets, deliver_publication, encode_publication, position_prefix, resync_local, stamp_position,
)
from sonalyze.gateway.push_history import Entry

logger = logging.getLogger("sonalyze.gateway.broker")

CONNECT_RETRY_S = 0.5
REPLY_TIMEOUT_S = 2.0
RETRY_DELAYS_S = (0.1, 0.2, 0.5, 1.0)
DUPLICATE_WINDOW_MAX_S = 120.0
"""JetStream's default duplicate window (the stream's is never longer than its ``max_age``)."""
NATS_ERRORS = (NatsError, OSError, asyncio.TimeoutError)
STREAM_NAME_FORBIDDEN = re.compile(r"[\s.*>/\\]")


class NatsBroker:
    name = "nats"

    def __init__(
        self, url: str, subject: str, deliver: Deliver, history_max: int = 0, history_age_s: float = 300.0, queue_max: int = 10_000
    ) -> None:
        self._url = url
        self._subject = subject
        self._deliver = deliver
        self._client: Client | None = None
        self._starter: asyncio.Task[None] | None = None
        self.history = self if history_max else None
        """Itself when it keeps a push history (what ``Gateway.history`` resumes from)."""
        self._history_max = history_max
        self._history_age_s = history_age_s
        self._stream = STREAM_NAME_FORBIDDEN.sub("_", subject)
        self._relay_subject = subject + ".relay"
        self._js: JetStreamContext | None = None
        self.outage: OutageQueue[bytes] = OutageQueue(deliver, queue_max)
        """This node's publications through an outage; what it sends: the stream message."""
        self.queue = self.outage.queue
        """Publications waiting for the bus (the ``gateway_outage_queue`` metric)."""
        self._ready = False
        """Caught up and publishing (with a history): False while NATS is down or a catch-up runs."""
        self._recovery: asyncio.Task[None] | None = None
        self._losses = 0
        """Counts losses of NATS: a catch-up that began before the latest one does not make the node ready."""
        self._consumer: Any = None
        self._generation = 0
        """Counts consumers: a message of an earlier one (still arriving after a reconnect) is ignored."""
        self._caught_up_once = False
        self.epoch: str | None = None
        self._pos_prefix = b""
        self.offset = 0
        """The last stream sequence this node delivered: connections identified now get later pushes live."""

    @property
    def connected(self) -> bool:
        client = self._client
        return client is not None and client.is_connected and (self.history is None or self._ready)

    @property
    def queue_dropped(self) -> int:
        """Publications dropped from a full outage queue (the ``gateway_outage_queue_dropped`` metric)."""
        return self.outage.dropped

    async def start(self) -> None:
        self._starter = asyncio.get_running_loop().create_task(self._connect(), name="gateway-nats-broker")

    async def publish(self, targets: Any, payload: bytes, positioned: bool = True) -> tuple[int | None, int | None]:
        """Without a history: core NATS. With one: through the stream (a membership change too, unpositioned);
        ``positioned=False`` with a payload (a stream relay): core NATS, never kept."""
        client = self._client
        if self.history is not None and (positioned or not payload):
            return await self._publish_kept(targets, payload)
        subject = self._subject if self.history is None else self._relay_subject
        if client is not None and client.is_connected:
            try:
                await client.publish(subject, encode_publication(targets, payload))
                return None, None
            except (NatsError, OSError) as exc:
                logger.warning("broker publish failed (nats): %s; delivering locally", exc)
        return self._deliver(targets, payload)

    async def _publish_kept(self, targets: Any, payload: bytes) -> tuple[int | None, int | None]:
        """Into the stream (in order behind anything queued); NATS down: deliver here and queue (:class:`OutageQueue`;
        JetStream drops a ``Nats-Msg-Id`` it saw)."""
        number = self.outage.next_number()
        message = b"%s %s %d\n%s" % (b"K" if payload else b"M", self.outage.node_bytes, number, encode_publication(targets, payload))
        send, lost = (self._send, self._down) if self._ready else (None, None)
        return await self.outage.publish(number, targets, payload, message, send, NATS_ERRORS, lost)

    async def _send(self, number: int, message: bytes) -> None:
        if self._js is None:
            raise ConnectionError("the nats broker is closed")
        await self._js.publish(
            self._subject, message, timeout=REPLY_TIMEOUT_S, stream=self._stream, headers={"Nats-Msg-Id": f"{self.outage.node}.{number}"}
        )

    def _down(self, exc: BaseException | None) -> None:
        """NATS is lost (or this node's read of the stream is): deliver locally and queue until recovered."""
        if self._ready and exc is not None:
            logger.warning("broker not ready (nats): %s; delivering locally until it is back", exc)
        self._ready = False
        self._losses += 1
        self.outage.lost()  # ahead of what this node publishes from now on
        if self._js is not None and (self._recovery is None or self._recovery.done()):
            self._recovery = asyncio.get_running_loop().create_task(self._recover(), name="gateway-nats-recovery")

    async def _recover(self) -> None:
        """Until this node is caught up and its queue is in the stream: after a reconnect, or after a publish
        that was not acknowledged (the connection may look alive: a frozen server)."""
        attempt = 0
        while True:
            client = self._client
            if client is not None and client.is_connected:
                try:
                    if not self._ready:
                        losses = self._losses
                        await self._catch_up()
                        if losses != self._losses:
                            continue  # lost again meanwhile: catch up again
                        self._ready = True
                        logger.info("broker connected: nats stream %s", self._stream)
                    await self.outage.flush(self._send, lambda: self._ready)
                    if self._ready:
                        return
                except NATS_ERRORS as exc:
                    self._down(exc)
                    if attempt == 0:  # e.g. a server without JetStream (nats-server -js), which the history needs
                        logger.warning("broker not ready (nats JetStream stream %s): %s; retrying", self._stream, exc)
            await asyncio.sleep(RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)])
            attempt += 1

    async def _ensure_stream(self) -> api.StreamInfo:
        assert self._js is not None
        config = api.StreamConfig(
            name=self._stream, subjects=[self._subject], storage=api.StorageType.MEMORY, discard=api.DiscardPolicy.OLD,
            max_msgs=self._history_max, max_age=self._history_age_s,
            duplicate_window=min(DUPLICATE_WINDOW_MAX_S, self._history_age_s),
        )
        try:
            return await self._js.add_stream(config)
        except BadRequestError:  # it exists with other bounds: this node's configuration wins
            return await self._js.update_stream(config)

    async def _catch_up(self) -> None:
        """(Re)start this node's consumer after the last sequence it delivered: what the stream got meanwhile
        (other nodes' queued publications after an outage) comes first, then live ones, in stream order.
        When the stream no longer reaches back that far the local devices are told to resynchronize."""
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            self._generation += 1
            try:
                await consumer.unsubscribe()
            except NATS_ERRORS:
                pass
        info = await self._ensure_stream()
        epoch = "%x" % round(info.created.timestamp() * 1e6) if info.created else self._stream
        first, last = info.state.first_seq, info.state.last_seq
        if not self._caught_up_once:
            self._new_epoch(epoch, last)  # a node starting: nothing of the past is for it
        elif epoch != self.epoch:
            self._new_epoch(epoch, 0)  # NATS lost the history and a new one began: from its start
        if last > self.offset and first > self.offset + 1:
            self.offset = first - 1
            resync_local(self._deliver, self.epoch, self.offset, "history")
        await self._subscribe(self.offset + 1)
        self._caught_up_once = True

    async def _subscribe(self, start: int) -> None:
        assert self._js is not None
        self._generation += 1
        generation = self._generation

        async def on_message(message: Any) -> None:
            if generation == self._generation:
                self._message(message)

        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start, ack_policy=api.AckPolicy.NONE,
            mem_storage=True, inactive_threshold=max(5.0, 2 * REPLY_TIMEOUT_S),
        )
        self._consumer = await self._js.subscribe(self._subject, stream=self._stream, cb=on_message, config=config, manual_ack=True)

    def _message(self, message: Any) -> None:
        sequence = message.metadata.sequence.stream
        if sequence <= self.offset:
            return  # delivered already (a consumer restarted after a reconnect)
        if sequence != self.offset + 1:  # a gap (trimmed, or dropped on the way): catch up again from it
            self._generation += 1
            self._down(ConnectionError(f"nats stream gap: {self.offset + 1} to {sequence - 1} missing"))
            return
        self.offset = sequence
        head, _, rest = message.data.partition(b"\n")
        kind, node, number = head.split(b" ")
        if node == self.outage.node_bytes and self.outage.came_back(int(number)):
            return  # delivered here while NATS was down
        deliver_publication(self._deliver, rest, None if kind == b"M" else self._pos_prefix, sequence)  # M: a membership change

    def _new_epoch(self, epoch: str, offset: int) -> None:
        self.epoch = epoch
        self._pos_prefix = position_prefix(epoch.encode())
        self.offset = offset

    async def replay(self, epoch: object, after: object, upto: int) -> list[Entry] | None:
        """The stream's publications after sequence ``after`` up to ``upto``, oldest first; None when the
        stream does not reach back that far (or NATS cannot be asked)."""
        if epoch != self.epoch or type(after) is not int or after < 0:
            return None
        if after >= upto:
            return []  # nothing this node delivered since: what follows comes live
        if self._js is None:
            return None
        found: list[Entry] = []
        reader = None
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S * 5):
                info = await self._js.stream_info(self._stream)
                if info.state.first_seq > after + 1 or "%x" % round(info.created.timestamp() * 1e6) != epoch:
                    return None
                config = api.ConsumerConfig(
                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1,
                    ack_policy=api.AckPolicy.NONE, mem_storage=True, inactive_threshold=5.0,
                )
                reader = await self._js.subscribe(self._subject, stream=self._stream, config=config, manual_ack=True)
                for sequence in range(after + 1, upto + 1):
                    message = await reader.next_msg(timeout=REPLY_TIMEOUT_S)
                    if message.metadata.sequence.stream != sequence:
                        return None  # trimmed while reading
                    head, _, rest = message.data.partition(b"\n")
                    if head[:1] != b"K":
                        continue  # a membership change: live state, not a push
                    header, _, payload = rest.partition(b"\n")
                    found.append(Entry(sequence, 0.0, Targets.decode(header), stamp_position(payload, self._pos_prefix, sequence)))
        except (*NATS_ERRORS, NotFoundError) as exc:
            logger.warning("reading the nats stream failed: %s", exc)
            return None
        finally:
            if reader is not None:
                try:
                    await reader.unsubscribe()
                except NATS_ERRORS:
                    pass
        return found

    async def close(self) -> None:
        self._js = None  # no recovery starts any more
        for task in (self._starter, self._recovery):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
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
            self._client = client
            if self.history is None:
                await client.subscribe(self._subject, cb=self._core_message)
                logger.info("broker connected: nats subject %s", self._subject)
                return
            self._js = client.jetstream(timeout=REPLY_TIMEOUT_S)
            await client.subscribe(self._relay_subject, cb=self._core_message)
            self._down(None)  # not caught up yet: the recovery starts the consumer
            return

    async def _core_message(self, message: Any) -> None:
        deliver_publication(self._deliver, message.data)

    async def _disconnected(self) -> None:
        logger.warning("broker disconnected (nats); delivering locally until it is back")
        self._down(None)

    async def _reconnected(self) -> None:
        logger.info("broker reconnected (nats)")
        self._down(None)  # the stream may be new (a NATS restart) and this node's consumer gone: catch up again

    async def _error(self, exc: Exception) -> None:
        logger.debug("nats: %s", exc)
