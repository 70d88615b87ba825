"""The hot routes without the framework: create (``POST``), create-by-``PUT`` and read of one record
on PostgreSQL, straight on asyncpg.

:class:`FastRecords` is an ASGI middleware in front of the FastAPI routes. It answers only the
common successful case itself — a valid body whose ``INSERT`` succeeds (201), or a ``GET`` that finds
its row (200) — and hands everything else (invalid bodies, replays, conflicts, replacements, missing
parents, unknown records, database errors, SQLite) with the body it read to the FastAPI routes, which
decide exactly as they always do. Nothing is written before the hand-over: a failed ``INSERT`` wrote
nothing. The answers are the routes' answers: the same fields in the same order, the same status.

Per write this saves the routing and dependency machinery, a second serialization of the payload
(each JSON column is serialized once, and the answer embeds those bytes with ``orjson.Fragment``) and
SQLAlchemy's statement execution; inserts that arrive together are committed together
(:class:`Inserts`), which roughly halves PostgreSQL's work per row. A read re-serializes each stored
JSONB value as the routes do (PostgreSQL's JSONB text has spaces after ``:`` and ``,``; the answers must be
the same bytes, ``tests/storage/test_fast_path_differential.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import orjson
from pydantic import BaseModel
from sqlalchemy import JSON
from sqlalchemy.engine import make_url
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sonalyze.common.asgi import read_body, send_json
from sonalyze.common.json import dumps, loads
from sonalyze.storage import records
from sonalyze.storage.ids import is_record_id
from sonalyze.storage.resources import RESOURCES, Resource

T = TypeVar("T")


@dataclass(frozen=True)
class _Statements:
    """One resource's SQL, built once: asyncpg prepares and caches it per connection."""

    resource: Resource
    columns: tuple[str, ...]
    json_columns: frozenset[str]
    insert: str
    select: str


def _statements(resource: Resource) -> _Statements:
    columns = tuple(str(column.name) for column in resource.table.c)
    names = ", ".join(columns)
    placeholders = ", ".join(f"${index}" for index in range(1, len(columns) + 1))
    return _Statements(
        resource=resource,
        columns=columns,
        json_columns=frozenset(str(column.name) for column in resource.table.c if isinstance(column.type, JSON)),
        insert=f"INSERT INTO {resource.table.name} ({names}) VALUES ({placeholders})",
        select=f"SELECT {names} FROM {resource.table.name} WHERE id = $1",
    )


STATEMENTS = {name: _statements(resource) for name, resource in RESOURCES.items()}


class _HandOver(Exception):
    """Not the common case: let the FastAPI routes answer."""


async def _binary_jsonb(connection: asyncpg.Connection) -> None:
    """JSONB in as serialized JSON bytes, out compact as the routes write it (binary format: a version
    byte, then the text)."""
    await connection.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        format="binary",
        encoder=lambda value: b"\x01" + value,
        decoder=lambda data: orjson.Fragment(orjson.dumps(orjson.loads(data[1:]))),
    )


