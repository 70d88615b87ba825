"""``python -m examples.voice.run --port P``, in a module of its own: its worker and the one of
``test_voice``'s module-wide stack would both answer the audio of the same Redis (pub/sub spans databases)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx

from examples._launch import REPO, free_port
from tests.examples.seeds import SeedClient
from tests.support import infra


def test_run_serves_the_seeds_gateway_on_the_port_it_is_given() -> None:
    """``python -m examples.voice.run --port P``, as its README says, and the seed's Python client on P."""
    redis_url = infra.require(infra.REDIS_URL, 6379, "Redis")
    port = free_port()
    runner = subprocess.Popen(
        [sys.executable, "-m", "examples.voice.run", "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(REPO)}, start_new_session=True,
    )
    client = None
    try:
        assert runner.stdout is not None
        line = runner.stdout.readline()
        while line and not line.startswith("gateway: "):
            line = runner.stdout.readline()
        assert line.startswith(f"gateway: http://127.0.0.1:{port} "), "examples.voice.run exited before saying where it serves"
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
        assert (health["status"], health["version"]) == ("healthy", "1.0.0")
        client = SeedClient("002", port)
        assert [client.next_line() for _ in range(3)] == [
            "Received: transcript_interim", "Received: transcript_final", "Received: response",
        ]
    finally:
        if client is not None:
            client.stop()
        os.killpg(runner.pid, signal.SIGTERM)  # run.py, its gateway, call service and worker
        runner.wait(30)
