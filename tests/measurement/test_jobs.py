"""The pure parts: the job lifecycle table, sweep resolution, names, the summary, the file store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from sonalyze.common.blobs import LocalBlobStore

from sonalyze.common.errors import BadRequest, Conflict
from sonalyze.common.internal_auth import SERVICE_CALLER
from sonalyze.measurement.analysis import summarize
from sonalyze.measurement.jobs import ALLOWED_TRANSITIONS, AnalyzeRequest, Job, JobCreate, JobStatus
from sonalyze.measurement import service as measurement_service
from sonalyze.measurement.service import MeasurementService
from sonalyze.measurement.store import JobStore, sweep_key, upload_key
from sonalyze.measurement.uploads import check_upload_name
from sonalyze.storage.db import make_engine

EXPECTED = {
    ("created", "uploading"),
    ("uploading", "uploading"),
    ("uploading", "analyzing"),
    ("analyzing", "done"),
    ("analyzing", "failed"),
    ("done", "uploading"),
    ("done", "analyzing"),
    ("failed", "uploading"),
    ("failed", "analyzing"),
}


def _job() -> Job:
    return Job.create(JobCreate().sweep_params())


@pytest.mark.parametrize("start", list(JobStatus))
@pytest.mark.parametrize("to", list(JobStatus))
def test_every_transition_is_allowed_or_a_conflict(start, to):
    job = _job()
    job.status = start
    if (start.value, to.value) in EXPECTED:
        job.move_to(to, "test")
        assert job.status is to
    else:
        with pytest.raises(Conflict) as caught:
            job.move_to(to, "test")
        assert caught.value.details == {"reason": "invalid_transition", "status": start.value, "to": to.value}
        assert job.status is start
    assert {(a.value, b.value) for a, targets in ALLOWED_TRANSITIONS.items() for b in targets} == EXPECTED


def test_sweep_defaults_follow_the_sample_rate():
    assert JobCreate().sweep_params().f_end_hz == 20000.0
    assert JobCreate(sample_rate_hz=32000).sweep_params().f_end_hz == 14400.0
    with pytest.raises(ValueError, match="Nyquist"):
        JobCreate.model_validate({"sample_rate_hz": 16000, "sweep": {"f_end_hz": 9000}}).sweep_params()


def test_job_json_round_trip_keeps_the_sweep():
    job = JobCreate.model_validate({"sample_rate_hz": 44100, "sweep": {"duration_s": 3, "level_dbfs": -10}})
    created = Job.create(job.sweep_params())
    again = Job.model_validate_json(created.model_dump_json())
    assert again == created and again.sweep_params == job.sweep_params()
    info = again.audio_info()
    assert info["sweep"]["total_samples"] == round(44100 * (0.5 + 3 + 2))
    assert info["sweep"]["sweep_start_sample"] == 22050


@pytest.mark.parametrize("name", ["mic1", "mic-1.wav", "A_b.c-d", "9", "x" * 64])
def test_good_names(name):
    assert check_upload_name(name) == name


@pytest.mark.parametrize(
    "name", ["", ".", "..", ".hidden", "../x", "a/b", "a\\b", "x" * 65, "sp ace", "é", "a\0b", "-x", "mic\n"]
)
def test_bad_names(name):
    with pytest.raises(BadRequest) as caught:
        check_upload_name(name)
    assert caught.value.code == "invalid_name"


def _report(t30: float | None, bands: list[float | None]) -> dict:
    metric = {"bands": bands, "broadband": t30, "reasons": {}}
    return {
        "bands_hz": [125, 250, 500, 1000, 2000, 4000, 8000],
        **{name: metric for name in ("t20_s", "t30_s", "edt_s", "c50_db", "c80_db", "d50", "centre_time_s", "drr_db")},
        "sti": {"value": None if t30 is None else 0.6, "mti": [0.6] * 7},
    }


def test_summary_averages_valid_values_and_lists_failures():
    results = {
        "a": _report(0.5, [0.6, None, 0.5, 0.5, 0.5, 0.5, 0.5]),
        "b": _report(0.7, [0.8, None, 0.7, 0.7, 0.7, 0.7, None]),
        "c": _report(None, [None] * 7),
        "bad": {"source": "sweep_deconvolution", "error": {"code": "analysis_failed", "message": "no sweep"}},
    }
    summary = summarize(results)
    assert summary["uploads"] == ["a", "b", "c"] and summary["failed_uploads"] == ["bad"]
    t30 = summary["t30_s"]
    assert t30["broadband"] == pytest.approx(0.6) and t30["count"] == 2
    assert t30["bands"][0] == pytest.approx(0.7) and t30["bands"][1] is None and t30["bands"][6] == pytest.approx(0.5)
    assert summary["sti"] == {"value": pytest.approx(0.6), "count": 2}
    assert summarize({"bad": results["bad"]}) == {"uploads": [], "failed_uploads": ["bad"]}


async def _store(database_url, tmp_path, runner="replica-a") -> JobStore:
    store = JobStore(make_engine(database_url), LocalBlobStore(tmp_path / "blobs"), runner=runner)
    await store.migrate()
    return store


async def test_store_round_trip_versions_and_unsafe_ids(database_url, tmp_path):
    store = await _store(database_url, tmp_path)
    other = JobStore(store.engine, store.blobs, runner="replica-b")  # a second replica, same database
    try:
        await store.migrate()  # idempotent (every replica migrates at start-up)
        job = _job()
        sweep = tmp_path / "sweep.wav"
        sweep.write_bytes(b"RIFF-sweep")
        await store.create(job, sweep)
        assert store.blobs.local_path(sweep_key(job.job_id)).read_bytes() == b"RIFF-sweep"
        mine, theirs = await store.load(job.job_id), await other.load(job.job_id)
        assert mine.model_dump() == job.model_dump() == theirs.model_dump() and mine.version == 1
        mine.move_to(JobStatus.UPLOADING, "upload")
        await store.save(mine)
        theirs.move_to(JobStatus.UPLOADING, "upload")
        with pytest.raises(Conflict) as refused:  # read before the other replica's save: it must not win
            await other.save(theirs)
        assert refused.value.details == {"reason": "concurrent_update"}
        assert (await other.load(job.job_id)).status is JobStatus.UPLOADING
        for bad in ("../../etc", "0" * 32, job.job_id + "\n", job.job_id.upper()):
            assert await store.load(bad) is None
    finally:
        await store.engine.dispose()


async def test_interrupted_analyses_are_the_runners_own(database_url, tmp_path):
    store = await _store(database_url, tmp_path)
    other = JobStore(store.engine, store.blobs, runner="replica-b")
    try:
        sweep = tmp_path / "sweep.wav"
        sweep.write_bytes(b"x")
        jobs = {}
        for owner in (store, other):
            job = _job()
            await owner.create(job, sweep)
            job.move_to(JobStatus.UPLOADING, "upload")
            job.move_to(JobStatus.ANALYZING, "analyze")
            await owner.save(job)
            jobs[owner.runner] = job.job_id
        assert [job.job_id for job in await store.interrupted()] == [jobs["replica-a"]]
        assert [job.job_id for job in await other.interrupted()] == [jobs["replica-b"]]
    finally:
        await store.engine.dispose()


async def test_expired_jobs_and_their_audio_are_deleted(database_url, tmp_path):
    store = await _store(database_url, tmp_path)
    try:
        sweep = tmp_path / "sweep.wav"
        sweep.write_bytes(b"x")
        old, running, recent = _job(), _job(), _job()
        for job in (old, running, recent):
            await store.create(job, sweep)
        store.blobs.put_file(upload_key(old.job_id, "mic-1"), sweep)
        running.move_to(JobStatus.UPLOADING, "upload")
        running.move_to(JobStatus.ANALYZING, "analyze")
        await store.save(running)
        cutoff_s = max(old.updated_at, running.updated_at).timestamp() + 1.0
        recent.updated_at = datetime.fromtimestamp(cutoff_s + 60.0, UTC)
        await store.save(recent)
        assert await store.delete_expired(cutoff_s) == [old.job_id]  # an analysis in progress is never deleted
        assert await store.load(old.job_id) is None
        assert store.blobs.local_path(sweep_key(old.job_id)) is None
        assert store.blobs.local_path(upload_key(old.job_id, "mic-1")) is None
        assert not (tmp_path / "blobs" / "jobs" / old.job_id).exists()
        assert await store.load(running.job_id) is not None and await store.load(recent.job_id) is not None
        assert store.blobs.local_path(sweep_key(recent.job_id)) is not None
        assert await store.delete_expired(cutoff_s) == []
    finally:
        await store.engine.dispose()


async def test_jobs_of_the_former_folder_layout_are_imported_once(tmp_path):
    job = _job()
    job_dir = tmp_path / "jobs" / job.job_id
    job_dir.mkdir(parents=True)
    (job_dir / "job.json").write_text(job.model_dump_json())
    store = await _store(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}", tmp_path)
    try:
        assert await store.import_job_files(tmp_path) == 1
        assert await store.import_job_files(tmp_path) == 0
        loaded = await store.load(job.job_id)
        assert loaded.model_dump() == job.model_dump() and loaded.version == 1
    finally:
        await store.engine.dispose()


async def test_another_replica_sees_the_progress_of_an_analysis(settings, ir_wav, monkeypatch) -> None:
    """Replica A analyzes; replica B (same database) answers from the database: it sees the progress.

    An impulse response's analysis takes ≈ 20 ms: the twelve end within one default save interval
    (0.25 s), so the test saves every 20 ms."""
    monkeypatch.setattr(measurement_service, "PROGRESS_SAVE_INTERVAL_S", 0.02)

    async def chunks():
        yield ir_wav

    a = MeasurementService(settings.model_copy(update={"analyze_wait_s": 0.0, "replica_id": "a"}))
    b = MeasurementService(settings.model_copy(update={"replica_id": "b"}))
    await a.start()
    await b.start()
    try:
        job = await a.create_job(JobCreate(), SERVICE_CALLER)
        for index in range(12):  # long enough for several progress saves
            await a.upload(job.job_id, f"ir{index}", chunks(), caller=SERVICE_CALLER, content_type="audio/wav", content_length=None)
        await a.analyze(job.job_id, AnalyzeRequest(source="impulse_response"), SERVICE_CALLER)
        seen = []
        while (seen_job := await b.get_job(job.job_id, SERVICE_CALLER)).status is JobStatus.ANALYZING:
            seen.append(seen_job.progress.message)
            await asyncio.sleep(0.005)
        assert seen_job.status is JobStatus.DONE, seen_job.error
        assert any(message.startswith("analyzing ir") for message in seen), sorted(set(seen))
    finally:
        await a.close()
        await b.close()
