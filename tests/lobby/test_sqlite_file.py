"""The lobby's SQLite file: the same PRAGMAs on every connection, and WAL checkpoints out of the commits."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from sonalyze.lobby import store
from sonalyze.lobby.sqlite_file import BACKSTOP_PAGES
from sonalyze.lobby.store import Database
from sonalyze.storage.client import StorageClient
from tests.support.servers import free_port

DEFAULT_AUTOCHECKPOINT_PAGES = 1000
"""SQLite's own ``wal_autocheckpoint``: a commit past it checkpointed inline before (https://www.sqlite.org/wal.html#ckpt)."""

PAGE_BYTES = 4096

PRAGMAS = ("journal_mode", "synchronous", "wal_autocheckpoint", "busy_timeout")


def _pragmas(dbapi_connection) -> dict[str, object]:
    return {name: dbapi_connection.execute(f"PRAGMA {name}").fetchone()[0] for name in PRAGMAS}


async def _create_lobbies(db: Database, count: int) -> None:
    for i in range(count):
        lobby_id = f"lobby-{i}"
        await db.write(
            lambda conn, lobby_id=lobby_id: store.insert_lobby(conn, lobby_id=lobby_id, code=lobby_id, name=None, host_device_id="d", now_s=0.0)
        )


async def test_every_connection_to_the_file_has_the_same_pragmas(tmp_path: Path):
    """The lobby's inline connection and the outbox's delivery connection: WAL, synchronous=NORMAL (1),
    the checkpoint backstop (the outbox's had SQLite's default synchronous=FULL)."""
    db = Database(f"sqlite:///{tmp_path / 'lobby.db'}", storage=StorageClient(f"http://127.0.0.1:{free_port()}"))
    try:
        async with db.outbox.engine.connect() as connection:  # before start(): the outbox's own loop is not using it
            delivery = {name: (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar() for name in PRAGMAS}
        await db.start()
        inline = await db.read(lambda conn: _pragmas(conn.connection.driver_connection))
    finally:
        await db.dispose()
    expected = {"journal_mode": "wal", "synchronous": 1, "wal_autocheckpoint": BACKSTOP_PAGES, "busy_timeout": 10000}
    assert inline == expected
    assert delivery == expected


async def test_commits_past_sqlites_threshold_do_not_checkpoint(tmp_path: Path):
    """With the checkpointer idle, the database file does not change however much the log grows past
    1000 pages: no commit checkpoints (and stops the event loop for the syncs)."""
    path = tmp_path / "lobby.db"
    db = Database(f"sqlite:///{path}", checkpoint_interval_s=3600.0)
    await db.start()
    try:
        size_before = path.stat().st_size
        await _create_lobbies(db, 400)
        assert os.path.getsize(f"{path}-wal") > DEFAULT_AUTOCHECKPOINT_PAGES * PAGE_BYTES
        assert path.stat().st_size == size_before
    finally:
        await db.dispose()


async def test_the_checkpointer_copies_the_log_into_the_file(tmp_path: Path):
    path = tmp_path / "lobby.db"
    db = Database(f"sqlite:///{path}", checkpoint_interval_s=0.05)
    await db.start()
    try:
        size_before = path.stat().st_size
        await _create_lobbies(db, 400)
        for _ in range(100):
            if path.stat().st_size > size_before:
                break
            await asyncio.sleep(0.05)
        assert path.stat().st_size > size_before
    finally:
        await db.dispose()
