"""The one place the lobby service reads and writes its database (SQLAlchemy Core).

Every read and every change is one plain function over a SQLAlchemy ``Connection``; a change runs in
one transaction through :meth:`Database.write`. How it runs depends on the URL:

* SQLite: a synchronous pysqlite connection, opened once and called inline on the event loop. A lobby
  transaction is a few statements of an embedded database (~0.1 ms in WAL mode with
  ``synchronous=NORMAL``, no fsync per commit); handing it to a thread (aiosqlite hops once per
  statement) cost more CPU than the work and capped the service at a few hundred events/s. Inline calls
  also make writers take turns, so they never meet ``database is locked``; the WAL is checkpointed in a
  thread, not in the commits (:mod:`sonalyze.lobby.sqlite_file`: a checkpoint's fsyncs stopped the loop).
  ``sqlite+aiosqlite://`` URLs are accepted and run this way. The statements of the lobby path
  (:class:`Statement`) run straight on the sqlite3 connection as SQL compiled once: SQLAlchemy's execution
  path (parameter processing, result objects, pool checkout per transaction) cost several times what
  SQLite spends on them.
* PostgreSQL: the asyncpg engine; the same functions run through ``Connection.run_sync``.

Durable records (lobbies, participants, events, sessions) are written only by the functions of this
module. With a storage client (``STORAGE_URL``) they note what changed in the transaction
(:class:`StorageChanges`), and before the commit :meth:`Database.write` turns that into rows of the
``storage_outbox`` table (:mod:`sonalyze.storage.outbox`) in the same transaction: a lobby change and the
records bound for storage commit or roll back together, and the outbox delivers them after the commit.

Several replicas on one PostgreSQL announce one lobby's changes in its ``seq`` order:
:meth:`Database.write_in_turn` takes the lobby's turn (a session advisory lock) before the commit, while the
transaction still holds the lobby row that orders its changes, and gives it back only once the
announcement (the pushes) was acknowledged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import JSON, Connection, and_, bindparam, case, create_engine, delete, event, exists, insert, literal_column, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.sql import ClauseElement
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sonalyze.common.readiness import database_unready
from sonalyze.lobby import migrations
from sonalyze.lobby.lifecycle import LobbyStatus
from sonalyze.lobby.models import events, join_failures, lobbies, participants, sessions
from sonalyze.lobby.rows import LobbyRow, ParticipantRow, SessionRow
from sonalyze.lobby.storage_records import device_record, lobby_record, measurement_record, participant_record
from sonalyze.lobby.session_machine import TERMINAL_STEPS, SessionState, SessionStep
from sonalyze.lobby.sqlite_file import CHECKPOINT_INTERVAL_S, WalCheckpointer, apply_pragmas
from sonalyze.storage.client import StorageClient
from sonalyze.storage.db import make_engine
from sonalyze.storage.outbox import Outbox, outbox_table, put_row

T = TypeVar("T")


class Database:
    """The lobby's engine; with ``storage`` also the outbox that delivers its records to the storage service."""

    def __init__(
        self,
        url: str,
        *,
        storage: StorageClient | None = None,
        outbox_lease_s: float = 60.0,
        checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
    ) -> None:
        """``outbox_lease_s``: how long a replica's claim on an outbox row lasts (longer than a storage call
        may take); a replica killed while it sends leaves the row to the others after that.
        ``checkpoint_interval_s``: how often a SQLite file's WAL is checkpointed (:class:`WalCheckpointer`)."""
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self._outbox_engine: AsyncEngine | None = None
        self._sqlite: Connection | None = None
        self._checkpointer: WalCheckpointer | None = None
        if self.is_sqlite:
            self._engine = create_engine(parsed.set(drivername="sqlite+pysqlite"))
            event.listen(self._engine, "connect", apply_pragmas)
            if parsed.database and parsed.database != ":memory:":
                self._checkpointer = WalCheckpointer(parsed.database, interval_s=checkpoint_interval_s)
        else:
            self._async_engine = create_async_engine(parsed, pool_size=10, max_overflow=20)
        self.outbox: Outbox | None = None
        if storage is not None:
            self.outbox = Outbox(self._delivery_engine(parsed), storage, lease_s=outbox_lease_s)

    def _delivery_engine(self, parsed: Any) -> AsyncEngine:
        """The engine the outbox delivers from: the lobby's own on PostgreSQL; on SQLite an aiosqlite
        engine on the same file in autocommit, so each of its writes takes and releases the file lock
        inside one statement and never holds it across an await while the lobby writes inline."""
        if not self.is_sqlite:
            return self._async_engine
        self._outbox_engine = make_engine(parsed.set(drivername="sqlite+aiosqlite"))
        event.listen(self._outbox_engine.sync_engine, "connect", apply_pragmas)  # synchronous=NORMAL too
        return self._outbox_engine.execution_options(isolation_level="AUTOCOMMIT")

    async def start(self) -> None:
        """Migrate, start the WAL checkpoints, then start delivering the outbox (rows a previous process
        left are sent first)."""
        await self.write(migrations.upgrade)
        if self._checkpointer is not None:
            self._checkpointer.start()
        if self.outbox is not None:
            await self.outbox.start()

    async def dispose(self) -> None:
        if self.outbox is not None:
            await self.outbox.stop()
            await self.outbox.client.aclose()
        if self._outbox_engine is not None:
            await self._outbox_engine.dispose()
        if self._checkpointer is not None:
            self._checkpointer.stop()
        if self.is_sqlite:
            if self._sqlite is not None:
                self._sqlite.close()
                self._sqlite = None
            self._engine.dispose()
        else:
            await self._async_engine.dispose()

    async def write(self, work: Callable[..., T], *args: Any) -> T:
        """``work(connection, *args)`` in one transaction, committed when it returns, rolled back if it raises."""
        # With storage, the outbox finds the committed rows on its next poll (at most a second later); waking
        # it on every commit would cost a scan of its table per lobby event under load.
        if self.outbox is not None:
            work, args = _with_storage_records, (work, *args)
        if self.is_sqlite:
            connection = self._sqlite_connection()
            with connection.begin():
                return work(connection, *args)
        async with self._async_engine.begin() as connection:
            return await connection.run_sync(work, *args)

    async def write_in_turn(
        self, work: Callable[..., T], *args: Any, turns: Callable[[], Iterable[str]], after: Callable[[], Awaitable[None]]
    ) -> T:
        """:meth:`write`, then ``await after()`` holding the turn of each key ``turns()`` names after ``work``.

        On PostgreSQL a turn is a session advisory lock per key (one lobby), taken in key order before the
        commit — while the transaction holds the lobby rows, so turns are taken in the order of the lobbies'
        ``seq`` — and released after ``after()`` returned: a change committed next, by any replica, waits
        until this one's pushes were acknowledged. No deadlock: a transaction waits for turns only once its
        row locks are all taken, and a turn holder waits for no lock. SQLite has one writing process:
        ``after()`` simply follows the commit.
        """
        if self.is_sqlite:
            result = await self.write(work, *args)
            await after()
            return result
        if self.outbox is not None:
            work, args = _with_storage_records, (work, *args)
        async with self._async_engine.connect() as connection:
            taking: list[str] = []
            try:
                async with connection.begin():
                    result = await connection.run_sync(_taking_turns, taking, turns, work, *args)
                await after()
                return result
            finally:
                if taking:
                    await _end_turns(connection)

    async def unreachable(self) -> str | None:
        """None when the database answers ``SELECT 1`` within ``READY_TIMEOUT_S``, else why not (``/readyz``).
        SQLite is a file this process opened at start-up (the migrations ran on it): it answers while we run."""
        if self.is_sqlite:
            return None
        return await database_unready(self._async_engine, "lobby database")

    async def read(self, work: Callable[..., T], *args: Any) -> T:
        """``work(connection, *args)`` without writing."""
        if self.is_sqlite:
            connection = self._sqlite_connection()
            with connection.begin():  # ends the read (a commit without changes costs nothing)
                return work(connection, *args)
        async with self._async_engine.connect() as connection:
            return await connection.run_sync(work, *args)

    def _sqlite_connection(self) -> Connection:
        """The one SQLite connection, kept open: every call runs inline, so calls never overlap on it."""
        if self._sqlite is None:
            self._sqlite = self._engine.connect()
        return self._sqlite


