"""Alembic migrations of the lobby service, run programmatically at start-up (:func:`upgrade`)."""

from __future__ import annotations

import zlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

VERSION_TABLE = "lobby_alembic_version"
MIGRATION_LOCK_KEY = zlib.crc32(b"sonalyze.lobby.migrations")
"""The PostgreSQL advisory lock the lobby's migrations take (as `sonalyze.common.migrations` does for the
other services): replicas starting together on an empty database migrate one after the other instead of
both creating the version table."""


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = connection
    return config


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Bring the database behind ``connection`` to ``revision`` (idempotent); on PostgreSQL one replica at
    a time (the lock ends with the caller's transaction)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    command.upgrade(_config(connection), revision)


def downgrade(connection: Connection, revision: str) -> None:
    """Take the database behind ``connection`` back to ``revision`` (``"base"``: no lobby tables)."""
    command.downgrade(_config(connection), revision)
