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

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel, Field, StrictInt, StrictStr, ValidationError

from sonalyze.common.errors import BadRequest, SonalyzeError, error_body, from_validation_error
from sonalyze.common.internal_auth import Caller, caller_of
from sonalyze.common.json import dumps

log = logging.getLogger("sonalyze.common.handle")

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

    async def answer(self, raw: bytes, app: FastAPI, caller: Caller | None) -> tuple[int, bytes]:
        """The one ``POST /gateway/handle``: (status, JSON body) for the raw request body — 200 with
        ``{"data"}`` or ``{"error"}``, 422 ``validation_error`` for a malformed body, 500
        ``internal_error`` (logged) when a handler fails unexpectedly."""
        try:
            request = HandleRequest.model_validate_json(raw)
        except ValidationError as exc:
            return 422, dumps(from_validation_error(exc).to_body())
        try:
            return 200, dumps(await self.dispatch(request, app, caller))
        except Exception:  # noqa: BLE001 - the edge: log it, answer in the error format
            log.exception("gateway event %s failed", request.event)
            return 500, dumps(error_body("internal_error", f"the service failed to handle {request.event!r}"))

    def router(self) -> APIRouter:
        """:meth:`answer` as a FastAPI route (documented in the service's OpenAPI); the lobby serves the
        same :meth:`answer` in front of FastAPI."""
        router = APIRouter()
        body_doc = {"content": {"application/json": {"schema": HandleRequest.model_json_schema()}}, "required": True}

        @router.post("/gateway/handle", openapi_extra={"requestBody": body_doc})
        async def gateway_handle(request: Request) -> Response:
            status, body = await self.answer(await request.body(), request.app, caller_of(request.scope))
            return Response(body, status_code=status, media_type="application/json")

        return router
