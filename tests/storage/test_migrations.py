"""Alembic migrations up, down and up again, on SQLite and PostgreSQL, and in step with the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from sonalyze.storage import migrate
from sonalyze.storage.db import make_engine
from sonalyze.storage.models import metadata

TABLES = {
    "devices",
    "lobbies",
    "participants",
    "measurements",
    "analysis_outputs",
    "simulation_jobs",
    "simulation_results",
}


async def _tables(engine) -> set[str]:
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


async def test_upgrade_downgrade_upgrade(database_url):
    engine = make_engine(database_url)
    try:
        assert await migrate.current_revision(engine) is None
        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == "0003"
        assert TABLES <= await _tables(engine)

        await migrate.downgrade(engine, "base")
        assert await migrate.current_revision(engine) is None
        assert not TABLES & await _tables(engine)

        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == "0003"
        assert TABLES <= await _tables(engine)
        await migrate.upgrade(engine)  # already at head: nothing to do, no error
        assert await migrate.current_revision(engine) == "0003"
    finally:
        await engine.dispose()


async def test_migrated_schema_matches_the_models(database_url):
    engine = make_engine(database_url)
    try:
        await migrate.upgrade(engine)
        async with engine.connect() as connection:
            differences = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}), metadata)
            )
        assert differences == []
    finally:
        await engine.dispose()


async def test_postgres_payloads_are_lz4_compressed_and_downgrade_restores_the_default(postgres_url):
    engine = make_engine(postgres_url)
    query = text(
        "SELECT attcompression::text FROM pg_attribute WHERE attrelid = 'analysis_outputs'::regclass AND attname = 'curves'"
    )
    try:
        await migrate.upgrade(engine)
        async with engine.connect() as connection:
            assert (await connection.execute(query)).scalar() == "l"
        await migrate.downgrade(engine, "0001")
        async with engine.connect() as connection:
            assert (await connection.execute(query)).scalar() == ""
    finally:
        await engine.dispose()
