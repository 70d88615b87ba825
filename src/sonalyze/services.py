"""The five Sonalyze services: how each is built, where it listens by default, how to ask if it is up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    app_factory: str
    """``module:function`` returning the ASGI application (called once per process)."""
    default_port: int
    health_path: str
    uvicorn_options: dict[str, Any] = field(default_factory=dict)


SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec(
            "gateway",
            "sonalyze.gateway.main:create_app",
            8000,
            "/healthz",
            {
                "ws": "sonalyze.gateway.ws_protocol:GatewayWebSocketProtocol",
                "http": "sonalyze.gateway.http_protocol:GatewayHttpProtocol",
                "proxy_headers": False,  # X-Forwarded-For only from TRUSTED_PROXIES (gateway.client_address)
            },
        ),
        ServiceSpec(
            "lobby",
            "sonalyze.lobby.main:create_app",
            8001,
            "/healthz",
            {"http": "sonalyze.lobby.http_protocol:LobbyHttpProtocol"},
        ),
        ServiceSpec("measurement", "sonalyze.measurement.main:create_app", 8002, "/healthz"),
        ServiceSpec("simulation", "sonalyze.simulation.main:create_app", 8003, "/healthz"),
        ServiceSpec("storage", "sonalyze.storage.main:create_app", 8004, "/healthz"),
    )
}
