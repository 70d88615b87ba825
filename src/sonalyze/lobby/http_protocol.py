"""uvicorn's HTTP protocol for the lobby, with each response leaving in one socket write.

uvicorn writes a response's status line and headers (``http.response.start``) and then its body
(``http.response.body``) as two writes; on uvloop each is its own ``write`` system call, which on loopback
runs the receiver's TCP path too: two of them per ``/gateway/handle`` answer were about a fifth of the
lobby's CPU. Here the writes made during one turn of the event loop are joined and written once, at the
end of that turn.

Used through the lobby's uvicorn options (``http``, see :mod:`sonalyze.services`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _CoalescingTransport:
    """Writes in one loop turn leave as one ``write``; everything else goes to the real transport."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class LobbyHttpProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` writing through a :class:`_CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
