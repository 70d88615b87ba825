"""Storage write/read throughput for analysis outputs of realistic size, on a fresh PostgreSQL database.

    .venv/bin/python bench/storage_bench.py [--writes 20000] [--reads 20000] [--concurrency 32]
                                            [--server-cpu 0] [--client-cpu 1] [--client upstream|httpx]
                                            [--source DIR]

Starts ``sonalyze serve storage`` as a child process (pinned with ``taskset`` to ``--server-cpu``)
on a new database on the PostgreSQL at 127.0.0.1:5432, and drives it with ``--concurrency``
keep-alive HTTP/1.1 connections, one request in flight on each, from this process (pinned to
``--client-cpu``). Writes are ``POST /v1/analysis_outputs`` with a fresh ``id`` each; reads are
``GET`` of random stored ones. Prints requests/s, p50/p99 latency and the CPU time per request of
the server, of its PostgreSQL backends and of the load generator; drops the database afterwards.
``--source DIR`` serves the package from ``DIR/src`` instead (an older version, to compare).

``--client upstream`` (default) is the services' own HTTP client
(:class:`sonalyze.common.http_client.UpstreamClient`): httpx spends ~5 ms of CPU per request of this
size here and would measure itself rather than the service (``--client httpx`` shows it).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import orjson
import psutil
from sonalyze.common.http_client import UpstreamClient
from sonalyze.common.internal_auth import internal_headers
BENCH_TOKEN = "bench-internal-token"

ADMIN_URL = os.environ.get("SONALYZE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BANDS_HZ = [125, 250, 500, 1000, 2000, 4000, 8000]
THIRD_OCTAVES_HZ = [round(1000 * 2 ** (k / 3), 1) for k in range(-17, 14)]  # 20 Hz .. 20 kHz, 31 bands


def analysis_output(measurement_id: str, rng: random.Random) -> dict:
    """7 octave bands × T20/T30/EDT/C50/C80/D50/DRR/STI, per-band decay curves (200 points each, as
    the measurement service sends them) and a 31-point 1/3-octave frequency response."""
    rt_s = [round(0.9 - 0.07 * band + rng.uniform(-0.03, 0.03), 4) for band in range(7)]
    time_s = [round(index * 0.005, 3) for index in range(200)]
    return {
        "id": str(uuid.uuid4()),
        "measurement_id": measurement_id,
        "speaker_id": "speaker-1",
        "microphone_id": f"mic-{rng.randrange(4)}",
        "parameters": {"fs_hz": 48000, "method": "sweep_deconvolution", "sweep_s": 5.0, "bands_hz": BANDS_HZ},
        "metrics": {
            "bands_hz": BANDS_HZ,
            "t20_s": rt_s,
            "t30_s": [round(value * 1.02, 4) for value in rt_s],
            "edt_s": [round(value * 0.95, 4) for value in rt_s],
            "c50_db": [round(rng.uniform(-3, 6), 3) for _ in BANDS_HZ],
            "c80_db": [round(rng.uniform(0, 9), 3) for _ in BANDS_HZ],
            "d50": [round(rng.uniform(0.3, 0.8), 4) for _ in BANDS_HZ],
            "drr_db": [round(rng.uniform(-6, 6), 3) for _ in BANDS_HZ],
            "sti_mti": [round(rng.uniform(0.4, 0.8), 4) for _ in BANDS_HZ],
            "sti": round(rng.uniform(0.45, 0.75), 4),
        },
        "curves": {
            "decay_time_s": time_s,
            "decay_db": {
                str(band_hz): [round(-60.0 * t / rt + rng.uniform(-0.2, 0.2), 3) for t in time_s]
                for band_hz, rt in zip(BANDS_HZ, rt_s, strict=True)
            },
            "frequency_response": {
                "frequencies_hz": THIRD_OCTAVES_HZ,
                "level_db": [round(rng.uniform(-12, 3), 2) for _ in THIRD_OCTAVES_HZ],
            },
        },
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile_ms(latencies_s: list[float], q: float) -> float:
    ordered = sorted(latencies_s)
    return 1000 * ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


class UpstreamConnection:
    """One request in flight on a shared :class:`UpstreamClient` (its pool holds one connection per worker)."""

    def __init__(self, client: UpstreamClient, base_url: str) -> None:
        self.client, self.base_url = client, base_url
        self.headers = [(name.encode(), value.encode()) for name, value in internal_headers(BENCH_TOKEN).items()]

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        async def content() -> AsyncIterator[bytes]:
            yield body

        headers = [*self.headers, (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        response = await self.client.open_stream(method, self.base_url, path, headers, content() if body else None)
        try:
            return response.status_code, b"".join([chunk async for chunk in response.aiter_body()])
        finally:
            await response.aclose()

    def close(self) -> None:
        pass


class HttpxConnection:
    """The same interface over a shared httpx client (for comparison)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        response = await self.client.request(method, path, content=body or None, headers={"content-type": "application/json"})
        return response.status_code, response.content

    def close(self) -> None:
        pass


async def _drive(connections: list, requests: list[tuple[str, str, bytes]]) -> tuple[float, list[float]]:
    """Send ``requests`` over ``connections``, one in flight per connection; (seconds, latencies)."""
    queue = iter(requests)
    latencies_s: list[float] = []

    async def worker(connection) -> None:
        for method, path, body in queue:
            started = time.perf_counter()
            status, content = await connection.request(method, path, body)
            latencies_s.append(time.perf_counter() - started)
            if status >= 300:
                raise RuntimeError(f"{method} {path}: {status} {content[:300]!r}")
            orjson.loads(content)

    started = time.perf_counter()
    await asyncio.gather(*(worker(connection) for connection in connections))
    return time.perf_counter() - started, latencies_s


