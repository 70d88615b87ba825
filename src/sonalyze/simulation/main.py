"""The simulation service's HTTP application and its ``/gateway/handle`` events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse

from sonalyze.common.errors import BadRequest, install_error_handlers
from sonalyze.common.handle import EventContext, EventHandlers
from sonalyze.common.internal_auth import InternalAuth, InternalAuthGuard
from sonalyze.common.json import JSONResponse
from sonalyze.simulation.config import SimulationSettings
from sonalyze.simulation.schemas import SimulateRequest
from sonalyze.simulation.service import SimulationService, parse_request

events = EventHandlers()


def _service(app: FastAPI) -> SimulationService:
    return app.state.simulation


@events.on("simulation.run")
async def _run(ctx: EventContext) -> dict[str, Any]:
    """``"wait": false`` in ``data``: answer at once with the kept job (``id``, ``status`` running) and push
    ``simulation.progress`` and ``simulation.completed`` / ``simulation.failed`` to the device; by
    default (``"wait": true``) answer with the result, as before."""
    data = dict(ctx.data)
    wait = data.pop("wait", True)
    if not isinstance(wait, bool):
        raise BadRequest("'wait' must be true or false", code="validation_error", details={"field": "wait"})
    if wait:
        return await _service(ctx.app).run(parse_request(data))
    return await _service(ctx.app).submit(parse_request(data), ctx.require_device())


@events.on("simulation.health")
async def _health(ctx: EventContext) -> dict[str, Any]:
    return _service(ctx.app).health()


@events.on("simulation.get")
async def _get(ctx: EventContext) -> dict[str, Any]:
    return await _service(ctx.app).get(str(ctx.data.get("id", "")))


def create_app(settings: SimulationSettings | None = None) -> FastAPI:
    settings = settings or SimulationSettings()
    auth = InternalAuth.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = SimulationService(settings)
        await service.start()
        app.state.simulation = service
        try:
            yield
        finally:
            await service.close()

    app = FastAPI(title="Sonalyze simulation", lifespan=lifespan, default_response_class=JSONResponse)
    install_error_handlers(app)
    app.add_middleware(InternalAuthGuard, auth=auth)
    app.include_router(events.router())

    @app.get("/healthz")
    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        return _service(request.app).health()

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """200 when the database and the task queue answer, else 503 ``not_ready`` with the reason."""
        reason = await _service(request.app).ready()
        if reason is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"error": {"code": "not_ready", "message": reason}}, status_code=503)

    # The large answers go straight to orjson (``JSONResponse``), not through a pydantic response model.
    @app.post("/simulate")
    async def simulate(body: SimulateRequest, request: Request) -> JSONResponse:
        return JSONResponse(await _service(request.app).run(body))

    @app.get("/simulations/{simulation_id}")
    async def get_simulation(simulation_id: str, request: Request) -> JSONResponse:
        return JSONResponse(await _service(request.app).get(simulation_id))

    @app.get("/simulations/{simulation_id}/rir/{source}/{microphone}.wav")
    async def get_rir(simulation_id: str, source: int, microphone: int, request: Request) -> FileResponse:
        path = await _service(request.app).store.rir_path(simulation_id, source, microphone)
        return FileResponse(path, media_type="audio/wav", filename=f"rir_{simulation_id}_{source}_{microphone}.wav")

    return app
