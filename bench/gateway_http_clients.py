"""CPU per /gateway/handle call, side by side in one run: the gateway's HTTP client, aiohttp, httpx.

All run in this process (pinned to core 0), the stub upstream on core 1; 10 concurrent callers, one
pooled keep-alive client each. aiohttp is the next well-kept library down from the own client (issue 16);
httpx is measured twice: as installed (httpcore retries ``import sniffio`` on every request when sniffio
is absent, as here) and with that import satisfied.

    python bench/gateway_http_clients.py
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import types
from pathlib import Path

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_bench import free_port, start_upstream  # noqa: E402

from sonalyze.common.http_client import UpstreamClient  # noqa: E402

BODY = {"event": "lobby.get", "data": {"lobby_id": "abc"}, "device_id": "d", "request_id": "1", "connection_id": "c"}
CALLERS, CALLS = 10, 1000


async def measure(label: str, one_call) -> dict:
    async def caller(n: int) -> None:
        for _ in range(n):
            await one_call()

    await asyncio.gather(*(caller(30) for _ in range(CALLERS)))  # warm-up
    cpu0, wall0 = os.times(), time.perf_counter()
    await asyncio.gather(*(caller(CALLS) for _ in range(CALLERS)))
    cpu1, wall1 = os.times(), time.perf_counter()
    calls = CALLERS * CALLS
    return {
        "client": label,
        "user_us_per_call": round((cpu1.user - cpu0.user) / calls * 1e6, 1),
        "total_us_per_call": round((cpu1.user - cpu0.user + cpu1.system - cpu0.system) / calls * 1e6, 1),
        "calls_per_s": round(calls / (wall1 - wall0)),
    }


async def main(url: str) -> list[dict]:
    import httpx

    results = []
    ours = UpstreamClient(10.0)

    async def ours_call() -> None:
        status, content = await ours.post_json(url + "/gateway/handle", orjson.dumps(BODY))
        assert status == 200 and "data" in orjson.loads(content)

    results.append(await measure("sonalyze UpstreamClient.post_json (coroutine)", ours_call))

    async def ours_callback_call() -> None:
        answered = asyncio.get_running_loop().create_future()
        ours.call(url, BODY, answered.set_result)
        assert "data" in await answered

    results.append(await measure("sonalyze UpstreamClient.call (callbacks, as the gateway uses it)", ours_callback_call))
    await ours.aclose()

    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), timeout=aiohttp.ClientTimeout(total=10.0))

    async def aiohttp_call() -> None:
        async with session.post(url + "/gateway/handle", data=orjson.dumps(BODY), headers={"content-type": "application/json"}) as answer:
            assert answer.status == 200 and "data" in orjson.loads(await answer.read())

    results.append(await measure(f"aiohttp {aiohttp.__version__} ClientSession.post", aiohttp_call))
    await session.close()

    for label in ("httpx (as installed)", "httpx (sniffio importable)"):
        if "sniffio importable" in label:
            sys.modules.setdefault("sniffio", types.SimpleNamespace(current_async_library=lambda: "asyncio"))
        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=256, max_keepalive_connections=256))

        async def httpx_call() -> None:
            answer = await client.post(url + "/gateway/handle", content=orjson.dumps(BODY), headers={"content-type": "application/json"})
            assert "data" in orjson.loads(answer.content)

        results.append(await measure(label, httpx_call))
        await client.aclose()
    return results


if __name__ == "__main__":
    os.sched_setaffinity(0, {0})
    port = free_port()
    upstream = start_upstream(port)
    try:
        for result in uvloop.run(main(f"http://127.0.0.1:{port}")):
            print(json.dumps(result))
    finally:
        upstream.terminate()
