"""Simulation service benchmark: the issue's scenario, timed three ways, interleaved.

    .venv/bin/python bench/simulation_bench.py [--repeats 7] [--fs 16000]

Scenario: an 8 × 6 × 3 m shoebox (every surface α = 0.15, s = 0.2), 1 source, 4 microphones, image
sources to order 10 plus ray tracing, fixed seed (so every run does the same work).

1. ``pyroomacoustics``: build the ShoeBox and ``compute_rir()`` in this process.
2. ``engine``: ``sonalyze.simulation.engine.simulate`` in this process (pyroomacoustics + the metrics of
   the 4 RIRs by ``sonalyze.acoustics``): the work the service must do.
3. ``service``: ``POST /simulate`` to ``sonalyze serve simulation`` in a child process (validation,
   limits, process pool, pickling, keeping JSON + WAV files, JSON answer), after one warm-up request.

The service's answer also says how long the work took inside the worker (``elapsed_s``), which splits
its overhead in two: the shell (validation, worker start, result transfer, HTTP, kept files) =
service − worker; the fresh worker process (cold caches, copy-on-write pages) = worker − engine.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pyroomacoustics as pra

from sonalyze.simulation.engine import simulate
from sonalyze.simulation.schemas import SimulateRequest

SURFACES = ("floor", "ceiling", "east", "west", "north", "south")
SEED = 2026


def request_body(fs_hz: int) -> dict:
    return {
        "room": {"type": "shoebox", "dimensions_m": [8, 6, 3], "materials": {s: {"absorption": 0.15, "scattering": 0.2} for s in SURFACES}},
        "sources": [[2.0, 3.0, 1.5]],
        "microphones": [[5.0, 2.0, 1.2], [6.0, 4.0, 1.2], [4.0, 4.5, 1.6], [6.5, 1.5, 1.0]],
        "sample_rate_hz": fs_hz,
        "max_order": 10,
        "ray_tracing": True,
        "air_absorption": True,
        "seed": SEED,
    }


def direct_pyroomacoustics(body: dict) -> float:
    """The same room straight through pyroomacoustics (same materials, options and seed)."""
    started = time.perf_counter()
    pra.random.seed(numpy=SEED, libroom=SEED)
    bands = [125, 250, 500, 1000, 2000, 4000, 8000]
    material = pra.Material({"coeffs": [0.15] * 7, "center_freqs": bands}, {"coeffs": [0.2] * 7, "center_freqs": bands})
    room = pra.ShoeBox(
        body["room"]["dimensions_m"],
        fs=body["sample_rate_hz"],
        max_order=10,
        materials={s: material for s in SURFACES},
        air_absorption=True,
        ray_tracing=True,
        temperature=20.0,
        humidity=50.0,
        use_rand_ism=False,
    )
    room.set_ray_tracing(time_thres=6.0)
    room.add_source(body["sources"][0])
    room.add_microphone_array(np.array(body["microphones"], dtype=float).T)
    room.compute_rir()
    return time.perf_counter() - started


def engine(body: dict) -> float:
    started = time.perf_counter()
    simulate(SimulateRequest.model_validate(body), max_rir_s=6.0)
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--fs", type=int, default=16000)
    args = parser.parse_args()
    body = request_body(args.fs)

    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="simulation-bench-")
    env = {**os.environ, "SIMULATION_DATA_DIR": data_dir, "LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(
        [sys.executable, "-m", "sonalyze", "serve", "simulation", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)
        with httpx.Client(base_url=url, timeout=300) as client:

            def service() -> tuple[float, float]:
                started = time.perf_counter()
                response = client.post("/simulate", json=body)
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                return elapsed, response.json()["elapsed_s"]

            service()  # warm-up: starts the worker fork server (imports pyroomacoustics once)
            engine(body)
            times: dict[str, list[float]] = {"pyroomacoustics": [], "engine": [], "worker": [], "service": []}
            for _ in range(args.repeats):
                times["pyroomacoustics"].append(direct_pyroomacoustics(body))
                times["engine"].append(engine(body))
                wall_s, worker_s = service()
                times["service"].append(wall_s)
                times["worker"].append(worker_s)
    finally:
        server.terminate()
        server.wait(timeout=30)

    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"scenario: 8x6x3 m shoebox, 1 source, 4 microphones, {args.fs} Hz, order 10 + ray tracing, {args.repeats} runs")
    print(f"{'path':<16} {'median s':>9} {'min s':>8} {'max s':>8}")
    for name, values in times.items():
        print(f"{name:<16} {median[name]:>9.3f} {min(values):>8.3f} {max(values):>8.3f}")
    shell = statistics.median(s - w for s, w in zip(times["service"], times["worker"], strict=True))
    print(f"metrics of 4 RIRs (engine - pyroomacoustics): {median['engine'] - median['pyroomacoustics']:.3f} s")
    print(f"service shell (service - worker, per request): {shell:.3f} s = {100 * shell / median['worker']:.1f} % of the worker's time")
    print(f"service over the in-process engine: {100 * (median['service'] / median['engine'] - 1):.1f} %")
    print(f"service over pyroomacoustics alone: {100 * (median['service'] / median['pyroomacoustics'] - 1):.1f} % (includes the metrics)")


if __name__ == "__main__":
    main()
