"""Lobby events in-process on SQLite, paced: how long each one stops the event loop.

The lobby runs its SQLite transactions inline on the event loop (``sonalyze.lobby.store.Database``), so
the wall time of an operation is time the loop serves nothing else. This drives ``LobbyService`` (no
HTTP, no gateway, pushes off) through the benchmark's lobbies — ``create``, 4 ``join``, 5 ``assign_role``
— at ``--rate`` events/s on a database file, and reports the distribution of those times, and how many
exceeded ``--slow-ms`` and for how long in all. Fewer moving parts than ``lobby_bench.py``, so a shared
machine disturbs it less; another tree is compared with ``PYTHONPATH=<tree>/src``. The fsyncs on the
loop's thread: run it under ``strace -f --seccomp-bpf -e trace=fdatasync -o FILE`` and count the lines of
the first pid.

    .venv/bin/python bench/lobby_commits.py --lobbies 1000 --rate 1500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time

from sonalyze.lobby.broadcast import Broadcaster
from sonalyze.lobby.schemas import AssignRole, CreateLobby, JoinLobby
from sonalyze.lobby.service import LobbyService
from sonalyze.lobby.store import Database


async def run(args: argparse.Namespace) -> dict:
    directory = tempfile.mkdtemp(prefix="lobby-commits-")
    db = Database(f"sqlite:///{directory}/lobby.db")
    await db.start()
    service = LobbyService(db, Broadcaster("", "", queue_size=1, workers=1, timeout_s=1.0))
    times_ms: dict[str, list[float]] = {"create": [], "join": [], "assign": []}
    started = time.perf_counter()
    sent = 0

    async def timed(kind: str, operation):
        nonlocal sent
        sent += 1
        await asyncio.sleep(max(0.0, started + sent / args.rate - time.perf_counter()))
        t0 = time.perf_counter()
        result = await operation
        times_ms[kind].append(1000 * (time.perf_counter() - t0))
        return result

    try:
        for index in range(args.lobbies):
            ids = [f"d{index * 5 + n}" for n in range(5)]
            lobby = await timed("create", service.create(ids[0], CreateLobby(name=f"bench {index}")))
            for guest in ids[1:]:
                await timed("join", service.join(guest, JoinLobby(code=lobby["code"])))
            for n, device_id in enumerate(ids):
                role = "speaker" if n == 0 else "microphone"
                await timed("assign", service.assign_role(ids[0], AssignRole(lobby_id=lobby["lobby_id"], device_id=device_id, role=role)))
        elapsed_s = time.perf_counter() - started
    finally:
        await db.dispose()

    def summary(values: list[float]) -> dict:
        ordered = sorted(values)
        at = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)  # noqa: E731
        return {"n": len(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99), "p999_ms": at(0.999), "max_ms": round(ordered[-1], 1)}

    every = [v for values in times_ms.values() for v in values]
    slow_ms = [v for v in every if v > args.slow_ms]
    return {
        "events_per_s": round(len(every) / elapsed_s),
        "all": summary(every),
        **{kind: summary(values) for kind, values in times_ms.items()},
        f"over_{args.slow_ms:g}_ms": {"events": len(slow_ms), "total_ms": round(sum(slow_ms))},
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lobbies", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1500.0, help="events per second")
    parser.add_argument("--slow-ms", type=float, default=2.0)
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
