"""The gateway's settings, read from the environment (names and defaults as in the gateway README)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """Every knob of the gateway; build one per process (``create_app`` does) or pass your own in tests."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    lobby_url: str = "http://lobby:8000"
    measurement_url: str = "http://measurement:8000"
    simulation_url: str = "http://simulation:8000"
    internal_auth_token: str = ""
    """Shared secret for ``POST /internal/broadcast``; empty closes that endpoint."""

    max_message_bytes: int = Field(65536, gt=0)
    """Largest WebSocket message handled; a larger one gets a ``message_too_large`` error envelope."""
    max_frame_bytes: int = Field(1 << 20, gt=0)
    """Largest WebSocket message read at all; a larger one closes the connection with 1009."""
    max_send_buffer_bytes: int = Field(1 << 20, gt=0)
    """Bytes queued to one slow client before it is disconnected (close 1008 ``slow consumer``)."""

    rate_limit_rps: float = Field(10.0, gt=0)
    rate_limit_burst: int = Field(20, ge=1)
    http_timeout_seconds: float = Field(10.0, gt=0)
    upstream_max_connections: int = Field(256, ge=1)
    """Keep-alive connections per upstream; calls beyond wait for a free one (within HTTP_TIMEOUT_SECONDS)."""
    shutdown_grace_seconds: float = Field(5.0, ge=0)
    """How long in-flight upstream calls may run after SIGTERM before their sockets close with 1001."""

    gateway_routes_file: Path | None = None
    """JSON or YAML file with ``{"routes": [{"events": [...], "upstream": ...}]}`` replacing the default table."""
    gateway_routes: str | None = None
    """The same document as JSON text in the environment (the file wins when both are set)."""

    @model_validator(mode="after")
    def _frame_holds_a_message(self) -> "GatewaySettings":
        if self.max_frame_bytes < self.max_message_bytes:
            raise ValueError("MAX_FRAME_BYTES must be at least MAX_MESSAGE_BYTES")
        return self

    def upstream_urls(self) -> dict[str, str]:
        """Upstream names a routing table may use, to their base URLs."""
        return {
            "lobby": self.lobby_url.rstrip("/"),
            "measurement": self.measurement_url.rstrip("/"),
            "simulation": self.simulation_url.rstrip("/"),
        }
