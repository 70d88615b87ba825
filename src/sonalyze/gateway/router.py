"""Event routing: which upstream handles which WebSocket event, as data.

A table is a list of routes ``{"events": [pattern, ...], "upstream": name-or-URL}``. A pattern is an
exact event name (``measurement.ready``), a prefix ending in ``.*`` (``lobby.*``) or ``*`` (everything
else). An exact name wins over a prefix, a longer prefix over a shorter one, ``*`` comes last. An
upstream is a service name (``lobby``, ``measurement``, ``simulation``: their ``*_URL`` setting) or an
absolute ``http(s)://`` base URL, so the gateway can front other backends. The default table is the
gateway README's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from sonalyze.gateway.config import GatewaySettings

LOBBY_SESSION_EVENTS = (
    "measurement.create_session",
    "measurement.start_speaker",
    "measurement.session_status",
    "measurement.cancel_session",
    "measurement.ready",
    "measurement.speaker_audio_ready",
    "measurement.recording_started",
    "measurement.playback_complete",
    "measurement.recording_uploaded",
    "measurement.error",
)
MEASUREMENT_JOB_EVENTS = ("measurement.create_job", "measurement.get_job", "measurement.get_audio_info")

DEFAULT_ROUTES: list[dict[str, Any]] = [
    {"events": ["lobby.*", "role.*", *LOBBY_SESSION_EVENTS], "upstream": "lobby"},
    {"events": [*MEASUREMENT_JOB_EVENTS, "analysis.*"], "upstream": "measurement"},
    {"events": ["simulation.*"], "upstream": "simulation"},
]


class RouteSpec(BaseModel):
    events: list[str] = Field(min_length=1)
    upstream: str = Field(min_length=1)

    @field_validator("events")
    @classmethod
    def _patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            body = pattern[:-2] if pattern.endswith(".*") else pattern
            if pattern != "*" and (not body or "*" in body):
                raise ValueError(f"pattern {pattern!r} must be an event name, 'prefix.*' or '*'")
        return patterns


class RoutesDocument(BaseModel):
    routes: list[RouteSpec] = Field(min_length=1)


class RoutingError(ValueError):
    """A routing table that cannot be used (bad document, unknown upstream name, duplicate pattern)."""


class RoutingTable:
    """Pure lookup from event name to upstream base URL."""

    def __init__(self, routes: Sequence[Mapping[str, Any]], upstream_urls: Mapping[str, str]) -> None:
        try:
            document = RoutesDocument.model_validate({"routes": list(routes)})
        except ValidationError as exc:
            raise RoutingError(f"invalid routing table: {exc}") from exc
        self._exact: dict[str, str] = {}
        prefixes: dict[str, str] = {}
        self._fallback: str | None = None
        seen: set[str] = set()
        for route in document.routes:
            url = _upstream_url(route.upstream, upstream_urls)
            for pattern in route.events:
                if pattern in seen:
                    raise RoutingError(f"pattern {pattern!r} appears twice in the routing table")
                seen.add(pattern)
                if pattern == "*":
                    self._fallback = url
                elif pattern.endswith(".*"):
                    prefixes[pattern[:-1]] = url
                else:
                    self._exact[pattern] = url
        self._prefixes = sorted(prefixes.items(), key=lambda item: len(item[0]), reverse=True)

    def resolve(self, event: str) -> str | None:
        """The upstream base URL for ``event``, or None when no route matches."""
        url = self._exact.get(event)
        if url is not None:
            return url
        for prefix, url in self._prefixes:
            if event.startswith(prefix):
                return url
        return self._fallback

    def rows(self) -> list[tuple[str, str]]:
        """Every (pattern, upstream URL) pair, exact names first (for docs and start-up logs)."""
        rows = sorted(self._exact.items()) + [(prefix + "*", url) for prefix, url in self._prefixes]
        return rows + ([("*", self._fallback)] if self._fallback else [])


def _upstream_url(upstream: str, upstream_urls: Mapping[str, str]) -> str:
    if upstream.startswith(("http://", "https://")):
        return upstream.rstrip("/")
    if upstream not in upstream_urls:
        raise RoutingError(f"unknown upstream {upstream!r}: use one of {', '.join(upstream_urls)} or an http(s):// URL")
    return upstream_urls[upstream]


def load_routing_table(settings: GatewaySettings) -> RoutingTable:
    """The table from ``GATEWAY_ROUTES_FILE`` (JSON or YAML), else ``GATEWAY_ROUTES`` (JSON), else the default."""
    if settings.gateway_routes_file is not None:
        document = _parse_document(settings.gateway_routes_file.read_text(), settings.gateway_routes_file.suffix)
    elif settings.gateway_routes:
        document = _parse_document(settings.gateway_routes, ".json")
    else:
        document = {"routes": DEFAULT_ROUTES}
    if not isinstance(document, dict) or "routes" not in document:
        raise RoutingError('a routing document is an object {"routes": [{"events": [...], "upstream": ...}]}')
    return RoutingTable(document["routes"], settings.upstream_urls())


def _parse_document(text: str, suffix: str) -> Any:
    if suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise RoutingError("a YAML routing file needs PyYAML (pip install PyYAML); or use JSON") from exc
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RoutingError(f"routing document is not valid YAML: {exc}") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise RoutingError(f"routing document is not valid JSON: {exc}") from exc
