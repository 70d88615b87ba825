"""The storage fast path against the routes it shadows: the same requests to one real server on one
PostgreSQL database, once through the fast path and once with it switched off (``fast_connections``
``None``: every request goes to FastAPI), give byte-identical status, content type and body — the
record's own id and timestamps, which differ between two writes, put in placeholders first."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from sonalyze.storage.main import create_app
from sonalyze.storage.settings import StorageSettings
from tests.support import infra
from tests.support.servers import INTERNAL_TOKEN, SERVICE_HEADERS, ThreadedServer


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    url, name = asyncio.run(infra.create_postgres_database())
    try:
        settings = StorageSettings(database_url=url, internal_auth_token=INTERNAL_TOKEN)
        with ThreadedServer(create_app(settings)) as running:
            yield running
    finally:
        asyncio.run(infra.drop_postgres_database(name))


def canonical(response: httpx.Response, ids: tuple[str, ...]) -> tuple[int, str | None, bytes]:
    """(status, content type, body with the record's id, timestamps and ``ids`` as placeholders)."""
    body = response.content
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict):
        for field in ("created_at", "updated_at", "id"):
            if isinstance(document.get(field), str):
                body = body.replace(document[field].encode(), f"<{field}>".encode())
    for index, record_id in enumerate(ids):
        body = body.replace(record_id.encode(), b"<id%d>" % index)
    return response.status_code, response.headers.get("content-type"), body


def both_ways(server: ThreadedServer, make: Any) -> list[tuple[int, str | None, bytes]]:
    """``make(http, ids)`` run with the fast path on, then off, each with fresh ids."""
    results = []
    for fast in (True, False):
        state = server.app.state
        kept = state.fast_connections
        if not fast:
            state.fast_connections = None
        try:
            ids = (uuid.uuid4().hex, uuid.uuid4().hex)
            with httpx.Client(base_url=server.url, headers=SERVICE_HEADERS, timeout=30) as http:
                measurement = http.post("/v1/measurements", json={"id": ids[1], "kind": "sweep"})
                assert measurement.status_code == 201, measurement.text
                results.append(canonical(make(http, ids), ids))
        finally:
            state.fast_connections = kept
    return results


def output(measurement_id: str, **fields: Any) -> dict[str, Any]:
    return {"measurement_id": measurement_id, "metrics": {"t20_s": [0.61, None], "sti": 0.62}, **fields}


CASES = {
    "create with an id": lambda http, ids: http.post("/v1/analysis_outputs", json=output(ids[1], id=ids[0])),
    "create with a generated id": lambda http, ids: http.post("/v1/analysis_outputs", json=output(ids[1])),
    "create with nulls": lambda http, ids: http.post("/v1/analysis_outputs", json={"measurement_id": ids[1], "id": ids[0]}),
    "put a new record": lambda http, ids: http.put(f"/v1/analysis_outputs/{ids[0]}", json=output(ids[1])),
    "read a stored record": lambda http, ids: (
        http.post("/v1/analysis_outputs", json=output(ids[1], id=ids[0])),
        http.get(f"/v1/analysis_outputs/{ids[0]}"),
    )[1],
    "read a missing record": lambda http, ids: http.get(f"/v1/analysis_outputs/{ids[0]}"),
    "a field of the wrong type": lambda http, ids: http.post("/v1/analysis_outputs", json={"measurement_id": 5}),
    "not JSON": lambda http, ids: http.post("/v1/analysis_outputs", content=b"{not json", headers={"content-type": "application/json"}),
    "a missing parent": lambda http, ids: http.post("/v1/analysis_outputs", json=output("no-such-measurement", id=ids[0])),
    "the same id with other content": lambda http, ids: (
        http.post("/v1/analysis_outputs", json=output(ids[1], id=ids[0])),
        http.post("/v1/analysis_outputs", json=output(ids[1], id=ids[0], metrics={"sti": 0.1})),
    )[1],
    "an idempotent replay": lambda http, ids: (
        http.post("/v1/analysis_outputs", json=output(ids[1], id=ids[0])),
        http.post("/v1/analysis_outputs", json=output(ids[1], id=ids[0])),
    )[1],
    "put with another id in the body": lambda http, ids: http.put(f"/v1/analysis_outputs/{ids[0]}", json=output(ids[1], id="other")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_fast_path_answers_byte_for_byte_as_the_routes(server: ThreadedServer, case: str) -> None:
    through_fast_path, through_routes = both_ways(server, CASES[case])
    assert through_fast_path == through_routes
