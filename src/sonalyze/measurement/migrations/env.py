"""Alembic environment: always given a live connection by :func:`sonalyze.common.migrations.upgrade`."""

from __future__ import annotations

from alembic import context

from sonalyze.measurement.migrations import VERSION_TABLE
from sonalyze.measurement.store import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