@dataclass(frozen=True, slots=True)
class Seat:
    """What the storage record of a participant needs of its row."""

    role: str | None
    name: str | None
    joined_s: float


@dataclass(slots=True)
class StorageChanges:
    """What one transaction changed of the records storage keeps (insertion-ordered sets)."""

    devices: dict[str, str] = field(default_factory=dict)
    """device id → the lobby it joined (the order key of its record)."""
    lobbies: dict[str, LobbyRow | None] = field(default_factory=dict)
    """lobby id → its row when this transaction inserted it and did not change it since (else read at the end)."""
    seats: dict[tuple[str, str], Seat] = field(default_factory=dict)
    """(lobby id, device id) → the seat as it stands."""
    left: dict[tuple[str, str], Seat] = field(default_factory=dict)
    """(lobby id, device id) → a seat deleted in this transaction."""
    sessions: dict[str, None] = field(default_factory=dict)
    now_s: float | None = None
    """The transaction's clock, seen in the statements that carry it (the time a device left)."""


_CHANGES = "sonalyze.lobby.storage_changes"


def _changes(conn: Connection) -> StorageChanges | None:
    """The transaction's change set, or None when storage is off (``Database`` without a storage client)."""
    return conn.info.get(_CHANGES)


_TURN_CLASS = 0x10BB1
"""First key of the lobbies' turn locks (``pg_advisory_lock(int, int)``: apart from the one-key locks of migrations)."""


