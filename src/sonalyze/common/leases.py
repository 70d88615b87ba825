"""Leases on the rows a replica is working on (a measurement's analysis, a simulation), so that another
replica takes the work over when that one dies.

A leased row has ``runner`` (the replica working on it) and ``lease_until_s`` (Unix time). The runner
renews its leases while it works (:meth:`Leases.renew`); a runner that stops renewing (killed) loses them:
any replica claims the active rows whose lease lapsed (:meth:`Leases.claim_expired`, one conditional
UPDATE per row, so of several replicas claiming one row one wins) and does the work again. A runner that
stops gracefully ends its leases at once (:meth:`Leases.release`). A row without a lease (written before
the lease's migration) counts as expired.

With a ``version`` column the claim also bumps the version, so the former runner's version-checked save
fails (`sonalyze.measurement.store`); without one, the store conditions its own writes on ``runner``
(`sonalyze.simulation.store`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Row, Table, select, update
from sqlalchemy.ext.asyncio import AsyncEngine


class Leases:
    """The leases of one table's rows: ``key`` names the id column; ``active`` is the condition of a row
    being worked on (its status); ``runner`` is this replica; a lease lasts ``lease_s``."""

    def __init__(
        self, engine: AsyncEngine, table: Table, *, key: str, active: ColumnElement[bool], runner: str, lease_s: float
    ) -> None:
        self.engine = engine
        self.table = table
        self.key = table.c[key]
        self.active = active
        self.runner = runner
        self.lease_s = lease_s
        self.version = table.c.get("version")

    def granted(self) -> dict[str, Any]:
        """The column values of a row this replica starts (or goes on) working on: leased to it from now."""
        return {"runner": self.runner, "lease_until_s": time.time() + self.lease_s}

    def held_here(self) -> ColumnElement[bool]:
        """The active rows whose runner is this replica (at start-up: what it was doing when it stopped)."""
        return self.active & (self.table.c.runner == self.runner)

    def _mine(self, ids: Iterable[str]) -> ColumnElement[bool]:
        return self.key.in_(list(ids)) & self.held_here()

    async def renew(self, ids: Sequence[str]) -> None:
        """Extend this runner's lease on ``ids`` (nothing else changes); a row another replica took over
        meanwhile stays that replica's."""
        if not ids:
            return
        async with self.engine.begin() as connection:
            await connection.execute(
                update(self.table).where(self._mine(ids)).values(lease_until_s=time.time() + self.lease_s)
            )

    async def release(self, ids: Sequence[str]) -> None:
        """End this runner's lease on ``ids`` now (it stops): the next claim takes them over."""
        if not ids:
            return
        async with self.engine.begin() as connection:
            await connection.execute(update(self.table).where(self._mine(ids)).values(lease_until_s=None))

    def expired(self, now_s: float) -> ColumnElement[bool]:
        lease = self.table.c.lease_until_s
        return self.active & (lease.is_(None) | (lease < now_s))

    async def claim_expired(
        self, now_s: float, columns: Sequence[Any], *, exclude: Iterable[str] = (), limit: int = 16
    ) -> list[Row]:
        """Take over up to ``limit`` active rows whose lease ended before ``now_s``, but ``exclude`` (the
        ones this replica still works on: it renews them). Each claim is an UPDATE conditional on the
        lapsed lease (and the version read): of several replicas claiming one row, one wins. The claimed
        rows, each with its id and ``columns`` as read (``version`` as read, before the claim's bump)."""
        expired = self.expired(now_s)
        excluded = list(exclude)
        if excluded:
            expired &= self.key.notin_(excluded)
        read = [self.key, *columns] + ([self.version] if self.version is not None else [])
        async with self.engine.connect() as connection:
            candidates = (await connection.execute(select(*read).where(expired).limit(limit))).all()
        claimed = []
        for row in candidates:
            condition = expired & (self.key == row[0])
            values = self.granted()
            if self.version is not None:
                condition &= self.version == row.version
                values["version"] = row.version + 1
            async with self.engine.begin() as connection:
                result = await connection.execute(update(self.table).where(condition).values(**values))
            if result.rowcount == 1:
                claimed.append(row)
        return claimed
