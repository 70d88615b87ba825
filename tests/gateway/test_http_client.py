"""The pooled upstream client: calls beyond the pool wait their turn on callbacks, time out, can be cancelled."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sonalyze.common.http_client import UpstreamClient


def body(event: str, request_id: str, **data: Any) -> dict[str, Any]:
    return {"event": event, "data": data, "device_id": "d", "request_id": request_id, "connection_id": "c"}


def start_call(client: UpstreamClient, url: str, event: str, request_id: str, **data: Any) -> tuple[asyncio.Future, Any]:
    """(the answer as a future, the function that cancels the call)."""
    answer: asyncio.Future = asyncio.get_running_loop().create_future()
    cancel = client.call(url, body(event, request_id, **data), answer.set_result)
    return answer, cancel


async def warm(client: UpstreamClient, url: str, connections: int) -> None:
    """Open ``connections`` pooled connections (first calls open them in a task each)."""
    calls = [start_call(client, url, "lobby.slow", f"warm{index}", delay_s=0.05)[0] for index in range(connections)]
    assert all("data" in answer for answer in await asyncio.gather(*calls))


async def test_calls_beyond_the_pool_wait_their_turn_and_all_get_answers(upstreams) -> None:
    url = upstreams["lobby"].url
    client = UpstreamClient(timeout_s=5.0, max_connections_per_origin=2)
    try:
        await warm(client, url, 2)
        started_s = time.monotonic()
        calls = [start_call(client, url, "lobby.slow", f"r{index}", delay_s=0.2)[0] for index in range(8)]
        answers = await asyncio.wait_for(asyncio.gather(*calls), 10)
        elapsed_s = time.monotonic() - started_s
        assert [answer["data"]["request_id"] for answer in answers] == [f"r{index}" for index in range(8)]
        assert elapsed_s >= 0.75  # 8 calls of 0.2 s on 2 connections: 4 rounds
    finally:
        await client.aclose()


async def test_a_call_waiting_behind_a_stuck_pool_times_out_and_the_pool_recovers(upstreams) -> None:
    """The waiting call gets the slot the stuck one frees at its timeout (or times out first, same tick)."""
    url = upstreams["lobby"].url
    client = UpstreamClient(timeout_s=0.5, max_connections_per_origin=1)
    try:
        await warm(client, url, 1)
        busy, _ = start_call(client, url, "lobby.slow", "busy", delay_s=3.0)
        waiting, _ = start_call(client, url, "lobby.slow", "waiting", delay_s=3.0)
        started_s = time.monotonic()
        assert (await asyncio.wait_for(busy, 5))["error"]["code"] == "upstream_timeout"
        assert (await asyncio.wait_for(waiting, 5))["error"]["code"] == "upstream_timeout"
        assert 0.4 <= time.monotonic() - started_s < 1.8  # its own timeout, whether it waited or not
        after, _ = start_call(client, url, "lobby.get", "after")
        assert (await asyncio.wait_for(after, 5))["data"]["request_id"] == "after"
    finally:
        await client.aclose()


async def test_a_cancelled_waiting_call_is_never_answered_and_the_next_one_is(upstreams) -> None:
    url = upstreams["lobby"].url
    client = UpstreamClient(timeout_s=5.0, max_connections_per_origin=1)
    try:
        await warm(client, url, 1)
        busy, _ = start_call(client, url, "lobby.slow", "busy", delay_s=0.2)
        cancelled, cancel = start_call(client, url, "lobby.get", "cancelled")
        following, _ = start_call(client, url, "lobby.get", "following")
        cancel()
        assert (await asyncio.wait_for(busy, 5))["data"]["request_id"] == "busy"
        assert (await asyncio.wait_for(following, 5))["data"]["request_id"] == "following"
        # the signal: one connection answers in order, so had the cancelled call been sent, its answer
        # would have been handed over before the one that came after it
        assert not cancelled.done()
    finally:
        await client.aclose()


async def test_one_timer_serves_every_call_in_flight(upstreams) -> None:
    """Calls on pooled connections time out each after its own timeout, though they share one timer."""
    url = upstreams["lobby"].url
    client = UpstreamClient(timeout_s=0.6, max_connections_per_origin=4)
    try:
        await warm(client, url, 4)
        first, _ = start_call(client, url, "lobby.slow", "first", delay_s=3.0)
        await asyncio.sleep(0.4)
        second, _ = start_call(client, url, "lobby.slow", "second", delay_s=3.0)
        quick, _ = start_call(client, url, "lobby.get", "quick")
        assert (await asyncio.wait_for(quick, 5))["data"]["request_id"] == "quick"
        assert (await asyncio.wait_for(first, 5))["error"]["code"] == "upstream_timeout"
        assert not second.done()  # 0.4 s younger: not yet due
        started_s = time.monotonic()
        assert (await asyncio.wait_for(second, 5))["error"]["code"] == "upstream_timeout"
        assert 0.2 <= time.monotonic() - started_s < 0.8
    finally:
        await client.aclose()


async def test_a_call_cancelled_before_its_connect_began_gives_the_pool_slot_back(upstreams) -> None:
    """Its connect task never ran: the slot it took must still come back, or the pool stays full forever."""
    url = upstreams["lobby"].url
    client = UpstreamClient(timeout_s=2.0, max_connections_per_origin=1)
    try:
        _, cancel = start_call(client, url, "lobby.get", "cancelled")
        cancel()  # in the same loop turn: the connect task is cancelled before its first step
        after, _ = start_call(client, url, "lobby.get", "after")
        assert (await asyncio.wait_for(after, 5))["data"]["request_id"] == "after"
    finally:
        await client.aclose()
