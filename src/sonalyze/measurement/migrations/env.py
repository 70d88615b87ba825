"""Alembic environment: always given a live connection by :func:`sonalyze.common.migrations.upgrade`."""

from __future__ import annotations

from sonalyze.common.migrations import run_env
from sonalyze.measurement.migrations import VERSION_TABLE
from sonalyze.measurement.store import metadata

run_env(metadata, VERSION_TABLE)
