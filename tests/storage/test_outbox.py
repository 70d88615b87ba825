"""The storage client and the writers' outbox: errors, transactions, dead records, ordering, and a
measurement session that outlives a storage crash without losing or doubling a record."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from sonalyze.storage.client import StorageClient, StorageError, StorageUnavailable
from sonalyze.storage.main import create_app
from sonalyze.storage.outbox import Outbox, RowState, outbox_table, retry_delay_s
from sonalyze.storage.settings import StorageSettings
from tests.storage.records import metrics, new_code, new_id
from tests.support.servers import INTERNAL_TOKEN, SERVICE_HEADERS, ServiceProcess, ThreadedServer, free_port


@pytest.fixture
def storage(tmp_path):
    settings = StorageSettings(internal_auth_token=INTERNAL_TOKEN, database_url=f"sqlite+aiosqlite:///{tmp_path / 'storage.db'}")
    with ThreadedServer(create_app(settings)) as server:
        yield server


@pytest.fixture
async def client(storage):
    async with StorageClient(storage.url, timeout_s=10, headers=SERVICE_HEADERS) as storage_client:
        yield storage_client


def _outbox(tmp_path, client: StorageClient) -> Outbox:
    return Outbox(
        f"sqlite+aiosqlite:///{tmp_path / 'writer.db'}", client, retry_base_s=0.05, retry_max_s=0.5, poll_interval_s=0.2
    )


def test_retry_delay_doubles_from_the_base_and_is_capped():
    delays = [retry_delay_s(attempt, base_s=0.2, max_s=5.0, jitter=1.0) for attempt in range(1, 8)]
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    assert retry_delay_s(3, base_s=0.2, max_s=5.0, jitter=0.0) == pytest.approx(0.4)  # jitter halves at most


async def test_client_reports_storage_errors_with_their_code_and_whether_to_retry(client):
    with pytest.raises(StorageError) as missing:
        await client.get("devices", "no-such-device")
    assert (missing.value.storage_status, missing.value.storage_code, missing.value.retryable) == (404, "not_found", False)

    with pytest.raises(StorageError) as orphan:
        await client.put("participants", {"id": new_id("part"), "lobby_id": "later", "device_id": "later"})
    assert (orphan.value.storage_code, orphan.value.retryable) == ("missing_reference", True)

    with pytest.raises(StorageError) as invalid:
        await client.create("lobbies", {"code": "no"})
    assert (invalid.value.storage_status, invalid.value.storage_code, invalid.value.retryable) == (422, "validation_error", False)

    with pytest.raises(ValueError):
        await client.put("lobbies", {"code": new_code()})  # no id
    with pytest.raises(ValueError):
        await client.get("lobby", "x")  # no such resource


async def test_client_round_trip(client):
    device = await client.put("devices", {"id": new_id("dev"), "name": "Pixel"})
    lobby = await client.create("lobbies", {"code": new_code(), "host_device_id": device["id"]})
    assert (await client.lobby_by_code(lobby["code"]))["id"] == lobby["id"]
    assert (await client.update("lobbies", lobby["id"], {"status": "closed"}))["status"] == "closed"
    page = await client.list("lobbies", host_device_id=device["id"])
    assert [item["id"] for item in page["items"]] == [lobby["id"]] and page["next_offset"] is None
    await client.delete("lobbies", lobby["id"])
    with pytest.raises(StorageError):
        await client.get("lobbies", lobby["id"])
    assert await client.healthy()


async def test_unreachable_storage_is_storage_unavailable():
    async with StorageClient(f"http://127.0.0.1:{free_port()}", timeout_s=2) as nowhere:
        with pytest.raises(StorageUnavailable) as error:
            await nowhere.put("devices", {"id": "d1"})
        assert error.value.retryable
        assert not await nowhere.healthy()


async def test_enqueue_commits_and_rolls_back_with_the_writers_transaction(tmp_path, client):
    outbox = _outbox(tmp_path, client)
    await outbox.create_table()
    try:
        async with AsyncSession(outbox.engine) as session:
            async with session.begin():
                await outbox.enqueue("devices", {"id": new_id("dev")}, session=session)
                await session.rollback()
            assert await outbox.pending() == 0
            async with session.begin():
                await outbox.enqueue("devices", {"id": new_id("dev")}, session=session)
            assert await outbox.pending() == 1
    finally:
        await outbox.stop()


async def test_enqueue_all_commits_every_record_or_none(tmp_path, client):
    outbox = _outbox(tmp_path, client)
    lobby_id, code = new_id("lobby"), new_code()
    await outbox.create_table()
    try:
        with pytest.raises(ValueError):  # the second record has no id: the first is not kept either
            await outbox.enqueue_all([("devices", {"id": new_id("dev")}), ("devices", {"name": "no id"})])
        assert await outbox.pending() == 0
        statuses = ("open", "measuring", "closed")
        await outbox.enqueue_all([("lobbies", {"id": lobby_id, "code": code, "status": s}) for s in statuses], aggregate=lobby_id)
        assert await outbox.pending() == 3
        await outbox.start()
        await outbox.flush(timeout_s=20)
        assert (await client.get("lobbies", lobby_id))["status"] == "closed"  # delivered in the order given
    finally:
        await outbox.stop()


async def test_refused_records_are_kept_dead_and_do_not_hold_up_the_rest(tmp_path, client):
    outbox = _outbox(tmp_path, client)
    bad_id, good_id = new_id("lobby"), new_id("dev")
    await outbox.create_table()
    await outbox.enqueue("lobbies", {"id": bad_id, "code": "bad code"})
    await outbox.enqueue("devices", {"id": good_id, "name": "ok"})
    await outbox.start()
    try:
        await outbox.flush(timeout_s=20)
        dead = await outbox.dead()
        assert [(row["resource"], row["record_id"]) for row in dead] == [("lobbies", bad_id)]
        assert "validation_error" in dead[0]["last_error"]
        assert (await client.get("devices", good_id))["name"] == "ok"
    finally:
        await outbox.stop()


async def test_one_aggregate_is_delivered_in_enqueue_order(tmp_path, client):
    outbox = _outbox(tmp_path, client)
    lobby_id, device_id, code = new_id("lobby"), new_id("dev"), new_code()
    await outbox.create_table()
    await outbox.enqueue("devices", {"id": device_id})
    for status in ("open", "measuring", "analyzing", "closed"):
        await outbox.enqueue("lobbies", {"id": lobby_id, "code": code, "status": status}, aggregate=lobby_id)
    joined_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    participant = {"id": new_id("part"), "lobby_id": lobby_id, "device_id": device_id, "joined_at": joined_at}
    await outbox.enqueue("participants", participant, aggregate=lobby_id)
    await outbox.enqueue("participants", {**participant, "role": "microphone"}, aggregate=lobby_id)
    await outbox.start()
    try:
        await outbox.flush(timeout_s=20)
        stored = await client.get("participants", participant["id"])
        assert (stored["role"], stored["joined_at"]) == ("microphone", "2026-01-02T03:04:05+00:00")
        await outbox.enqueue_delete("participants", participant["id"], aggregate=lobby_id)
        await outbox.enqueue_delete("participants", participant["id"], aggregate=lobby_id)  # already gone: fine
        await outbox.flush(timeout_s=20)
        assert (await client.get("lobbies", lobby_id))["status"] == "closed"
        assert (await client.list("participants", lobby_id=lobby_id))["items"] == []
        assert await outbox.dead() == []
    finally:
        await outbox.stop()


async def _tried_and_failed(outbox: Outbox) -> bool:
    """Whether a pending row was tried at least once (its delivery failed: it is still pending)."""
    async with outbox.engine.connect() as connection:
        statement = select(func.max(outbox_table.c.attempts)).where(outbox_table.c.state == RowState.PENDING.value)
        return ((await connection.execute(statement)).scalar() or 0) > 0


def _output(measurement_id: str, index: int) -> dict:
    return {
        "id": f"{measurement_id}-out-{index:03d}",
        "measurement_id": measurement_id,
        "microphone_id": f"mic-{index % 3}",
        "speaker_id": "spk-0",
        "parameters": {"fs_hz": 48000, "index": index},
        "metrics": metrics(),
        "curves": {"edc_db": [0.0, -1.5 * index, -3.0 * index]},
    }


async def test_storage_crash_during_a_measurement_session_loses_and_doubles_nothing(tmp_path, database_url):
    storage = ServiceProcess("storage", env={"DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"})
    await asyncio.to_thread(storage.start)
    client = StorageClient(storage.url, timeout_s=3, headers=SERVICE_HEADERS)
    outbox = _outbox(tmp_path, client)
    sent: dict[tuple[str, str], dict] = {}

    async def send(resource: str, record: dict, aggregate: str) -> None:
        sent[(resource, record["id"])] = record
        await outbox.enqueue(resource, record, aggregate=aggregate)

    try:
        await outbox.start()
        lobby = {"id": new_id("lobby"), "code": new_code(), "status": "open"}
        devices = [{"id": new_id("dev"), "name": f"phone {index}"} for index in range(3)]
        for device in devices:
            await send("devices", device, device["id"])
        await send("lobbies", lobby, lobby["id"])
        for device in devices:
            await send("participants", {"id": new_id("part"), "lobby_id": lobby["id"], "device_id": device["id"]}, lobby["id"])
        measurement = {"id": new_id("meas"), "lobby_id": lobby["id"], "kind": "sweep", "status": "recording"}
        await send("measurements", measurement, lobby["id"])
        await send("lobbies", {**lobby, "status": "measuring"}, lobby["id"])
        await outbox.flush(timeout_s=30)

        outputs = [_output(measurement["id"], index) for index in range(60)]
        for index, output in enumerate(outputs):
            await send("analysis_outputs", output, measurement["id"])
            if index == 20:
                await asyncio.to_thread(storage.kill)  # mid-session, mid-delivery
            await asyncio.sleep(0.005)
        await send("measurements", {**measurement, "status": "analyzed"}, lobby["id"])
        await send("lobbies", {**lobby, "status": "closed"}, lobby["id"])
        deadline_s = time.monotonic() + 30
        while not await _tried_and_failed(outbox):  # the signal: a delivery to the stopped storage failed
            assert time.monotonic() < deadline_s, "no delivery was tried while storage was down"
            await asyncio.sleep(0.05)
        assert await outbox.pending() > 0  # storage is down: the records wait in the writer's database

        await asyncio.to_thread(storage.start)
        await outbox.flush(timeout_s=60)
        assert await outbox.dead() == []

        stored_outputs = (await client.list("analysis_outputs", measurement_id=measurement["id"], limit=500))["items"]
        assert sorted(item["id"] for item in stored_outputs) == sorted(output["id"] for output in outputs)
        assert all(item["created_at"] == item["updated_at"] for item in stored_outputs)  # written once, never rewritten
        participants = (await client.list("participants", lobby_id=lobby["id"]))["items"]
        assert sorted(item["device_id"] for item in participants) == sorted(device["id"] for device in devices)
        for (resource, record_id), record in sent.items():
            stored = await client.get(resource, record_id)
            assert {key: stored[key] for key in record} == record, (resource, record_id)
        assert (await client.get("lobbies", lobby["id"]))["status"] == "closed"
        assert (await client.get("measurements", measurement["id"]))["status"] == "analyzed"
    finally:
        await outbox.stop()
        await client.aclose()
        await asyncio.to_thread(storage.stop)


class _RecordingClient(StorageClient):
    """The real client, noting when each PUT left and when storage answered (shared list, two replicas)."""

    def __init__(self, url: str, sends: list[tuple[str, str, float, float]]) -> None:
        super().__init__(url, timeout_s=10, headers=SERVICE_HEADERS)
        self.sends = sends

    async def put(self, resource, record):
        started_s = time.monotonic()
        answer = await super().put(resource, record)
        self.sends.append((record["id"], record["name"], started_s, time.monotonic()))
        return answer


async def test_two_replicas_on_one_outbox_send_each_row_once_and_keep_each_aggregates_order(storage, database_url):
    sends: list[tuple[str, str, float, float]] = []
    replicas = [
        Outbox(database_url, _RecordingClient(storage.url, sends), retry_base_s=0.05, poll_interval_s=0.05, max_in_flight=4)
        for _ in range(2)
    ]
    writer = replicas[0]
    await writer.create_table()
    devices, versions = 6, 8
    for version in range(versions):  # interleaved, as writers enqueue: v0 of every device, then v1, ...
        for device in range(devices):
            await writer.enqueue("devices", {"id": f"dev-{device}", "name": f"v{version}"}, aggregate=f"dev-{device}")
    try:
        for replica in replicas:
            await replica.start()
        await replicas[1].flush(timeout_s=60)
    finally:
        for replica in replicas:
            await replica.stop()
            await replica.client.aclose()
    assert len(sends) == devices * versions  # no row sent twice
    for device in range(devices):
        mine = sorted((s for s in sends if s[0] == f"dev-{device}"), key=lambda s: s[2])
        assert [name for _, name, _, _ in mine] == [f"v{v}" for v in range(versions)]
        assert all(later[2] >= earlier[3] for earlier, later in zip(mine, mine[1:]))  # one after the other
    async with StorageClient(storage.url, timeout_s=10, headers=SERVICE_HEADERS) as reader:
        for device in range(devices):
            assert (await reader.get("devices", f"dev-{device}"))["name"] == f"v{versions - 1}"


async def test_replicas_starting_together_on_an_empty_postgresql_create_the_table_once(postgres_url):
    """Each replica's start creates the outbox table if missing: together, one waits for the other (without
    the lock both found no table and the second CREATE TABLE failed: the replica did not start)."""
    storage = StorageClient("http://127.0.0.1:1")  # never called
    replicas = [Outbox(postgres_url, storage) for _ in range(4)]
    try:
        await asyncio.gather(*(replica.create_table() for replica in replicas))
        assert await replicas[0].pending() == 0
    finally:
        for replica in replicas:
            await replica.engine.dispose()
        await storage.aclose()


async def test_a_dead_replicas_claim_is_taken_over_after_the_lease(storage, tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'writer.db'}"
    sends: list[tuple[str, str, float, float]] = []
    dead = Outbox(url, _RecordingClient(storage.url, sends), lease_s=0.5)
    alive = Outbox(url, _RecordingClient(storage.url, sends), lease_s=0.5, poll_interval_s=0.05)
    try:
        await dead.create_table()
        await dead.enqueue("devices", {"id": "dev-x", "name": "v0"})
        assert [row["seq"] for row in await dead._claim(await dead._due_heads())] == [1]  # then it "dies"
        assert await alive._claim(await alive._due_heads()) == []  # the lease holds
        await asyncio.sleep(0.6)
        assert await alive.deliver_once() == 1
        assert [(record_id, name) for record_id, name, _, _ in sends] == [("dev-x", "v0")]
    finally:
        for outbox in (dead, alive):
            await outbox.stop()
            await outbox.client.aclose()


async def test_a_client_of_two_storage_replicas_fails_over_when_one_stops(tmp_path):
    """STORAGE_URL with two URLs: calls alternate, and with one replica stopped every call still lands."""
    settings = StorageSettings(internal_auth_token=INTERNAL_TOKEN, database_url=f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}")
    with ThreadedServer(create_app(settings)) as first, ThreadedServer(create_app(settings)) as second:
        async with StorageClient(f"{first.url},{second.url}", timeout_s=10, headers=SERVICE_HEADERS) as client:
            for index in range(4):
                await client.put("devices", {"id": f"dev-{index}", "name": "Pixel"})
            assert client.replicas.healthy() == [first.url, second.url]
            second.stop()
            for index in range(4, 10):
                await client.put("devices", {"id": f"dev-{index}", "name": "Pixel"})
            assert client.replicas.healthy() == [first.url]
            assert [(await client.get("devices", f"dev-{i}"))["id"] for i in range(10)] == [f"dev-{i}" for i in range(10)]
