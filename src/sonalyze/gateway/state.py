"""What a running gateway shares between its HTTP routes, its internal API and its WebSocket connections.

Its own module, so that the parts using it (``internal_api``, ``ws_protocol``) need not import the
application (``main``) that builds it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sonalyze.common.errors import RateLimited

if TYPE_CHECKING:
    from sonalyze.gateway.auth import TokenVerifier
    from sonalyze.gateway.binary_relay import BinaryRelay
    from sonalyze.gateway.broker import Broker
    from sonalyze.gateway.client_address import ClientAddresses
    from sonalyze.gateway.config import GatewaySettings
    from sonalyze.gateway.connection_manager import ConnectionManager
    from sonalyze.gateway.device_tokens import DeviceTokens
    from sonalyze.common.http_client import UpstreamClient
    from sonalyze.gateway.metrics import GatewayMetrics
    from sonalyze.gateway.profiles import Profiles
    from sonalyze.gateway.broker_redis import RedisBroker
    from sonalyze.gateway.push_history import PushHistory
    from sonalyze.gateway.rate_limit import FailureWindow, KeyedRateLimiter
    from sonalyze.gateway.registry import ConnectionRegistry
    from sonalyze.gateway.router import RoutingTable
    from sonalyze.gateway.stream_source import JetStreamSource
    from sonalyze.gateway.tenant_limit import TenantRateLimiter


@dataclass
class Gateway:
    """Everything a running gateway shares between its HTTP routes and its WebSocket connections."""

    settings: GatewaySettings
    routes: RoutingTable
    upstream_names: dict[str, str]
    """Service name to base URL (the upstream latency metric's labels)."""
    connections: ConnectionManager
    broker: Broker
    metrics: GatewayMetrics
    upstream: UpstreamClient
    proxy_limiter: KeyedRateLimiter
    verifier: TokenVerifier | None
    """Set when ``AUTH_REQUIRED``: checks the JWT of every connection and proxied request."""
    binary_relay: BinaryRelay | None
    """Set with ``BINARY_RELAY_URL``: binary frames go raw to a Redis channel."""
    tenant_limiter: TenantRateLimiter | None
    """Set with ``TENANT_RATE_LIMIT``: routed events and proxied requests of each tenant, shared in Redis."""
    gateway_id: str
    """This instance's name in the connection registry."""
    device_tokens: DeviceTokens
    """Issues and verifies device credentials (contract C1)."""
    addresses: ClientAddresses
    """Client addresses behind TRUSTED_PROXIES (rate limits and caps are keyed on them)."""
    mint_limiter: KeyedRateLimiter
    """``POST /v1/devices`` per client address."""
    join_failures: FailureWindow
    """Failed ``lobby.join`` attempts per device and per address (MAX_FAILED_JOINS in FAILED_JOIN_WINDOW_S)."""
    history: PushHistory | RedisBroker | None = None
    """Positions and kept pushes for resuming devices (the broker's, with PUSH_HISTORY_MAX > 0)."""
    registry: ConnectionRegistry | None = None
    stream_source: JetStreamSource | None = None
    address_connections: dict[str, int] = field(default_factory=dict)
    """Open WebSocket connections per client address (MAX_CONNECTIONS_PER_ADDRESS)."""
    profiles: Profiles | None = None
    """Set with a profiles document (GATEWAY_PROFILES[_FILE]): its WebSocket paths and seed metrics."""

    def take_proxy_token(self, client_host: str) -> None:
        """The proxy's rate limit per client address (``/v1`` and the profiles' HTTP routes): ``RateLimited``
        when ``client_host`` is over it."""
        retry_after_s = self.proxy_limiter.take(client_host, time.monotonic())
        if retry_after_s:
            self.metrics.rate_limited.labels("proxy").inc()
            raise RateLimited.retry_after(f"too many requests from {client_host}; retry in {retry_after_s:.3f} s", retry_after_s)
