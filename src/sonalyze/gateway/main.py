"""The gateway application: ``/healthz``, the ``/v1`` proxy, ``/internal/broadcast``.

``WS /ws`` is served by :class:`~sonalyze.gateway.ws_protocol.GatewayWebSocketProtocol`, which uvicorn
runs for every upgraded connection when started with ``ws=WS_PROTOCOL`` (``sonalyze serve gateway`` does).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import orjson
from fastapi import FastAPI, Request
from pydantic import ValidationError

from sonalyze.common.errors import (
    Forbidden,
    NotFound,
    RateLimited,
    Unauthorized,
    Unprocessable,
    install_error_handlers,
    validation_details,
    validation_message,
)
from sonalyze.common.json import JSONResponse
from sonalyze.gateway.broker import Broker, MemoryBroker
from sonalyze.gateway.config import GatewaySettings
from sonalyze.gateway.connection_manager import ConnectionManager
from sonalyze.gateway.http_client import UpstreamClient
from sonalyze.gateway.models import BroadcastRequest, BroadcastResult, event_envelope
from sonalyze.gateway.proxy import proxy, resolve_proxy
from sonalyze.gateway.rate_limit import KeyedRateLimiter
from sonalyze.gateway.router import RoutingTable, load_routing_table

WS_PROTOCOL = "sonalyze.gateway.ws_protocol:GatewayWebSocketProtocol"

logger = logging.getLogger("sonalyze.gateway")


@dataclass
class Gateway:
    """Everything a running gateway shares between its HTTP routes and its WebSocket connections."""

    settings: GatewaySettings
    routes: RoutingTable
    connections: ConnectionManager
    broker: Broker
    upstream: UpstreamClient
    proxy_limiter: KeyedRateLimiter


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    routes = load_routing_table(settings)
    upstream_urls = settings.upstream_urls()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Gateway]]:
        connections = ConnectionManager()
        gateway = Gateway(
            settings=settings,
            routes=routes,
            connections=connections,
            broker=MemoryBroker(connections.deliver),
            upstream=UpstreamClient(settings.http_timeout_seconds, settings.upstream_max_connections),
            proxy_limiter=KeyedRateLimiter(settings.rate_limit_rps, settings.rate_limit_burst),
        )
        app.state.gateway = gateway
        if not settings.internal_auth_token:
            logger.warning("INTERNAL_AUTH_TOKEN is empty: the internal broadcast API is closed")
        logger.info("gateway routes: %s", ", ".join(f"{pattern} -> {url}" for pattern, url in routes.rows()))
        try:
            yield {"gateway": gateway}
        finally:
            await gateway.broker.close()
            await gateway.upstream.aclose()

    app = FastAPI(title="Sonalyze gateway", lifespan=lifespan, default_response_class=JSONResponse)
    install_error_handlers(app)

    @app.get("/healthz")
    async def healthz(request: Request) -> dict[str, object]:
        gateway: Gateway = request.app.state.gateway
        return {"status": "ok", "connections": gateway.connections.open_count, "devices": gateway.connections.device_count}

    @app.post("/internal/broadcast", response_model=BroadcastResult)
    async def internal_broadcast(request: Request) -> BroadcastResult:
        gateway: Gateway = request.app.state.gateway
        check_internal_token(settings.internal_auth_token, request.headers.get("x-internal-token"))
        try:
            body = BroadcastRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            raise Unprocessable(validation_message(errors), details=validation_details(errors)) from exc
        payload = orjson.dumps(event_envelope(body.event, body.data))
        delivered, devices = await gateway.broker.publish(body.targets.device_ids, payload)
        return BroadcastResult(delivered=delivered, devices=devices)

    @app.api_route("/v1/{rest:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    async def v1_proxy(request: Request):  # noqa: ANN202 - a streamed response
        gateway: Gateway = request.app.state.gateway
        raw_path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
        url = resolve_proxy(raw_path, upstream_urls)
        if url is None:
            raise NotFound(f"no service behind {request.url.path}")
        client_host = request.client.host if request.client else "unknown"
        retry_after_s = gateway.proxy_limiter.take(client_host, time.monotonic())
        if retry_after_s:
            raise RateLimited(
                f"too many requests from {client_host}; retry in {retry_after_s:.3f} s",
                details={"retry_after_s": round(retry_after_s, 3)},
                headers={"Retry-After": str(max(1, int(retry_after_s + 0.999)))},
            )
        return await proxy(request, url, gateway.upstream)

    return app


def check_internal_token(expected: str, given: str | None) -> None:
    """401 without a token, 403 with a wrong one or when the API is closed; compared in constant time."""
    if not expected:
        raise Forbidden("the internal broadcast API is closed: INTERNAL_AUTH_TOKEN is not set")
    if given is None:
        raise Unauthorized("X-Internal-Token header is required")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Forbidden("X-Internal-Token is wrong")