class Connections:
    """At most ``size`` asyncpg connections, opened on first use, for statements that are their own
    transaction (a ``SELECT``, an ``INSERT``, an ``executemany``).

    Simpler than :class:`asyncpg.Pool` (~1 µs per use instead of ~20 µs): no session state to reset
    between uses, and a connection whose statement failed in any way is closed and replaced later.
    """

    def __init__(self, dsn: str, *, size: int) -> None:
        self._dsn = dsn
        self._slots: asyncio.LifoQueue[asyncpg.Connection | None] = asyncio.LifoQueue()
        for _ in range(size):
            self._slots.put_nowait(None)
        self.inserts = {name: Inserts(self, statements.insert) for name, statements in STATEMENTS.items()}
        """One :class:`Inserts` per resource."""

    async def use(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``await work(connection)`` on a free connection (waiting for one if all are busy)."""
        connection = await self._slots.get()
        try:
            if connection is None or connection.is_closed():
                connection = None
                connection = await asyncpg.connect(self._dsn)
                await _binary_jsonb(connection)
            result = await work(connection)
        except BaseException:
            if connection is not None:
                connection.terminate()
            self._slots.put_nowait(None)
            raise
        self._slots.put_nowait(connection)
        return result

    async def close(self) -> None:
        while not self._slots.empty():
            connection = self._slots.get_nowait()
            if connection is not None:
                await connection.close()


class _BatchFailed(Exception):
    """A batch of several rows failed as a whole: each row is tried again on its own."""


class Inserts:
    """Concurrent inserts into one table written together (group commit): the rows waiting when a
    connection becomes free go in one atomic ``executemany`` — one round trip and one commit for all.

    ``insert`` returns once its row is committed. When a batch of several rows fails, nothing of it
    was written, and each waiting ``insert`` raises :class:`_BatchFailed`; a lone row's failure is
    :class:`_HandOver`.
    """

    MAX_ROWS = 32

    def __init__(self, connections: Connections, statement: str) -> None:
        self._connections = connections
        self._statement = statement
        self._pending: list[tuple[list[Any], asyncio.Future[None]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def insert(self, arguments: list[Any]) -> None:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((arguments, future))
        if len(self._pending) == 1:
            self._start_flush()
        await future

    def _start_flush(self) -> None:
        task = asyncio.get_running_loop().create_task(self._flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self) -> None:
        batch: list[tuple[list[Any], asyncio.Future[None]]] = []

        async def write(connection: asyncpg.Connection) -> None:
            batch.extend(self._pending[: self.MAX_ROWS])  # what waits now that a connection is free
            del self._pending[: self.MAX_ROWS]
            if self._pending:
                self._start_flush()
            await connection.executemany(self._statement, [arguments for arguments, _ in batch])

        try:
            await self._connections.use(write)
        except BaseException as error:  # noqa: BLE001 - the waiting requests hand over and explain it
            if not batch:  # no connection: fail what waits
                batch, self._pending = self._pending, []
            for _, future in batch:
                if not future.done():
                    future.set_exception(_HandOver() if len(batch) == 1 else _BatchFailed())
            if not isinstance(error, Exception):
                raise
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)


def open_connections(database_url: str, *, size: int) -> Connections | None:
    """The fast path's own connections (``None`` on SQLite: every request goes to the routes)."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return None
    return Connections(url.set(drivername="postgresql").render_as_string(hide_password=False), size=size)


class FastRecords:
    """ASGI middleware: ``POST /v1/{name}``, ``PUT`` and ``GET /v1/{name}/{id}`` on asyncpg when it can.

    It sits in front of the whole application; it uses ``state.fast_connections`` (set at start-up,
    ``None`` on SQLite). A body it reads declared a length of at most ``max_body_bytes`` (others, and
    chunked ones, go to the routes unread, where the size limit answers them).
    """

    def __init__(self, app: ASGIApp, *, state: Any, max_body_bytes: int) -> None:
        self.app = app
        self.state = state
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        connections = getattr(self.state, "fast_connections", None) if scope["type"] == "http" else None
        route = self._route(scope) if connections is not None else None
        if route is None:
            await self.app(scope, receive, send)
            return
        method, statements, record_id = route
        if method == "GET":
            try:
                await self._read(connections, statements, record_id, send)
            except _HandOver:
                await self.app(scope, receive, send)
            return
        body = await self._body(scope, receive)
        if body is None:
            await self.app(scope, receive, send)
            return
        try:
            await self._write(connections, statements, record_id, body, send, put=method == "PUT")
        except _HandOver:
            await self.app(scope, _replay(body, receive), send)

    @staticmethod
    def _route(scope: Scope) -> tuple[str, _Statements, str | None] | None:
        method, parts = scope["method"], scope["path"].split("/")
        if len(parts) < 3 or parts[1] != "v1" or (statements := STATEMENTS.get(parts[2])) is None:
            return None
        if len(parts) == 3 and method == "POST":
            return method, statements, None
        if len(parts) == 4 and method in ("GET", "PUT") and is_record_id(parts[3]):
            return method, statements, parts[3]
        return None

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body of a request that declares an acceptable length; else ``None``, nothing read."""
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if declared is None or not declared.isdigit() or int(declared) > self.max_body_bytes:
            return None
        body = await read_body(receive)
        if body is None:
            raise ClientDisconnect
        return body

    @staticmethod
    def _validated(model: type[BaseModel], body: bytes) -> BaseModel:
        try:
            return model.model_validate(loads(body))
        except ValueError:  # not JSON, or invalid (pydantic's ValidationError is a ValueError)
            raise _HandOver from None

    async def _write(
        self, connections: Connections, statements: _Statements, record_id: str | None, body: bytes, send: Send, *, put: bool
    ) -> None:
        resource = statements.resource
        record = self._validated(resource.create, body)
        if put and record.id not in (None, record_id):
            raise _HandOver
        values = records.new_row(
            record_id or records.new_record_id(record.id), {field: getattr(record, field) for field in resource.fields}
        )
        for column in statements.json_columns:  # asyncpg takes JSON as text: None is JSON null, as SQLAlchemy's JSON
            values[column] = dumps(values[column])
        arguments = [values[column] for column in statements.columns]
        row = {
            column: orjson.Fragment(value) if column in statements.json_columns else value
            for column, value in values.items()
        }
        try:
            await connections.inserts[resource.name].insert(arguments)
        except _BatchFailed:
            try:  # alone, to tell this row's failure from another's
                await connections.use(lambda connection: connection.execute(statements.insert, *arguments))
            except Exception:  # noqa: BLE001 - a taken id, a missing parent, a database error: the routes explain it
                raise _HandOver from None
        await send_json(send, 201, orjson.dumps(row))

    @staticmethod
    async def _read(connections: Connections, statements: _Statements, record_id: str, send: Send) -> None:
        try:
            found = await connections.use(lambda connection: connection.fetchrow(statements.select, record_id))
        except Exception:  # noqa: BLE001 - a database error: the routes answer it
            raise _HandOver from None
        if found is None:
            raise _HandOver
        await send_json(send, 200, orjson.dumps(dict(zip(statements.columns, found, strict=True))))


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the hand-over: the body already read, then the client's own messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
