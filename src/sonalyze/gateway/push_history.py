"""Positions of pushes and their bounded history: what a reconnecting device missed (issue 18).

Every message publication gets the next offset of one stream per gateway cluster (Centrifugo's
publication history: an offset and an epoch). The epoch names one history: it changes when the history
starts over (here: a new process), so a client can tell "the history was reset" from "nothing happened".
The position goes into the JSON envelope as an additive field, ``"pos": {"epoch", "offset"}``, spliced
into the already encoded message (it is encoded once for every recipient). One stream for every target:
a connection needs one resume point, and a publication is appended once, not once per device.

The history keeps at most ``max_entries`` publications, none older than ``max_age_s``. A resume from a
position it still reaches gets every later publication meant for the device (replay filters by target);
from an older position or another epoch the client is told to resynchronize.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any, NamedTuple

from sonalyze.gateway.publication import position_prefix, stamp_position


class Entry(NamedTuple):
    offset: int
    stored_s: float
    targets: Any
    """The publication's ``publication.Targets`` (whom replay gives it to)."""
    payload: bytes
    """The encoded envelope with its ``pos``."""


class PushHistory:
    """One process's stream of publications (``memory://``): offsets from 1, a fresh epoch per process."""

    def __init__(self, max_entries: int, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.epoch = uuid.uuid4().hex[:16]
        self.offset = 0
        """The last offset given (0: none yet)."""
        self._max_entries = max_entries
        self._max_age_s = max_age_s
        self._clock = clock
        self._entries: deque[Entry] = deque()
        self._pos_prefix = position_prefix(self.epoch.encode())

    def append(self, targets: Any, payload: bytes) -> bytes:
        """Give ``payload`` (an encoded JSON object) the next position; returns it with ``pos`` added."""
        self.offset += 1
        stamped = stamp_position(payload, self._pos_prefix, self.offset)
        now_s = self._clock()
        entries = self._entries
        entries.append(Entry(self.offset, now_s, targets, stamped))
        if len(entries) > self._max_entries:
            entries.popleft()
        self._drop_older_than(now_s - self._max_age_s)
        return stamped

    def position(self) -> dict[str, Any]:
        """The newest position: where a client that reloaded its state resumes from."""
        return {"epoch": self.epoch, "offset": self.offset}

    def after(self, epoch: object, offset: object) -> Iterator[Entry] | None:
        """Every kept publication after ``offset``, oldest first; None when the history does not reach back
        that far (trimmed, another epoch, or an offset it never gave)."""
        if epoch != self.epoch or type(offset) is not int or not 0 <= offset <= self.offset:
            return None
        self._drop_older_than(self._clock() - self._max_age_s)
        entries = self._entries
        first = entries[0].offset if entries else self.offset + 1
        if offset < first - 1:
            return None
        return islice(entries, offset + 1 - first, None)  # offsets are consecutive

    async def replay(self, epoch: object, offset: object, upto: int) -> list[Entry] | None:
        """The kept publications after ``offset`` up to ``upto`` (the same interface as the Redis broker's)."""
        entries = self.after(epoch, offset)
        return None if entries is None else [entry for entry in entries if entry.offset <= upto]

    def _drop_older_than(self, oldest_s: float) -> None:
        entries = self._entries
        while entries and entries[0].stored_s < oldest_s:
            entries.popleft()


def meant_for(entries: Iterable[Entry], device_id: str, channels: Iterable[str]) -> list[bytes]:
    """The payloads of ``entries`` that a connection of ``device_id`` subscribed to ``channels`` got live."""
    subscribed = set(channels)
    found = []
    for entry in entries:
        targets = entry.targets
        if (
            targets.everyone
            or (targets.device_ids is not None and device_id in targets.device_ids)
            or (targets.channels is not None and not subscribed.isdisjoint(targets.channels))
        ):
            found.append(entry.payload)
    return found
