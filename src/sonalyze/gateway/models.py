"""The gateway's wire shapes: WebSocket envelopes (plain dicts, built on the hot path) and the
internal broadcast API (pydantic, validated once per broadcast)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

RequestId = str | int | None


def response_envelope(event: str, request_id: RequestId, data: Any) -> dict[str, Any]:
    """``{"type": "response", "event", "request_id", "data"}``: the answer to one client event."""
    return {"type": "response", "event": event, "request_id": request_id, "data": data}


def error_envelope(event: str | None, request_id: RequestId, error: dict[str, Any]) -> dict[str, Any]:
    """``{"type": "error", "event", "request_id", "error": {"code", "message", "details"?}}``."""
    return {"type": "error", "event": event, "request_id": request_id, "error": error}


def event_envelope(event: str, data: Any) -> dict[str, Any]:
    """``{"type": "event", "event", "data"}``: a push from the backend (internal broadcast)."""
    return {"type": "event", "event": event, "data": data}


def error(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return body


class BroadcastTargets(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_ids: list[str] = Field(min_length=1, max_length=100_000)


class BroadcastRequest(BaseModel):
    """Body of ``POST /internal/broadcast``."""

    model_config = ConfigDict(extra="forbid")

    event: str = Field(min_length=1, max_length=200)
    data: dict[str, Any] = Field(default_factory=dict)
    targets: BroadcastTargets


class BroadcastResult(BaseModel):
    """Answer of ``POST /internal/broadcast``."""

    delivered: int
    """Connections the frame was written to (a device may hold several)."""
    devices: int
    """Target devices that had at least one connection (a device counts once)."""