_TAKE_TURN = text(f"SELECT pg_advisory_lock({_TURN_CLASS}, hashtext(:key))")


def _taking_turns(conn: Connection, taking: list[str], turns: Callable[[], Iterable[str]], work: Callable[..., T], *args: Any) -> T:
    """``work``, then the turns it names, in key order, in the same transaction (noted in ``taking`` first,
    so they are given back even if taking one fails)."""
    result = work(conn, *args)
    taking.extend(sorted(set(turns())))
    for key in taking:
        conn.execute(_TAKE_TURN, {"key": key})
    return result


async def _end_turns(connection: Any) -> None:
    """Give the turns back: one statement outside any transaction (``pg_advisory_unlock_all``: a pooled
    connection holds no other session lock). A connection that cannot is dropped, which ends its locks."""
    try:
        raw = await connection.get_raw_connection()
        await raw.driver_connection.execute("SELECT pg_advisory_unlock_all()")
    except Exception:
        await connection.invalidate()
        raise


def _with_storage_records(conn: Connection, work: Callable[..., T], *args: Any) -> T:
    """Run ``work`` noting what it changes, then queue the storage records in the same transaction."""
    changes = conn.info[_CHANGES] = StorageChanges()
    try:
        result = work(conn, *args)
        enqueue_storage_records(conn, changes)
        return result
    finally:
        del conn.info[_CHANGES]  # the info dict outlives the transaction (it belongs to the DBAPI connection)


# ----------------------------------------------------------------------------------------------- rows


def _lobby(row: Any) -> LobbyRow | None:
    if row is None:
        return None
    id_, code, name, status, host_device_id, room, last_seq, session_id, created_s, updated_s = row
    return LobbyRow(id_, code, name, LobbyStatus(status), host_device_id, room, last_seq, session_id, created_s, updated_s)


_SQLITE_NAMED = sqlite.dialect(paramstyle="named")


