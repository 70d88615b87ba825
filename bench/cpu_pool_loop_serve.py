"""A uvicorn app that warms a CpuPool up in a task at start, as the services do (measurement/service.py
``start``): seconds until uvicorn has started and until /healthz answers, in a fresh process (its first
pool). ``python bench/cpu_pool_loop_serve.py PORT``; run by bench/cpu_pool_loop.sh."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sonalyze.common.cpu_pool import CpuPool  # noqa: E402
from tests.support.servers import ThreadedServer  # noqa: E402


@contextlib.asynccontextmanager
async def lifespan(_app):
    pool = CpuPool(1, 4)
    warm_up = asyncio.create_task(pool.warm_up())
    yield
    await asyncio.gather(warm_up, return_exceptions=True)
    await pool.close()


async def healthz(_request):
    return PlainTextResponse("ok")


if __name__ == "__main__":
    port = int(sys.argv[1])
    started_at = time.perf_counter()
    server = ThreadedServer(Starlette(routes=[Route("/healthz", healthz)], lifespan=lifespan), port=port).start()
    started_s = time.perf_counter() - started_at
    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).raise_for_status()
    print(f"uvicorn_started_s {started_s:.2f} healthz_s {time.perf_counter() - started_at:.2f}")
    server.stop()
