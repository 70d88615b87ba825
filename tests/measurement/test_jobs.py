"""The pure parts: the job lifecycle table, sweep resolution, names, the summary, the file store."""

from __future__ import annotations

import numpy as np
import pytest

from sonalyze.common.errors import BadRequest, Conflict
from sonalyze.measurement.analysis import summarize
from sonalyze.measurement.jobs import ALLOWED_TRANSITIONS, Job, JobCreate, JobStatus
from sonalyze.measurement.store import JobStore
from sonalyze.measurement.uploads import check_upload_name

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


def test_store_writes_atomically_and_refuses_unsafe_ids(tmp_path):
    store = JobStore(tmp_path)
    job = _job()
    store.create(job, np.zeros(job.sweep_params.total_samples))
    job.status = JobStatus.UPLOADING
    store.save(job)
    assert store.load(job.job_id) == job
    job_dir = tmp_path / "jobs" / job.job_id
    assert sorted(path.name for path in job_dir.iterdir()) == ["job.json", "sweep.wav", "uploads"]
    assert list(store.job_ids()) == [job.job_id]
    (job_dir / ".job-x.part").write_text("{")
    (job_dir / "uploads" / ".incoming-y.part").write_text("half")
    assert store.remove_partials(job.job_id) == 2
    assert store.load("../../etc") is None and store.load("0" * 32) is None
    assert store.load(job.job_id + "\n") is None
    with pytest.raises(ValueError):
        store.job_dir("../" + job.job_id)
