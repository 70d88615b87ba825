"""What crosses the bus (sonalyze.gateway.publication): encoding, local delivery with a position, resync."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from sonalyze.gateway.publication import (
    Targets, deliver_publication, encode_publication, position_prefix, resync_local, stamp_position,
)


class Delivered(list):
    def __call__(self, targets: Any, payload: bytes) -> tuple[int, int]:
        self.append((targets, payload))
        return 1, 1


def test_a_position_is_added_as_the_last_member_of_the_encoded_envelope() -> None:
    payload = orjson.dumps({"type": "event", "event": "x", "data": {"a": [1, {"b": 2}]}})
    stamped = stamp_position(payload, position_prefix(b"e1"), 7)
    assert orjson.loads(stamped) == {**orjson.loads(payload), "pos": {"epoch": "e1", "offset": 7}}


def test_a_publication_is_delivered_with_its_targets_and_with_its_position_when_given() -> None:
    delivered = Delivered()
    targets = Targets(device_ids=["d1", "d2"])
    message = encode_publication(targets, b'{"n":1}')
    deliver_publication(delivered, message)
    deliver_publication(delivered, message, position_prefix(b"e"), 12)
    assert delivered == [(targets, b'{"n":1}'), (targets, b'{"n":1,"pos":{"epoch":"e","offset":12}}')]


def test_a_bus_message_that_is_not_a_publication_is_logged_and_dropped(caplog) -> None:
    delivered = Delivered()
    with caplog.at_level(logging.WARNING, "sonalyze.gateway.broker"):
        deliver_publication(delivered, b"not json\n{}")
        deliver_publication(delivered, b"[1]\n{}", position_prefix(b"e"), 1)
    assert delivered == [] and caplog.text.count("not a gateway publication") == 2


def test_resync_tells_every_local_device_where_the_history_stands() -> None:
    delivered = Delivered()
    resync_local(delivered, "e1", 40, "history")
    resync_local(delivered, None, 0, "history")  # no history yet
    assert [(targets.everyone, orjson.loads(payload)) for targets, payload in delivered] == [
        (True, {"type": "event", "event": "resync_required", "data": {"pos": {"epoch": "e1", "offset": 40}, "reason": "history"}}),
        (True, {"type": "event", "event": "resync_required", "data": {"pos": None, "reason": "history"}}),
    ]
