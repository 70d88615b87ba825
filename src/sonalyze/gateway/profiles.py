"""Protocol profiles: WebSocket paths that speak another gateway's wire protocol, as data.

``WS /ws`` speaks the Sonalyze envelope and ``WS /ws/stream`` is the relay (``STREAM_*`` settings); both
are untouched here. A profiles document (``GATEWAY_PROFILES_FILE``, JSON or YAML, or ``GATEWAY_PROFILES``
as JSON text) adds more paths and the HTTP proxy table (``proxy_table``)::

    {"websocket": [{"path": "/ws/{call_id}", "protocol": "typed_json", "redis_url": "redis://...",
                    "token": "optional", "require_key": "call:{call_id}:active",
                    "events_channel": "call_events:{call_id}", "binary": "audio",
                    "end": {"channel": "call.ended", "field": "call_id", "reason": "call ended"},
                    "messages": {"audio": {"publish": "audio:{call_id}", "base64_field": "data"},
                                 "barge_in": {"publish": "barge_in:{call_id}", "count_event": "barge_in"}}}],
     "http": [{"prefix": "/call", "upstream": "http://127.0.0.1:9001"}]}

``typed_json`` is seed 002's protocol: JSON objects keyed by ``"type"``. The path parameter named by
``identity`` (default: the template's only parameter) is the connection's identity, authenticated by the
profile itself — never by Sonalyze device credentials, and never registered as a Sonalyze device, so
``/internal/broadcast`` cannot reach it and it cannot act as a device. ``?token=`` (or ``Authorization:
Bearer``) is a JWT checked with the gateway's ``JWT_*`` keys whose claim ``token_claim`` must equal the
identity (``token``: ``required``, ``optional`` — checked when present — or ``none``); ``require_key``
is a Redis key that must exist (a live call). Client messages: ``{"type": "ping"}`` →
``{"type": "pong", "timestamp"}``; a type in ``messages`` is published to Redis (its ``base64_field``
decoded to raw bytes, else the JSON object with the identity and a ``timestamp`` added); binary frames
count as the ``binary`` type's decoded payload. Whatever is published on ``events_channel`` is written to
the call's sockets byte for byte. A JSON object published on ``end.channel`` whose ``end.field`` names an
identity closes that identity's sockets on every gateway (1000, ``end.reason``), and refuses (404) those
still being upgraded. Bad input gets ``{"type": "error", "code", "message", "timestamp"}``
and the connection stays open.

The profile is chosen once, at the upgrade: the Sonalyze path pays one ``is None`` test per message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import parse_qs

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sonalyze.gateway.auth import AuthError, TokenVerifier, bearer_token
from sonalyze.gateway.binary_relay import BinaryRelay
from sonalyze.gateway.config import GatewaySettings
from sonalyze.gateway.frames import text_frame
from sonalyze.gateway.router import RoutingError, _parse_document

if TYPE_CHECKING:
    from websockets.http11 import Request
    from websockets.server import ServerProtocol

    from sonalyze.gateway.session import Session

logger = logging.getLogger("sonalyze.gateway.profiles")


class ProfileSocket(Protocol):
    """What a profile uses of the connection it serves (``ws_protocol.GatewayWebSocketProtocol``, which
    imports this module: named here by what it must offer, not by its class)."""

    open: bool
    transport: asyncio.Transport | None
    ws: ServerProtocol
    session: Session | None
    profile: ProfileConnection | RawRelayConnection | None

    def _accept(self, request: Request, device_id: str | None, tenant_id: str | None = None, expires_at_s: float | None = None) -> None: ...

    def _flush(self) -> None: ...

    def close(self, code: int, reason: str, label: str | None = None) -> None: ...

PARAM_VALUE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
"""What a path parameter's value may be: it names Redis channels and keys, so no ``:``, ``*`` or spaces."""
_TEMPLATE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
RESERVED_PATHS = ("/ws", "/ws/stream")
"""Served by the gateway itself (the Sonalyze envelope and the stream relay)."""
FEED_RETRY_S = 0.5
CLOSE_NORMAL = 1000


