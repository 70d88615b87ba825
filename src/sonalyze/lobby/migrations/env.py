"""Alembic environment: always given a live connection by :func:`sonalyze.lobby.migrations.upgrade`."""

from __future__ import annotations

from alembic import context

from sonalyze.lobby.migrations import VERSION_TABLE
from sonalyze.lobby.models import metadata
from sonalyze.storage.outbox import outbox_metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=[metadata, outbox_metadata],
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
