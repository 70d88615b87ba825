"""The one raw-ASGI layer of the fast paths in front of FastAPI (gateway internal API, storage, lobby):
reading a request's body and sending a JSON answer (ASGI 3.0 HTTP spec, ``http.request`` /
``http.disconnect``; RFC 9110 §8.6 Content-Length).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from sonalyze.common.errors import SonalyzeError
from sonalyze.common.json import dumps

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body; ``None`` when the client went away first (``http.disconnect``)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_json(send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """One whole JSON answer (``body`` already serialized), with its Content-Length."""
    head = [(b"content-type", b"application/json"), *headers, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, exc: SonalyzeError) -> None:
    """``exc`` as the shared error handlers answer it: its status, ``{"error": ...}`` and its headers."""
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (exc.headers or {}).items()]
    await send_json(send, exc.status_code, dumps(exc.to_body()), headers)
