"""Two lobby replicas on one PostgreSQL push one lobby's changes in ``seq`` order, each once, and never the
next before the gateway acknowledged the previous one — checked by a recording gateway that answers slowly."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import httpx
import pytest
from fastapi import FastAPI, Request

from sonalyze.common.json import JSONResponse
from sonalyze.lobby.main import create_app as create_lobby
from sonalyze.services import SERVICES
from tests.lobby.clients import Handle
from tests.lobby.conftest import lobby_settings
from tests.support.servers import SERVICE_HEADERS, ThreadedServer, free_port

pytestmark = [pytest.mark.postgres]

LOBBIES = 3
GUESTS = 6
"""Each guest joins, then renames itself: two changes per guest, sent to alternating replicas at once."""


class RecordingGateway:
    """``POST /internal/broadcast`` and ``/internal/subscriptions`` as the gateway answers them, each after
    a random delay of up to 15 ms: the ``seq`` of every ``lobby.updated`` in arrival order per lobby, and
    every push that arrived while another of its lobby was still unanswered."""

    def __init__(self) -> None:
        self.seqs: dict[str, list[int]] = defaultdict(list)
        self.in_flight: dict[str, int] = {}
        self.overlaps: list[tuple[str, int, int]] = []
        self.app = FastAPI()
        self.app.add_api_route("/internal/broadcast", self.broadcast, methods=["POST"])
        self.app.add_api_route("/internal/subscriptions", self.subscriptions, methods=["POST"])

    async def broadcast(self, request: Request) -> JSONResponse:
        body = await request.json()
        data = body["data"]
        if body["event"] != "lobby.updated":
            return JSONResponse({"delivered": 0})
        lobby_id, seq = data["lobby_id"], data["seq"]
        if lobby_id in self.in_flight:
            self.overlaps.append((lobby_id, self.in_flight[lobby_id], seq))
        self.in_flight[lobby_id] = seq
        self.seqs[lobby_id].append(seq)
        await asyncio.sleep(random.uniform(0, 0.015))
        del self.in_flight[lobby_id]
        return JSONResponse({"delivered": len(body["targets"]["device_ids"])})

    async def subscriptions(self, request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"subscribed": 0})


async def test_one_lobbys_pushes_keep_their_seq_order_across_two_replicas(postgres_url: str) -> None:
    recorder = RecordingGateway()
    settings = lobby_settings(postgres_url, gateway_url="", measurement_url=f"http://127.0.0.1:{free_port()}")
    with ThreadedServer(recorder.app) as gateway:
        settings = settings.model_copy(update={"gateway_url": gateway.url})
        options = SERVICES["lobby"].uvicorn_options
        with ThreadedServer(create_lobby(settings), **options) as first, ThreadedServer(create_lobby(settings), **options) as second:
            async with (
                httpx.AsyncClient(base_url=first.url, timeout=60, headers=SERVICE_HEADERS) as a,
                httpx.AsyncClient(base_url=second.url, timeout=60, headers=SERVICE_HEADERS) as b,
            ):
                replicas = [Handle(a), Handle(b)]
                lobbies = [await replicas[n % 2].call("lobby.create", {}, f"host-{n}") for n in range(LOBBIES)]

                async def guest(lobby: dict, n: int) -> None:
                    replica = replicas[n % 2]
                    await replica.call("lobby.join", {"code": lobby["code"]}, f"guest-{n}")
                    await replicas[(n + 1) % 2].call("lobby.join", {"code": lobby["code"], "device_name": f"Guest {n}"}, f"guest-{n}")

                await asyncio.gather(*(guest(lobby, n) for lobby in lobbies for n in range(GUESTS)))

    assert recorder.overlaps == []  # a lobby's next push waited for the previous one's answer
    for lobby in lobbies:
        # created (seq 1, announced by the answer, not pushed), then a join and a rename per guest: every
        # seq pushed once, in order
        assert recorder.seqs[lobby["lobby_id"]] == list(range(2, 2 + 2 * GUESTS)), lobby["lobby_id"]


async def test_readiness_follows_the_database() -> None:
    from tests.support import infra

    url, name = await infra.create_postgres_database()
    try:
        settings = lobby_settings(url, measurement_url=f"http://127.0.0.1:{free_port()}")
        with ThreadedServer(create_lobby(settings), **SERVICES["lobby"].uvicorn_options) as lobby:
            async with httpx.AsyncClient(base_url=lobby.url, timeout=30) as http:  # no token: a probe has none
                assert (await http.get("/readyz")).json() == {"status": "ready"}
                await infra.drop_postgres_database(name)  # WITH (FORCE): the lobby's connections are cut
                answer = await http.get("/readyz")
                assert answer.status_code == 503 and answer.json()["error"]["code"] == "not_ready"
                assert (await http.get("/healthz")).status_code == 200  # alive: no restart for a database outage
    finally:
        await infra.drop_postgres_database(name)


async def test_pushes_go_to_several_gateways_and_pass_over_a_stopped_one(postgres_url: str) -> None:
    """``GATEWAY_URL=http://a,http://b``: pushes are spread over both; with one stopped every push still arrives."""
    recorders = [RecordingGateway(), RecordingGateway()]
    with ThreadedServer(recorders[0].app) as first, ThreadedServer(recorders[1].app) as second:
        settings = lobby_settings(
            postgres_url, gateway_url=f"{first.url},{second.url}", measurement_url=f"http://127.0.0.1:{free_port()}"
        )
        with ThreadedServer(create_lobby(settings), **SERVICES["lobby"].uvicorn_options) as lobby_server:
            async with httpx.AsyncClient(base_url=lobby_server.url, timeout=60, headers=SERVICE_HEADERS) as http:
                handle = Handle(http)
                lobby = await handle.call("lobby.create", {}, "host")
                for n in range(4):
                    await handle.call("lobby.join", {"code": lobby["code"]}, f"guest-{n}")
                seen = [list(recorder.seqs[lobby["lobby_id"]]) for recorder in recorders]
                assert seen[0] and seen[1] and sorted(seen[0] + seen[1]) == [2, 3, 4, 5]  # balanced, each once
                first.stop()
                for n in range(4, 8):
                    await handle.call("lobby.join", {"code": lobby["code"]}, f"guest-{n}")
    assert recorders[1].seqs[lobby["lobby_id"]][-4:] == [6, 7, 8, 9]  # none lost to the stopped gateway
    assert recorders[0].seqs[lobby["lobby_id"]] == seen[0]