class Statement:
    """A statement built once with bind parameters (building and hashing one per call cost more than
    SQLite executing it). :meth:`rows` runs it: on SQLite straight on the sqlite3 connection as SQL
    compiled once here, its JSON values (de)serialized like SQLAlchemy's JSON type does; elsewhere through
    SQLAlchemy. ``columns``: the bound columns of an ``INSERT``."""

    __slots__ = ("clause", "sql", "defaults", "json_in", "json_out")

    def __init__(self, clause: ClauseElement, columns: list[str] | None = None) -> None:
        compiled = clause.compile(dialect=_SQLITE_NAMED, column_keys=columns)
        self.clause = clause
        self.sql = str(compiled)
        self.defaults = {key: value for key, value in compiled.params.items() if value is not None and not compiled.binds[key].required}
        self.json_in = tuple(key for key, bind in compiled.binds.items() if isinstance(bind.type, JSON) and key in compiled.params)
        self.json_out = tuple(i for i, column in enumerate(clause.exported_columns) if isinstance(column.type, JSON))

    def rows(self, conn: Connection, params: dict[str, Any]) -> list[tuple]:
        if conn.dialect.name != "sqlite":
            result = conn.execute(self.clause, params)
            return result.all() if result.returns_rows else []
        if self.defaults:
            params = {**self.defaults, **params}
        if self.json_in:  # None too: SQLAlchemy's JSON stores it as 'null'
            params = {**params, **{key: json.dumps(params[key]) for key in self.json_in}}
        rows = conn.connection.driver_connection.execute(self.sql, params).fetchall()
        if self.json_out:
            rows = [_loads_at(row, self.json_out) for row in rows]
        return rows

    def first(self, conn: Connection, params: dict[str, Any]) -> tuple | None:
        rows = self.rows(conn, params)
        return rows[0] if rows else None


def _loads_at(row: tuple, indexes: tuple[int, ...]) -> tuple:
    values = list(row)
    for i in indexes:
        if values[i] is not None:
            values[i] = json.loads(values[i])
    return tuple(values)


_b = bindparam
_LOBBY_BY_ID = select(lobbies).where(lobbies.c.id == _b("lobby_id"))
# 'closed' is written into the SQL, not bound: the partial index on open codes is only usable when the
# planner can see it, and a bound value made SQLite prepare the statement again on every execution (and
# would keep PostgreSQL's generic plan off that index).
_NOT_CLOSED = lobbies.c.status != literal_column(f"'{LobbyStatus.CLOSED.value}'")
_LOBBY_BY_CODE = select(lobbies).where(lobbies.c.code == _b("code"), _NOT_CLOSED)
_LOBBY_BY_ID_LOCKED = Statement(_LOBBY_BY_ID.with_for_update())
_LOBBY_BY_ID_CLAIMED = Statement(_LOBBY_BY_ID.with_for_update(skip_locked=True))
_LOBBY_BY_CODE_LOCKED = Statement(_LOBBY_BY_CODE.with_for_update())
_LOBBY_BY_ID = Statement(_LOBBY_BY_ID)
_LOBBY_BY_CODE = Statement(_LOBBY_BY_CODE)
_INSERT_LOBBY = Statement(insert(lobbies), ["id", "code", "name", "status", "host_device_id", "last_seq", "created_s", "updated_s"])
_PARTICIPANTS = Statement(
    select(participants.c.device_id, participants.c.role, participants.c.joined_seq, participants.c.name)
    .where(participants.c.lobby_id == _b("lobby_id"))
    .order_by(participants.c.joined_seq)
)
_INSERT_PARTICIPANT = Statement(insert(participants), ["lobby_id", "device_id", "role", "joined_seq", "joined_s", "name"])
_DELETE_PARTICIPANT = delete(participants).where(participants.c.lobby_id == _b("lobby_id"), participants.c.device_id == _b("device_id"))
_SEAT = and_(participants.c.lobby_id == _b("p_lobby_id"), participants.c.device_id == _b("p_device_id"))
_SET_ROLE = update(participants).where(_SEAT).values(role=_b("p_role"))
_SET_NAME = update(participants).where(_SEAT).values(name=_b("p_name"))
_NEXT_SEQ = Statement(
    update(lobbies)
    .where(lobbies.c.id == _b("lobby_id"))
    .values(last_seq=lobbies.c.last_seq + 1, updated_s=_b("now_s"))
    .returning(lobbies.c.last_seq)
)
_INSERT_EVENT = Statement(insert(events), ["lobby_id", "seq", "type", "device_id", "data", "created_s"])
_EVENTS = Statement(
    select(events.c.seq, events.c.type, events.c.device_id, events.c.data, events.c.created_s)
    .where(events.c.lobby_id == _b("lobby_id"), events.c.seq > _b("since"))
    .order_by(events.c.seq)
    .limit(_b("limit"))
)
_SESSION = Statement(select(sessions.c.state, sessions.c.version, sessions.c.lobby_id).where(sessions.c.id == _b("session_id")))
_TERMINAL = [s.value for s in TERMINAL_STEPS]
# With storage on, the changes return what the storage record needs instead of reading it again.
_SEAT_COLUMNS = (participants.c.role, participants.c.name, participants.c.joined_s)
_DELETE_PARTICIPANT_RETURNING = Statement(_DELETE_PARTICIPANT.returning(*_SEAT_COLUMNS))
_SET_ROLE_RETURNING = Statement(_SET_ROLE.returning(*_SEAT_COLUMNS))
_SET_NAME_RETURNING = Statement(_SET_NAME.returning(*_SEAT_COLUMNS))
_DELETE_PARTICIPANT = Statement(_DELETE_PARTICIPANT)
_SET_ROLE = Statement(_SET_ROLE)
_SET_NAME = Statement(_SET_NAME)
_JOIN_FAILURES = Statement(
    select(join_failures.c.window_start_s, join_failures.c.failures).where(join_failures.c.device_id == _b("device_id"))
)
_INSERT_OUTBOX = insert(outbox_table)
_SESSION_TIMES = Statement(
    select(sessions.c.state, sessions.c.created_s, sessions.c.updated_s).where(sessions.c.id == _b("session_id"))
)


