"""The hot-route fast path on PostgreSQL: it answers valid creates and found reads itself, exactly as
the routes would, and hands everything else to the routes with the body it read."""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from sqlalchemy.engine import make_url

from sonalyze.storage import migrate
from sonalyze.storage.db import make_engine
from sonalyze.storage.fast_path import FastRecords, Inserts, _BatchFailed, _HandOver, open_connections
from tests.support.servers import free_port

MAX_BODY_BYTES = 4096


@pytest.fixture
async def fast(postgres_url) -> AsyncIterator[tuple[FastRecords, list[dict[str, Any]], str]]:
    """``FastRecords`` over an inner app that records what reached it (and answers 418)."""
    engine = make_engine(postgres_url)
    await migrate.upgrade(engine)
    await engine.dispose()
    handed_over: list[dict[str, Any]] = []

    async def routes(scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        handed_over.append({"method": scope["method"], "path": scope["path"], "body": body})
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    state = types.SimpleNamespace(fast_connections=open_connections(postgres_url, size=2))
    app = FastRecords(routes, state=state, max_body_bytes=MAX_BODY_BYTES)
    try:
        yield app, handed_over, postgres_url
    finally:
        await state.fast_connections.close()


async def call(app: FastRecords, method: str, path: str, body: bytes = b"", *, length: bool = True) -> tuple[int, bytes]:
    headers = [(b"content-length", str(len(body)).encode())] if length else [(b"transfer-encoding", b"chunked")]
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], b"".join(message.get("body", b"") for message in sent[1:])


async def parents(url: str) -> str:
    """A measurement to hang analysis outputs on, written with plain SQL."""
    connection = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await connection.execute(
            "INSERT INTO measurements (id, kind, status, parameters, created_at, updated_at) "
            "VALUES ('m1', 'sweep', 'pending', '{}', now(), now())"
        )
        return "m1"
    finally:
        await connection.close()


def output(measurement_id: str, **extra: Any) -> dict[str, Any]:
    return {"measurement_id": measurement_id, "metrics": {"t20_s": [0.61, 0.5], "sti": 0.62}, **extra}


async def test_valid_create_and_read_are_answered_without_the_routes(fast):
    app, handed_over, url = fast
    measurement_id = await parents(url)
    status, content = await call(app, "POST", "/v1/analysis_outputs", orjson.dumps(output(measurement_id, id="o1")))
    assert status == 201
    created = orjson.loads(content)
    assert list(created) == [
        "id", "measurement_id", "speaker_id", "microphone_id", "parameters", "metrics", "curves", "created_at", "updated_at",
    ]
    assert created["metrics"] == {"t20_s": [0.61, 0.5], "sti": 0.62}
    assert (created["parameters"], created["curves"], created["speaker_id"]) == ({}, None, None)
    assert created["created_at"] == created["updated_at"] and created["created_at"].endswith("+00:00")

    status, content = await call(app, "GET", "/v1/analysis_outputs/o1")
    assert (status, orjson.loads(content)) == (200, created)

    status, content = await call(app, "PUT", "/v1/analysis_outputs/o2", orjson.dumps(output(measurement_id)))
    assert status == 201 and orjson.loads(content)["id"] == "o2"
    status, content = await call(app, "POST", "/v1/analysis_outputs", orjson.dumps(output(measurement_id)))
    assert status == 201 and orjson.loads(content)["id"] not in ("o1", "o2")
    assert handed_over == []


async def test_a_missing_payload_is_stored_as_json_null_like_the_routes_store_it(fast):
    app, _, url = fast
    measurement_id = await parents(url)
    await call(app, "POST", "/v1/analysis_outputs", orjson.dumps(output(measurement_id, id="o1")))
    connection = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        assert await connection.fetchval("SELECT jsonb_typeof(curves) FROM analysis_outputs WHERE id = 'o1'") == "null"
    finally:
        await connection.close()


