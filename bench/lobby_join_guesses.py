"""How fast can join codes be guessed at the lobby itself? (docs/security.md, "Join codes")

Starts ``sonalyze serve lobby`` (SQLite) in a child process and sends ``lobby.join`` with well-formed codes
that open no lobby through ``POST /gateway/handle``, as the gateway would:

* ``one_device``: ``--attempts`` guesses of one device: how many get an answer (``not_found``) before
  ``rate_limited``;
* ``fresh_devices``: every guess from a new device (a guesser that mints devices to dodge the per-device
  limit): the most failed joins per second this lobby answers on this machine, whatever the limits in front.

    .venv/bin/python bench/lobby_join_guesses.py --guesses 3000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sonalyze.lobby.codes import CODE_ALPHABET, CODE_LENGTH  # noqa: E402
from tests.support.servers import SERVICE_HEADERS, ServiceProcess  # noqa: E402


def guess(index: int) -> str:
    return "".join(CODE_ALPHABET[(index // len(CODE_ALPHABET) ** k) % len(CODE_ALPHABET)] for k in range(CODE_LENGTH))


async def join(http: httpx.AsyncClient, code: str, device_id: str) -> str:
    body = {"event": "lobby.join", "data": {"code": code}, "device_id": device_id, "request_id": 1}
    answer = (await http.post("/gateway/handle", json=body)).json()
    return answer["error"]["code"] if "error" in answer else "joined"


async def run(url: str, guesses: int, concurrency: int, attempts: int) -> dict:
    async with httpx.AsyncClient(base_url=url, headers=SERVICE_HEADERS, timeout=60, limits=httpx.Limits(max_connections=concurrency)) as http:
        one = collections.Counter([await join(http, guess(i), "one-device") for i in range(attempts)])
        queue = iter(range(guesses))
        answers: collections.Counter = collections.Counter()

        async def worker() -> None:
            for i in queue:
                answers[await join(http, guess(10_000 + i), f"fresh-{i}")] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed_s = time.perf_counter() - started
    return {
        "one_device": dict(one),
        "fresh_devices": {"guesses": guesses, "answers": dict(answers), "elapsed_s": round(elapsed_s, 2), "guesses_per_s": round(guesses / elapsed_s)},
        "concurrency": concurrency,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guesses", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--attempts", type=int, default=50, help="guesses of the one device")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lobby = ServiceProcess("lobby", env={"DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/lobby.db", "GATEWAY_URL": ""})
        with lobby:
            print(json.dumps(asyncio.run(run(lobby.url, args.guesses, args.concurrency, args.attempts))))


if __name__ == "__main__":
    main()
