"""Simulation service benchmark: the issue's scenario, timed and CPU-metered, every path interleaved.

    .venv/bin/python bench/simulation_bench.py [--repeats 9] [--fs 16000] [--baseline-src DIR] [--port N]

Scenario: an 8 × 6 × 3 m shoebox (every surface α = 0.15, s = 0.2), 1 source, 4 microphones, image
sources to order 10 plus ray tracing, fixed seed (so every run does the same work).

1. ``pyroomacoustics``: build the ShoeBox and ``compute_rir()`` in this process.
2. ``engine``: ``sonalyze.simulation.engine.simulate`` in this process (pyroomacoustics + the metrics of
   the 4 RIRs by ``sonalyze.acoustics``): all the work the service must do.
3. ``service``: ``POST /simulate`` to ``sonalyze serve simulation`` in a child process (validation,
   limits, worker pool, pickling, keeping JSON + WAV files, JSON answer), after one warm-up request.
   ``worker`` is the time the answer reports for the work inside the worker process (``elapsed_s``).
4. With ``--baseline-src DIR``: ``service@baseline``, the same request to a second server running the
   code in ``DIR`` (e.g. the previous commit: ``git archive HEAD~1 src | tar -x -C /tmp/baseline`` and
   ``--baseline-src /tmp/baseline/src``), so old and new are measured side by side in one run.

Each repetition runs every path once, in an order rotated from one repetition to the next. Besides
wall time, each path's CPU time is measured (``time.process_time`` in this process; for a
service, the CPU of its whole process tree, workers included, across the request), which other
programs on a shared machine disturb less than wall time (not entirely: CPU time grows under
contention). ``shell`` is the service's own share per request: wall time minus the worker's
``elapsed_s``, and the CPU of the server process alone (event loop and its threads; workers excluded).
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
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import psutil
import pyroomacoustics as pra

from sonalyze.simulation.engine import simulate
from sonalyze.simulation.schemas import SimulateRequest
from sonalyze.common.internal_auth import internal_headers  # noqa: E402
BENCH_TOKEN = "bench-internal-token"

SURFACES = ("floor", "ceiling", "east", "west", "north", "south")
SEED = 2026
REPO = Path(__file__).resolve().parents[1]


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


def direct_pyroomacoustics(body: dict) -> None:
    """The same room straight through pyroomacoustics (same materials, options and seed)."""
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


def engine(body: dict) -> None:
    simulate(SimulateRequest.model_validate(body), max_rir_s=6.0)


def in_process(work: Callable[[dict], None], body: dict) -> tuple[float, float]:
    """Wall and CPU seconds of ``work(body)`` in this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    work(body)
    return time.perf_counter() - wall, time.process_time() - cpu


def cpu_s(process: psutil.Process) -> float:
    """CPU seconds of ``process`` and every process it waited for (its reaped children)."""
    times = process.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def tree_cpu_s(server: psutil.Process) -> float:
    """CPU seconds of the server and all its descendants (fork server, workers), reaped ones included."""
    total = cpu_s(server)
    for child in server.children(recursive=True):
        try:
            total += cpu_s(child)
        except psutil.NoSuchProcess:  # exited between the listing and the reading
            pass
    return total


