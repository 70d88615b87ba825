"""Which connections are open, by device; local delivery of one pre-encoded frame to many of them.

Delivery is synchronous: the frame is built once and handed to each connection's transport, with no
await per client (the pattern of websockets' ``broadcast()``). A connection whose send buffer passes its
bound (the transport's high-water mark) is removed at once and closes itself as a slow consumer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Protocol

from sonalyze.gateway.frames import text_frame


class Connection(Protocol):
    """What the manager needs of a connection (``ws_protocol.GatewayWebSocketProtocol`` is one).

    A connection is removed (:meth:`ConnectionManager.remove`) as soon as it stops being open (closing,
    too slow, lost), so delivery needs no per-connection check.
    """

    transport: asyncio.Transport
    """Where encoded frames are written; its high-water mark is the slow-consumer bound."""


class ConnectionManager:
    def __init__(self) -> None:
        self._by_device: dict[str, tuple[Connection, ...]] = {}
        self._writers: dict[str, tuple[Callable[[bytes], object], ...]] = {}
        """Per device, the bound ``transport.write`` of each connection: the fan-out loop touches nothing else."""
        self._open: set[Connection] = set()

    def add(self, connection: Connection) -> None:
        """Track an open (maybe not yet identified) connection."""
        self._open.add(connection)

    def identify(self, connection: Connection, device_id: str) -> None:
        """Deliveries to ``device_id`` now reach ``connection`` too (a device may hold several)."""
        connections = self._by_device.get(device_id, ())
        if connection not in connections:
            self._set(device_id, (*connections, connection))

    def remove(self, connection: Connection, device_id: str | None) -> None:
        """Stop delivering to ``connection`` (idempotent)."""
        self._open.discard(connection)
        connections = self._by_device.get(device_id, ()) if device_id is not None else ()
        if connection in connections:
            self._set(device_id, tuple(other for other in connections if other is not connection))  # type: ignore[arg-type]

    @property
    def open_count(self) -> int:
        return len(self._open)

    @property
    def device_count(self) -> int:
        return len(self._by_device)

    def deliver(self, device_ids: Iterable[str], payload: bytes) -> tuple[int, int]:
        """Write ``payload`` (one JSON text message) to every connection of ``device_ids``.

        Returns (connections written to, devices with a connection). The frame is encoded once and the
        same bytes go to each transport: no await, no per-client copy.
        """
        frame = text_frame(payload)
        writers = self._writers
        found = [writers[device_id] for device_id in writers.keys() & device_ids]  # deduplicated, in C
        delivered = 0
        for device_writers in found:  # tuples: a removal during the loop replaces them, never mutates
            for write in device_writers:
                write(frame)
            delivered += len(device_writers)
        return delivered, len(found)

    def _set(self, device_id: str, connections: tuple[Connection, ...]) -> None:
        if connections:
            self._by_device[device_id] = connections
            self._writers[device_id] = tuple(connection.transport.write for connection in connections)
        else:
            del self._by_device[device_id], self._writers[device_id]
