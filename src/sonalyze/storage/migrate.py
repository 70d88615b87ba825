"""Alembic migrations of the storage database, run in-process on the service's async engine.

``upgrade(engine)`` is what ``RUN_MIGRATIONS=true`` does at start-up. On PostgreSQL a transaction-level
advisory lock makes concurrent start-ups of several replicas migrate one after the other.

    python -m sonalyze.storage.migrate upgrade [REVISION]     (DATABASE_URL from the environment)
    python -m sonalyze.storage.migrate downgrade REVISION
    python -m sonalyze.storage.migrate current
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from sonalyze.storage.db import make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_ADVISORY_LOCK_KEY = 0x50_4E_41_4C_59_5A_45  # any constant shared by every storage replica


def alembic_config(connection: Connection | None = None) -> Config:
    """The packaged ``alembic.ini``, pointed at the packaged scripts, optionally bound to ``connection``."""
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


async def _run(engine: AsyncEngine, action, revision: str) -> None:
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
        await connection.run_sync(lambda sync: action(alembic_config(sync), revision))


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    await _run(engine, command.upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    await _run(engine, command.downgrade, revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


async def _main(action: str, revision: str | None) -> None:
    engine = make_engine(os.environ.get("DATABASE_URL", "sqlite+aiosqlite:///./storage.db"))
    try:
        if action == "upgrade":
            await upgrade(engine, revision or "head")
        elif action == "downgrade":
            await downgrade(engine, revision or "base")
        print(await current_revision(engine))
    finally:
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m sonalyze.storage.migrate")
    parser.add_argument("action", choices=["upgrade", "downgrade", "current"])
    parser.add_argument("revision", nargs="?")
    arguments = parser.parse_args()
    asyncio.run(_main(arguments.action, arguments.revision))