@pytest.mark.parametrize(
    ("method", "path", "body", "length"),
    [
        ("POST", "/v1/analysis_outputs", b"{not json", True),
        ("POST", "/v1/analysis_outputs", b'{"measurement_id": "m1", "metrics": {"x": NaN}}', True),
        ("POST", "/v1/analysis_outputs", b'{"measurement_id": "m1", "metrics": {}, "unknown": 1}', True),
        ("POST", "/v1/analysis_outputs", b'{"measurement_id": "nowhere", "metrics": {}}', True),  # missing parent
        ("POST", "/v1/analysis_outputs", b'{"id": "taken", "measurement_id": "m1", "metrics": {}}', True),  # replay
        ("PUT", "/v1/analysis_outputs/taken", b'{"measurement_id": "m1", "metrics": {"x": 1}}', True),  # replace
        ("PUT", "/v1/analysis_outputs/a", b'{"id": "b", "measurement_id": "m1", "metrics": {}}', True),
        ("POST", "/v1/analysis_outputs", b'{"measurement_id": "m1", "metrics": {}}', False),  # chunked
        ("POST", "/v1/analysis_outputs", b'{"measurement_id": "m1", "metrics": {"pad": "' + b"x" * MAX_BODY_BYTES + b'"}}', True),
        ("GET", "/v1/analysis_outputs/unknown", b"", True),
        ("GET", "/v1/analysis_outputs/bad%20id", b"", True),
        ("PATCH", "/v1/analysis_outputs/taken", b'{"speaker_id": "s"}', True),
        ("GET", "/v1/analysis_outputs", b"", True),
        ("POST", "/v1/nothing", b"{}", True),
    ],
)
async def test_everything_else_goes_to_the_routes_with_its_body(fast, method, path, body, length):
    app, handed_over, url = fast
    await parents(url)
    await call(app, "POST", "/v1/analysis_outputs", b'{"id": "taken", "measurement_id": "m1", "metrics": {"x": 0}}')
    status, _ = await call(app, method, path, body, length=length)
    assert status == 418
    assert handed_over == [{"method": method, "path": path, "body": body}]


async def test_a_database_that_does_not_answer_goes_to_the_routes(fast):
    app, handed_over, _ = fast
    await app.state.fast_connections.close()
    app.state.fast_connections = open_connections(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x", size=1)
    body = orjson.dumps(output("m1"))
    assert (await call(app, "POST", "/v1/analysis_outputs", body))[0] == 418
    assert (await call(app, "GET", "/v1/analysis_outputs/o1"))[0] == 418
    assert [item["method"] for item in handed_over] == ["POST", "GET"]


def test_sqlite_has_no_fast_path():
    assert open_connections("sqlite+aiosqlite:///x.db", size=1) is None


async def test_concurrent_creates_share_one_commit_and_a_bad_row_fails_only_itself(fast):
    app, handed_over, url = fast
    measurement_id = await parents(url)
    await call(app, "POST", "/v1/analysis_outputs", orjson.dumps(output(measurement_id, id="taken")))
    bodies = [orjson.dumps(output(measurement_id, id=f"o{index}")) for index in range(9)]
    bodies.insert(4, orjson.dumps(output(measurement_id, id="taken", speaker_id="other")))
    answers = await asyncio.gather(*(call(app, "POST", "/v1/analysis_outputs", body) for body in bodies))
    assert [status for status, _ in answers] == [201] * 4 + [418] + [201] * 5
    assert [item["body"] for item in handed_over] == [bodies[4]]
    connection = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        assert await connection.fetchval("SELECT count(*) FROM analysis_outputs") == 10
        assert await connection.fetchval("SELECT speaker_id FROM analysis_outputs WHERE id = 'taken'") is None
    finally:
        await connection.close()


class _RecordingConnections:
    """Stands in for :class:`Connections`: one connection, whose ``executemany`` is recorded and can fail."""

    def __init__(self, *, fail: bool = False) -> None:
        self.batches: list[list[list[Any]]] = []
        self.fail = fail
        self.lock = asyncio.Lock()

    async def use(self, work):
        async with self.lock:
            return await work(self)

    async def executemany(self, statement: str, rows: list[list[Any]]) -> None:
        self.batches.append(rows)
        await asyncio.sleep(0.01)
        if self.fail:
            raise asyncpg.UniqueViolationError("duplicate key")


async def test_rows_waiting_for_a_connection_go_in_one_batch():
    connections = _RecordingConnections()
    inserts = Inserts(connections, "INSERT ...")
    await asyncio.gather(*(inserts.insert([index]) for index in range(5)))
    assert connections.batches == [[[0], [1], [2], [3], [4]]]
    first = asyncio.ensure_future(inserts.insert(["a"]))
    await asyncio.sleep(0)  # "a" holds the connection; the next ones wait for it together
    await asyncio.gather(first, *(inserts.insert([index]) for index in range(Inserts.MAX_ROWS + 3)))
    assert [len(batch) for batch in connections.batches[1:]] == [1, Inserts.MAX_ROWS, 3]


async def test_a_failed_batch_fails_every_row_of_it_and_a_failed_row_hands_over():
    connections = _RecordingConnections(fail=True)
    inserts = Inserts(connections, "INSERT ...")
    outcomes = await asyncio.gather(*(inserts.insert([index]) for index in range(3)), return_exceptions=True)
    assert [type(outcome) for outcome in outcomes] == [_BatchFailed] * 3
    with pytest.raises(_HandOver):
        await inserts.insert(["alone"])
