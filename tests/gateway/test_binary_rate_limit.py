"""Binary frames relayed to Redis take a rate-limit token like any other message (RATE_LIMIT_RPS/BURST)."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
import redis.asyncio as redis
from websockets.asyncio.client import connect

from tests.gateway.conftest import TOKEN, gateway_settings, start_gateway
from tests.support import infra

pytestmark = pytest.mark.redis


async def test_binary_frames_over_the_rate_limit_are_refused_and_not_relayed(upstreams) -> None:
    redis_url = infra.require(infra.REDIS_URL, 6379, "Redis")
    device_id = f"voice-{uuid.uuid4().hex[:8]}"
    server = start_gateway(gateway_settings(upstreams, rate_limit_rps=2.0, rate_limit_burst=3, binary_relay_url=redis_url))
    listener = redis.Redis.from_url(redis_url)
    pubsub = listener.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"audio:{device_id}")
    try:
        async with connect(server.ws_url + f"/ws?device_id={device_id}") as ws:
            for index in range(5):
                await ws.send(bytes([index]) * 320)
            refusals = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(2)]
            for refusal in refusals:
                assert refusal["type"] == "error" and refusal["error"]["code"] == "rate_limited"
                assert 0 < refusal["error"]["details"]["retry_after_s"] <= 0.5 + 1e-9  # one token per 1/RATE_LIMIT_RPS
            relayed = await published(pubsub, 3)
            assert relayed == [bytes([index]) * 320 for index in range(3)]  # the burst went through, the rest was dropped
            assert await published(pubsub, 1, timeout_s=0.5) == []

            await asyncio.sleep(refusals[-1]["error"]["details"]["retry_after_s"] + 0.05)
            await ws.send(b"\x09" * 320)  # refilled: relayed again, on the same connection
            assert await published(pubsub, 1) == [b"\x09" * 320]
        metrics = httpx.get(server.url + "/metrics", headers={"X-Internal-Token": TOKEN}).text
        assert 'gateway_rate_limited_total{scope="connection"} 2.0' in metrics
    finally:
        await pubsub.aclose()
        await listener.aclose()
        server.stop()


async def published(pubsub, count: int, timeout_s: float = 5.0) -> list[bytes]:
    """Up to ``count`` messages published on the subscribed channel within ``timeout_s``."""
    messages: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(messages) < count:
        left_s = deadline - asyncio.get_running_loop().time()
        if left_s <= 0:
            break
        message = await pubsub.get_message(timeout=left_s)
        if message is not None:
            messages.append(message["data"])
    return messages
