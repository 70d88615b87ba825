"""End-to-end latency of the measurement service: create, upload, analyze, and health during an analysis.

Starts ``python -m sonalyze serve measurement`` on a free port over a temporary data folder, then:

* ``create``: ``POST /v1/jobs`` (sweep generated and written once per job);
* ``upload``: a recording of the job's sweep in a synthetic room (WAV, 24-bit, 48 kHz);
* ``analyze``: ``POST /v1/jobs/{id}/analyze`` with sweep deconvolution, one or several uploads;
* ``health during analysis``: ``GET /v1/health`` latencies while analyses run (the event loop must stay free).

    .venv/bin/python bench/measurement_e2e.py [--rounds 5] [--sweep-s 5] [--uploads 1,4]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile
from scipy.signal import fftconvolve
from sonalyze.common.internal_auth import internal_headers  # noqa: E402
BENCH_TOKEN = "bench-internal-token"

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def room_recording(sweep: np.ndarray, fs_hz: int, rt_s: float = 0.6, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    t_s = np.arange(int(1.5 * fs_hz)) / fs_hz
    ir = rng.standard_normal(t_s.size) * 10.0 ** (-3.0 * t_s / rt_s) * 0.3
    ir[0] = 1.0
    wet = np.concatenate((np.zeros(int(0.3 * fs_hz)), fftconvolve(sweep, ir)))
    wet = 0.5 * wet / np.max(np.abs(wet)) + rng.standard_normal(wet.size) * 1e-4
    buffer = io.BytesIO()
    soundfile.write(buffer, wet, fs_hz, format="WAV", subtype="PCM_24")
    return buffer.getvalue()


def summary_ms(values_s: list[float]) -> str:
    values_ms = sorted(1000 * v for v in values_s)
    p95 = values_ms[min(len(values_ms) - 1, int(round(0.95 * (len(values_ms) - 1))))]
    median = statistics.median(values_ms)
    return f"n={len(values_ms):3d}  median {median:8.1f} ms  p95 {p95:8.1f} ms  max {values_ms[-1]:8.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sweep-s", type=float, default=5.0)
    parser.add_argument("--uploads", default="1,4", help="uploads per analyzed job, comma-separated")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = tempfile.mkdtemp(prefix="sonalyze-bench-measurement-")
    env = {**os.environ, "MEASUREMENT_DATA_DIR": data_dir, "MEASUREMENT_ANALYZE_WAIT_S": "600", "LOG_LEVEL": "WARNING", "INTERNAL_AUTH_TOKEN": BENCH_TOKEN}
    server = subprocess.Popen(
        [sys.executable, "-m", "sonalyze", "serve", "measurement", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=url, timeout=600, headers=internal_headers(BENCH_TOKEN)) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if http.get("/v1/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the service did not start")
                time.sleep(0.1)
            print(f"sweep {args.sweep_s:g} s at 48 kHz; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
            body = {"sample_rate_hz": 48000, "sweep": {"duration_s": args.sweep_s}}
            job = http.post("/v1/jobs", json=body).json()  # warm-up (and the recording to upload)
            sweep, fs_hz = soundfile.read(io.BytesIO(http.get(job["audio_url"]).content))
            recording = room_recording(sweep, fs_hz)
            print(f"recording: {len(recording) / 1e6:.2f} MB")

            create_s, upload_s = [], []
            for _ in range(args.rounds * 4):
                start = time.perf_counter()
                job_id = http.post("/v1/jobs", json=body).json()["job_id"]
                create_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                assert http.post(f"/v1/jobs/{job_id}/uploads/mic", content=recording).status_code == 201
                upload_s.append(time.perf_counter() - start)
            print(f"create          {summary_ms(create_s)}")
            print(f"upload          {summary_ms(upload_s)}")

            for count in (int(n) for n in args.uploads.split(",")):
                analyze_s, health_s = [], []
                for _ in range(args.rounds):
                    job_id = http.post("/v1/jobs", json=body).json()["job_id"]
                    for index in range(count):
                        http.post(f"/v1/jobs/{job_id}/uploads/mic{index}", content=recording)
                    done = threading.Event()

                    def probe() -> None:
                        with httpx.Client(base_url=url, timeout=60, headers=internal_headers(BENCH_TOKEN)) as prober:
                            while not done.is_set():
                                start = time.perf_counter()
                                prober.get("/v1/health")
                                health_s.append(time.perf_counter() - start)
                                time.sleep(0.02)

                    thread = threading.Thread(target=probe)
                    thread.start()
                    start = time.perf_counter()
                    answer = http.post(f"/v1/jobs/{job_id}/analyze", json={"source": "sweep_deconvolution"})
                    analyze_s.append(time.perf_counter() - start)
                    done.set()
                    thread.join()
                    assert answer.status_code == 200 and answer.json()["status"] == "done", answer.text[:300]
                print(f"analyze x{count}      {summary_ms(analyze_s)}")
                print(f"  health during {summary_ms(health_s)}")
    finally:
        server.terminate()
        server.wait(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
