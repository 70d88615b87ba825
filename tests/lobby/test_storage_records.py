"""The lobby's records reach the storage service through the outbox in the lobby's own database."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from sonalyze.lobby import migrations, store
from sonalyze.lobby.main import create_app
from sonalyze.lobby.storage_records import device_record, measurement_record, participant_record, storage_id
from sonalyze.lobby.session_machine import SessionState, SessionStep
from sonalyze.lobby.store import Database
from sonalyze.storage.client import StorageClient
from sonalyze.storage.outbox import outbox_metadata, outbox_table
from tests.integration.storage_reads import all_records, eventually, outbox_count
from tests.lobby.clients import Handle
from tests.lobby.conftest import lobby_settings
from tests.support.servers import SERVICE_HEADERS, ServiceProcess, ThreadedServer, free_port

LONG_DEVICE = "phone/" + "x" * 100


def test_ids_storage_refuses_are_hashed_deterministically():
    assert storage_id("mic-1") == "mic-1"
    hashed = storage_id(LONG_DEVICE)
    assert hashed == storage_id(LONG_DEVICE) and hashed.startswith("h-") and len(hashed) == 42
    assert storage_id("a b") != storage_id("a_b")
    assert device_record(LONG_DEVICE) == {"id": hashed, "attributes": {"device_id": LONG_DEVICE}}
    seat = participant_record("l" * 32, LONG_DEVICE, role="microphone", joined_s=0.0, left_s=60.0)
    assert seat["device_id"] == hashed and seat["id"] == storage_id(f"{'l' * 32}:{LONG_DEVICE}")
    assert (seat["joined_at"], seat["left_at"]) == ("1970-01-01T00:00:00+00:00", "1970-01-01T00:01:00+00:00")
    assert participant_record("lob", "mic-1", role=None, joined_s=0.0)["id"] == "lob:mic-1"


def test_a_session_is_finished_in_storage_only_at_a_final_step():
    state = SessionState(session_id="s1", lobby_id="lob", job_id="j" * 32, speakers=("spk",), microphones=("m1", "m2"))
    running = measurement_record(state, room=None, created_s=10.0, updated_s=20.0)
    assert running["id"] == "j" * 32 and running["status"] == "created" and running["finished_at"] is None
    assert running["parameters"] == {"session_id": "s1", "speakers": ["spk"], "microphones": ["m1", "m2"]}
    failure = {"code": "step_timeout", "reason": "late"}
    failed = SessionState(**{**state.to_json(), "step": SessionStep.FAILED, "failure": failure})
    done = measurement_record(failed, room={"type": "shoebox"}, created_s=10.0, updated_s=20.0)
    assert done["finished_at"] == "1970-01-01T00:00:20+00:00" and done["parameters"]["failure"] == failure


async def test_the_outbox_migration_matches_the_outbox_table(database_url: str):
    db = Database(database_url)
    await db.start()
    await db.dispose()
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:

            def differences(sync_connection):
                context = MigrationContext.configure(sync_connection, opts={"version_table": migrations.VERSION_TABLE})
                return [d for d in compare_metadata(context, outbox_metadata) if "storage_outbox" in repr(d)]

            assert await connection.run_sync(differences) == []
    finally:
        await engine.dispose()


async def _outbox_rows(database_url: str) -> list[tuple[str, str, str]]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            statement = select(outbox_table.c.resource, outbox_table.c.record_id, outbox_table.c.aggregate).order_by(outbox_table.c.seq)
            return [tuple(row) for row in await connection.execute(statement)]
    finally:
        await engine.dispose()


async def test_records_commit_and_roll_back_with_the_lobby_transaction(database_url: str):
    dead_storage = StorageClient(f"http://127.0.0.1:{free_port()}")
    db = Database(database_url, storage=dead_storage)
    await db.write(migrations.upgrade)  # the schema, without starting delivery: only what is queued counts here
    try:

        def create(conn, lobby_id: str) -> None:
            store.insert_lobby(conn, lobby_id=lobby_id, code="ABCDEF", name="Hall", host_device_id="host", now_s=100.0)
            store.add_participant(conn, lobby_id=lobby_id, device_id="host", joined_seq=1, now_s=100.0)

        def create_then_fail(conn) -> None:
            create(conn, "doomed")
            raise RuntimeError("the operation failed after writing")

        with pytest.raises(RuntimeError):
            await db.write(create_then_fail)
        assert await _outbox_rows(database_url) == []
        await db.write(create, "l1")
        expected = [("devices", "host", "l1"), ("lobbies", "l1", "l1"), ("participants", "l1:host", "l1")]
        assert await _outbox_rows(database_url) == expected
        assert await db.outbox.pending() == 3
    finally:
        await db.dispose()


async def test_lobby_records_wait_for_storage_then_arrive_once(database_url: str, tmp_path: Path):
    """Storage is down while the lobby changes; started later, it gets every record, each once."""
    storage = ServiceProcess("storage", env={"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'storage.db'}"})
    settings = lobby_settings(database_url, measurement_url=f"http://127.0.0.1:{free_port()}", storage_url=storage.url)
    with ThreadedServer(create_app(settings)) as lobby:
        async with httpx.AsyncClient(base_url=lobby.url, timeout=30, headers=SERVICE_HEADERS) as http:
            handle = Handle(http)
            room = await handle.call("lobby.create", {"name": "Hall", "device_name": "Host"}, "host")
            lobby_id = room["lobby_id"]
            await handle.call("lobby.join", {"code": room["code"], "device_name": "Guest"}, "guest")
            await handle.call("lobby.join", {"code": room["code"]}, LONG_DEVICE)
            await handle.call("role.assign", {"lobby_id": lobby_id, "device_id": LONG_DEVICE, "role": "microphone"}, "host")
            await handle.call("lobby.leave", {"lobby_id": lobby_id}, "guest")
            pending = await _outbox_rows(database_url)
            assert {resource for resource, _, _ in pending} == {"devices", "lobbies", "participants"}
            assert {aggregate for _, _, aggregate in pending} == {lobby_id}

            with storage:
                done = lambda: _seats_when(storage.url, lobby_id, lambda seats: len(seats) == 3 and seats["guest"]["left_at"])
                seats = await eventually(done, timeout_s=60, what="three seats, the guest's with left_at")
                assert seats["host"]["role"] is None and seats["host"]["left_at"] is None
                assert (seats["host"]["display_name"], seats["guest"]["display_name"]) == ("Host", "Guest")
                assert seats[storage_id(LONG_DEVICE)]["role"] == "microphone"
                assert seats[storage_id(LONG_DEVICE)]["display_name"] is None
                stored = (await http.get(f"{storage.url}/v1/lobbies/{lobby_id}")).json()
                assert (stored["code"], stored["status"], stored["host_device_id"]) == (room["code"], "open", "host")
                assert stored["settings"] == {"name": "Hall"}
                devices = {d["id"]: d for d in await all_records(storage.url, "devices")}
                assert sorted(devices) == sorted(["host", "guest", storage_id(LONG_DEVICE)])
                assert devices[storage_id(LONG_DEVICE)]["attributes"] == {"device_id": LONG_DEVICE}

                await handle.call("lobby.join", {"code": room["code"]}, "guest")  # the same seat again
                rejoined = lambda: _seats_when(storage.url, lobby_id, lambda seats: seats["guest"]["left_at"] is None)
                seats = await eventually(rejoined, timeout_s=30, what="the guest's seat taken again")
                assert len(seats) == 3 and seats["guest"]["display_name"] is None  # joined again without a name
                await handle.call("lobby.join", {"code": room["code"], "device_name": "Kitchen"}, LONG_DEVICE)  # a rename
                renamed = lambda: _seats_when(storage.url, lobby_id, lambda seats: seats[storage_id(LONG_DEVICE)]["display_name"] == "Kitchen")
                seats = await eventually(renamed, timeout_s=30, what="the renamed seat")
                assert seats[storage_id(LONG_DEVICE)]["role"] == "microphone"
                assert await eventually(lambda: _no_outbox_rows(database_url), timeout_s=30, what="an empty outbox")


async def _seats_when(storage_url: str, lobby_id: str, done) -> dict | None:
    items = await all_records(storage_url, "participants", lobby_id=lobby_id)
    seats = {item["device_id"]: item for item in items}
    assert len(seats) == len(items), "one seat per device"
    return seats if seats and done(seats) else None


async def _no_outbox_rows(database_url: str) -> bool:
    return await outbox_count(database_url) == 0
