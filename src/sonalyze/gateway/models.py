"""The gateway's wire shapes: WebSocket envelopes (plain dicts, built on the hot path) and the
internal broadcast API (pydantic, validated once per broadcast)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from sonalyze.gateway.publication import Targets

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


MAX_CHANNEL_CHARS = 200


class BroadcastTargets(BaseModel):
    """Exactly one of: ``device_ids``, ``channels`` (their subscribers), ``all: true`` (every identified device).

    ``device_ids`` is checked last so that a body naming no kind is reported against it (the issue-2 body).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    channels: list[Annotated[str, Field(min_length=1, max_length=MAX_CHANNEL_CHARS)]] | None = Field(
        None, min_length=1, max_length=10_000
    )
    everyone: Literal[True] | None = Field(None, alias="all")
    device_ids: list[str] | None = Field(None, min_length=1, max_length=100_000, validate_default=True)

    @field_validator("everyone")
    @classmethod
    def _not_with_channels(cls, everyone: bool | None, info: ValidationInfo) -> bool | None:
        if everyone and info.data.get("channels") is not None:
            raise ValueError("give channels or all: true, not both")
        return everyone

    @field_validator("device_ids")
    @classmethod
    def _exactly_one_kind(cls, device_ids: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if "channels" not in info.data or "everyone" not in info.data:
            return device_ids  # the other field is already reported
        others = info.data["channels"] is not None or info.data["everyone"] is not None
        if device_ids is None and not others:
            raise ValueError("targets needs device_ids, channels or all: true")
        if device_ids is not None and others:
            raise ValueError("give device_ids, channels or all: true, only one of them")
        return device_ids

    def targets(self) -> Targets:
        return Targets(device_ids=self.device_ids, channels=self.channels, everyone=bool(self.everyone))


class BroadcastRequest(BaseModel):
    """Body of ``POST /internal/broadcast``."""

    model_config = ConfigDict(extra="forbid")

    event: str = Field(min_length=1, max_length=200)
    data: dict[str, Any] = Field(default_factory=dict)
    targets: BroadcastTargets


class SubscriptionsRequest(BaseModel):
    """Body of ``POST /internal/subscriptions``: the devices' connections join or leave a channel."""

    model_config = ConfigDict(extra="forbid")

    device_ids: list[str] = Field(min_length=1, max_length=100_000)
    channel: str = Field(min_length=1, max_length=MAX_CHANNEL_CHARS)
    action: Literal["subscribe", "unsubscribe"]

    def targets(self) -> Targets:
        if self.action == "subscribe":
            return Targets(device_ids=self.device_ids, join=self.channel)
        return Targets(device_ids=self.device_ids, leave=self.channel)
