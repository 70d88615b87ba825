"""Token buckets with an explicit clock."""

from __future__ import annotations

import pytest

from sonalyze.gateway.rate_limit import KeyedRateLimiter, TokenBucket


def test_burst_then_refill_at_the_rate() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=3, now_s=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(0.05) == pytest.approx(0.05)
    assert bucket.take(0.1) == 0.0  # one token refilled after 1/rate
    assert bucket.take(0.1) > 0.0


def test_refill_never_exceeds_burst() -> None:
    bucket = TokenBucket(rate_per_s=100.0, burst=2, now_s=0.0)
    for _ in range(2):
        bucket.take(0.0)
    assert bucket.is_full(1000.0)
    assert [bucket.take(1000.0) for _ in range(3)][2] > 0.0


def test_keyed_limiter_separates_keys_and_forgets_idle_ones() -> None:
    limiter = KeyedRateLimiter(rate_per_s=1.0, burst=1, max_keys=2)
    assert limiter.take("a", 0.0) == 0.0
    assert limiter.take("a", 0.0) == pytest.approx(1.0)
    assert limiter.take("b", 0.0) == 0.0
    assert limiter.take("c", 10.0) == 0.0  # table full: a and b are full again at t=10, forgotten
    assert len(limiter) == 1
    assert limiter.take("c", 10.0) > 0.0
