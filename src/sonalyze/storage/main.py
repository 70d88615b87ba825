"""The storage service application: ``create_app`` (``sonalyze serve storage``, port 8004)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.types import Receive, Scope, Send

from sonalyze.common.errors import error_body, install_error_handlers
from sonalyze.common.internal_auth import InternalAuth, InternalAuthGuard
from sonalyze.common.json import JSONResponse
from sonalyze.storage import migrate
from sonalyze.storage.body_limit import BodySizeLimit
from sonalyze.storage.db import StorageDatabase, make_engine
from sonalyze.storage.fast_path import FastRecords, open_connections
from sonalyze.storage.resources import RESOURCES
from sonalyze.storage.routes import health_router, lookup_router, resource_router
from sonalyze.storage.settings import StorageSettings

logger = logging.getLogger("sonalyze.storage")


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database failed under a request (down, restarting, pool exhausted): 503, worth a retry."""
    logger.error("database error", exc_info=exc, extra={"path": request.url.path})
    body = error_body("database_unavailable", "the storage database is unavailable; retry later")
    return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})


class StorageApp(FastAPI):
    """FastAPI behind :class:`FastRecords`: the hot routes skip the framework (see
    :mod:`sonalyze.storage.fast_path`); everything else reaches FastAPI unchanged. The internal-auth
    guard stands in front of both."""

    def __init__(self, *, max_body_bytes: int, auth: InternalAuth, **options: Any) -> None:
        super().__init__(**options)
        fast_records = FastRecords(super().__call__, state=self.state, max_body_bytes=max_body_bytes)
        self._entry = InternalAuthGuard(fast_records, auth=auth)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._entry(scope, receive, send)


def create_app(settings: StorageSettings | None = None) -> FastAPI:
    """The storage application; the engine is created (and migrations run) at start-up, not here."""
    settings = settings or StorageSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url, pool_size=settings.storage_db_pool_size)
        shown_url = make_url(settings.database_url).render_as_string(hide_password=True)
        try:
            if settings.run_migrations:
                await migrate.upgrade(engine)
                logger.info("database migrated", extra={"database_url": shown_url, "revision": await migrate.current_revision(engine)})
            app.state.database = StorageDatabase(engine)
            app.state.fast_connections = open_connections(settings.database_url, size=settings.storage_db_pool_size)
            logger.info("storage ready", extra={"database_url": shown_url})
            yield
        finally:
            if getattr(app.state, "fast_connections", None) is not None:
                await app.state.fast_connections.close()
            await engine.dispose()

    app = StorageApp(
        max_body_bytes=settings.max_body_bytes,
        auth=InternalAuth.from_settings(settings),
        title="Sonalyze storage",
        version="1",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    install_error_handlers(app)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(InterfaceError, _database_unavailable)
    app.add_exception_handler(OSError, _database_unavailable)
    app.add_exception_handler(PoolTimeout, _database_unavailable)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.include_router(health_router())
    app.include_router(lookup_router())
    for resource in RESOURCES.values():
        app.include_router(resource_router(resource))
    return app
