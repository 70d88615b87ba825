"""The binary relay's bound: past ``MAX_PENDING_BYTES`` waiting, frames are dropped, and the log says so."""

from __future__ import annotations

import asyncio
import logging

from sonalyze.gateway.binary_relay import MAX_PENDING_BYTES, BinaryRelay
from tests.support.servers import free_port

FRAME = b"\0" * (1 << 20)


async def test_frames_past_the_bound_are_dropped_and_logged_when_it_starts_and_ends(caplog) -> None:
    relay = BinaryRelay(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens: every batch fails
    caplog.set_level(logging.WARNING, logger="sonalyze.gateway.binary_relay")
    try:
        fitting = MAX_PENDING_BYTES // len(FRAME)
        for _ in range(fitting + 2):  # in one turn of the loop: the flusher has not run yet
            relay.send("audio:c1", FRAME)
        messages = [record.getMessage() for record in caplog.records]
        assert messages == [f"binary relay: {fitting * len(FRAME)} bytes wait for Redis; dropping frames"]
        await asyncio.wait_for(relay._flusher, 10)
        assert f"binary relay: {fitting} frames not published (redis)" in caplog.records[-1].getMessage()
        relay.send("audio:c1", b"next")  # room again
        assert caplog.records[-1].getMessage() == "binary relay: 2 frames were dropped while Redis was behind"
    finally:
        await relay.close()
