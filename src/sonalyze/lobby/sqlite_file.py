"""The lobby's SQLite file: the PRAGMAs of every connection to it, and its WAL checkpoints off the event loop.

The lobby commits inline on its event loop (:class:`sonalyze.lobby.store.Database`). In WAL mode SQLite
checkpoints inside the commit that brings the log past ``wal_autocheckpoint`` pages (1000 by default): it
syncs the log, copies the logged pages into the database file and syncs that
(https://www.sqlite.org/wal.html#ckpt). At ~6 pages per lobby event that was a checkpoint every ~185
events, each stopping the loop for two ``fdatasync`` (and the next commit for the log header's): 161 of
them per 10,000 events, 10–12 % of the loop's time on a busy disk (bench/lobby.md, issue 16, "The
lobby's own stalls"). So:

* :class:`WalCheckpointer` runs ``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval_s`` in a thread of its
  own, on a connection of its own. PASSIVE neither waits for nor blocks the writer
  (https://www.sqlite.org/c3ref/wal_checkpoint_v2.html), and Python's sqlite3 releases the GIL while SQLite
  works, so the syncs no longer stop the loop.
* Every connection's own checkpoint threshold is raised to :data:`BACKSTOP_PAGES`. A PASSIVE checkpoint
  cannot restart the log while the writer keeps appending (the log starts over only when a writer finds it
  all copied), so under sustained writes the log grows until a commit reaches this threshold and
  checkpoints inline what the thread has not copied yet. With the log header's sync after each restart
  (https://sqlite.org/src/info/ff5be73dee), 21–23 ``fdatasync`` per 10,000 events are left on the loop at a
  sustained 1,500 events/s, and the log file stays under ~41 MB.

**Durability is unchanged**: ``synchronous=NORMAL`` in WAL mode, as before on the lobby's connection
(https://www.sqlite.org/pragma.html#pragma_synchronous): a commit survives a crash of the process; a power
loss may undo the commits since the log was last synced, which happens at each checkpoint. Before, that was
every 1000 pages of writes (at a quiet hour, hours); now it is about ``interval_s`` after a commit. The
outbox's delivery connection now gets the same PRAGMAs: it had SQLite's default ``synchronous=FULL``, an
``fdatasync`` per commit while holding the write lock the inline writer waits for; what a power loss may
undo there is delivery bookkeeping, and a record delivered again is stored once (storage's PUTs are
idempotent).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import Any

log = logging.getLogger("sonalyze.lobby.sqlite_file")

BACKSTOP_PAGES = 10_000
"""``wal_autocheckpoint`` of every connection: a commit checkpoints inline only past this many log pages."""

CHECKPOINT_INTERVAL_S = 0.1
"""How often the thread checkpoints: about how long a commit waits for the log to be synced (see above)."""

PRAGMAS = ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=10000", f"wal_autocheckpoint={BACKSTOP_PAGES}")


def apply_pragmas(dbapi_connection: Any, _record: Any = None) -> None:
    """Set :data:`PRAGMAS` on a new DB-API connection (also a SQLAlchemy ``connect`` listener)."""
    cursor = dbapi_connection.cursor()
    for pragma in PRAGMAS:
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


class WalCheckpointer:
    """``PRAGMA wal_checkpoint(PASSIVE)`` on the file at ``path`` every ``interval_s``, in a thread."""

    def __init__(self, path: str, *, interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
        self._path = path
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lobby-wal-checkpoints", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the checkpoint under way, if any (waits at most one checkpoint's time)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        connection = sqlite3.connect(self._path, isolation_level=None)
        try:
            apply_pragmas(connection)
            while not self._stopping.wait(self._interval_s):
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the next tick tries again; a commit's backstop still checkpoints
                    log.warning("WAL checkpoint failed: %s", exc)
        finally:
            connection.close()
