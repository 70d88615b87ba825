"""Every route of every resource, on SQLite and PostgreSQL, through a real uvicorn server."""

from __future__ import annotations

import pytest

from sonalyze.storage.resources import RESOURCES
from tests.storage.conftest import MAX_BODY_MB
from tests.storage.records import CHANGES, create, fields, new_code, new_id

RESOURCE_NAMES = list(RESOURCES)


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    return error


async def test_healthz_reports_the_database(api):
    response = await api.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "reachable"}


@pytest.mark.parametrize("resource", RESOURCE_NAMES)
async def test_create_read_update_replace_delete(api, resource):
    body = {"id": new_id("rec"), **(await fields(api, resource))}
    created = await api.post(f"/v1/{resource}", json=body)
    assert created.status_code == 201, created.text
    record = created.json()
    for key, value in body.items():
        assert record[key] == value
    assert record["created_at"] == record["updated_at"]

    read = await api.get(f"/v1/{resource}/{body['id']}")
    assert read.status_code == 200 and read.json() == record

    patched = await api.patch(f"/v1/{resource}/{body['id']}", json=CHANGES[resource])
    assert patched.status_code == 200, patched.text
    assert patched.json() == {**record, **CHANGES[resource], "updated_at": patched.json()["updated_at"]}
    assert patched.json()["updated_at"] >= record["updated_at"]

    replaced = await api.put(f"/v1/{resource}/{body['id']}", json=body)  # back to the original content
    assert replaced.status_code == 200, replaced.text
    assert {key: replaced.json()[key] for key in body} == body
    assert replaced.json()["created_at"] == record["created_at"]

    listed = await api.get(f"/v1/{resource}", params={"limit": 500})
    assert body["id"] in [item["id"] for item in listed.json()["items"]] or listed.json()["next_offset"] is not None

    assert (await api.delete(f"/v1/{resource}/{body['id']}")).status_code == 204
    _error(await api.get(f"/v1/{resource}/{body['id']}"), 404, "not_found")
    _error(await api.delete(f"/v1/{resource}/{body['id']}"), 404, "not_found")
    _error(await api.patch(f"/v1/{resource}/{body['id']}", json=CHANGES[resource]), 404, "not_found")


@pytest.mark.parametrize("resource", RESOURCE_NAMES)
async def test_post_replay_is_idempotent_and_different_content_conflicts(api, resource):
    body = {"id": new_id("rec"), **(await fields(api, resource))}
    first = await api.post(f"/v1/{resource}", json=body)
    again = await api.post(f"/v1/{resource}", json=body)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == first.json()  # nothing rewritten, not even updated_at

    error = _error(await api.post(f"/v1/{resource}", json={**body, **CHANGES[resource]}), 409, "conflict")
    assert error["details"]["fields"] == list(CHANGES[resource])
    assert (await api.get(f"/v1/{resource}/{body['id']}")).json() == first.json()


async def test_post_without_id_generates_one(api):
    first = await api.post("/v1/devices", json={"name": "no id"})
    second = await api.post("/v1/devices", json={"name": "no id"})
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]
    assert (await api.get(f"/v1/devices/{first.json()['id']}")).json()["name"] == "no id"


async def test_put_creates_replaces_and_replays(api):
    lobby_id, code = new_id("lobby"), new_code()
    created = await api.put(f"/v1/lobbies/{lobby_id}", json={"code": code})
    assert created.status_code == 201 and created.json()["status"] == "open"
    replaced = await api.put(f"/v1/lobbies/{lobby_id}", json={"code": code, "status": "measuring"})
    assert replaced.status_code == 200 and replaced.json()["status"] == "measuring"
    replay = await api.put(f"/v1/lobbies/{lobby_id}", json={"id": lobby_id, "code": code, "status": "measuring"})
    assert replay.status_code == 200 and replay.json() == replaced.json()
    error = _error(await api.put(f"/v1/lobbies/{lobby_id}", json={"id": "other", "code": code}), 422, "validation_error")
    assert error["details"] == {"field": "id"}


