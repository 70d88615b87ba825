"""The measurement service over HTTP: jobs, the sweep download, uploads, analysis, and every refusal."""

from __future__ import annotations

import io
import os
import socket
import time

import httpx
import numpy as np
import pytest
import soundfile
from scipy.signal import resample_poly

from sonalyze.common.blobs import STALE_PARTIAL_S
from sonalyze.measurement.main import create_app
from sonalyze.measurement.settings import MeasurementSettings
from tests.measurement.audio import decode, encode, room_ir
from tests.measurement.conftest import FS_HZ, RT_S, SHORT_SWEEP, record_job_sweep
from tests.support.servers import INTERNAL_TOKEN, SERVICE_HEADERS, ThreadedServer, service_http

BANDS_HZ = [125, 250, 500, 1000, 2000, 4000, 8000]
JND_T = 0.05
"""Just-noticeable difference of T (ISO 3382-1 Table A.1): the analysed T30 must be within 5 %."""


def _create(http: httpx.Client, **body) -> dict:
    response = http.post("/v1/jobs", json=body or None)
    assert response.status_code == 201, response.text
    return response.json()


def _error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    return error


def _assert_t30_is_the_room(result: dict) -> None:
    assert result["bands_hz"] == BANDS_HZ
    t30 = result["t30_s"]
    assert t30["broadband"] == pytest.approx(RT_S, rel=JND_T)
    for band_hz in (1000, 2000, 4000, 8000):
        assert t30["bands"][BANDS_HZ.index(band_hz)] == pytest.approx(RT_S, rel=JND_T), band_hz
    for metric in ("t20_s", "edt_s", "c50_db", "c80_db", "d50", "drr_db"):
        assert len(result[metric]["bands"]) == 7 and "broadband" in result[metric]
    assert 0.0 < result["sti"]["value"] < 1.0 and len(result["sti"]["mti"]) == 7
    assert result["decay_curves"]["time_s"] and result["frequency_response"]["frequency_hz"]


def test_health(http):
    response = http.get("/v1/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["service"] == "measurement"
    assert body["analysis"] == {"running": 0, "queued": 0, "max_workers": 1, "max_queued": 1}


def test_create_job_with_defaults_and_download_its_sweep(http):
    response = http.post("/v1/jobs")
    assert response.status_code == 201
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['job_id']}"
    assert job["status"] == "created" and job["sample_rate_hz"] == 48000
    sweep = job["sweep"]
    assert (sweep["f_start_hz"], sweep["f_end_hz"], sweep["duration_s"]) == (20.0, 20000.0, 5.0)
    assert (sweep["silence_before_s"], sweep["silence_after_s"], sweep["level_dbfs"]) == (0.5, 2.0, -6.0)
    assert sweep["sweep_start_s"] == 0.5 and sweep["sweep_length_s"] == 5.0
    assert sweep["total_duration_s"] == 7.5 and sweep["total_samples"] == 360000
    assert job["audio_url"] == f"/v1/jobs/{job['job_id']}/sweep.wav"
    assert job["uploads"] == [] and job["results"] == {} and job["summary"] is None and job["error"] is None

    download = http.get(job["audio_url"])
    assert download.status_code == 200 and download.headers["content-type"] == "audio/wav"
    head = http.head(job["audio_url"])
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(download.content)
    partial = http.get(job["audio_url"], headers={"range": "bytes=0-99"})
    assert partial.status_code == 206 and partial.content == download.content[:100]
    samples, fs_hz = decode(download.content)
    assert fs_hz == 48000 and samples.size == sweep["total_samples"]
    start = sweep["sweep_start_s"] * fs_hz
    assert np.all(samples[: int(start)] == 0.0)  # silence before the sweep, exactly where announced
    assert 20 * np.log10(np.max(np.abs(samples))) == pytest.approx(-6.0, abs=0.05)

    assert http.get(f"/v1/jobs/{job['job_id']}").json() == job


