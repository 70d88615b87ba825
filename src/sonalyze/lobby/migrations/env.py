"""Alembic environment: always given a live connection by :func:`sonalyze.lobby.migrations.upgrade`."""

from __future__ import annotations

from sonalyze.common.migrations import run_env
from sonalyze.lobby.migrations import VERSION_TABLE
from sonalyze.lobby.models import metadata
from sonalyze.storage.outbox import outbox_metadata

run_env([metadata, outbox_metadata], VERSION_TABLE)
