"""A lobby session's recordings are analysed as each upload is stored, so ``analyze`` at the last upload
finds the others done (the web app's upload → results target, issue 13)."""

from __future__ import annotations

import asyncio

import pytest
import soundfile

from sonalyze.common.internal_auth import SERVICE_CALLER
from sonalyze.measurement.jobs import AnalyzeRequest, JobCreate, JobStatus
from sonalyze.measurement.service import MeasurementService
from tests.measurement.audio import encode, sweep_recording
from tests.measurement.conftest import FS_HZ, RT_S, SHORT_SWEEP


async def _chunks(data: bytes):
    yield data


async def test_session_uploads_are_analysed_as_they_arrive(settings, room) -> None:
    service = MeasurementService(settings)
    await service.start()
    runs: list[list[str]] = []
    real_submit = service.tasks.submit

    async def counted_submit(fn, task, **kwargs):
        runs.append([name for name, _ in task.uploads])
        return await real_submit(fn, task, **kwargs)

    service.tasks.submit = counted_submit
    try:
        job = await service.create_job(JobCreate(lobby_id="lobby-1", sweep=SHORT_SWEEP), SERVICE_CALLER)
        sweep, _ = soundfile.read(str(await service.sweep_path(job)), dtype="float64")
        for k in range(2):
            wav = encode(sweep_recording(sweep, room, FS_HZ, offset_s=0.3 + 0.1 * k, noise_dbfs=-80.0, seed=k), FS_HZ)
            await service.upload(job.job_id, f"mic-{k}.wav", _chunks(wav), caller=SERVICE_CALLER, content_type="audio/wav", content_length=None)
        await asyncio.wait(list(service._early.values()))
        assert sorted(runs) == [["mic-0.wav"], ["mic-1.wav"]]  # started at the uploads, before any analyze

        done = await service.analyze(job.job_id, AnalyzeRequest(source="sweep_deconvolution"), SERVICE_CALLER)
        assert done.status is JobStatus.DONE, done.error
        assert len(runs) == 2  # nothing analysed twice
        for name in ("mic-0.wav", "mic-1.wav"):
            assert done.results[name]["t30_s"]["broadband"] == pytest.approx(RT_S, rel=0.05)
        assert done.summary["t30_s"]["count"] == 2

        again = await service.analyze(job.job_id, AnalyzeRequest(source="sweep_deconvolution"), SERVICE_CALLER)
        assert again.status is JobStatus.DONE and runs[-1] == ["mic-0.wav", "mic-1.wav"]  # a new analyze runs afresh
    finally:
        await service.close()
