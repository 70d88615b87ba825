"""Alembic environment: runs on the connection :mod:`sonalyze.storage.migrate` hands over, or, from
the alembic command line, on an engine built from ``DATABASE_URL``. Batch mode keeps SQLite working."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from sonalyze.storage.db import make_engine
from sonalyze.storage.models import metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_from_url(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("set DATABASE_URL to the storage database to run its migrations")
    asyncio.run(_run_from_url(url))


main()