class PathTemplate:
    """``/ws/{call_id}``: literal segments and whole-segment parameters."""

    __slots__ = ("path", "segments", "names")

    def __init__(self, path: str) -> None:
        if not path.startswith("/") or path.endswith("/") and path != "/":
            raise ValueError(f"path {path!r} must start with / and not end with /")
        self.path = path
        self.segments: list[tuple[bool, str]] = []
        for segment in path.split("/")[1:]:
            whole = _TEMPLATE_PARAM.fullmatch(segment)
            if whole is None and ("{" in segment or "}" in segment or not segment):
                raise ValueError(f"path {path!r}: a parameter is a whole segment {{name}}")
            self.segments.append((whole is not None, whole.group(1) if whole else segment))
        self.names = [name for is_param, name in self.segments if is_param]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"path {path!r} names a parameter twice")

    def match(self, path: str) -> dict[str, str] | None:
        """The parameters when ``path`` fits (each value as ``PARAM_VALUE`` allows), else None."""
        parts = path.split("/")[1:]
        if len(parts) != len(self.segments) or not path.startswith("/"):
            return None
        params: dict[str, str] = {}
        for (is_param, name), part in zip(self.segments, parts):
            if is_param:
                if PARAM_VALUE.fullmatch(part) is None:
                    return None
                params[name] = part
            elif part != name:
                return None
        return params


def fill(template: str, params: Mapping[str, str], what: str) -> str:
    """``audio:{call_id}`` with the path's parameters; an unknown name is a configuration error."""
    try:
        return template.format_map(params)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{what} {template!r} uses a name that is not a path parameter: {exc}") from exc


class MessageRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    publish: str = Field(min_length=1)
    """Redis channel the message goes to (``{param}`` filled from the path)."""
    base64_field: str | None = None
    """This field (a base64 string) is decoded and its bytes published, raw; else the JSON object is."""
    count_event: str | None = None
    """Counted in ``gateway_call_events_total{event_type}`` under this name."""


class EndRule(BaseModel):
    """The end of an identity's life (seed 002: ``call.ended`` after ``POST /call/{call_id}/end``)."""

    model_config = ConfigDict(extra="forbid")

    channel: str = Field(min_length=1, pattern=r"^[^{}*?\[\]]+$")
    """A Redis channel (literal: every gateway subscribes to it once) carrying JSON objects."""
    field: str = Field(min_length=1)
    """The member of those objects that names the identity."""
    reason: str = Field("ended", max_length=120)
    """The close reason sent with code 1000 (RFC 6455 §7.4.1: normal closure, the call's purpose fulfilled)."""


class WebSocketProfileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    protocol: Literal["typed_json"]
    identity: str | None = None
    """The path parameter that names the connection; default: the template's only parameter."""
    redis_url: str = Field(min_length=1)
    token: Literal["required", "optional", "none"] = "required"
    token_claim: str | None = None
    """The JWT claim that must equal the identity (default: the identity parameter's name)."""
    require_key: str | None = None
    events_channel: str | None = None
    binary: str | None = None
    """Binary frames are this message type's payload (its ``base64_field`` already decoded)."""
    messages: dict[str, MessageRule] = Field(default_factory=dict)
    end: EndRule | None = None

    @field_validator("path")
    @classmethod
    def _template(cls, path: str) -> str:
        if path in RESERVED_PATHS:
            raise ValueError(f"{path} is served by the gateway itself")
        template = PathTemplate(path)
        if not template.names:
            raise ValueError(f"path {path!r} needs a parameter naming the connection, e.g. /ws/{{call_id}}")
        return path

    @model_validator(mode="after")
    def _consistent(self) -> "WebSocketProfileSpec":
        names = PathTemplate(self.path).names
        if self.identity is None:
            if len(names) != 1:
                raise ValueError(f"path {self.path!r} has several parameters: say which one is the identity")
            self.identity = names[0]
        if self.identity not in names:
            raise ValueError(f"identity {self.identity!r} is not a parameter of {self.path!r}")
        if "ping" in self.messages:
            raise ValueError("ping is answered by the gateway (pong)")
        if self.binary is not None and (self.binary not in self.messages or self.messages[self.binary].base64_field is None):
            raise ValueError(f"binary: {self.binary!r} must be a message type with a base64_field")
        sample = dict.fromkeys(names, "x")
        for template, what in [
            (self.require_key, "require_key"), (self.events_channel, "events_channel"),
            *((rule.publish, f"messages.{kind}.publish") for kind, rule in self.messages.items()),
        ]:
            if template is not None:
                fill(template, sample, what)
        return self


class CountRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str = Field(min_length=1)
    path: str
    """A path template (``/call/{call_id}/end``)."""
    event_type: str = Field(min_length=1)

    @field_validator("path")
    @classmethod
    def _template(cls, path: str) -> str:
        PathTemplate(path)
        return path


class HttpRouteSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prefix: str
    """Gateway path prefix (``/call``): the prefix itself and everything below it."""
    upstream: str = Field(min_length=1)
    """A service name (``lobby``, ``measurement``, ``simulation``) or an ``http(s)://`` base URL."""
    upstream_prefix: str | None = None
    """What ``prefix`` becomes upstream (default: itself)."""
    count: list[CountRule] = Field(default_factory=list)
    """Answers below 400 to these requests count in ``gateway_call_events_total{event_type}``."""

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, prefix: str) -> str:
        if not prefix.startswith("/") or prefix.endswith("/") or "{" in prefix or len(prefix) < 2:
            raise ValueError(f"prefix {prefix!r} must be a literal path like /call (no trailing /)")
        if prefix in ("/ws", "/internal") or prefix.startswith(("/ws/", "/internal/")):
            raise ValueError(f"prefix {prefix!r} is the gateway's own")
        return prefix


class ProfilesDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    websocket: list[WebSocketProfileSpec] = Field(default_factory=list)
    http: list[HttpRouteSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> "ProfilesDocument":
        for what, values in (("websocket path", [p.path for p in self.websocket]), ("http prefix", [r.prefix for r in self.http])):
            duplicated = {value for value in values if values.count(value) > 1}
            if duplicated:
                raise ValueError(f"{what} {sorted(duplicated)} appears twice")
        return self


def load_profiles(settings: GatewaySettings) -> ProfilesDocument | None:
    """The document of ``GATEWAY_PROFILES_FILE`` (JSON or YAML), else ``GATEWAY_PROFILES`` (JSON), else None."""
    if settings.gateway_profiles_file is not None:
        raw = _parse_document(settings.gateway_profiles_file.read_text(), settings.gateway_profiles_file.suffix)
    elif settings.gateway_profiles:
        raw = _parse_document(settings.gateway_profiles, ".json")
    else:
        return None
    try:
        return ProfilesDocument.model_validate(raw)
    except ValidationError as exc:
        raise RoutingError(f"invalid profiles document: {exc}") from exc


class SeedMetrics:
    """Seed 002's metric names, on the gateway's own registry (``GET /metrics``) when profiles are configured."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gateway_requests_total", "Requests through the proxy table, by method and table prefix", ["method", "endpoint"], registry=registry
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds", "Proxy-table requests: until the upstream's status and headers", registry=registry
        )
        self.ws_connections = Counter(
            "gateway_ws_connections_total", "Profile WebSocket connections, by status (connected/disconnected)", ["status"], registry=registry
        )
        self.call_events = Counter("gateway_call_events_total", "Call events, by event_type", ["event_type"], registry=registry)


def seed_error(code: str, message: str) -> bytes:
    """Seed 002's WebSocket error: ``{"type": "error", "code", "message", "timestamp"}``."""
    return orjson.dumps({"type": "error", "code": code, "message": message, "timestamp": time.time()})


@dataclass(eq=False)
class _Channel:
    members: set[Any]
    subscribed: asyncio.Task[Any]
    handler: Callable[[bytes], None] | None = None
    """A channel the gateway itself listens to (``listen``) instead of sockets following it."""


class RedisChannelFeed:
    """Redis channels written byte for byte to the sockets that follow them: one subscriber connection
    per gateway, a channel subscribed while at least one socket follows it; and channels the gateway
    listens to for good (``listen``), on the same connection."""

    def __init__(self, client: Any) -> None:
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._channels: dict[bytes, _Channel] = {}
        self._reader: asyncio.Task[None] | None = None

    async def follow(self, channel: str, connection: Any) -> None:
        key = channel.encode()
        entry = self._channels.get(key)
        if entry is None:
            task = asyncio.get_running_loop().create_task(self._pubsub.subscribe(key))
            entry = self._channels[key] = _Channel(set(), task)
        entry.members.add(connection)
        try:
            await asyncio.shield(entry.subscribed)
        except BaseException:
            self.leave(channel, connection)
            raise
        self._start_reading()

    async def listen(self, channel: str, handler: Callable[[bytes], None]) -> None:
        """``handler`` gets each message of ``channel`` from now on (returns once subscribed)."""
        from redis.exceptions import RedisError

        key = channel.encode()
        entry = self._channels.get(key)
        if entry is None:
            task = asyncio.get_running_loop().create_task(self._pubsub.subscribe(key))
            entry = self._channels[key] = _Channel(set(), task, handler)
        try:
            await asyncio.shield(entry.subscribed)
        except (RedisError, OSError):
            if self._channels.get(key) is entry:  # the next caller subscribes again
                del self._channels[key]
            raise
        self._start_reading()

    def _start_reading(self) -> None:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read(), name="gateway-profile-feed")

    def leave(self, channel: str, connection: Any) -> None:
        key = channel.encode()
        entry = self._channels.get(key)
        if entry is None:
            return
        entry.members.discard(connection)
        if not entry.members:
            del self._channels[key]
            asyncio.get_running_loop().create_task(self._unsubscribe(key))

    async def _unsubscribe(self, key: bytes) -> None:
        from redis.exceptions import RedisError

        if key in self._channels:  # followed again meanwhile
            return
        try:
            await self._pubsub.unsubscribe(key)
        except (RedisError, OSError) as exc:
            logger.warning("profile feed: unsubscribe %s failed: %s", key.decode(), exc)

    async def _read(self) -> None:
        from redis.exceptions import RedisError

        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                logger.warning("profile feed (redis): %s; retrying", exc)
                await asyncio.sleep(FEED_RETRY_S)
                continue
            if message is None or message["type"] != "message":
                continue
            entry = self._channels.get(message["channel"])
            if entry is not None and entry.handler is not None:
                entry.handler(message["data"])
            elif entry is not None:
                frame = text_frame(message["data"])
                for connection in tuple(entry.members):
                    if connection.open:
                        connection.transport.write(frame)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._pubsub.aclose()


