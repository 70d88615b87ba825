"""Alembic migrations of the storage database (run through :mod:`sonalyze.storage.migrate`)."""
