"""The ``/gateway/handle`` contract, end to end: the gateway against each real service (``sonalyze serve``,
five processes, not a stub), over a WebSocket — integer and string request ids come back as sent (the
services once refused integers: 422 → ``upstream_error``), unknown events and bad data are each service's
own error, and the connection keeps working after each."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.servers import Backend


@pytest.fixture(scope="module")
def backend(tmp_path_factory) -> Iterator[Backend]:
    running = Backend(Path(tmp_path_factory.mktemp("contract")), env={"ALLOW_INSECURE_DEVICE_IDS": "1"}).start()
    yield running
    running.stop()


async def ask(ws: ClientConnection, event: str, data: dict[str, Any], request_id: str | int) -> dict[str, Any]:
    await ws.send(json.dumps({"event": event, "data": data, "request_id": request_id}))
    while True:
        message = json.loads(await ws.recv())
        if message.get("request_id") == request_id and message.get("event") == event:
            return message


# Per service: (event, data) answered with data; (event, data) that is bad data there, and the code it
# gets (the simulation answers events with its HTTP codes, docs/simulation.md); an unknown event it is routed.
SERVICES = {
    "lobby": (("lobby.create", {"name": "Contract room"}), ("lobby.create", {"name": ["not", "text"]}, "bad_request"), "lobby.no_such_event"),
    "measurement": (None, ("measurement.get_job", {}, "bad_request"), "analysis.no_such_event"),
    "simulation": (("simulation.health", {}), ("simulation.run", {"room": 5}, "validation_error"), "simulation.no_such_event"),
}


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_each_service_answers_the_gateway_by_the_contract(backend: Backend, service: str) -> None:
    good, (bad_event, bad_data, bad_code), unknown = SERVICES[service]
    async with connect(f"{backend.ws_url}/ws?device_id=contract-{service}") as ws:
        for request_id in (7, "r-7", 0):
            if good is not None:
                answer = await ask(ws, *good, request_id)
                assert answer["type"] == "response", answer
                assert answer["request_id"] == request_id and type(answer["request_id"]) is type(request_id)
            refused = await ask(ws, bad_event, bad_data, request_id)
            assert refused["type"] == "error" and refused["error"]["code"] == bad_code, refused
            assert refused["request_id"] == request_id and type(refused["request_id"]) is type(request_id)
            assert refused["error"]["details"]["errors"], refused  # names the fields, from the service itself
            strange = await ask(ws, unknown, {}, request_id)
            assert strange["type"] == "error" and strange["error"]["code"] == "unknown_event", strange
            assert strange["request_id"] == request_id
