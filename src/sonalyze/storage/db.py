"""Engines for PostgreSQL (asyncpg) and SQLite (aiosqlite), and the one place a transaction commits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from sonalyze.common.json import dumps
from sonalyze.common.readiness import database_unready


def _json_text(value: object) -> str:
    return dumps(value).decode()


def make_engine(database_url: str, *, pool_size: int = 5) -> AsyncEngine:
    """An async engine with JSON through orjson; on SQLite foreign keys on, WAL, and one connection.

    SQLite allows one writer at a time, so the engine keeps a single connection and requests queue for
    it instead of failing with ``database is locked``.
    """
    url = make_url(database_url)
    options: dict = {"json_serializer": _json_text, "json_deserializer": orjson.loads}
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=60, **options)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            if url.database and url.database != ":memory:":
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    # A fixed pool: opening a PostgreSQL connection costs far more than waiting for a free one.
    return create_async_engine(url, pool_size=pool_size, max_overflow=0, **options)


class StorageDatabase:
    """The storage service's engine and its two units of work.

    :meth:`transaction` commits (or rolls back) several statements together; :meth:`single` runs one
    statement, which the database makes atomic on its own, without ``BEGIN``/``COMMIT`` round trips.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as connection:
            yield connection

    @asynccontextmanager
    async def single(self) -> AsyncIterator[AsyncConnection]:
        """For one statement only (a read, an insert, an ``UPDATE ... RETURNING``, a delete)."""
        async with self._autocommit.connect() as connection:
            yield connection

    async def reachable(self) -> bool:
        return await database_unready(self.engine, "storage database") is None

    async def dispose(self) -> None:
        await self.engine.dispose()
