"""SQL for one resource at a time, on a connection the caller's unit of work owns (no commits here)."""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Delete, Result, Select, Table, and_, bindparam, delete, exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from sonalyze.storage.resources import RESOURCES, Resource

Row = dict[str, Any]


def _rows(table: Table, result: Result) -> list[Row]:
    """Plain-``str``-keyed dicts (SQLAlchemy's keys are a ``str`` subclass JSON encoders refuse)."""
    names = [str(column.name) for column in table.c]
    return [dict(zip(names, row, strict=True)) for row in result]


def _first(table: Table, result: Result) -> Row | None:
    rows = _rows(table, result)
    return rows[0] if rows else None


@functools.cache
def _by_id(table: Table, lock: bool) -> Select:
    """Built once per table: the hot paths then skip SQLAlchemy's statement construction."""
    statement = select(table).where(table.c.id == bindparam("record_id"))
    return statement.with_for_update() if lock else statement


async def fetch(connection: AsyncConnection, *, resource: Resource, record_id: str, lock: bool = False) -> Row | None:
    result = await connection.execute(_by_id(resource.table, lock), {"record_id": record_id})
    return _first(resource.table, result)


async def fetch_lobby_by_code(connection: AsyncConnection, *, code: str) -> Row | None:
    """The lobby holding ``code`` now: the open one, else the most recently updated closed one."""
    table = RESOURCES["lobbies"].table
    statement = (
        select(table)
        .where(table.c.code == code)
        .order_by((table.c.status == "closed").asc(), table.c.updated_at.desc())
        .limit(1)
    )
    return _first(table, await connection.execute(statement))


async def insert_row(connection: AsyncConnection, *, resource: Resource, row: Row) -> None:
    """``row`` must name every column (one compiled INSERT per table serves every call)."""
    await connection.execute(insert(resource.table), row)


async def update_row(connection: AsyncConnection, *, resource: Resource, record_id: str, values: Row) -> Row | None:
    table = resource.table
    statement = update(table).where(table.c.id == record_id).values(values).returning(*table.c)
    return _first(resource.table, await connection.execute(statement))


@functools.cache
def _delete_by_id(table: Table) -> Delete:
    return delete(table).where(table.c.id == bindparam("record_id"))


async def delete_row(connection: AsyncConnection, *, resource: Resource, record_id: str) -> bool:
    result = await connection.execute(_delete_by_id(resource.table), {"record_id": record_id})
    return result.rowcount > 0


async def page(
    connection: AsyncConnection, *, resource: Resource, filters: Row, limit: int, offset: int
) -> tuple[list[Row], int | None]:
    """Rows ordered by (created_at, id) and the next page's offset (``None`` on the last page)."""
    table = resource.table
    statement = (
        select(table)
        .where(*(table.c[column] == value for column, value in filters.items()))
        .order_by(table.c.created_at, table.c.id)
        .limit(limit + 1)
        .offset(offset)
    )
    rows = _rows(table, await connection.execute(statement))
    if len(rows) > limit:
        return rows[:limit], offset + limit
    return rows, None


async def unique_clash(connection: AsyncConnection, *, resource: Resource, record_id: str, row: Row) -> dict[str, Any] | None:
    """The first unique key of ``row`` another record already holds, as ``{column: value}``."""
    table = resource.table
    for key in resource.unique_keys:
        values = {column: row.get(column) for column in key.columns}
        if any(value is None for value in values.values()) or not key.applies_to(row):
            continue
        conditions = [table.c.id != record_id, *(table.c[column] == value for column, value in values.items())]
        if key.where is not None:
            conditions.append(key.where)
        if (await connection.execute(select(exists().where(and_(*conditions))))).scalar():
            return values
    return None


async def missing_reference(connection: AsyncConnection, *, resource: Resource, row: Row) -> tuple[str, str] | None:
    """The first ``(column, parent resource)`` whose referenced record does not exist."""
    for column, parent_name in resource.references.items():
        value = row.get(column)
        if value is None:
            continue
        parent = RESOURCES[parent_name].table
        if not (await connection.execute(select(exists().where(parent.c.id == value)))).scalar():
            return column, parent_name
    return None
