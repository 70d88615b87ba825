"""The lobby service's application: REST API, ``POST /gateway/handle`` and the background loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

import httpx
from fastapi import APIRouter, FastAPI, Header, Path, Query, Request
from pydantic import BaseModel, ValidationError

from sonalyze.common.asgi import read_body, send_json
from sonalyze.common.errors import Forbidden, from_validation_error, install_error_handlers
from sonalyze.common.handle import EventContext, EventHandlers
from sonalyze.common.internal_auth import InternalAuth, InternalAuthGuard, caller_of, internal_headers
from sonalyze.common.json import JSONResponse
from sonalyze.lobby.broadcast import Broadcaster
from sonalyze.lobby.config import LobbySettings
from sonalyze.lobby.measurement_client import MeasurementClient
from sonalyze.lobby.schemas import (
    MAX_SEQ,
    AssignRole,
    AuthorizeSubscribe,
    CreateLobby,
    CreateSession,
    GetLobby,
    JoinLobby,
    ListEvents,
    LobbyRef,
    RoleBody,
    SessionRef,
    SessionSignal,
    ShareRoom,
)
from sonalyze.lobby.service import LobbyService
from sonalyze.lobby.session_machine import Signal
from sonalyze.lobby.session_coordinator import SessionCoordinator
from sonalyze.lobby.store import Database
from sonalyze.storage.client import StorageClient

log = logging.getLogger("sonalyze.lobby")


def _lobbies(request: Request) -> LobbyService:
    return request.app.state.lobbies


# ----------------------------------------------------------------------------------------------- events

handlers = EventHandlers()

# event → (service on app.state, its method, the model of the event's data)
_OPERATIONS: dict[str, tuple[str, str, type]] = {
    "lobby.create": ("lobbies", "create", CreateLobby),
    "lobby.join": ("lobbies", "join", JoinLobby),
    "lobby.leave": ("lobbies", "leave", LobbyRef),
    "lobby.get": ("lobbies", "get", GetLobby),
    "lobby.start": ("lobbies", "start", LobbyRef),
    "lobby.room_snapshot": ("lobbies", "share_room", ShareRoom),
    "lobby.events": ("lobbies", "events", ListEvents),
    "role.assign": ("lobbies", "assign_role", AssignRole),
    "gateway.authorize_subscribe": ("lobbies", "authorize_subscribe", AuthorizeSubscribe),
    "measurement.create_session": ("sessions", "create", CreateSession),
    "measurement.session_status": ("sessions", "status", SessionRef),
}


def _operation(owner: str, method: str, model: type) -> Callable[[EventContext], Any]:
    async def handle(ctx: EventContext) -> dict[str, Any]:
        return await getattr(getattr(ctx.app.state, owner), method)(ctx.require_device(), ctx.parse(model))

    return handle


def _signal_handler(signal: Signal) -> Callable[[EventContext], Any]:
    async def handle(ctx: EventContext) -> dict[str, Any]:
        return await ctx.app.state.sessions.signal(signal, ctx.require_device(), ctx.parse(SessionSignal))

    return handle


for _event, _spec in _OPERATIONS.items():
    handlers.on(_event)(_operation(*_spec))
for _signal in Signal:
    handlers.on(_signal.value)(_signal_handler(_signal))


# ----------------------------------------------------------------------------------------------- REST

DeviceId = Annotated[str, Header(alias="X-Device-Id", min_length=1, max_length=128, description="the calling device")]

ModelT = TypeVar("ModelT", bound=BaseModel)


def _valid(model: type[ModelT], **values: Any) -> ModelT:
    """``model`` from path and query values; what it refuses is a 422 ``validation_error`` (a path
    parameter of only spaces passes the router and is empty once trimmed)."""
    try:
        return model(**values)
    except ValidationError as exc:
        raise from_validation_error(exc) from exc

rest = APIRouter()


@rest.get("/healthz")
@rest.get("/health")
async def health(request: Request) -> dict[str, Any]:
    return {"status": "ok", "service": request.app.state.settings.service_name}


@rest.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 when the database answers, else 503 ``not_ready`` (a replica without it takes no traffic)."""
    reason = await _lobbies(request).db.unreachable()
    if reason is None:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"error": {"code": "not_ready", "message": reason}}, status_code=503)


@rest.post("/lobbies", status_code=201)
async def create_lobby(request: Request, device_id: DeviceId, body: CreateLobby | None = None) -> dict[str, Any]:
    return await _lobbies(request).create(device_id, body or CreateLobby())


@rest.post("/lobbies/join")
async def join_lobby(request: Request, device_id: DeviceId, body: JoinLobby) -> dict[str, Any]:
    return await _lobbies(request).join(device_id, body)


@rest.get("/lobbies/{lobby_id}")
async def get_lobby(request: Request, device_id: DeviceId, lobby_id: str) -> dict[str, Any]:
    return await _lobbies(request).get(device_id, _valid(GetLobby, lobby_id=lobby_id))


@rest.post("/lobbies/{lobby_id}/leave")
async def leave_lobby(request: Request, device_id: DeviceId, lobby_id: str) -> dict[str, Any]:
    return await _lobbies(request).leave(device_id, _valid(LobbyRef, lobby_id=lobby_id))


@rest.post("/lobbies/{lobby_id}/roles")
async def assign_role(request: Request, device_id: DeviceId, lobby_id: str, body: RoleBody) -> dict[str, Any]:
    return await _lobbies(request).assign_role(device_id, _valid(AssignRole, lobby_id=lobby_id, device_id=body.device_id, role=body.role))