def test_create_job_with_parameters_and_refusals(http):
    job = _create(http, sample_rate_hz=16000, sweep={"duration_s": 1.0, "silence_before_s": 0.25, "level_dbfs": -12})
    assert job["sample_rate_hz"] == 16000
    assert job["sweep"]["f_end_hz"] == 7200.0  # 0.45·fs when 20 kHz is above Nyquist
    assert job["sweep"]["total_samples"] == 16000 * (0.25 + 1.0 + 2.0)
    assert decode(http.get(job["audio_url"]).content)[1] == 16000

    impossible = http.post("/v1/jobs", json={"sample_rate_hz": 16000, "sweep": {"f_end_hz": 12000}})
    assert "Nyquist" in _error(impossible, 422, "invalid_sweep")["message"]
    unknown_field = http.post("/v1/jobs", json={"sweep": {"duration": 3}})
    _error(unknown_field, 422, "validation_error")
    for fs_hz in (1, 7999, 192001, 0, -48000):
        refused = _error(http.post("/v1/jobs", json={"sample_rate_hz": fs_hz}), 422, "unsupported_sample_rate")
        assert refused["details"] == {"sample_rate_hz": fs_hz, "min_hz": 8000, "max_hz": 192000}
    for fs_hz in (8000, 192000):
        assert http.post("/v1/jobs", json={"sample_rate_hz": fs_hz}).status_code == 201
    # found by fuzzing: a sample rate beyond 64 bits echoed in details was a 500; a start frequency of
    # 5e-324 Hz overflowed log(f_end/f_start) into a sweep of NaN
    huge = _error(http.post("/v1/jobs", json={"sample_rate_hz": -(2**72)}), 422, "unsupported_sample_rate")
    assert huge["details"]["sample_rate_hz"] == -(2**72)
    _error(http.post("/v1/jobs", json={"sweep": {"f_start_hz": 5e-324}}), 422, "validation_error")
    _error(http.post("/v1/jobs", json={"sweep": {"f_start_hz": 0.99}}), 422, "validation_error")


def test_unknown_jobs_are_404(http):
    for path in ("/v1/jobs/0123456789abcdef0123456789abcdef", "/v1/jobs/not-an-id", "/v1/jobs/..%2F..%2Fetc"):
        _error(http.get(path), 404, "not_found")
    _error(http.get("/v1/jobs/0123456789abcdef0123456789abcdef/sweep.wav"), 404, "not_found")
    _error(http.post("/v1/jobs/0123456789abcdef0123456789abcdef/uploads/mic1", content=b"x"), 404, "not_found")
    _error(http.post("/v1/jobs/0123456789abcdef0123456789abcdef/analyze", json={}), 404, "not_found")


def test_impulse_response_upload_and_analysis(http, ir_wav):
    job = _create(http)
    upload = http.post(f"/v1/jobs/{job['job_id']}/uploads/room.ir.wav", content=ir_wav)
    assert upload.status_code == 201, upload.text
    info = upload.json()
    assert info["name"] == "room.ir.wav" and info["sample_rate_hz"] == FS_HZ and info["channels"] == 1
    assert info["duration_s"] == pytest.approx(1.2) and info["format"] == "WAV" and info["size_bytes"] == len(ir_wav)
    assert http.get(f"/v1/jobs/{job['job_id']}").json()["status"] == "uploading"

    response = http.post(f"/v1/jobs/{job['job_id']}/analyze", json={"source": "impulse_response"})
    assert response.status_code == 200, response.text
    done = response.json()
    assert done["status"] == "done" and done["error"] is None
    assert done["progress"] == {"fraction": 1.0, "message": "done"}
    result = done["results"]["room.ir.wav"]
    assert result["source"] == "impulse_response"
    _assert_t30_is_the_room(result)
    assert done["summary"]["uploads"] == ["room.ir.wav"] and done["summary"]["failed_uploads"] == []
    assert done["summary"]["t30_s"]["broadband"] == result["t30_s"]["broadband"]
    assert http.get(f"/v1/jobs/{job['job_id']}").json() == done


