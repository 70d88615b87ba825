"""Per-tenant sliding-window limits shared through the real Redis (seed 002: ``ratelimit:{tenant_id}:{window}``)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import jwt
import pytest
import redis.asyncio as redis
from websockets.asyncio.client import connect

from sonalyze.gateway.tenant_limit import TenantRateLimiter, sliding_window_estimate
from tests.gateway.conftest import gateway_settings, start_gateway

SECRET = "tenant-limit-secret-of-32-bytes-or-more"


@pytest.mark.parametrize(
    ("previous", "current", "elapsed", "expected"), [(10, 0, 0.0, 10.0), (10, 2, 0.5, 7.0), (10, 2, 1.0, 2.0), (0, 5, 0.3, 5.0)]
)
def test_the_previous_window_counts_by_the_part_still_inside(previous: int, current: int, elapsed: float, expected: float) -> None:
    assert sliding_window_estimate(previous, current, elapsed) == pytest.approx(expected)


async def test_the_window_slides_over_the_boundary(redis_url: str) -> None:
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    limiter = TenantRateLimiter(redis_url, limit=4, window_s=10.0)
    window_start_s = (time.time() // 10.0 + 1) * 10.0  # a window boundary, given explicitly (no sleeping)
    try:
        for _ in range(4):
            assert await limiter.take(tenant, window_start_s + 9.0) == 0.0
        assert await limiter.take(tenant, window_start_s + 9.0) == pytest.approx(1.0)  # 5 > 4: wait for the window's end
        # 1 s into the next window the 5 of the previous one weigh 4.5: still over
        assert await limiter.take(tenant, window_start_s + 11.0) > 0
        # 8 s in they weigh 1: 1 + 2 this window = 3 ≤ 4, allowed again
        assert await limiter.take(tenant, window_start_s + 18.0) == 0.0
    finally:
        await limiter.close()
        client = redis.Redis.from_url(redis_url)
        await client.delete(*[f"ratelimit:{tenant}:{int(window_start_s // 10) + k}" for k in (-1, 0, 1)])
        await client.aclose()


def token(device_id: str, tenant_id: str) -> str:
    return jwt.encode({"device_id": device_id, "tenant_id": tenant_id, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


async def test_a_tenant_is_limited_across_its_connections_and_the_proxy_others_are_not(upstreams, redis_url: str) -> None:
    busy, calm = f"busy-{uuid.uuid4().hex[:8]}", f"calm-{uuid.uuid4().hex[:8]}"
    settings = gateway_settings(
        upstreams, auth_required=True, jwt_secret=SECRET, tenant_rate_limit=3, tenant_rate_window_sec=3600.0,
        tenant_rate_limit_url=redis_url,
    )
    server = start_gateway(settings)
    try:
        async with (
            connect(server.ws_url + f"/ws?token={token('d1', busy)}") as one,
            connect(server.ws_url + f"/ws?token={token('d2', busy)}") as two,
            connect(server.ws_url + f"/ws?token={token('d3', calm)}") as other,
        ):
            results = []
            for ws in (one, two, one):
                await ws.send(json.dumps({"event": "lobby.get", "request_id": "x"}))
                results.append(json.loads(await asyncio.wait_for(ws.recv(), 5))["type"])
            assert results == ["response"] * 3
            await two.send(json.dumps({"event": "lobby.get", "request_id": "x"}))
            refused = json.loads(await asyncio.wait_for(two.recv(), 5))
            assert refused["error"]["code"] == "rate_limited" and refused["error"]["details"]["scope"] == "tenant"
            async with httpx.AsyncClient() as client:
                proxied = await client.get(server.url + "/v1/jobs/1", headers={"Authorization": f"Bearer {token('d1', busy)}"})
            assert proxied.status_code == 429 and int(proxied.headers["retry-after"]) >= 1
            await other.send(json.dumps({"event": "lobby.get", "request_id": "x"}))
            assert json.loads(await asyncio.wait_for(other.recv(), 5))["type"] == "response"
    finally:
        server.stop()
        client = redis.Redis.from_url(redis_url)
        keys = [key async for key in client.scan_iter(match=f"ratelimit:{busy}:*")] + [key async for key in client.scan_iter(match=f"ratelimit:{calm}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
