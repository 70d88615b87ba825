"""A frame-level fuzzer of ``WS /ws``: random and mutated client frames after the Autobahn TestSuite's
categories (1 framing, 2 pings/pongs, 3 reserved bits, 4 opcodes, 5 fragmentation, 6 UTF-8, 7 close
handling, 9 sizes), on raw sockets.

Each round opens a connection, sends a burst of generated frames, and reads until the server closes or
goes quiet. Between rounds a well-behaved client must get its ``ping`` answered and ``/healthz`` must be
200: the server never crashes, never answers 5xx and keeps serving others. Run longer by hand:

    .venv/bin/python -m tests.gateway.fuzz_frames --rounds 5000 --seed 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import struct
import time
from dataclasses import dataclass, field

import httpx

VALID_CLOSE_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011} | set(range(3000, 5000))


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = True, declared: int | None = None) -> bytes:
    """A client frame; ``declared`` lies about the payload length."""
    length = len(payload) if declared is None else declared
    first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        header = bytes((first, mask_bit | length))
    elif length < 65536:
        header = bytes((first, mask_bit | 126)) + struct.pack("!H", length)
    else:
        header = bytes((first, mask_bit | 127)) + struct.pack("!Q", length)
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))


def envelope(rng: random.Random) -> bytes:
    choices = [
        {"event": "ping", "request_id": rng.randrange(1 << 40)},
        {"event": "identify", "data": {}},
        {"event": "lobby.get", "request_id": "x", "data": {"lobby_id": "nope"}},
        {"event": rng.choice(["", None, 3, [], "a" * 300]), "request_id": rng.choice([None, True, 1.5, {}, "r"])},
        {"event": "subscribe", "data": {"channel": rng.choice(["", "lobby:x", "x" * 500, 5])}},
    ]
    return json.dumps(rng.choice(choices)).encode()


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if data and rng.random() < 0.5:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif data and rng.random() < 0.5:
            del data[rng.randrange(len(data))]
        else:
            data.insert(rng.randrange(len(data) + 1), rng.choice(b'{}[]":,\\\x00\xff'))
    return bytes(data)


def generate(rng: random.Random) -> bytes:
    """One fuzz case: a few frames from one Autobahn category, or random bytes."""
    category = rng.randrange(10)
    if category == 0:  # 1.x framing: text/binary of every length class
        size = rng.choice([0, 1, 125, 126, 127, 65535, 65536, rng.randrange(200_000)])
        return frame(rng.choice([1, 2]), os.urandom(size))
    if category == 1:  # 2.x pings and pongs, oversized control payloads
        return frame(rng.choice([9, 10]), os.urandom(rng.choice([0, 125, 126, 500])))
    if category == 2:  # 3.x reserved bits
        return frame(rng.choice([1, 2, 9]), envelope(rng), rsv=rng.randrange(1, 8))
    if category == 3:  # 4.x reserved opcodes
        return frame(rng.choice([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]), os.urandom(rng.randrange(20)))
    if category == 4:  # 5.x fragmentation: stray continuations, fragmented control, interleaving
        message = envelope(rng)
        cut = rng.randrange(len(message) + 1)
        parts = [frame(1, message[:cut], fin=False), frame(9, b"p"), frame(0, message[cut:])]
        rng.shuffle(parts) if rng.random() < 0.5 else None
        return b"".join(parts) + (frame(0, b"x") if rng.random() < 0.3 else b"") + (frame(9, b"", fin=False) if rng.random() < 0.3 else b"")
    if category == 5:  # 6.x UTF-8: invalid sequences in text frames
        return frame(1, rng.choice([b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b'{"event": "\xff"}', os.urandom(30)]))
    if category == 6:  # 7.x close frames: bad codes, 1-byte payloads, bad reason UTF-8
        code = rng.choice([0, 999, 1000, 1004, 1005, 1006, 1016, 2999, 5000, 65535])
        payload = rng.choice([struct.pack("!H", code), b"\x03", struct.pack("!H", 1000) + b"\xff\xfe"])
        return frame(8, payload)
    if category == 7:  # 9.x / lies: declared lengths far beyond what is sent or allowed, unmasked frames
        return rng.choice([
            frame(1, b"{}", declared=rng.choice([1 << 20, 1 << 40, (1 << 63) - 1])),
            frame(1, envelope(rng), masked=False),
        ])
    if category == 8:  # mutated JSON envelopes in valid frames
        return frame(1, mutate(rng, envelope(rng)))
    return os.urandom(rng.randrange(1, 64))  # garbage on the wire


@dataclass
class FuzzReport:
    rounds: int = 0
    frames_bytes: int = 0
    close_codes: dict[int, int] = field(default_factory=dict)
    resets: int = 0
    bad_close_codes: list[int] = field(default_factory=list)
    server_errors: int = 0
    slowest_bystander_s: float = 0.0


async def _read_until_closed(reader: asyncio.StreamReader, quiet_s: float) -> int | None:
    """Read server frames until a close frame (its code, 1005 without one), EOF or silence (None)."""
    while True:
        try:
            head = await asyncio.wait_for(reader.readexactly(2), quiet_s)
        except (TimeoutError, asyncio.IncompleteReadError):
            return None
        length = head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", await reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await reader.readexactly(8))[0]
        payload = await reader.readexactly(length)
        if head[0] & 0x0F == 8:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


async def bystander_round_trip(port: int) -> float:
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}/ws?device_id=bystander") as ws:
        started_s = time.monotonic()
        await ws.send(json.dumps({"event": "ping", "request_id": "b"}))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert answer["event"] == "pong", answer
        return time.monotonic() - started_s


async def fuzz(port: int, rounds: int, seed: int, cases_per_round: int = 4, quiet_s: float = 0.3) -> FuzzReport:
    """Run ``rounds`` rounds against a gateway with ``ALLOW_INSECURE_DEVICE_IDS`` on 127.0.0.1:``port``."""
    rng = random.Random(seed)
    report = FuzzReport()
    upgrade = (
        "GET /ws?device_id=fuzz{n} HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        for n in range(rounds):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(upgrade.format(n=n).encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101"), head[:100]
            cases = b"".join(generate(rng) for _ in range(cases_per_round))
            report.frames_bytes += len(cases)
            try:
                writer.write(cases)
                code = await _read_until_closed(reader, quiet_s)
            except ConnectionError:
                report.resets += 1
                code = None
            if code is not None:
                report.close_codes[code] = report.close_codes.get(code, 0) + 1
                if code not in VALID_CLOSE_CODES:
                    report.bad_close_codes.append(code)
            writer.close()
            report.rounds += 1
            if n % 10 == 0 or n == rounds - 1:
                report.slowest_bystander_s = max(report.slowest_bystander_s, await bystander_round_trip(port))
                if (await http.get("/healthz")).status_code >= 500:
                    report.server_errors += 1
    return report


def main() -> None:
    from sonalyze.gateway.config import GatewaySettings
    from sonalyze.gateway.main import create_app
    from sonalyze.services import SERVICES
    from tests.support.servers import ThreadedServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    settings = GatewaySettings(
        lobby_url="http://127.0.0.1:9", internal_auth_token="fuzz", allow_insecure_device_ids=True,
        rate_limit_rps=10_000.0, rate_limit_burst=10_000, max_connections_per_address=10_000,
    )
    with ThreadedServer(create_app(settings), **SERVICES["gateway"].uvicorn_options) as server:
        started_s = time.monotonic()
        report = asyncio.run(fuzz(server.port, args.rounds, args.seed))
    print(json.dumps({**report.__dict__, "seconds": round(time.monotonic() - started_s, 1)}, indent=1))


if __name__ == "__main__":
    main()
