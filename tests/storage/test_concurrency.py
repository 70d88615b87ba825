"""Many writers at once on the same lobby: nothing lost, nothing doubled (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections import Counter

from tests.storage.records import create, new_id


async def test_fifty_participants_join_one_lobby_concurrently(api):
    lobby = await create(api, "lobbies")
    devices = [await create(api, "devices") for _ in range(50)]
    bodies = [{"id": new_id("part"), "lobby_id": lobby["id"], "device_id": device["id"]} for device in devices]
    responses = await asyncio.gather(*(api.post("/v1/participants", json=body) for body in bodies))
    assert [response.status_code for response in responses] == [201] * 50

    page = (await api.get("/v1/participants", params={"lobby_id": lobby["id"], "limit": 100})).json()
    assert sorted(item["id"] for item in page["items"]) == sorted(body["id"] for body in bodies)
    assert sorted(item["device_id"] for item in page["items"]) == sorted(device["id"] for device in devices)


async def test_the_same_record_sent_twenty_times_at_once_is_stored_once(api):
    lobby = await create(api, "lobbies")
    body = {"id": new_id("meas"), "lobby_id": lobby["id"], "kind": "sweep"}
    responses = await asyncio.gather(*(api.post("/v1/measurements", json=body) for _ in range(20)))
    assert Counter(response.status_code for response in responses) == {201: 1, 200: 19}
    assert len({response.json()["created_at"] for response in responses}) == 1
    page = (await api.get("/v1/measurements", params={"lobby_id": lobby["id"]})).json()
    assert [item["id"] for item in page["items"]] == [body["id"]]


async def test_one_device_joining_the_same_lobby_from_ten_requests_gets_one_seat(api):
    lobby, device = await create(api, "lobbies"), await create(api, "devices")
    bodies = [{"id": new_id("part"), "lobby_id": lobby["id"], "device_id": device["id"]} for _ in range(10)]
    responses = await asyncio.gather(*(api.post("/v1/participants", json=body) for body in bodies))
    assert Counter(response.status_code for response in responses) == {201: 1, 409: 9}
    assert {response.json()["error"]["code"] for response in responses if response.status_code == 409} == {"conflict"}
    page = (await api.get("/v1/participants", params={"lobby_id": lobby["id"]})).json()
    assert len(page["items"]) == 1


async def test_ten_lobbies_racing_for_one_code_leave_one_winner(api):
    code = new_id("x")[-8:].upper().replace("-", "0")
    bodies = [{"id": new_id("lobby"), "code": code} for _ in range(10)]
    responses = await asyncio.gather(*(api.post("/v1/lobbies", json=body) for body in bodies))
    assert Counter(response.status_code for response in responses) == {201: 1, 409: 9}
    winner = next(response.json() for response in responses if response.status_code == 201)
    assert (await api.get(f"/v1/lobbies/by-code/{code}")).json()["id"] == winner["id"]


async def test_concurrent_patches_of_different_fields_all_land(api):
    host = await create(api, "devices")
    lobby = await create(api, "lobbies")
    changes = [
        {"status": "measuring"},
        {"room": {"type": "shoebox", "dimensions_m": [7.0, 5.0, 3.0]}},
        {"settings": {"sweep_s": 3.0}},
        {"host_device_id": host["id"]},
    ]
    responses = await asyncio.gather(*(api.patch(f"/v1/lobbies/{lobby['id']}", json=change) for change in changes))
    assert [response.status_code for response in responses] == [200] * 4
    final = (await api.get(f"/v1/lobbies/{lobby['id']}")).json()
    for change in changes:
        assert {key: final[key] for key in change} == change
