"""Alembic migrations of the measurement service's jobs table (`sonalyze.common.migrations.upgrade`)."""

VERSION_TABLE = "measurement_alembic_version"
