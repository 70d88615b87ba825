"""The gateway application: ``/healthz``, the ``/v1`` proxy, ``/internal/broadcast`` (``internal_api``).

``WS /ws`` is served by :class:`~sonalyze.gateway.ws_protocol.GatewayWebSocketProtocol`, which uvicorn
runs for every upgraded connection when started with ``ws=WS_PROTOCOL`` (``sonalyze serve gateway`` does).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sonalyze.common.errors import NotFound, RateLimited, Unauthorized, install_error_handlers
from sonalyze.common.json import JSONResponse
from sonalyze.gateway.auth import AuthError, TokenVerifier, bearer_token
from sonalyze.gateway.binary_relay import BinaryRelay
from sonalyze.gateway.client_address import ClientAddresses, parse_networks
from sonalyze.gateway.device_tokens import DeviceTokens
from sonalyze.gateway.broker import create_broker
from sonalyze.gateway.config import GatewaySettings
from sonalyze.gateway.connection_manager import ConnectionManager
from sonalyze.gateway.heartbeat import Heartbeat
from sonalyze.common.http_client import UpstreamClient
from sonalyze.gateway.internal_api import InternalAPIFastPath, check_internal_token
from sonalyze.gateway.metrics import GatewayMetrics
from sonalyze.gateway.profiles import Profiles, load_profiles
from sonalyze.gateway.proxy import proxy, resolve_proxy
from sonalyze.gateway.proxy_table import install_proxy_table
from sonalyze.gateway.registry import ConnectionRegistry
from sonalyze.gateway.rate_limit import FailureWindow, KeyedRateLimiter
from sonalyze.gateway.router import load_routing_table
from sonalyze.gateway.gc_tuning import tune_for_long_lived_connections
from sonalyze.gateway.state import Gateway
from sonalyze.gateway.stream_source import JetStreamSource
from sonalyze.gateway.tenant_limit import TenantRateLimiter
from sonalyze.gateway.webapp import mount_webapp
from sonalyze.gateway.ws_protocol import CLOSE_TIMEOUT

WS_PROTOCOL = "sonalyze.gateway.ws_protocol:GatewayWebSocketProtocol"

logger = logging.getLogger("sonalyze.gateway")


def create_app(settings: GatewaySettings | None = None) -> InternalAPIFastPath:
    """The gateway's ASGI application: the internal push API in front of the FastAPI routes."""
    settings = settings or GatewaySettings()
    routes = load_routing_table(settings)
    profiles_document = load_profiles(settings)
    upstream_urls = settings.upstream_urls()
    verifier = token_verifier(settings)
    device_tokens = DeviceTokens(settings.device_token_secret or device_token_secret_for_this_process())
    addresses = ClientAddresses(parse_networks(settings.trusted_proxies))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Gateway]]:
        retained = frozenset({settings.stream_channel}) if settings.stream_channel else frozenset()
        connections = ConnectionManager(settings.max_connections_per_device, retained)
        metrics = GatewayMetrics()
        broker = create_broker(
            settings.broker_url, settings.gateway_broker_prefix, metrics.counting(connections.deliver_to),
            settings.push_history_max, settings.push_history_age_s, settings.push_outage_queue_max,
        )
        metrics.watch(lambda: connections.open_count, lambda: connections.device_count, broker.name, lambda: broker.connected)
        metrics.outage_queue.set_function(lambda: len(getattr(broker, "queue", ())))
        metrics.outage_dropped.set_function(lambda: getattr(broker, "queue_dropped", 0))
        gateway = Gateway(
            settings=settings,
            routes=routes,
            upstream_names=upstream_urls,
            connections=connections,
            broker=broker,
            metrics=metrics,
            upstream=UpstreamClient(settings.http_timeout_seconds, settings.upstream_max_connections, settings.internal_auth_token),
            proxy_limiter=KeyedRateLimiter(settings.rate_limit_rps, settings.rate_limit_burst),
            verifier=verifier,
            binary_relay=BinaryRelay(settings.binary_relay_url) if settings.binary_relay_url else None,
            tenant_limiter=(
                TenantRateLimiter(settings.tenant_rate_limit_url, settings.tenant_rate_limit, settings.tenant_rate_window_sec)
                if settings.tenant_rate_limit else None
            ),
            gateway_id=settings.gateway_id or f"gateway-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            device_tokens=device_tokens,
            addresses=addresses,
            mint_limiter=KeyedRateLimiter(settings.device_mint_rps, settings.device_mint_burst),
            join_failures=FailureWindow(settings.max_failed_joins, settings.failed_join_window_s),
            history=broker.history,
        )
        app.state.gateway = gateway
        if profiles_document is not None:
            gateway.profiles = Profiles(profiles_document, settings, metrics.registry)
        if not settings.internal_auth_token:
            logger.warning("INTERNAL_AUTH_TOKEN is empty: the internal broadcast API is closed")
        logger.info("gateway routes: %s", ", ".join(f"{pattern} -> {url}" for pattern, url in routes.rows()))
        registry = None
        if settings.registry_url:
            registry = ConnectionRegistry(
                settings.registry_url,
                settings.gateway_broker_prefix,
                gateway.gateway_id,
                2 * settings.connection_timeout_sec,
                connections.registry_snapshot,
            )
        gateway.registry = registry
        heartbeat = Heartbeat(
            connections.open_connections,
            settings.heartbeat_interval_sec,
            settings.connection_timeout_sec,
            CLOSE_TIMEOUT,
            also=registry.tick if registry is not None else None,
        )
        if settings.stream_nats_url:
            gateway.stream_source = JetStreamSource(
                settings.stream_nats_url, settings.stream_subject, settings.stream_durable, settings.stream_event,
                settings.stream_channel, broker, raw=settings.stream_format == "raw",
            )
        await gateway.broker.start()
        if gateway.stream_source is not None:
            await gateway.stream_source.start()
        heartbeat.start()
        tune_for_long_lived_connections()
        try:
            yield {"gateway": gateway}
        finally:
            heartbeat.stop()
            if gateway.stream_source is not None:
                await gateway.stream_source.close()
            if gateway.binary_relay is not None:
                await gateway.binary_relay.close()
            if gateway.tenant_limiter is not None:
                await gateway.tenant_limiter.close()
            if registry is not None:
                await registry.close()
            if gateway.profiles is not None:
                await gateway.profiles.close()
            await gateway.broker.close()
            await gateway.upstream.aclose()

    app = FastAPI(title="Sonalyze gateway", lifespan=lifespan, default_response_class=JSONResponse)
    install_error_handlers(app)

    @app.get("/healthz")
    async def healthz(request: Request) -> dict[str, object]:
        gateway: Gateway = request.app.state.gateway
        return {"status": "ok", "connections": gateway.connections.open_count, "devices": gateway.connections.device_count}

    @app.get("/metrics")
    async def metrics_endpoint(request: Request) -> Response:
        """Prometheus text; only for the holder of INTERNAL_AUTH_TOKEN (``Authorization: Bearer`` or ``X-Internal-Token``)."""
        gateway: Gateway = request.app.state.gateway
        check_internal_token(
            settings.internal_auth_token,
            request.headers.get("x-internal-token") or bearer_token(request.headers.get("authorization")),
        )
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        gateway: Gateway = request.app.state.gateway
        broker, registry = gateway.broker, gateway.registry
        body: dict[str, object] = {"gateway_id": gateway.gateway_id, "broker": {"kind": broker.name, "connected": broker.connected}}
        ready = broker.connected
        if registry is not None:
            body["registry"] = {"connected": registry.connected}
            ready = ready and registry.connected
        if gateway.stream_source is not None:
            body["stream_source"] = {"connected": gateway.stream_source.connected}
            ready = ready and gateway.stream_source.connected
        body["status"] = "ready" if ready else "degraded"
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.post("/v1/devices", status_code=201, response_model=DeviceCredential)
    async def create_device(request: Request) -> dict[str, str]:
        """A new device and its token (contract C1): keep the token, present it as ``?device_token=`` on
        ``/ws`` and as ``X-Device-Token`` on ``/v1``. Rate-limited per client address."""
        gateway: Gateway = request.app.state.gateway
        client_host = client_address(gateway, request)
        retry_after_s = gateway.mint_limiter.take(client_host, time.monotonic())
        if retry_after_s:
            gateway.metrics.rate_limited.labels("devices").inc()
            raise RateLimited.retry_after(
                f"too many new devices from {client_host}; retry in {retry_after_s:.1f} s", retry_after_s
            )
        device_id, device_token = gateway.device_tokens.mint()
        return {"device_id": device_id, "device_token": device_token}

    @app.api_route(
        "/v1/{rest:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"], include_in_schema=False
    )
    async def v1_proxy(request: Request):  # noqa: ANN202 - a streamed response
        gateway: Gateway = request.app.state.gateway
        raw_path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
        target = resolve_proxy(raw_path, upstream_urls)
        if target is None:
            raise NotFound(f"no service behind {request.url.path}")
        device_id, tenant_id = request_device(gateway, request)
        if tenant_id is not None and gateway.tenant_limiter is not None:
            tenant_wait_s = await gateway.tenant_limiter.take(tenant_id)
            if tenant_wait_s:
                gateway.metrics.rate_limited.labels("tenant").inc()
                raise RateLimited.retry_after(
                    f"tenant {tenant_id!r} is over its rate limit; retry in {tenant_wait_s:.1f} s", tenant_wait_s
                )
        gateway.take_proxy_token(client_address(gateway, request))
        return await proxy(request, *target, gateway.upstream, device_id)

    if settings.stream_channel:

        @app.get("/health")
        async def relay_health(request: Request) -> JSONResponse:
            """Seed 003's health answer while the relay role is on (``/healthz`` and ``/readyz`` stay)."""
            gateway: Gateway = request.app.state.gateway
            source = gateway.stream_source
            healthy = gateway.broker.connected and (source is None or source.connected)
            body = {
                "service": "gateway", "status": "healthy" if healthy else "unhealthy",
                "nats_url": settings.stream_nats_url or None, "connections": gateway.connections.open_count,
            }
            return JSONResponse(body, status_code=200 if healthy else 503)

    if profiles_document is not None:
        install_proxy_table(app, profiles_document, upstream_urls, client_address)

    mount_webapp(app)  # after every route above, so they keep precedence
    return InternalAPIFastPath(app, settings.internal_auth_token)


