"""The real PostgreSQL, Redis and NATS servers of this machine, for the tests that need them.

Where a server (or a tool such as Chromium) cannot be reached the test is skipped with the reason, unless
``SONALYZE_REQUIRE_SERVERS=1`` (set by ``.ci/run``): then it fails, because CI must really run it.
Addresses can be overridden with ``SONALYZE_TEST_POSTGRES_URL`` (an admin URL, database ``test``),
``SONALYZE_TEST_REDIS_URL`` and ``SONALYZE_TEST_NATS_URL``.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

POSTGRES_ADMIN_URL = os.environ.get("SONALYZE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SONALYZE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("SONALYZE_TEST_NATS_URL", "nats://127.0.0.1:4222")


def servers_required() -> bool:
    return os.environ.get("SONALYZE_REQUIRE_SERVERS", "").lower() in ("1", "true", "yes")


def reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1.0):
            return True
    except OSError:
        return False


def require(url: str, default_port: int, what: str) -> str:
    """Return ``url`` if its server answers; otherwise skip (or fail under CI) with the reason."""
    if reachable(url, default_port):
        return url
    skip_unless_required(f"{what} is not reachable at {url}")


def skip_unless_required(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail under ``SONALYZE_REQUIRE_SERVERS`` (CI must run every test)."""
    if servers_required():
        pytest.fail(f"{reason}, and SONALYZE_REQUIRE_SERVERS is set: this test must run in CI")
    pytest.skip(reason, allow_module_level=True)  # also from a module's top (a missing library)


def require_module(name: str) -> ModuleType:
    """``pytest.importorskip`` that fails under ``SONALYZE_REQUIRE_SERVERS`` (a test extra CI must have)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        skip_unless_required(f"the {name} package is not installed ({exc}; pip install -e '.[test]')")


SERVER_BINARY_DIRS = ("/usr/sbin", "/usr/local/sbin")  # Debian puts nats-server here, often not on a user's PATH


def require_binary(name: str) -> str:
    """The path of the program ``name`` (PATH, then the sbin folders); skip, or fail under CI, when absent."""
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SERVER_BINARY_DIRS))
    if found is None:
        skip_unless_required(f"{name} is not installed (.ci/run installs it with apt-get)")
    return found


async def create_postgres_database() -> tuple[str, str]:
    """Create an empty database for one test module; returns (asyncpg SQLAlchemy URL, name)."""
    import asyncpg

    admin = require(POSTGRES_ADMIN_URL, 5432, "PostgreSQL")
    name = f"sonalyze_test_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(admin)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    parts = urlsplit(admin)
    return f"postgresql+asyncpg://{parts.netloc}/{name}", name


async def drop_postgres_database(name: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh, empty database for the block (SQLAlchemy asyncpg URL), dropped after it."""
    url, name = await create_postgres_database()
    try:
        yield url
    finally:
        await drop_postgres_database(name)
