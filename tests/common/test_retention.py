"""The one retention loop of measurement and simulation (sonalyze.common.retention)."""

from __future__ import annotations

import asyncio
import time

from sonalyze.common.retention import cleanup_forever


async def test_the_cleanup_runs_at_once_then_every_interval_and_survives_a_failure(caplog) -> None:
    calls: list[float] = []

    async def delete_expired(now_s: float) -> list[str]:
        calls.append(now_s)
        if len(calls) == 2:
            raise RuntimeError("database away")
        return []

    loop = asyncio.create_task(cleanup_forever(delete_expired, 0.01, "jobs"))
    try:
        while len(calls) < 4:
            await asyncio.sleep(0.01)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert abs(calls[0] - time.time()) < 60 and calls == sorted(calls)  # Unix time, moving forward
    assert "deleting expired jobs failed" in caplog.text  # the failure was logged, and the loop went on
