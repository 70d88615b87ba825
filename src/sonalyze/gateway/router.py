"""Event routing: which upstream handles which WebSocket event, as data.

A table is a list of routes ``{"events": [pattern, ...], "upstream": name-or-URL}``. A pattern is an
exact event name (``measurement.ready``), a prefix ending in ``.*`` (``lobby.*``) or ``*`` (everything
else). An exact name wins over a prefix, a longer prefix over a shorter one, ``*`` comes last. An
upstream is a service name (``lobby``, ``measurement``, ``simulation``: their ``*_URL`` setting) or an
absolute ``http(s)://`` base URL, so the gateway can front other backends. The default table is the
gateway README's.

The same document's optional ``channels`` rules say who may ``subscribe`` to which channels
(``{"channels": [pattern, ...], "authorize": "allow" | upstream}``; patterns are names, ``prefix:*`` or
``*``, matched like events). Without them: ``lobby:*`` is authorized by the lobby.
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
        return _checked_patterns(patterns, ".", "pattern {!r} must be an event name, 'prefix.*' or '*'")


ALLOW = "allow"
"""A channel rule's ``authorize`` that lets every identified device subscribe, without asking anyone."""

DEFAULT_CHANNEL_RULES: list[dict[str, Any]] = [{"channels": ["lobby:*"], "authorize": "lobby"}]


class ChannelRuleSpec(BaseModel):
    channels: list[str] = Field(min_length=1)
    """Channel patterns: an exact name, a prefix ending in ``:*`` (``lobby:*``) or ``*``."""
    authorize: str = Field(min_length=1)
    """``allow``, or the upstream (name or URL) asked with ``gateway.authorize_subscribe``."""

    @field_validator("channels")
    @classmethod
    def _patterns(cls, patterns: list[str]) -> list[str]:
        return _checked_patterns(patterns, ":", "channel pattern {!r} must be a channel name, 'prefix:*' or '*'")


def _checked_patterns(patterns: list[str], separator: str, problem: str) -> list[str]:
    """``patterns`` if each is a name, ``prefix{separator}*`` or ``*``; else ``problem`` (formatted) as a ValueError."""
    for pattern in patterns:
        body = pattern.removesuffix(separator + "*")
        if pattern != "*" and (not body or "*" in body):
            raise ValueError(problem.format(pattern))
    return patterns


class RoutesDocument(BaseModel):
    routes: list[RouteSpec] = Field(min_length=1)
    channels: list[ChannelRuleSpec] | None = None
    """Who may subscribe to which channels; absent: the default (``lobby:*`` asks the lobby)."""


class RoutingError(ValueError):
    """A routing table that cannot be used (bad document, unknown upstream name, duplicate pattern)."""


class RoutingTable:
    """Pure lookup from event name to upstream base URL."""

    def __init__(
        self,
        routes: Sequence[Mapping[str, Any]],
        upstream_urls: Mapping[str, str],
        channel_rules: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        try:
            document = RoutesDocument.model_validate(
                {"routes": list(routes), "channels": DEFAULT_CHANNEL_RULES if channel_rules is None else list(channel_rules)}
            )
        except ValidationError as exc:
            raise RoutingError(f"invalid routing table: {exc}") from exc
        self._events = _PatternTable(
            [(route.events, _upstream_url(route.upstream, upstream_urls)) for route in document.routes], ".", "pattern"
        )
        self._channels = _PatternTable(
            [
                (rule.channels, rule.authorize if rule.authorize == ALLOW else _upstream_url(rule.authorize, upstream_urls))
                for rule in document.channels or ()
            ],
            ":",
            "channel pattern",
        )

    def resolve(self, event: str) -> str | None:
        """The upstream base URL for ``event``, or None when no route matches."""
        return self._events.resolve(event)

    def channel_authorizer(self, channel: str) -> str | None:
        """``allow``, the upstream base URL that decides on subscribing to ``channel``, or None (refused)."""
        return self._channels.resolve(channel)

    def rows(self) -> list[tuple[str, str]]:
        """Every (pattern, upstream URL) pair, exact names first (for docs and start-up logs)."""
        return self._events.rows()


class _PatternTable:
    """Exact names, then the longest ``prefix{sep}*``, then ``*``: the lookup shared by events and channels."""

    def __init__(self, rows: Sequence[tuple[Sequence[str], str]], separator: str, what: str) -> None:
        self._exact: dict[str, str] = {}
        prefixes: dict[str, str] = {}
        self._fallback: str | None = None
        wildcard = separator + "*"
        seen: set[str] = set()
        for patterns, value in rows:
            for pattern in patterns:
                if pattern in seen:
                    raise RoutingError(f"{what} {pattern!r} appears twice in the routing table")
                seen.add(pattern)
                if pattern == "*":
                    self._fallback = value
                elif pattern.endswith(wildcard):
                    prefixes[pattern[:-1]] = value
                else:
                    self._exact[pattern] = value
        self._prefixes = sorted(prefixes.items(), key=lambda item: len(item[0]), reverse=True)

    def resolve(self, name: str) -> str | None:
        value = self._exact.get(name)
        if value is not None:
            return value
        for prefix, value in self._prefixes:
            if name.startswith(prefix):
                return value
        return self._fallback

    def rows(self) -> list[tuple[str, str]]:
        rows = sorted(self._exact.items()) + [(prefix + "*", value) for prefix, value in self._prefixes]
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
    return RoutingTable(document["routes"], settings.upstream_urls(), document.get("channels"))


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