@rest.post("/lobbies/{lobby_id}/start")
async def start_lobby(request: Request, device_id: DeviceId, lobby_id: str) -> dict[str, Any]:
    return await _lobbies(request).start(device_id, _valid(LobbyRef, lobby_id=lobby_id))


@rest.get("/lobbies/{lobby_id}/events")
async def lobby_events(
    request: Request,
    device_id: DeviceId,
    lobby_id: str,
    since: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    return await _lobbies(request).events(device_id, _valid(ListEvents, lobby_id=lobby_id, since=since, limit=limit))


@rest.get("/internal/lobbies/{lobby_id}/jobs/{job_id}/access")
async def job_access(
    request: Request,
    lobby_id: Annotated[str, Path(min_length=1, max_length=64)],
    job_id: Annotated[str, Path(min_length=1, max_length=64)],
) -> dict[str, Any]:
    """For the measurement service only (``X-Service-Token``): who may reach a session's job."""
    if not caller_of(request.scope).service:
        raise Forbidden("only services may ask who may reach a job")
    return await _lobbies(request).job_access(lobby_id, job_id)


# ----------------------------------------------------------------------------------------------- the app


class GatewayHandleFastPath:
    """Serves ``POST /gateway/handle`` in front of FastAPI; every other request goes to FastAPI.

    The same contract and handlers as :meth:`EventHandlers.router` (``{"data"}`` or ``{"error"}``,
    status 200; a malformed body is a 422 ``validation_error``), without FastAPI's routing, dependency
    and middleware layers, which cost as much CPU per lobby event as the database transaction did.
    The internal-auth guard stands in front of both.
    """

    def __init__(self, app: FastAPI, auth: InternalAuth) -> None:
        self.app = app
        self._entry = InternalAuthGuard(self._route, auth=auth)

    @property
    def state(self) -> Any:
        """The FastAPI application's state (services, settings)."""
        return self.app.state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        await self._entry(scope, receive, send)

    async def _route(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] != "/gateway/handle" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        raw = await read_body(receive)
        if raw is None:
            return  # the client went away
        await send_json(send, *await handlers.answer(raw, self.app, caller_of(scope)))



async def _timer_loop(app: FastAPI, settings: LobbySettings) -> None:
    """Analysis leases and step deadlines every tick; idle lobbies every tenth of the idle timeout (at most once a minute)."""
    sweep_every_s = min(60.0, settings.lobby_idle_timeout_s / 10)
    next_sweep_s = 0.0
    while True:
        try:
            await app.state.sessions.keep_analyses()
            await app.state.sessions.check_deadlines()
            if time.monotonic() >= next_sweep_s:
                next_sweep_s = time.monotonic() + sweep_every_s
                closed = await app.state.lobbies.expire_idle(idle_timeout_s=settings.lobby_idle_timeout_s)
                if closed:
                    log.info("closed %d idle lobbies", closed)
                await app.state.lobbies.prune_join_failures()
        except Exception:  # noqa: BLE001 - the loop must outlive one bad tick
            log.exception("timer tick failed")
        await asyncio.sleep(settings.timer_interval_s)


def create_app(
    settings: LobbySettings | None = None,
    *,
    measurement_transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> GatewayHandleFastPath:
    """The lobby service. Tests may pass their own settings, a measurement-service transport and a clock."""
    settings = settings or LobbySettings()
    auth = InternalAuth.from_settings(settings)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per measurement call is noise

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service_headers = internal_headers(settings.internal_auth_token)
        storage = (
            StorageClient(settings.storage_url, timeout_s=settings.http_timeout_s, headers=service_headers)
            if settings.storage_url
            else None
        )
        db = Database(settings.database_url, storage=storage, outbox_lease_s=settings.storage_outbox_lease_s)
        await db.start()
        broadcaster = Broadcaster(
            settings.gateway_url,
            settings.internal_auth_token,
            queue_size=settings.broadcast_queue_size,
            workers=settings.broadcast_workers,
            timeout_s=settings.http_timeout_s,
        )
        await broadcaster.start()
        measurement = MeasurementClient(
            settings.measurement_url, timeout_s=settings.http_timeout_s, transport=measurement_transport, headers=service_headers
        )
        app.state.lobbies = lobbies = LobbyService(db, broadcaster, clock=clock, join_limit=settings.join_limit)
        app.state.sessions = sessions = SessionCoordinator(
            lobbies,
            measurement,
            timeouts=settings.step_timeouts,
            sample_rate_hz=settings.sample_rate_hz,
            sweep_duration_s=settings.sweep_duration_s,
            sweep_count=settings.sweep_count,
            runner=settings.replica_id,
            analysis_lease_s=settings.analysis_lease_s,
        )
        await sessions.keep_analyses()
        timer = asyncio.create_task(_timer_loop(app, settings), name="lobby-timers")
        try:
            yield
        finally:
            timer.cancel()
            await asyncio.gather(timer, return_exceptions=True)
            await sessions.stop()
            await broadcaster.stop()
            await measurement.aclose()
            await db.dispose()
            if storage is not None:
                await storage.aclose()

    app = FastAPI(title="Sonalyze lobby", lifespan=lifespan, default_response_class=JSONResponse)
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(rest)
    return GatewayHandleFastPath(app, auth)
