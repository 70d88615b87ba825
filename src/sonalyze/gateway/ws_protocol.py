"""``WS /ws`` as a lean asyncio protocol, handed each upgraded connection by uvicorn (its ``ws=`` option).

No task per idle connection: frames are parsed in ``data_received`` by websockets' sans-I/O
``ServerProtocol``; the :class:`~sonalyze.gateway.session.Session` decides; a task exists only while an
upstream call is in flight, so a slow upstream never holds back other requests on the connection.
Replies and broadcasts are written to the transport as pre-encoded frames.
"""

from __future__ import annotations

import asyncio
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

from sonalyze.gateway.frames import text_frame
from sonalyze.gateway.models import error, error_envelope, response_envelope
from sonalyze.gateway.rate_limit import TokenBucket
from sonalyze.gateway.session import Forward, Identified, Reply, Session, device_id_problem

if TYPE_CHECKING:
    from sonalyze.gateway.main import Gateway

WS_PATH = "/ws"
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TIMEOUT_S = 3.0
_OPEN = State.OPEN
_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT


class GatewayWebSocketProtocol(asyncio.Protocol):
    """One client connection. uvicorn builds it with ``(config, server_state, app_state)``."""

    __slots__ = (
        "gateway", "server_state", "transport", "ws", "open", "max_buffer_bytes", "session", "calls", "fragments",
        "draining", "close_timer",
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
        self.draining = False
        self.close_timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server_state.connections.add(self)

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        events = ws.events_received()
        if events and self.session is None and ws.state is not _OPEN:
            self._handshake(events.pop(0))
        for frame in events:
            opcode = frame.opcode
            if opcode is _TEXT or opcode is _BINARY:
                if frame.fin:
                    self._message(frame.data)
                else:
                    self.fragments = [frame.data]
            elif opcode is _CONT and self.fragments is not None:
                self.fragments.append(frame.data)
                if frame.fin:
                    message, self.fragments = b"".join(self.fragments), None
                    self._message(message)
        self._flush()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._not_open()
        self.server_state.connections.discard(self)
        if self.close_timer is not None:
            self.close_timer.cancel()
        for cancel in list((self.calls or {}).values()):
            cancel()
        self.calls = None

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

    def pause_writing(self) -> None:
        """The send buffer passed MAX_SEND_BUFFER_BYTES: the client reads too slowly; close it (1008)."""
        if self.open:
            self._not_open()  # no more deliveries; the close frame goes out after what is queued
            asyncio.get_running_loop().call_soon(self._close_slow)

    def _close_slow(self) -> None:
        self.close(CLOSE_POLICY, "slow consumer: send buffer full")
        self._abort_later()

    def close(self, code: int, reason: str) -> None:
        if self.ws.state is not _OPEN:
            return
        self.ws.send_close(code, reason)
        self._flush()

    # internals

    def _handshake(self, request: Request) -> None:
        ws = self.ws
        target = urlsplit(request.path)
        if target.path != WS_PATH:
            ws.send_response(ws.reject(404, f"no WebSocket endpoint at {target.path}; use {WS_PATH}\n"))
            return
        device_id = parse_qs(target.query).get("device_id", [None])[0]
        if device_id is not None and (problem := device_id_problem(device_id)) is not None:
            ws.send_response(ws.reject(400, problem + "\n"))
            return
        response = ws.accept(request)
        ws.send_response(response)
        self.transport.set_write_buffer_limits(high=self.max_buffer_bytes)
        self.open = ws.state is _OPEN
        if not self.open:
            return
        gateway = self.gateway
        settings = gateway.settings
        loop = asyncio.get_running_loop()
        self.session = Session(
            uuid.uuid4().hex,
            gateway.routes,
            TokenBucket(settings.rate_limit_rps, settings.rate_limit_burst, loop.time()),
            settings.max_message_bytes,
            device_id,
        )
        gateway.connections.add(self)
        if device_id is not None:
            gateway.connections.identify(self, device_id)

    def _message(self, message: bytes) -> None:
        session = self.session
        if session is None or not self.open:
            return
        outcome = session.receive(message, asyncio.get_running_loop().time())
        if type(outcome) is Forward:
            if self.draining:
                self._send(error_envelope(outcome.event, outcome.request_id, error("shutting_down", "the gateway is shutting down; reconnect")))
                return
            self._forward(outcome)
        elif type(outcome) is Identified:
            self.gateway.connections.identify(self, outcome.device_id)
            self._send(outcome.envelope)
        else:
            assert type(outcome) is Reply
            self._send(outcome.envelope)

    def _forward(self, forward: Forward) -> None:
        session = self.session
        assert session is not None
        body = {
            "event": forward.event,
            "data": forward.data,
            "device_id": session.device_id,
            "request_id": forward.request_id,
            "connection_id": session.connection_id,
        }
        if self.calls is None:
            self.calls = {}
        self.calls[id(forward)] = self.gateway.upstream.call(forward.upstream_url, body, partial(self._answer, forward))

    def _answer(self, forward: Forward, answer: dict[str, Any]) -> None:
        if self.calls is not None:
            self.calls.pop(id(forward), None)
        if "data" in answer:
            self._send(response_envelope(forward.event, forward.request_id, answer["data"]))
        else:
            self._send(error_envelope(forward.event, forward.request_id, answer["error"]))
        if self.draining and not self.calls:
            self.close(CLOSE_GOING_AWAY, "server shutting down")

    def _send(self, envelope: dict[str, Any]) -> None:
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
