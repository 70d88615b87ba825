"""This node's kept publications across a bus outage: numbered, queued while the bus is down, delivered once here.

One part for both brokers with a push history (Redis and NATS JetStream). Each publication gets this node's
next number; the bus message carries the node and the number, so that when it comes back on the bus the
broker asks :meth:`OutageQueue.came_back` whether this node delivered it already. The rules:

* Bus up, nothing queued: the publication is sent and kept as *unseen* until it comes back.
* Bus up, the queue still being sent (after an outage): it is queued behind, to keep this node's order.
* Bus down: it is delivered to this node's devices at once and queued for the other nodes.
* The bus is lost (:meth:`OutageQueue.lost`): what is unseen is delivered here at once, ahead of anything
  published later (it may never come back), and skipped when it does come back.
* A full queue (``queue_max``) drops its oldest publication (counted in ``dropped``).

No I/O here: the broker passes in how to send (``send``) and what to do when the bus is lost.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from itertools import islice
from typing import Any, Generic, TypeVar

from sonalyze.gateway.publication import Deliver

logger = logging.getLogger("sonalyze.gateway.broker")

FLUSH_BATCH = 100
"""Queued publications in flight at a time when the queue is sent: one acknowledged round trip each never
drains the queue under a steady publish rate."""

M = TypeVar("M")
"""What the broker sends for one publication (its bus message, and whatever else its send needs)."""

Send = Callable[[int, M], Awaitable[object]]
"""Send this node's publication ``number`` to the bus; raises when the bus did not take it."""


class OutageQueue(Generic[M]):
    """This node's publication numbers, those not yet back from the bus, and the queue while the bus is down."""

    def __init__(self, deliver: Deliver, queue_max: int) -> None:
        self._deliver = deliver
        self.node = uuid.uuid4().hex[:12]
        """This node's name on the bus (with a number: one publication of one node)."""
        self.node_bytes = self.node.encode()
        self.number = 0
        """This node's last publication number."""
        self._local: set[int] = set()
        """Numbers of publications delivered here while the bus was down (skipped when they come back)."""
        self._unseen: dict[int, tuple[Any, bytes]] = {}
        """Publications on the bus (or on their way) not yet read back here, in order: delivered here at once
        when the bus is lost (before anything published later), then skipped."""
        self.queue: deque[tuple[int, M]] = deque()
        """Publications waiting for the bus, in order: (number, what to send)."""
        self.queue_max = queue_max
        self.dropped = 0
        """Publications dropped from a full queue since the start."""

    def next_number(self) -> int:
        self.number += 1
        return self.number

    async def publish(
        self, number: int, targets: Any, payload: bytes, message: M, send: Send[M] | None,
        errors: tuple[type[BaseException], ...], lost: Callable[[BaseException], None] | None,
    ) -> tuple[int | None, int | None]:
        """Publication ``number`` (from :meth:`next_number`): sent with ``send`` when the bus is up (``send`` and
        ``lost`` None: it is down) and nothing is queued, queued behind otherwise. When ``send`` raises one of
        ``errors`` the broker's ``lost`` is called (it calls :meth:`lost`, which delivers this one here too)
        and it is queued: the bus drops it if it got there. Returns what the broker's ``publish`` returns."""
        if send is not None and lost is not None:
            self._unseen[number] = (targets, payload)
            if not self.queue:
                try:
                    await send(number, message)
                except errors as exc:
                    lost(exc)
                    self.enqueue(number, message)  # for the other nodes
                return None, None
            self.enqueue(number, message)  # the queue is still being sent: keep the order
            return None, None
        self._local.add(number)
        self.enqueue(number, message)
        return self._deliver(targets, payload)  # the bus is down: this node's devices get it now

    def enqueue(self, number: int, message: M) -> None:
        if len(self.queue) >= self.queue_max:
            dropped, _ = self.queue.popleft()
            self._local.discard(dropped)
            self.dropped += 1
            logger.warning("outage queue full (%d): dropped the oldest publication", self.queue_max)
        self.queue.append((number, message))

    def lost(self) -> None:
        """The bus is lost: deliver here what has not come back yet, in order, and skip it when it does."""
        unseen, self._unseen = self._unseen, {}
        for number, (targets, payload) in unseen.items():
            self._local.add(number)
            self._deliver(targets, payload)

    def came_back(self, number: int) -> bool:
        """This node's publication ``number`` was read from the bus: True when it was delivered here already."""
        self._unseen.pop(number, None)
        if number in self._local:
            self._local.discard(number)
            return True
        return False

    async def flush(self, send: Send[M], sending: Callable[[], bool]) -> None:
        """Send the queue in order, ``FLUSH_BATCH`` in flight at a time, while ``sending()``; a batch leaves the
        queue once all of it was taken. Raises the first failure of a batch (all of it stays queued: the bus
        drops what it took already when it is sent again)."""
        while self.queue and sending():
            batch = list(islice(self.queue, FLUSH_BATCH))
            results = await asyncio.gather(*[send(number, message) for number, message in batch], return_exceptions=True)
            failed = next((result for result in results if isinstance(result, BaseException)), None)
            if failed is not None:
                raise failed
            for number, _ in batch:
                if self.queue and self.queue[0][0] == number:
                    self.queue.popleft()