# ----------------------------------------------------------------------------------------------- lobbies


def insert_lobby(conn: Connection, *, lobby_id: str, code: str, name: str | None, host_device_id: str, now_s: float) -> LobbyRow:
    """Insert an open lobby; returns its row as inserted."""
    _INSERT_LOBBY.rows(
        conn,
        {
            "id": lobby_id,
            "code": code,
            "name": name,
            "status": LobbyStatus.OPEN.value,
            "host_device_id": host_device_id,
            "last_seq": 0,
            "created_s": now_s,
            "updated_s": now_s,
        },
    )
    row = LobbyRow(lobby_id, code, name, LobbyStatus.OPEN, host_device_id, None, 0, None, now_s, now_s)
    changes = _changes(conn)
    if changes is not None:
        changes.devices.setdefault(host_device_id, lobby_id)
        changes.lobbies[lobby_id] = row
        changes.now_s = now_s
    return row


def get_lobby(conn: Connection, lobby_id: str, *, lock: bool = False) -> LobbyRow | None:
    """``lock``: hold the row until the transaction ends (PostgreSQL ``FOR UPDATE``; SQLite has one writer)."""
    query = _LOBBY_BY_ID_LOCKED if lock and conn.dialect.name != "sqlite" else _LOBBY_BY_ID
    return _lobby(query.first(conn, {"lobby_id": lobby_id}))


def claim_lobby(conn: Connection, lobby_id: str) -> LobbyRow | None:
    """The lobby row locked until the transaction ends, or None when another transaction holds it
    (PostgreSQL ``FOR UPDATE SKIP LOCKED``: a replica's timer passes over a lobby another replica is
    working on; SQLite has one writer, so the row is always had)."""
    if conn.dialect.name == "sqlite":
        return get_lobby(conn, lobby_id)
    return _lobby(_LOBBY_BY_ID_CLAIMED.first(conn, {"lobby_id": lobby_id}))


