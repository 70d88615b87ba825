"""Where broadcasts go before they reach local connections.

A publish goes to the broker, and the broker calls back the local delivery function of every gateway
node (centrifuge's ``HandlePublication`` pattern). The in-memory broker calls it directly; the Redis and
NATS brokers send one message on the bus and every node (this one included) delivers it to its own
connections when it arrives. One node and a cluster share the same delivery path; the backend is chosen
by URL (``memory://``, ``redis://``, ``nats://``) and imported lazily (encode/broadcaster's pattern).

While a bus is unreachable a publish is delivered locally at once (the node's own devices still get it)
and ``connected`` is False (``/readyz`` answers 503); the broker reconnects by itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from sonalyze.gateway.publication import Deliver

if TYPE_CHECKING:
    from sonalyze.gateway.push_history import PushHistory


class Broker(Protocol):
    name: str
    """``memory``, ``redis`` or ``nats`` (for ``/readyz`` and the metrics)."""

    @property
    def connected(self) -> bool:
        """Whether publications reach the other nodes right now (always True for memory)."""
        ...

    history: Any
    """What resuming connections replay from (``epoch``, ``offset``, ``replay()``), or None."""

    async def start(self) -> None:
        """Connect and subscribe (in the background: an unreachable bus does not stop the gateway)."""
        ...

    async def publish(self, targets: Any, payload: bytes, positioned: bool = True) -> tuple[int | None, int | None]:
        """Deliver ``payload`` to the targets' connections on every node; with a history, ``positioned`` gives it
        a position (``pos``) and keeps it for resuming devices (False: a relay sent byte for byte, never kept).

        Returns (connections written to, devices reached) when known (memory, or local delivery while the
        bus is down); (None, None) when the other nodes deliver after this call returns.
        """
        ...

    async def close(self) -> None: ...


class MemoryBroker:
    """A single gateway process: publishing is local delivery."""

    name = "memory"
    connected = True

    def __init__(self, deliver: Deliver, history: PushHistory | None = None) -> None:
        self._deliver = deliver
        self.history = history
        """Gives every message its position and keeps it for resuming devices (None: no positions)."""

    async def start(self) -> None:
        return None

    async def publish(self, targets: Any, payload: bytes, positioned: bool = True) -> tuple[int, int]:
        if positioned and self.history is not None and payload:  # an empty payload is a membership change
            payload = self.history.append(targets, payload)
        return self._deliver(targets, payload)

    async def close(self) -> None:
        return None


class BrokerURLError(ValueError):
    """A ``BROKER_URL`` whose scheme no broker implements."""


def create_broker(
    url: str, prefix: str, deliver: Deliver, history_max: int = 0, history_age_s: float = 300.0, queue_max: int = 10_000
) -> Broker:
    """The broker for ``url``; ``prefix`` names the channel/subject so several clusters share one bus.

    With ``history_max`` > 0 pushes get positions and are kept (at most that many, none older than
    ``history_age_s``): in memory for ``memory://``, in a Redis stream for ``redis://``, in a JetStream
    stream for ``nats://`` (both queue up to ``queue_max`` publications while the bus is down).
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from sonalyze.gateway.push_history import PushHistory

        return MemoryBroker(deliver, PushHistory(history_max, history_age_s) if history_max else None)
    if scheme in ("redis", "rediss"):
        from sonalyze.gateway.broker_redis import RedisBroker

        return RedisBroker(url, prefix + "broadcast", deliver, history_max, history_age_s, queue_max)
    if scheme in ("nats", "tls"):
        from sonalyze.gateway.broker_nats import NatsBroker

        return NatsBroker(url, prefix + "broadcast", deliver, history_max, history_age_s, queue_max)
    raise BrokerURLError(f"BROKER_URL {url!r}: use memory://, redis://host:port/db or nats://host:port")
