"""Storage test fixtures: one storage server per test module and backend (SQLite, then PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from sonalyze.storage.main import create_app
from sonalyze.storage.settings import StorageSettings
from tests.support import infra
from tests.support.servers import INTERNAL_TOKEN, SERVICE_HEADERS, ThreadedServer

MAX_BODY_MB = 1.0


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def storage_url(request, tmp_path_factory) -> Iterator[str]:
    """Like the shared ``database_url``, but one database per module so one server serves many tests."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('storage') / 'storage.db'}"
        return
    url, name = asyncio.run(infra.create_postgres_database())
    try:
        yield url
    finally:
        asyncio.run(infra.drop_postgres_database(name))


@pytest.fixture(scope="module")
def storage_server(storage_url) -> Iterator[ThreadedServer]:
    settings = StorageSettings(database_url=storage_url, storage_max_body_mb=MAX_BODY_MB, internal_auth_token=INTERNAL_TOKEN)
    with ThreadedServer(create_app(settings)) as server:
        yield server


@pytest.fixture
async def api(storage_server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=storage_server.url, timeout=60, headers=SERVICE_HEADERS) as client:
        yield client
