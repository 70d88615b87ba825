"""Alembic migrations of the simulation service's table (`sonalyze.common.migrations.upgrade`)."""

VERSION_TABLE = "simulation_alembic_version"
