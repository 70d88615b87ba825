"""End to end through the real measurement service: repeated sweeps, the client's capture facts
(``X-Capture-Facts``) and the whole-recording refusals (contract C3, docs/measurement.md)."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
from scipy.signal import butter, resample_poly, sosfilt

from tests.measurement.audio import encode
from tests.measurement.conftest import FS_HZ, RT_S, SHORT_SWEEP, record_job_sweep

FACTS = {
    "sample_rate_hz": 48000,
    "context_sample_rate_hz": 48000,
    "echo_cancellation": True,
    "noise_suppression": False,
    "auto_gain_control": False,
    "base_latency_s": 0.01,
    "user_agent": "Mozilla/5.0 (Linux; Android 14) Chrome/131",
    "channel_count": 1,
    "device_label": "Built-in microphone",
}


def _facts_header(facts: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(facts).encode()).decode().rstrip("=")


def _job(http: httpx.Client, **body) -> dict:
    response = http.post("/v1/jobs", json={"sweep": SHORT_SWEEP, **body})
    assert response.status_code == 201, response.text
    return response.json()


def _analyze(http: httpx.Client, job_id: str) -> dict:
    done = http.post(f"/v1/jobs/{job_id}/analyze", json={"source": "sweep_deconvolution"}).json()
    assert done["status"] == "done", done
    return done


def test_three_sweeps_with_capture_facts(http, room):
    """A job with sweep_count = 3: the file holds three sweeps a period apart; the upload's capture facts
    (echo cancellation on) are stored with the upload and the result, which is flagged processed_capture;
    the three repetitions are used and give the clock from their spacing."""
    job = _job(http, sweep_count=3)
    assert job["sweep"]["sweep_count"] == 3
    period_s = SHORT_SWEEP["duration_s"] + SHORT_SWEEP["silence_after_s"]
    assert job["sweep"]["period_s"] == pytest.approx(period_s)
    recording = record_job_sweep(http, job, room)
    upload = http.post(
        f"/v1/jobs/{job['job_id']}/uploads/phone",
        content=encode(recording, FS_HZ),
        headers={"X-Capture-Facts": _facts_header(FACTS)},
    )
    assert upload.status_code == 201, upload.text
    stored = http.get(f"/v1/jobs/{job['job_id']}").json()["uploads"]
    assert [u["capture"] for u in stored] == [FACTS]

    result = _analyze(http, job["job_id"])["results"]["phone"]
    section = result["recording"]
    assert section["flags"] == ["processed_capture"]
    assert section["capture"] == FACTS
    assert section["sweeps"] == {"requested": 3, "used": 3, "rejected": []}
    assert section["clock_offset_method"] == "repetition_spacing"
    assert abs(section["clock_offset_ppm"]) <= 3.0  # nothing resampled: the recording runs at the sweep's clock
    assert result["t30_s"]["broadband"] == pytest.approx(RT_S, rel=0.05)


@pytest.mark.parametrize(
    "header",
    [
        _facts_header({"user_agent": "x" * 4100}),  # 4 KiB decoded is the limit
        "%%%not base64",
        _facts_header(["not", "an", "object"]),
        _facts_header({"echo_cancellation": "yes"}),
    ],
)
def test_bad_capture_facts_are_400_and_store_nothing(http, room, header):
    job = _job(http)
    recording = encode(record_job_sweep(http, job, room), FS_HZ)
    refused = http.post(f"/v1/jobs/{job['job_id']}/uploads/phone", content=recording, headers={"X-Capture-Facts": header})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_capture_facts"
    assert http.get(f"/v1/jobs/{job['job_id']}").json()["uploads"] == []
    # the service keeps working: the same upload without the header is taken
    assert http.post(f"/v1/jobs/{job['job_id']}/uploads/phone", content=recording).status_code == 201


def test_mislabelled_rate_is_the_uploads_error(http, room):
    """Issue 14's first row: 44.1 kHz audio in a WAV labelled 48 kHz is never analysed."""
    job = _job(http)
    recording = record_job_sweep(http, job, room)
    at_44k1 = resample_poly(recording, 147, 160)  # recorded at 44.1 kHz ...
    good = http.post(f"/v1/jobs/{job['job_id']}/uploads/good", content=encode(recording, FS_HZ))
    wrong = http.post(f"/v1/jobs/{job['job_id']}/uploads/phone", content=encode(at_44k1, FS_HZ))  # ... labelled 48
    assert good.status_code == 201 and wrong.status_code == 201
    done = _analyze(http, job["job_id"])
    error = done["results"]["phone"]["error"]
    assert error["code"] == "sample_rate_mismatch"
    assert "44100 Hz audio labelled 48000 Hz" in error["message"]
    assert done["results"]["phone"]["recording"]["clock_offset_ppm"] < -30000
    assert done["results"]["good"]["t30_s"]["broadband"] == pytest.approx(RT_S, rel=0.05)


def test_door_slam_is_the_uploads_error(http, room):
    """A door slam (a low-heavy burst at −6 dB re the recording's peak) during the one sweep."""
    job = _job(http)
    recording = record_job_sweep(http, job, room, offset_s=0.3)
    rng = np.random.default_rng(9)
    t_s = np.arange(int(0.6 * FS_HZ)) / FS_HZ
    slam = sosfilt(butter(2, [60, 2000], btype="bandpass", fs=FS_HZ, output="sos"), rng.standard_normal(t_s.size) * np.exp(-t_s / 0.08))
    slam *= 0.25 / np.max(np.abs(slam))
    at = int((0.3 + SHORT_SWEEP["silence_before_s"] + 1.0) * FS_HZ)  # 1 s into the sweep
    recording[at : at + slam.size] += slam
    assert http.post(f"/v1/jobs/{job['job_id']}/uploads/phone", content=encode(recording, FS_HZ)).status_code == 201
    done = http.post(f"/v1/jobs/{job['job_id']}/analyze", json={"source": "sweep_deconvolution"}).json()
    assert done["results"]["phone"]["error"]["code"] == "impulsive_noise"  # the job's only upload: the job failed
    assert done["results"]["phone"]["recording"]["sweeps"] == {"requested": 1, "used": 0, "rejected": [0]}