@dataclass(eq=False, slots=True)
class ProfileConnection:
    """What a profile keeps of one accepted connection (``GatewayWebSocketProtocol.profile``)."""

    profile: "TypedJsonProfile"
    identity: str
    tenant_id: str | None
    channels: dict[str, str]
    """Message type → its Redis channel, filled once at the upgrade."""
    events_channel: str | None
    params: dict[str, str] = field(default_factory=dict)

    def receive(self, connection: ProfileSocket, message: bytes, binary: bool) -> None:
        self.profile.receive(connection, self, message, binary)

    def closed(self, connection: ProfileSocket) -> None:
        self.profile.closed(connection, self)


class RawRelayConnection:
    """A ``/ws/stream`` client with ``STREAM_FORMAT=raw``: seed 003's relay takes no client messages, so
    whatever a client sends is read and dropped (no Sonalyze error envelope in a raw stream)."""

    __slots__ = ()

    def receive(self, connection: ProfileSocket, message: bytes, binary: bool) -> None:
        return None

    def closed(self, connection: ProfileSocket) -> None:
        return None


RAW_RELAY = RawRelayConnection()


class TypedJsonProfile:
    """Seed 002's ``type``-keyed JSON on one path template."""

    def __init__(self, spec: WebSocketProfileSpec, settings: GatewaySettings, metrics: SeedMetrics) -> None:
        import redis.asyncio as redis

        self.spec = spec
        self.template = PathTemplate(spec.path)
        self.identity_param: str = spec.identity  # type: ignore[assignment]
        self.metrics = metrics
        self.max_message_bytes = settings.max_message_bytes
        self.verifier = None
        if spec.token != "none":
            self.verifier = TokenVerifier(
                settings.jwt_algorithm_list(), settings.jwt_secret, settings.jwt_public_key, settings.jwt_issuer,
                settings.jwt_audience, spec.token_claim or self.identity_param, settings.jwt_tenant_claim,
            )
        self.redis = redis.Redis.from_url(spec.redis_url, socket_connect_timeout=1.0, socket_timeout=5.0)
        self.publisher = BinaryRelay(spec.redis_url)
        self.feed = RedisChannelFeed(self.redis) if spec.events_channel or spec.end else None
        self.live: dict[str, set[ProfileSocket]] = {}
        """With ``end``: identity → its sockets, open or being upgraded (an end pops the entry)."""

    # the upgrade

    def handshake(self, connection: ProfileSocket, request: "Request", params: dict[str, str], query: str) -> None:
        identity = params[self.identity_param]
        token = parse_qs(query).get("token", [None])[0] or bearer_token(request.headers.get("Authorization"))
        tenant_id = None
        if self.verifier is not None and (token or self.spec.token == "required"):
            try:
                claims = self.verifier.verify(token)
            except AuthError as exc:
                refuse(connection, 401, exc.message)
                return
            if claims.device_id != identity:
                refuse(connection, 403, f"the token is not for {identity!r}")
                return
            tenant_id = claims.tenant_id
        asyncio.get_running_loop().create_task(self._open(connection, request, params, identity, tenant_id))

    async def _open(self, connection: ProfileSocket, request: "Request", params: dict[str, str], identity: str, tenant_id: str | None) -> None:
        from redis.exceptions import RedisError

        spec = self.spec
        events_channel = fill(spec.events_channel, params, "events_channel") if spec.events_channel else None
        if spec.end is not None:
            # registered before require_key is read: an end published after that read finds this socket
            self.live.setdefault(identity, set()).add(connection)
        try:
            if spec.end is not None and self.feed is not None:
                await self.feed.listen(spec.end.channel, self._ended)
            if spec.require_key is not None and not await self.redis.exists(fill(spec.require_key, params, "require_key")):
                self._forget(identity, connection)
                refuse(connection, 404, f"{self.identity_param} {identity!r} not found")
                connection._flush()
                return
            if self.feed is not None and events_channel is not None:
                await self.feed.follow(events_channel, connection)
        except (RedisError, OSError) as exc:
            logger.warning("profile %s: redis unavailable at the upgrade: %s", spec.path, exc)
            self._forget(identity, connection)
            refuse(connection, 503, "service unavailable; retry")
            connection._flush()
            return
        if connection.transport is None or connection.transport.is_closing():
            if self.feed is not None and events_channel is not None:
                self.feed.leave(events_channel, connection)
            self._forget(identity, connection)
            return
        if spec.end is not None and connection not in self.live.get(identity, ()):  # ended while we read Redis
            if self.feed is not None and events_channel is not None:
                self.feed.leave(events_channel, connection)
            refuse(connection, 404, f"{self.identity_param} {identity!r} has ended")
            connection._flush()
            return
        channels = {kind: fill(rule.publish, params, f"messages.{kind}.publish") for kind, rule in spec.messages.items()}
        connection._accept(request, None, tenant_id)
        if connection.open:
            connection.profile = ProfileConnection(self, identity, tenant_id, channels, events_channel, params)
            self.metrics.ws_connections.labels("connected").inc()
        else:
            if self.feed is not None and events_channel is not None:
                self.feed.leave(events_channel, connection)
            self._forget(identity, connection)
        connection._flush()

    def closed(self, connection: ProfileSocket, state: ProfileConnection) -> None:
        if self.feed is not None and state.events_channel is not None:
            self.feed.leave(state.events_channel, connection)
        self._forget(state.identity, connection)
        self.metrics.ws_connections.labels("disconnected").inc()

    def _forget(self, identity: str, connection: ProfileSocket) -> None:
        sockets = self.live.get(identity)
        if sockets is not None:
            sockets.discard(connection)
            if not sockets:
                del self.live[identity]

    def _ended(self, data: bytes) -> None:
        """A message on ``end.channel``: close the sockets of the identity it names (1000, ``end.reason``)."""
        end = self.spec.end
        assert end is not None
        try:
            identity = orjson.loads(data).get(end.field)
        except (orjson.JSONDecodeError, AttributeError):
            logger.warning("profile %s: a message on %s is not a JSON object; ignored", self.spec.path, end.channel)
            return
        if not isinstance(identity, str):
            return
        for connection in self.live.pop(identity, ()):
            if connection.open:  # one still being upgraded is refused by _open: it is no longer in live
                connection.close(CLOSE_NORMAL, end.reason, label="ended")

    # messages

    def receive(self, connection: ProfileSocket, state: ProfileConnection, message: bytes, binary: bool) -> None:
        session = connection.session
        assert session is not None
        retry_after_s = session.bucket.take(asyncio.get_running_loop().time())
        if retry_after_s:
            send(connection, seed_error("RATE_LIMITED", f"too many messages; retry in {retry_after_s:.3f} s"))
            return
        if len(message) > self.max_message_bytes:
            send(connection, seed_error("MESSAGE_TOO_LARGE", f"message is {len(message)} bytes; the limit is {self.max_message_bytes}"))
            return
        if binary:
            if self.spec.binary is None:
                send(connection, seed_error("INVALID_MESSAGE", "binary frames are not accepted here; send JSON text"))
                return
            self._publish(state, self.spec.binary, message)
            return
        try:
            body = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            send(connection, seed_error("INVALID_JSON", f"message is not valid JSON: {exc}"))
            return
        kind = body.get("type") if isinstance(body, dict) else None
        if not isinstance(kind, str):
            send(connection, seed_error("INVALID_MESSAGE", 'a message is a JSON object with a "type"'))
            return
        if kind == "ping":
            send(connection, orjson.dumps({"type": "pong", "timestamp": time.time()}))
            return
        rule = self.spec.messages.get(kind)
        if rule is None:
            known = ", ".join(["ping", *self.spec.messages])
            send(connection, seed_error("UNKNOWN_TYPE", f"unknown message type {kind[:64]!r}; use one of {known}"))
            return
        if rule.base64_field is not None:
            encoded = body.get(rule.base64_field)
            try:
                if not isinstance(encoded, str) or not encoded:
                    raise ValueError("missing")
                payload = base64.b64decode(encoded, validate=True)
            except (ValueError, binascii.Error):
                send(connection, seed_error("INVALID_PAYLOAD", f'"{rule.base64_field}" must be a non-empty base64 string'))
                return
        else:
            payload = orjson.dumps({**body, self.identity_param: state.identity, "timestamp": time.time()})
        self._publish(state, kind, payload)

    def _publish(self, state: ProfileConnection, kind: str, payload: bytes) -> None:
        self.publisher.send(state.channels[kind], payload)
        count_event = self.spec.messages[kind].count_event
        if count_event is not None:
            self.metrics.call_events.labels(count_event).inc()

    async def close(self) -> None:
        if self.feed is not None:
            await self.feed.close()
        await self.publisher.close()
        await self.redis.aclose()


def send(connection: ProfileSocket, payload: bytes) -> None:
    if connection.open:
        connection.transport.write(text_frame(payload))


def refuse(connection: ProfileSocket, status: int, message: str) -> None:
    """Answer the upgrade with ``status`` and seed 002's HTTP error body ``{"detail": message}``."""
    response = connection.ws.reject(status, orjson.dumps({"detail": message}).decode())
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    connection.ws.send_response(response)


class Profiles:
    """The WebSocket profiles of one gateway process, their Redis connections and the seed metrics."""

    def __init__(self, document: ProfilesDocument, settings: GatewaySettings, registry: CollectorRegistry) -> None:
        self.metrics = SeedMetrics(registry)
        self.websocket = [TypedJsonProfile(spec, settings, self.metrics) for spec in document.websocket]

    def handshake(self, connection: ProfileSocket, request: "Request", path: str, query: str) -> bool:
        """Serve the upgrade when a profile's path fits (True), else leave it to the caller (False)."""
        for profile in self.websocket:
            params = profile.template.match(path)
            if params is not None:
                profile.handshake(connection, request, params, query)
                return True
        return False

    async def close(self) -> None:
        for profile in self.websocket:
            await profile.close()
