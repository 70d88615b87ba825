"""Lobby events through the gateway: N lobbies of M devices created, joined and given roles.

Starts a real lobby and a real gateway (``python -m sonalyze serve ...`` child processes on free ports,
the lobby pushing to the gateway's ``/internal/broadcast``), connects every device on
``WS /ws?device_id=`` (before the measured part: connecting is not a lobby event), and per lobby sends
``lobby.create`` (host), ``lobby.join`` (each guest, at once) and ``role.assign`` (host, one per
device). Every event's latency is the time from sending the request to receiving its response; each
change is also pushed to the lobby's participants as ``lobby.updated`` (counted, not timed).

The load generator is the raw asyncio WebSocket client of ``bench/gateway_bench.py`` on uvloop (masked
frames, payloads parsed with orjson), pinned to one core (``--client-core``) so that it takes as little
CPU from the servers as possible. Each process's CPU time (utime + stime from ``/proc/<pid>/stat``)
over the measured part is reported per event.

Two ways to load it: *closed loop* (``--concurrency N``: N lobbies in flight, the next starts when one
finishes) and *open loop* (``--lobby-rate R``: a lobby starts every 1/R s whether or not the earlier
ones are done, so a stall shows up as queued lobbies and their latency instead of a pause in sending;
each lobby's own events still follow one another). Both report the same figures.

    .venv/bin/python bench/lobby_bench.py --db sqlite --lobbies 1000 --devices 5 --concurrency 16
    .venv/bin/python bench/lobby_bench.py --db sqlite --lobbies 1000 --devices 5 --lobby-rate 150
    .venv/bin/python bench/lobby_bench.py --db postgres
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import orjson
import uvloop

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]
from gateway_bench import WSClient, cpu_s, open_clients  # noqa: E402
from tests.support import infra  # noqa: E402
from tests.support.servers import ServiceProcess, free_port  # noqa: E402

TOKEN = "bench-token"


class Devices:
    """Every device's WebSocket; answers matched to requests by ``request_id``, pushes counted per device."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.waiting: dict[str, tuple[asyncio.Future, float, str]] = {}
        self.pushes: dict[str, int] = defaultdict(int)
        self.push_waiters: dict[str, tuple[int, asyncio.Future]] = {}
        self.counter = 0
        self.clients: list[WSClient] = []

    def on_message(self, client: WSClient, payload: bytes) -> None:
        # A push ({"type": "event", ...}, the gateway's key order) is only counted, not parsed.
        if payload.startswith(b'{"type":"event"'):
            device_id = client.device_id
            count = self.pushes[device_id] = self.pushes[device_id] + 1
            waiter = self.push_waiters.get(device_id)
            if waiter is not None and count >= waiter[0] and not waiter[1].done():
                waiter[1].set_result(None)
            return
        if not payload.startswith(b"{"):
            return  # a control frame (this client does not tell opcodes apart; pings are off, see run)
        message = orjson.loads(payload)
        future, started, event = self.waiting.pop(message["request_id"])
        self.latencies[event].append(time.perf_counter() - started)
        future.set_result(message)

    async def call(self, device_id: str, event: str, data: dict) -> dict:
        self.counter += 1
        request_id = str(self.counter)
        future = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = (future, time.perf_counter(), event)
        self.clients[int(device_id[1:])].send_text(orjson.dumps({"event": event, "request_id": request_id, "data": data}))
        message = await future
        if message["type"] != "response":
            raise RuntimeError(f"{event} refused: {message.get('error')}")
        return message["data"]

    async def pushes_reach(self, device_id: str, count: int) -> None:
        if self.pushes[device_id] >= count:
            return
        future = asyncio.get_running_loop().create_future()
        self.push_waiters[device_id] = (count, future)
        try:
            await future
        finally:
            del self.push_waiters[device_id]


