"""Migrations over a database that already has rows (SQLite: 0003 rebuilds two tables)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, event, text

from sonalyze.lobby import migrations


def test_0003_keeps_the_rows_and_clusters_participants_and_events(tmp_path: Path):
    engine = create_engine(f"sqlite:///{tmp_path / 'lobby.db'}")
    event.listen(engine, "connect", lambda dbapi_connection, _record: dbapi_connection.execute("PRAGMA foreign_keys=ON"))
    with engine.begin() as conn:
        migrations.upgrade(conn, "0002_storage_outbox")
        conn.execute(text("INSERT INTO lobby_lobbies (id, code, status, last_seq, created_s, updated_s) VALUES ('L1', 'ABCDEF', 'open', 2, 1, 2)"))
        conn.execute(text("INSERT INTO lobby_participants VALUES ('L1', 'host', 'speaker', 1, 1.0), ('L1', 'mic', NULL, 2, 2.0)"))
        conn.execute(text("""INSERT INTO lobby_events VALUES ('L1', 1, 'created', 'host', '{"name": null}', 1.0), ('L1', 2, 'participant_joined', 'mic', '{}', 2.0)"""))
    with engine.begin() as conn:
        migrations.upgrade(conn)
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
