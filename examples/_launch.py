"""Start the processes of an example (gateways, upstreams, workers) on free loopback ports, and stop them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Process:
    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    health_path: str | None = None
    popen: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> "Process":
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **self.env}
        self.popen = subprocess.Popen(self.command, env=env, cwd=REPO)
        if self.health_path is not None:
            deadline = time.monotonic() + timeout_s
            while True:
                if self.popen.poll() is not None:
                    raise RuntimeError(f"{self.name} exited while starting")
                try:
                    if httpx.get(self.url + self.health_path, timeout=2.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} did not get ready in {timeout_s} s")
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.popen = None


def gateway(name: str, env: dict[str, str], port: int | None = None) -> Process:
    """``sonalyze serve gateway``, ready once ``/readyz`` answers 200 (its broker is connected)."""
    port = port or free_port()
    command = [sys.executable, "-m", "sonalyze", "serve", "gateway", "--host", "127.0.0.1", "--port", str(port)]
    return Process(name, command, env, port, "/readyz")


def python_app(name: str, script: Path, env: dict[str, str], health_path: str | None = "/healthz") -> Process:
    """A script of an example that serves HTTP on ``PORT`` (or a worker without HTTP: ``health_path=None``)."""
    port = free_port()
    return Process(name, [sys.executable, str(script)], {**env, "PORT": str(port)}, port, health_path)


def stop_all(processes: list[Process]) -> None:
    for process in reversed(processes):
        process.stop()


def wait_forever(processes: list[Process]) -> None:
    """Until Ctrl-C, then stop everything."""
    try:
        while all(process.popen is not None and process.popen.poll() is None for process in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop_all(processes)
