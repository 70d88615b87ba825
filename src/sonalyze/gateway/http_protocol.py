"""uvicorn's HTTP protocol for the gateway, with bounds on request heads (also before a WebSocket upgrade).

uvicorn 0.54 with httptools sets no timer until a first response (``timeout_keep_alive`` only runs between
requests) and no limit on a head's size: a connection that sends nothing, or a head a byte at a time, or
an 8 MB header, was kept and read. Here every request head must arrive whole within ``HEADER_TIMEOUT_S``
of the connection or of its first byte (408 ``header_timeout``, then close), and may hold at most
``MAX_HEADER_BYTES`` and ``MAX_HEADER_COUNT`` headers (431 ``headers_too_large``, then close; RFC 6585 §5).

Used through the gateway's uvicorn options (``http``, see :mod:`sonalyze.services`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sonalyze.gateway.config import GatewaySettings
from sonalyze.gateway.models import error

_DEFAULT_SETTINGS = GatewaySettings.model_construct()
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a refused head."""


class GatewayHttpProtocol(HttpToolsProtocol):
    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        gateway = app_state.get("gateway")  # absent on a listener without the lifespan (the --https loopback one)
        settings = gateway.settings if gateway is not None else _DEFAULT_SETTINGS
        self.header_timeout_s: float = settings.header_timeout_s
        self.max_header_bytes: int = settings.max_header_bytes
        self.max_header_count: int = settings.max_header_count
        self.head_timer: asyncio.TimerHandle | None = None
        self.head_bytes = 0
        """Bytes received in chunks that left the head incomplete (at most a chunk more than the head)."""
        self.head_count = 0
        self.refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_starts()  # a silent connection times out too

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_ends()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if not self.refused:
                raise
            return
        except httptools.HttpParserError:
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self._head_ends()
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self.head_timer is None:
            return  # no head in progress (a body, or nothing begun)
        self.head_bytes += len(data)
        if self.head_bytes > self.max_header_bytes:
            self._refuse(431, "headers_too_large", f"a request head may hold at most {self.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.head_timer is None:
            self._head_starts()  # the next request of a kept-alive connection

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_count += 1
        if self.head_count > self.max_header_count:
            self._refuse(431, "headers_too_large", f"a request may carry at most {self.max_header_count} headers")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._head_size() > self.max_header_bytes:
            self._refuse(431, "headers_too_large", f"a request head may hold at most {self.max_header_bytes} bytes")
            raise _Refused
        self._head_ends()
        super().on_headers_complete()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _head_starts(self) -> None:
        self.head_bytes = self.head_count = 0
        self.head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _head_ends(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered; the next head's timer starts with its first byte
        self._refuse(408, "header_timeout", f"the request head did not arrive within {self.header_timeout_s:g} s")

    def _refuse(self, status: int, code: str, message: str) -> None:
        if self.refused or self.transport.is_closing():
            return
        self.refused = True
        self._head_ends()
        body = orjson.dumps({"error": error(code, message)})
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, _REASONS[status], len(body), body)
        )
        self.transport.close()
