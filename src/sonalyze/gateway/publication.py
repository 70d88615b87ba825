"""What crosses the bus between gateway instances: a publication's targets and its encoding.

Shared by the brokers (memory, Redis, NATS) and by what publishes or delivers (connection manager, internal
API, stream source), so that no broker module needs another.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

logger = logging.getLogger("sonalyze.gateway.broker")


@dataclass(frozen=True, slots=True)
class Targets:
    """Who a broadcast is for: devices, channel members, or everyone identified (exactly one kind).

    With ``join`` or ``leave`` (a channel name) the publication is not a message but a membership change:
    every connection of ``device_ids`` joins or leaves that channel, on every instance.
    """

    device_ids: Sequence[str] | None = None
    channels: Sequence[str] | None = None
    everyone: bool = False
    join: str | None = None
    leave: str | None = None

    def encode(self) -> bytes:
        if self.join is not None or self.leave is not None:
            return orjson.dumps({"d": list(self.device_ids or ()), "j": self.join, "l": self.leave})
        if self.device_ids is not None:
            return orjson.dumps({"d": list(self.device_ids)})
        if self.channels is not None:
            return orjson.dumps({"c": list(self.channels)})
        return b'{"a":1}'

    @classmethod
    def decode(cls, header: bytes) -> "Targets":
        fields = orjson.loads(header)
        return cls(
            device_ids=fields.get("d"), channels=fields.get("c"), everyone="a" in fields, join=fields.get("j"), leave=fields.get("l")
        )


Deliver = Callable[[Any, bytes], tuple[int, int]]
"""Local delivery: (targets, one encoded JSON message) -> (connections written to, devices reached)."""


def encode_publication(targets: Targets, payload: bytes) -> bytes:
    """One bus message: the targets as a JSON line, then the payload (orjson never writes a newline)."""
    return targets.encode() + b"\n" + payload


def deliver_publication(deliver: Deliver, message: bytes, prefix: bytes | None = None, offset: int = 0) -> None:
    """Deliver one bus message locally, with its position when ``prefix`` (:func:`position_prefix`) is given;
    a message that is not a publication is logged and dropped."""
    header, _, payload = message.partition(b"\n")
    try:
        targets = Targets.decode(header)
    except (ValueError, AttributeError) as exc:  # orjson.JSONDecodeError is a ValueError
        logger.warning("dropped a bus message that is not a gateway publication: %s", exc)
        return
    deliver(targets, payload if prefix is None else stamp_position(payload, prefix, offset))


def position_prefix(epoch: bytes) -> bytes:
    """What :func:`stamp_position` splices in before the offset, for one history's ``epoch`` (built once per epoch)."""
    return b',"pos":{"epoch":"' + epoch + b'","offset":'


def stamp_position(payload: bytes, prefix: bytes, offset: int) -> bytes:
    """``payload`` (an encoded JSON object) with ``"pos": {"epoch", "offset"}`` added as its last member, without
    decoding it: it is encoded once for every recipient (issue 18)."""
    return b"%s%s%d}}" % (payload[:-1], prefix, offset)


def resync_local(deliver: Deliver, epoch: str | None, offset: int, reason: str) -> None:
    """Every local device missed pushes the history no longer has: each is told to reload its state
    (``resync_required`` with the history's position, None when there is no history yet)."""
    logger.warning("the push history cannot fill this node's gap (%s): local devices are told to resync", reason)
    position = {"epoch": epoch, "offset": offset} if epoch is not None else None
    envelope = {"type": "event", "event": "resync_required", "data": {"pos": position, "reason": reason}}  # models.event_envelope (not imported: models imports broker)
    deliver(Targets(everyone=True), orjson.dumps(envelope))
