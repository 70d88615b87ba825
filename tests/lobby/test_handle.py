"""Lobby events through ``POST /gateway/handle`` (the gateway's upstream contract), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import httpx

from sonalyze.lobby.codes import CODE_ALPHABET
from tests.lobby.clients import Handle
from tests.lobby.conftest import full_stack
from tests.support.servers import SERVICE_HEADERS

SHOEBOX = {
    "type": "shoebox",
    "dimensions_m": [6, 5, 3],
    "materials": {w: {"absorption": 0.2} for w in ("floor", "ceiling", "east", "west", "north", "south")},
}


async def _lobby_of(handle: Handle, host: str = "host", *guests: str) -> dict:
    lobby = await handle.call("lobby.create", {"name": "Living room"}, host)
    for guest in guests:
        await handle.call("lobby.join", {"code": lobby["code"]}, guest)
    return lobby


async def test_create_join_by_code_and_get(handle: Handle):
    lobby = await handle.call("lobby.create", {"name": "Living room"}, "host")
    assert len(lobby["code"]) == 8 and set(lobby["code"]) <= set(CODE_ALPHABET)
    assert lobby["status"] == "open" and lobby["host_device_id"] == "host" and lobby["name"] == "Living room"
    assert lobby["participants"] == [{"device_id": "host", "role": None, "name": None}] and lobby["room"] is None

    typed = lobby["code"][:4].lower() + "-" + lobby["code"][4:].lower()
    joined = await handle.call("lobby.join", {"code": typed}, "phone-1")
    assert joined["lobby_id"] == lobby["lobby_id"]
    again = await handle.call("lobby.join", {"code": lobby["code"]}, "phone-1")
    assert again["participants"] == joined["participants"] == [
        {"device_id": "host", "role": None, "name": None},
        {"device_id": "phone-1", "role": None, "name": None},
    ]

    by_code = await handle.call("lobby.get", {"code": lobby["code"].lower()}, "phone-1")
    by_id = await handle.call("lobby.get", {"lobby_id": lobby["lobby_id"]}, "host")
    assert by_code == by_id
    assert set(by_id) >= {"lobby_id", "code", "name", "status", "host_device_id", "participants", "room"}

    log = await handle.call("lobby.events", {"lobby_id": lobby["lobby_id"]}, "host")
    assert [e["type"] for e in log["events"]] == ["created", "participant_joined"]  # the second join changed nothing


async def test_lobby_refusals(handle: Handle):
    lobby = await _lobby_of(handle, "host", "guest")
    lobby_id = lobby["lobby_id"]
    assert (await handle.refused("lobby.join", {"code": "ZZZZZZZZ"}, "x"))["code"] == "not_found"
    bad = await handle.refused("lobby.join", {"code": "AB"}, "x")
    assert bad["code"] == "bad_request" and bad["details"]["errors"][0]["field"] == "code"
    assert (await handle.refused("lobby.join", {"code": lobby["code"]}, None))["code"] == "bad_request"
    assert (await handle.refused("lobby.get", {"lobby_id": lobby_id}, "stranger"))["code"] == "forbidden"
    assert (await handle.refused("lobby.get", {"lobby_id": "nope"}, "host"))["code"] == "not_found"
    assert (await handle.refused("lobby.get", {}, "host"))["code"] == "bad_request"
    assert (await handle.refused("lobby.get", {"lobby_id": lobby_id, "code": lobby["code"]}, "host"))["code"] == "bad_request"
    assert (await handle.refused("lobby.events", {"lobby_id": lobby_id}, "stranger"))["code"] == "forbidden"

    assign = {"lobby_id": lobby_id, "device_id": "guest", "role": "microphone"}
    assert (await handle.refused("role.assign", assign, "guest"))["code"] == "forbidden"
    assert (await handle.refused("role.assign", {**assign, "device_id": "ghost"}, "host"))["code"] == "not_found"
    assert (await handle.refused("role.assign", {**assign, "role": "drummer"}, "host"))["code"] == "bad_request"
    assert (await handle.refused("lobby.start", {"lobby_id": lobby_id}, "host"))["code"] == "conflict"  # no roles yet
    await handle.call("role.assign", assign, "host")
    await handle.call("role.assign", {**assign, "device_id": "host", "role": "speaker"}, "host")
    assert (await handle.refused("lobby.start", {"lobby_id": lobby_id}, "guest"))["code"] == "forbidden"
    started = await handle.call("lobby.start", {"lobby_id": lobby_id}, "host")
    assert started["status"] == "measuring"
    assert (await handle.refused("lobby.start", {"lobby_id": lobby_id}, "host"))["code"] == "conflict"
    assert (await handle.refused("role.assign", assign, "host"))["code"] == "conflict"
    assert (await handle.refused("lobby.create", {"name": "x" * 500}, "host"))["code"] == "bad_request"
    # nothing refused was written
    log = await handle.call("lobby.events", {"lobby_id": lobby_id}, "guest")
    assert [e["type"] for e in log["events"]] == ["created", "participant_joined", "role_assigned", "role_assigned", "started"]


async def test_roles_can_be_changed_and_cleared(handle: Handle):
    lobby = await _lobby_of(handle, "host", "a")
    ref = {"lobby_id": lobby["lobby_id"], "device_id": "a"}
    await handle.call("role.assign", {**ref, "role": "speaker"}, "host")
    changed = await handle.call("role.assign", {**ref, "role": "microphone"}, "host")
    assert changed["participants"][1] == {"device_id": "a", "role": "microphone", "name": None}
    cleared = await handle.call("role.assign", {**ref, "role": None}, "host")
    assert cleared["participants"][1] == {"device_id": "a", "role": None, "name": None}


async def test_host_leaving_passes_the_host_role_then_the_lobby_closes(handle: Handle):
    lobby = await _lobby_of(handle, "host", "second", "third")
    lobby_id = lobby["lobby_id"]
    left = await handle.call("lobby.leave", {"lobby_id": lobby_id}, "host")
    assert left["left"] is True and left["host_device_id"] == "second"
    assert (await handle.call("lobby.leave", {"lobby_id": lobby_id}, "host"))["left"] is False  # leaving twice
    assert (await handle.refused("lobby.get", {"lobby_id": lobby_id}, "host"))["code"] == "forbidden"
    view = await handle.call("lobby.get", {"lobby_id": lobby_id}, "third")
    assert view["host_device_id"] == "second" and [p["device_id"] for p in view["participants"]] == ["second", "third"]
    await handle.call("lobby.leave", {"lobby_id": lobby_id}, "third")
    closed = await handle.call("lobby.leave", {"lobby_id": lobby_id}, "second")
    assert closed["status"] == "closed" and closed["participants"] == []
    assert (await handle.refused("lobby.join", {"code": lobby["code"]}, "late"))["code"] == "not_found"
    assert (await handle.refused("lobby.leave", {"lobby_id": "nope"}, "x"))["code"] == "not_found"


async def test_room_snapshot_is_validated_and_shared(handle: Handle):
    lobby = await _lobby_of(handle, "host", "phone")
    snapshot = {"room": SHOEBOX, "devices": {"host": {"position_m": [1, 1, 1.2]}, "phone": {"position_m": [4, 3, 1.0]}}}
    shared = await handle.call("lobby.room_snapshot", {"lobby_id": lobby["lobby_id"], "room": snapshot}, "phone")
    assert shared["room"]["devices"]["phone"]["position_m"] == [4.0, 3.0, 1.0]
    assert shared["room"]["room"]["dimensions_m"] == [6.0, 5.0, 3.0]
    assert (await handle.call("lobby.get", {"lobby_id": lobby["lobby_id"]}, "host"))["room"] == shared["room"]

    outside = {"room": SHOEBOX, "devices": {"phone": {"position_m": [9, 1, 1]}}}
    error = await handle.refused("lobby.room_snapshot", {"lobby_id": lobby["lobby_id"], "room": outside}, "host")
    assert error["code"] == "bad_request" and error["details"]["errors"][0]["field"] == "room.devices.phone"
    stranger = {"room": SHOEBOX, "devices": {"ghost": {"position_m": [1, 1, 1]}}}
    error = await handle.refused("lobby.room_snapshot", {"lobby_id": lobby["lobby_id"], "room": stranger}, "host")
    assert error["code"] == "bad_request" and error["details"] == {"device_ids": ["ghost"]}
    bad_room = {"room": {**SHOEBOX, "dimensions_m": [0, 5, 3]}}
    assert (await handle.refused("lobby.room_snapshot", {"lobby_id": lobby["lobby_id"], "room": bad_room}, "host"))["code"] == "bad_request"
    assert (await handle.refused("lobby.room_snapshot", {"lobby_id": lobby["lobby_id"], "room": snapshot}, "x"))["code"] == "forbidden"
    assert (await handle.call("lobby.get", {"lobby_id": lobby["lobby_id"]}, "host"))["room"] == shared["room"]


async def test_event_log_reads_in_order_with_since_and_limit(handle: Handle):
    lobby = await _lobby_of(handle, "host", *[f"p{i}" for i in range(6)])
    ref = {"lobby_id": lobby["lobby_id"]}
    first = await handle.call("lobby.events", {**ref, "limit": 3}, "host")
    assert [e["seq"] for e in first["events"]] == [1, 2, 3] and first["next_since"] == 3 and first["last_seq"] == 7
    rest = await handle.call("lobby.events", {**ref, "since": first["next_since"]}, "host")
    assert [e["seq"] for e in rest["events"]] == [4, 5, 6, 7]
    assert [e["device_id"] for e in rest["events"]] == ["p2", "p3", "p4", "p5"]
    assert (await handle.refused("lobby.events", {**ref, "limit": 0}, "host"))["code"] == "bad_request"


async def test_concurrent_joins_keep_an_ordered_gapless_log(handle: Handle):
    lobby = await _lobby_of(handle, "host")
    devices = [f"d{i}" for i in range(12)]
    await asyncio.gather(*(handle.call("lobby.join", {"code": lobby["code"]}, d) for d in devices + devices[:4]))
    view = await handle.call("lobby.get", {"lobby_id": lobby["lobby_id"]}, "host")
    assert sorted(p["device_id"] for p in view["participants"]) == sorted(["host", *devices])
    log = await handle.call("lobby.events", {"lobby_id": lobby["lobby_id"]}, "host")
    assert [e["seq"] for e in log["events"]] == list(range(1, 14))


async def test_session_refusals(handle: Handle):
    lobby = await _lobby_of(handle, "host", "spk", "mic", "idle")
    lobby_id = lobby["lobby_id"]
    ref = {"lobby_id": lobby_id}
    await handle.call("role.assign", {**ref, "device_id": "spk", "role": "speaker"}, "host")
    await handle.call("role.assign", {**ref, "device_id": "mic", "role": "microphone"}, "host")
    assert (await handle.refused("measurement.create_session", ref, "host"))["code"] == "conflict"  # not started
    await handle.call("lobby.start", ref, "host")
    assert (await handle.refused("measurement.create_session", ref, "spk"))["code"] == "forbidden"
    session = await handle.call("measurement.create_session", ref, "host")
    assert session["step"] == "created" and session["speakers"] == ["spk"] and session["microphones"] == ["mic"]
    assert (await handle.refused("measurement.create_session", ref, "host"))["code"] == "conflict"  # one at a time
    sid = {"session_id": session["session_id"]}

    assert (await handle.refused("measurement.ready", {"session_id": "nope"}, "mic"))["code"] == "not_found"
    assert (await handle.refused("measurement.ready", {**sid, "lobby_id": "other"}, "mic"))["code"] == "session_mismatch"
    assert (await handle.refused("measurement.ready", sid, "stranger"))["code"] == "forbidden"
    assert (await handle.refused("measurement.ready", sid, "mic"))["code"] == "wrong_step"
    assert (await handle.refused("measurement.start_speaker", sid, "mic"))["code"] == "forbidden"
    started = await handle.call("measurement.start_speaker", sid, "host")
    assert started["step"] == "preparing" and started["waiting_for"] == ["spk", "mic"]
    assert (await handle.refused("measurement.ready", sid, "idle"))["code"] == "wrong_device"
    assert (await handle.refused("measurement.speaker_audio_ready", sid, "mic"))["code"] == "wrong_device"
    assert (await handle.refused("measurement.ready", {**sid, "speaker_index": 3}, "mic"))["code"] == "session_mismatch"
    assert (await handle.refused("measurement.playback_complete", sid, "spk"))["code"] == "wrong_step"
    assert (await handle.refused("measurement.ready", {"session_id": 5}, "mic"))["code"] == "bad_request"
    assert (await handle.refused("measurement.cancel_session", sid, "spk"))["code"] == "forbidden"
    status = await handle.call("measurement.session_status", ref, "idle")
    assert status["step"] == "preparing" and status["session_id"] == session["session_id"]
    assert (await handle.refused("measurement.session_status", sid, "stranger"))["code"] == "forbidden"
    cancelled = await handle.call("measurement.cancel_session", sid, "host")
    assert cancelled["step"] == "cancelled"
    assert (await handle.call("lobby.get", ref, "host"))["status"] == "open"  # the lobby can measure again


async def test_concurrent_signals_are_all_recorded(handle: Handle):
    mics = [f"mic-{i}" for i in range(6)]
    lobby = await _lobby_of(handle, "host", "spk", *mics)
    ref = {"lobby_id": lobby["lobby_id"]}
    await handle.call("role.assign", {**ref, "device_id": "spk", "role": "speaker"}, "host")
    for mic in mics:
        await handle.call("role.assign", {**ref, "device_id": mic, "role": "microphone"}, "host")
    await handle.call("lobby.start", ref, "host")
    session = await handle.call("measurement.create_session", ref, "host")
    sid = {"session_id": session["session_id"]}
    await handle.call("measurement.start_speaker", sid, "host")
    # every device at once, each twice (a retry racing its original): none is lost, none counted twice
    await asyncio.gather(*(handle.call("measurement.ready", sid, d) for d in ["spk", *mics, "spk", *mics]))
    status = await handle.call("measurement.session_status", sid, "host")
    assert status["step"] == "preparing" and status["waiting_for"] == ["spk"]  # only the audio is missing
    await handle.call("measurement.speaker_audio_ready", sid, "spk")
    await asyncio.gather(*(handle.call("measurement.recording_started", sid, m) for m in mics))
    assert (await handle.call("measurement.session_status", sid, "spk"))["step"] == "playing"


async def test_session_jobs_carry_the_sweep_count(database_url, tmp_path):
    """Contract C3: ``measurement.create_session`` passes ``sweep_count`` (1–5) to the job it creates at the
    real measurement service; without it the lobby's SWEEP_COUNT (here 2) is used; 0 and 6 are refused."""
    with full_stack(database_url, tmp_path, with_gateway=False, sweep_count=2) as running:
        async with (
            httpx.AsyncClient(base_url=running.lobby.url, timeout=30, headers=SERVICE_HEADERS) as lobby_http,
            httpx.AsyncClient(base_url=running.measurement.url, timeout=30, headers=SERVICE_HEADERS) as measurement,
        ):
            handle = Handle(lobby_http)
            lobby = await _lobby_of(handle, "host", "spk", "mic")
            ref = {"lobby_id": lobby["lobby_id"]}
            await handle.call("role.assign", {**ref, "device_id": "spk", "role": "speaker"}, "host")
            await handle.call("role.assign", {**ref, "device_id": "mic", "role": "microphone"}, "host")
            await handle.call("lobby.start", ref, "host")
            for bad in (0, 6, "three"):
                assert (await handle.refused("measurement.create_session", {**ref, "sweep_count": bad}, "host"))["code"] == "bad_request"
            for asked, expected in ((3, 3), (None, 2)):
                data = ref if asked is None else {**ref, "sweep_count": asked}
                session = await handle.call("measurement.create_session", data, "host")
                job = (await measurement.get(f"/v1/jobs/{session['job_id']}")).json()
                assert job["sweep"]["sweep_count"] == expected
                await handle.call("measurement.cancel_session", {"session_id": session["session_id"]}, "host")
                await handle.call("lobby.start", ref, "host")
