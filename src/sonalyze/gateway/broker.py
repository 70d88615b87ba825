"""Where broadcasts go before they reach local connections.

A publish goes to the broker, and the broker calls back the local delivery function of every gateway
node (centrifuge's ``HandlePublication`` pattern). The in-memory broker calls it directly, so one node
and a cluster (a Redis or NATS broker, a later issue) share the same delivery path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

Deliver = Callable[[Sequence[str], bytes], tuple[int, int]]
"""Local delivery: (device ids, one encoded JSON message) -> (connections written to, devices reached)."""


class Broker(Protocol):
    async def publish(self, device_ids: Sequence[str], payload: bytes) -> tuple[int, int]:
        """Deliver ``payload`` to the devices' connections on every node; the counts are as far as known."""
        ...

    async def close(self) -> None: ...


class MemoryBroker:
    """A single gateway process: publishing is local delivery."""

    def __init__(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def publish(self, device_ids: Sequence[str], payload: bytes) -> tuple[int, int]:
        return self._deliver(device_ids, payload)

    async def close(self) -> None:
        return None
