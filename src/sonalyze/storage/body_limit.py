"""Refuse request bodies over a size before anything reads them (413 ``payload_too_large``).

FastAPI's own ``max_body_size`` answers with a plain-text body; this keeps the ``{"error": ...}`` envelope.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sonalyze.common.errors import BadRequest, PayloadTooLarge
from sonalyze.common.json import JSONResponse


class BodySizeLimit:
    """ASGI middleware: a ``Content-Length`` over ``max_bytes`` is answered at once; a longer chunked
    body raises :class:`PayloadTooLarge` from ``receive`` when the limit is crossed."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"request body larger than {self.max_bytes} bytes (STORAGE_MAX_BODY_MB)", details={"max_bytes": self.max_bytes}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            error = None
            if not declared.isdigit():
                error = BadRequest("Content-Length is not a number")
            elif int(declared) > self.max_bytes:
                error = self._too_large()
            if error is not None:
                await JSONResponse(error.to_body(), status_code=error.status_code)(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)
