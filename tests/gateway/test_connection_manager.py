"""Local delivery with plain objects: one encoding per broadcast, every connection of a device."""

from __future__ import annotations

import asyncio

from sonalyze.gateway.broker import MemoryBroker
from sonalyze.gateway.connection_manager import ConnectionManager
from sonalyze.gateway.frames import text_frame


class Recorder:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write(self, frame: bytes) -> None:
        self.frames.append(frame)


class FakeConnection:
    def __init__(self) -> None:
        self.transport = Recorder()


def test_every_open_connection_of_each_target_gets_the_same_frame_object() -> None:
    manager = ConnectionManager()
    a1, a2, b, closing, other = (FakeConnection() for _ in range(5))
    for connection, device_id in ((a1, "a"), (a2, "a"), (b, "b"), (closing, "c"), (other, "z")):
        manager.add(connection)
        manager.identify(connection, device_id)
    manager.remove(closing, "c")
    payload = b'{"type":"event","event":"x","data":{}}'
    assert manager.deliver(["a", "b", "a", "c", "nobody"], payload) == (3, 2)
    frames = a1.transport.frames + a2.transport.frames + b.transport.frames
    assert frames == [text_frame(payload)] * 3
    assert frames[0] is frames[1] is frames[2]  # encoded once, the same bytes written to each transport
    assert closing.transport.frames == [] and other.transport.frames == []


def test_removed_connections_stop_receiving_and_counts_follow() -> None:
    manager = ConnectionManager()
    first, second = FakeConnection(), FakeConnection()
    for connection in (first, second):
        manager.add(connection)
        manager.identify(connection, "phone")
    manager.identify(first, "phone")  # identifying twice registers once
    assert (manager.open_count, manager.device_count) == (2, 1)
    manager.remove(first, "phone")
    assert asyncio.run(MemoryBroker(manager.deliver).publish(["phone"], b"{}")) == (1, 1)
    manager.remove(second, "phone")
    assert (manager.open_count, manager.device_count) == (0, 0)
    assert manager.deliver(["phone"], b"{}") == (0, 0)
