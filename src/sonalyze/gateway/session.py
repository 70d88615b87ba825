"""One WebSocket connection's protocol logic, without sockets: fed with messages, answers with outcomes.

Order of checks for every message: size, JSON, rate limit (every message takes a token, even a bad
one), envelope shape, ``identify``/``ping``, identification, ``subscribe``/``unsubscribe``, route. The
shell (``ws_protocol``) sends what :meth:`Session.receive` returns and runs the upstream calls.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from sonalyze.gateway.auth import AuthError
from sonalyze.gateway.device_tokens import DeviceTokens
from sonalyze.gateway.models import MAX_CHANNEL_CHARS, RequestId, error, error_envelope, response_envelope
from sonalyze.gateway.rate_limit import TokenBucket
from sonalyze.gateway.router import ALLOW, RoutingTable

MAX_DEVICE_ID_CHARS = 128


class Reply(NamedTuple):
    """Send ``envelope`` to this connection."""

    envelope: dict[str, Any]


class Identified(NamedTuple):
    """The connection now belongs to ``device_id``: register it, send ``envelope``, then replay from
    ``resume`` (epoch, offset) when the client gave one."""

    device_id: str
    envelope: dict[str, Any]
    resume: tuple[str, int] | None = None


class Forward(NamedTuple):
    """Call ``upstream_url``/gateway/handle with this event; its answer becomes the reply."""

    upstream_url: str
    event: str
    data: dict[str, Any]
    request_id: RequestId


class Subscription(NamedTuple):
    """Join (``subscribe``) or leave ``channel``; ``authorizer`` is ``allow`` or the upstream URL to ask first."""

    event: str
    channel: str
    request_id: RequestId
    authorizer: str


class Resume(NamedTuple):
    """Replay what the device missed after ``offset`` of history ``epoch`` (or tell it to resynchronize)."""

    epoch: str
    offset: int
    request_id: RequestId


Outcome = Reply | Identified | Forward | Subscription | Resume
"""Named tuples: immutable, and built in a third of a frozen dataclass's time (one per message)."""

SUBSCRIPTION_EVENTS = ("subscribe", "unsubscribe")
AUTHORIZE_SUBSCRIBE_EVENT = "gateway.authorize_subscribe"
"""The event an upstream named by a channel rule gets to decide on a ``subscribe``."""


RESUME_EVENT = "resume"


def parse_position(data: dict[str, Any]) -> tuple[str, int] | None:
    """``{"epoch", "offset"}`` as a client sends it back (the ``pos`` of the last push it saw), or None."""
    epoch, offset = data.get("epoch"), data.get("offset")
    if not isinstance(epoch, str) or not 0 < len(epoch) <= 64 or type(offset) is not int or offset < 0:
        return None
    return epoch, offset


def device_id_problem(device_id: object) -> str | None:
    """Why ``device_id`` is unusable, or None when it is fine."""
    if not isinstance(device_id, str) or not device_id.strip():
        return "device_id must be a non-empty string"
    if len(device_id) > MAX_DEVICE_ID_CHARS:
        return f"device_id must be at most {MAX_DEVICE_ID_CHARS} characters"
    return None