def get_lobby_by_code(conn: Connection, code: str, *, lock: bool = False) -> LobbyRow | None:
    """The lobby that holds ``code`` and is not closed (codes of closed lobbies are reused)."""
    query = _LOBBY_BY_CODE_LOCKED if lock and conn.dialect.name != "sqlite" else _LOBBY_BY_CODE
    return _lobby(query.first(conn, {"code": code}))


def update_lobby(conn: Connection, lobby_id: str, **values: Any) -> None:
    if "status" in values:
        values["status"] = LobbyStatus(values["status"]).value
    conn.execute(update(lobbies).where(lobbies.c.id == lobby_id).values(**values))
    changes = _changes(conn)
    if changes is not None:
        changes.lobbies[lobby_id] = None  # read again at the end of the transaction


def idle_lobbies(conn: Connection, *, updated_before_s: float) -> list[str]:
    """Lobbies not closed, untouched since ``updated_before_s`` and with no session running."""
    running = exists().where(and_(sessions.c.id == lobbies.c.session_id, sessions.c.step.not_in(_TERMINAL)))
    query = select(lobbies.c.id).where(_NOT_CLOSED, lobbies.c.updated_s < updated_before_s, ~running)
    return list(conn.execute(query).scalars())


# ----------------------------------------------------------------------------------------------- participants


def list_participants(conn: Connection, lobby_id: str) -> list[ParticipantRow]:
    return [ParticipantRow(*row) for row in _PARTICIPANTS.rows(conn, {"lobby_id": lobby_id})]


def add_participant(conn: Connection, *, lobby_id: str, device_id: str, joined_seq: int, now_s: float, name: str | None = None) -> None:
    values = {"lobby_id": lobby_id, "device_id": device_id, "role": None, "joined_seq": joined_seq, "joined_s": now_s, "name": name}
    _INSERT_PARTICIPANT.rows(conn, values)
    changes = _changes(conn)
    if changes is not None:
        changes.devices.setdefault(device_id, lobby_id)
        changes.seats[(lobby_id, device_id)] = Seat(None, name, now_s)
        changes.now_s = now_s


def remove_participant(conn: Connection, *, lobby_id: str, device_id: str) -> None:
    key = {"lobby_id": lobby_id, "device_id": device_id}
    changes = _changes(conn)
    if changes is None:
        _DELETE_PARTICIPANT.rows(conn, key)
        return
    seat = _DELETE_PARTICIPANT_RETURNING.first(conn, key)
    if seat is not None:
        changes.seats.pop((lobby_id, device_id), None)
        changes.left[(lobby_id, device_id)] = Seat(*seat)


def set_role(conn: Connection, *, lobby_id: str, device_id: str, role: str | None) -> None:
    _update_seat(conn, _SET_ROLE, _SET_ROLE_RETURNING, {"p_lobby_id": lobby_id, "p_device_id": device_id, "p_role": role})


def set_name(conn: Connection, *, lobby_id: str, device_id: str, name: str | None) -> None:
    _update_seat(conn, _SET_NAME, _SET_NAME_RETURNING, {"p_lobby_id": lobby_id, "p_device_id": device_id, "p_name": name})


def _update_seat(conn: Connection, plain: Statement, returning: Statement, values: dict[str, Any]) -> None:
    changes = _changes(conn)
    if changes is None:
        plain.rows(conn, values)
        return
    seat = returning.first(conn, values)
    if seat is not None:
        changes.seats[(values["p_lobby_id"], values["p_device_id"])] = Seat(*seat)


# ----------------------------------------------------------------------------------------------- failed joins


def join_failures_of(conn: Connection, device_id: str) -> tuple[float, int] | None:
    """``(window_start_s, failures)`` of the device's failed lookups by code, or None if it has none on record."""
    return _JOIN_FAILURES.first(conn, {"device_id": device_id})