def _report(name: str, count: int, elapsed_s: float, latencies_s: list[float], cpu_s: dict[str, float]) -> str:
    """Throughput and latency, and CPU time per request of the server, of the PostgreSQL backends
    serving it and of this load generator: on a shared machine the throughput depends on what else
    runs, while ``1000 / server ms`` is what one free core would do for the server."""
    server_ms, postgres_ms, client_ms = (1000 * cpu_s[part] / count for part in ("server", "postgres", "client"))
    return (
        f"{name}: {count} in {elapsed_s:.2f} s = {count / elapsed_s:,.0f}/s, "
        f"p50 {_percentile_ms(latencies_s, 0.50):.1f} ms, p99 {_percentile_ms(latencies_s, 0.99):.1f} ms; "
        f"CPU ms/request: server {server_ms:.2f} (one free core: ~{1000 / server_ms:,.0f}/s), "
        f"PostgreSQL {postgres_ms:.2f}, load generator {client_ms:.2f}"
    )


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _cpu_by_part(server: psutil.Process, database: str) -> dict[str, float]:
    """CPU seconds so far of the server, of the PostgreSQL backends connected to ``database`` (their
    process title names it), and of this process."""
    postgres_s = 0.0
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "postgres" and database in " ".join(process.info["cmdline"] or ()):
            try:
                postgres_s += _cpu_s(process)
            except psutil.NoSuchProcess:
                pass
    return {"server": _cpu_s(server), "postgres": postgres_s, "client": _cpu_s(psutil.Process())}


def _spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {part: after[part] - before[part] for part in before}


async def main(args: argparse.Namespace) -> None:
    name = f"sonalyze_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    database_url = f"postgresql+asyncpg://{urlsplit(ADMIN_URL).netloc}/{name}"
    port = _free_port()
    command = [sys.executable, "-m", "sonalyze", "serve", "storage", "--host", "127.0.0.1", "--port", str(port)]
    if args.server_cpu >= 0:
        command = ["taskset", "-c", str(args.server_cpu), *command]
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING", "STORAGE_DB_POOL_SIZE": str(args.pool), "INTERNAL_AUTH_TOKEN": BENCH_TOKEN}
    if args.source is not None:  # another version of the package, e.g. `git archive HEAD src | tar -x -C DIR`
        env["PYTHONPATH"] = str(Path(args.source).resolve() / "src")
        print(f"server code: {args.source}")
    server = subprocess.Popen(command, env=env, cwd=Path(__file__).resolve().parents[1])
    if args.client_cpu >= 0:
        os.sched_setaffinity(0, {args.client_cpu})
    rng = random.Random(1)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=internal_headers(BENCH_TOKEN)) as client:
            for _ in range(300):
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            lobby = (await client.post("/v1/lobbies", json={"code": uuid.uuid4().hex[:8].upper()})).json()
            measurement = (await client.post("/v1/measurements", json={"lobby_id": lobby["id"], "kind": "sweep"})).json()
            bodies = [orjson.dumps(analysis_output(measurement["id"], rng)) for _ in range(args.warmup + args.writes)]
            print(f"payload: {sum(map(len, bodies)) / len(bodies) / 1024:.1f} KiB JSON per analysis output")
            print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
            if args.client == "upstream":
                upstream = UpstreamClient(60.0, max_connections_per_origin=args.concurrency)
                connections = [UpstreamConnection(upstream, f"http://127.0.0.1:{port}") for _ in range(args.concurrency)]
            else:
                limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
                shared = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60, headers=internal_headers(BENCH_TOKEN))
                connections = [HttpxConnection(shared) for _ in range(args.concurrency)]

            await _drive(connections, [("POST", "/v1/analysis_outputs", body) for body in bodies[: args.warmup]])
            writes = [("POST", "/v1/analysis_outputs", body) for body in bodies[args.warmup :]]
            server_process = psutil.Process(server.pid)
            cpu_before_s = _cpu_by_part(server_process, name)
            elapsed_s, latencies_s = await _drive(connections, writes)
            cpu_s = _spent(cpu_before_s, _cpu_by_part(server_process, name))
            print(_report("writes", len(writes), elapsed_s, latencies_s, cpu_s))

            ids = [orjson.loads(body)["id"] for body in bodies]
            reads = [("GET", f"/v1/analysis_outputs/{rng.choice(ids)}", b"") for _ in range(args.reads)]
            cpu_before_s = _cpu_by_part(server_process, name)
            elapsed_s, latencies_s = await _drive(connections, reads)
            cpu_s = _spent(cpu_before_s, _cpu_by_part(server_process, name))
            print(_report("reads", len(reads), elapsed_s, latencies_s, cpu_s))
            for connection in connections:
                connection.close()
            print(f"load average after: {os.getloadavg()[0]:.1f}")
    finally:
        server.terminate()
        server.wait(timeout=20)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=20_000)
    parser.add_argument("--reads", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=500, help="writes before measuring")
    parser.add_argument("--concurrency", type=int, default=32, help="connections, one request in flight each")
    parser.add_argument("--client", choices=["upstream", "httpx"], default="upstream")
    parser.add_argument("--pool", type=int, default=10, help="STORAGE_DB_POOL_SIZE of the server (its default: 10)")
    parser.add_argument("--source", help="serve the sonalyze package from DIR/src (for before/after comparisons)")
    parser.add_argument("--server-cpu", type=int, default=0, help="pin the server to this CPU (taskset); -1: no pinning")
    parser.add_argument("--client-cpu", type=int, default=1, help="pin this load generator to this CPU; -1: no pinning")
    asyncio.run(main(parser.parse_args()))
