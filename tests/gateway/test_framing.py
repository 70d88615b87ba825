"""Client frames as they arrive on the wire: batched, split anywhere, mixed with control and fragmented
frames, invalid or too large. Whole data frames are parsed by the gateway itself, the rest by websockets."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from tests.gateway.conftest import gateway_settings, start_gateway

UPGRADE = (
    "GET /ws?device_id={device} HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def client_frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> bytes:
    """A client frame, masked with a random key (the payload on the wire differs from ``payload``)."""
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        header = bytes((first, (0x80 if masked else 0) | length))
    elif length < 65536:
        header = bytes((first, (0x80 if masked else 0) | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((first, (0x80 if masked else 0) | 127)) + length.to_bytes(8, "big")
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))


def event(request_id: str, event_name: str = "ping") -> bytes:
    return json.dumps({"event": event_name, "request_id": request_id}).encode()


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, device: str) -> "RawClient":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(UPGRADE.format(device=device).encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        return cls(reader, writer)

    async def frame(self) -> tuple[int, bytes]:
        """The next server frame: (opcode, payload)."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 5)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.reader.readexactly(8), "big")
        return first & 0x0F, await self.reader.readexactly(length)

    async def answer(self) -> dict:
        opcode, payload = await self.frame()
        assert opcode == TEXT
        return json.loads(payload)

    async def close_code(self) -> int:
        while True:
            opcode, payload = await self.frame()
            if opcode == CLOSE:
                return int.from_bytes(payload[:2], "big")

    def close(self) -> None:
        self.writer.close()


async def test_frames_batched_in_one_write_are_each_answered_in_order(gateway) -> None:
    client = await RawClient.open(gateway.port, "batch")
    try:
        client.writer.write(b"".join(client_frame(TEXT, event(f"b{index}")) for index in range(5)))
        assert [(await client.answer())["request_id"] for _ in range(5)] == [f"b{index}" for index in range(5)]
    finally:
        client.close()


@pytest.mark.parametrize("payload_size", [40, 300, 70_000])
async def test_a_frame_split_at_every_byte_is_answered(gateway, payload_size: int) -> None:
    client = await RawClient.open(gateway.port, "split")
    try:
        message = json.dumps({"event": "ping", "request_id": "s", "data": {"pad": "x" * payload_size}}).encode()
        wire = client_frame(BINARY, message) + client_frame(TEXT, event("after"))
        step = 1 if payload_size < 1000 else 997
        for start in range(0, len(wire), step):
            client.writer.write(wire[start:start + step])
            await client.writer.drain()
            if start < 20:
                await asyncio.sleep(0.002)  # separate reads while the header is still arriving
        reply = await client.answer()
        if payload_size > 65_536:  # over MAX_MESSAGE_BYTES: refused before it is read as JSON
            assert reply["error"]["code"] == "message_too_large"
        else:
            assert reply["type"] == "response" and reply["request_id"] == "s"
        assert (await client.answer())["request_id"] == "after"
    finally:
        client.close()


async def test_control_and_fragmented_frames_between_whole_frames_keep_their_order(gateway) -> None:
    client = await RawClient.open(gateway.port, "mixed")
    try:
        fragmented = event("f")
        client.writer.write(
            client_frame(TEXT, event("m1"))
            + client_frame(PING, b"hi")
            + client_frame(TEXT, fragmented[:5], fin=False)
            + client_frame(PING, b"in-between")  # control frames may come between fragments
            + client_frame(CONT, fragmented[5:])
            + client_frame(TEXT, event("m2"))
        )
        frames = [await client.frame() for _ in range(5)]
        pongs = [payload for opcode, payload in frames if opcode == PONG]
        answers = [json.loads(payload)["request_id"] for opcode, payload in frames if opcode == TEXT]
        assert pongs == [b"hi", b"in-between"]  # (pongs go out after the answers of the same read)
        assert answers == ["m1", "f", "m2"]
    finally:
        client.close()


async def test_an_unmasked_frame_is_a_protocol_error(gateway) -> None:
    client = await RawClient.open(gateway.port, "unmasked")
    try:
        client.writer.write(client_frame(TEXT, event("u1")) + client_frame(TEXT, event("u2"), masked=False))
        assert (await client.answer())["request_id"] == "u1"
        assert await client.close_code() == 1002
    finally:
        client.close()


async def test_a_frame_over_max_frame_bytes_closes_with_1009(upstreams) -> None:
    server = start_gateway(gateway_settings(upstreams, max_frame_bytes=2000, max_message_bytes=1000))
    try:
        client = await RawClient.open(server.port, "big")
        try:
            client.writer.write(client_frame(TEXT, event("ok")) + client_frame(TEXT, b"x" * 3000))
            assert (await client.answer())["request_id"] == "ok"
            assert await client.close_code() == 1009
        finally:
            client.close()
    finally:
        server.stop()


async def test_a_clean_close_is_answered(gateway) -> None:
    client = await RawClient.open(gateway.port, "closer")
    try:
        client.writer.write(client_frame(TEXT, event("c1")) + client_frame(CLOSE, (1000).to_bytes(2, "big") + b"bye"))
        assert (await client.answer())["request_id"] == "c1"
        assert await client.close_code() == 1000
    finally:
        client.close()
