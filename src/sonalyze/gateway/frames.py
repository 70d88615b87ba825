"""Server-to-client WebSocket frames (RFC 6455 §5.2), encoded once and written as they are.

Server frames are never masked, and the gateway negotiates no extension, so one encoding of a message
is valid for every client. Parsing client frames is left to websockets' sans-I/O protocol.
"""

from __future__ import annotations

import struct

_FIN_TEXT = 0x81


def text_frame(payload: bytes) -> bytes:
    """A single final text frame carrying ``payload`` (UTF-8 JSON)."""
    length = len(payload)
    if length < 126:
        return bytes((_FIN_TEXT, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", _FIN_TEXT, 126, length) + payload
    return struct.pack("!BBQ", _FIN_TEXT, 127, length) + payload