class InFlight:
    """How many lobbies are under way (the most at once is reported)."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    def __enter__(self) -> None:
        self.now += 1
        self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        self.now -= 1


async def one_lobby(devices: Devices, index: int, size: int, drains: list[float | None]) -> None:
    ids = [f"d{index * size + d}" for d in range(size)]
    host, guests = ids[0], ids[1:]
    lobby = await devices.call(host, "lobby.create", {"name": f"bench {index}"})
    await asyncio.gather(*(devices.call(g, "lobby.join", {"code": lobby["code"]}) for g in guests))
    for n, device_id in enumerate(ids):
        role = "speaker" if n == 0 else "microphone"
        await devices.call(host, "role.assign", {"lobby_id": lobby["lobby_id"], "device_id": device_id, "role": role})
    # lobby.updated pushes: every join to those already in (joins run concurrently, so a guest sees
    # between 1 and all of them: count what was decided), every role to all.
    last_response = time.perf_counter()
    expected = {device_id: size for device_id in ids}
    expected[host] += size - 1
    try:
        await asyncio.wait_for(asyncio.gather(*(devices.pushes_reach(d, n) for d, n in expected.items())), 10.0)
        drains.append(time.perf_counter() - last_response)
    except TimeoutError:
        drains.append(None)


def percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _start_profiler(path: str, pid: int) -> subprocess.Popen | None:
    """py-spy sampling ``pid`` during the measured part (``--profile``): a flame graph (.svg), speedscope
    (.json) or collapsed stacks (.txt)."""
    if not path:
        return None
    command = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--output", path, "--rate", "200"]
    profile_format = {".json": "speedscope", ".txt": "raw"}.get(Path(path).suffix, "flamegraph")
    return subprocess.Popen([*command, "--format", profile_format])


async def run(args: argparse.Namespace) -> dict:
    if args.db == "postgres":
        database_url, database_name = await infra.create_postgres_database()
    else:
        database_url, database_name = f"sqlite:///{tempfile.mkdtemp(prefix='lobby-bench-')}/lobby.db", None
    gateway_port = args.port_base + 1 if args.port_base else free_port()
    quiet = {"LOG_LEVEL": "WARNING"}
    lobby_path = {"PYTHONPATH": args.lobby_pythonpath} if args.lobby_pythonpath else {}
    gateway_path = {"PYTHONPATH": args.gateway_pythonpath} if args.gateway_pythonpath else {}
    lobby = ServiceProcess(
        "lobby",
        port=args.port_base or None,
        env={"DATABASE_URL": database_url, "GATEWAY_URL": f"http://127.0.0.1:{gateway_port}", "INTERNAL_AUTH_TOKEN": TOKEN, **quiet, **lobby_path},
    )
    lobby.start()
    gateway = ServiceProcess(
        "gateway",
        port=gateway_port,
        env={"LOBBY_URL": lobby.url, "INTERNAL_AUTH_TOKEN": TOKEN, "RATE_LIMIT_RPS": "100000", "RATE_LIMIT_BURST": "100000", **quiet,
             "ALLOW_INSECURE_DEVICE_IDS": "1",  # the load generator names its devices (no device tokens)
             "MAX_CONNECTIONS_PER_ADDRESS": "1000000",  # every device connects from 127.0.0.1
             # every device connects before the measured part and this client answers no pings: none are sent
             "HEARTBEAT_INTERVAL_SEC": "3600", "CONNECTION_TIMEOUT_SEC": "7200", **gateway_path},
    )
    gateway.start()
    devices = Devices()
    drains: list[float | None] = []
    warmup = min(50, args.lobbies)
    try:
        if args.client_core >= 0:
            os.sched_setaffinity(0, {args.client_core})  # after starting the servers: they would inherit it
        measured = range(warmup, warmup + args.lobbies)
        devices.clients = await open_clients(gateway_port, (warmup + args.lobbies) * args.devices, devices.on_message)
        semaphore = asyncio.Semaphore(args.concurrency)
        in_flight = InFlight()

        async def bounded(i: int) -> None:
            async with semaphore:
                with in_flight:
                    await one_lobby(devices, i, args.devices, drains)

        async def paced(i: int, start_s: float) -> None:
            await asyncio.sleep(start_s - time.perf_counter())
            with in_flight:
                await one_lobby(devices, i, args.devices, drains)

        await asyncio.gather(*(bounded(i) for i in range(warmup)))  # warm-up, not counted
        devices.latencies.clear()
        drains.clear()
        pushes_before = sum(devices.pushes.values())
        pids = {"lobby": lobby.pid, "gateway": gateway.pid, "bench client": os.getpid()}
        cpu_before = {name: cpu_s(pid) for name, pid in pids.items()}
        load_before = os.getloadavg()[0]
        profiler = _start_profiler(args.profile, lobby.pid if args.profile_target == "lobby" else gateway.pid)
        started = time.perf_counter()
        in_flight.most = 0
        if args.lobby_rate:
            await asyncio.gather(*(paced(i, started + n / args.lobby_rate) for n, i in enumerate(measured)))
        else:
            await asyncio.gather(*(bounded(i) for i in measured))
        elapsed_s = time.perf_counter() - started
        cpu_after = {name: cpu_s(pid) for name, pid in pids.items()}
        system_s = {name: cpu_after[name][1] - cpu_before[name][1] for name in pids}
        cpu_used_s = {name: sum(cpu_after[name]) - sum(cpu_before[name]) for name in pids}
        load_after = os.getloadavg()[0]
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait()
        await asyncio.sleep(1.0)  # let the last pushes arrive
        pushes_received = sum(devices.pushes.values()) - pushes_before
        for client in devices.clients:
            client.transport.close()
    finally:
        gateway.stop()
        lobby.stop()
        if args.show_logs:
            print(lobby.log_text()[-3000:], gateway.log_text()[-3000:], file=sys.stderr)
        if database_name:
            await infra.drop_postgres_database(database_name)
    every = [v for values in devices.latencies.values() for v in values]
    done = [d for d in drains if d is not None]
    report = {
        "db": args.db,
        "lobbies": args.lobbies,
        "devices_per_lobby": args.devices,
        "load": f"open loop, {args.lobby_rate:g} lobbies/s" if args.lobby_rate else f"closed loop, {args.concurrency} lobbies in flight",
        "most_lobbies_in_flight": in_flight.most,
        "client_core": args.client_core,
        "events": len(every),
        "elapsed_s": round(elapsed_s, 2),
        "events_per_s": round(len(every) / elapsed_s, 1),
        "all": {"p50_ms": round(percentile_ms(every, 0.50), 2), "p99_ms": round(percentile_ms(every, 0.99), 2)},
        "pushes_received": pushes_received,
        "push_drain_after_last_response": {
            "p50_ms": round(percentile_ms(done, 0.5), 2),
            "p99_ms": round(percentile_ms(done, 0.99), 2),
            "lobbies_missing_pushes_after_10_s": len(drains) - len(done),
        },
        "cpu_ms_per_event": {name: round(1000 * used / len(every), 3) for name, used in cpu_used_s.items()},
        "of_which_system_ms_per_event": {name: round(1000 * used / len(every), 3) for name, used in system_s.items()},
        "cpu_share": {name: round(used / elapsed_s, 2) for name, used in cpu_used_s.items()},
        "load_average_1m": {"before": round(load_before, 2), "after": round(load_after, 2)},
    }
    for event, values in sorted(devices.latencies.items()):
        report[event] = {
            "n": len(values),
            "p50_ms": round(percentile_ms(values, 0.50), 2),
            "p99_ms": round(percentile_ms(values, 0.99), 2),
            "mean_ms": round(1000 * statistics.fmean(values), 2),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--lobbies", type=int, default=1000)
    parser.add_argument("--devices", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64, help="closed loop: lobbies in flight at once (also the warm-up's)")
    parser.add_argument("--lobby-rate", type=float, default=0.0, help="open loop: lobbies started per second (0: closed loop)")
    parser.add_argument("--client-core", type=int, default=1, help="the core this load generator runs on (-1: any)")
    parser.add_argument("--lobby-pythonpath", default="", help="run the lobby from another copy of the package (before/after)")
    parser.add_argument("--gateway-pythonpath", default="", help="run the gateway from another copy of the package (before/after)")
    parser.add_argument("--port-base", type=int, default=0, help="the lobby on this port, the gateway on the next (0: free ports)")
    parser.add_argument("--profile", default="", help="py-spy the measured part into this file (.svg; .json: speedscope; .txt: collapsed stacks)")
    parser.add_argument("--profile-target", choices=["lobby", "gateway"], default="lobby")
    parser.add_argument("--show-logs", action="store_true", help="print the end of both services' logs")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
