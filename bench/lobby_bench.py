"""Lobby events through the gateway: N lobbies of M devices created, joined and given roles.

Starts a real lobby and a real gateway (``python -m sonalyze serve ...`` child processes on free ports),
connects every device on ``WS /ws?device_id=``, and per lobby sends ``lobby.create`` (host),
``lobby.join`` (each guest) and ``role.assign`` (host, one per device). Every event's latency is the
time from sending the request to receiving its response; each change is also pushed to the lobby's
participants as ``lobby.updated`` (counted, not timed).

    .venv/bin/python bench/lobby_bench.py --db sqlite --lobbies 1000 --devices 5 --concurrency 64
    .venv/bin/python bench/lobby_bench.py --db postgres
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import orjson
import psutil
import uvloop
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support import infra  # noqa: E402
from tests.support.servers import ServiceProcess, free_port  # noqa: E402

TOKEN = "bench-token"


class Phone:
    def __init__(self, ws_url: str, device_id: str, latencies: dict[str, list[float]], pushes: list[int]) -> None:
        self.url = f"{ws_url}/ws?device_id={device_id}"
        self.device_id = device_id
        self.latencies = latencies
        self.pushes = pushes
        self.waiting: dict[str, tuple[asyncio.Future, float]] = {}
        self.ids = itertools.count()
        self.received = 0
        self.expected = 0
        self.all_arrived = asyncio.Event()

    async def open(self) -> None:
        self.ws = await connect(self.url, max_size=None, compression=None)
        self.reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        self.reader.cancel()
        await self.ws.close()

    async def _read(self) -> None:
        async for raw in self.ws:
            message = orjson.loads(raw)
            if message["type"] == "event":
                self.pushes[0] += 1
                self.received += 1
                if self.received >= self.expected:
                    self.all_arrived.set()
                continue
            future, started = self.waiting.pop(message["request_id"])
            self.latencies[message["event"]].append(time.perf_counter() - started)
            future.set_result(message)

    async def call(self, event: str, data: dict) -> dict:
        request_id = f"{self.device_id}:{next(self.ids)}"
        future = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = (future, time.perf_counter())
        await self.ws.send(orjson.dumps({"event": event, "request_id": request_id, "data": data}).decode())
        message = await future
        if message["type"] != "response":
            raise RuntimeError(f"{event} refused: {message['error']}")
        return message["data"]


async def one_lobby(ws_url: str, index: int, devices: int, latencies, pushes, drains: list[float]) -> None:
    phones = [Phone(ws_url, f"l{index}-d{d}", latencies, pushes) for d in range(devices)]
    await asyncio.gather(*(p.open() for p in phones))
    try:
        host, guests = phones[0], phones[1:]
        lobby = await host.call("lobby.create", {"name": f"bench {index}"})
        await asyncio.gather(*(g.call("lobby.join", {"code": lobby["code"]}) for g in guests))
        for n, phone in enumerate(phones):
            role = "speaker" if n == 0 else "microphone"
            await host.call("role.assign", {"lobby_id": lobby["lobby_id"], "device_id": phone.device_id, "role": role})
        # lobby.updated pushes: every join to those already in (joins run concurrently, so a guest sees
        # between 1 and all of them: count what was decided), every role to all.
        last_response = time.perf_counter()
        for phone in phones:
            phone.expected = devices  # the role assignments
        host.expected += devices - 1
        try:
            await asyncio.wait_for(asyncio.gather(*(p.all_arrived.wait() for p in phones)), 10.0)
            drains.append(time.perf_counter() - last_response)
        except TimeoutError:
            drains.append(None)
    finally:
        await asyncio.gather(*(p.close() for p in phones))


def percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> dict:
    if args.db == "postgres":
        database_url, database_name = await infra.create_postgres_database()
    else:
        database_url, database_name = f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='lobby-bench-')}/lobby.db", None
    gateway_port = free_port()
    lobby = ServiceProcess(
        "lobby", env={"DATABASE_URL": database_url, "GATEWAY_URL": f"http://127.0.0.1:{gateway_port}", "INTERNAL_AUTH_TOKEN": TOKEN}
    )
    lobby.start()
    gateway = ServiceProcess(
        "gateway",
        port=gateway_port,
        env={"LOBBY_URL": lobby.url, "INTERNAL_AUTH_TOKEN": TOKEN, "RATE_LIMIT_RPS": "100000", "RATE_LIMIT_BURST": "100000"},
    )
    gateway.start()
    latencies: dict[str, list[float]] = defaultdict(list)
    pushes = [0]
    drains: list[float] = []
    try:
        semaphore = asyncio.Semaphore(args.concurrency)

        async def bounded(i: int) -> None:
            async with semaphore:
                await one_lobby(gateway.ws_url, i, args.devices, latencies, pushes, drains)

        await asyncio.gather(*(bounded(i) for i in range(min(50, args.lobbies))))  # warm-up, not counted
        latencies.clear()
        drains.clear()
        pushes[0] = 0
        processes = {"lobby": psutil.Process(lobby.pid), "gateway": psutil.Process(gateway.pid), "bench client": psutil.Process()}
        cpu_before = {name: sum(p.cpu_times()[:2]) for name, p in processes.items()}
        started = time.perf_counter()
        await asyncio.gather(*(bounded(i) for i in range(1000, 1000 + args.lobbies)))
        elapsed_s = time.perf_counter() - started
        cpu_s = {name: round(sum(p.cpu_times()[:2]) - cpu_before[name], 2) for name, p in processes.items()}
        await asyncio.sleep(1.0)  # let the last pushes arrive
    finally:
        gateway.stop()
        lobby.stop()
        if args.show_logs:
            print(lobby.log_text()[-3000:], gateway.log_text()[-3000:], file=sys.stderr)
        if database_name:
            await infra.drop_postgres_database(database_name)
    every = [v for values in latencies.values() for v in values]
    report = {
        "db": args.db,
        "lobbies": args.lobbies,
        "devices_per_lobby": args.devices,
        "concurrency": args.concurrency,
        "events": len(every),
        "elapsed_s": round(elapsed_s, 2),
        "events_per_s": round(len(every) / elapsed_s, 1),
        "pushes_received": pushes[0],
        "push_drain_after_last_response": {
            "p50_ms": round(percentile_ms([d for d in drains if d is not None], 0.5), 2),
            "p99_ms": round(percentile_ms([d for d in drains if d is not None], 0.99), 2),
            "lobbies_missing_pushes_after_10_s": sum(d is None for d in drains),
        },
        "cpu_s": cpu_s,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "all": {"p50_ms": round(percentile_ms(every, 0.50), 2), "p99_ms": round(percentile_ms(every, 0.99), 2)},
    }
    for event, values in sorted(latencies.items()):
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
    parser.add_argument("--concurrency", type=int, default=64, help="lobbies in flight at once")
    parser.add_argument("--show-logs", action="store_true", help="print the end of both services' logs")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
