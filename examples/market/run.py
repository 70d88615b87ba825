"""Market relay example (seed 003): a NATS JetStream durable consumer relayed to ``/ws/stream`` clients.

    python -m examples.market.run       # NATS_URL defaults to nats://127.0.0.1:4222 (JetStream on)

It creates the stream (``LEVELS`` on ``levels.signals``) if missing, starts a gateway whose durable
consumer ``gateway_levels`` pushes each message to ``WS /ws/stream``, and publishes a level signal every
second. A client connecting later gets the latest payload at once.
"""

from __future__ import annotations

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


@dataclass
class MarketRelay:
    gateway: Process
    nats_url: str
    subject: str

    def stop(self) -> None:
        self.gateway.stop()


def start(nats_url: str, stream: str = STREAM, subject: str = SUBJECT, durable: str = DURABLE, port: int | None = None) -> MarketRelay:
    asyncio.run(ensure_stream(nats_url, stream, subject))
    env = {
        "STREAM_CHANNEL": "levels", "STREAM_NATS_URL": nats_url, "STREAM_SUBJECT": subject,
        "STREAM_DURABLE": durable, "STREAM_EVENT": "levels.signal",
    }
    return MarketRelay(gateway("gateway", env, port).start(), nats_url, subject)


if __name__ == "__main__":
    relay = start(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    print(f"connect: {relay.gateway.ws_url}/ws/stream   (a signal per second; Ctrl-C stops)")

    async def ticker() -> None:
        level = 100.0
        while relay.gateway.popen is not None and relay.gateway.popen.poll() is None:
            level += random.uniform(-1, 1)
            await publish(relay.nats_url, relay.subject, [orjson.dumps({"symbol": "EURUSD", "level": round(level, 3), "ts": time.time()})])
            await asyncio.sleep(1.0)

    try:
        asyncio.run(ticker())
    except KeyboardInterrupt:
        pass
    wait_forever([relay.gateway])