def count_join_failure(conn: Connection, device_id: str, *, now_s: float, window_s: float) -> tuple[float, int]:
    """Count one failed lookup by code, atomically (concurrent transactions of one device on PostgreSQL
    each add theirs): a new window starts when the device's last one is over. Returns the window's
    ``(window_start_s, failures)`` including this one."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    over = join_failures.c.window_start_s <= now_s - window_s
    statement = (
        dialect.insert(join_failures)
        .values(device_id=device_id, window_start_s=now_s, failures=1)
        .on_conflict_do_update(
            index_elements=[join_failures.c.device_id],
            set_={
                "window_start_s": case((over, now_s), else_=join_failures.c.window_start_s),
                "failures": case((over, 1), else_=join_failures.c.failures + 1),
            },
        )
        .returning(join_failures.c.window_start_s, join_failures.c.failures)
    )
    window_start_s, failures = conn.execute(statement).one()
    return window_start_s, failures


def prune_join_failures(conn: Connection, *, before_s: float) -> int:
    """Forget the failures of windows that started before ``before_s`` (they no longer count)."""
    return conn.execute(delete(join_failures).where(join_failures.c.window_start_s < before_s)).rowcount


# ----------------------------------------------------------------------------------------------- event log


def append_event(conn: Connection, *, lobby_id: str, type_: str, device_id: str | None, data: dict[str, Any], now_s: float) -> int:
    """Append to the lobby's log and touch the lobby (idle timer); returns the event's ``seq``.

    The counter lives on the lobby row, so appends to one lobby are serialized by its row lock and the
    log has no gaps or reordering as seen by readers.
    """
    (seq,) = _NEXT_SEQ.rows(conn, {"lobby_id": lobby_id, "now_s": now_s})[0]
    values = {"lobby_id": lobby_id, "seq": seq, "type": type_, "device_id": device_id, "data": data, "created_s": now_s}
    _INSERT_EVENT.rows(conn, values)
    changes = _changes(conn)
    if changes is not None:
        changes.now_s = now_s
    return seq


def list_events(conn: Connection, lobby_id: str, *, since: int, limit: int) -> list[dict[str, Any]]:
    rows = _EVENTS.rows(conn, {"lobby_id": lobby_id, "since": since, "limit": limit})
    return [{"seq": seq, "type": type_, "device_id": device_id, "data": data, "created_s": created_s} for seq, type_, device_id, data, created_s in rows]


# ----------------------------------------------------------------------------------------------- sessions


def insert_session(conn: Connection, state: SessionState, *, now_s: float) -> None:
    conn.execute(
        insert(sessions).values(
            id=state.session_id,
            lobby_id=state.lobby_id,
            step=state.step.value,
            state=state.to_json(),
            version=1,
            deadline_s=state.deadline_s,
            created_s=now_s,
            updated_s=now_s,
        )
    )
    changes = _changes(conn)
    if changes is not None:
        changes.sessions[state.session_id] = None


def get_session(conn: Connection, session_id: str) -> SessionRow | None:
    row = _SESSION.first(conn, {"session_id": session_id})
    return None if row is None else SessionRow(SessionState.from_json(row[0]), row[1], row[2])


def save_session(conn: Connection, state: SessionState, *, version: int, now_s: float) -> bool:
    """Write ``state`` if the row is still at ``version`` (optimistic concurrency); False if it moved on."""
    result = conn.execute(
        update(sessions)
        .where(sessions.c.id == state.session_id, sessions.c.version == version)
        .values(step=state.step.value, state=state.to_json(), version=version + 1, deadline_s=state.deadline_s, updated_s=now_s)
    )
    saved = result.rowcount == 1
    changes = _changes(conn)
    if saved and changes is not None:
        changes.sessions[state.session_id] = None
    return saved


def session_of_job(conn: Connection, lobby_id: str, job_id: str) -> SessionState | None:
    """The lobby's session that measures into the measurement job ``job_id`` (a lobby has few sessions)."""
    for (state,) in conn.execute(select(sessions.c.state).where(sessions.c.lobby_id == lobby_id)):
        if state.get("job_id") == job_id:
            return SessionState.from_json(state)
    return None


def due_sessions(conn: Connection, *, now_s: float) -> list[str]:
    query = select(sessions.c.id).where(sessions.c.deadline_s <= now_s, sessions.c.step.not_in(_TERMINAL))
    return list(conn.execute(query).scalars())


