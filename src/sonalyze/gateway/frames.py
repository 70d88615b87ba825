"""Server-to-client WebSocket frames (RFC 6455 §5.2), encoded once and written as they are.

Server frames are never masked, and the gateway negotiates no extension, so one encoding of a message
is valid for every client. Client frames: :func:`client_frame_header` finds where each one starts and
ends (``ws_protocol`` unmasks whole unfragmented data frames itself and hands every other frame to
websockets' sans-I/O protocol).
"""

from __future__ import annotations

import struct

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask

__all__ = ["apply_mask", "client_frame_header", "text_frame"]

_FIN_TEXT = 0x81


def text_frame(payload: bytes) -> bytes:
    """A single final text frame carrying ``payload`` (UTF-8 JSON)."""
    length = len(payload)
    if length < 126:
        return bytes((_FIN_TEXT, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", _FIN_TEXT, 126, length) + payload
    return struct.pack("!BBQ", _FIN_TEXT, 127, length) + payload


def client_frame_header(buffer: bytes, position: int) -> tuple[int, bool, int, int] | None:
    """The header of the client frame at ``position``: (first byte, masked, payload length, payload start).

    None while the header is incomplete. The first byte carries FIN, the RSV bits and the opcode
    (``0x81``: a final text frame, no extension bits); the mask key is the 4 bytes before the payload.
    """
    available = len(buffer) - position
    if available < 2:
        return None
    first, second = buffer[position], buffer[position + 1]
    masked = second & 0x80 != 0
    length = second & 0x7F
    start = position + 2
    if length == 126:
        if available < 4:
            return None
        length = (buffer[start] << 8) | buffer[start + 1]
        start += 2
    elif length == 127:
        if available < 10:
            return None
        length = int.from_bytes(buffer[start:start + 8], "big")
        start += 8
    if masked:
        start += 4
    if start > len(buffer):
        return None
    return first, masked, length, start
