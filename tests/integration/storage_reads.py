"""Reading the storage service from tests: every record of a resource, and waiting for delivery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from sonalyze.storage.outbox import outbox_table
from tests.support.servers import SERVICE_HEADERS


async def all_records(storage_url: str, resource: str, **filters: str) -> list[dict[str, Any]]:
    """Every record of ``resource`` (matching the parent ``filters``), page by page."""
    items: list[dict[str, Any]] = []
    offset: int | None = 0
    async with httpx.AsyncClient(base_url=storage_url, timeout=10, headers=SERVICE_HEADERS) as http:
        while offset is not None:
            response = await http.get(f"/v1/{resource}", params={"limit": 500, "offset": offset, **filters})
            assert response.status_code == 200, response.text
            page = response.json()
            items += page["items"]
            offset = page["next_offset"]
    return items


async def eventually(probe: Callable[[], Awaitable[Any]], *, timeout_s: float, what: str) -> Any:
    """Call ``probe`` until it returns something truthy (delivery is asynchronous); its last answer on failure."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            answer = await probe()
        except (httpx.HTTPError, AssertionError) as exc:  # storage still starting
            answer = exc
        if answer and not isinstance(answer, Exception):
            return answer
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s; last answer: {answer!r}"
        await asyncio.sleep(0.2)


async def outbox_count(database_url: str) -> int:
    """Rows left in a writer's ``storage_outbox`` (pending or dead)."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return (await connection.execute(select(func.count()).select_from(outbox_table))).scalar_one()
    finally:
        await engine.dispose()
