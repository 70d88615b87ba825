"""Token buckets: one per WebSocket connection, one per client address on the HTTP proxy.

A bucket holds at most ``burst`` tokens and gains ``rate_per_s`` tokens per second; each request takes
one (the classic token-bucket shaper, e.g. RFC 2697's committed burst).
"""

from __future__ import annotations

from collections import deque


class TokenBucket:
    __slots__ = ("rate_per_s", "burst", "tokens", "updated_s")

    def __init__(self, rate_per_s: float, burst: int, now_s: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.updated_s = now_s

    def take(self, now_s: float) -> float:
        """Take one token. Returns 0.0 when allowed, else the seconds until one will be available."""
        tokens = self.tokens + (now_s - self.updated_s) * self.rate_per_s
        if tokens > self.burst:
            tokens = self.burst
        self.updated_s = now_s
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate_per_s

    def is_full(self, now_s: float) -> bool:
        return self.tokens + (now_s - self.updated_s) * self.rate_per_s >= self.burst


class KeyedRateLimiter:
    """One bucket per key (a client address); full buckets are forgotten when the table grows."""

    def __init__(self, rate_per_s: float, burst: int, max_keys: int = 10_000) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str, now_s: float) -> float:
        """Like :meth:`TokenBucket.take` for ``key``'s bucket."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_full(now_s)
            bucket = self._buckets[key] = TokenBucket(self.rate_per_s, self.burst, now_s)
        return bucket.take(now_s)

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget_full(self, now_s: float) -> None:
        full = [key for key, bucket in self._buckets.items() if bucket.is_full(now_s)]
        for key in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[key]


class FailureWindow:
    """At most ``max_failures`` failures per key within ``window_s`` (a sliding window): failed
    ``lobby.join`` attempts per device and per address, so join codes cannot be enumerated."""

    def __init__(self, max_failures: int, window_s: float, max_keys: int = 10_000) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, key: str, now_s: float) -> float:
        """0.0 while ``key`` may try again, else the seconds until its oldest failure leaves the window."""
        failures = self._failures.get(key)
        if failures is None:
            return 0.0
        while failures and failures[0] <= now_s - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return 0.0
        if len(failures) < self.max_failures:
            return 0.0
        return failures[0] + self.window_s - now_s

    def record(self, key: str, now_s: float) -> None:
        failures = self._failures.get(key)
        if failures is None:
            if len(self._failures) >= self.max_keys:
                self._forget_expired(now_s)
            failures = self._failures[key] = deque(maxlen=self.max_failures)
        failures.append(now_s)

    def _forget_expired(self, now_s: float) -> None:
        expired = [key for key, failures in self._failures.items() if not failures or failures[-1] <= now_s - self.window_s]
        for key in expired or list(self._failures)[: len(self._failures) // 2]:
            del self._failures[key]
