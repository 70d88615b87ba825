"""Run a service's Alembic migrations in-process on its async engine (measurement, simulation), and the
one body of the services' ``env.py`` (:func:`run_env`: lobby, measurement, simulation).

Each service keeps its scripts in ``<service>/migrations`` with its own version table, so services may
share one database. On PostgreSQL a transaction-level advisory lock makes concurrent start-ups of
several replicas migrate one after the other.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import AsyncEngine


async def upgrade(engine: AsyncEngine, scripts: Path, revision: str = "head") -> None:
    """Bring the database to ``revision`` with the scripts in ``scripts`` (idempotent)."""
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            key = zlib.crc32(str(scripts.name + scripts.parent.name).encode())  # one lock per service
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

        def run(sync_connection) -> None:
            config = Config()
            config.set_main_option("script_location", str(scripts))
            config.attributes["connection"] = sync_connection
            command.upgrade(config, revision)

        await connection.run_sync(run)


def run_env(target_metadata: MetaData | list[MetaData], version_table: str) -> None:
    """What a service's ``env.py`` does: migrate on the live connection its caller handed over
    (``config.attributes["connection"]``), in batch mode on SQLite (its ALTER TABLE cannot drop or alter columns)."""
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=version_table,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
