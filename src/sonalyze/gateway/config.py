"""The gateway's settings, read from the environment (names and defaults as in the gateway README)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sonalyze.common.replicas import split_urls
from sonalyze.gateway.client_address import parse_networks


BROKER_SCHEMES = ("memory", "redis", "rediss", "nats", "tls")


class GatewaySettings(BaseSettings):
    """Every knob of the gateway; build one per process (``create_app`` does) or pass your own in tests."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    lobby_url: str = "http://lobby:8000"
    measurement_url: str = "http://measurement:8000"
    simulation_url: str = "http://simulation:8000"
    """Each may name several replicas, comma-separated (``http://a:8001,http://b:8001``): calls go to them in
    turn, and one that refuses connections is passed over (``sonalyze.common.replicas``)."""
    internal_auth_token: str = ""
    """Shared secret for ``POST /internal/broadcast``; empty closes that endpoint."""

    max_message_bytes: int = Field(65536, gt=0)
    """Largest WebSocket message handled; a larger one gets a ``message_too_large`` error envelope."""
    max_frame_bytes: int = Field(1 << 17, gt=0)
    """Largest WebSocket message read at all (so the most an unfinished frame may buffer); a larger one
    closes the connection with 1009."""
    max_json_depth: int = Field(32, ge=1)
    """Deepest nesting of arrays/objects in a client message; deeper gets ``invalid_json`` (reason ``too_deep``)."""
    max_connections_per_address: int = Field(256, ge=1)
    """Open WebSocket connections per client address (see TRUSTED_PROXIES); beyond, the upgrade gets 429."""
    trusted_proxies: str = ""
    """Comma-separated CIDRs whose ``X-Forwarded-For`` names the client (rate limits, caps); empty: none."""
    max_failed_joins: int = Field(10, ge=1)
    failed_join_window_s: float = Field(60.0, gt=0)
    """``lobby.join`` answered ``not_found`` this many times per device or per address within the window:
    further joins get ``rate_limited`` (join codes cannot be enumerated)."""
    header_timeout_s: float = Field(10.0, gt=0)
    """A connection must deliver a whole HTTP request head within this time (also before the upgrade)."""
    max_header_bytes: int = Field(16384, gt=0)
    max_header_count: int = Field(100, ge=1)
    """A bigger request head gets 431 and the connection is closed."""
    max_send_buffer_bytes: int = Field(1 << 20, gt=0)
    """Bytes queued to one slow client before it is disconnected (close 1008 ``slow consumer``)."""

    rate_limit_rps: float = Field(10.0, gt=0, validation_alias=AliasChoices("rate_limit_rps", "max_events_per_second"))
    """Also read as ``MAX_EVENTS_PER_SECOND`` (seed 001's name)."""
    rate_limit_burst: int = Field(20, ge=1)
    http_timeout_seconds: float = Field(10.0, gt=0)
    upstream_max_connections: int = Field(256, ge=1)
    """Keep-alive connections per upstream; calls beyond wait for a free one (within HTTP_TIMEOUT_SECONDS)."""
    shutdown_grace_seconds: float = Field(5.0, ge=0)
    """How long in-flight upstream calls may run after SIGTERM before their sockets close with 1001."""

    broker_url: str = "memory://"
    """Where broadcasts are published: ``memory://`` (one process), ``redis://host:port/db``, ``nats://host:port``."""
    push_history_max: int = Field(10_000, ge=0)
    push_history_age_s: float = Field(300.0, gt=0)
    """Pushes kept for devices that resume (``"pos"`` in each push, the ``resume`` event): at most this many
    (Redis: ``MAXLEN ~``, about), none older; ``PUSH_HISTORY_MAX=0`` turns positions and resuming off.
    In the process (``memory://``), a Redis stream (``redis://``) or a JetStream stream (``nats://``)."""
    push_outage_queue_max: int = Field(10_000, ge=1)
    """``redis://`` or ``nats://`` with a history: publications queued while the bus is down (published when it is back);
    beyond, the oldest is dropped (``gateway_outage_queue_dropped_total``)."""
    gateway_broker_prefix: str = "gateway:"
    """Prefix of the bus channel / subject (``{prefix}broadcast``) and of the registry keys: one per cluster."""
    gateway_id: str = ""
    """This instance's name in the connection registry; empty picks ``gateway-{pid}-{random}``."""
    registry_url: str = Field("", validation_alias=AliasChoices("registry_url", "cache_uri"))
    """Redis URL of the connection registry (``gateway:conn:*``, ``gateway:room:*``); empty turns it off."""

    heartbeat_interval_sec: float = Field(30.0, gt=0)
    """The server pings every connection that was silent this long; one timer serves them all."""
    connection_timeout_sec: float = Field(90.0, gt=0)
    """A connection that sent nothing (not even a pong) this long is closed (4408)."""
    max_connections_per_device: int | None = Field(None, ge=1)
    """Unset: no limit (the Sonalyze flow). Set: a new connection closes the device's oldest (4000)."""

    stream_channel: str = ""
    """Non-empty: ``WS /ws/stream`` clients (no identification) receive this channel, and its latest payload
    at once on connect (seed 003's market relay)."""
    stream_nats_url: str = ""
    """Non-empty: a NATS JetStream durable consumer feeds ``STREAM_CHANNEL`` (needs ``STREAM_CHANNEL``)."""
    stream_subject: str = "levels.signals"
    stream_durable: str = "gateway_levels"
    stream_event: str = "levels.signal"
    stream_format: Literal["raw", "envelope"] = "raw"
    """``raw``: each message goes to ``/ws/stream`` clients byte for byte, as published (seed 003);
    ``envelope``: wrapped as ``{"type": "event", "event": STREAM_EVENT, "data": ...}`` (Sonalyze clients)."""
    """The ``event`` of the envelopes pushed to stream clients."""

    binary_relay_url: str = ""
    """Non-empty (a ``redis://`` URL): binary WebSocket frames of identified clients are published raw to
    ``BINARY_RELAY_CHANNEL`` instead of being read as JSON (seed 002's audio frames)."""
    binary_relay_channel: str = "audio:{device_id}"
    """Redis channel per connection; ``{device_id}`` and ``{tenant_id}`` are filled in."""

    device_token_secret: str = ""
    """Key of the HMAC-signed device tokens (contract C1); ``sonalyze serve`` keeps one in
    ``<data-dir>/device_token_secret``. Empty: a random one per process (tokens die with it; logged)."""
    allow_insecure_device_ids: bool = False
    """Development only: accept ``?device_id=X`` / ``identify {"device_id": X}`` / ``X-Device-Id`` without a
    device token, as before device identity (anyone can then act as any device)."""
    device_mint_rps: float = Field(1.0, gt=0)
    device_mint_burst: int = Field(20, ge=1)
    """``POST /v1/devices`` per client address (token bucket)."""

    auth_required: bool = False
    """True: every connection and ``/v1`` request needs a JWT; the token names the device (and tenant)."""
    jwt_algorithms: str = "HS256"
    """Accepted algorithms, comma-separated (HS256/384/512 with JWT_SECRET; RS*/PS*/ES* with JWT_PUBLIC_KEY)."""
    jwt_secret: str = ""
    jwt_public_key: str = ""
    """PEM text of the public key for RS*/PS*/ES*."""
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_device_claim: str = "device_id"
    jwt_tenant_claim: str = "tenant_id"

    tenant_rate_limit: int = Field(0, ge=0)
    """Routed events + proxied requests per tenant per window, shared by all instances; 0 turns it off."""
    tenant_rate_window_sec: float = Field(60.0, gt=0)
    tenant_rate_limit_url: str = ""
    """Redis URL holding the ``ratelimit:{tenant_id}:{window}`` counters (required with TENANT_RATE_LIMIT)."""

    gateway_routes_file: Path | None = None
    """JSON or YAML file with ``{"routes": [{"events": [...], "upstream": ...}]}`` replacing the default table."""
    gateway_routes: str | None = None
    """The same document as JSON text in the environment (the file wins when both are set)."""
    gateway_profiles_file: Path | None = None
    """JSON or YAML profiles document: more WebSocket paths with their own protocol (seed 002's
    ``/ws/{call_id}``) and the HTTP proxy table (``/auth``, ``/call``, ...); see ``gateway.profiles``."""
    gateway_profiles: str | None = None
    """The same document as JSON text in the environment (the file wins when both are set)."""

    @model_validator(mode="after")
    def _frame_holds_a_message(self) -> "GatewaySettings":
        if self.max_frame_bytes < self.max_message_bytes:
            raise ValueError("MAX_FRAME_BYTES must be at least MAX_MESSAGE_BYTES")
        if self.stream_nats_url and not self.stream_channel:
            raise ValueError("STREAM_NATS_URL needs STREAM_CHANNEL (the channel its messages are pushed to)")
        if self.tenant_rate_limit and not self.tenant_rate_limit_url:
            raise ValueError("TENANT_RATE_LIMIT needs TENANT_RATE_LIMIT_URL (a redis:// URL)")
        parse_networks(self.trusted_proxies)
        if self.connection_timeout_sec <= self.heartbeat_interval_sec:
            raise ValueError("CONNECTION_TIMEOUT_SEC must be longer than HEARTBEAT_INTERVAL_SEC")
        return self

    @field_validator("lobby_url", "measurement_url", "simulation_url")
    @classmethod
    def _upstream_urls_valid(cls, value: str) -> str:
        split_urls(value)
        return value

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, url: str) -> str:
        if urlsplit(url).scheme not in BROKER_SCHEMES:
            raise ValueError(f"BROKER_URL {url!r}: use memory://, redis://host:port/db or nats://host:port")
        return url

    def jwt_algorithm_list(self) -> list[str]:
        return [name.strip() for name in self.jwt_algorithms.split(",") if name.strip()]

    def upstream_urls(self) -> dict[str, str]:
        """Upstream names a routing table may use, to their base URLs."""
        return {
            "lobby": ",".join(split_urls(self.lobby_url)),
            "measurement": ",".join(split_urls(self.measurement_url)),
            "simulation": ",".join(split_urls(self.simulation_url)),
        }
