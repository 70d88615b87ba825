"""Fixtures shared by every test: the real servers of this machine, and per-test data folders."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support import infra
from tests.support.cluster import redis_database


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database (SQLAlchemy asyncpg URL), dropped afterwards."""
    async with infra.postgres_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A fresh SQLite database file (SQLAlchemy aiosqlite URL)."""
    return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request, tmp_path) -> AsyncIterator[str]:
    """Each test that takes this runs twice: on SQLite and on the real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    async with infra.postgres_database() as url:
        yield url


@pytest.fixture
def redis_url() -> str:
    return infra.require(infra.REDIS_URL, 6379, "Redis")


@pytest.fixture
def queue_url(request) -> str:
    """A task queue of the test module's own: Redis database ``REDIS_DB`` (the module's constant, one number
    per module so modules running at once do not share one), emptied first."""
    return redis_database(request.module.REDIS_DB)


@pytest.fixture
def nats_url() -> str:
    return infra.require(infra.NATS_URL, 4222, "NATS")