def test_sweep_recordings_raw_and_multipart_flac(http, settings, room):
    job = _create(http, sweep=SHORT_SWEEP)
    job_id = job["job_id"]
    near = record_job_sweep(http, job, room, offset_s=0.3)
    far = record_job_sweep(http, job, room, offset_s=0.9)
    raw = http.post(f"/v1/jobs/{job_id}/uploads/mic-1", content=encode(near, FS_HZ))
    assert raw.status_code == 201, raw.text
    flac = encode(far, FS_HZ, "FLAC", "PCM_24")
    multipart = http.post(
        f"/v1/jobs/{job_id}/uploads/mic-2",
        files={"file": ("far.flac", flac, "audio/flac")},
        data={"note": "ignored field"},
    )
    assert multipart.status_code == 201, multipart.text
    assert multipart.json()["format"] == "FLAC"
    assert (settings.data_dir / "jobs" / job_id / "uploads" / "mic-2").read_bytes() == flac  # byte for byte
    assert multipart.json()["duration_s"] == pytest.approx(far.size / FS_HZ)

    done = http.post(f"/v1/jobs/{job_id}/analyze", json={"source": "sweep_deconvolution"}).json()
    assert done["status"] == "done", done["error"]
    assert sorted(done["results"]) == ["mic-1", "mic-2"]
    for result in done["results"].values():
        assert result["source"] == "sweep_deconvolution"
        _assert_t30_is_the_room(result)
    summary = done["summary"]
    assert summary["uploads"] == ["mic-1", "mic-2"] and summary["t30_s"]["count"] == 2
    mean = np.mean([result["t30_s"]["broadband"] for result in done["results"].values()])
    assert summary["t30_s"]["broadband"] == pytest.approx(mean)


def test_a_recording_at_another_rate_is_resampled_to_the_sweep(http, room):
    job = _create(http, sweep=SHORT_SWEEP)
    recording = record_job_sweep(http, job, room)
    at_44k1 = resample_poly(recording, 147, 160)
    assert http.post(f"/v1/jobs/{job['job_id']}/uploads/phone", content=encode(at_44k1, 44100)).status_code == 201
    done = http.post(f"/v1/jobs/{job['job_id']}/analyze", json={}).json()
    assert done["status"] == "done"
    assert done["results"]["phone"]["t30_s"]["broadband"] == pytest.approx(RT_S, rel=JND_T)


def test_an_upload_without_the_sweep_fails_that_upload_only(http, room, ir_wav):
    job = _create(http, sweep=SHORT_SWEEP)
    job_id = job["job_id"]
    good = record_job_sweep(http, job, room)
    rng = np.random.default_rng(5)
    assert http.post(f"/v1/jobs/{job_id}/uploads/good", content=encode(good, FS_HZ)).status_code == 201
    noise_only = encode(rng.standard_normal(good.size) * 0.01, FS_HZ)
    assert http.post(f"/v1/jobs/{job_id}/uploads/noise", content=noise_only).status_code == 201
    done = http.post(f"/v1/jobs/{job_id}/analyze", json={"source": "sweep_deconvolution"}).json()
    assert done["status"] == "done"
    assert done["results"]["good"]["t30_s"]["broadband"] == pytest.approx(RT_S, rel=JND_T)
    # Deconvolving noise gives no decay: the report says why per value, or the upload fails with a reason.
    noise_result = done["results"]["noise"]
    if "error" in noise_result:
        assert noise_result["error"]["code"] == "analysis_failed" and noise_result["error"]["message"]
    else:
        assert noise_result["t30_s"]["broadband"] != pytest.approx(RT_S, rel=JND_T)
    assert sorted(done["summary"]["uploads"] + done["summary"]["failed_uploads"]) == ["good", "noise"]


