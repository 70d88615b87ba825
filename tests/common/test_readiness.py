"""The database readiness probe (sonalyze.common.readiness) on the real PostgreSQL and on servers that never answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import create_async_engine

from sonalyze.common.readiness import database_unready

BOUND_S = 0.5
SLACK_S = 1.0
"""What the event loop may add to the bound on a busy machine (asyncpg alone would wait 60 s)."""


@asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never sends a byte (a hung database server)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in held:
            writer.close()


@asynccontextmanager
async def freezable_proxy(target_port: int) -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A TCP proxy to ``target_port`` that stops relaying (both ways) once the event is set: a database that
    froze after the connection was made (SIGSTOP)."""
    frozen, released = asyncio.Event(), asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if frozen.is_set():
                await released.wait()  # held until the proxy closes: no answer comes
                return
            writer.write(data)

    async def accept(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        writers.extend((client_writer, server_writer))
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer), return_exceptions=True)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], frozen
    finally:
        released.set()
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def _timed(engine, name: str) -> tuple[str | None, float]:
    started = time.monotonic()
    reason = await database_unready(engine, name, BOUND_S)
    return reason, time.monotonic() - started


async def test_a_database_that_answers_is_ready(postgres_url: str) -> None:
    engine = create_async_engine(postgres_url)
    try:
        assert await database_unready(engine, "test database", BOUND_S) is None
    finally:
        await engine.dispose()


async def test_a_refused_connection_is_not_ready_with_the_reason() -> None:
    async with silent_server() as port:
        pass  # closed: nothing listens on the port any more
    engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/test")
    try:
        reason, elapsed_s = await _timed(engine, "test database")
    finally:
        await engine.dispose()
    assert reason is not None and reason.startswith("the test database does not answer: ConnectionRefusedError"), reason
    assert elapsed_s < BOUND_S + SLACK_S


async def test_a_server_that_never_answers_is_not_ready_within_the_bound() -> None:
    async with silent_server() as port:
        engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/test")
        try:
            reason, elapsed_s = await _timed(engine, "test database")
        finally:
            await engine.dispose()
    assert reason == "the test database does not answer: TimeoutError: "
    assert BOUND_S <= elapsed_s < BOUND_S + SLACK_S, elapsed_s


async def test_a_database_frozen_after_connecting_is_not_ready_within_the_bound(postgres_url: str) -> None:
    parts = urlsplit(postgres_url)
    async with freezable_proxy(parts.port or 5432) as (proxy_port, frozen):
        engine = create_async_engine(postgres_url.replace(parts.netloc, f"{parts.username}@127.0.0.1:{proxy_port}"))
        try:
            assert await database_unready(engine, "test database", BOUND_S) is None  # pooled: the next probe reuses it
            frozen.set()
            reason, elapsed_s = await _timed(engine, "test database")
            assert reason == "the test database does not answer: TimeoutError: "
            assert BOUND_S <= elapsed_s < BOUND_S + SLACK_S, elapsed_s
        finally:
            await engine.dispose()
