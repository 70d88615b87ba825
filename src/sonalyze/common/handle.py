"""The upstream contract between the gateway and every service behind it.

The gateway forwards each routed WebSocket event as ``POST {SERVICE_URL}/gateway/handle`` with JSON
``{"event", "data", "device_id", "request_id", "connection_id"}``. The service answers 200 with either
``{"data": {...}}`` (the client gets a ``response`` envelope) or ``{"error": {"code", "message",
"details"?}}`` (the client gets an ``error`` envelope). A service declares its events with
:class:`EventHandlers` and mounts :meth:`EventHandlers.router`. ``request_id`` is a string or an
integer, as clients may send either; ``device_id`` is the device the gateway authenticated, the only
source of the acting device on this endpoint (see :mod:`sonalyze.common.internal_auth`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from sonalyze.common.json import JSONResponse
from pydantic import BaseModel, Field, StrictInt, StrictStr, ValidationError

from sonalyze.common.errors import BadRequest, SonalyzeError, error_body, from_validation_error
from sonalyze.common.internal_auth import Caller, caller_of

ModelT = TypeVar("ModelT", bound=BaseModel)


class HandleRequest(BaseModel):
    """Body of ``POST /gateway/handle``."""

    event: str = Field(min_length=1)
    data: dict[str, Any] = Field(default_factory=dict)
    device_id: str | None = Field(None, max_length=128)
    request_id: StrictStr | StrictInt | None = None
    connection_id: str | None = None


@dataclass(frozen=True, slots=True)
class EventContext:
    """What a handler gets: the forwarded event and the application it runs in."""

    event: str
    data: dict[str, Any]
    device_id: str | None
    request_id: str | int | None
    connection_id: str | None
    app: FastAPI
    service: bool = False
    """A service acting as itself (``X-Service-Token``), not the gateway for a device."""

    def parse(self, model: type[ModelT]) -> ModelT:
        """Validate ``data`` against ``model``; a failure is a ``bad_request`` naming each field."""
        try:
            return model.model_validate(self.data)
        except ValidationError as exc:
            raise from_validation_error(exc, BadRequest) from exc

    def require_device(self) -> str:
        if not self.device_id:
            raise BadRequest("this event needs an identified device (device_id)")
        return self.device_id


EventHandler = Callable[[EventContext], Awaitable[dict[str, Any]]]


class EventHandlers:
    """A table from event name to async handler, served as ``POST /gateway/handle``."""

    def __init__(self) -> None:
        self._handlers: dict[str, EventHandler] = {}

    def on(self, event: str) -> Callable[[EventHandler], EventHandler]:
        def register(handler: EventHandler) -> EventHandler:
            if event in self._handlers:
                raise ValueError(f"event {event!r} already has a handler")
            self._handlers[event] = handler
            return handler

        return register

    @property
    def events(self) -> list[str]:
        return sorted(self._handlers)

    async def dispatch(self, request: HandleRequest, app: FastAPI, caller: Caller | None = None) -> dict[str, Any]:
        """Run the handler for ``request.event``; always a ``{"data"}`` or ``{"error"}`` body.

        The acting device is the body's ``device_id``; ``caller`` (from the internal-auth guard) only says
        whether a service calls as itself."""
        handler = self._handlers.get(request.event)
        if handler is None:
            return error_body("unknown_event", f"this service does not handle {request.event!r}")
        context = EventContext(
            event=request.event,
            data=request.data,
            device_id=request.device_id,
            request_id=request.request_id,
            connection_id=request.connection_id,
            app=app,
            service=caller is not None and caller.service,
        )
        try:
            return {"data": await handler(context)}
        except SonalyzeError as exc:
            body = exc.to_body()
            retry_after = (exc.headers or {}).get("Retry-After")
            if retry_after is not None:
                # No HTTP headers reach the device through the gateway: the retry hint travels in details.
                body["error"].setdefault("details", {})["retry_after_s"] = float(retry_after)
            return body

    def router(self) -> APIRouter:
        router = APIRouter()

        @router.post("/gateway/handle", response_class=JSONResponse)
        async def gateway_handle(body: HandleRequest, request: Request) -> dict[str, Any]:
            return await self.dispatch(body, request.app, caller_of(request.scope))

        return router
