"""``WS /ws`` as a lean asyncio protocol, handed each upgraded connection by uvicorn (its ``ws=`` option).

No task per idle connection: frames are parsed in ``data_received`` (whole data frames here, the
handshake and every other frame by websockets' sans-I/O ``ServerProtocol``); the
:class:`~sonalyze.gateway.session.Session` decides; upstream calls run on callbacks and never hold back
other requests on the connection. Replies and broadcasts are written to the transport as pre-encoded frames.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from sonalyze.common.logging import log_context
from sonalyze.gateway.auth import AuthError, bearer_token
from sonalyze.gateway.binary_relay import BinaryRelay
from sonalyze.gateway.frames import apply_mask, client_frame_header, text_frame
from sonalyze.gateway.models import error, error_envelope, event_envelope, response_envelope
from sonalyze.gateway.profiles import RAW_RELAY
from sonalyze.gateway.push_history import meant_for
from sonalyze.gateway.rate_limit import TokenBucket
from sonalyze.gateway.router import ALLOW
from sonalyze.gateway.session import (
    AUTHORIZE_SUBSCRIBE_EVENT,
    Forward,
    Identified,
    Reply,
    Resume,
    Session,
    Subscription,
    device_id_problem,
    parse_position,
)
from sonalyze.gateway.tenant_limit import TenantRateLimiter

if TYPE_CHECKING:
    from sonalyze.gateway.state import Gateway
    from sonalyze.gateway.profiles import ProfileConnection, RawRelayConnection

logger = logging.getLogger("sonalyze.gateway.ws")

WS_PATH = "/ws"
STREAM_PATH = "/ws/stream"
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_REPLACED = 4000
"""A newer connection of the same device took this one's place (``MAX_CONNECTIONS_PER_DEVICE``)."""
CLOSE_TIMEOUT = 4408
"""Nothing received for ``CONNECTION_TIMEOUT_SEC`` (the heartbeat's pings went unanswered)."""
CLOSE_TOKEN_EXPIRED = 4401
"""The JWT the connection was opened with expired (4000 + HTTP 401, as 4408 is 4000 + 408)."""
CLOSE_LABELS = {
    CLOSE_GOING_AWAY: "shutdown", CLOSE_POLICY: "slow_consumer", CLOSE_REPLACED: "replaced", CLOSE_TIMEOUT: "timeout",
    CLOSE_TOKEN_EXPIRED: "token_expired",
}
CLOSE_TIMEOUT_S = 3.0
JOIN_EVENT = "lobby.join"
"""Its ``not_found`` answers are failed guesses of a join code, limited per device and per address."""
_OPEN = State.OPEN
_TEXT, _BINARY, _CONT, _PING, _PONG = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.PING, Opcode.PONG
_FIN_TEXT, _FIN_BINARY = 0x81, 0x82
"""First byte of a final text / binary frame without extension bits."""


_REPLAYS: set[asyncio.Task[None]] = set()
"""Running replays (a task needs a reference until it ends)."""


