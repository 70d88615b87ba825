"""Market relay example (seed 003): a NATS JetStream durable consumer relayed to ``/ws/stream`` clients.

    python -m examples.market.run --port 8000     # NATS_URL defaults to nats://127.0.0.1:4222 (JetStream on)

It creates the stream (``LEVELS`` on ``levels.signals``) if missing, starts a gateway on ``--port`` whose
durable consumer ``gateway_levels`` relays each message byte for byte to ``WS /ws/stream``
(``STREAM_FORMAT=raw``; ``--format envelope`` wraps them for Sonalyze clients), prints the seed's start-up
banner, and publishes a level signal (``{"spy": {"spot"}, "levels": [...], "viewport"}``) every second.
A client connecting later gets the latest payload at once; ``GET /health`` answers in the seed's shape.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from dataclasses import dataclass

import nats
import orjson
from nats.js.api import StreamConfig

from examples._launch import Process, gateway, wait_forever

STREAM, SUBJECT, DURABLE = "LEVELS", "levels.signals", "gateway_levels"
RULE = "=" * 60


async def ensure_stream(nats_url: str, stream: str, subject: str) -> None:
    client = await nats.connect(nats_url)
    try:
        await client.jetstream().add_stream(StreamConfig(name=stream, subjects=[subject]))
    finally:
        await client.close()


async def publish(nats_url: str, subject: str, payloads: list[bytes]) -> None:
    """Publish to JetStream, each acknowledged by the server (stored) before the next."""
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        for payload in payloads:
            await js.publish(subject, payload)
    finally:
        await client.close()


def banner(nats_url: str, port: int) -> str:
    """Seed 003's start-up output."""
    return "\n".join([RULE, "GATEWAY SERVICE", RULE, f"  NATS URL: {nats_url}", f"  WebSocket: ws://localhost:{port}/ws/stream", RULE])


def level_signal(spot: float, ts_s: float) -> dict[str, object]:
    """A payload of seed 003's shape (``data.spy``, ``data.levels``, ``data.viewport``), levels around the spot."""
    levels = [{"price": round(spot + offset, 2), "kind": kind} for offset, kind in ((-2.0, "support"), (0.0, "pivot"), (2.0, "resistance"))]
    return {"ts": ts_s, "spy": {"spot": round(spot, 2)}, "levels": levels, "viewport": {"low": round(spot - 5, 2), "high": round(spot + 5, 2)}}


@dataclass
class MarketRelay:
    gateway: Process
    nats_url: str
    subject: str

    def stop(self) -> None:
        self.gateway.stop()


def start(
    nats_url: str, stream: str = STREAM, subject: str = SUBJECT, durable: str = DURABLE, port: int | None = None, stream_format: str = "raw"
) -> MarketRelay:
    asyncio.run(ensure_stream(nats_url, stream, subject))
    env = {
        "STREAM_CHANNEL": "levels", "STREAM_NATS_URL": nats_url, "STREAM_SUBJECT": subject,
        "STREAM_DURABLE": durable, "STREAM_EVENT": "levels.signal", "STREAM_FORMAT": stream_format,
    }
    return MarketRelay(gateway("gateway", env, port).start(), nats_url, subject)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="the gateway's port (default 8000)")
    parser.add_argument("--stream", default=STREAM)
    parser.add_argument("--subject", default=SUBJECT)
    parser.add_argument("--durable", default=DURABLE)
    parser.add_argument("--format", choices=["raw", "envelope"], default="raw", help="what /ws/stream clients get")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between published signals")
    args = parser.parse_args()
    nats_url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    relay = start(nats_url, args.stream, args.subject, args.durable, args.port, args.format)
    print(banner(nats_url, args.port), flush=True)

    async def ticker() -> None:
        spot = 500.0
        while relay.gateway.popen is not None and relay.gateway.popen.poll() is None:
            spot += random.uniform(-1, 1)
            await publish(relay.nats_url, relay.subject, [orjson.dumps(level_signal(spot, time.time()))])
            await asyncio.sleep(args.interval)

    try:
        asyncio.run(ticker())
    except KeyboardInterrupt:
        pass
    wait_forever([relay.gateway])


if __name__ == "__main__":
    main()
