"""A simulation's pushes with ``GATEWAY_URL`` naming several gateways: a stopped one is passed over."""

from __future__ import annotations

import asyncio
import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from sonalyze.simulation.pushes import SimulationPushes
from tests.support.servers import INTERNAL_TOKEN, ThreadedServer, free_port


def _recording_gateway(received: list[dict]) -> FastAPI:
    app = FastAPI()
    app.state.requests = 0

    @app.post("/internal/broadcast")
    async def broadcast(request: Request) -> JSONResponse:
        app.state.requests += 1
        received.append(json.loads(await request.body()))
        return JSONResponse({"delivered": 1})

    return app


async def test_pushes_spread_over_the_gateways_and_pass_over_a_stopped_one() -> None:
    received: list[dict] = []
    stopped = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connections are refused
    fractions = [index / 10 for index in range(1, 7)]
    with ThreadedServer(_recording_gateway(received)) as first, ThreadedServer(_recording_gateway(received)) as second:
        pushes = SimulationPushes(f"{first.url},{stopped},{second.url}", INTERNAL_TOKEN)
        try:
            for fraction in fractions:
                pushes.send("dev-1", "simulation.progress", {"id": "sim-1", "fraction": fraction, "message": ""})
            for _ in range(300):
                if len(received) == len(fractions):
                    break
                await asyncio.sleep(0.01)
        finally:
            await pushes.aclose()
        by_gateway = (first.app.state.requests, second.app.state.requests)
    assert [push["data"]["fraction"] for push in received] == fractions  # one queue: in order, none lost
    assert all(push["targets"] == {"device_ids": ["dev-1"]} for push in received)
    assert all(by_gateway), by_gateway  # both live gateways took some