class HeldTransport:
    """A connection's transport while its replay is read: writes are kept (then written after the
    replay); everything else goes to the real transport. Past ``limit_bytes`` (MAX_SEND_BUFFER_BYTES)
    ``overflow`` is called once: the connection closes as a slow consumer would."""

    __slots__ = ("transport", "chunks", "held_bytes", "limit_bytes", "overflow")

    def __init__(self, transport: asyncio.Transport, limit_bytes: int, overflow: Callable[[], None]) -> None:
        self.transport = transport
        self.chunks: list[bytes] = []
        self.held_bytes = 0
        self.limit_bytes = limit_bytes
        self.overflow: Callable[[], None] | None = overflow

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        self.held_bytes += len(data)
        if self.held_bytes > self.limit_bytes and self.overflow is not None:
            overflow, self.overflow = self.overflow, None
            asyncio.get_running_loop().call_soon(overflow)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class GatewayWebSocketProtocol(asyncio.Protocol):
    """One client connection. uvicorn builds it with ``(config, server_state, app_state)``."""

    __slots__ = (
        "gateway", "server_state", "transport", "ws", "open", "max_buffer_bytes", "session", "calls", "fragments",
        "draining", "close_timer", "last_seen_s", "fragments_binary", "expiry_timer", "framing", "partial_header", "owed_bytes",
        "profile", "address", "live_from",
    )

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any]) -> None:
        self.gateway: Gateway = app_state["gateway"]
        self.server_state = server_state
        self.transport: asyncio.Transport | None = None
        self.ws = ServerProtocol(max_size=self.gateway.settings.max_frame_bytes)
        self.open = False
        self.max_buffer_bytes = self.gateway.settings.max_send_buffer_bytes
        self.session: Session | None = None
        self.calls: dict[int, Callable[[], object]] | None = None
        """Upstream calls in flight, each with the function that cancels it."""
        self.fragments: list[bytes] | None = None
        self.fragments_binary = False
        self.draining = False
        self.close_timer: asyncio.TimerHandle | None = None
        self.expiry_timer: asyncio.TimerHandle | None = None
        """Closes the connection when its token expires (with authentication only)."""
        self.last_seen_s = time.monotonic()
        """When the client last sent anything (a pong too): the heartbeat closes silent connections."""
        self.framing = False
        """Whole data frames are parsed here, not by websockets (see :meth:`_receive_frames`)."""
        self.partial_header = b""
        """The start of a frame whose header has not fully arrived."""
        self.owed_bytes = 0
        """Bytes still to come of a frame handed to websockets."""
        self.address: str | None = None
        """The client's address (behind TRUSTED_PROXIES) while it counts against MAX_CONNECTIONS_PER_ADDRESS."""
        self.profile: ProfileConnection | RawRelayConnection | None = None
        self.live_from = -1
        """The history's offset when the connection was first identified (-1: not yet): later pushes
        reached it live, so a resume replays up to here only."""
        """Set when the upgrade chose a profile path (``gateway.profiles``): it then handles every message."""

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server_state.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_seen_s = time.monotonic()
        if self.framing:
            self._receive_frames(data)
        else:
            self._to_websockets(data)

    def _receive_frames(self, data: bytes) -> None:
        """Unmask whole, unfragmented, masked text and binary frames here (websockets' parser costs more
        than the rest of a routed event's handling); every other frame (control, fragment, invalid, too
        large, or not yet whole) goes to websockets whole, so its parser always stands at a frame boundary.
        """
        if self.partial_header:
            data, self.partial_header = self.partial_header + data, b""
        position, size = 0, len(data)
        if self.owed_bytes:
            position = min(self.owed_bytes, size)
            self.owed_bytes -= position
            self._to_websockets(data[:position])
        ws = self.ws
        max_frame_bytes = self.gateway.settings.max_frame_bytes
        while position < size:
            if ws.state is not _OPEN:  # closing: websockets reads the rest (the close handshake)
                self.framing = False
                self._to_websockets(data[position:])
                return
            header = client_frame_header(data, position)
            if header is None:
                self.partial_header = data[position:]
                return
            first, masked, length, start = header
            end = start + length
            whole_data_frame = first == _FIN_TEXT or first == _FIN_BINARY
            if whole_data_frame and masked and end <= size and length <= max_frame_bytes and ws.current_size is None:
                self._message(apply_mask(data[start:end], data[start - 4:start]), first == _FIN_BINARY)
            else:
                self.owed_bytes = max(0, end - size)
                end = min(end, size)
                self._to_websockets(data[position:end])
            position = end

    def _to_websockets(self, data: bytes) -> None:
        """websockets' sans-I/O parser: the handshake, then the frames :meth:`_receive_frames` does not take.

        Then what websockets has to send (a handshake answer, pongs, a close frame) goes out: whole data
        frames parsed here need no such flush.
        """
        ws = self.ws
        ws.receive_data(data)
        events = ws.events_received()
        if events and self.session is None and ws.state is not _OPEN:
            self._handshake(events.pop(0))
            # Frames are parsed here from now on, unless bytes came after the upgrade request (uvicorn
            # hands over the request alone; a client waits for the answer, RFC 6455 §4.1).
            self.framing = ws.state is _OPEN and not events and not ws.reader.buffer and data.endswith(b"\r\n\r\n")
        for frame in events:
            opcode = frame.opcode
            if opcode is _TEXT or opcode is _BINARY:
                if frame.fin:
                    self._message(frame.data, opcode is _BINARY)
                else:
                    self.fragments, self.fragments_binary = [frame.data], opcode is _BINARY
            elif opcode is _CONT and self.fragments is not None:
                self.fragments.append(frame.data)
                if frame.fin:
                    message, self.fragments = b"".join(self.fragments), None
                    self._message(message, self.fragments_binary)
            elif (opcode is _PING or opcode is _PONG) and self.session is not None and self.open:
                # Control frames take a token like messages; out of tokens, a flooder is cut off (1008).
                if self.session.bucket.take(asyncio.get_running_loop().time()):
                    self.gateway.metrics.rate_limited.labels("control").inc()
                    self.close(CLOSE_POLICY, "control frames over the rate limit", label="control_flood")
                    self._abort_later()
                    break
        self._flush()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._not_open()
        if self.address is not None:
            counts = self.gateway.address_connections
            counts[self.address] -= 1
            if not counts[self.address]:
                del counts[self.address]
            self.address = None
        self.server_state.connections.discard(self)
        if self.close_timer is not None:
            self.close_timer.cancel()
        if self.expiry_timer is not None:
            self.expiry_timer.cancel()
        for cancel in list((self.calls or {}).values()):
            cancel()
        self.calls = None
        if self.profile is not None:
            self.profile.closed(self)

    # uvicorn's graceful shutdown

    def shutdown(self) -> None:
        """Stop taking events; close with 1001 once in-flight calls finish (or the grace time ends)."""
        if self.session is None or not self.open:
            self._abort()
            return
        self.draining = True
        if not self.calls:
            self.close(CLOSE_GOING_AWAY, "server shutting down")
            return
        loop = asyncio.get_running_loop()
        loop.call_later(self.gateway.settings.shutdown_grace_seconds, self.close, CLOSE_GOING_AWAY, "server shutting down")

    # Connection (see connection_manager)

    @property
    def connection_id(self) -> str:
        return self.session.connection_id if self.session is not None else ""

    @property
    def tenant_id(self) -> str | None:
        return self.session.tenant_id if self.session is not None else None

    def pause_writing(self) -> None:
        """The send buffer passed MAX_SEND_BUFFER_BYTES: the client reads too slowly; close it (1008)."""
        if self.open:
            self._not_open()  # no more deliveries; the close frame goes out after what is queued
            asyncio.get_running_loop().call_soon(self._close_slow)

    def _close_slow(self) -> None:
        self.close(CLOSE_POLICY, "slow consumer: send buffer full")
        self._abort_later()

    def ping(self) -> None:
        """A WebSocket ping (the heartbeat's); the client's pong counts as activity."""
        if self.ws.state is _OPEN:
            self.ws.send_ping(b"")
            self._flush()

    def close(self, code: int, reason: str, label: str | None = None) -> None:
        if self.ws.state is not _OPEN:
            return
        self.gateway.metrics.disconnects.labels(label or CLOSE_LABELS.get(code, str(code))).inc()
        if code != CLOSE_GOING_AWAY:
            with log_context(device_id=self.session.device_id if self.session else None, connection_id=self.connection_id):
                logger.info("closing connection: %d %s", code, reason)
        self.ws.send_close(code, reason)
        self._flush()

    # internals

    def _handshake(self, request: Request) -> None:
        ws = self.ws
        gateway = self.gateway
        if gateway.address_connections.get(self._client_address(request), 0) >= gateway.settings.max_connections_per_address:
            gateway.metrics.rate_limited.labels("connections").inc()
            self._refuse(429, "too_many_connections", f"at most {gateway.settings.max_connections_per_address} connections per address")
            return
        target = urlsplit(request.path)
        stream_channel = self.gateway.settings.stream_channel
        query = parse_qs(target.query)
        verifier = self.gateway.verifier
        if target.path == STREAM_PATH and stream_channel:
            if verifier is not None:  # AUTH_REQUIRED holds for the stream too
                try:
                    verifier.verify(query.get("token", [None])[0] or bearer_token(request.headers.get("Authorization")))
                except AuthError as exc:
                    self._refuse(401, exc.code, exc.message)
                    return
            self._accept(request, None)
            if self.gateway.settings.stream_format == "raw":
                self.profile = RAW_RELAY
            if self.open:
                self._flush()  # the 101 response before the retained frame
                self.gateway.connections.subscribe(self, "stream:" + self.connection_id, stream_channel)
            return
        profiles = self.gateway.profiles
        if target.path != WS_PATH and profiles is not None and profiles.handshake(self, request, target.path, target.query):
            return
        if target.path != WS_PATH:
            ws.send_response(ws.reject(404, f"no WebSocket endpoint at {target.path}; use {WS_PATH}\n"))
            return
        device_id = query.get("device_id", [None])[0]
        if device_id is not None and (problem := device_id_problem(device_id)) is not None:
            ws.send_response(ws.reject(400, problem + "\n"))
            return
        resume_from = None
        if (resume := query.get("resume", [None])[0]) is not None:
            epoch, _, offset = resume.rpartition(":")
            resume_from = parse_position({"epoch": epoch, "offset": int(offset) if offset.isascii() and offset.isdigit() and len(offset) <= 18 else None})
            if resume_from is None or device_id is None and verifier is None and "device_token" not in query:
                self._refuse(400, "invalid_resume", "?resume= is EPOCH:OFFSET (the pos of the last push) with the device named on connect")
                return
        tenant_id = expires_at_s = None
        if verifier is None:
            device_token = query.get("device_token", [None])[0]
            if device_token is not None:
                try:
                    proven = self.gateway.device_tokens.verify(device_token)
                except AuthError as exc:
                    self._refuse(401, exc.code, exc.message)
                    return
                if device_id is not None and device_id != proven:
                    self._refuse(403, "device_mismatch", f"the device token is for another device than {device_id!r}")
                    return
                device_id = proven
            elif device_id is not None and not self.gateway.settings.allow_insecure_device_ids:
                self._refuse(
                    401, "device_token_required",
                    "?device_id= needs ?device_token= (connect to /ws and send identify {} to get one)",
                )
                return
        else:
            try:
                identity = verifier.verify(query.get("token", [None])[0] or bearer_token(request.headers.get("Authorization")))
            except AuthError as exc:
                self._refuse(401, exc.code, exc.message)
                return
            if device_id is not None and device_id != identity.device_id:
                self._refuse(403, "device_mismatch", f"the token is for device {identity.device_id!r}, not {device_id!r}")
                return
            device_id, tenant_id, expires_at_s = identity.device_id, identity.tenant_id, identity.expires_at_s
        self._accept(request, device_id, tenant_id, expires_at_s)
        if resume_from is not None and self.open:
            self._flush()  # the 101 response before the replay
            self._resume(Resume(*resume_from, None), answer=False)

    def _accept(self, request: Request, device_id: str | None, tenant_id: str | None = None, expires_at_s: float | None = None) -> None:
        ws = self.ws
        response = ws.accept(request)
        ws.send_response(response)
        self.transport.set_write_buffer_limits(high=self.max_buffer_bytes)
        self.open = ws.state is _OPEN
        if not self.open:
            return
        gateway = self.gateway
        settings = gateway.settings
        self.address = self._client_address(request)
        gateway.address_connections[self.address] = gateway.address_connections.get(self.address, 0) + 1
        loop = asyncio.get_running_loop()
        self.session = Session(
            uuid.uuid4().hex,
            gateway.routes,
            TokenBucket(settings.rate_limit_rps, settings.rate_limit_burst, loop.time()),
            settings.max_message_bytes,
            device_id,
            tenant_id,
            gateway.device_tokens,
            settings.allow_insecure_device_ids,
            settings.max_json_depth,
        )
        gateway.connections.add(self)
        if device_id is not None:
            self._identified(device_id)
        if expires_at_s is not None:
            self.expiry_timer = loop.call_later(max(0.0, expires_at_s - time.time()), self._token_expired)

    def _client_address(self, request: Request) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return self.gateway.addresses.resolve(peer[0] if peer else "unknown", request.headers.get("X-Forwarded-For"))

    def _token_expired(self) -> None:
        """The connection's token ran out: tell the client why, then close with 4401."""
        self._send(error_envelope(None, None, error("token_expired", "token has expired; reconnect with a new one")))
        self.close(CLOSE_TOKEN_EXPIRED, "token expired")

    def _relay(self, relay: BinaryRelay, session: Session, message: bytes) -> None:
        """A binary frame goes raw to the connection's relay channel (``BINARY_RELAY_CHANNEL``).

        It takes a rate-limit token first, like every message; refused, it is dropped with ``rate_limited``.
        """
        limited = session.rate_limited(None, None, asyncio.get_running_loop().time())
        if limited is not None:
            self._send(limited.envelope)
            return
        if session.device_id is None:
            self._send(error_envelope(None, None, error("not_identified", "identify before sending binary frames")))
            return
        channel = self.gateway.settings.binary_relay_channel.format(device_id=session.device_id, tenant_id=session.tenant_id or "-")
        relay.send(channel, message)

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer the upgrade request with an HTTP error and the JSON error body."""
        response = self.ws.reject(status, orjson.dumps({"error": error(code, message)}).decode())
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        self.ws.send_response(response)

    def _message(self, message: bytes, binary: bool) -> None:
        session = self.session
        if session is None or not self.open:
            return
        if self.profile is not None:
            self.profile.receive(self, message, binary)
            return
        relay = self.gateway.binary_relay
        if binary and relay is not None:
            self._relay(relay, session, message)
            return
        outcome = session.receive(message, asyncio.get_running_loop().time())
        if type(outcome) is Forward:
            if self.draining:
                self._send(error_envelope(outcome.event, outcome.request_id, error("shutting_down", "the gateway is shutting down; reconnect")))
                return
            self._forward(outcome)
        elif type(outcome) is Identified:
            self._identified(outcome.device_id)
            self._send(outcome.envelope)
            if outcome.resume is not None:
                self._resume(Resume(*outcome.resume, None), answer=False)
        elif type(outcome) is Subscription:
            self._subscription(outcome)
        elif type(outcome) is Resume:
            self._resume(outcome, answer=True)
        else:
            assert type(outcome) is Reply
            self._send(outcome.envelope)

    def _identified(self, device_id: str) -> None:
        if self.gateway.history is not None and self.live_from < 0:
            self.live_from = self.gateway.history.offset
        for older in self.gateway.connections.identify(self, device_id):
            older.close(CLOSE_REPLACED, "replaced by a newer connection of this device")

    def _resume(self, resume: Resume, answer: bool) -> None:
        """Replay every kept push for this device after the client's position, up to where live delivery
        began (``live_from``); without history that reaches back that far, a ``resync_required`` event.

        While the history is read (a broker round trip) everything else this connection would be sent —
        live pushes, replies — is held and written after the replay, in its order (live pushes have higher
        offsets than the replayed ones). With ``answer`` (a ``resume`` event, not ``?resume=``/``identify``)
        the request is answered with ``{"replayed", "resync_required", "pos"}`` after the replay."""
        history = self.gateway.history
        device_id = self.session.device_id if self.session is not None else None
        if type(self.transport) is HeldTransport:
            if answer:
                self._send(error_envelope("resume", resume.request_id, error("resume_in_progress", "a resume of this connection is running")))
            return
        if history is None or device_id is None:
            self._replayed(None, None, resume, answer)
            return
        held = HeldTransport(self.transport, self.max_buffer_bytes, self.pause_writing)
        self.transport = held
        self.gateway.connections.rewire(self, device_id)
        task = asyncio.get_running_loop().create_task(self._replay(history, device_id, resume, answer, held))
        _REPLAYS.add(task)
        task.add_done_callback(_REPLAYS.discard)

    async def _replay(self, history: Any, device_id: str, resume: Resume, answer: bool, held: HeldTransport) -> None:
        try:
            entries = await history.replay(resume.epoch, resume.offset, self.live_from)
        finally:
            self.transport = held.transport
            if self.open:
                self.gateway.connections.rewire(self, device_id)
        payloads = None if entries is None else meant_for(entries, device_id, self.gateway.connections.channels_of(self))
        self._replayed(history, payloads, resume, answer)
        if held.chunks and self.open:
            self.transport.writelines(held.chunks)  # what came while replaying, in order, after it

    def _replayed(self, history: Any, payloads: list[bytes] | None, resume: Resume, answer: bool) -> None:
        epoch = history.epoch if history is not None else None
        position = {"epoch": epoch, "offset": self.live_from} if epoch is not None else None
        if payloads is None:
            self.gateway.metrics.resumes.labels("resync_required").inc()
            self._push(event_envelope("resync_required", {"pos": position, "reason": "history" if history else "no_history"}))
        elif self.open:
            self.transport.writelines([text_frame(payload) for payload in payloads])
            self.gateway.metrics.resumes.labels("replayed").inc()
            self.gateway.metrics.replayed.inc(len(payloads))
        if answer:
            data = {"replayed": len(payloads or ()), "resync_required": payloads is None, "pos": position}
            self._send(response_envelope("resume", resume.request_id, data))

    def _push(self, envelope: dict[str, Any]) -> None:
        """Send one gateway-made push (not a reply to a request)."""
        if self.open:
            self.transport.write(text_frame(orjson.dumps(envelope)))

    def _forward(self, forward: Forward) -> None:
        if forward.event == JOIN_EVENT and self._join_refused(forward):
            return
        limiter = self.gateway.tenant_limiter
        tenant_id = self.tenant_id
        if limiter is not None and tenant_id is not None:
            task = asyncio.get_running_loop().create_task(self._forward_within_tenant_limit(limiter, tenant_id, forward))
            if self.calls is None:
                self.calls = {}
            self.calls[id(forward)] = task.cancel
            return
        self._call(forward, forward.upstream_url, forward.event, forward.data, forward.request_id, self._answer)

    async def _forward_within_tenant_limit(self, limiter: TenantRateLimiter, tenant_id: str, forward: Forward) -> None:
        wait_s = await limiter.take(tenant_id)
        if not wait_s:
            self._call(forward, forward.upstream_url, forward.event, forward.data, forward.request_id, self._answer)
            return
        self.gateway.metrics.rate_limited.labels("tenant").inc()
        message = f"tenant {tenant_id!r} is over its rate limit; retry in {wait_s:.1f} s"
        self._answer(forward, {"error": error("rate_limited", message, {"retry_after_s": round(wait_s, 3), "scope": "tenant"})})

    def _call(self, key: object, url: str, event: str, data: dict[str, Any], request_id: Any, done: Callable[..., None]) -> None:
        session = self.session
        assert session is not None
        body = {
            "event": event,
            "data": data,
            "device_id": session.device_id,
            "request_id": request_id,
            "connection_id": session.connection_id,
        }
        if self.calls is None:
            self.calls = {}
        latency = self.gateway.metrics.upstream_latency_for(url, self.gateway.upstream_names)
        self.calls[id(key)] = self.gateway.upstream.call(url, body, partial(self._timed, latency, time.monotonic(), done, key))

    def _timed(self, latency: Any, started_s: float, done: Callable[..., None], key: object, answer: dict[str, Any]) -> None:
        latency.observe(time.monotonic() - started_s)
        done(key, answer)

    def _join_refused(self, forward: Forward) -> bool:
        """Too many failed joins from this device or address lately: answer ``rate_limited`` instead."""
        failures = self.gateway.join_failures
        now_s = time.monotonic()
        wait_s = max(failures.retry_after(key, now_s) for key in self._join_keys())
        if not wait_s:
            return False
        self.gateway.metrics.rate_limited.labels("join").inc()
        details = {"retry_after_s": round(wait_s, 3), "scope": "join"}
        self._send(error_envelope(forward.event, forward.request_id, error("rate_limited", f"too many failed joins; retry in {wait_s:.1f} s", details)))
        return True

    def _join_keys(self) -> tuple[str, str]:
        return "device:" + (self.session.device_id or "" if self.session else ""), "address:" + (self.address or "")

    def _answer(self, forward: Forward, answer: dict[str, Any]) -> None:
        if forward.event == JOIN_EVENT and "error" in answer and answer["error"].get("code") == "not_found":
            now_s = time.monotonic()
            for key in self._join_keys():
                self.gateway.join_failures.record(key, now_s)
        self._call_done(forward)
        if "data" in answer:
            self._send(response_envelope(forward.event, forward.request_id, answer["data"]))
        else:
            if answer["error"]["code"].startswith("upstream_"):
                session = self.session
                request_id = None if forward.request_id is None else str(forward.request_id)
                with log_context(request_id=request_id, device_id=session.device_id if session else None):
                    logger.warning("%s for %s: %s", answer["error"]["code"], forward.event, answer["error"]["message"])
            self._send(error_envelope(forward.event, forward.request_id, answer["error"]))
        self._close_if_drained()

    def _call_done(self, key: object) -> None:
        if self.calls is not None:
            self.calls.pop(id(key), None)

    def _close_if_drained(self) -> None:
        if self.draining and not self.calls:
            self.close(CLOSE_GOING_AWAY, "server shutting down")

    def _subscription(self, subscription: Subscription) -> None:
        if subscription.event == "unsubscribe":
            self.gateway.connections.unsubscribe(self, subscription.channel)
            self._subscribed(subscription, False)
        elif subscription.authorizer == ALLOW:
            self._join(subscription)
        elif self.draining:
            self._send(error_envelope(subscription.event, subscription.request_id, error("shutting_down", "the gateway is shutting down; reconnect")))
        else:
            data = {"channel": subscription.channel}
            self._call(subscription, subscription.authorizer, AUTHORIZE_SUBSCRIBE_EVENT, data, subscription.request_id, self._authorized)

    def _authorized(self, subscription: Subscription, answer: dict[str, Any]) -> None:
        """The channel rule's upstream answered ``gateway.authorize_subscribe``: ``{"allowed": true}`` joins."""
        self._call_done(subscription)
        if "error" in answer:
            self._send(error_envelope(subscription.event, subscription.request_id, answer["error"]))
        elif isinstance(answer["data"], dict) and answer["data"].get("allowed") is True:
            self._join(subscription)
        else:
            reason = answer["data"].get("reason") if isinstance(answer["data"], dict) else None
            message = f"not allowed to subscribe to {subscription.channel!r}" + (f": {reason}" if reason else "")
            self._send(error_envelope(subscription.event, subscription.request_id, error("forbidden", message)))
        self._close_if_drained()

    def _join(self, subscription: Subscription) -> None:
        session = self.session
        if self.open and session is not None and session.device_id is not None:
            self.gateway.connections.subscribe(self, session.device_id, subscription.channel)
            self._subscribed(subscription, True)

    def _subscribed(self, subscription: Subscription, subscribed: bool) -> None:
        data = {"channel": subscription.channel, "subscribed": subscribed}
        self._send(response_envelope(subscription.event, subscription.request_id, data))

    def _send(self, envelope: dict[str, Any]) -> None:
        """Send one reply, counted by event and result (``ok`` or the error code)."""
        error_body = envelope.get("error")
        self.gateway.metrics.event_in(envelope["event"], "ok" if error_body is None else error_body["code"])
        if self.open:
            self.transport.write(text_frame(orjson.dumps(envelope)))  # past the buffer bound, pause_writing() closes

    def _flush(self) -> None:
        ws = self.ws
        transport = self.transport
        if transport is None:
            return
        for data in ws.data_to_send():
            if data:
                transport.write(data)
            else:
                transport.close()
        if ws.close_expected():
            self._abort_later()
        if ws.state is not _OPEN:
            self._not_open()

    def _not_open(self) -> None:
        """Closing, too slow or lost: out of the delivery registry at once."""
        self.open = False
        if self.session is not None:
            self.gateway.connections.remove(self, self.session.device_id)

    def _abort_later(self) -> None:
        if self.close_timer is None:
            self.close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, self._abort)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
