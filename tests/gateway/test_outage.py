"""The outage queue both brokers with a push history share (sonalyze.gateway.outage), driven without a bus.

The brokers' own tests (test_broker_redis.py, test_cluster.py and test_resume_cluster.py with [redis] and
[nats]) check it through real servers; these pin down each rule on its own.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sonalyze.gateway.outage import FLUSH_BATCH, OutageQueue


class Node:
    """One node's side: what it delivered to its devices, what reached the bus, and when it saw the bus lost."""

    def __init__(self, queue_max: int = 100) -> None:
        self.delivered: list[bytes] = []
        self.bus: list[tuple[int, bytes]] = []
        self.lost_with: list[BaseException] = []
        self.failing: BaseException | None = None
        self.outage: OutageQueue[bytes] = OutageQueue(self.deliver, queue_max)

    def deliver(self, _targets: Any, payload: bytes) -> tuple[int, int]:
        self.delivered.append(payload)
        return 1, 1

    async def send(self, number: int, message: bytes) -> None:
        await asyncio.sleep(0)  # a round trip: other publications may come meanwhile
        if self.failing is not None:
            raise self.failing
        self.bus.append((number, message))

    def lost(self, exc: BaseException) -> None:
        self.lost_with.append(exc)
        self.outage.lost()

    async def publish(self, payload: bytes, up: bool = True) -> tuple[int | None, int | None]:
        number = self.outage.next_number()
        send, lost = (self.send, self.lost) if up else (None, None)
        return await self.outage.publish(number, None, payload, payload, send, (ConnectionError,), lost)

    def read_back(self) -> None:
        """The bus brings back what it took; a publication delivered here already is skipped."""
        for number, message in self.bus:
            if not self.outage.came_back(number):
                self.delivered.append(message)
        self.bus.clear()


async def test_with_the_bus_up_a_publication_is_sent_numbered_and_delivered_when_it_comes_back() -> None:
    node = Node()
    assert await node.publish(b"a") == (None, None)
    assert await node.publish(b"b") == (None, None)
    assert node.bus == [(1, b"a"), (2, b"b")] and node.delivered == []
    node.read_back()
    assert node.delivered == [b"a", b"b"]
    node.outage.lost()  # nothing is unseen any more: nothing is delivered again
    assert node.delivered == [b"a", b"b"] and not node.outage.queue


async def test_with_the_bus_down_a_publication_is_delivered_here_at_once_queued_and_skipped_when_it_comes_back() -> None:
    node = Node()
    assert await node.publish(b"a", up=False) == (1, 1)
    assert node.delivered == [b"a"] and list(node.outage.queue) == [(1, b"a")]
    await node.outage.flush(node.send, lambda: True)
    assert not node.outage.queue and node.bus == [(1, b"a")]
    node.read_back()
    assert node.delivered == [b"a"]  # once


async def test_losing_the_bus_delivers_what_is_not_back_yet_in_order_ahead_of_later_publications() -> None:
    node = Node()
    await node.publish(b"a")
    await node.publish(b"b")
    number, message = node.bus.pop(0)  # a came back on the bus; b did not
    assert not node.outage.came_back(number)
    node.delivered.append(message)
    node.outage.lost()
    await node.publish(b"c", up=False)
    assert node.delivered == [b"a", b"b", b"c"]
    node.read_back()  # b arrives after all (it had reached the bus): skipped
    assert node.delivered == [b"a", b"b", b"c"]


async def test_a_failed_send_calls_lost_delivers_it_here_and_queues_it_for_the_other_nodes() -> None:
    node = Node()
    await node.publish(b"a")
    node.failing = ConnectionError("gone")
    assert await node.publish(b"b") == (None, None)
    assert node.lost_with == [node.failing]
    assert node.delivered == [b"a", b"b"] and list(node.outage.queue) == [(2, b"b")]
    node.failing = None
    await node.outage.flush(node.send, lambda: True)
    node.read_back()
    assert node.delivered == [b"a", b"b"]  # each once, in order


async def test_an_error_not_of_the_bus_is_raised_and_nothing_is_queued() -> None:
    node = Node()
    node.failing = ValueError("a bug")
    with pytest.raises(ValueError):
        await node.publish(b"a")
    assert node.lost_with == [] and not node.outage.queue


async def test_while_the_queue_is_being_sent_a_publication_waits_behind_it() -> None:
    node = Node()
    for payload in (b"a", b"b"):
        await node.publish(payload, up=False)
    flushing = asyncio.create_task(node.outage.flush(node.send, lambda: True))
    await asyncio.sleep(0)  # the first batch is on its way
    assert await node.publish(b"c") == (None, None)
    assert node.bus == [] and [number for number, _ in node.outage.queue] == [1, 2, 3]  # not sent past a and b
    await flushing  # the next batch takes it
    assert [number for number, _ in node.bus] == [1, 2, 3] and not node.outage.queue
    assert node.delivered == [b"a", b"b"]
    node.read_back()
    assert node.delivered == [b"a", b"b", b"c"]


async def test_the_queue_is_sent_in_batches_and_a_failed_batch_stays_queued_whole() -> None:
    node = Node(queue_max=10 * FLUSH_BATCH)
    for index in range(2 * FLUSH_BATCH + 1):
        await node.publish(b"%d" % index, up=False)
    sent: list[int] = []

    async def send(number: int, message: bytes) -> None:
        sent.append(number)
        if len(sent) == FLUSH_BATCH + 1:
            raise ConnectionError("lost in the second batch")

    with pytest.raises(ConnectionError):
        await node.outage.flush(send, lambda: True)
    assert len(sent) == 2 * FLUSH_BATCH  # a batch is in flight at once
    assert node.outage.queue[0][0] == FLUSH_BATCH + 1 and len(node.outage.queue) == FLUSH_BATCH + 1
    await node.outage.flush(node.send, lambda: False)  # not sending (the bus was lost again): nothing moves
    assert len(node.outage.queue) == FLUSH_BATCH + 1


async def test_a_full_queue_drops_its_oldest_and_counts_it() -> None:
    node = Node(queue_max=2)
    for payload in (b"a", b"b", b"c"):
        await node.publish(payload, up=False)
    assert [number for number, _ in node.outage.queue] == [2, 3] and node.outage.dropped == 1
    node.bus.append((1, b"a"))  # had it reached the bus after all, it would be delivered (no longer marked local)
    node.read_back()
    assert node.delivered == [b"a", b"b", b"c", b"a"]


@pytest.mark.parametrize("scheme", ["redis", "nats"])
async def test_a_broker_with_its_bus_unreachable_shows_its_queue_and_drops_to_the_metrics(scheme: str) -> None:
    """What ``gateway.main`` reads for ``gateway_outage_queue`` and ``gateway_outage_queue_dropped``."""
    from sonalyze.gateway.broker import create_broker
    from sonalyze.gateway.publication import Targets
    from tests.support.servers import free_port

    delivered: list[bytes] = []
    broker = create_broker(
        f"{scheme}://127.0.0.1:{free_port()}", "unreachable:", lambda _targets, payload: delivered.append(payload) or (1, 1), 100, queue_max=2
    )
    await broker.start()
    try:
        for payload in (b'{"n":1}', b'{"n":2}', b'{"n":3}'):
            assert await broker.publish(Targets(everyone=True), payload) == (1, 1)
        assert delivered == [b'{"n":1}', b'{"n":2}', b'{"n":3}']  # here at once
        assert len(getattr(broker, "queue", ())) == 2 and getattr(broker, "queue_dropped", 0) == 1
    finally:
        await broker.close()
