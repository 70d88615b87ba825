"""Which connections are open, by device; local delivery of one pre-encoded frame to many of them.

Delivery is synchronous: the frame is built once and handed to each connection's transport, with no
await per client (the pattern of websockets' ``broadcast()``). A connection whose send buffer passes its
bound (the transport's high-water mark) is removed at once and closes itself as a slow consumer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from itertools import chain, repeat
from operator import call
from typing import Protocol

from sonalyze.gateway.publication import Targets
from sonalyze.gateway.frames import text_frame
from sonalyze.gateway.registry import NO_TENANT, DeviceEntry, Snapshot


class Connection(Protocol):
    """What the manager needs of a connection (``ws_protocol.GatewayWebSocketProtocol`` is one).

    A connection is removed (:meth:`ConnectionManager.remove`) as soon as it stops being open (closing,
    too slow, lost), so delivery needs no per-connection check.
    """

    transport: asyncio.Transport
    """Where encoded frames are written; its high-water mark is the slow-consumer bound."""
    tenant_id: str | None
    """The tenant the connection's token named (None without authentication): for the registry."""


class ConnectionManager:
    def __init__(self, max_connections_per_device: int | None = None, retained_channels: frozenset[str] = frozenset()) -> None:
        self._by_device: dict[str, tuple[Connection, ...]] = {}
        self._writers: dict[str, tuple[Callable[[bytes], object], ...]] = {}
        """Per device, the bound ``transport.write`` of each connection: the fan-out loop touches nothing else."""
        self._open: set[Connection] = set()
        self._max_per_device = max_connections_per_device
        self._channels: dict[str, dict[Connection, str]] = {}
        """Per channel, its subscribed connections and their device ids."""
        self._subscriptions: dict[Connection, set[str]] = {}
        """Per connection with at least one subscription, its channels (to leave them on removal)."""
        self._retained = retained_channels
        self._last_frames: dict[str, bytes] = {}
        """Per retained channel, its latest frame: a new subscriber gets it at once."""

    def add(self, connection: Connection) -> None:
        """Track an open (maybe not yet identified) connection."""
        self._open.add(connection)

    def identify(self, connection: Connection, device_id: str) -> tuple[Connection, ...]:
        """Deliveries to ``device_id`` now reach ``connection`` too (a device may hold several).

        Over ``max_connections_per_device`` the oldest connections of the device are removed and returned:
        the caller closes them, telling them why.
        """
        connections = self._by_device.get(device_id, ())
        if connection in connections:
            return ()
        connections = (*connections, connection)
        evicted: tuple[Connection, ...] = ()
        if self._max_per_device is not None and len(connections) > self._max_per_device:
            cut = len(connections) - self._max_per_device
            evicted, connections = connections[:cut], connections[cut:]
        self._set(device_id, connections)
        return evicted

    def remove(self, connection: Connection, device_id: str | None) -> None:
        """Stop delivering to ``connection`` (idempotent)."""
        self._open.discard(connection)
        if self._subscriptions:
            self._leave_all(connection)
        connections = self._by_device.get(device_id, ()) if device_id is not None else ()
        if connection in connections:
            self._set(device_id, tuple(other for other in connections if other is not connection))  # type: ignore[arg-type]

    def subscribe(self, connection: Connection, device_id: str, channel: str) -> bool:
        """Deliveries to ``channel`` now reach ``connection``; False when it already did."""
        members = self._channels.setdefault(channel, {})
        if connection in members:
            return False
        members[connection] = device_id
        self._subscriptions.setdefault(connection, set()).add(channel)
        last_frame = self._last_frames.get(channel)
        if last_frame is not None:
            connection.transport.write(last_frame)
        return True

    def unsubscribe(self, connection: Connection, channel: str) -> bool:
        """Stop delivering ``channel`` to ``connection``; False when it was not subscribed."""
        members = self._channels.get(channel)
        if members is None or members.pop(connection, None) is None:
            return False
        if not members:
            del self._channels[channel]
        channels = self._subscriptions[connection]
        channels.discard(channel)
        if not channels:
            del self._subscriptions[connection]
        return True

    def _change_membership(self, device_ids: Iterable[str], join: str | None, leave: str | None) -> tuple[int, int]:
        """Every connection of ``device_ids`` joins or leaves a channel: (connections changed, devices found)."""
        changed = devices = 0
        for device_id in set(device_ids):
            connections = self._by_device.get(device_id, ())
            devices += bool(connections)
            for connection in connections:
                if join is not None:
                    changed += self.subscribe(connection, device_id, join)
                else:
                    changed += self.unsubscribe(connection, leave)  # type: ignore[arg-type]
        return changed, devices

    def registry_snapshot(self) -> Snapshot:
        """What this instance holds, for the connection registry (once per heartbeat, not per message)."""
        devices: dict[str, DeviceEntry] = {}
        for device_id, connections in self._by_device.items():
            channels: set[str] = set()
            for connection in connections:
                channels.update(self._subscriptions.get(connection, ()))
            devices[device_id] = DeviceEntry(connections[0].tenant_id, len(connections), tuple(sorted(channels)))
        rooms = {
            channel: tuple(sorted({f"{connection.tenant_id or NO_TENANT}:{device_id}" for connection, device_id in members.items()}))
            for channel, members in self._channels.items()
        }
        return devices, rooms

    def rewire(self, connection: Connection, device_id: str) -> None:
        """``connection.transport`` changed: deliveries to ``device_id`` use the new one."""
        connections = self._by_device.get(device_id, ())
        if connection in connections:
            self._set(device_id, connections)

    def channels_of(self, connection: Connection) -> frozenset[str]:
        """The channels ``connection`` is subscribed to."""
        return frozenset(self._subscriptions.get(connection, ()))

    def _leave_all(self, connection: Connection) -> None:
        for channel in tuple(self._subscriptions.get(connection, ())):
            self.unsubscribe(connection, channel)

    def open_connections(self) -> frozenset[Connection]:
        """Every open connection, identified or not (a copy: safe while connections close)."""
        return frozenset(self._open)

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
        writers = self._writers
        found = list(map(writers.__getitem__, writers.keys() & device_ids))  # deduplicated, in C
        return _write_all(chain.from_iterable(found), text_frame(payload)), len(found)

    def deliver_to(self, targets: Targets, payload: bytes) -> tuple[int, int]:
        """Local delivery of one publication (what every broker calls): devices, channels or everyone."""
        if targets.device_ids is not None:
            if targets.join is None and targets.leave is None:
                return self.deliver(targets.device_ids, payload)
            return self._change_membership(targets.device_ids, targets.join, targets.leave)
        frame = text_frame(payload)
        if targets.everyone:
            all_writers = list(self._writers.values())  # a slow reader removed mid-loop changes the dict
            return _write_all(chain.from_iterable(all_writers), frame), len(all_writers)
        members: dict[Connection, str] = {}
        for channel in targets.channels or ():
            if channel in self._retained:
                self._last_frames[channel] = frame
            subscribed = self._channels.get(channel)
            if subscribed:
                members.update(subscribed)  # a connection in two target channels gets it once
        for connection in members:
            connection.transport.write(frame)
        return len(members), len(set(members.values()))

    def _set(self, device_id: str, connections: tuple[Connection, ...]) -> None:
        if connections:
            self._by_device[device_id] = connections
            self._writers[device_id] = tuple(connection.transport.write for connection in connections)
        else:
            del self._by_device[device_id], self._writers[device_id]


def _write_all(writers: Iterable[Callable[[bytes], object]], frame: bytes) -> int:
    """Call every ``transport.write`` with the same frame, the loop in C (no bytecode per delivery).

    ``writers`` is taken whole first: a connection removed while writing (a slow reader) changes the
    registry, never this list.
    """
    writers = list(writers)
    deque(map(call, writers, repeat(frame)), maxlen=0)
    return len(writers)