def test_bad_audio_is_refused_with_a_reason_and_leaves_nothing(http, settings, ir_wav):
    job = _create(http, sweep=SHORT_SWEEP)
    job_id = job["job_id"]
    url = f"/v1/jobs/{job_id}/uploads/"
    t_s = np.arange(FS_HZ) / FS_HZ
    clipped = np.clip(1.5 * np.sin(2 * np.pi * 440 * t_s), -1.0, 1.0)
    cases = {
        "text": (b"this is not audio at all", "not_audio"),
        "empty": (b"", "empty_audio"),
        "no-frames": (encode(np.zeros(0), FS_HZ), "empty_audio"),
        "clipped": (encode(clipped, FS_HZ, subtype="PCM_16"), "clipped_audio"),
        "short": (encode(np.full(int(0.05 * FS_HZ), 0.1), FS_HZ), "too_short"),
        "silent": (encode(np.zeros(FS_HZ), FS_HZ), "silent_audio"),
        "nan": (encode(np.where(t_s < 0.5, 0.1, np.nan), FS_HZ, subtype="FLOAT"), "invalid_samples"),
    }
    for name, (body, code) in cases.items():
        _error(http.post(url + name, content=body), 422, code)
    ogg = io.BytesIO()
    soundfile.write(ogg, 0.1 * np.sin(2 * np.pi * 440 * t_s), FS_HZ, format="OGG", subtype="VORBIS")
    _error(http.post(url + "ogg", content=ogg.getvalue()), 422, "unsupported_format")

    # A valid IR, but shorter than the sweep: accepted as a file, refused for sweep deconvolution.
    assert http.post(url + "ir", content=ir_wav).status_code == 201
    short = http.post(f"/v1/jobs/{job_id}/analyze", json={"source": "sweep_deconvolution"})
    assert "shorter than the sweep" in _error(short, 422, "too_short")["message"]
    after = http.get(f"/v1/jobs/{job_id}").json()
    assert after["status"] == "uploading" and [u["name"] for u in after["uploads"]] == ["ir"]
    uploads_dir = settings.data_dir / "jobs" / job_id / "uploads"
    assert sorted(path.name for path in uploads_dir.iterdir()) == ["ir"]


def test_names_that_leave_the_job_folder_are_400(http, settings, ir_wav):
    job = _create(http)
    base = f"/v1/jobs/{job['job_id']}/uploads/"
    for name in ("..%2F..%2Fescape.wav", "a%2Fb", ".hidden", "%2E%2E", "x" * 65, "sp%20ace", "a\\b"):
        _error(http.post(base + name, content=ir_wav), 400, "invalid_name")
    assert not (settings.data_dir / "escape.wav").exists()
    assert not (settings.data_dir / "jobs" / "escape.wav").exists()
    assert http.get(f"/v1/jobs/{job['job_id']}").json()["uploads"] == []


def test_declared_length_over_the_limit_is_413_at_once(http, settings):
    job = _create(http)
    too_big = b"\0" * (settings.max_upload_bytes + 1)
    error = _error(http.post(f"/v1/jobs/{job['job_id']}/uploads/big", content=too_big), 413, "payload_too_large")
    assert error["details"]["max_bytes"] == settings.max_upload_bytes


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _read_response_head(sock: socket.socket) -> bytes:
    received = b""
    while b"\r\n\r\n" not in received:
        piece = sock.recv(65536)
        if not piece:
            break
        received += piece
    return received