async def test_equal_instants_in_other_zones_are_the_same_content(api):
    participant = await create(api, "participants", joined_at="2026-01-02T05:04:05.123456+02:00")
    assert participant["joined_at"] == "2026-01-02T03:04:05.123456+00:00"
    replay = {key: value for key, value in participant.items() if key not in ("created_at", "updated_at")}
    response = await api.post("/v1/participants", json={**replay, "joined_at": "2026-01-02T03:04:05.123456Z"})
    assert response.status_code == 200 and response.json() == participant


@pytest.mark.parametrize(
    ("resource", "body", "field"),
    [
        ("lobbies", {"status": "open"}, "code"),
        ("lobbies", {"code": "ab"}, "code"),
        ("lobbies", {"code": "ABCD", "colour": "red"}, "colour"),
        ("devices", {"id": "has space"}, "id"),
        ("devices", {"attributes": [1, 2]}, "attributes"),
        ("participants", {"lobby_id": "l", "device_id": "d", "joined_at": "2026-01-01T00:00:00"}, "joined_at"),
        ("analysis_outputs", {"measurement_id": "m"}, "metrics"),
        ("simulation_jobs", {"status": "Running!", "room": {}}, "status"),
    ],
)
async def test_invalid_bodies_are_422_naming_the_field(api, resource, body, field):
    error = _error(await api.post(f"/v1/{resource}", json=body), 422, "validation_error")
    assert field in [item["field"] for item in error["details"]["errors"]]


async def test_malformed_json_and_non_finite_numbers_are_422(api):
    _error(await api.post("/v1/devices", content=b'{"name": '), 422, "validation_error")
    _error(await api.post("/v1/devices", content=b'{"attributes": {"gain_db": NaN}}'), 422, "validation_error")
    _error(await api.post("/v1/devices", content=b'{"attributes": {"gain_db": Infinity}}'), 422, "validation_error")


async def test_nul_characters_are_422_on_every_backend(api):
    """PostgreSQL's text and jsonb cannot hold U+0000: refused before the database (found by fuzzing)."""
    for body in ({"model": "a\x00b"}, {"attributes": {"k\x00": 1}}, {"attributes": {"k": ["\x00"]}}):
        _error(await api.post("/v1/devices", json=body), 422, "validation_error")
        _error(await api.put("/v1/devices/nul-device", json=body), 422, "validation_error")
    device = await create(api, "devices")
    _error(await api.patch(f"/v1/devices/{device['id']}", json={"attributes": {"deep": {"x": "\x00"}}}), 422, "validation_error")
    assert (await api.get("/v1/devices/nul-device")).status_code == 404  # nothing was written


async def test_patch_refuses_null_for_required_fields_and_unknown_fields(api):
    lobby = await create(api, "lobbies")
    error = _error(await api.patch(f"/v1/lobbies/{lobby['id']}", json={"code": None}), 422, "validation_error")
    assert "code" in error["message"]
    _error(await api.patch(f"/v1/lobbies/{lobby['id']}", json={"nope": 1}), 422, "validation_error")
    cleared = await api.patch(f"/v1/lobbies/{lobby['id']}", json={"room": None})
    assert cleared.status_code == 200 and cleared.json()["room"] is None
    unchanged = await api.patch(f"/v1/lobbies/{lobby['id']}", json={})
    assert unchanged.status_code == 200 and unchanged.json()["updated_at"] == cleared.json()["updated_at"]


async def test_invalid_path_id_and_query_are_422(api):
    _error(await api.get("/v1/devices/" + "x" * 65), 422, "validation_error")
    _error(await api.get("/v1/devices", params={"limit": 0}), 422, "validation_error")
    _error(await api.get("/v1/devices", params={"limit": 501}), 422, "validation_error")
    _error(await api.get("/v1/devices", params={"offset": -1}), 422, "validation_error")
    _error(await api.get("/v1/measurements", params={"lobby": "x"}), 422, "validation_error")


