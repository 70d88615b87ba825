"""``sonalyze serve measurement``: the application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from sonalyze.common.errors import install_error_handlers
from sonalyze.common.internal_auth import InternalAuth, InternalAuthGuard
from sonalyze.common.json import JSONResponse
from sonalyze.measurement.api import event_handlers, http_router
from sonalyze.measurement.service import MeasurementService
from sonalyze.measurement.settings import MeasurementSettings


def create_app(settings: MeasurementSettings | None = None) -> FastAPI:
    """The measurement service; settings from the environment unless given."""
    settings = settings or MeasurementSettings()
    auth = InternalAuth.from_settings(settings)
    service = MeasurementService(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.close()

    app = FastAPI(title="Sonalyze measurement", version="1", lifespan=lifespan, default_response_class=JSONResponse)
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(InternalAuthGuard, auth=auth)
    app.include_router(http_router())
    app.include_router(event_handlers().router())
    return app
