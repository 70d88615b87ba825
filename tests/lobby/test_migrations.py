"""Migrations over a database that already has rows (SQLite: 0003 rebuilds two tables; 0004, 0005 up, down, up)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from sonalyze.lobby import migrations
from sonalyze.lobby.models import metadata
from sonalyze.storage.outbox import outbox_metadata


def test_0003_keeps_the_rows_and_clusters_participants_and_events(tmp_path: Path):
    engine = create_engine(f"sqlite:///{tmp_path / 'lobby.db'}")
    event.listen(engine, "connect", lambda dbapi_connection, _record: dbapi_connection.execute("PRAGMA foreign_keys=ON"))
    with engine.begin() as conn:
        migrations.upgrade(conn, "0002_storage_outbox")
        conn.execute(text("INSERT INTO lobby_lobbies (id, code, status, last_seq, created_s, updated_s) VALUES ('L1', 'ABCDEF', 'open', 2, 1, 2)"))
        conn.execute(text("INSERT INTO lobby_participants VALUES ('L1', 'host', 'speaker', 1, 1.0), ('L1', 'mic', NULL, 2, 2.0)"))
        conn.execute(text("""INSERT INTO lobby_events VALUES ('L1', 1, 'created', 'host', '{"name": null}', 1.0), ('L1', 2, 'participant_joined', 'mic', '{}', 2.0)"""))
    with engine.begin() as conn:
        migrations.upgrade(conn, "0003_sqlite_without_rowid")
        ddl = dict(conn.execute(text("SELECT name, sql FROM sqlite_master WHERE name IN ('lobby_participants', 'lobby_events')")).all())
        assert all("WITHOUT ROWID" in sql and "REFERENCES lobby_lobbies (id) ON DELETE CASCADE" in sql for sql in ddl.values()), ddl
        assert conn.execute(text("SELECT * FROM lobby_participants ORDER BY joined_seq")).all() == [
            ("L1", "host", "speaker", 1, 1.0),
            ("L1", "mic", None, 2, 2.0),
        ]
        assert conn.execute(text("SELECT seq, type, data FROM lobby_events ORDER BY seq")).all() == [
            (1, "created", '{"name": null}'),
            (2, "participant_joined", "{}"),
        ]
        conn.execute(text("DELETE FROM lobby_lobbies WHERE id = 'L1'"))  # the foreign keys still cascade
        assert conn.execute(text("SELECT count(*) FROM lobby_events")).scalar() == 0
    engine.dispose()


def _differences_from_the_models(sync) -> list:
    context = MigrationContext.configure(
        sync, opts={"compare_type": True, "include_name": lambda name, kind, _parent: name != migrations.VERSION_TABLE}
    )
    return compare_metadata(context, [metadata, outbox_metadata])


async def test_0004_0005_up_down_up_keep_the_rows(database_url: str):
    """Names (0004) and 8-character codes with the failed-join table (0005) go up, down and up again."""
    engine = create_async_engine(database_url)
    columns = lambda sync, table: [c["name"] for c in inspect(sync).get_columns(table)]  # noqa: E731
    try:
        async with engine.begin() as conn:
            await conn.run_sync(migrations.upgrade, "0003_sqlite_without_rowid")
            await conn.execute(text("INSERT INTO lobby_lobbies (id, code, status, last_seq, created_s, updated_s) VALUES ('L1', 'ABCDEF', 'open', 1, 1, 2)"))
            await conn.execute(text("INSERT INTO lobby_participants VALUES ('L1', 'host', 'speaker', 1, 1.0)"))
        async with engine.begin() as conn:
            await conn.run_sync(migrations.upgrade)
            assert await conn.run_sync(columns, "lobby_participants") == ["lobby_id", "device_id", "role", "joined_seq", "joined_s", "name"]
            assert (await conn.execute(text("SELECT device_id, role, name FROM lobby_participants"))).all() == [("host", "speaker", None)]
            await conn.execute(text("INSERT INTO lobby_lobbies (id, code, status, last_seq, created_s, updated_s) VALUES ('L2', 'ABCDEFGH', 'open', 0, 1, 2)"))
            await conn.execute(text("INSERT INTO lobby_participants VALUES ('L2', 'mic', NULL, 1, 1.0, 'Kitchen')"))
            await conn.execute(text("INSERT INTO lobby_join_failures VALUES ('guesser', 1.0, 3)"))
            await conn.execute(text("DELETE FROM lobby_participants WHERE lobby_id = 'L2'"))
            await conn.execute(text("DELETE FROM lobby_lobbies WHERE id = 'L2'"))  # 6 characters fit after a downgrade
        async with engine.begin() as conn:
            await conn.run_sync(migrations.downgrade, "0003_sqlite_without_rowid")
            assert await conn.run_sync(columns, "lobby_participants") == ["lobby_id", "device_id", "role", "joined_seq", "joined_s"]
            assert "lobby_join_failures" not in await conn.run_sync(lambda sync: inspect(sync).get_table_names())
            assert (await conn.execute(text("SELECT * FROM lobby_participants"))).all() == [("L1", "host", "speaker", 1, 1.0)]
        async with engine.begin() as conn:
            await conn.run_sync(migrations.upgrade)
            await conn.execute(text("UPDATE lobby_participants SET name = 'Host' WHERE device_id = 'host'"))
            assert (await conn.execute(text("SELECT l.code, p.name FROM lobby_lobbies l JOIN lobby_participants p ON l.id = p.lobby_id"))).all() == [("ABCDEF", "Host")]
            if conn.dialect.name == "postgresql":  # SQLite does not enforce lengths
                lengths = (await conn.execute(text(
                    "SELECT table_name, column_name, character_maximum_length FROM information_schema.columns "
                    "WHERE table_name IN ('lobby_lobbies', 'lobby_participants') AND column_name IN ('code', 'name') ORDER BY 1, 2"
                ))).all()
                assert lengths == [("lobby_lobbies", "code", 8), ("lobby_lobbies", "name", 120), ("lobby_participants", "name", 40)]
        async with engine.begin() as conn:
            await conn.run_sync(migrations.downgrade, "base")
            assert not {"lobby_lobbies", "lobby_participants", "lobby_join_failures"} & set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
            await conn.run_sync(migrations.upgrade)
            differences = await conn.run_sync(_differences_from_the_models)
            if conn.dialect.name == "sqlite":  # 0005 leaves SQLite's unenforced varchar(6) as it was
                assert [d[0][:4] for d in differences] == [("modify_type", None, "lobby_lobbies", "code")]
            else:
                assert differences == []
    finally:
        await engine.dispose()


async def test_replicas_starting_together_on_an_empty_postgresql_migrate_one_after_the_other(postgres_url: str):
    """Several lobbies start at once (a Deployment of two): each waits for the one migrating, none fails
    on the version table the other is creating (it did without the migration lock)."""
    engines = [create_async_engine(postgres_url) for _ in range(4)]

    async def migrate(engine) -> None:
        async with engine.begin() as conn:
            await conn.run_sync(migrations.upgrade)

    try:
        await asyncio.gather(*(migrate(engine) for engine in engines))
        async with engines[0].connect() as conn:
            assert await conn.run_sync(_differences_from_the_models) == []
    finally:
        for engine in engines:
            await engine.dispose()