async def test_unknown_parent_is_422_missing_reference(api):
    device = await create(api, "devices")
    error = _error(
        await api.post("/v1/participants", json={"lobby_id": "no-such-lobby", "device_id": device["id"]}),
        422,
        "missing_reference",
    )
    assert error["details"] == {"field": "lobby_id", "resource": "lobbies", "id": "no-such-lobby"}
    error = _error(await api.put(f"/v1/analysis_outputs/{new_id('out')}", json={"measurement_id": "gone", "metrics": {}}), 422, "missing_reference")
    assert error["details"]["resource"] == "measurements"
    participant = await create(api, "participants")
    _error(await api.patch(f"/v1/participants/{participant['id']}", json={"lobby_id": "gone"}), 422, "missing_reference")


async def test_lobby_code_is_unique_and_can_be_looked_up(api):
    lobby = await create(api, "lobbies")
    error = _error(await api.post("/v1/lobbies", json={"id": new_id("lobby"), "code": lobby["code"]}), 409, "conflict")
    assert error["details"] == {"fields": {"code": lobby["code"]}}
    other = await create(api, "lobbies")
    _error(await api.patch(f"/v1/lobbies/{other['id']}", json={"code": lobby["code"]}), 409, "conflict")
    _error(await api.put(f"/v1/lobbies/{other['id']}", json={"code": lobby["code"]}), 409, "conflict")

    found = await api.get(f"/v1/lobbies/by-code/{lobby['code']}")
    assert found.status_code == 200 and found.json() == lobby
    _error(await api.get("/v1/lobbies/by-code/NOSUCHCODE"), 404, "not_found")


async def test_a_closed_lobby_frees_its_code(api):
    first = await create(api, "lobbies")
    code = first["code"]
    _error(await api.post("/v1/lobbies", json={"id": new_id("lobby"), "code": code}), 409, "conflict")
    assert (await api.patch(f"/v1/lobbies/{first['id']}", json={"status": "closed"})).status_code == 200

    second = await api.post("/v1/lobbies", json={"id": new_id("lobby"), "code": code})
    assert second.status_code == 201
    assert (await api.get(f"/v1/lobbies/by-code/{code}")).json()["id"] == second.json()["id"]
    error = _error(await api.patch(f"/v1/lobbies/{first['id']}", json={"status": "open"}), 409, "conflict")
    assert error["details"] == {"fields": {"code": code}}

    assert (await api.patch(f"/v1/lobbies/{second.json()['id']}", json={"status": "closed"})).status_code == 200
    third = await api.put(f"/v1/lobbies/{new_id('lobby')}", json={"code": code, "status": "closed"})
    assert third.status_code == 201
    latest = (await api.get(f"/v1/lobbies/by-code/{code}")).json()
    assert latest["id"] == third.json()["id"] and latest["status"] == "closed"


async def test_a_device_joins_a_lobby_once(api):
    participant = await create(api, "participants")
    duplicate = {"id": new_id("part"), "lobby_id": participant["lobby_id"], "device_id": participant["device_id"]}
    error = _error(await api.post("/v1/participants", json=duplicate), 409, "conflict")
    assert error["details"]["fields"] == {"lobby_id": participant["lobby_id"], "device_id": participant["device_id"]}


async def test_pagination_walks_every_record_once_in_creation_order(api):
    measurement = await create(api, "measurements")
    other = await create(api, "measurements")
    created = [(await create(api, "analysis_outputs", measurement_id=measurement["id"]))["id"] for _ in range(7)]
    await create(api, "analysis_outputs", measurement_id=other["id"])

    seen, offset, pages = [], 0, []
    while offset is not None:
        response = await api.get("/v1/analysis_outputs", params={"measurement_id": measurement["id"], "limit": 3, "offset": offset})
        assert response.status_code == 200
        page = response.json()
        assert page["limit"] == 3 and page["offset"] == offset
        pages.append(len(page["items"]))
        seen += [item["id"] for item in page["items"]]
        offset = page["next_offset"]
    assert pages == [3, 3, 1]
    assert seen == created


