"""Several URLs of one service: round robin, failover, passive health checks (pure, with a fake clock)."""

from __future__ import annotations

import pytest

from sonalyze.common.replicas import Replicas, split_urls


def test_urls_are_split_on_commas_and_checked():
    assert split_urls(" http://a:1/, https://b:2 ,") == ("http://a:1", "https://b:2")
    for bad in ("", " , ", "a:1", "ftp://a", "http://"):
        with pytest.raises(ValueError):
            split_urls(bad)


def test_calls_go_round_robin_and_a_failed_replica_is_passed_over_until_down_s():
    now = [0.0]
    replicas = Replicas("http://a,http://b,http://c", down_s=5.0, clock=lambda: now[0])
    assert [replicas.order()[0] for _ in range(4)] == ["http://a", "http://b", "http://c", "http://a"]
    replicas.failed("http://c")
    assert replicas.order() == ["http://b", "http://a", "http://c"]  # down: tried last
    assert replicas.order() == ["http://a", "http://b", "http://c"]  # c's turn: passed over
    assert replicas.healthy() == ["http://a", "http://b"]
    now[0] = 5.0
    assert replicas.order()[0] == "http://a" and "http://c" in replicas.healthy()
    replicas.failed("http://a")
    replicas.failed("http://b")
    replicas.failed("http://c")
    assert sorted(replicas.order()) == ["http://a", "http://b", "http://c"]  # all down: all tried anyway
    replicas.answered("http://b")
    assert replicas.healthy() == ["http://b"]
