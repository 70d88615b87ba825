"""Pure rules: lobby status transitions and join codes; the measurement client against the real service."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from sonalyze.common.errors import UpstreamError, UpstreamUnavailable
from sonalyze.lobby.codes import CODE_ALPHABET, new_code, normalize_code
from sonalyze.lobby.errors import Conflict
from sonalyze.lobby.lifecycle import LOBBY_TRANSITIONS, LobbyStatus, check_transition
from sonalyze.lobby.measurement_client import MeasurementClient
from tests.lobby.conftest import measurement_server
from tests.support.servers import SERVICE_HEADERS, free_port


def test_lobby_transition_table():
    assert check_transition(LobbyStatus.OPEN, LobbyStatus.MEASURING) is LobbyStatus.MEASURING
    assert check_transition(LobbyStatus.MEASURING, LobbyStatus.OPEN) is LobbyStatus.OPEN
    assert check_transition(LobbyStatus.MEASURING, LobbyStatus.CLOSED) is LobbyStatus.CLOSED
    for current, target in [(LobbyStatus.MEASURING, LobbyStatus.MEASURING), (LobbyStatus.CLOSED, LobbyStatus.OPEN)]:
        with pytest.raises(Conflict) as exc:
            check_transition(current, target)
        assert exc.value.details == {"status": current.value, "target": target.value}
    assert LOBBY_TRANSITIONS[LobbyStatus.CLOSED] == frozenset()


def test_join_codes_are_unambiguous_and_normalized():
    assert not set("01ILO") & set(CODE_ALPHABET)
    codes = {new_code() for _ in range(500)}
    assert all(len(c) == 8 and set(c) <= set(CODE_ALPHABET) for c in codes) and len(codes) == 500
    assert normalize_code(" ab3k-7q2m ") == "AB3K7Q2M"


async def test_measurement_client_against_the_real_service(tmp_path: Path):
    with measurement_server(tmp_path) as server:
        client = MeasurementClient(server.url, poll_interval_s=0.05, headers=SERVICE_HEADERS)
        try:
            job = await client.create_job(sample_rate_hz=16000, sweep_duration_s=1.0)
            assert (await client.get_job(job["job_id"]))["status"] == "created"
            with pytest.raises(UpstreamError) as exc:
                await client.analyze(job["job_id"], ["nothing.wav"], timeout_s=10)
            assert exc.value.details["status"] in (404, 409, 422)
        finally:
            await client.aclose()
    dead = MeasurementClient(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UpstreamUnavailable):
        await dead.create_job(sample_rate_hz=16000, sweep_duration_s=1.0)
    await dead.aclose()


async def test_the_analysis_is_asked_again_when_a_replica_drops_the_connection(tmp_path: Path):
    """A measurement replica dying under the lobby's ``analyze`` (here one that accepts the connection and
    closes it unanswered) is not the analysis failing: the next replica is asked and the job polled there."""
    import socket
    import threading

    import soundfile

    from tests.measurement.audio import encode, room_ir, sweep_recording

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drop_every_connection() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                listener.accept()[0].close()
            except TimeoutError:
                continue

    dropper = threading.Thread(target=drop_every_connection, daemon=True)
    dropper.start()
    dying = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with measurement_server(tmp_path) as server:
            client = MeasurementClient(f"{dying},{server.url}", poll_interval_s=0.05, headers=SERVICE_HEADERS)
            try:
                http = client._client  # the set-up goes to the live replica
                job_id = (await http.post(f"{server.url}/v1/jobs", json={"sample_rate_hz": 16000, "sweep": {"duration_s": 1.0}})).json()["job_id"]
                sweep_wav = (await http.get(f"{server.url}/v1/jobs/{job_id}/sweep.wav")).content
                sweep, fs_hz = soundfile.read(io.BytesIO(sweep_wav))
                recording = encode(sweep_recording(sweep, room_ir(fs_hz, 0.4, 0.8), fs_hz, offset_s=0.1, noise_dbfs=-80.0), fs_hz)
                stored = await http.post(f"{server.url}/v1/jobs/{job_id}/uploads/mic.wav", content=recording)
                assert stored.status_code == 201, stored.text
                done = await client.analyze(job_id, ["mic.wav"], timeout_s=30)
                assert done["status"] == "done" and done["results"]["mic.wav"]["t30_s"]["broadband"] > 0
            finally:
                await client.aclose()
    finally:
        stop.set()
        dropper.join()
        listener.close()