@pytest.mark.parametrize(
    ("child", "parent_field", "parent"),
    [
        ("participants", "lobby_id", "lobbies"),
        ("measurements", "lobby_id", "lobbies"),
        ("analysis_outputs", "measurement_id", "measurements"),
        ("simulation_results", "simulation_job_id", "simulation_jobs"),
    ],
)
async def test_lists_filter_by_parent(api, child, parent_field, parent):
    mine, theirs = await create(api, parent), await create(api, parent)
    expected = [(await create(api, child, **{parent_field: mine["id"]}))["id"] for _ in range(2)]
    await create(api, child, **{parent_field: theirs["id"]})
    page = (await api.get(f"/v1/{child}", params={parent_field: mine["id"]})).json()
    assert [item["id"] for item in page["items"]] == expected
    assert page["next_offset"] is None


async def test_on_delete_cascades_owned_records_and_detaches_the_rest(api):
    host = await create(api, "devices")
    lobby = await create(api, "lobbies", host_device_id=host["id"])
    participant = await create(api, "participants", lobby_id=lobby["id"])
    measurement = await create(api, "measurements", lobby_id=lobby["id"])
    output = await create(api, "analysis_outputs", measurement_id=measurement["id"])
    job = await create(api, "simulation_jobs", lobby_id=lobby["id"])
    result = await create(api, "simulation_results", simulation_job_id=job["id"])

    assert (await api.delete(f"/v1/devices/{host['id']}")).status_code == 204
    assert (await api.get(f"/v1/lobbies/{lobby['id']}")).json()["host_device_id"] is None

    assert (await api.delete(f"/v1/lobbies/{lobby['id']}")).status_code == 204
    assert (await api.get(f"/v1/participants/{participant['id']}")).status_code == 404
    assert (await api.get(f"/v1/measurements/{measurement['id']}")).json()["lobby_id"] is None
    assert (await api.get(f"/v1/simulation_jobs/{job['id']}")).json()["lobby_id"] is None

    assert (await api.delete(f"/v1/measurements/{measurement['id']}")).status_code == 204
    assert (await api.get(f"/v1/analysis_outputs/{output['id']}")).status_code == 404
    assert (await api.delete(f"/v1/simulation_jobs/{job['id']}")).status_code == 204
    assert (await api.get(f"/v1/simulation_results/{result['id']}")).status_code == 404


def _curves(size_bytes: int) -> dict:
    """A curve whose JSON is about ``size_bytes`` long (each ``-3.5,`` is 5 bytes)."""
    return {"frequency_response_db": [-3.5] * (size_bytes // 5)}


async def test_large_payloads_up_to_the_limit_are_stored_and_larger_ones_are_413(api):
    limit_bytes = int(MAX_BODY_MB * 1024 * 1024)
    measurement = await create(api, "measurements")
    big = {"id": new_id("out"), "measurement_id": measurement["id"], "metrics": {"sti": 0.5}, "curves": _curves(int(limit_bytes * 0.8))}
    stored = await api.post("/v1/analysis_outputs", json=big)
    assert stored.status_code == 201, stored.text[:300]
    assert (await api.get(f"/v1/analysis_outputs/{big['id']}")).json()["curves"] == big["curves"]

    too_big = {**big, "id": new_id("out"), "curves": _curves(int(limit_bytes * 1.3))}
    error = _error(await api.post("/v1/analysis_outputs", json=too_big), 413, "payload_too_large")
    assert error["details"] == {"max_bytes": limit_bytes}

    async def chunks():
        for _ in range(20):
            yield b" " * (limit_bytes // 10)

    _error(await api.post("/v1/analysis_outputs", content=chunks()), 413, "payload_too_large")
    assert (await api.get(f"/v1/analysis_outputs/{too_big['id']}")).status_code == 404
