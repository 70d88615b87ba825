"""Per-tenant rate limits shared by every gateway instance through Redis (seed 002's sliding window).

The sliding-window counter (Cloudflare's approximation of a sliding log): fixed windows of
``TENANT_RATE_WINDOW_SEC`` counted in ``ratelimit:{tenant_id}:{window}`` (window = ⌊t / length⌋); the
rate over the last full window length is estimated as ``previous × (1 − elapsed fraction) + current``.
One pipelined round trip per routed event or proxied request of a tenant (INCR, PEXPIRE, GET). While
Redis is unreachable requests are let through (fail open) and the failure is logged: losing Redis
must not stop the gateway.
"""

from __future__ import annotations

import logging
import math
import time

logger = logging.getLogger("sonalyze.gateway.tenant_limit")


def sliding_window_estimate(previous: int, current: int, elapsed_fraction: float) -> float:
    """Requests in the last window length, weighting the previous window by the part still inside it."""
    return previous * (1.0 - elapsed_fraction) + current


def tenant_key(tenant_id: str, window: int) -> str:
    return f"ratelimit:{tenant_id}:{window}"


class TenantRateLimiter:
    def __init__(self, url: str, limit: int, window_s: float) -> None:
        import redis.asyncio as redis

        self._client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
        self._limit = limit
        self._window_s = window_s
        self._failing = False

    async def take(self, tenant_id: str, now_s: float | None = None) -> float:
        """0.0 when the request may go on, else the seconds to wait (the rest of the current window)."""
        from redis.exceptions import RedisError

        now_s = time.time() if now_s is None else now_s
        window = math.floor(now_s / self._window_s)
        elapsed_fraction = now_s / self._window_s - window
        pipe = self._client.pipeline(transaction=False)
        pipe.incr(tenant_key(tenant_id, window))
        pipe.pexpire(tenant_key(tenant_id, window), int(2 * self._window_s * 1000))
        pipe.get(tenant_key(tenant_id, window - 1))
        try:
            current, _, previous = await pipe.execute()
        except (RedisError, OSError) as exc:
            if not self._failing:
                logger.warning("tenant rate limits not enforced (redis): %s", exc)
            self._failing = True
            return 0.0
        self._failing = False
        if sliding_window_estimate(int(previous or 0), int(current), elapsed_fraction) <= self._limit:
            return 0.0
        return max((1.0 - elapsed_fraction) * self._window_s, 0.001)

    async def close(self) -> None:
        await self._client.aclose()