_ANALYZING = sessions.c.step == SessionStep.ANALYZING.value


def lease_analysis(conn: Connection, session_id: str, *, runner: str, until_s: float) -> None:
    """``runner`` awaits the session's analysis until ``until_s`` (in the transaction that moved it to
    ``analyzing``: there is never an analyzing session without its runner)."""
    conn.execute(update(sessions).where(sessions.c.id == session_id).values(runner=runner, lease_until_s=until_s))


def renew_analyses(conn: Connection, session_ids: list[str], *, runner: str, until_s: float | None) -> None:
    """Extend (``until_s`` None: end) ``runner``'s leases on the analyses of ``session_ids`` it still holds;
    one another replica took over meanwhile stays that replica's."""
    held = sessions.c.id.in_(session_ids) & _ANALYZING & (sessions.c.runner == runner)
    conn.execute(update(sessions).where(held).values(lease_until_s=until_s))


def claim_lapsed_analyses(conn: Connection, *, runner: str, now_s: float, until_s: float, exclude: set[str]) -> list[SessionState]:
    """Take over the analyzing sessions whose runner stopped renewing before ``now_s`` (or that have none:
    a row from before migration 0007), but ``exclude``. Each claim is an UPDATE conditional on the lapsed
    lease: of several replicas claiming one session, one wins."""
    lapsed = _ANALYZING & (sessions.c.lease_until_s.is_(None) | (sessions.c.lease_until_s < now_s))
    if exclude:
        lapsed &= sessions.c.id.not_in(exclude)
    claimed = []
    for session_id in conn.execute(select(sessions.c.id).where(lapsed)).scalars().all():
        taken = conn.execute(update(sessions).where(lapsed & (sessions.c.id == session_id)).values(runner=runner, lease_until_s=until_s))
        if taken.rowcount == 1:
            claimed.append(get_session(conn, session_id).state)
    return claimed


# ----------------------------------------------------------------------------------------------- storage records


def enqueue_storage_records(conn: Connection, changes: StorageChanges) -> None:
    """Insert the outbox rows of what ``changes`` names, as the rows stand now (one multi-row ``INSERT``).

    Every record of a lobby is ordered by its lobby id (the outbox's aggregate), parents first:
    devices, the lobby, seats, measurements (storage refuses a child whose parent it does not hold yet).
    """
    lobby_rows = changes.lobbies

    def lobby_of(lobby_id: str) -> LobbyRow:
        row = lobby_rows.get(lobby_id)
        if row is None:
            row = lobby_rows[lobby_id] = get_lobby(conn, lobby_id)
        return row

    rows = [put_row("devices", device_record(device_id), aggregate=lobby_id) for device_id, lobby_id in changes.devices.items()]
    rows += [put_row("lobbies", lobby_record(lobby_of(lobby_id)), aggregate=lobby_id) for lobby_id in list(changes.lobbies)]
    for (lobby_id, device_id), seat in changes.seats.items():
        record = participant_record(lobby_id, device_id, role=seat.role, name=seat.name, joined_s=seat.joined_s)
        rows.append(put_row("participants", record, aggregate=lobby_id))
    left_s = changes.now_s if changes.now_s is not None else time.time()
    for (lobby_id, device_id), seat in changes.left.items():
        record = participant_record(lobby_id, device_id, role=seat.role, name=seat.name, joined_s=seat.joined_s, left_s=left_s)
        rows.append(put_row("participants", record, aggregate=lobby_id))
    for session_id in changes.sessions:
        state_json, created_s, updated_s = _SESSION_TIMES.first(conn, {"session_id": session_id})
        state = SessionState.from_json(state_json)
        room = lobby_of(state.lobby_id).room
        record = measurement_record(state, room=room, created_s=created_s, updated_s=updated_s)
        rows.append(put_row("measurements", record, aggregate=state.lobby_id))
    if rows:
        conn.execute(_INSERT_OUTBOX, rows)