def threads_cpu_s(pid: int) -> float:
    """CPU seconds of the live threads of process ``pid``, in nanoseconds' resolution (Linux schedstat)."""
    total_ns = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total_ns += int(stat.read_text().split()[0])
        except (OSError, IndexError):  # the thread ended meanwhile
            pass
    return total_ns / 1e9


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``sonalyze serve simulation`` in a child process, from this tree or from ``src`` (an older one)."""

    def __init__(self, src: Path | None, port: int | None = None) -> None:
        self.env = {**os.environ, "SIMULATION_DATA_DIR": tempfile.mkdtemp(prefix="simulation-bench-"), "LOG_LEVEL": "WARNING", "INTERNAL_AUTH_TOKEN": BENCH_TOKEN}
        if src is not None:
            self.env["PYTHONPATH"] = str(src)
        self.cwd = src if src is not None else REPO
        fixed_port = port
        for _attempt in range(1 if fixed_port else 3):  # a free port can be taken by another program before the server binds it
            port = fixed_port or free_port()
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "sonalyze", "serve", "simulation", "--host", "127.0.0.1", "--port", str(port)],
                env=self.env,
                cwd=self.cwd,
            )
            self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300, headers=internal_headers(BENCH_TOKEN))
            if self._ready():
                break
            self.client.close()
        else:
            raise RuntimeError("the simulation server did not start")
        self.process = psutil.Process(self.popen.pid)

    def _ready(self) -> bool:
        deadline = time.monotonic() + 60
        while self.popen.poll() is None and time.monotonic() < deadline:
            try:
                if self.client.get("/health", timeout=1).status_code == 200:
                    return True
            except httpx.HTTPError:
                time.sleep(0.1)
        self.popen.kill()
        self.popen.wait()
        return False

    def simulate(self, body: dict) -> tuple[float, float, float, float]:
        """Wall s, worker s (``elapsed_s``), process-tree CPU s, server-process CPU s of one request."""
        tree_before, server_before = tree_cpu_s(self.process), threads_cpu_s(self.process.pid)
        started = time.perf_counter()
        response = self.client.post("/simulate", json=body)
        wall_s = time.perf_counter() - started
        tree_s, server_s = tree_cpu_s(self.process) - tree_before, threads_cpu_s(self.process.pid) - server_before
        response.raise_for_status()
        return wall_s, response.json()["elapsed_s"], tree_s, server_s

    def stop(self) -> None:
        self.client.close()
        self.popen.terminate()
        self.popen.wait(timeout=30)


def pct(a: float, b: float) -> str:
    return f"{100 * (a / b - 1):+.1f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--fs", type=int, default=16000)
    parser.add_argument("--baseline-src", type=Path, help="also run a server from this src folder (an older tree)")
    parser.add_argument("--port", type=int, help="the service's port (the baseline's: the next one); default: any free port")
    args = parser.parse_args()
    body = request_body(args.fs)
    load_at_start = os.getloadavg()[0]

    servers = {"service": Server(None, args.port)}
    if args.baseline_src is not None:
        servers["service@baseline"] = Server(args.baseline_src.resolve(), args.port and args.port + 1)
    wall: dict[str, list[float]] = {"pyroomacoustics": [], "engine": []}
    cpu: dict[str, list[float]] = {"pyroomacoustics": [], "engine": []}
    shell_wall: dict[str, list[float]] = {name: [] for name in servers}
    shell_cpu: dict[str, list[float]] = {name: [] for name in servers}
    for name in servers:
        wall[name], wall[name.replace("service", "worker")], cpu[name] = [], [], []

    def measure_in_process(name: str, work: Callable[[dict], None]) -> Callable[[], None]:
        def measure() -> None:
            wall_s, cpu_used_s = in_process(work, body)
            wall[name].append(wall_s)
            cpu[name].append(cpu_used_s)

        return measure

    def measure_service(name: str, server: Server) -> Callable[[], None]:
        def measure() -> None:
            wall_s, worker_s, tree_s, server_s = server.simulate(body)
            wall[name].append(wall_s)
            wall[name.replace("service", "worker")].append(worker_s)
            cpu[name].append(tree_s)
            shell_wall[name].append(wall_s - worker_s)
            shell_cpu[name].append(server_s)

        return measure

    paths = [measure_in_process("pyroomacoustics", direct_pyroomacoustics), measure_in_process("engine", engine)]
    paths += [measure_service(name, server) for name, server in servers.items()]
    try:
        for server in servers.values():
            server.simulate(body)  # warm-up (the old pool started its fork server here)
        engine(body)
        for repeat in range(args.repeats):
            # Each path follows every other equally often: what ran just before (e.g. another process's
            # BLAS threads still spinning) must not favour one path.
            shift = repeat % len(paths)
            for measure in paths[shift:] + paths[:shift]:
                measure()
    finally:
        for server in servers.values():
            server.stop()

    median = {name: statistics.median(values) for name, values in wall.items()}
    mean_cpu = {name: statistics.mean(values) for name, values in cpu.items()}  # the mean: psutil counts 10 ms ticks
    print(f"scenario: 8x6x3 m shoebox, 1 source, 4 microphones, {args.fs} Hz, order 10 + ray tracing, {args.repeats} runs")
    print(f"load average (1 min) at the start {load_at_start:.2f}, at the end {os.getloadavg()[0]:.2f}")
    print(f"{'path':<24} {'median s':>9} {'min s':>8} {'max s':>8} {'mean CPU s':>10}")
    for name, values in wall.items():
        cpu_text = f"{mean_cpu[name]:>10.3f}" if name in mean_cpu else ""
        print(f"{name:<24} {median[name]:>9.3f} {min(values):>8.3f} {max(values):>8.3f} {cpu_text}")
    print(f"metrics of 4 RIRs (engine - pyroomacoustics): wall {median['engine'] - median['pyroomacoustics']:.3f} s, "
          f"CPU {mean_cpu['engine'] - mean_cpu['pyroomacoustics']:.3f} s")
    for name in servers:
        print(f"{name}:")
        print(f"  shell per request (wall - worker's elapsed_s): {1000 * statistics.median(shell_wall[name]):.1f} ms; "
              f"server process CPU: {1000 * statistics.median(shell_cpu[name]):.1f} ms")
        print(f"  over the in-process engine (same work):       wall {pct(median[name], median['engine'])}, "
              f"CPU {pct(mean_cpu[name], mean_cpu['engine'])}")
        print(f"  over pyroomacoustics alone (+ our metrics):   wall {pct(median[name], median['pyroomacoustics'])}, "
              f"CPU {pct(mean_cpu[name], mean_cpu['pyroomacoustics'])}")


if __name__ == "__main__":
    main()
