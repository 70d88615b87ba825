"""The database half of a service's ``/readyz``: does the database answer ``SELECT 1`` in time?

A replica whose database does not answer takes no traffic (the probe answers 503) but is not restarted
(``/healthz`` stays 200). The bound covers connecting too (asyncpg waits 60 s for a server that accepts
the connection and never speaks) and giving the connection back: after a query cancelled on a frozen
server, SQLAlchemy's clean-up of the connection took another 2 s (tests/common/test_readiness.py), so the
probe answers at the bound and leaves the clean-up to finish in the background.
"""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

READY_TIMEOUT_S = 2.0
"""How long the database may take to connect and answer before the replica counts as not ready."""

_cleaning_up: set[asyncio.Task[None]] = set()
"""Probes past their bound, still giving their connection back (referenced so that they are not collected)."""


async def database_unready(engine: AsyncEngine, name: str, timeout_s: float = READY_TIMEOUT_S) -> str | None:
    """None when ``engine``'s database answers ``SELECT 1`` within ``timeout_s`` (connecting included), else
    why not: ``"the <name> does not answer: <error>"`` (at most 300 characters, for the probe's answer)."""
    probe = asyncio.ensure_future(_select_1(engine))
    try:
        await asyncio.wait_for(asyncio.shield(probe), timeout_s)
    except Exception as exc:  # any failure to reach it (TimeoutError at the bound): the reason is the answer
        return f"the {name} does not answer: {type(exc).__name__}: {exc}"[:300]
    finally:
        if not probe.done():  # past the bound, or the caller went away
            probe.cancel()
            _cleaning_up.add(probe)
            probe.add_done_callback(_cleaned_up)
    return None


async def _select_1(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.exec_driver_sql("SELECT 1")


def _cleaned_up(probe: asyncio.Task[None]) -> None:
    _cleaning_up.discard(probe)
    if not probe.cancelled():
        probe.exception()  # retrieved: a failed clean-up is expected here, not an unhandled error
