"""A lobby session's microphones upload within milliseconds of each other and ``analyze`` follows at once:
with two analysis workers both early analyses run side by side while the job's analysis awaits them, the
lease loop renews and claims, and the saves are version-checked (issue 13's CI flake was suspected here).

On a real uvicorn server, over HTTP as the gateway and the lobby call it: every round's job must end
``done`` with both recordings analysed once each, and nothing dropped or taken over.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections import Counter

import httpx
import pytest
import soundfile

from sonalyze.measurement.main import create_app
from sonalyze.measurement.settings import MeasurementSettings
from tests.measurement.audio import encode, sweep_recording
from tests.measurement.conftest import FS_HZ, RT_S, SHORT_SWEEP
from tests.support.servers import INTERNAL_TOKEN, SERVICE_HEADERS, ThreadedServer

ROUNDS = 8
MICROPHONES = 2
LEASE_S = 0.6
"""Short, so the lease loop (every third of it) renews and looks for lapsed jobs while the analyses run."""


@pytest.fixture
def two_workers(tmp_path) -> MeasurementSettings:
    return MeasurementSettings(
        data_dir=tmp_path / "measurement",
        max_upload_mb=4.0,
        analysis_workers=2,
        analysis_queue=4,
        analyze_wait_s=60,
        job_lease_s=LEASE_S,
        internal_auth_token=INTERNAL_TOKEN,
    )


async def test_simultaneous_uploads_with_two_workers_end_in_one_result_each(two_workers, room, caplog) -> None:
    app = create_app(two_workers)
    analysed: Counter[str] = Counter()
    with ThreadedServer(app) as server:
        service = app.state.service
        real_submit = service.tasks.submit

        async def counted_submit(fn, task, **kwargs):
            analysed.update(key for _, key in task.uploads)
            return await real_submit(fn, task, **kwargs)

        service.tasks.submit = counted_submit
        caplog.set_level(logging.INFO, logger="sonalyze.measurement.service")
        async with httpx.AsyncClient(base_url=server.url, timeout=60, headers=SERVICE_HEADERS) as http:
            for round_index in range(ROUNDS):
                job = (await http.post("/v1/jobs", json={"lobby_id": "lobby-1", "sweep": SHORT_SWEEP})).json()
                sweep, _ = soundfile.read(io.BytesIO((await http.get(job["audio_url"])).content), dtype="float64")
                names = [f"speaker-0_mic-{k}.wav" for k in range(MICROPHONES)]
                wavs = [
                    encode(sweep_recording(sweep, room, FS_HZ, offset_s=0.2 + 0.1 * k, noise_dbfs=-80.0, seed=round_index * 10 + k), FS_HZ)
                    for k in range(MICROPHONES)
                ]
                answers = await asyncio.gather(
                    *(
                        http.post(f"/v1/jobs/{job['job_id']}/uploads/{name}", content=wav, headers={"Content-Type": "audio/wav"})
                        for name, wav in zip(names, wavs)
                    )
                )
                assert [answer.status_code for answer in answers] == [201] * MICROPHONES, [a.text for a in answers]
                done = (await http.post(f"/v1/jobs/{job['job_id']}/analyze", json={"source": "sweep_deconvolution", "uploads": names})).json()
                assert done["status"] == "done", (round_index, done.get("error"), done.get("results"))
                for name in names:
                    assert "error" not in done["results"][name], (round_index, name, done["results"][name]["error"])
                    assert done["results"][name]["t30_s"]["broadband"] == pytest.approx(RT_S, rel=0.05)
                assert (await http.get(f"/v1/jobs/{job['job_id']}")).json()["status"] == "done"  # as saved
    assert set(analysed.values()) == {1} and len(analysed) == ROUNDS * MICROPHONES  # each once: the early analysis
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "taken over" in m or "taking over" in m or "crashed" in m], messages
    assert messages.count("analysis finished") == ROUNDS


async def test_simultaneous_uploads_to_two_replicas_are_both_kept(tmp_path, room) -> None:
    """The gateway spreads a session's uploads over the replicas: the two uploads of one job reach two
    replicas at once and both save the job (version-checked). Each must be kept: the later save takes the
    job again as the other replica saved it (without that, one upload in most rounds got 409 concurrent_update)."""
    replicas = [
        MeasurementSettings(
            data_dir=tmp_path / "measurement",  # one job database and blob folder, as replicas share them
            max_upload_mb=4.0,
            analysis_workers=1,
            analyze_wait_s=60,
            replica_id=f"replica-{name}",
            internal_auth_token=INTERNAL_TOKEN,
        )
        for name in "ab"
    ]
    with ThreadedServer(create_app(replicas[0])) as a, ThreadedServer(create_app(replicas[1])) as b:
        clients = [httpx.AsyncClient(base_url=server.url, timeout=60, headers=SERVICE_HEADERS) for server in (a, b)]
        try:
            for round_index in range(ROUNDS):
                job = (await clients[0].post("/v1/jobs", json={"lobby_id": "lobby-1", "sweep": SHORT_SWEEP})).json()
                sweep, _ = soundfile.read(io.BytesIO((await clients[0].get(job["audio_url"])).content), dtype="float64")
                names = [f"speaker-0_mic-{k}.wav" for k in range(MICROPHONES)]
                answers = await asyncio.gather(
                    *(
                        client.post(
                            f"/v1/jobs/{job['job_id']}/uploads/{name}",
                            content=encode(sweep_recording(sweep, room, FS_HZ, offset_s=0.2 + 0.1 * k, noise_dbfs=-80.0, seed=k), FS_HZ),
                            headers={"Content-Type": "audio/wav"},
                        )
                        for k, (client, name) in enumerate(zip(clients, names))
                    )
                )
                assert [answer.status_code for answer in answers] == [201] * MICROPHONES, (round_index, [a.text[:300] for a in answers])
                saved = (await clients[1].get(f"/v1/jobs/{job['job_id']}")).json()
                assert sorted(upload["name"] for upload in saved["uploads"]) == names, round_index
                done = (await clients[0].post(f"/v1/jobs/{job['job_id']}/analyze", json={"source": "sweep_deconvolution", "uploads": names})).json()
                assert done["status"] == "done" and all("error" not in done["results"][name] for name in names), (round_index, done.get("error"))
        finally:
            for client in clients:
                await client.aclose()
