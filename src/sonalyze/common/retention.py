"""The retention cleanup every replica of measurement and simulation runs: one loop for both."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def cleanup_forever(delete_expired: Callable[[float], Awaitable[list[str]]], interval_s: float, what: str) -> None:
    """Call ``delete_expired(now_s)`` every ``interval_s``, from now on, until cancelled; a failure is logged
    and tried again at the next turn (the database may be away for a while)."""
    while True:
        try:
            await delete_expired(time.time())
        except Exception:
            log.exception("deleting expired %s failed; trying again later", what)
        await asyncio.sleep(interval_s)
