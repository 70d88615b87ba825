"""Storage stops during a measurement session and starts again afterwards: every record arrives, none twice.

Every service is a real ``sonalyze serve`` child process wired as in production: phones on WebSockets
through the gateway, the lobby (SQLite), the measurement service, and storage (SQLite and PostgreSQL).
"""

from __future__ import annotations

from pathlib import Path

from tests.integration.storage_reads import all_records, eventually, outbox_count
from tests.lobby.conftest import TOKEN
from tests.lobby.test_flows import DEVICES, HOST, MICS, SPEAKER_B, _lobby_env, _measuring_lobby, _through_playback, _upload_all, phones
from tests.support.servers import ServiceProcess, free_port

ROOM = {
    "room": {"type": "shoebox", "dimensions_m": [6, 5, 3], "materials": {w: "brickwork" for w in ("floor", "ceiling", "east", "west", "north", "south")}},
    "devices": {HOST: {"position_m": [1, 1, 1]}, MICS[0]: {"position_m": [4, 3, 1.2]}},
}


def _services(storage_db: str, tmp_path: Path) -> tuple[ServiceProcess, ...]:
    gateway_port, lobby_port = free_port(), free_port()
    storage = ServiceProcess("storage", env={"DATABASE_URL": storage_db})
    measurement = ServiceProcess(
        "measurement",
        env={
            "MEASUREMENT_DATA_DIR": str(tmp_path / "measurement"),
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'measurement.db'}",  # as `sonalyze serve` gives it
            "STORAGE_URL": storage.url,
            "LOBBY_URL": f"http://127.0.0.1:{lobby_port}",  # asked whether a device may reach a session's job
            "MEASUREMENT_ANALYZE_WAIT_S": "0.5",
        },
    )
    lobby_db = f"sqlite+aiosqlite:///{tmp_path / 'lobby.db'}"
    lobby = ServiceProcess(
        "lobby", env=_lobby_env(lobby_db, f"http://127.0.0.1:{gateway_port}", measurement.url, STORAGE_URL=storage.url),
        port=lobby_port,
    )
    gateway_env = {
        "LOBBY_URL": lobby.url,
        "MEASUREMENT_URL": measurement.url,
        "SIMULATION_URL": "http://127.0.0.1:9",
        "INTERNAL_AUTH_TOKEN": TOKEN,
        "RATE_LIMIT_RPS": "1000",
        "RATE_LIMIT_BURST": "1000",
        "ALLOW_INSECURE_DEVICE_IDS": "true",  # identity is not under test here (tests/gateway/test_device_identity.py)
    }
    gateway = ServiceProcess("gateway", env=gateway_env, port=gateway_port)
    return storage, measurement, lobby, gateway


async def test_storage_down_during_a_session_loses_nothing_and_duplicates_nothing(database_url: str, tmp_path: Path):
    storage, measurement, lobby, gateway = _services(database_url, tmp_path)
    with storage, measurement, lobby, gateway:
        async with phones(gateway.ws_url, DEVICES) as p:
            room = await _measuring_lobby(p)
            lobby_id = room["lobby_id"]

            async def measuring_lobby_stored() -> bool:
                return [(r["id"], r["status"]) for r in await all_records(storage.url, "lobbies")] == [(lobby_id, "measuring")]

            await eventually(measuring_lobby_stored, timeout_s=30, what="the lobby in storage before the outage")
            session = await p[HOST].call("measurement.create_session", {"lobby_id": lobby_id})
            job_id = session["job_id"]
            storage.kill()  # SIGKILL: storage is gone for the rest of the session

            await p[MICS[0]].call("lobby.room_snapshot", {"lobby_id": lobby_id, "room": ROOM})
            audio = await p[HOST].call("measurement.get_audio_info", {"job_id": job_id})
            for index in range(2):
                stops = await _through_playback(p, session, index)
                await _upload_all(gateway.url, p, session, stops, audio, index)
                await p[HOST].wait_push("measurement.results", timeout_s=90, speaker_index=index)
            await p[HOST].wait_push("measurement.session_completed", timeout_s=30)
            await p[HOST].wait_push("lobby.updated", type="session_ended")

        # Held while storage is down: the lobby's changes since the outage, and all six outputs.
        assert await outbox_count(f"sqlite+aiosqlite:///{tmp_path / 'lobby.db'}") > 0
        assert await outbox_count(f"sqlite+aiosqlite:///{tmp_path / 'measurement.db'}") == 6
        storage.start()
        expected_outputs = {f"{job_id}:speaker-{i}_mic-{j}.wav": (f"speaker-{i}", f"mic-{j}") for i in range(2) for j in range(3)}

        async def everything_delivered() -> bool:
            outputs = await all_records(storage.url, "analysis_outputs")
            measurements = await all_records(storage.url, "measurements")
            lobbies = await all_records(storage.url, "lobbies")
            return (
                len(outputs) >= len(expected_outputs)
                and [m["status"] for m in measurements] == ["completed"]
                and [lob["status"] for lob in lobbies] == ["open"]
                and await outbox_count(f"sqlite+aiosqlite:///{tmp_path / 'lobby.db'}") == 0
                and await outbox_count(f"sqlite+aiosqlite:///{tmp_path / 'measurement.db'}") == 0
            )

        await eventually(everything_delivered, timeout_s=120, what="every record delivered and both outboxes empty")

        devices = await all_records(storage.url, "devices")
        assert sorted(d["id"] for d in devices) == sorted(DEVICES)
        assert all(d["created_at"] == d["updated_at"] for d in devices), "each device written once"

        (stored_lobby,) = await all_records(storage.url, "lobbies")  # many changes, one row
        assert (stored_lobby["id"], stored_lobby["code"], stored_lobby["host_device_id"]) == (lobby_id, room["code"], HOST)
        assert stored_lobby["room"] == ROOM and stored_lobby["settings"] == {"name": "Hall"}

        seats = await all_records(storage.url, "participants")
        assert len(seats) == len({s["id"] for s in seats}) == 5
        assert {s["device_id"]: s["role"] for s in seats} == {
            **{d: "speaker" for d in (HOST, SPEAKER_B)},
            **{m: "microphone" for m in MICS},
        }
        assert all(s["lobby_id"] == lobby_id and s["joined_at"] and s["left_at"] is None for s in seats)

        (stored_measurement,) = await all_records(storage.url, "measurements")
        assert (stored_measurement["id"], stored_measurement["lobby_id"], stored_measurement["kind"]) == (job_id, lobby_id, "sweep_session")
        assert stored_measurement["parameters"] == {"session_id": session["session_id"], "speakers": [HOST, SPEAKER_B], "microphones": MICS}
        assert stored_measurement["room"] == ROOM
        assert stored_measurement["started_at"] < stored_measurement["finished_at"]

        outputs = await all_records(storage.url, "analysis_outputs")
        assert {o["id"]: (o["speaker_id"], o["microphone_id"]) for o in outputs} == expected_outputs
        assert len(outputs) == len(expected_outputs), "no output twice"
        assert all(o["measurement_id"] == job_id and "error" not in o["metrics"] for o in outputs)
        assert all(o["curves"]["decay_curves"]["time_s"] and o["metrics"]["t20_s"]["bands"] for o in outputs)
        assert all(o["created_at"] == o["updated_at"] for o in outputs), "each output written once"