def test_streamed_body_over_the_limit_is_refused_before_it_ends(server, settings):
    """Chunked body without Content-Length: the 413 arrives while the client has not finished sending."""
    job = service_http.post(server.url + "/v1/jobs", timeout=30).json()
    limit = settings.max_upload_bytes
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            (
                f"POST /v1/jobs/{job['job_id']}/uploads/stream HTTP/1.1\r\nHost: test\r\n"
                + "".join(f"{name}: {value}\r\n" for name, value in SERVICE_HEADERS.items())
                + "Content-Type: audio/wav\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        sent = 0
        while sent <= limit:
            piece = b"\1" * 65536
            sock.sendall(_chunk(piece))
            sent += len(piece)
        # Past the limit, and the terminating chunk was never sent: the answer must already be there.
        head = _read_response_head(sock)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert sent < 2 * limit
    incoming = settings.data_dir / ".incoming"  # where uploads stream before they are published
    deadline = time.monotonic() + 10
    while list(incoming.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(incoming.iterdir()) == []
    assert not (settings.data_dir / "jobs" / job["job_id"] / "uploads").exists()
    assert service_http.get(f"{server.url}/v1/jobs/{job['job_id']}").json()["status"] == "created"


def test_multipart_over_the_limit_and_malformed(http, settings):
    job = _create(http)
    url = f"/v1/jobs/{job['job_id']}/uploads/m"
    big = http.post(url, files={"file": ("big.wav", b"\0" * (settings.max_upload_bytes + 10), "audio/wav")})
    _error(big, 413, "payload_too_large")
    no_file = http.post(url, files={"other": (None, b"just a field")})
    _error(no_file, 400, "invalid_multipart")
    no_boundary = http.post(url, content=b"abc", headers={"content-type": "multipart/form-data"})
    _error(no_boundary, 400, "invalid_multipart")


def test_wrong_transitions_are_409(http, ir_wav):
    job = _create(http)
    job_id = job["job_id"]
    nothing = http.post(f"/v1/jobs/{job_id}/analyze", json={"source": "impulse_response"})
    error = _error(nothing, 409, "conflict")
    assert error["details"] == {"reason": "invalid_transition", "status": "created", "to": "analyzing"}
    assert http.post(f"/v1/jobs/{job_id}/uploads/ir", content=ir_wav).status_code == 201
    duplicate = http.post(f"/v1/jobs/{job_id}/uploads/ir", content=ir_wav)
    assert _error(duplicate, 409, "conflict")["details"]["reason"] == "upload_exists"
    unknown = http.post(f"/v1/jobs/{job_id}/analyze", json={"uploads": ["nope"], "source": "impulse_response"})
    assert _error(unknown, 400, "bad_request")["details"]["known"] == ["ir"]
    _error(http.post(f"/v1/jobs/{job_id}/analyze", json={"source": "echo"}), 422, "validation_error")


def test_analysis_runs_off_the_event_loop_with_progress_202_and_busy(tmp_path, ir_wav):
    """With analyze_wait_s = 0 the answer is 202 at once; the job shows progress; health still answers."""

    settings = MeasurementSettings(internal_auth_token=INTERNAL_TOKEN, data_dir=tmp_path / "m", analysis_workers=1, analysis_queue=0, analyze_wait_s=0)
    with ThreadedServer(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=60, headers=SERVICE_HEADERS) as http:
        jobs = [_create(http)["job_id"] for _ in range(2)]
        for job_id in jobs:
            for index in range(6):  # several uploads: an analysis that lasts a while
                assert http.post(f"/v1/jobs/{job_id}/uploads/ir{index}", content=ir_wav).status_code == 201
        started = http.post(f"/v1/jobs/{jobs[0]}/analyze", json={"source": "impulse_response"})
        assert started.status_code == 202, started.text
        assert started.json()["status"] == "analyzing" and started.json()["poll_url"] == f"/v1/jobs/{jobs[0]}"

        health = http.get("/v1/health")
        assert health.status_code == 200
        assert health.json()["analysis"]["running"] + health.json()["analysis"]["queued"] == 1
        busy = http.post(f"/v1/jobs/{jobs[1]}/analyze", json={"source": "impulse_response"})
        _error(busy, 503, "busy")
        assert int(busy.headers["retry-after"]) >= 1
        _error(http.post(f"/v1/jobs/{jobs[0]}/analyze", json={}), 409, "conflict")
        _error(http.post(f"/v1/jobs/{jobs[0]}/uploads/late", content=ir_wav), 409, "conflict")
        assert http.get(f"/v1/jobs/{jobs[1]}").json()["status"] == "uploading"  # the refused one is untouched

        messages = set()
        deadline = time.monotonic() + 120
        while (job := http.get(f"/v1/jobs/{jobs[0]}").json())["status"] == "analyzing":
            assert 0.0 <= job["progress"]["fraction"] <= 1.0
            messages.add(job["progress"]["message"])
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert job["status"] == "done" and len(job["results"]) == 6
        assert any(message.startswith("analyzing ir") for message in messages), messages
        # Done, then a late upload and a second analysis of it alone: results are merged.
        assert http.post(f"/v1/jobs/{jobs[0]}/uploads/late", content=ir_wav).status_code == 201
        again = http.post(f"/v1/jobs/{jobs[0]}/analyze", json={"source": "impulse_response", "uploads": ["late"]})
        assert again.status_code == 202
        while (job := http.get(f"/v1/jobs/{jobs[0]}").json())["status"] == "analyzing":
            time.sleep(0.02)
        assert job["status"] == "done" and len(job["results"]) == 7 and len(job["summary"]["uploads"]) == 7


def test_jobs_survive_a_restart_and_interrupted_analyses_fail(tmp_path, ir_wav):

    settings = MeasurementSettings(internal_auth_token=INTERNAL_TOKEN, data_dir=tmp_path / "m", analyze_wait_s=0)
    with ThreadedServer(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=60, headers=SERVICE_HEADERS) as http:
        kept = _create(http)
        assert http.post(f"/v1/jobs/{kept['job_id']}/uploads/ir", content=ir_wav).status_code == 201
        kept = http.get(f"/v1/jobs/{kept['job_id']}").json()
        cut = _create(http)["job_id"]
        # Enough uploads that their analysis (≈ 30 ms each in a warm worker) outlasts the server's stop.
        for index in range(40):
            http.post(f"/v1/jobs/{cut}/uploads/ir{index}", content=ir_wav)
        assert http.post(f"/v1/jobs/{cut}/analyze", json={"source": "impulse_response"}).status_code == 202
    # The server stopped during the analysis; a crash could also leave a half-written upload behind.
    leftover = settings.data_dir / ".incoming" / "deadbeef.part"
    leftover.write_bytes(b"half")
    hour_ago = time.time() - STALE_PARTIAL_S - 1
    os.utime(leftover, (hour_ago, hour_ago))
    with ThreadedServer(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=60, headers=SERVICE_HEADERS) as http:
        assert http.get(f"/v1/jobs/{kept['job_id']}").json() == kept
        assert http.get(kept["audio_url"]).status_code == 200
        interrupted = http.get(f"/v1/jobs/{cut}").json()
        assert interrupted["status"] == "failed" and interrupted["error"]["code"] == "interrupted"
        assert not leftover.exists()
        # Failed is not final: the same uploads can be analyzed again.
        again = http.post(f"/v1/jobs/{cut}/analyze", json={"source": "impulse_response"})
        assert again.status_code == 202


def test_an_analysis_past_its_timeout_fails_the_job_with_a_reason(tmp_path):
    # The pool sees a timeout when a message arrives or every 0.1 s (pebble's tick): the analysis must outlast
    # that tick, so the response is 30 s long (≈ 0.45 s of analysis here; a 1.2 s one takes 20 ms).
    long_ir_wav = encode(room_ir(FS_HZ, RT_S, 30.0) * 0.5, FS_HZ)
    settings = MeasurementSettings(internal_auth_token=INTERNAL_TOKEN, data_dir=tmp_path / "m", analysis_timeout_s=0.001)
    with ThreadedServer(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=60, headers=SERVICE_HEADERS) as http:
        job_id = _create(http)["job_id"]
        assert http.post(f"/v1/jobs/{job_id}/uploads/ir", content=long_ir_wav).status_code == 201
        failed = http.post(f"/v1/jobs/{job_id}/analyze", json={"source": "impulse_response"})
        assert failed.status_code == 200
        job = failed.json()
        assert job["status"] == "failed" and job["error"]["code"] == "timeout" and job["results"] == {}
        assert http.get("/v1/health").json()["analysis"]["running"] == 0
