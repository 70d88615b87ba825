"""The one place the lobby service reads and writes its database (SQLAlchemy Core).

Every read and every change is one plain function over a SQLAlchemy ``Connection``; a change runs in
one transaction through :meth:`Database.write`. How it runs depends on the URL:

* SQLite: a synchronous pysqlite engine called inline on the event loop. A lobby transaction is a few
  statements of an embedded database (~0.2 ms in WAL mode with ``synchronous=NORMAL``, no fsync per
  commit); handing it to a thread (aiosqlite hops once per statement) cost more CPU than the work and
  capped the service at a few hundred events/s. Inline calls also make writers take turns, so they
  never meet ``database is locked``. ``sqlite+aiosqlite://`` URLs are accepted and run this way.
* PostgreSQL: the asyncpg engine; the same functions run through ``Connection.run_sync``.

Durable records (lobbies, participants, events, sessions) are written only by the functions of this
module, so a later outbox to the storage service has one place to hook in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, and_, bindparam, create_engine, delete, event, exists, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from sonalyze.lobby import migrations
from sonalyze.lobby.lifecycle import LobbyStatus
from sonalyze.lobby.models import events, lobbies, participants, sessions
from sonalyze.lobby.session import TERMINAL_STEPS, SessionState

T = TypeVar("T")


class Database:
    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            self._engine = create_engine(parsed.set(drivername="sqlite+pysqlite"))
            event.listen(self._engine, "connect", _sqlite_pragmas)
        else:
            self._async_engine = create_async_engine(parsed, pool_size=10, max_overflow=20)

    async def migrate(self) -> None:
        await self.write(migrations.upgrade)

    async def dispose(self) -> None:
        if self.is_sqlite:
            self._engine.dispose()
        else:
            await self._async_engine.dispose()

    async def write(self, work: Callable[..., T], *args: Any) -> T:
        """``work(connection, *args)`` in one transaction, committed when it returns, rolled back if it raises."""
        if self.is_sqlite:
            with self._engine.begin() as connection:
                return work(connection, *args)
        async with self._async_engine.begin() as connection:
            return await connection.run_sync(work, *args)

    async def read(self, work: Callable[..., T], *args: Any) -> T:
        """``work(connection, *args)`` without writing."""
        if self.is_sqlite:
            with self._engine.connect() as connection:
                return work(connection, *args)
        async with self._async_engine.connect() as connection:
            return await connection.run_sync(work, *args)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=10000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


# ----------------------------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class LobbyRow:
    id: str
    code: str
    name: str | None
    status: LobbyStatus
    host_device_id: str | None
    room: dict[str, Any] | None
    last_seq: int
    session_id: str | None
    created_s: float
    updated_s: float


@dataclass(frozen=True, slots=True)
class ParticipantRow:
    device_id: str
    role: str | None
    joined_seq: int


@dataclass(frozen=True, slots=True)
class SessionRow:
    state: SessionState
    version: int
    lobby_id: str


def _lobby(row: Any) -> LobbyRow | None:
    if row is None:
        return None
    values = dict(row._mapping)
    return LobbyRow(**{**values, "status": LobbyStatus(values["status"])})


# Statements are built once with bind parameters: building and hashing a new statement per call cost
# more than SQLite executing it.
_b = bindparam
_LOBBY_BY_ID = select(lobbies).where(lobbies.c.id == _b("lobby_id"))
_LOBBY_BY_CODE = select(lobbies).where(lobbies.c.code == _b("code"), lobbies.c.status != LobbyStatus.CLOSED.value)
_LOBBY_BY_ID_LOCKED = _LOBBY_BY_ID.with_for_update()
_LOBBY_BY_CODE_LOCKED = _LOBBY_BY_CODE.with_for_update()
_INSERT_LOBBY = insert(lobbies)
_PARTICIPANTS = (
    select(participants.c.device_id, participants.c.role, participants.c.joined_seq)
    .where(participants.c.lobby_id == _b("lobby_id"))
    .order_by(participants.c.joined_seq)
)
_INSERT_PARTICIPANT = insert(participants)
_DELETE_PARTICIPANT = delete(participants).where(participants.c.lobby_id == _b("lobby_id"), participants.c.device_id == _b("device_id"))
_SET_ROLE = (
    update(participants)
    .where(participants.c.lobby_id == _b("p_lobby_id"), participants.c.device_id == _b("p_device_id"))
    .values(role=_b("p_role"))
)
_NEXT_SEQ = (
    update(lobbies)
    .where(lobbies.c.id == _b("lobby_id"))
    .values(last_seq=lobbies.c.last_seq + 1, updated_s=_b("now_s"))
    .returning(lobbies.c.last_seq)
)
_INSERT_EVENT = insert(events)
_EVENTS = (
    select(events.c.seq, events.c.type, events.c.device_id, events.c.data, events.c.created_s)
    .where(events.c.lobby_id == _b("lobby_id"), events.c.seq > _b("since"))
    .order_by(events.c.seq)
    .limit(_b("limit"))
)
_SESSION = select(sessions.c.state, sessions.c.version, sessions.c.lobby_id).where(sessions.c.id == _b("session_id"))
_TERMINAL = [s.value for s in TERMINAL_STEPS]


# ----------------------------------------------------------------------------------------------- lobbies


def insert_lobby(conn: Connection, *, lobby_id: str, code: str, name: str | None, host_device_id: str, now_s: float) -> None:
    conn.execute(
        _INSERT_LOBBY,
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


def get_lobby(conn: Connection, lobby_id: str, *, lock: bool = False) -> LobbyRow | None:
    """``lock``: hold the row until the transaction ends (PostgreSQL ``FOR UPDATE``; SQLite has one writer)."""
    query = _LOBBY_BY_ID_LOCKED if lock and conn.dialect.name != "sqlite" else _LOBBY_BY_ID
    return _lobby(conn.execute(query, {"lobby_id": lobby_id}).first())


def get_lobby_by_code(conn: Connection, code: str, *, lock: bool = False) -> LobbyRow | None:
    """The lobby that holds ``code`` and is not closed (codes of closed lobbies are reused)."""
    query = _LOBBY_BY_CODE_LOCKED if lock and conn.dialect.name != "sqlite" else _LOBBY_BY_CODE
    return _lobby(conn.execute(query, {"code": code}).first())


def update_lobby(conn: Connection, lobby_id: str, **values: Any) -> None:
    if "status" in values:
        values["status"] = LobbyStatus(values["status"]).value
    conn.execute(update(lobbies).where(lobbies.c.id == lobby_id).values(**values))


def idle_lobbies(conn: Connection, *, updated_before_s: float) -> list[str]:
    """Lobbies not closed, untouched since ``updated_before_s`` and with no session running."""
    running = exists().where(and_(sessions.c.id == lobbies.c.session_id, sessions.c.step.not_in(_TERMINAL)))
    query = select(lobbies.c.id).where(lobbies.c.status != LobbyStatus.CLOSED.value, lobbies.c.updated_s < updated_before_s, ~running)
    return list(conn.execute(query).scalars())


# ----------------------------------------------------------------------------------------------- participants


def list_participants(conn: Connection, lobby_id: str) -> list[ParticipantRow]:
    return [ParticipantRow(*row) for row in conn.execute(_PARTICIPANTS, {"lobby_id": lobby_id}).all()]


def add_participant(conn: Connection, *, lobby_id: str, device_id: str, joined_seq: int, now_s: float) -> None:
    values = {"lobby_id": lobby_id, "device_id": device_id, "role": None, "joined_seq": joined_seq, "joined_s": now_s}
    conn.execute(_INSERT_PARTICIPANT, values)


def remove_participant(conn: Connection, *, lobby_id: str, device_id: str) -> None:
    conn.execute(_DELETE_PARTICIPANT, {"lobby_id": lobby_id, "device_id": device_id})


def set_role(conn: Connection, *, lobby_id: str, device_id: str, role: str | None) -> None:
    conn.execute(_SET_ROLE, {"p_lobby_id": lobby_id, "p_device_id": device_id, "p_role": role})


# ----------------------------------------------------------------------------------------------- event log


def append_event(conn: Connection, *, lobby_id: str, type_: str, device_id: str | None, data: dict[str, Any], now_s: float) -> int:
    """Append to the lobby's log and touch the lobby (idle timer); returns the event's ``seq``.

    The counter lives on the lobby row, so appends to one lobby are serialized by its row lock and the
    log has no gaps or reordering as seen by readers.
    """
    seq = conn.execute(_NEXT_SEQ, {"lobby_id": lobby_id, "now_s": now_s}).scalar_one()
    values = {"lobby_id": lobby_id, "seq": seq, "type": type_, "device_id": device_id, "data": data, "created_s": now_s}
    conn.execute(_INSERT_EVENT, values)
    return seq


def list_events(conn: Connection, lobby_id: str, *, since: int, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(_EVENTS, {"lobby_id": lobby_id, "since": since, "limit": limit}).all()
    return [{"seq": r.seq, "type": r.type, "device_id": r.device_id, "data": r.data, "created_s": r.created_s} for r in rows]


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


def get_session(conn: Connection, session_id: str) -> SessionRow | None:
    row = conn.execute(_SESSION, {"session_id": session_id}).first()
    return None if row is None else SessionRow(SessionState.from_json(row.state), row.version, row.lobby_id)


def save_session(conn: Connection, state: SessionState, *, version: int, now_s: float) -> bool:
    """Write ``state`` if the row is still at ``version`` (optimistic concurrency); False if it moved on."""
    result = conn.execute(
        update(sessions)
        .where(sessions.c.id == state.session_id, sessions.c.version == version)
        .values(step=state.step.value, state=state.to_json(), version=version + 1, deadline_s=state.deadline_s, updated_s=now_s)
    )
    return result.rowcount == 1


def due_sessions(conn: Connection, *, now_s: float) -> list[str]:
    query = select(sessions.c.id).where(sessions.c.deadline_s <= now_s, sessions.c.step.not_in(_TERMINAL))
    return list(conn.execute(query).scalars())


def sessions_in_step(conn: Connection, step: str) -> list[str]:
    return list(conn.execute(select(sessions.c.id).where(sessions.c.step == step)).scalars())