class Session:
    __slots__ = (
        "connection_id", "device_id", "routes", "bucket", "max_message_bytes", "tenant_id", "tokens", "insecure_ids", "max_json_depth",
    )

    def __init__(
        self,
        connection_id: str,
        routes: RoutingTable,
        bucket: TokenBucket,
        max_message_bytes: int,
        device_id: str | None = None,
        tenant_id: str | None = None,
        tokens: DeviceTokens | None = None,
        insecure_ids: bool = False,
        max_json_depth: int = 32,
    ) -> None:
        self.max_json_depth = max_json_depth
        self.connection_id = connection_id
        self.tokens = tokens
        """Verifies ``identify {"device_token"}`` and mints devices for ``identify {}`` (contract C1)."""
        self.insecure_ids = insecure_ids
        """``ALLOW_INSECURE_DEVICE_IDS``: ``identify {"device_id"}`` without a token is believed."""
        self.device_id = device_id
        self.tenant_id = tenant_id
        """The tenant the connection's token named; None without authentication."""
        self.routes = routes
        self.bucket = bucket
        self.max_message_bytes = max_message_bytes

    def receive(self, message: bytes | str, now_s: float) -> Outcome:
        """Decide what one client message leads to."""
        size = len(message) if isinstance(message, bytes) else len(message.encode())
        if size > self.max_message_bytes:
            return self.rate_limited(None, None, now_s) or _fail(
                None, None, "message_too_large", f"message is {size} bytes; the limit is {self.max_message_bytes}",
                {"max_bytes": self.max_message_bytes},
            )
        try:
            envelope = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            return self.rate_limited(None, None, now_s) or _fail(None, None, "invalid_json", f"message is not valid JSON: {exc}")
        raw = message if isinstance(message, bytes) else message.encode()
        # Depth is at most the number of opening brackets: the exact walk runs only for messages that could be too deep.
        if raw.count(b"[") + raw.count(b"{") > self.max_json_depth and nested_deeper_than(envelope, self.max_json_depth):
            return self.rate_limited(None, None, now_s) or _fail(
                None, None, "invalid_json", f"message is nested deeper than {self.max_json_depth} levels",
                {"reason": "too_deep", "max_depth": self.max_json_depth},
            )
        if not isinstance(envelope, dict):
            return self.rate_limited(None, None, now_s) or _fail(
                None, None, "invalid_json", "message must be a JSON object {\"event\", \"request_id\", \"data\"}"
            )
        event = envelope.get("event")
        request_id = envelope.get("request_id")
        if not (request_id is None or isinstance(request_id, (str, int))) or isinstance(request_id, bool):
            request_id = None
            problem: tuple[str, str] | None = ("invalid_request_id", "request_id must be a string or an integer")
        else:
            problem = None
        if not isinstance(event, str) or not event:
            event = None
            problem = problem or ("missing_event", "message needs an \"event\" (a non-empty string)")
        limited = self.rate_limited(event, request_id, now_s)
        if limited is not None:
            return limited
        if problem is not None:
            return _fail(event, request_id, *problem)
        data = envelope.get("data")
        if data is None:
            data = {}
        elif not isinstance(data, dict):
            return _fail(event, request_id, "invalid_data", "\"data\" must be a JSON object")
        assert event is not None
        if event == "identify":
            return self._identify(data, request_id)
        if event == "ping":
            return Reply(response_envelope("pong", request_id, {}))
        if self.device_id is None:
            return _fail(event, request_id, "not_identified", "identify first: connect with ?device_token= or send an identify event")
        if event in SUBSCRIPTION_EVENTS:
            return self._subscription(event, data, request_id)
        if event == RESUME_EVENT:
            position = parse_position(data)
            if position is None:
                return _fail(event, request_id, "invalid_data", "data must be {\"epoch\": string, \"offset\": integer >= 0}")
            return Resume(*position, request_id)
        upstream_url = self.routes.resolve(event)
        if upstream_url is None:
            return _fail(event, request_id, "unknown_event", f"no service handles the event {event!r}")
        return Forward(upstream_url, event, data, request_id)

    def _identify(self, data: dict[str, Any], request_id: RequestId) -> Outcome:
        """``{"device_token": T}`` proves T's device; ``{}`` mints a new device (or names the current one);
        ``{"device_id": X}`` alone only names the device the connection already proved, or any device with
        ``ALLOW_INSECURE_DEVICE_IDS`` (contract C1)."""
        token = data.get("device_token")
        claimed = data.get("device_id")
        issued: str | None = None
        resume = None
        if data.get("resume") is not None:
            resume = parse_position(data["resume"]) if isinstance(data["resume"], dict) else None
            if resume is None:
                return _fail("identify", request_id, "invalid_data", "data.resume must be {\"epoch\": string, \"offset\": integer >= 0}")
        if claimed is not None and (problem := device_id_problem(claimed)) is not None:
            return _fail("identify", request_id, "invalid_data", problem)
        if token is not None:
            if self.tokens is None:
                return _fail("identify", request_id, "invalid_device_token", "this gateway issues no device tokens")
            try:
                device_id = self.tokens.verify(token)
            except AuthError as exc:
                return _fail("identify", request_id, exc.code, exc.message)
            if claimed is not None and claimed != device_id:
                return _fail("identify", request_id, "device_mismatch", f"the device token is for another device than {claimed!r}")
        elif claimed is not None:
            if claimed != self.device_id and not self.insecure_ids:
                return _fail(
                    "identify", request_id, "device_token_required",
                    "prove the device with data.device_token (identify {} issues one for a new device)",
                )
            device_id = claimed
        elif self.device_id is not None:
            device_id = self.device_id
        elif self.tokens is None:
            return _fail("identify", request_id, "invalid_data", "device_id must be a non-empty string")
        else:
            device_id, issued = self.tokens.mint()
        if self.device_id is not None and self.device_id != device_id:
            return _fail("identify", request_id, "already_identified", f"this connection is already device {self.device_id!r}")
        self.device_id = device_id
        answer_data: dict[str, Any] = {"device_id": device_id, "connection_id": self.connection_id}
        if issued is not None:
            answer_data["device_token"] = issued
            answer_data["issued"] = True
        return Identified(device_id, response_envelope("identify", request_id, answer_data), resume)

    def _subscription(self, event: str, data: dict[str, Any], request_id: RequestId) -> Outcome:
        channel = data.get("channel")
        if not isinstance(channel, str) or not channel or len(channel) > MAX_CHANNEL_CHARS:
            return _fail(event, request_id, "invalid_data", f"data.channel must be a string of 1 to {MAX_CHANNEL_CHARS} characters")
        if event == "unsubscribe":
            return Subscription(event, channel, request_id, ALLOW)
        authorizer = self.routes.channel_authorizer(channel)
        if authorizer is None:
            return _fail(event, request_id, "forbidden", f"no channel rule lets devices subscribe to {channel!r}")
        return Subscription(event, channel, request_id, authorizer)

    def rate_limited(self, event: str | None, request_id: RequestId, now_s: float) -> Reply | None:
        """Take one token from the connection's bucket: None when there was one, else the ``rate_limited`` reply."""
        retry_after_s = self.bucket.take(now_s)
        if retry_after_s == 0.0:
            return None
        return _fail(
            event, request_id, "rate_limited", f"too many messages; retry in {retry_after_s:.3f} s",
            {"retry_after_s": max(round(retry_after_s, 3), 0.001)},
        )


def nested_deeper_than(value: Any, max_depth: int) -> bool:
    """Whether arrays/objects in ``value`` nest deeper than ``max_depth`` (iterative: no recursion limit)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _fail(event: str | None, request_id: RequestId, code: str, message: str, details: dict[str, Any] | None = None) -> Reply:
    return Reply(error_envelope(event, request_id, error(code, message, details)))
