"""Whole flows: phones on WebSockets through a real gateway, a real lobby and a real measurement service."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import pytest

from tests.lobby.clients import Handle, Phone
from sonalyze.lobby.main import create_app as create_lobby
from tests.lobby.conftest import FAST_JOBS, TOKEN, Stack, full_stack, gateway_server, lobby_settings, measurement_server, recording_wav
from tests.support.servers import SERVICE_HEADERS, ServiceProcess, ThreadedServer, free_port, wait_until

HOST, SPEAKER_B = "spk-a", "spk-b"
MICS = ["mic-1", "mic-2", "mic-3"]
DEVICES = [HOST, SPEAKER_B, *MICS]


@contextlib.asynccontextmanager
async def phones(ws_url: str, devices: list[str]):
    async with contextlib.AsyncExitStack() as stack:
        yield {d: await stack.enter_async_context(Phone(ws_url, d)) for d in devices}


async def _measuring_lobby(p: dict[str, Phone]) -> dict:
    """Create, join, give roles (spk-a, spk-b speakers; three microphones) and start."""
    lobby = await p[HOST].call("lobby.create", {"name": "Hall"})
    for device in DEVICES[1:]:
        await p[device].call("lobby.join", {"code": lobby["code"].lower()})
    for device in DEVICES:
        role = "speaker" if device.startswith("spk") else "microphone"
        await p[HOST].call("role.assign", {"lobby_id": lobby["lobby_id"], "device_id": device, "role": role})
    await p[HOST].call("lobby.start", {"lobby_id": lobby["lobby_id"]})
    return lobby


async def _through_playback(p: dict[str, Phone], session: dict, index: int) -> dict:
    """One speaker from start to the stop_recording instructions; returns them by microphone."""
    sid = session["session_id"]
    speaker = session["speakers"][index]
    await p[HOST].call("measurement.start_speaker", {"session_id": sid, "speaker_index": index})
    for device in [speaker, *MICS]:
        prepare = await p[device].wait_push("measurement.prepare_speaker", speaker_index=index)
        assert prepare["speaker_device_id"] == speaker and prepare["microphones"] == MICS
    audio = await p[speaker].call("measurement.get_audio_info", {"job_id": session["job_id"]})
    assert audio["sample_rate_hz"] == FAST_JOBS["sample_rate_hz"]
    for device in [speaker, *MICS]:
        await p[device].call("measurement.ready", {"session_id": sid, "speaker_index": index})
    await p[speaker].call("measurement.speaker_audio_ready", {"session_id": sid, "speaker_index": index})
    for mic in MICS:
        start = await p[mic].wait_push("measurement.start_recording", speaker_index=index)
        assert start["upload_name"] == f"speaker-{index}_mic-{MICS.index(mic)}.wav"
        await p[mic].call("measurement.recording_started", {"session_id": sid, "speaker_index": index})
    await p[speaker].wait_push("measurement.play", speaker_index=index)
    await p[speaker].call("measurement.playback_complete", {"session_id": sid, "speaker_index": index})
    return {mic: await p[mic].wait_push("measurement.stop_recording", speaker_index=index) for mic in MICS}


async def _upload_all(gateway_url: str, p: dict[str, Phone], session: dict, stops: dict, audio: dict, index: int) -> None:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=60) as http:
        for seed, (mic, stop) in enumerate(stops.items()):
            response = await http.post(stop["upload_path"], content=recording_wav(audio, seed + 10 * index), headers={"Content-Type": "audio/wav", "X-Device-Id": mic})
            assert response.status_code == 201, response.text
            data = {"session_id": session["session_id"], "speaker_index": index, "upload_name": stop["upload_name"]}
            await p[mic].call("measurement.recording_uploaded", data)
            again = await p[mic].call("measurement.recording_uploaded", data)  # a phone retrying
            assert again["session_id"] == session["session_id"]


async def test_lobby_changes_are_pushed_to_participants(stack: Stack):
    snapshot = {
        "room": {"type": "shoebox", "dimensions_m": [5, 4, 3], "materials": {w: "brickwork" for w in ("floor", "ceiling", "east", "west", "north", "south")}},
        "devices": {HOST: {"position_m": [1, 1, 1]}},
    }
    async with phones(stack.gateway.ws_url, DEVICES) as p:
        lobby = await _measuring_lobby(p)
        await p[MICS[0]].call("lobby.room_snapshot", {"lobby_id": lobby["lobby_id"], "room": snapshot})
        last = await p[HOST].wait_push("lobby.updated", type="room_snapshot")
        assert last["lobby"]["room"]["devices"] == {HOST: {"position_m": [1.0, 1.0, 1.0]}}
        joined = await p[HOST].wait_push("lobby.updated", type="participant_joined", device_id=MICS[2])
        assert [x["device_id"] for x in joined["lobby"]["participants"]] == DEVICES
        for device in DEVICES:
            assert (await p[device].wait_push("lobby.updated", type="started"))["lobby"]["status"] == "measuring"
            await p[device].wait_push("lobby.updated", type="room_snapshot")
        # The host saw every change in log order; a late joiner saw only those after it joined.
        seqs = [x["data"]["seq"] for x in p[HOST].pushes if x["event"] == "lobby.updated"]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
        assert p[MICS[2]].count("lobby.updated", type="participant_joined", device_id=MICS[0]) == 0
        assert p[MICS[2]].count("lobby.updated", type="role_assigned", target_device_id=MICS[2]) == 1
        log = await p[MICS[2]].call("lobby.events", {"lobby_id": lobby["lobby_id"]})
        assert log["last_seq"] == max(seqs)
        refused = await p[SPEAKER_B].send("role.assign", {"lobby_id": lobby["lobby_id"], "device_id": HOST, "role": None})
        assert refused["type"] == "error" and refused["error"]["code"] == "forbidden"


async def test_full_session_two_speakers_three_microphones(stack: Stack):
    async with phones(stack.gateway.ws_url, DEVICES) as p:
        lobby = await _measuring_lobby(p)
        session = await p[HOST].call("measurement.create_session", {"lobby_id": lobby["lobby_id"]})
        assert session["speakers"] == [HOST, SPEAKER_B] and session["microphones"] == MICS
        audio = await p[HOST].call("measurement.get_audio_info", {"job_id": session["job_id"]})
        for index in range(2):
            stops = await _through_playback(p, session, index)
            assert {m: s["upload_path"] for m, s in stops.items()} == {
                m: f"/v1/jobs/{session['job_id']}/uploads/speaker-{index}_mic-{j}.wav" for j, m in enumerate(MICS)
            }
            await _upload_all(stack.gateway.url, p, session, stops, audio, index)
            for device in DEVICES:
                results = await p[device].wait_push("measurement.results", timeout_s=90, speaker_index=index)
            assert results["speaker_device_id"] == session["speakers"][index]
            assert sorted(results["analysis"]["results"]) == [f"speaker-{index}_mic-{j}.wav" for j in range(3)]
            assert all(report is not None and "error" not in report for report in results["analysis"]["results"].values())
        for device in DEVICES:
            completed = await p[device].wait_push("measurement.session_completed")
            assert [r["speaker_index"] for r in completed["results"]] == [0, 1]
        status = await p[MICS[1]].call("measurement.session_status", {"session_id": session["session_id"]})
        assert status["step"] == "completed" and status["deadline_s"] is None
        assert (await p[HOST].wait_push("lobby.updated", type="session_ended"))["lobby"]["status"] == "open"
        assert (await p[MICS[0]].call("lobby.get", {"lobby_id": lobby["lobby_id"]}))["status"] == "open"


@pytest.mark.parametrize("ending", ["cancel", "error", "leave"])
async def test_session_ends_early_and_everyone_is_told(stack: Stack, ending: str):
    async with phones(stack.gateway.ws_url, DEVICES) as p:
        lobby = await _measuring_lobby(p)
        session = await p[HOST].call("measurement.create_session", {"lobby_id": lobby["lobby_id"]})
        sid = {"session_id": session["session_id"]}
        await p[HOST].call("measurement.start_speaker", sid)
        await p[MICS[0]].call("measurement.ready", sid)
        if ending == "cancel":
            assert (await p[MICS[0]].send("measurement.cancel_session", sid))["error"]["code"] == "forbidden"
            await p[HOST].call("measurement.cancel_session", sid)
            for device in DEVICES:
                told = await p[device].wait_push("measurement.session_cancelled")
                assert told["step"] == "preparing" and told["device_id"] == HOST
        else:
            if ending == "error":
                await p[MICS[1]].call("measurement.error", {**sid, "reason": "microphone permission denied"})
                expected = {"code": "device_error", "reason": "microphone permission denied"}
            else:
                await p[MICS[1]].call("lobby.leave", {"lobby_id": lobby["lobby_id"]})
                expected = {"code": "device_left", "reason": f"device {MICS[1]} left the lobby"}
            for device in [d for d in DEVICES if d != MICS[1]]:
                told = await p[device].wait_push("measurement.session_failed")
                assert told["step"] == "preparing" and told["device_id"] == MICS[1]
                assert {k: told[k] for k in expected} == expected
        assert (await p[MICS[0]].send("measurement.ready", sid))["error"]["code"] == "wrong_step"
        assert (await p[HOST].call("lobby.get", {"lobby_id": lobby["lobby_id"]}))["status"] == "open"


async def test_a_step_times_out_and_everyone_is_told(database_url: str, tmp_path: Path):
    with full_stack(database_url, tmp_path, session_step_timeout_s=1.0, timer_interval_s=0.1) as stack:
        async with phones(stack.gateway.ws_url, DEVICES) as p:
            lobby = await _measuring_lobby(p)
            session = await p[HOST].call("measurement.create_session", {"lobby_id": lobby["lobby_id"]})
            await p[HOST].call("measurement.start_speaker", {"session_id": session["session_id"]})
            await p[MICS[2]].call("measurement.ready", {"session_id": session["session_id"]})
            for device in DEVICES:
                failed = await p[device].wait_push("measurement.session_failed", timeout_s=15)
                assert failed["code"] == "step_timeout" and failed["step"] == "preparing"
                assert failed["reason"] == f"step preparing timed out waiting for {HOST}, {MICS[0]}, {MICS[1]}"
            status = await p[MICS[0]].call("measurement.session_status", {"lobby_id": lobby["lobby_id"]})
            assert status["step"] == "failed" and status["failure"]["code"] == "step_timeout"


async def test_idle_lobbies_expire(database_url: str, tmp_path: Path):
    with full_stack(database_url, tmp_path, lobby_idle_timeout_s=1.0, timer_interval_s=0.1) as stack:
        async with phones(stack.gateway.ws_url, ["host", "guest"]) as p:
            lobby = await p["host"].call("lobby.create", {})
            await p["guest"].call("lobby.join", {"code": lobby["code"]})
            closed = await p["guest"].wait_push("lobby.updated", timeout_s=15, type="closed")
            assert closed["reason"] == "idle" and closed["lobby"]["status"] == "closed"
            assert (await p["guest"].send("lobby.join", {"code": lobby["code"]}))["error"]["code"] == "not_found"


async def test_a_failed_broadcast_loses_no_state(database_url: str, tmp_path: Path):
    dead_gateway = f"http://127.0.0.1:{free_port()}"
    with measurement_server(tmp_path / "m") as measurement:
        app = create_lobby(lobby_settings(database_url, gateway_url=dead_gateway, measurement_url=measurement.url))
        with ThreadedServer(app) as lobby, httpx.Client(base_url=lobby.url, timeout=30, headers=SERVICE_HEADERS) as http:
            created = http.post("/lobbies", headers={"X-Device-Id": "host"}, json={"name": "x"})
            assert created.status_code == 201
            joined = http.post("/lobbies/join", headers={"X-Device-Id": "guest"}, json={"code": created.json()["code"]})
            assert joined.status_code == 200
            view = http.get(f"/lobbies/{created.json()['lobby_id']}", headers={"X-Device-Id": "guest"}).json()
            assert [x["device_id"] for x in view["participants"]] == ["host", "guest"]
            await wait_until(lambda: app.state.lobbies.broadcaster.failed >= 1, timeout_s=10)
            assert app.state.lobbies.broadcaster.delivered == 0


def _lobby_env(database_url: str, gateway_url: str, measurement_url: str, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "GATEWAY_URL": gateway_url,
        "MEASUREMENT_URL": measurement_url,
        "INTERNAL_AUTH_TOKEN": TOKEN,
        "SAMPLE_RATE_HZ": str(FAST_JOBS["sample_rate_hz"]),
        "SWEEP_DURATION_S": str(FAST_JOBS["sweep_duration_s"]),
        **extra,
    }


async def test_restart_in_the_middle_of_a_session_resumes_it(database_url: str, tmp_path: Path):
    gateway_port, lobby_port = free_port(), free_port()
    with measurement_server(tmp_path / "m", f"http://127.0.0.1:{lobby_port}") as measurement:
        lobby_env = _lobby_env(database_url, f"http://127.0.0.1:{gateway_port}", measurement.url)
        lobby = ServiceProcess("lobby", env=lobby_env, port=lobby_port)
        with lobby, gateway_server(gateway_port, lobby.url, measurement.url) as gateway:
            async with phones(gateway.ws_url, DEVICES) as p:
                room = await _measuring_lobby(p)
                session = await p[HOST].call("measurement.create_session", {"lobby_id": room["lobby_id"]})
                audio = await p[HOST].call("measurement.get_audio_info", {"job_id": session["job_id"]})
                stops = await _through_playback(p, session, 0)
                lobby.kill()  # SIGKILL: no graceful shutdown
                assert (await p[MICS[0]].send("measurement.session_status", {"session_id": session["session_id"]}))["type"] == "error"
                lobby.start()
                status = await p[MICS[0]].call("measurement.session_status", {"session_id": session["session_id"]})
                assert status["step"] == "uploading" and status["speaker_index"] == 0 and status["waiting_for"] == MICS
                await _upload_all(gateway.url, p, session, stops, audio, 0)
                await p[HOST].wait_push("measurement.results", timeout_s=90, speaker_index=0)
                stops = await _through_playback(p, session, 1)
                await _upload_all(gateway.url, p, session, stops, audio, 1)
                completed = await p[SPEAKER_B].wait_push("measurement.session_completed", timeout_s=90)
                assert [r["speaker_device_id"] for r in completed["results"]] == [HOST, SPEAKER_B]


async def test_a_deadline_passed_while_down_fails_the_step_after_restart(database_url: str, tmp_path: Path):
    with full_stack(database_url, tmp_path, session_host_timeout_s=1.5, timer_interval_s=0.1) as stack:
        async with phones(stack.gateway.ws_url, DEVICES) as p:
            room = await _measuring_lobby(p)
            session = await p[HOST].call("measurement.create_session", {"lobby_id": room["lobby_id"]})
            stack.lobby.stop()
            # the signal: the lobby's own clock (time.time) is past the step's deadline while it is down
            while time.time() <= session["deadline_s"]:
                await asyncio.sleep(0.05)
            assert p[HOST].count("measurement.session_failed") == 0
            stack.lobby.start()
            for device in DEVICES:
                failed = await p[device].wait_push("measurement.session_failed", timeout_s=15)
                assert failed["session_id"] == session["session_id"] and failed["step"] == "created"
                assert failed["code"] == "step_timeout"


async def test_create_session_without_the_measurement_service_creates_nothing(database_url: str):
    app = create_lobby(lobby_settings(database_url, measurement_url=f"http://127.0.0.1:{free_port()}"))
    with ThreadedServer(app) as lobby:
        async with httpx.AsyncClient(base_url=lobby.url, timeout=30, headers=SERVICE_HEADERS) as http:
            handle = Handle(http)
            room = await handle.call("lobby.create", {}, "host")
            await handle.call("lobby.join", {"code": room["code"]}, "mic")
            for device, role in (("host", "speaker"), ("mic", "microphone")):
                await handle.call("role.assign", {"lobby_id": room["lobby_id"], "device_id": device, "role": role}, "host")
            await handle.call("lobby.start", {"lobby_id": room["lobby_id"]}, "host")
            error = await handle.refused("measurement.create_session", {"lobby_id": room["lobby_id"]}, "host")
            assert error["code"] == "upstream_unavailable"
            assert (await handle.call("lobby.get", {"lobby_id": room["lobby_id"]}, "mic"))["session_id"] is None
            status = await handle.refused("measurement.session_status", {"lobby_id": room["lobby_id"]}, "mic")
            assert status["code"] == "not_found"