class DeviceCredential(BaseModel):
    device_id: str
    device_token: str


def request_jwt(request: Request) -> str | None:
    return bearer_token(request.headers.get("authorization")) or request.query_params.get("token")


def request_device(gateway: Gateway, request: Request) -> tuple[str | None, str | None]:
    """The device a ``/v1`` request acts for (contract C1) or None without a credential, and its tenant.

    With AUTH_REQUIRED the JWT (``Authorization: Bearer`` or ``?token=``) names it; else the device token
    (``X-Device-Token`` or ``?device_token=``); with ALLOW_INSECURE_DEVICE_IDS alone, the client's own
    ``X-Device-Id``. A credential that does not verify is a 401.
    """
    if gateway.verifier is not None:
        try:
            identity = gateway.verifier.verify(request_jwt(request))
        except AuthError as exc:
            raise Unauthorized(exc.message, code=exc.code) from exc
        return identity.device_id, identity.tenant_id
    token = request.headers.get("x-device-token") or request.query_params.get("device_token")
    if token is not None:
        try:
            return gateway.device_tokens.verify(token), None
        except AuthError as exc:
            raise Unauthorized(exc.message, code=exc.code) from exc
    if gateway.settings.allow_insecure_device_ids:
        return request.headers.get("x-device-id") or None, None
    return None, None


def client_address(gateway: Gateway, request: Request) -> str:
    peer = request.client.host if request.client else "unknown"
    return gateway.addresses.resolve(peer, request.headers.get("x-forwarded-for"))


def device_token_secret_for_this_process() -> str:
    """DEVICE_TOKEN_SECRET unset: a random secret, so device tokens last as long as this process."""
    logger.warning(
        "DEVICE_TOKEN_SECRET is empty: device tokens are signed with a random per-process secret and stop "
        "working when the gateway restarts (sonalyze serve keeps one in <data-dir>/device_token_secret)"
    )
    return secrets.token_urlsafe(32)


def token_verifier(settings: GatewaySettings) -> TokenVerifier | None:
    """The JWT verifier when ``AUTH_REQUIRED`` (a bad JWT configuration stops the gateway at start-up)."""
    if not settings.auth_required:
        return None
    return TokenVerifier(
        settings.jwt_algorithm_list(),
        settings.jwt_secret,
        settings.jwt_public_key,
        settings.jwt_issuer,
        settings.jwt_audience,
        settings.jwt_device_claim,
        settings.jwt_tenant_claim,
    )
