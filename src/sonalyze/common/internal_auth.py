"""Service-to-service authentication, shared by the lobby, measurement, simulation and storage.

Every request to one of these services carries ``X-Internal-Token: <INTERNAL_AUTH_TOKEN>`` (compared in
constant time); without it the answer is 401 ``unauthorized``. Only ``/healthz``, ``/readyz`` and the
older health paths (``/health``, ``/v1/health``) are open, for probes. Who a request acts for:

==========================================  =====================================================
headers                                     caller
==========================================  =====================================================
``X-Internal-Token`` + ``X-Device-Id: D``   the gateway, for the authenticated device ``D``
``X-Internal-Token`` alone                  the gateway, for no device (a request without credential)
``X-Internal-Token`` + ``X-Service-Token``  a service acting as itself (the lobby's measurement
                                            client, the storage outboxes, operators' scripts)
==========================================  =====================================================

``X-Service-Token`` holds the same secret: the gateway adds ``X-Internal-Token`` to the requests it
proxies, so a marker a phone could type itself cannot tell a service from a phone; one that holds the
secret can. On ``POST /gateway/handle`` the device is the body's ``device_id`` (set by the gateway).

``INTERNAL_AUTH_TOKEN`` empty: the service refuses to start, unless ``INTERNAL_AUTH_DISABLED=true``
(development only: then every request is accepted and ``X-Device-Id`` is believed from anyone).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings

from sonalyze.common.errors import error_body
from sonalyze.common.json import dumps

log = logging.getLogger("sonalyze.internal_auth")

TOKEN_HEADER = "X-Internal-Token"
SERVICE_HEADER = "X-Service-Token"
DEVICE_HEADER = "X-Device-Id"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/health", "/v1/health"})
"""Probes need no token (they tell nothing but "up")."""
MAX_DEVICE_ID_CHARS = 128

_TOKEN = TOKEN_HEADER.lower().encode()
_SERVICE = SERVICE_HEADER.lower().encode()
_DEVICE = DEVICE_HEADER.lower().encode()


class InternalAuthSettings(BaseSettings):
    """``INTERNAL_AUTH_TOKEN`` and ``INTERNAL_AUTH_DISABLED``, whatever the service's env prefix."""

    internal_auth_token: str = Field(
        "",
        validation_alias=AliasChoices("internal_auth_token", "INTERNAL_AUTH_TOKEN"),
        description="required as X-Internal-Token on every request but health probes",
    )
    internal_auth_disabled: bool = Field(
        False,
        validation_alias=AliasChoices("internal_auth_disabled", "INTERNAL_AUTH_DISABLED"),
        description="development only: with an empty token, accept every request unauthenticated",
    )


class InsecureConfiguration(RuntimeError):
    """The service would start open to anyone; it refuses."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request comes from: a device through the gateway, the gateway for nobody, or a service."""

    device_id: str | None = None
    service: bool = False


SERVICE_CALLER = Caller(service=True)


class InternalAuth:
    """The check itself: headers in, a :class:`Caller` or ``None`` (refused) out."""

    def __init__(self, token: str, *, disabled: bool = False) -> None:
        self._token = token.encode()
        self.open = not token
        if self.open and not disabled:
            raise InsecureConfiguration(
                "INTERNAL_AUTH_TOKEN is empty: set it to the secret the gateway and the services share "
                "(or INTERNAL_AUTH_DISABLED=true for a development service that anyone may call)"
            )
        if self.open:
            log.warning("INTERNAL_AUTH_DISABLED: this service accepts every request without a token")

    @classmethod
    def from_settings(cls, settings: InternalAuthSettings) -> InternalAuth:
        return cls(settings.internal_auth_token, disabled=settings.internal_auth_disabled)

    def _matches(self, value: bytes | None) -> bool:
        return value is not None and hmac.compare_digest(value, self._token)

    def caller(self, headers: list[tuple[bytes, bytes]]) -> Caller | None:
        """The caller named by raw ASGI headers, or ``None`` when the token is missing or wrong."""
        token = service = device = None
        for name, value in headers:
            lowered = name.lower()
            if lowered == _TOKEN:
                token = value
            elif lowered == _SERVICE:
                service = value
            elif lowered == _DEVICE:
                device = value
        if not self.open and not self._matches(token):
            return None
        device_id = device.decode("latin-1").strip() if device else None
        if device_id and len(device_id) > MAX_DEVICE_ID_CHARS:
            return None
        is_service = self.open and not device_id or self._matches(service)
        return Caller(device_id=device_id or None, service=is_service)


def caller_of(scope: dict[str, Any]) -> Caller:
    """The caller the guard put into the request's scope (a device-less gateway caller if none)."""
    return scope.get("state", {}).get("caller") or Caller()


_REFUSAL = dumps(error_body("unauthorized", f"this service needs a valid {TOKEN_HEADER} header"))


class InternalAuthGuard:
    """ASGI middleware (``cls(app, auth=...)``): refuses requests without the internal token, else puts
    the :class:`Caller` into ``scope["state"]["caller"]``. Outermost, in front of any fast path."""

    def __init__(self, app: Callable, *, auth: InternalAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        caller = self.auth.caller(scope["headers"])
        if caller is None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(_REFUSAL)).encode())]
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": _REFUSAL})
            return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


def internal_headers(token: str, *, service: bool = True) -> dict[str, str]:
    """The headers a service sends to another one: the token, and (acting as itself) the service mark."""
    if not token:
        return {}
    headers = {TOKEN_HEADER: token}
    if service:
        headers[SERVICE_HEADER] = token
    return headers
