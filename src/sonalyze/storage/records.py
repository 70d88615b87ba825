"""What the routes do with records: idempotent create/replace, partial update, delete, reads.

Each operation owns its transactions through :meth:`StorageDatabase.transaction` and turns database
constraint failures into the service's errors: a different record under the same ``id`` or a taken
unique key is 409 ``conflict``; a parent that does not exist is 422 ``missing_reference``.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from sonalyze.common.errors import Busy, Conflict, NotFound, SonalyzeError, Unprocessable
from sonalyze.storage import repository
from sonalyze.storage.db import StorageDatabase
from sonalyze.storage.repository import Row
from sonalyze.storage.resources import Resource


class MissingReference(Unprocessable):
    """A record names a parent (``lobby_id``, ``measurement_id``, ...) that storage does not hold (yet)."""

    code = "missing_reference"


class WriteOutcome(enum.Enum):
    CREATED = "created"
    REPLACED = "replaced"
    UNCHANGED = "unchanged"
    """An idempotent replay: the same record was already stored; nothing was written."""


def _utc(value: Any) -> Any:
    return value.astimezone(UTC) if isinstance(value, datetime) else value


def _normalized(values: Row) -> Row:
    return {key: _utc(value) for key, value in values.items()}


def new_record_id(given: str | None) -> str:
    """A new record's id: the client's, else a random UUID (RFC 9562 §5.4, version 4)."""
    return given or str(uuid.uuid4())


def new_row(record_id: str, values: Row) -> Row:
    """The row a write inserts: ``values`` with datetimes in UTC, its ``id``, ``created_at`` = ``updated_at`` = now."""
    now = datetime.now(UTC)
    return {"id": record_id, **_normalized(values), "created_at": now, "updated_at": now}


def _differences(resource: Resource, stored: Row, values: Row) -> list[str]:
    return [field for field in resource.fields if stored[field] != values[field]]


async def _explain(connection: AsyncConnection, *, resource: Resource, record_id: str, row: Row) -> SonalyzeError:
    """Why a write broke a constraint, found by asking the database (the same way on every backend)."""
    clash = await repository.unique_clash(connection, resource=resource, record_id=record_id, row=row)
    if clash is not None:
        shown = ", ".join(f"{column}={value!r}" for column, value in clash.items())
        return Conflict(f"another {resource.name} record already has {shown}", details={"fields": clash})
    missing = await repository.missing_reference(connection, resource=resource, row=row)
    if missing is not None:
        column, parent = missing
        return MissingReference(
            f"{column} {row[column]!r} names no record in {parent}",
            details={"field": column, "resource": parent, "id": row[column]},
        )
    return Busy("a concurrent write changed this record; retry", headers={"Retry-After": "1"})


async def write(
    database: StorageDatabase, *, resource: Resource, record_id: str, values: Row, replace: bool
) -> tuple[Row, WriteOutcome]:
    """Store ``values`` under ``record_id``: insert, or replay, or (``replace``) overwrite.

    The same content again is an idempotent replay (nothing written). Different content under an
    existing ``id`` replaces it when ``replace`` (``PUT``), else it is a 409 ``conflict`` (``POST``).
    """
    row = new_row(record_id, values)
    values = {field: row[field] for field in values}
    now = row["updated_at"]
    try:
        async with database.single() as connection:
            await repository.insert_row(connection, resource=resource, row=row)
        return row, WriteOutcome.CREATED
    except IntegrityError:
        pass  # an existing id, a taken unique key or a missing parent: find out which below
    try:
        async with database.transaction() as connection:
            stored = await repository.fetch(connection, resource=resource, record_id=record_id, lock=True)
            if stored is None:
                raise await _explain(connection, resource=resource, record_id=record_id, row=row)
            changed = _differences(resource, stored, values)
            if not changed:
                return stored, WriteOutcome.UNCHANGED
            if not replace:
                raise Conflict(
                    f"{resource.name} {record_id!r} already exists with different content",
                    details={"id": record_id, "fields": changed},
                )
            updated = await repository.update_row(
                connection, resource=resource, record_id=record_id, values={**values, "updated_at": now}
            )
            assert updated is not None  # the row is locked
            return updated, WriteOutcome.REPLACED
    except IntegrityError:
        async with database.transaction() as connection:
            raise await _explain(connection, resource=resource, record_id=record_id, row=row) from None


async def patch(database: StorageDatabase, *, resource: Resource, record_id: str, changes: Row) -> Row:
    """Change only the fields in ``changes``; 404 when there is no such record."""
    changes = _normalized(changes)
    try:
        async with database.single() as connection:
            updated = await repository.update_row(
                connection, resource=resource, record_id=record_id, values={**changes, "updated_at": datetime.now(UTC)}
            )
    except IntegrityError:
        async with database.transaction() as connection:
            stored = await repository.fetch(connection, resource=resource, record_id=record_id) or {}
            row = {**stored, **changes}
            raise await _explain(connection, resource=resource, record_id=record_id, row=row) from None
    if updated is None:
        raise _not_found(resource, record_id)
    return updated


async def remove(database: StorageDatabase, *, resource: Resource, record_id: str) -> None:
    async with database.single() as connection:
        deleted = await repository.delete_row(connection, resource=resource, record_id=record_id)
    if not deleted:
        raise _not_found(resource, record_id)


async def read(database: StorageDatabase, *, resource: Resource, record_id: str) -> Row:
    async with database.single() as connection:
        row = await repository.fetch(connection, resource=resource, record_id=record_id)
    if row is None:
        raise _not_found(resource, record_id)
    return row


async def read_lobby_by_code(database: StorageDatabase, *, code: str) -> Row:
    async with database.single() as connection:
        row = await repository.fetch_lobby_by_code(connection, code=code)
    if row is None:
        raise NotFound(f"no lobbies record with code {code!r}", details={"code": code})
    return row


async def list_page(
    database: StorageDatabase, *, resource: Resource, filters: Row, limit: int, offset: int
) -> dict[str, Any]:
    async with database.single() as connection:
        items, next_offset = await repository.page(
            connection, resource=resource, filters=filters, limit=limit, offset=offset
        )
    return {"items": items, "limit": limit, "offset": offset, "next_offset": next_offset}


def _not_found(resource: Resource, record_id: str) -> NotFound:
    return NotFound(f"no {resource.name} record with id {record_id!r}", details={"id": record_id})
