"""``POST /internal/broadcast`` and ``POST /internal/subscriptions``, answered in front of FastAPI.

Backends push one broadcast per change (the lobby: one per lobby event), so these are the gateway's
busiest HTTP routes. Through FastAPI each call cost ≈ 0.2 ms of CPU in routing, the request object and
the dependency and exception layers, more than validating and delivering a 1,000-device broadcast. Here a
call is: read the body, check the token in constant time, validate with the same pydantic models (so the
same 422 details), publish through the broker, answer. Every other request goes to FastAPI unchanged.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI
from pydantic import ValidationError
from starlette.datastructures import URL
from starlette.responses import RedirectResponse

from sonalyze.common.asgi import read_body, send_error, send_json
from sonalyze.common.errors import Forbidden, SonalyzeError, Unauthorized, from_validation_error
from sonalyze.gateway.models import BroadcastRequest, SubscriptionsRequest, event_envelope

if TYPE_CHECKING:
    from sonalyze.gateway.state import Gateway

BROADCAST_PATH = "/internal/broadcast"
SUBSCRIPTIONS_PATH = "/internal/subscriptions"
_TOKEN_HEADER = b"x-internal-token"


def check_internal_token(expected: str, given: str | None) -> None:
    """401 without a token, 403 with a wrong one or when the API is closed; compared in constant time."""
    if not expected:
        raise Forbidden("the internal broadcast API is closed: INTERNAL_AUTH_TOKEN is not set")
    if given is None:
        raise Unauthorized("X-Internal-Token header is required")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Forbidden("X-Internal-Token is wrong")


async def broadcast(gateway: Gateway, raw_body: bytes) -> dict[str, int | None]:
    """Publish one event to its targets: ``{"delivered", "devices"}`` (both null with a cluster broker)."""
    try:
        body = BroadcastRequest.model_validate_json(raw_body)
    except ValidationError as exc:
        raise from_validation_error(exc) from exc
    payload = orjson.dumps(event_envelope(body.event, body.data))  # serialized once, for every recipient
    delivered, devices = await gateway.broker.publish(body.targets.targets(), payload)
    gateway.metrics.events_out.labels(gateway.metrics.event_label(body.event)).inc()
    return {"delivered": delivered, "devices": devices}


async def subscriptions(gateway: Gateway, raw_body: bytes) -> dict[str, int | None]:
    """The devices' connections join or leave a channel, on every instance: ``{"connections", "devices"}``."""
    try:
        body = SubscriptionsRequest.model_validate_json(raw_body)
    except ValidationError as exc:
        raise from_validation_error(exc) from exc
    changed, devices = await gateway.broker.publish(body.targets(), b"")
    return {"connections": changed, "devices": devices}


Handler = Callable[["Gateway", bytes], Awaitable[dict[str, int | None]]]
_HANDLERS: dict[str, Handler] = {BROADCAST_PATH: broadcast, SUBSCRIPTIONS_PATH: subscriptions}


class InternalAPIFastPath:
    """The ASGI application: the two internal routes here (any method: only POST is allowed), everything
    else (``/v1``, health, metrics) in FastAPI."""

    def __init__(self, app: FastAPI, internal_auth_token: str) -> None:
        self.app = app
        self._token = internal_auth_token

    @property
    def state(self) -> Any:
        """The FastAPI application's state (``state.gateway`` once started)."""
        return self.app.state

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        handler = _HANDLERS.get(path)
        if handler is None:
            if path.endswith("/") and path.rstrip("/") in _HANDLERS:  # as FastAPI's redirect_slashes did
                await RedirectResponse(URL(scope={**scope, "path": path.rstrip("/")}))(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        try:
            if scope["method"] != "POST":
                raise SonalyzeError("Method Not Allowed", code="method_not_allowed", status_code=405, headers={"Allow": "POST"})
            check_internal_token(self._token, _header(scope, _TOKEN_HEADER))
            raw_body = await read_body(receive)
            if raw_body is None:
                return  # the client went away
            answer = await handler(self.app.state.gateway, raw_body)
        except SonalyzeError as exc:
            await send_error(send, exc)
            return
        await send_json(send, 200, orjson.dumps(answer))


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    """The first value of header ``name`` (lower case), decoded as Starlette does (latin-1)."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None
